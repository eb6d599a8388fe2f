//! Shared helpers for the integration tests: fake sysfs trees, a test
//! environment (policy dir, the qubesd stand-in with its qubes.xml) and
//! runners for the built binary in `call` and exec mode.
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
/// The thin exec entry the qrexec exec entries link to.
pub const EXEC: &str = env!("CARGO_BIN_EXE_qubes-pci-admin-exec");

/// The qubes of every test, in qubesd's qubes.xml shape, as a stock dom0
/// holds them: sys-net, mgmt and gui start running; personal is set to pvh;
/// media has qubesd's default virt_mode (pvh until its first PCI
/// assignment); default-mgmt-dvm has the `internal` feature ("1").
pub const QUBES_XML: &str = r#"<?xml version='1.0' encoding='utf-8'?>
<qubes>
 <domains>
  <domain id="domain-0" class="AdminVM"><properties><property name="name">dom0</property><property name="uuid">00000000-0000-0000-0000-000000000000</property></properties><tags><tag name="dom0-tag"/></tags></domain>
  <domain id="domain-1" class="AppVM"><properties><property name="name">sys-net</property><property name="uuid">1b5e3a48-7f3c-4d2e-9a51-2c0d6f1e8a01</property><property name="virt_mode">hvm</property></properties><tags/></domain>
  <domain id="domain-2" class="DispVM"><properties><property name="name">sys-usb</property><property name="uuid">2c6f4b59-8a4d-4e3f-8b62-3d1e7a2f9b02</property><property name="virt_mode">hvm</property></properties><tags/></domain>
  <domain id="domain-3" class="AppVM"><properties><property name="name">mgmt</property><property name="uuid">3d7a5c6a-9b5e-4f4a-9c73-4e2f8b3a0c03</property></properties><tags><tag name="mgmt"/></tags></domain>
  <domain id="domain-4" class="AppVM"><properties><property name="name">gui</property><property name="uuid">4e8b6d7b-ac6f-4a5b-8d84-5f3a9c4b1d04</property></properties><tags/></domain>
  <domain id="domain-5" class="AppVM"><properties><property name="name">work</property><property name="uuid">5f9c7e8c-bd7a-4b6c-9e95-6a4bad5c2e05</property><property name="virt_mode">hvm</property></properties><tags><tag name="created-by-mgmt"/><tag name="guivm-gui"/></tags></domain>
  <domain id="domain-6" class="AppVM"><properties><property name="name">personal</property><property name="uuid">6aad8f9d-ce8b-4c7d-8fa6-7b5cbe6d3f06</property><property name="virt_mode">pvh</property></properties><tags/></domain>
  <domain id="domain-7" class="AppVM"><properties><property name="name">media</property><property name="uuid">7b0e9fae-df9c-4d8e-9ab7-8c6dcf7e4a07</property></properties><tags><tag name="created-by-mgmt"/></tags></domain>
  <domain id="domain-8" class="AppVM"><properties><property name="name">default-mgmt-dvm</property><property name="uuid">9d2a1b3c-4e5f-4a6b-8c7d-9e0f1a2b3c09</property><property name="template_for_dispvms">True</property></properties><features><feature name="internal">1</feature></features><tags/></domain>
 </domains>
</qubes>
"#;

/// The virtual filesystems every dom0 has mounted.
pub const VIRTUAL_MOUNTS: &[(&str, &str, &str, &str)] = &[
    ("0:22", "/proc", "proc", "proc"),
    ("0:21", "/sys", "sysfs", "sysfs"),
    ("0:5", "/dev", "devtmpfs", "devtmpfs"),
    ("0:25", "/run", "tmpfs", "tmpfs"),
];

/// `/proc/self/mountinfo` text for `(MAJ:MIN, mount point, type, source)`.
pub fn mountinfo(mounts: &[(&str, &str, &str, &str)]) -> String {
    mounts
        .iter()
        .enumerate()
        .map(|(i, (devno, at, fstype, source))| {
            format!(
                "{} 1 {devno} / {at} rw,relatime shared:{i} - {fstype} {source} rw\n",
                20 + i
            )
        })
        .collect()
}

