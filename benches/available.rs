#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! `Available` latency in exec mode on a fake sysfs of 256 devices, against
//! spawning `/bin/true` the same way (same environment, piped stdio), in
//! one run: answered by the process itself (with a real-size 1.5 MB
//! pci.ids, and with the built-in copy), and handed to a running daemon.
//! `cargo bench --bench available`.

#[path = "../tests/common/fakesys.rs"]
mod fakesys;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qubes-pci-admin");
const EXEC: &str = env!("CARGO_BIN_EXE_qubes-pci-admin-exec");

/// The thin exec entry linked statically, as the RPM builds it: built here
/// with `cargo rustc` (the same code as `EXEC`); `None` when that fails
/// (no static C library), and the case is left out.
fn static_exec() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/static-exec");
    let ok = Command::new(env!("CARGO"))
        .args(["rustc", "--release", "--bin", "qubes-pci-admin-exec", "--target-dir"])
        .arg(&dir)
        .args(["--", "-C", "target-feature=+crt-static"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success());
    let bin = dir.join("release/qubes-pci-admin-exec");
    (ok && bin.exists()).then_some(bin)
}
const ROUNDS: usize = 300;

fn spawn_once(program: &std::path::Path, envs: &[(&str, String)]) -> (Duration, usize) {
    spawn_with(program, &[], envs)
}

fn spawn_with(program: &std::path::Path, args: &[&std::ffi::OsStr], envs: &[(&str, String)]) -> (Duration, usize) {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    drop(child.stdin.take().map(|mut s| s.flush()));
    let out = child.wait_with_output().expect("wait");
    (start.elapsed(), out.stdout.len())
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let median = v[v.len() / 2];
    let p90 = v[v.len() * 9 / 10];
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    (median, p90, mean)
}

