#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! What a write through the front door adds on top of the same write sent
//! straight to qubesd, in one run: an Assign and an Unassign of one device,
//! (a) sent by dom0 straight to qubesd's socket (the baseline), (b) through
//! the front door in exec mode (`qubes-pci-admin call`, a process per call,
//! as qrexec runs an exec service), (c) through the resident daemon's
//! socket. The three are interleaved round by round.
//!
//! qubesd is the project's stand-in (tests/standin); with
//! `QUBES_CORE_ADMIN_SRC` and `QUBES_CORE_QREXEC_SRC` set it is also upstream
//! qubesd's own code run offline (tests/real-qubesd), measured the same way.
//! `cargo bench --bench frontdoor`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FakeSysfs, RealQubesd, TestEnv, BIN};

const ROUNDS: usize = 150;
const USB: &str = "dom0+00_14.0+0x8086+0x8cb1++p0c0330";
const POLICY: &str = "admin.vm.device.pci.Assign * mgmt @tag:created-by-mgmt allow target=dom0\n\
                      admin.vm.device.pci.Unassign * mgmt @tag:created-by-mgmt allow target=dom0\n";

/// Where qubesd listens and what the front door needs to reach it.
struct Target {
    name: &'static str,
    admin: PathBuf,
    envs: Vec<(&'static str, PathBuf)>,
}

fn sock(path: &Path, header: &str, payload: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(header.as_bytes()).unwrap();
    s.write_all(b"\0").unwrap();
    s.write_all(payload).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

fn call(envs: &[(&str, PathBuf)], method: &str, payload: &[u8]) -> Vec<u8> {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(envs.iter().map(|(k, v)| (*k, v)))
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .args(["call", "--source", "mgmt", "--target", "work", method])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(payload).unwrap();
    child.wait_with_output().unwrap().stdout
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn measure(t: &Target, dir: &Path) {
    let daemon_sock = dir.join(format!("{}-daemon.sock", t.name));
    let daemon = Killed(
        Command::new(BIN)
            .env_clear()
            .envs(t.envs.iter().map(|(k, v)| (*k, v)))
            .env(
                "QUBES_PCI_ADMIN_LOG",
                if std::env::var_os("FRONTDOOR_DAEMON_LOG").is_some() {
                    "debug"
                } else {
                    "off"
                },
            )
            .args(["serve", "--socket"])
            .arg(&daemon_sock)
            .args(
                std::env::var("FRONTDOOR_DAEMON_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdout(Stdio::null())
            .stderr(match std::env::var_os("FRONTDOOR_DAEMON_LOG") {
                // For profiling by hand: the daemon's log in this file.
                Some(f) => Stdio::from(std::fs::File::create(f).unwrap()),
                None => Stdio::null(),
            })
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&daemon_sock).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let assign = format!("admin.vm.device.pci.Assign+{USB}");
    let unassign = format!("admin.vm.device.pci.Unassign+{USB}");
    let payload = b"mode='required'";
    let ok = |r: Vec<u8>, what: &str| assert_eq!(r, b"0\0", "{what}: {}", String::from_utf8_lossy(&r));
    let mut samples: [[Vec<Duration>; 2]; 3] = Default::default();
    for _ in 0..ROUNDS {
        // (a) straight to qubesd, as dom0
        let s = Instant::now();
        ok(
            sock(&t.admin, &format!("{assign} dom0 name work"), payload),
            "direct assign",
        );
        samples[0][0].push(s.elapsed());
        let s = Instant::now();
        ok(
            sock(&t.admin, &format!("{unassign} dom0 name work"), b""),
            "direct unassign",
        );
        samples[0][1].push(s.elapsed());
        // (b) front door, exec mode
        let s = Instant::now();
        ok(call(&t.envs, &assign, payload), "exec assign");
        samples[1][0].push(s.elapsed());
        let s = Instant::now();
        ok(call(&t.envs, &unassign, b""), "exec unassign");
        samples[1][1].push(s.elapsed());
        // (c) front door, daemon
        let s = Instant::now();
        ok(
            sock(&daemon_sock, &format!("{assign} mgmt name work"), payload),
            "daemon assign",
        );
        samples[2][0].push(s.elapsed());
        let s = Instant::now();
        ok(
            sock(&daemon_sock, &format!("{unassign} mgmt name work"), b""),
            "daemon unassign",
        );
        samples[2][1].push(s.elapsed());
    }
    drop(daemon);
    let [direct, exec, served] = samples.map(|pair| pair.map(median_ms));
    println!("{}: {ROUNDS} rounds, interleaved; medians", t.name);
    for (i, op) in ["Assign", "Unassign"].iter().enumerate() {
        println!("  {op:<8} straight to qubesd {:>7.2} ms", direct[i]);
        for (path, m) in [("front door, exec", exec[i]), ("front door, daemon", served[i])] {
            println!(
                "  {op:<8} {path:<18} {m:>7.2} ms  adds {:>6.2} ms  ratio {:>5.2}",
                m - direct[i],
                m / direct[i]
            );
        }
    }
}

/// Upstream qubesd run offline (tests/real-qubesd), when its trees are given.
fn real_qubesd(dir: &Path, sysfs: &FakeSysfs) -> Option<(Killed, Target)> {
    let real = RealQubesd::setup(&dir.join("site"))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = dir.join("real");
    std::fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::symlink(sysfs.root(), run.join("sys")).unwrap();
    let mut child = real
        .check_py()
        .arg("--serve")
        .arg(&run)
        .arg(BIN)
        .arg(root.join("tests/real-qubesd/server.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("serving"), "real qubesd did not start: {line:?}");
    let envs = vec![
        ("QUBES_PCI_ADMIN_SYSFS", run.join("sys")),
        ("QUBES_PCI_ADMIN_POLICY_DIR", run.join("policy.d")),
        ("QUBES_PCI_ADMIN_QUBESD_SOCKET", run.join("qubesd.sock")),
        (
            "QUBES_PCI_ADMIN_QUBESD_INTERNAL_SOCKET",
            run.join("qubesd.internal.sock"),
        ),
        ("QUBES_PCI_ADMIN_QUBES_XML", run.join("qubes.xml")),
        ("QUBES_PCI_ADMIN_PCI_IDS", root.join("tests/data/pci.ids")),
    ];
    Some((
        Killed(child),
        Target {
            name: "upstream qubesd (offline)",
            admin: run.join("qubesd.sock"),
            envs,
        },
    ))
}

fn main() {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy("30-bench.policy", POLICY);
    let standin = Target {
        name: "qubesd stand-in",
        admin: env.dir.path().join("qubesd.sock"),
        envs: env.envs(),
    };
    measure(&standin, env.dir.path());
    let sysfs = FakeSysfs::standard();
    match real_qubesd(env.dir.path(), &sysfs) {
        Some((_server, real)) => measure(&real, env.dir.path()),
        None => {
            println!("upstream qubesd: skipped (set QUBES_CORE_ADMIN_SRC and QUBES_CORE_QREXEC_SRC to extracted trees)")
        }
    }
}
