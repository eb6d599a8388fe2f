#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The policy check in the request path, and the `policy` commands, through
//! the built binary.

mod common;

use common::{body_of, error_of, FakeSysfs, TestEnv, BIN};

const AVAILABLE: &str = "admin.vm.device.pci.Available";
const SHIPPED: &str = include_str!("../policy/85-qubes-pci-admin.policy");
/// What Qubes' own generated 90-admin-default.policy says for the PCI methods.
const ADMIN_DEFAULT: &str = include_str!("data/policy/90-admin-default.policy");

fn env_with_grants(rwx: &str) -> TestEnv {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy("85-qubes-pci-admin.policy", SHIPPED);
    env.write_policy("90-admin-default.policy", ADMIN_DEFAULT);
    env.write_policy("include/admin-local-ro", "!include include/admin-local-rwx\n");
    env.write_policy("include/admin-local-rwx", rwx);
    env
}

fn cli(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(BIN);
    c.env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .envs(env.envs())
        .args(args);
    common::run(c, b"")
}

#[test]
fn management_qube_allowed_by_policy_lists_devices() {
    let env = env_with_grants("mgmt @adminvm allow target=dom0\nmgmt @tag:created-by-mgmt allow target=dom0\n");
    let out = env.exec(AVAILABLE, "", "mgmt", "@adminvm", b"");
    assert_eq!(body_of(&out), include_str!("data/available-standard.txt"));
    // dom0 has three spellings; a rule for @adminvm covers a call naming dom0.
    assert_eq!(
        body_of(&env.exec(AVAILABLE, "", "mgmt", "dom0", b"")),
        include_str!("data/available-standard.txt")
    );
    // The grant covers created-by-mgmt qubes, not others.
    assert_eq!(body_of(&env.exec(AVAILABLE, "", "mgmt", "work", b"")), "");
    assert_eq!(
        error_of(&env.exec(AVAILABLE, "", "mgmt", "sys-net", b"")).0,
        "QubesVMNotFoundError"
    );
}

#[test]
fn qube_without_a_grant_is_denied_and_nothing_leaks() {
    let env = env_with_grants("mgmt @adminvm allow target=dom0\n");
    let out = env.exec(AVAILABLE, "", "work", "@adminvm", b"");
    let (ty, msg) = error_of(&out);
    assert_eq!(ty, "QubesDaemonAccessError");
    assert!(msg.contains(AVAILABLE));
    assert!(!msg.contains("00_14.0"));
    // Unknown destinations are denied by policy before they are looked up.
    let (ty, _) = error_of(&env.call("work", "no-such-qube", "admin.vm.device.pci.Assigned", b""));
    assert_eq!(
        ty, "QubesVMNotFoundError",
        "a refused read of a qube: qvm-pci list skips that qube"
    );
}

#[test]
fn a_broken_policy_denies_everything() {
    let env = env_with_grants("mgmt @adminvm allow target=dom0\n");
    assert!(body_of(&env.exec(AVAILABLE, "", "mgmt", "@adminvm", b"")).contains("00_14.0"));
    env.write_policy(
        "50-broken.policy",
        "# fine\nadmin.vm.device.pci.Available * @anyvm @adminvm allow target=dom0 # inline comments do not exist\n",
    );
    assert_eq!(
        error_of(&env.exec(AVAILABLE, "", "mgmt", "@adminvm", b"")).0,
        "QubesDaemonAccessError"
    );
    let lint = cli(&env, &["policy", "lint"]);
    assert_eq!(lint.status.code(), Some(1));
    let err = String::from_utf8(lint.stderr).unwrap();
    assert!(err.contains("50-broken.policy:2:"), "{err}");
    // A file name qrexec refuses also disables the whole policy.
    std::fs::remove_file(env.policy_dir().join("50-broken.policy")).unwrap();
    assert_eq!(cli(&env, &["policy", "lint"]).status.code(), Some(0));
    env.write_policy("50-Bad.policy", "");
    assert_eq!(
        error_of(&env.exec(AVAILABLE, "", "mgmt", "@adminvm", b"")).0,
        "QubesDaemonAccessError"
    );
    assert!(String::from_utf8(cli(&env, &["policy", "lint"]).stderr)
        .unwrap()
        .contains("invalid filename"));
}

