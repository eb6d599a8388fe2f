#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The front door and the qubesd extension against upstream qubesd's own
//! request handling (QubesOS/qubes-core-admin, release4.3), run offline by
//! `tests/real-qubesd/server.py` with upstream's own test stubs for libvirt
//! and qubesdb. Runs when `QUBES_CORE_ADMIN_SRC` and `QUBES_CORE_QREXEC_SRC`
//! point at extracted trees (and `QUBES_CORE_ADMIN_CLIENT_SRC`, optional, at
//! the stock client's, to run the stock `qvm-pci` too); says it skipped
//! otherwise. Nothing of upstream is in this repository.
//!
//! The first run builds a Python venv (lxml, jinja2, docutils, PyYAML,
//! pyinotify) from the package registry into `REAL_QUBESD_CACHE` (default
//! `target/real-qubesd`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{FakeSysfs, BIN};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tree(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_dir())
}

#[test]
fn front_door_and_extension_against_upstream_qubesd() {
    let (Some(admin), Some(qrexec)) = (tree("QUBES_CORE_ADMIN_SRC"), tree("QUBES_CORE_QREXEC_SRC")) else {
        println!(
            "skipped: set QUBES_CORE_ADMIN_SRC and QUBES_CORE_QREXEC_SRC to extracted release4.3 trees of \
             QubesOS/qubes-core-admin and QubesOS/qubes-core-qrexec to run this test"
        );
        return;
    };
    let tools = Path::new(ROOT).join("tests/real-qubesd");
    let cache = std::env::var_os("REAL_QUBESD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/real-qubesd"));
    let work = tempfile::tempdir().unwrap();
    let site = work.path().join("site");
    let setup = Command::new("bash")
        .arg(tools.join("setup.sh"))
        .arg(&cache)
        .arg(&site)
        .arg(ROOT)
        .env("UPSTREAM_ADMIN_TREE", &admin)
        .env("UPSTREAM_QREXEC_TREE", &qrexec)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&setup.stdout).into_owned();
    assert!(
        setup.status.success(),
        "setup.sh: {out}{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let var = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(var("REAL_QUBESD_EXT"), "installed", "{}", var("REAL_QUBESD_EXT_DETAIL"));
    let run = work.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let sysfs = FakeSysfs::standard();
    std::os::unix::fs::symlink(sysfs.root(), run.join("sys")).unwrap();
    let mut check = Command::new(var("REAL_QUBESD_PYTHON"));
    check
        .arg(tools.join("check.py"))
        .arg(&run)
        .arg(BIN)
        .arg(tools.join("server.py"))
        .env("UPSTREAM_ADMIN_TREE", &admin)
        .env("REAL_QUBESD_PYTHON", var("REAL_QUBESD_PYTHON"))
        .env("REAL_QUBESD_PYTHONPATH", var("REAL_QUBESD_PYTHONPATH"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("QUBES_PCI_ADMIN_PCI_IDS", Path::new(ROOT).join("tests/data/pci.ids"));
    if let Some(client) = tree("QUBES_CORE_ADMIN_CLIENT_SRC") {
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
