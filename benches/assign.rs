#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Assign latency with 10,000 existing assignments, and assignments per
//! second with 1 and 8 concurrent writers, against the cost of one durable
//! file replace on this machine (write, fsync, rename, fsync of the
//! directory), all in one run. `cargo bench --bench assign`.

#[path = "../tests/common/fakesys.rs"]
mod fakesys;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qubes_pci_admin::api::Service;
use qubes_pci_admin::store::{Record, Store, StoreError};
use qubes_pci_admin::Config;
use qubes_pci_rpc::{AssignmentMode, PciOptions, PciPath, QubeName, Reply, UntrustedRequest, UntrustedTarget, Wild};

const BIN: &str = env!("CARGO_BIN_EXE_qubes-pci-admin");
const EXISTING: usize = 10_000;
const QUBES: usize = 40;
const DEVICES: usize = 256;
const ROUNDS: usize = 200;

fn port(i: usize) -> String {
    format!("00_{:02x}.0-00_{:02x}.0", i / 32, i % 32)
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The floor: replacing a file of `size` bytes durably, as the store does.
fn durable_replace(dir: &Path, size: usize) -> Vec<Duration> {
    let data = vec![0x5au8; size];
    let target = dir.join("baseline.bin");
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let tmp = dir.join(".baseline.tmp");
            let mut f = std::fs::File::create(&tmp).unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
            std::fs::rename(&tmp, &target).unwrap();
            std::fs::File::open(dir).unwrap().sync_all().unwrap();
            start.elapsed()
        })
        .collect()
}

fn request(method: &str, arg: &str, target: &str, payload: &[u8]) -> UntrustedRequest {
    UntrustedRequest {
        untrusted_method: method.to_owned(),
        untrusted_arg: arg.to_owned(),
        untrusted_source: "dom0".to_owned(),
        untrusted_target: UntrustedTarget::Name(target.to_owned()),
        untrusted_payload: payload.to_vec(),
    }
}

fn call(svc: &Service, method: &str, arg: &str, target: &str, payload: &[u8]) -> Duration {
    let start = Instant::now();
    let reply = svc.handle(Ok(request(method, arg, target, payload)));
    let t = start.elapsed();
    assert!(matches!(reply, Reply::Ok(_)), "{reply:?}");
    t
}