#[test]
fn include_loops_and_unreadable_includes_are_errors_not_crashes() {
    let env = env_with_grants("mgmt @adminvm allow target=dom0\n");
    env.write_policy("40-loop.policy", "!include include/loop\n");
    env.write_policy("include/loop", "!include include/loop\n");
    let lint = cli(&env, &["policy", "lint"]);
    assert_eq!(lint.status.code(), Some(1));
    assert!(String::from_utf8(lint.stderr).unwrap().contains("include loop"));
    assert_eq!(
        error_of(&env.exec(AVAILABLE, "", "mgmt", "@adminvm", b"")).0,
        "QubesDaemonAccessError"
    );
    env.write_policy("40-loop.policy", "!include include/missing\n");
    let lint = cli(&env, &["policy", "lint"]);
    assert!(String::from_utf8(lint.stderr)
        .unwrap()
        .contains("40-loop.policy:1: not a file"));
}

#[test]
fn ask_proceeds_and_redirects_elsewhere_are_refused() {
    let env = env_with_grants("");
    env.write_policy(
        "30-user.policy",
        "admin.vm.device.pci.Available * gui @adminvm ask target=dom0\n\
         admin.vm.device.pci.Available * mgmt @adminvm allow target=sys-net\n\
         admin.vm.device.pci.Available * sys-net @adminvm allow\n",
    );
    assert!(body_of(&env.exec(AVAILABLE, "", "gui", "@adminvm", b"")).contains("00_14.0"));
    assert_eq!(
        error_of(&env.exec(AVAILABLE, "", "mgmt", "@adminvm", b"")).0,
        "QubesDaemonAccessError"
    );
    // `allow` without target= resolves to the requested @adminvm, i.e. dom0.
    assert!(body_of(&env.exec(AVAILABLE, "", "sys-net", "@adminvm", b"")).contains("00_14.0"));
}

#[test]
fn run_dir_shadows_etc_by_file_name() {
    let env = env_with_grants("");
    let run = env.dir.path().join("run-policy");
    std::fs::create_dir_all(&run).unwrap();
    env.write_policy(
        "30-user.policy",
        "admin.vm.device.pci.Available * mgmt @adminvm allow target=dom0\n",
    );
    std::fs::write(
        run.join("30-user.policy"),
        "admin.vm.device.pci.Available * mgmt @adminvm deny\n",
    )
    .unwrap();
    let dirs = format!("{}:{}", run.display(), env.policy_dir().display());
    let mut c = std::process::Command::new(BIN);
    c.env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .envs(env.envs())
        .env("QUBES_PCI_ADMIN_POLICY_DIR", &dirs);
    c.args(["policy", "eval", "--json", "mgmt", "@adminvm", AVAILABLE]);
    let out = common::run(c, b"");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "deny");
    assert!(
        v["rule"].as_str().unwrap().contains("run-policy/30-user.policy:1"),
        "{v}"
    );
}

