#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Hardening (issue "Hardening, part two"): logs a qube cannot forge, no
//! panic at the exec entry, a deadline for `serve-connection`, a bounded
//! policy load, a policy cache that sees every file and directory.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{error_of, FakeSysfs, TestEnv, BIN};

/// The bytes between the NULs of an error reply, raw.
fn raw_message(reply: &[u8]) -> Vec<u8> {
    reply.split(|b| *b == 0).nth(3).unwrap_or_default().to_vec()
}

fn has_control(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes).chars().any(char::is_control)
}

/// Item 2: every byte a qube sends is escaped in the log and in the reply;
/// checked over the fuzz corpus of payloads and some crafted ones.
#[test]
fn a_qube_cannot_forge_log_lines_or_drive_a_terminal() {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy(
        "30-test.policy",
        "admin.vm.device.pci.* * mgmt @anyvm allow target=dom0\n",
    );
    let mut payloads: Vec<Vec<u8>> = vec![
        b"mode='required' \x1b[2J\nFAKE LOG LINE M='x'".to_vec(),
        b"mode='re\x1b[31mquired'".to_vec(),
        b"mode='required' _no-strict-reset='\rFAKE'".to_vec(),
        b"mode='required' _x\x07y='1'".to_vec(),
        "mode='required' _permissive='\u{9b}2J'".as_bytes().to_vec(),
        b"mode='required' \x00\nFAKE".to_vec(),
    ];
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/payload");
    for e in std::fs::read_dir(corpus).unwrap().flatten() {
        payloads.push(std::fs::read(e.path()).unwrap());
    }
    for payload in &payloads {
        let mut c = Command::new(BIN);
        c.env_clear().envs(env.envs()).env("QUBES_PCI_ADMIN_LOG", "info").args([
            "call",
            "--source",
            "mgmt",
            "--target",
            "work",
            "admin.vm.device.pci.Assign+dom0+00_1f.3",
        ]);
        let out = common::run(c, payload);
        if out.stdout.starts_with(b"2\0") {
            error_of(&out);
            assert!(
                !has_control(&raw_message(&out.stdout)),
                "control characters in the reply to {payload:?}: {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let log = String::from_utf8_lossy(&out.stderr);
        if Path::new("/run/systemd/journal/socket").exists() {
            continue; // the log went to journald
        }
        for line in log.lines() {
            assert!(
                line.get(..4).is_some_and(|y| y.bytes().all(|b| b.is_ascii_digit())),
                "a line that is not a log record (forged?) for {payload:?}: {line:?}"
            );
            assert!(
                !line.chars().any(char::is_control),
                "control characters in the log: {line:?}"
            );
        }
    }
}

/// Item 3: exec mode answers a non-UTF-8 argument or variable with a typed
/// reply (it used to panic: empty reply, exit 101).
#[test]
fn exec_mode_answers_non_utf8_arguments() {
    let env = TestEnv::new(FakeSysfs::standard());
    let link = env.dir.path().join("admin.vm.device.pci.Available");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"00_14.0\xff");
    for (arg, var) in [(Some(bad), None), (None, Some(bad))] {
        let mut c = Command::new(&link);
        c.env_clear()
            .env("QUBES_PCI_ADMIN_LOG", "off")
            .envs(env.envs())
            .env("QREXEC_REMOTE_DOMAIN", "mgmt")
            .env("QREXEC_REQUESTED_TARGET_TYPE", "keyword")
            .env("QREXEC_REQUESTED_TARGET_KEYWORD", "adminvm");
        if let Some(a) = arg {
            c.arg(a);
        }
        if let Some(v) = var {
            c.env("QREXEC_SERVICE_ARGUMENT", v).arg("00_14.0");
        }
        let out = common::run(c, b"");
        assert_eq!(out.status.code(), Some(0));
        let (ty, msg) = error_of(&out);
        assert_eq!(ty, "ProtocolError");
        assert!(msg.contains("not UTF-8"), "{msg}");
    }
}

/// Item 4: a `serve-connection` client that sends nothing gets a typed
/// reply at the deadline.
#[test]
fn a_stalled_serve_connection_ends_at_its_deadline() {
    let env = TestEnv::new(FakeSysfs::standard());
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.envs())
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .args(["serve-connection", "--read-deadline-ms", "300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take(); // kept open: the client stalls
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    let (ty, msg) = error_of(&out);
    assert_eq!(ty, "ProtocolError");
    assert!(msg.contains("300 ms"), "{msg}");
    drop(stdin);
}

/// An exec-mode call (as qrexec runs `/etc/qubes-rpc/METHOD`) whose caller
/// never closes its input ends at the read deadline with a typed reply,
/// instead of keeping a dom0 process waiting as long as the caller likes.
#[test]
fn a_stalled_exec_call_ends_at_its_deadline() {
    let env = TestEnv::new(FakeSysfs::standard());
    let link = env.dir.path().join("admin.vm.device.pci.Assign");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut child = Command::new(&link)
        .arg("dom0+00_14.0")
        .env_clear()
        .envs(env.envs())
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .env("QUBES_PCI_ADMIN_READ_DEADLINE_MS", "300")
        .env("QREXEC_REMOTE_DOMAIN", "mgmt")
        .env("QREXEC_SERVICE_ARGUMENT", "dom0+00_14.0")
        .env("QREXEC_REQUESTED_TARGET_TYPE", "name")
        .env("QREXEC_REQUESTED_TARGET", "work")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"mode='requ").unwrap(); // and never closes
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("the exec call still waits for its caller after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the reply is written, so exit 0 as qrexec wants"
    );
    let (ty, msg) = error_of(&out);
    assert_eq!(ty, "ProtocolError");
    assert!(msg.contains("300 ms"), "{msg}");
    assert!(env.qubesd_writes().is_empty());
    drop(stdin);
}

/// Item 5: a policy of doubling `!include` chains is refused by lint (and
/// denies everything) quickly, instead of 2^17 file loads.
#[test]
fn an_include_bomb_is_a_lint_error() {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy("30-bomb.policy", "!include include/b0\n");
    for i in 0..17 {
        env.write_policy(
            &format!("include/b{i}"),
            &format!("!include include/b{n}\n!include include/b{n}\n", n = i + 1),
        );
    }
    env.write_policy(
        "include/b17",
        "admin.vm.device.pci.Available * mgmt @adminvm allow target=dom0\n",
    );
    let start = Instant::now();
    let out = env.cli(&["policy", "lint"], b"");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than 4096 files"), "{err}");
    let (ty, _) = error_of(&env.call("mgmt", "@adminvm", "admin.vm.device.pci.Available", b""));
    assert_eq!(ty, "QubesDaemonAccessError", "a policy that does not load denies");
}
