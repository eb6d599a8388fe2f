//! Shared helpers for the integration tests: fake sysfs trees, a test
//! environment (state dir, policy dir, system info) and runners for the
//! built binary in `call` and exec mode.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod fakesys;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[allow(unused_imports)]
pub use fakesys::{FakeDev, FakeSysfs};

pub const BIN: &str = env!("CARGO_BIN_EXE_qubes-pci-admin");

pub const SYSTEM_INFO: &str = r#"{"domains": {
 "dom0": {"type": "AdminVM", "tags": ["dom0-tag"], "power_state": "Running", "uuid": "00000000-0000-0000-0000-000000000000"},
 "sys-net": {"type": "AppVM", "tags": [], "power_state": "Running", "uuid": "1b5e3a48-7f3c-4d2e-9a51-2c0d6f1e8a01", "virt_mode": "hvm"},
 "sys-usb": {"type": "DispVM", "tags": [], "power_state": "Halted", "uuid": "2c6f4b59-8a4d-4e3f-8b62-3d1e7a2f9b02", "virt_mode": "hvm"},
 "mgmt": {"type": "AppVM", "tags": ["mgmt"], "power_state": "Running", "uuid": "3d7a5c6a-9b5e-4f4a-9c73-4e2f8b3a0c03"},
 "gui": {"type": "AppVM", "tags": [], "power_state": "Running", "uuid": "4e8b6d7b-ac6f-4a5b-8d84-5f3a9c4b1d04"},
 "work": {"type": "AppVM", "tags": ["created-by-mgmt", "guivm-gui"], "power_state": "Halted", "uuid": "5f9c7e8c-bd7a-4b6c-9e95-6a4bad5c2e05", "virt_mode": "hvm"},
 "personal": {"type": "AppVM", "tags": [], "power_state": "Halted", "uuid": "6aad8f9d-ce8b-4c7d-8fa6-7b5cbe6d3f06", "virt_mode": "pvh"}
}}"#;

/// A state dir, a policy dir and a system-info file for one test.
pub struct TestEnv {
    pub sysfs: FakeSysfs,
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new(sysfs: FakeSysfs) -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::create_dir_all(dir.path().join("policy/include")).unwrap();
        std::fs::write(dir.path().join("system-info.json"), SYSTEM_INFO).unwrap();
        TestEnv { sysfs, dir }
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policy")
    }

    pub fn write_policy(&self, name: &str, text: &str) {
        let p = self.policy_dir().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Changes a qube's power state in the system info.
    pub fn set_power(&self, qube: &str, state: &str) {
        let p = self.dir.path().join("system-info.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["domains"][qube]["power_state"] = serde_json::Value::String(state.to_owned());
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    /// Changes one property of a qube in the system info.
    pub fn set_prop(&self, qube: &str, key: &str, value: serde_json::Value) {
        let p = self.dir.path().join("system-info.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["domains"][qube][key] = value;
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("state/assignments.bin")
    }

    /// `store dump` as JSON.
    pub fn dump(&self) -> serde_json::Value {
        let out = self.cli(&["store", "dump"], b"");
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The settings as environment variables.
    pub fn envs(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("QUBES_PCI_ADMIN_SYSFS", self.sysfs.root().to_owned()),
            ("QUBES_PCI_ADMIN_STATE_DIR", self.dir.path().join("state")),
            ("QUBES_PCI_ADMIN_POLICY_DIR", self.policy_dir()),
            ("QUBES_PCI_ADMIN_SYSTEM_INFO", self.dir.path().join("system-info.json")),
            (
                "QUBES_PCI_ADMIN_PCI_IDS",
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pci.ids")),
            ),
        ]
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("QUBES_PCI_ADMIN_LOG", "off");
        for (k, v) in self.envs() {
            c.env(k, v);
        }
        c
    }

    /// `qubes-pci-admin ARGS…` with this environment's settings.
    pub fn cli(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut c = self.command(Path::new(BIN));
        c.args(args);
        run(c, stdin)
    }

    /// `qubes-pci-admin call --source SRC --target DEST METHOD`.
    pub fn call(&self, source: &str, target: &str, method: &str, payload: &[u8]) -> Output {
        let mut c = self.command(Path::new(BIN));
        c.args(["call", "--source", source, "--target", target, method]);
        run(c, payload)
    }

    /// Runs the binary as qrexec runs `/etc/qubes-rpc/<method>`: under the
    /// method's name, with `QREXEC_*` variables and the argument as argv[1].
    pub fn exec(&self, method: &str, arg: &str, source: &str, target: &str, payload: &[u8]) -> Output {
        let link = self.dir.path().join(method);
        if !link.exists() {
            std::os::unix::fs::symlink(BIN, &link).unwrap();
        }
        let mut c = self.command(&link);
        c.env("QREXEC_REMOTE_DOMAIN", source)
            .env("QREXEC_SERVICE_FULL_NAME", format!("{method}+{arg}"));
        c.env("QREXEC_SERVICE_ARGUMENT", arg);
        if !arg.is_empty() {
            c.arg(arg);
        }
        match target.strip_prefix('@') {
            Some(k) => c
                .env("QREXEC_REQUESTED_TARGET_TYPE", "keyword")
                .env("QREXEC_REQUESTED_TARGET_KEYWORD", k),
            None => c
                .env("QREXEC_REQUESTED_TARGET_TYPE", "name")
                .env("QREXEC_REQUESTED_TARGET", target),
        };
        run(c, payload)
    }
}

pub fn run(mut c: Command, payload: &[u8]) -> Output {
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let payload = payload.to_vec();
    // Write from a thread: a service may answer without reading everything.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

/// Splits an error reply into (type, message); panics on anything else.
pub fn error_of(out: &Output) -> (String, String) {
    let s = &out.stdout;
    assert!(
        s.starts_with(b"2\0"),
        "not an error reply: {:?}",
        String::from_utf8_lossy(s)
    );
    let parts: Vec<&[u8]> = s[2..].split(|&b| b == 0).collect();
    assert_eq!(parts.len(), 4, "malformed error reply {:?}", String::from_utf8_lossy(s));
    assert_eq!(parts[1], b"", "traceback field must be empty");
    assert_eq!(parts[3], b"", "reply must end with NUL");
    (
        String::from_utf8_lossy(parts[0]).into_owned(),
        String::from_utf8_lossy(parts[2]).into_owned(),
    )
}

/// The body of a success reply; panics on anything else.
pub fn body_of(out: &Output) -> String {
    assert!(
        out.stdout.starts_with(b"0\0"),
        "not a success reply: {:?} (stderr {})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout[2..].to_vec()).unwrap()
}