#[test]
fn policy_eval_outputs() {
    let env = env_with_grants("mgmt @tag:created-by-mgmt allow target=dom0\n");
    env.write_policy("30-user.policy", "test.Svc * work @anyvm ask default_target=sys-net\n");
    let out = cli(
        &env,
        &[
            "policy",
            "eval",
            "mgmt",
            "work",
            "admin.vm.device.pci.Assign+dom0+00_14.0",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("user=DEFAULT\nresult=allow\ntarget=dom0\nautostart=True\nrequested_target=work\nrule="),
        "{text}"
    );
    assert!(text.trim_end().ends_with("include/admin-local-rwx:1"), "{text}");
    let out = cli(&env, &["policy", "eval", "--json", "work", "sys-net", "test.Svc"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "ask");
    assert_eq!(v["default_target"], "sys-net");
    let targets: Vec<&str> = v["targets_for_ask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        targets.contains(&"sys-net") && !targets.contains(&"work") && !targets.contains(&"dom0"),
        "{targets:?}"
    );
    for key in [
        "target",
        "user",
        "notify",
        "autostart",
        "requested_target",
        "rule",
        "error",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    let out = cli(&env, &["policy", "eval", "--json", "work", "@dispvm:work", "test.Svc"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("not a template for dispvm"));
}

/// The shipped file adds only what Qubes' 90-admin-default.policy does not
/// have (the option grants), sorts before it, and its example grants work
/// with stock qvm-pci in a GUI domain (dom0 is @adminvm, never @anyvm).
#[test]
fn shipped_policy_adds_only_the_option_grants() {
    assert!(
        !SHIPPED.lines().any(|l| l.starts_with("!include")),
        "upstream routes the methods"
    );
    let rules: Vec<&str> = SHIPPED
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules, ["admin.vm.device.pci.Option * @anyvm @anyvm deny"]);
    assert!("85-qubes-pci-admin.policy" < "90-admin-default.policy");
    // Every method is routed by upstream's file, by its class.
    for m in qubes_pci_rpc::Method::ALL {
        let include = if m.is_read_only() {
            "include/admin-local-ro"
        } else {
            "include/admin-local-rwx"
        };
        let line = ADMIN_DEFAULT
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(m.name().as_str()))
            .unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields, ["!include-service", m.name().as_str(), "*", include], "{m}");
    }
    // The commented GUI-domain example, uncommented, lets sys-gui list
    // assignments of dom0 (qvm-pci asks) and of any qube.
    let gui: String = SHIPPED
        .lines()
        .filter_map(|l| l.strip_prefix("# admin.vm.device.pci."))
        .filter(|l| l.contains("sys-gui"))
        .map(|l| format!("admin.vm.device.pci.{l}\n"))
        .collect();
    let env = env_with_grants("");
    env.write_policy("30-gui.policy", &gui);
    for (target, method) in [
        ("@adminvm", "Assigned"),
        ("work", "Assigned"),
        ("@adminvm", "Attached"),
        ("@adminvm", "Available"),
    ] {
        let out = cli(
            &env,
            &[
                "policy",
                "eval",
                "sys-gui",
                target,
                &format!("admin.vm.device.pci.{method}"),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{method} {target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// `policy eval --batch`: one decision per JSON line, the same object as
/// `--json` gives for each request alone, and exit 2 on a line that is not
/// a request.
#[test]
fn policy_eval_batch_answers_each_line_as_eval_json_does() {
    let env = env_with_grants("mgmt @tag:created-by-mgmt allow target=dom0\n");
    env.write_policy("30-user.policy", "test.Svc * work @anyvm ask default_target=sys-net\n");
    let requests = [
        ("mgmt", "work", "admin.vm.device.pci.Assign+dom0+00_14.0"),
        ("work", "sys-net", "test.Svc"),
        ("work", "@dispvm:work", "test.Svc"),
        ("mgmt", "sys-net", "admin.vm.device.pci.Assign+dom0+00_14.0"),
    ];
    let input: String = requests
        .iter()
        .map(|(s, t, svc)| format!("{}\n", serde_json::json!({"source": s, "target": t, "service": svc})))
        .collect();
    let mut c = std::process::Command::new(BIN);
    c.env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .envs(env.envs())
        .args(["policy", "eval", "--batch"]);
    let out = common::run(c, input.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), requests.len());
    for ((s, t, svc), got) in requests.iter().zip(&lines) {
        let one = cli(&env, &["policy", "eval", "--json", s, t, svc]);
        let want: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
        assert_eq!(got, &want, "{s} {t} {svc}");
    }
    assert_eq!(lines[0]["result"], "allow");
    assert_eq!(lines[1]["result"], "ask");
    assert_eq!(lines[3]["result"], "deny");

    let mut c = std::process::Command::new(BIN);
    c.env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .envs(env.envs())
        .args(["policy", "eval", "--batch"]);
    let out = common::run(c, b"{\"source\": \"mgmt\"}\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}

/// `policy eval` says why in text mode too (the deciding rule, and the
/// reason of a deny), exits 2 when the policy cannot be loaded (no decision
/// was made), and `policy lint` reports every error in one run.
#[test]
fn policy_eval_explains_and_lint_reports_every_error() {
    let env = env_with_grants("mgmt @tag:created-by-mgmt allow target=dom0\n");
    env.write_policy("30-user.policy", "test.Svc * work @anyvm deny\n");
    let out = cli(&env, &["policy", "eval", "work", "sys-net", "test.Svc"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("result=deny\n"), "{text}");
    assert!(text.contains("rule=") && text.contains("30-user.policy:1"), "{text}");
    assert!(text.contains("reason=denied by policy"), "{text}");
    let out = cli(&env, &["policy", "eval", "work", "sys-net", "other.Svc"]);
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("reason=no matching rule found"));

    // Three broken lines in two files, and a bad file name: all reported.
    env.write_policy(
        "40-bad.policy",
        "test.Svc * work\nnot a rule at all\ntest.Svc * @bogus:x @anyvm allow\n",
    );
    env.write_policy("41-bad.policy", "test.Svc * work @anyvm allow frobnicate=yes\n");
    env.write_policy("42-Bad.policy", "");
    let out = cli(&env, &["policy", "lint"]);
    assert_eq!(out.status.code(), Some(1));
    let errors = String::from_utf8(out.stderr).unwrap();
    for want in [
        "40-bad.policy:1",
        "40-bad.policy:2",
        "40-bad.policy:3",
        "41-bad.policy:1",
        "42-Bad.policy",
    ] {
        assert!(errors.contains(want), "{want} missing in:\n{errors}");
    }
    assert!(String::from_utf8(out.stdout).unwrap().contains("5 errors"));
    // eval with a policy that does not load: exit 2, not a deny.
    let out = cli(&env, &["policy", "eval", "work", "sys-net", "test.Svc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("policy lint"));
    // And a policy directory that is not there.
    let mut c = std::process::Command::new(BIN);
    c.env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .envs(env.envs())
        .env("QUBES_PCI_ADMIN_POLICY_DIR", env.dir.path().join("nowhere"));
    c.args(["policy", "eval", "work", "sys-net", "test.Svc"]);
    assert_eq!(common::run(c, b"").status.code(), Some(2));
}

/// The read-only commands (`list`, `policy eval`, `policy lint`, and an
/// exec-mode `Available`) need nothing writable: a dom0 user who is not
/// root runs them wherever the files they read are readable (and qubesd's
/// socket is open to the user, as to the qubes group in dom0). Run as
/// `nobody` when the tests run as root; otherwise the whole suite already
/// runs them unprivileged.
#[test]
fn read_only_commands_work_for_a_user_who_is_not_root() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let env = env_with_grants("mgmt @adminvm allow target=dom0\n");
    if std::fs::read_to_string("/proc/self/status").is_ok_and(|s| !s.lines().any(|l| l.starts_with("Uid:\t0\t"))) {
        return;
    }
    // What dom0 has: readable files, sockets open to the user.
    let open_up = |p: &std::path::Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    let mut stack = vec![env.dir.path().to_owned(), env.sysfs.root().to_owned()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            open_up(&p, 0o755).unwrap();
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if meta.file_type().is_socket() {
            open_up(&p, 0o666).unwrap();
        } else if meta.is_file() {
            open_up(&p, 0o644).unwrap();
        }
    }
    let as_nobody = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.env_clear()
            .env("QUBES_PCI_ADMIN_LOG", "off")
            .envs(env.envs())
            .args(args)
            .uid(65534)
            .gid(65534);
        common::run(c, b"")
    };
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["policy", "lint"],
        &["policy", "eval", "mgmt", "@adminvm", AVAILABLE],
    ] {
        let out = as_nobody(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let link = env.dir.path().join(AVAILABLE);
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut c = std::process::Command::new(&link);
    c.env_clear()
        .env("QUBES_PCI_ADMIN_LOG", "off")
        .envs(env.envs())
        .env("QREXEC_REMOTE_DOMAIN", "mgmt")
        .env("QREXEC_REQUESTED_TARGET_TYPE", "keyword")
        .env("QREXEC_REQUESTED_TARGET_KEYWORD", "adminvm")
        .uid(65534)
        .gid(65534);
    let out = common::run(c, b"");
    assert!(
        out.stdout.starts_with(b"0\0"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