/// The stand-in for qubesd the project ships (tests/standin).
pub const STANDIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/standin/qubesd-standin.py");

/// A fake sysfs, a policy dir and a running qubesd stand-in with its
/// qubes.xml, for one test.
pub struct TestEnv {
    pub sysfs: FakeSysfs,
    pub dir: tempfile::TempDir,
    standin: Option<std::process::Child>,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(mut c) = self.standin.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl TestEnv {
    pub fn new(sysfs: FakeSysfs) -> TestEnv {
        TestEnv::with_qubes_xml(sysfs, QUBES_XML)
    }

    pub fn with_qubes_xml(sysfs: FakeSysfs, xml: &str) -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policy/include")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        // What every dom0 has mounted: virtual filesystems only, no swap.
        std::fs::write(dir.path().join("proc/self/mountinfo"), mountinfo(VIRTUAL_MOUNTS)).unwrap();
        std::fs::write(dir.path().join("proc/swaps"), "Filename\tType\tSize\tUsed\tPriority\n").unwrap();
        std::fs::write(dir.path().join("qubes.xml"), xml).unwrap();
        let mut env = TestEnv {
            sysfs,
            dir,
            standin: None,
        };
        env.start_standin();
        for q in ["sys-net", "mgmt", "gui"] {
            if xml.contains(&format!(">{q}<")) {
                env.set_power(q, "Running");
            }
        }
        env
    }

    fn start_standin(&mut self) {
        let d = self.dir.path();
        let mut c = self.command(Path::new("python3"));
        c.arg(STANDIN)
            .arg("--qubes-xml")
            .arg(d.join("qubes.xml"))
            .arg("--admin-socket")
            .arg(d.join("qubesd.sock"))
            .arg("--internal-socket")
            .arg(d.join("qubesd.internal.sock"))
            .arg("--log")
            .arg(d.join("qubesd.log"))
            .arg("--check-bin")
            .arg(BIN)
            .arg("--sysfs")
            .arg(self.sysfs.root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().expect("python3 runs the qubesd stand-in");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert!(line.contains("ready"), "the stand-in did not start: {line:?}");
        self.standin = Some(child);
    }

    /// dom0's mounts (`/proc/self/mountinfo` lines: `MAJ:MIN MOUNTPOINT`;
    /// `0:NN` a virtual filesystem) and swap partitions.
    pub fn set_dom0_mounts(&self, mounts: &[(&str, &str)], swaps: &[&str]) {
        let full: Vec<(&str, &str, &str, &str)> = mounts
            .iter()
            .map(|(devno, at)| {
                if devno.starts_with("0:") {
                    (*devno, *at, "tmpfs", "tmpfs")
                } else {
                    (*devno, *at, "ext4", "/dev/x")
                }
            })
            .collect();
        self.set_mountinfo(&full);
        let swaps: Vec<(&str, &str)> = swaps.iter().map(|s| (*s, "partition")).collect();
        self.set_swaps(&swaps);
    }

    /// dom0's `/proc/self/mountinfo`: `(MAJ:MIN, mount point, type, source)`.
    pub fn set_mountinfo(&self, mounts: &[(&str, &str, &str, &str)]) {
        std::fs::write(self.dir.path().join("proc/self/mountinfo"), mountinfo(mounts)).unwrap();
    }

    /// dom0's `/proc/swaps`: `(file name, partition|file)`.
    pub fn set_swaps(&self, swaps: &[(&str, &str)]) {
        let mut sw = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n".to_owned();
        for (name, kind) in swaps {
            sw.push_str(&format!("{name}\t{kind}\t\t1000\t\t0\t\t-2\n"));
        }
        std::fs::write(self.dir.path().join("proc/swaps"), sw).unwrap();
    }

    /// Stops the stand-in: qubesd is gone.
    pub fn stop_standin(&mut self) {
        if let Some(mut c) = self.standin.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policy")
    }

    pub fn write_policy(&self, name: &str, text: &str) {
        let p = self.policy_dir().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn qubes_xml_path(&self) -> PathBuf {
        self.dir.path().join("qubes.xml")
    }

    /// One request to the stand-in as dom0 (what a dom0 tool sends to
    /// qubesd): the raw reply.
    pub fn qubesd(&self, method: &str, arg: &str, dest: &str, payload: &[u8]) -> Vec<u8> {
        let sock = if method.starts_with("internal.") {
            "qubesd.internal.sock"
        } else {
            "qubesd.sock"
        };
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.path().join(sock)).unwrap();
        s.write_all(format!("{method}+{arg} dom0 name {dest}\0").as_bytes())
            .unwrap();
        s.write_all(payload).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut out).unwrap();
        out
    }

