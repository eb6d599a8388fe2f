#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Calls per second for `Available` and `Assigned` through the daemon with
//! 1, 8 and 64 concurrent clients, each against an echo of the same bytes
//! served the same way (the daemon's hidden `--echo-reply FILE`, answering
//! every call with the real reply captured first, so the ratio measures our
//! work and not the copy of the answer), and exec-mode latency for the same
//! calls against `qubes-pci-admin echo`, in one run.
//! `cargo bench --bench daemon`.

#[path = "../tests/common/fakesys.rs"]
mod fakesys;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qubes-pci-admin");
const FULL_PCI_IDS: &str = concat!(env!("OUT_DIR"), "/pci.ids.full");
/// Each rate is measured in ROUNDS slices of RUN_FOR, interleaved with its
/// baseline's, so drift on the machine hits both alike.
const RUN_FOR: Duration = Duration::from_millis(300);
const ROUNDS: usize = 6;
const EXEC_ROUNDS: usize = 200;

fn sock_call(path: &Path, header: &str) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(header.as_bytes()).unwrap();
    s.write_all(b"\0").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// Calls per second with `clients` threads calling back to back.
fn rate(socket: &Path, header: &str, clients: usize) -> f64 {
    let start = Instant::now();
    let total: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while start.elapsed() < RUN_FOR {
                        let r = sock_call(socket, header);
                        assert!(r.starts_with(b"0\0"), "{}", String::from_utf8_lossy(&r));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(envs: &[(&str, PathBuf)], socket: &Path, extra: &[&str]) -> Daemon {
    let child = Command::new(BIN)
        .env_clear()
        .envs(envs.iter().map(|(k, v)| (*k, v)))
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .args(["serve", "--workers", "16", "--socket"])
        .arg(socket)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon(child)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median wall time of running `program args` with `envs`, payload empty.
fn exec_latency(program: &Path, args: &[&str], envs: &[(&str, String)]) -> Duration {
    let times = (0..EXEC_ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let out = Command::new(program)
                .env_clear()
                .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.stdout.starts_with(b"0\0"),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            start.elapsed()
        })
        .collect();
    median(times)
}

fn main() {
    let sys = fakesys::FakeSysfs::many(32);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(
        policy.join("30-bench.policy"),
        "admin.vm.device.pci.Available * mgmt @adminvm allow target=dom0\n\
         admin.vm.device.pci.Assigned * mgmt @anyvm allow target=dom0\n\
         admin.vm.device.pci.Assign * mgmt @anyvm allow target=dom0\n",
    )
    .unwrap();
    let si = dir.path().join("system-info.json");
    std::fs::write(
        &si,
        r#"{"domains": {"dom0": {"type": "AdminVM", "power_state": "Running"},
            "mgmt": {"type": "AppVM", "power_state": "Running"},
            "work": {"type": "AppVM", "power_state": "Halted", "virt_mode": "hvm"}}}"#,
    )
    .unwrap();
    let xml = dir.path().join("qubes.xml");
    let envs = vec![
        ("QUBES_PCI_ADMIN_SYSFS", sys.root().to_owned()),
        ("QUBES_PCI_ADMIN_QUBES_XML", xml.clone()),
        ("QUBES_PCI_ADMIN_POLICY_DIR", policy.clone()),
        ("QUBES_PCI_ADMIN_SYSTEM_INFO", si.clone()),
        // A real-size pci.ids (1.5 MB, written by build.rs from the pci-ids crate).
        ("QUBES_PCI_ADMIN_PCI_IDS", PathBuf::from(FULL_PCI_IDS)),
    ];
    // A few assignments for Assigned to list, in qubesd's qubes.xml.
    let devices: String = (0..4)
        .map(|i| {
            format!("<device backend-domain=\"dom0\" id=\"00_00.0-00_{i:02x}.0\" mode=\"required\" identity=\"*\"/>")
        })
        .collect();
    std::fs::write(
        &xml,
        format!(
            "<qubes><domains><domain class=\"AppVM\"><properties><property name=\"name\">work</property>\
             </properties><devices class=\"pci\">{devices}</devices></domain></domains></qubes>"
        ),
    )
    .unwrap();

    let real_sock = dir.path().join("real.sock");
    let _real = start(&envs, &real_sock, &[]);
    let calls = [
        ("Available", "admin.vm.device.pci.Available mgmt keyword adminvm"),
        ("Assigned", "admin.vm.device.pci.Assigned mgmt name work"),
    ];
    // For each call, an echo daemon answering its very reply.
    let echoes: Vec<(Daemon, PathBuf, usize)> = calls
        .iter()
        .enumerate()
        .map(|(i, (_, header))| {
            let reply = sock_call(&real_sock, header);
            assert!(reply.starts_with(b"0\0"));
            let file = dir.path().join(format!("reply{i}"));
            std::fs::write(&file, &reply).unwrap();
            let sock = dir.path().join(format!("echo{i}.sock"));
            let file_arg = file.display().to_string();
            let daemon = start(&envs, &sock, &["--echo-reply", &file_arg]);
            (daemon, sock, reply.len())
        })
        .collect();
    println!("daemon: fake sysfs of 32 devices, 4 assignments, policy checked for source mgmt");
    for clients in [1, 8, 64] {
        for ((name, header), (_, echo_sock, len)) in calls.iter().zip(&echoes) {
            let (mut floor, mut r) = (0.0, 0.0);
            for _ in 0..ROUNDS {
                floor += rate(echo_sock, "echo mgmt keyword adminvm", clients) / ROUNDS as f64;
                r += rate(&real_sock, header, clients) / ROUNDS as f64;
            }
            println!(
                "  {name:<9} {clients:>2} clients: {r:>8.0} calls/s; echo of the same {len} bytes {floor:>8.0} \
                 calls/s; ratio {:.2}",
                r / floor
            );
        }
    }

    // A legitimate call while 120 connections connect and send nothing
    // (review finding 4: they used to hold every worker until the read
    // deadline). Baseline: the same call with no stalled connection.
    let timed = |n: usize| -> Vec<Duration> {
        (0..n)
            .map(|_| {
                let s = Instant::now();
                let r = sock_call(&real_sock, "admin.vm.device.pci.Available mgmt keyword adminvm");
                assert!(r.starts_with(b"0\0"));
                s.elapsed()
            })
            .collect()
    };
    let quiet = timed(50);
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    // 120 stalled connections (below the reading thread's 512), and 700
    // (above it: the oldest are cut off for newer ones, so the calls still
    // do not wait for the stalled ones' deadlines).
    for n in [120, 700] {
        let stalled: Vec<UnixStream> = (0..n).map(|_| UnixStream::connect(&real_sock).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let loaded = timed(50);
        drop(stalled);
        std::thread::sleep(Duration::from_millis(300));
        println!(
            "  Available with {n} stalled connections: median {:.2} ms, max {:.2} ms; without: median {:.2} ms, \
             max {:.2} ms; ratio of medians {:.2}",
            median(loaded.clone()).as_secs_f64() * 1e3,
            max(&loaded).as_secs_f64() * 1e3,
            median(quiet.clone()).as_secs_f64() * 1e3,
            max(&quiet).as_secs_f64() * 1e3,
            median(loaded).as_secs_f64() / median(quiet.clone()).as_secs_f64()
        );
    }

    // One rule check of the qubesd extension (an Assign's facts): asked of
    // the daemon over its socket, as the extension does when it runs,
    // against the `check` process it runs otherwise.
    let facts = br#"{"source": "dom0", "dest": "work", "dest_class": "AppVM", "dest_virt_mode": "hvm",
        "dest_virt_mode_default": true, "device": {"backend": "dom0", "port": "00_00.0", "device_id": "*"},
        "mode": "required", "options": {}, "assignments": [], "system": {}}"#;
    let check_header = "qubes-pci-admin.Check+assign dom0 keyword adminvm";
    let by_daemon: Vec<Duration> = (0..EXEC_ROUNDS)
        .map(|_| {
            let s = Instant::now();
            let mut c = UnixStream::connect(&real_sock).unwrap();
            c.write_all(check_header.as_bytes()).unwrap();
            c.write_all(b"\0").unwrap();
            c.write_all(facts).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut out = Vec::new();
            c.read_to_end(&mut out).unwrap();
            assert!(out.starts_with(b"0\0{\"ok\":"), "{}", String::from_utf8_lossy(&out));
            s.elapsed()
        })
        .collect();
    let by_process: Vec<Duration> = (0..EXEC_ROUNDS / 2)
        .map(|_| {
            let s = Instant::now();
            let mut child = Command::new(BIN)
                .env_clear()
                .envs(envs.iter().map(|(k, v)| (*k, v)))
                .env("QUBES_PCI_ADMIN_LOG", "off")
                .args(["check", "assign"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(facts).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.stdout.starts_with(b"{\"ok\":"));
            s.elapsed()
        })
        .collect();
    println!(
        "extension rule check (Assign): through the daemon median {:.3} ms; `check` process median {:.2} ms",
        median(by_daemon).as_secs_f64() * 1e3,
        median(by_process).as_secs_f64() * 1e3
    );

    // Exec mode: a new process per call, as qrexec runs /etc/qubes-rpc/<method>.
    let mut exec_envs: Vec<(&str, String)> = envs.iter().map(|(k, v)| (*k, v.display().to_string())).collect();
    exec_envs.extend([
        ("QUBES_PCI_ADMIN_LOG", "off".to_owned()),
        ("QREXEC_REMOTE_DOMAIN", "mgmt".to_owned()),
        ("QREXEC_SERVICE_ARGUMENT", String::new()),
    ]);
    let floor = exec_latency(Path::new(BIN), &["echo"], &exec_envs);
    for (name, target_env) in [
        (
            "Available",
            [
                ("QREXEC_REQUESTED_TARGET_TYPE", "keyword"),
                ("QREXEC_REQUESTED_TARGET_KEYWORD", "adminvm"),
            ],
        ),
        (
            "Assigned",
            [
                ("QREXEC_REQUESTED_TARGET_TYPE", "name"),
                ("QREXEC_REQUESTED_TARGET", "work"),
            ],
        ),
    ] {
        let link = dir.path().join(format!("admin.vm.device.pci.{name}"));
        std::os::unix::fs::symlink(BIN, &link).unwrap();
        let mut e = exec_envs.clone();
        e.extend(target_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        e.push(("QREXEC_SERVICE_FULL_NAME", format!("admin.vm.device.pci.{name}")));
        let t = exec_latency(&link, &[], &e);
        println!(
            "exec mode {name:<9}: median {:.2} ms; echo (same binary, `echo`) {:.2} ms; ratio {:.2}",
            t.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3,
            t.as_secs_f64() / floor.as_secs_f64()
        );
    }
}
