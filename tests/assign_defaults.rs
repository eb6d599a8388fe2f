#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! `assign-defaults` when only one of sys-net and sys-usb exists, neither,
//! a named qube that does not exist, and `none`: the installer creates each
//! of the two only when asked to.

mod common;

use common::{FakeSysfs, TestEnv};
use serde_json::Value;

const USB_PORT: &str = "00_14.0";
const NET_PORTS: [&str; 2] = ["00_1c.0-00_00.0", "00_1f.6"];

/// The test world without the qubes named.
fn without(names: &[&str]) -> TestEnv {
    let xml: String = common::QUBES_XML
        .lines()
        .filter(|l| {
            !names
                .iter()
                .any(|n| l.contains(&format!("<property name=\"name\">{n}</property>")))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    TestEnv::with_qubes_xml(FakeSysfs::standard(), &xml)
}

fn run(env: &TestEnv, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let mut all = vec!["assign-defaults", "--json"];
    all.extend_from_slice(args);
    let out = env.cli(&all, b"");
    let lines: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (port, qube, outcome) of each line.
fn outcomes(lines: &[Value]) -> Vec<(String, Option<String>, String)> {
    let mut v: Vec<_> = lines
        .iter()
        .map(|l| {
            let device = l["device"].as_str().unwrap();
            (
                device.split(':').nth(1).unwrap().to_owned(),
                l["qube"].as_str().map(str::to_owned),
                l["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn recorded(env: &TestEnv) -> Vec<(String, String)> {
    let mut v: Vec<_> = env.recorded().into_iter().map(|e| (e.id, e.qube)).collect();
    v.sort();
    v
}

#[test]
fn only_sys_net_assigns_the_network_controllers_and_notes_the_usb_ones() {
    let env = without(&["sys-usb"]);
    let (code, lines, err) = run(&env, &["--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("USB controllers are skipped: there is no sys-usb"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let got = outcomes(&lines);
    assert!(got.contains(&(USB_PORT.into(), None, "skipped".into())), "{got:?}");
    for p in NET_PORTS {
        assert!(
            got.contains(&(p.into(), Some("sys-net".into()), "would-assign".into())),
            "{got:?}"
        );
    }
    assert!(env.recorded().is_empty());
    let (code, _, _) = run(&env, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        recorded(&env),
        vec![
            ("00_1c.0-00_00.0".into(), "sys-net".into()),
            ("00_1f.6".into(), "sys-net".into())
        ]
    );
    // Text mode: the note on standard error, no line for the skipped class.
    let out = env.cli(&["assign-defaults"], b"");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(USB_PORT), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no sys-usb"));
}

#[test]
fn only_sys_usb_assigns_the_usb_controller() {
    let env = without(&["sys-net"]);
    let (code, lines, err) = run(&env, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("network controllers are skipped: there is no sys-net"),
        "{err}"
    );
    let got = outcomes(&lines);
    assert!(
        got.contains(&(USB_PORT.into(), Some("sys-usb".into()), "assigned".into())),
        "{got:?}"
    );
    for p in NET_PORTS {
        assert!(got.contains(&(p.into(), None, "skipped".into())), "{got:?}");
    }
    assert_eq!(recorded(&env), vec![(USB_PORT.into(), "sys-usb".into())]);
}

#[test]
fn neither_assigns_nothing_and_says_so() {
    let env = without(&["sys-net", "sys-usb"]);
    let (code, lines, err) = run(&env, &[]);
    assert_eq!(code, Some(1), "nothing done though something needed doing: {err}");
    assert!(
        err.contains("there is no sys-net") && err.contains("there is no sys-usb"),
        "{err}"
    );
    assert!(
        lines.iter().all(|l| l["qube"].is_null() && l["outcome"] == "skipped"),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3);
    assert!(env.recorded().is_empty() && env.qubesd_writes().is_empty());
}

#[test]
fn a_named_qube_that_does_not_exist_is_an_error() {
    let env = without(&["sys-usb"]);
    let out = env.cli(&["assign-defaults", "--usb", "my-usb"], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No such domain: my-usb") && err.contains("--usb"), "{err}");
    assert!(env.recorded().is_empty(), "nothing assigned, sys-net included");
}

#[test]
fn none_skips_a_class_on_purpose() {
    let env = TestEnv::new(FakeSysfs::standard());
    let (code, lines, err) = run(&env, &["--usb", "none"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("USB controllers are left as they are (--usb none)"),
        "{err}"
    );
    let got = outcomes(&lines);
    assert!(got.contains(&(USB_PORT.into(), None, "skipped".into())), "{got:?}");
    assert_eq!(recorded(&env).len(), 2);
    // Both skipped on purpose: nothing needed doing.
    let env = without(&["sys-net", "sys-usb"]);
    let (code, _, err) = run(&env, &["--usb", "none", "--net", "none"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(env.recorded().is_empty());
    // `none` where the default qube is missing is no error either.
    let env = without(&["sys-usb"]);
    let (code, _, err) = run(&env, &["--usb", "none"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("there is no sys-usb"), "{err}");
    assert_eq!(recorded(&env).len(), 2);
}
