#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The qubesd extension (service/qubesd-ext), run with test doubles of
//! qubesd's objects (tests/extension/fakes) against the real binary and a
//! fake sysfs: the facts it passes, the refusals it raises, fail-closed.
//! Against upstream qubesd itself: tests/real_qubesd.rs.

mod common;

use std::path::Path;
use std::process::Command;

use common::{FakeSysfs, BIN};

#[test]
fn the_extension_asks_the_binary_and_raises_its_refusals() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sysfs = FakeSysfs::standard();
    let policy = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(root.join("tests/extension/test_extension.py"))
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                root.join("tests/extension/fakes").display(),
                root.join("service/qubesd-ext").display()
            ),
        )
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("QUBES_PCI_ADMIN_BIN", BIN)
        .env("QUBES_PCI_ADMIN_SYSFS", sysfs.root())
        .env("QUBES_PCI_ADMIN_POLICY_DIR", policy.path())
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("6 passed, 0 failed"), "{text}");
}