fn main() {
    let sys = fakesys::FakeSysfs::many(DEVICES);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut domains = serde_json::Map::new();
    domains.insert(
        "dom0".into(),
        serde_json::json!({"type": "AdminVM", "power_state": "Running"}),
    );
    for q in (0..QUBES)
        .map(|q| format!("q{q}"))
        .chain((0..8).map(|w| format!("w{w}")))
        .chain(["bench".into()])
    {
        domains.insert(
            q,
            serde_json::json!({"type": "AppVM", "power_state": "Halted", "virt_mode": "hvm"}),
        );
    }
    let si = dir.path().join("system-info.json");
    std::fs::write(&si, serde_json::json!({ "domains": domains }).to_string()).unwrap();
    let config = Config {
        sysfs: sys.root().to_owned(),
        state_dir: state.clone(),
        policy_dirs: vec![dir.path().join("policy")],
        system_info: Some(si.clone()),
        pci_ids: None,
    };
    // Seed: 10,000 assignments (40 qubes x 250 devices) in one write.
    Store::new(&state)
        .update(|s| {
            for q in 0..QUBES {
                for d in 0..EXISTING / QUBES {
                    s.assignments.push(Record {
                        frontend: QubeName::parse(&format!("q{q}")).unwrap(),
                        port: PciPath::parse(&port(d)).unwrap(),
                        device_id: Wild::Any,
                        mode: AssignmentMode::Required,
                        options: PciOptions::default(),
                        sbdf: None,
                    });
                }
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let store_size = std::fs::metadata(state.join("assignments.bin")).unwrap().len() as usize;
    let svc = Service::new(config.clone());

    let (floor_small, floor_small_p90) = stats(durable_replace(dir.path(), 64));
    let (floor, floor_p90) = stats(durable_replace(dir.path(), store_size));

    // In-process Assign latency (the whole request path: validation, system
    // info, sysfs scan, lock, load, rules, durable write).
    let assign_arg = |d: usize| format!("dom0+{}", port(d));
    let mut times = Vec::new();
    for r in 0..ROUNDS {
        let d = 250 + r % 6;
        times.push(call(
            &svc,
            "admin.vm.device.pci.Assign",
            &assign_arg(d),
            "bench",
            b"mode='required'",
        ));
        call(&svc, "admin.vm.device.pci.Unassign", &assign_arg(d), "bench", b"");
    }
    let (assign, assign_p90) = stats(times);

    // End to end through the binary, as qrexec's exec service runs it.
    let mut times = Vec::new();
    for r in 0..ROUNDS / 2 {
        let d = 250 + r % 6;
        for (method, payload) in [("Assign", &b"mode='required'"[..]), ("Unassign", b"")] {
            let start = Instant::now();
            let mut child = Command::new(BIN)
                .env_clear()
                .env("QUBES_PCI_ADMIN_SYSFS", sys.root())
                .env("QUBES_PCI_ADMIN_STATE_DIR", &state)
                .env("QUBES_PCI_ADMIN_SYSTEM_INFO", &si)
                .env("QUBES_PCI_ADMIN_LOG", "off")
                .args(["call", "--source", "dom0", "--target", "bench"])
                .arg(format!("admin.vm.device.pci.{method}+{}", assign_arg(d)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(payload).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.stdout.starts_with(b"0\0"),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            if method == "Assign" {
                times.push(start.elapsed());
            }
        }
    }
    let (exec, exec_p90) = stats(times);

    // Throughput: N writers, each assigning and unassigning its own device
    // to its own qube, all at once.
    let throughput = |writers: usize| {
        let per = 400 / writers;
        let start = Instant::now();
        std::thread::scope(|s| {
            for w in 0..writers {
                let svc = svc.clone();
                s.spawn(move || {
                    for _ in 0..per / 2 {
                        let arg = assign_arg(250 + w % 6);
                        call(
                            &svc,
                            "admin.vm.device.pci.Assign",
                            &arg,
                            &format!("w{w}"),
                            b"mode='required'",
                        );
                        call(&svc, "admin.vm.device.pci.Unassign", &arg, &format!("w{w}"), b"");
                    }
                });
            }
        });
        (writers * (per / 2) * 2) as f64 / start.elapsed().as_secs_f64()
    };
    let one = throughput(1);
    let eight = throughput(8);
    let final_state = Store::new(&state).read().unwrap();
    assert_eq!(final_state.assignments.len(), EXISTING);

    println!("store: {EXISTING} assignments, {store_size} bytes on disk");
    println!(
        "baseline durable replace (write+fsync+rename+dir fsync): 64 B median {:.0} us (p90 {:.0}); {store_size} B median {:.0} us (p90 {:.0})",
        us(floor_small),
        us(floor_small_p90),
        us(floor),
        us(floor_p90)
    );
    println!(
        "Assign with {EXISTING} existing, in process: median {:.0} us (p90 {:.0}) = {:.2}x the same-size durable replace",
        us(assign),
        us(assign_p90),
        assign.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "Assign with {EXISTING} existing, exec (`call`, new process): median {:.0} us (p90 {:.0}) = {:.2}x",
        us(exec),
        us(exec_p90),
        exec.as_secs_f64() / floor.as_secs_f64()
    );
    let floor_rate = 1.0 / floor.as_secs_f64();
    println!(
        "writes/s (Assign+Unassign), 1 writer: {one:.0}/s; 8 concurrent writers: {eight:.0}/s; durable replaces/s at the floor: {floor_rate:.0}/s ({:.2}x and {:.2}x of it)",
        one / floor_rate,
        eight / floor_rate
    );
}
