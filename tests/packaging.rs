#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The install layout: every path the packages install from the source tree
//! exists in the repository, the qrexec service entries name real methods,
//! the units are what the daemon expects, man pages and completions come
//! from the CLI definitions.

mod common;

use std::path::{Path, PathBuf};

use qubes_pci_rpc::Method;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn repo(p: &str) -> PathBuf {
    Path::new(ROOT).join(p)
}

/// Source-tree paths on `install`/`cp` lines (not build outputs, not
/// macros), globs expanded by prefix.
fn installed_sources(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("install") | Some("cp") => {}
            _ => continue,
        }
        let mut skip = false;
        for w in words {
            if std::mem::take(&mut skip) {
                continue;
            }
            if w == "-m" {
                skip = true;
                continue;
            }
            if w.starts_with('-') || w.starts_with('%') || w.starts_with('$') || w.starts_with("debian/") {
                continue;
            }
            if w.starts_with("target/") {
                continue;
            }
            // The first source-tree word is the source.
            out.push(w.to_owned());
            break;
        }
    }
    out
}

fn exists(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            let p = repo(prefix);
            let (dir, start) = (
                p.parent().unwrap().to_owned(),
                p.file_name().unwrap().to_string_lossy().into_owned(),
            );
            std::fs::read_dir(dir)
                .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&start)))
                .unwrap_or(false)
        }
        None => repo(pattern).symlink_metadata().is_ok(),
    }
}

#[test]
fn every_path_the_packages_install_exists() {
    let spec = std::fs::read_to_string(repo("packaging/qubes-pci-admin.spec")).unwrap();
    let rules = std::fs::read_to_string(repo("packaging/debian/rules")).unwrap();
    let mut sources = installed_sources(&spec);
    sources.extend(installed_sources(&rules));
    for extra in [
        "packaging/cargo-vendor-config.toml",
        "LICENSE",
        "README.md",
        "service/qubesd-ext",
    ] {
        assert!(
            spec.contains(extra) || rules.contains(extra) || extra == "LICENSE",
            "{extra}"
        );
        sources.push(extra.to_owned());
    }
    assert!(sources.len() >= 10, "{sources:?}");
    for s in &sources {
        assert!(exists(s), "packaging installs {s}, which is not in the repository");
    }
    // Both binaries the spec installs are binaries of this package.
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    for bin in ["qubes-pci-admin", "qubes-pci"] {
        assert!(spec.contains(&format!("target/release/{bin} ")), "{bin}");
        assert!(manifest.contains(&format!("name = \"{bin}\"")), "{bin}");
    }
    assert!(
        spec.contains("--offline") && rules.contains("--offline"),
        "builds must not need the network"
    );
}

