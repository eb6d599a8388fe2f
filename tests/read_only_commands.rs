#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The administrator's read-only commands off dom0, with the example
//! configuration (examples/qubes.xml, examples/system-info.json,
//! examples/policy.d) and no qubesd: they work, and when something is
//! missing they say so once, naming the flag, without talk of changes; and
//! `policy lint`/`policy eval` catch the mistakes the language allows.

mod common;

use std::path::Path;
use std::process::Command;

use common::{FakeSysfs, BIN};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `qubes-pci-admin ARGS…` with nothing of dom0 around: no qubesd, no
/// journal; logging left as a newcomer has it.
fn run(sysfs: &Path, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(ROOT)
        .args(["--sysfs", &sysfs.display().to_string()])
        .args(["--procfs", &dir.path().display().to_string()])
        .args(["--qubesd-socket", &dir.path().join("none.sock").display().to_string()])
        .args([
            "--qubesd-internal-socket",
            &dir.path().join("none.sock").display().to_string(),
        ])
        .args(args);
    common::run(c, b"")
}

#[test]
fn list_and_policy_eval_work_with_the_example_configuration() {
    let sys = FakeSysfs::standard();
    let out = run(
        sys.root(),
        &[
            "--qubes-xml",
            "examples/qubes.xml",
            "--system-info",
            "examples/system-info.json",
            "list",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dom0:00_14.0"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("qubesd is not reachable") && err.lines().count() == 1,
        "{err}"
    );
    let out = run(
        sys.root(),
        &[
            "--system-info",
            "examples/system-info.json",
            "--policy-dir",
            "examples/policy.d",
            "policy",
            "eval",
            "mgmt",
            "work",
            "admin.vm.device.pci.Assign+dom0+00_14.0",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("result=allow") && text.contains("rule=examples/policy.d/include/admin-local-rwx:"),
        "{text}"
    );
}

#[test]
fn without_qubesd_one_message_names_the_flag_and_exits_one() {
    let sys = FakeSysfs::standard();
    for args in [
        &["--qubes-xml", "examples/qubes.xml", "list"][..],
        &[
            "--policy-dir",
            "examples/policy.d",
            "policy",
            "eval",
            "mgmt",
            "work",
            "admin.vm.device.pci.Available",
        ][..],
    ] {
        let out = run(sys.root(), args);
        assert_eq!(out.status.code(), Some(1), "not a usage error: {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one message: {err}");
        assert!(
            err.contains("--system-info FILE") && err.contains("examples/system-info.json"),
            "{err}"
        );
        assert!(
            !err.contains("changed") && !err.contains("journal"),
            "a read changes nothing: {err}"
        );
    }
    let out = run(
        sys.root(),
        &[
            "--system-info",
            "examples/system-info.json",
            "--qubes-xml",
            "/nonexistent",
            "list",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--qubes-xml FILE") && err.lines().count() == 1, "{err}");
    // Usage errors keep 2.
    assert_eq!(run(sys.root(), &["list", "--bogus"]).status.code(), Some(2));
}

#[test]
fn lint_and_eval_catch_what_the_language_allows() {
    let sys = FakeSysfs::standard();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path();
    std::fs::write(
        policy.join("30-x.policy"),
        "admin.vm.device.pci.Asign * mgmt @anyvm allow target=dom0\n\
         admin.vm.device.pci.Assign * mgmt work allow\n\
         admin.vm.device.pci.Available * mgmt @adminvm allow\n",
    )
    .unwrap();
    std::fs::write(
        policy.join("40-x.polcy"),
        "admin.vm.device.pci.Assign * mgmt @anyvm deny\n",
    )
    .unwrap();
    let p = policy.display().to_string();
    let out = run(sys.root(), &["--policy-dir", &p, "policy", "lint"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("40-x.polcy: warning: ignored"), "{err}");
    assert!(
        err.contains("30-x.policy:1: warning: admin.vm.device.pci.Asign is not a method")
            && err.contains("did you mean admin.vm.device.pci.Assign?"),
        "{err}"
    );
    assert!(
        err.contains("30-x.policy:2: warning") && err.contains("target=dom0"),
        "{err}"
    );
    assert!(
        !err.contains("30-x.policy:3:"),
        "@adminvm runs in dom0 without target=: {err}"
    );
    // An empty policy denies everything.
    let empty = tempfile::tempdir().unwrap();
    let out = run(
        sys.root(),
        &["--policy-dir", &empty.path().display().to_string(), "policy", "lint"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no rule at all"),
        "{out:?}"
    );
    // eval notes a qube the system does not have, and a misspelt method.
    let out = run(
        sys.root(),
        &[
            "--policy-dir",
            &p,
            "--system-info",
            "examples/system-info.json",
            "policy",
            "eval",
            "mgmt",
            "wrok",
            "admin.vm.device.pci.Asign",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("note: the target wrok is not a qube"), "{err}");
    assert!(err.contains("note: admin.vm.device.pci.Asign is not a method"), "{err}");
}