fn main() {
    let sys = fakesys::FakeSysfs::many(256);
    let dir = tempfile::tempdir().expect("tempdir");
    let si = dir.path().join("system-info.json");
    std::fs::write(&si, r#"{"domains": {"dom0": {"type": "AdminVM", "tags": []}}}"#).expect("write");
    let link = dir.path().join("admin.vm.device.pci.Available");
    std::os::unix::fs::symlink(BIN, &link).expect("symlink");
    // The thin entry finds the full binary beside itself.
    let thin_dir = dir.path().join("thin");
    std::fs::create_dir(&thin_dir).expect("mkdir");
    let thin = thin_dir.join("admin.vm.device.pci.Available");
    std::os::unix::fs::symlink(EXEC, &thin).expect("symlink");
    std::os::unix::fs::symlink(BIN, thin_dir.join("qubes-pci-admin")).expect("symlink");
    let static_dir = dir.path().join("static");
    let static_thin = static_exec().map(|bin| {
        std::fs::create_dir(&static_dir).expect("mkdir");
        let copy = static_dir.join("qubes-pci-admin-exec");
        std::fs::copy(bin, &copy).expect("copy");
        let link = static_dir.join("admin.vm.device.pci.Available");
        std::os::unix::fs::symlink(&copy, &link).expect("symlink");
        std::os::unix::fs::symlink(BIN, static_dir.join("qubes-pci-admin")).expect("symlink");
        link
    });
    let full_ids = concat!(env!("OUT_DIR"), "/pci.ids.full");
    let daemon_socket = dir.path().join("daemon.sock");
    let base = vec![
        ("QREXEC_REMOTE_DOMAIN", "dom0".to_owned()),
        ("QREXEC_REQUESTED_TARGET_TYPE", "keyword".to_owned()),
        ("QREXEC_REQUESTED_TARGET_KEYWORD", "adminvm".to_owned()),
        ("QREXEC_SERVICE_ARGUMENT", String::new()),
        ("QUBES_PCI_ADMIN_SYSFS", sys.root().display().to_string()),
        ("QUBES_PCI_ADMIN_SYSTEM_INFO", si.display().to_string()),
        ("QUBES_PCI_ADMIN_LOG", "off".to_owned()),
    ];
    let mut with_file = base.clone();
    with_file.push(("QUBES_PCI_ADMIN_PCI_IDS", full_ids.to_owned()));
    with_file.push(("QUBES_PCI_ADMIN_DAEMON_SOCKET", "none".to_owned()));
    let mut embedded = base.clone();
    embedded.push(("QUBES_PCI_ADMIN_PCI_IDS", "/nonexistent/pci.ids".to_owned()));
    embedded.push(("QUBES_PCI_ADMIN_DAEMON_SOCKET", "none".to_owned()));
    let mut handed = base.clone();
    handed.push(("QUBES_PCI_ADMIN_PCI_IDS", full_ids.to_owned()));
    handed.push(("QUBES_PCI_ADMIN_DAEMON_SOCKET", daemon_socket.display().to_string()));

    if std::env::var_os("AVAILABLE_BENCH_KEEP").is_some() {
        // For profiling by hand: keep the tree and print the call.
        let env: Vec<String> = with_file.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("env -i {} {}", env.join(" "), link.display());
        std::mem::forget(sys);
        std::mem::forget(dir);
        return;
    }
    let (_, bytes) = spawn_once(&link, &with_file);
    assert!(bytes > 256 * 100, "Available returned only {bytes} bytes");
    // The daemon, with the same settings.
    let mut daemon = Command::new(BIN)
        .env_clear()
        .envs(with_file.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["serve", "--socket"])
        .arg(&daemon_socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&daemon_socket).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, handed_bytes) = spawn_once(&link, &handed);
    assert_eq!(handed_bytes, bytes, "the daemon answers the same");
    assert_eq!(spawn_once(&thin, &handed).1, bytes, "the thin entry relays the same");
    assert_eq!(
        spawn_once(&thin, &with_file).1,
        bytes,
        "the thin entry falls back to the same"
    );
    // The copy floor: a process that only writes an answer of the same
    // size to the same pipe (`cat FILE`).
    let answer = dir.path().join("answer");
    std::fs::write(&answer, vec![b'x'; bytes]).expect("write");
    let cat_args = [answer.as_os_str()];
    type Case<'a> = (
        &'a str,
        &'a std::path::Path,
        &'a [&'a std::ffi::OsStr],
        &'a [(&'a str, String)],
    );
    let mut cases: Vec<Case> = vec![
        ("/bin/true (spawn floor)", std::path::Path::new("/bin/true"), &[], &base),
        (
            "cat of an answer as long (copy floor)",
            std::path::Path::new("/bin/cat"),
            &cat_args,
            &base,
        ),
        ("Available, 256 devices, 1.5 MB pci.ids", &link, &[], &with_file),
        ("Available, 256 devices, built-in pci.ids", &link, &[], &embedded),
        ("Available, handed to the daemon", &link, &[], &handed),
        ("thin entry, relayed to the daemon", &thin, &[], &handed),
        ("thin entry, no daemon (runs the full path)", &thin, &[], &with_file),
    ];
    if let Some(static_thin) = &static_thin {
        assert_eq!(
            spawn_once(static_thin, &handed).1,
            bytes,
            "the static thin entry relays the same"
        );
        cases.push(("thin entry (static), relayed to the daemon", static_thin, &[], &handed));
    }
    let mut results = Vec::new();
    // Interleave the cases so drift on the machine hits all alike.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, prog, args, envs)) in cases.iter().enumerate() {
            samples[i].push(spawn_with(prog, args, envs).0);
        }
    }
    for ((name, _, _, _), s) in cases.iter().zip(samples) {
        results.push((name, stats(s)));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let floor = results[0].1 .0.as_secs_f64();
    println!("available bench: {ROUNDS} rounds each, interleaved, output {bytes} bytes");
    println!(
        "{:<42} {:>10} {:>10} {:>10} {:>8}",
        "case", "median", "p90", "mean", "x floor"
    );
    for (name, (median, p90, mean)) in &results {
        println!(
            "{:<42} {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>7.1}x",
            name,
            median.as_secs_f64() * 1e3,
            p90.as_secs_f64() * 1e3,
            mean.as_secs_f64() * 1e3,
            median.as_secs_f64() / floor
        );
    }
}
