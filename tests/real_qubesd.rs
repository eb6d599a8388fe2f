#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The front door and the qubesd extension against upstream qubesd's own
//! request handling (QubesOS/qubes-core-admin, release4.3), run offline by
//! `tests/real-qubesd/server.py` with upstream's own test stubs for libvirt
//! and qubesdb. Runs (and is not reported as ignored) when
//! `QUBES_CORE_ADMIN_SRC` and `QUBES_CORE_QREXEC_SRC`
//! point at extracted trees (and `QUBES_CORE_ADMIN_CLIENT_SRC`, optional, at
//! the stock client's, to run the stock `qvm-pci` too; with it,
//! `QUBES_MANAGER_SRC` at an extracted QubesOS/qubes-manager and
//! `MANAGER_SITE` at a directory holding PyQt6, pyxdg and qasync run the
//! real Qube Settings dialog's Devices tab headless); is reported as ignored
//! otherwise. Nothing of upstream is in this repository.
//!
//! The first run builds a Python venv (lxml, jinja2, docutils, PyYAML,
//! pyinotify) from the package registry into `REAL_QUBESD_CACHE` (default
//! `target/real-qubesd`).

mod common;

use std::path::Path;

use common::{FakeSysfs, RealQubesd, BIN};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
#[cfg_attr(
    not(real_qubesd),
    ignore = "set QUBES_CORE_ADMIN_SRC and QUBES_CORE_QREXEC_SRC to extracted release4.3 trees to run it"
)]
fn front_door_and_extension_against_upstream_qubesd() {
    let work = tempfile::tempdir().unwrap();
    let Some(real) = RealQubesd::setup(&work.path().join("site")) else {
        println!(
            "skipped: set QUBES_CORE_ADMIN_SRC and QUBES_CORE_QREXEC_SRC to extracted release4.3 trees of \
             QubesOS/qubes-core-admin and QubesOS/qubes-core-qrexec to run this test"
        );
        return;
    };
    assert_eq!(real.ext, "installed", "{}", real.ext_detail);
    let tools = Path::new(ROOT).join("tests/real-qubesd");
    let run = work.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let sysfs = FakeSysfs::standard();
    std::os::unix::fs::symlink(sysfs.root(), run.join("sys")).unwrap();
    let mut check = real.check_py();
    check.arg(&run).arg(BIN).arg(tools.join("server.py"));
    if let Some(client) = std::env::var_os("QUBES_CORE_ADMIN_CLIENT_SRC").filter(|p| Path::new(p).is_dir()) {
        check.arg(client);
    }
    let result = check.output().unwrap();
    let report = String::from_utf8_lossy(&result.stdout);
    println!("{report}");
    assert!(
        result.status.success(),
        "{report}{}\nserver log:\n{}",
        String::from_utf8_lossy(&result.stderr),
        std::fs::read_to_string(run.join("server.log")).unwrap_or_default()
    );
}
