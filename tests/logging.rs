#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! One log line per call with method, source, target, argument, decision
//! and duration; never the payload.

mod common;

use std::process::Command;

use common::{FakeSysfs, TestEnv, BIN};

#[test]
fn one_line_per_call_without_the_payload() {
    let env = TestEnv::new(FakeSysfs::standard());
    let mut c = Command::new(BIN);
    c.env_clear();
    for (k, v) in env.envs() {
        c.env(k, v);
    }
    // Logs go to stderr unless journald's socket exists (checked below).
    c.env("QUBES_PCI_ADMIN_LOG", "info").args([
        "call",
        "--source",
        "work",
        "--target",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_14.0",
    ]);
    let out = common::run(c, b"mode='required' _secret-payload-marker='True'");
    assert!(out.stdout.starts_with(b"2\0QubesDaemonAccessError\0"));
    let log = String::from_utf8_lossy(&out.stderr);
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        // Logs went to journald; nothing to read back here.
        return;
    }
    let calls: Vec<&str> = log.lines().filter(|l| l.contains(" call ")).collect();
    assert_eq!(calls.len(), 1, "{log}");
    let line = calls[0];
    for field in [
        "method=\"admin.vm.device.pci.Assign\"",
        "source=\"work\"",
        "target=\"work\"",
        "arg=\"dom0+00_14.0\"",
        "decision=\"PermissionDenied\"",
        "duration_us=",
    ] {
        assert!(line.contains(field), "missing {field} in {line}");
    }
    assert!(
        !log.contains("secret-payload-marker"),
        "payload bytes in the log: {log}"
    );
}