#[test]
fn service_entries_name_real_methods_in_both_styles() {
    for (style, target) in [
        ("socket", "/run/qubes-pci-admin.sock"),
        ("exec", "/usr/bin/qubes-pci-admin-exec"),
    ] {
        let dir = repo(&format!("service/qubes-rpc/{style}"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut methods: Vec<String> = Method::ALL.iter().map(|m| m.to_string()).collect();
        methods.sort();
        assert_eq!(names, methods, "{style} entries");
        for n in &names {
            Method::parse(n).unwrap();
            let link = std::fs::read_link(dir.join(n)).unwrap();
            assert_eq!(link, Path::new(target), "{style}/{n}");
        }
    }
    // The socket entries point at the socket the socket unit creates.
    let socket = std::fs::read_to_string(repo("service/qubes-pci-admin.socket")).unwrap();
    assert!(socket.contains("ListenStream=/run/qubes-pci-admin.sock"));
    assert!(
        socket.contains("Accept=no"),
        "the daemon takes the listening socket (LISTEN_FDS)"
    );
}

#[test]
fn the_service_unit_is_a_sandboxed_notify_service() {
    let unit = std::fs::read_to_string(repo("service/qubes-pci-admin.service")).unwrap();
    for needed in [
        "Type=notify",
        "ExecStart=/usr/bin/qubes-pci-admin serve",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK\n",
        "DynamicUser=yes",
        "SupplementaryGroups=qubes",
        "ProtectProc=invisible",
        "PrivateMounts=yes",
        "IPAddressDeny=any",
        "SystemCallFilter=~@privileged @resources",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(needed), "missing {needed}");
    }
    // systemd's own rating, where systemd-analyze is installed: at most 1.0
    // (it was 1.5 while the service ran as root).
    let copy = tempfile::tempdir().unwrap();
    let path = copy.path().join("qubes-pci-admin.service");
    std::fs::write(&path, &unit).unwrap();
    match std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=10"])
        .arg(&path)
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let score: f64 = text
                .lines()
                .find_map(|l| l.split("exposure level for qubes-pci-admin.service: ").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .expect("systemd-analyze gives a score");
            assert!(score <= 1.0, "exposure {score}:\n{text}");
        }
        _ => println!("skipped the systemd-analyze rating: systemd-analyze is not installed here"),
    }
    // The daemon's device cache follows the kernel's device events: its
    // netlink socket is allowed, and its network namespace stays owned by
    // the initial user namespace (no PrivateUsers=), which the kernel sends
    // them to (the daemon checks that when it starts: tests/daemon.rs).
    let set = |key: &str| unit.lines().any(|l| l.trim_start().starts_with(&format!("{key}=")));
    assert!(
        !set("PrivateUsers"),
        "PrivateUsers= would keep the kernel's device events away"
    );
    assert!(unit.contains("RestrictAddressFamilies=AF_UNIX AF_NETLINK\n"));
    // It keeps no state of its own: nothing is writable.
    assert!(!unit.contains("ReadWritePaths") && !unit.contains("StateDirectory"));
    // What it reads by default is qubesd's.
    let out = std::process::Command::new(common::BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for path in [
        "/var/run/qubesd.sock",
        "/var/run/qubesd.internal.sock",
        "/var/lib/qubes/qubes.xml",
    ] {
        assert!(help.contains(path), "{path}");
    }
}

#[test]
fn man_pages_and_completions_come_from_the_cli() {
    let client = env!("CARGO_BIN_EXE_qubes-pci");
    for (bin, subcommands) in [
        (common::BIN, &["serve", "assign-defaults", "list", "policy"][..]),
        (client, &["assign", "unassign", "set-mode", "assigned"][..]),
    ] {
        let man = std::process::Command::new(bin).arg("man").output().unwrap();
        assert!(man.status.success());
        let man = String::from_utf8(man.stdout).unwrap();
        assert!(man.starts_with(".ie") && man.contains(".TH"), "roff");
        // A page that stands alone: its own sections, and no reference to a
        // page that is not shipped (qubes-pci-admin-call(1) and the like).
        for section in [".SH COMMANDS", ".SH ENVIRONMENT", ".SH FILES", ".SH EXIT STATUS"] {
            assert!(man.contains(section), "{bin}: {section}");
        }
        let plain = man.replace("\\-", "-");
        assert!(
            !plain.contains("-call(1)") && !plain.contains("(1)"),
            "{bin} refers to other pages"
        );
        for shell in ["bash", "zsh", "fish"] {
            let c = std::process::Command::new(bin)
                .args(["completions", shell])
                .output()
                .unwrap();
            assert!(c.status.success());
            let c = String::from_utf8(c.stdout).unwrap();
            for s in subcommands {
                // roff escapes '-' as '\-'.
                assert!(man.replace("\\-", "-").contains(s), "{bin} man page lacks {s}");
                assert!(c.contains(s), "{bin} {shell} completion lacks {s}");
            }
        }
    }
}

/// The spec's section `name` (up to the next `%section` line).
fn spec_section(spec: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in spec.lines() {
        if line.starts_with('%') && !line.starts_with("%{") && !line.starts_with("%systemd") {
            inside = line.split_whitespace().next() == Some(name);
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Runs one of the spec's scriptlets with sh, its paths moved under
/// `root` (the qrexec entries under `rpc`) and `systemctl` replaced by the
/// given command; fails the test if it fails, and returns its stderr.
fn run_scriptlet(spec: &str, section: &str, arg: &str, root: &Path, rpc: &Path, systemctl: &str) -> String {
    let script = spec_section(spec, section)
        .replace(
            "%{_datadir}/%{name}",
            &root.join("share/qubes-pci-admin").display().to_string(),
        )
        .replace("/usr/local/etc/qubes-rpc", &rpc.display().to_string())
        .replace("/run/", &format!("{}/", root.display()))
        .replace("systemctl", systemctl)
        .lines()
        .filter(|l| !l.starts_with("%systemd"))
        .collect::<Vec<_>>()
        .join("\n");
    let out = std::process::Command::new("sh")
        .args(["-c", &script, "scriptlet", arg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{section}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The switch-over the RPM installs: `%post` links the eight methods'
/// socket entries into /usr/local/etc/qubes-rpc (leaving alone what someone
/// else put there), an upgrade keeps them, and `%preun` on uninstall
/// removes exactly ours, so qubesd serves the methods again. Run here with
/// sh on a copy of the layout.
#[test]
fn the_switch_over_is_installed_and_undone() {
    let spec = std::fs::read_to_string(repo("packaging/qubes-pci-admin.spec")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let share = d.join("share/qubes-pci-admin/qubes-rpc/socket");
    std::fs::create_dir_all(&share).unwrap();
    for e in std::fs::read_dir(repo("service/qubes-rpc/socket")).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), share.join(e.file_name())).unwrap();
    }
    let rpc = d.join("local/etc/qubes-rpc");
    let run = |section: &str, arg: &str| run_scriptlet(&spec, section, arg, d, &rpc, "true");
    let entries = || -> Vec<(String, Option<PathBuf>)> {
        let mut v: Vec<_> = std::fs::read_dir(&rpc)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_link(e.path()).ok(),
                )
            })
            .collect();
        v.sort();
        v
    };
    // Someone's own Detach entry is there already.
    std::fs::create_dir_all(&rpc).unwrap();
    std::fs::write(rpc.join("admin.vm.device.pci.Detach"), "#!/bin/sh\n").unwrap();
    let said = run("%post", "1");
    assert!(
        said.contains("admin.vm.device.pci.Detach exists and is not ours"),
        "{said}"
    );
    let after = entries();
    assert_eq!(after.len(), 8);
    for (name, target) in &after {
        assert!(Method::parse(name).is_ok(), "{name}");
        if name != "admin.vm.device.pci.Detach" {
            assert_eq!(
                target.as_deref(),
                Some(Path::new("/run/qubes-pci-admin.sock")),
                "{name}"
            );
        }
    }
    // An upgrade (%post 2, %preun 1) keeps them.
    run("%post", "2");
    run("%preun", "1");
    assert_eq!(entries(), after);
    // Uninstall: ours go, the other stays.
    run("%preun", "0");
    assert_eq!(entries(), [("admin.vm.device.pci.Detach".to_owned(), None)]);
    // A socket that did not start gets no links: qubesd keeps the methods,
    // and the administrator is told why and what to do.
    // (every systemctl call fails, as with the socket's unit broken)
    let said = run_scriptlet(&spec, "%post", "1", d, &rpc, "false");
    assert!(
        said.contains("qubes-pci-admin.socket is not active") && said.contains("enable --now"),
        "{said}"
    );
    assert_eq!(
        entries(),
        [("admin.vm.device.pci.Detach".to_owned(), None)],
        "no link to a dead socket"
    );
}

/// Uninstalling gives dom0 back: qubesd keeps a loaded extension until it
/// restarts, and the extension refuses every PCI assign and start once its
/// binary is gone. So on erase `%preun` stops a running qubesd before the
/// files go and `%postun` starts it after; an upgrade leaves qubesd alone.
/// Run with sh and a `systemctl` that records what it is asked.
#[test]
fn uninstalling_restarts_qubesd_without_the_extension() {
    let spec = std::fs::read_to_string(repo("packaging/qubes-pci-admin.spec")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("systemctl.log");
    let systemctl = d.join("systemctl");
    std::fs::write(
        &systemctl,
        format!("#!/bin/sh\necho \"$*\" >> {}\nexit 0\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&systemctl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(d.join("share/qubes-pci-admin/qubes-rpc/socket")).unwrap();
    let systemctl = systemctl.display().to_string();
    let run = |section: &str, arg: &str| {
        run_scriptlet(&spec, section, arg, d, &d.join("rpc"), &systemctl);
    };
    let calls = || -> Vec<String> {
        let v = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("qubesd"))
            .map(str::to_owned)
            .collect();
        let _ = std::fs::remove_file(&log);
        v
    };
    // An upgrade: qubesd is not stopped (it reloads the new extension
    // when %post restarts it).
    run("%preun", "1");
    run("%postun", "1");
    assert_eq!(calls(), Vec::<String>::new());
    // Erase: stopped before the files go, started after.
    run("%preun", "0");
    assert_eq!(calls(), ["is-active --quiet qubesd.service", "stop qubesd.service"]);
    run("%postun", "0");
    assert_eq!(calls(), ["start qubesd.service"]);
    assert!(!d.join("qubes-pci-admin.qubesd-stopped").exists());
    // A qubesd that was not running is not started.
    std::fs::write(
        &systemctl,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\n[ \"$1\" = is-active ] && exit 3\nexit 0\n",
            log.display()
        ),
    )
    .unwrap();
    run("%preun", "0");
    run("%postun", "0");
    assert_eq!(calls(), ["is-active --quiet qubesd.service"]);
}

/// The spec declares every crate built into the binaries, with its
/// version, and a License covering them (packaging/bundled.sh).
#[test]
fn the_spec_declares_every_bundled_crate() {
    let spec = std::fs::read_to_string(repo("packaging/qubes-pci-admin.spec")).unwrap();
    let out = std::process::Command::new("sh")
        .arg(repo("packaging/bundled.sh"))
        .output()
        .unwrap();
    if !out.status.success() {
        // cargo tree could not run offline here: the check below needs it.
        eprintln!("skipped: {}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let want = String::from_utf8(out.stdout).unwrap();
    assert!(want.lines().count() > 30, "{want}");
    for line in want.lines() {
        assert!(spec.lines().any(|l| l == line), "the spec lacks: {line}");
    }
    let declared = spec
        .lines()
        .filter(|l| l.starts_with("Provides:       bundled("))
        .count();
    assert_eq!(
        declared,
        want.lines().count() - 1,
        "the spec declares crates no longer built in"
    );
}