    /// Starts (admin.vm.Start, with the start check) or kills a qube.
    pub fn set_power(&self, qube: &str, state: &str) {
        let method = if state == "Running" {
            "admin.vm.Start"
        } else {
            "admin.vm.Kill"
        };
        let out = self.qubesd(method, "", qube, b"");
        assert_eq!(out, b"0\0", "{method} {qube}: {:?}", String::from_utf8_lossy(&out));
    }

    /// Sets a qube property in qubesd (admin.vm.property.Set).
    pub fn set_prop(&self, qube: &str, key: &str, value: &str) {
        let out = self.qubesd("admin.vm.property.Set", key, qube, value.as_bytes());
        assert_eq!(out, b"0\0", "{:?}", String::from_utf8_lossy(&out));
    }

    /// The PCI assignments in qubes.xml now.
    pub fn recorded(&self) -> Vec<qubes_pci_admin::qubes_xml::Entry> {
        qubes_pci_admin::qubes_xml::QubesXml::load(&self.qubes_xml_path())
            .unwrap()
            .entries
    }

    /// The bytes of qubes.xml now.
    pub fn qubes_xml_bytes(&self) -> Vec<u8> {
        std::fs::read(self.qubes_xml_path()).unwrap()
    }

    /// Every request qubesd received, oldest first, as JSON objects.
    pub fn qubesd_requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("qubesd.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The requests qubesd received that change something.
    pub fn qubesd_writes(&self) -> Vec<serde_json::Value> {
        self.qubesd_requests()
            .into_iter()
            .filter(|r| {
                let m = r["method"].as_str().unwrap_or_default();
                ["Assign", "Unassign", "Set.assignment", "Attach", "Detach"]
                    .iter()
                    .any(|w| m == format!("admin.vm.device.pci.{w}"))
            })
            .collect()
    }

    /// The socket exec mode hands calls to (see `envs`).
    pub fn handoff_socket(&self) -> PathBuf {
        self.dir.path().join("handoff.sock")
    }

    /// The settings as environment variables.
    pub fn envs(&self) -> Vec<(&'static str, PathBuf)> {
        let d = self.dir.path();
        vec![
            ("QUBES_PCI_ADMIN_SYSFS", self.sysfs.root().to_owned()),
            ("QUBES_PCI_ADMIN_PROCFS", d.join("proc")),
            ("QUBES_PCI_ADMIN_POLICY_DIR", self.policy_dir()),
            ("QUBES_PCI_ADMIN_QUBESD_SOCKET", d.join("qubesd.sock")),
            ("QUBES_PCI_ADMIN_QUBESD_INTERNAL_SOCKET", d.join("qubesd.internal.sock")),
            ("QUBES_PCI_ADMIN_QUBES_XML", d.join("qubes.xml")),
            // Where exec mode looks for a daemon to hand calls to: nothing
            // listens there unless a test starts a daemon on it.
            ("QUBES_PCI_ADMIN_DAEMON_SOCKET", self.handoff_socket()),
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
        self.call_with(&[], source, target, method, payload)
    }

    /// `call`, with more settings in the environment.
    pub fn call_with(&self, vars: &[(&str, &str)], source: &str, target: &str, method: &str, payload: &[u8]) -> Output {
        let mut c = self.command(Path::new(BIN));
        c.envs(vars.iter().copied());
        c.args(["call", "--source", source, "--target", target, method]);
        run(c, payload)
    }

    /// Runs the shipped exec entry as qrexec runs
    /// `/etc/qubes-rpc/<method>`: the thin `qubes-pci-admin-exec` under the
    /// method's name (with `qubes-pci-admin` beside it, as installed), with
    /// `QREXEC_*` variables and the argument as argv[1].
    pub fn exec(&self, method: &str, arg: &str, source: &str, target: &str, payload: &[u8]) -> Output {
        run(self.exec_command(EntryKind::Thin, method, arg, source, target), payload)
    }

    /// [`TestEnv::exec`], with the full binary as the entry.
    pub fn exec_full(&self, method: &str, arg: &str, source: &str, target: &str, payload: &[u8]) -> Output {
        run(self.exec_command(EntryKind::Full, method, arg, source, target), payload)
    }

    /// The command qrexec would run for `method`, through `entry`.
    pub fn exec_command(&self, entry: EntryKind, method: &str, arg: &str, source: &str, target: &str) -> Command {
        let dir = self.dir.path().join(match entry {
            EntryKind::Thin => "rpc-thin",
            EntryKind::Full => "rpc-full",
        });
        let link = dir.join(method);
        if !link.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            match entry {
                EntryKind::Thin => {
                    std::os::unix::fs::symlink(EXEC, &link).unwrap();
                    let _ = std::os::unix::fs::symlink(BIN, dir.join("qubes-pci-admin"));
                }
                EntryKind::Full => std::os::unix::fs::symlink(BIN, &link).unwrap(),
            }
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
        c
    }
}

/// Which program an exec entry runs.
#[derive(Clone, Copy, Debug)]
pub enum EntryKind {
    /// `qubes-pci-admin-exec`, as shipped.
    Thin,
    /// `qubes-pci-admin` itself in exec mode.
    Full,
}

/// Waits (up to 10 s) until something accepts connections on `socket`.
pub fn wait_for_socket(socket: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Writes an executable shell script.
pub fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
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

/// Upstream qubesd's Python side, prepared by tests/real-qubesd/setup.sh
/// with this checkout's extension installed: `None` unless
/// `QUBES_CORE_ADMIN_SRC` and `QUBES_CORE_QREXEC_SRC` name extracted trees.
pub struct RealQubesd {
    pub admin_tree: PathBuf,
    pub python: String,
    pub pythonpath: String,
    pub ext: String,
    pub ext_detail: String,
}

impl RealQubesd {
    pub fn setup(site: &Path) -> Option<RealQubesd> {
        let tree = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_dir());
        let (admin, qrexec) = (tree("QUBES_CORE_ADMIN_SRC")?, tree("QUBES_CORE_QREXEC_SRC")?);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cache = std::env::var_os("REAL_QUBESD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/real-qubesd"));
        let setup = Command::new("bash")
            .arg(root.join("tests/real-qubesd/setup.sh"))
            .arg(&cache)
            .arg(site)
            .arg(root)
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
        Some(RealQubesd {
            admin_tree: admin,
            python: var("REAL_QUBESD_PYTHON"),
            pythonpath: var("REAL_QUBESD_PYTHONPATH"),
            ext: var("REAL_QUBESD_EXT"),
            ext_detail: var("REAL_QUBESD_EXT_DETAIL"),
        })
    }

    /// `tests/real-qubesd/check.py ARGS…` with this setup's environment.
    pub fn check_py(&self) -> Command {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut c = Command::new(&self.python);
        c.arg(root.join("tests/real-qubesd/check.py"))
            .env("UPSTREAM_ADMIN_TREE", &self.admin_tree)
            .env("REAL_QUBESD_PYTHON", &self.python)
            .env("REAL_QUBESD_PYTHONPATH", &self.pythonpath)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("QUBES_PCI_ADMIN_PCI_IDS", root.join("tests/data/pci.ids"));
        c
    }
}

/// The device at `port` in a `--json` device listing (both binaries).
pub fn device_at<'a>(list: &'a serde_json::Value, port: &str) -> &'a serde_json::Value {
    list.as_array()
        .and_then(|a| a.iter().find(|d| d["port_id"] == port))
        .unwrap_or_else(|| panic!("no device {port} in {list}"))
}
