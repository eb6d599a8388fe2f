#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The native protocol through the built binary: the same services and
//! policy as the text protocol, typed requests and replies.

mod common;

use common::{body_of, FakeSysfs, TestEnv};
use qubes_pci_rpc::native::{self, Answer, NativeReply, NativeRequest, RequestBody};
use qubes_pci_rpc::{AssignmentMode, PciOptions};

fn native_call(
    env: &TestEnv,
    source: &str,
    target: &str,
    method: &str,
    body: RequestBody,
) -> (NativeReply, Option<i32>) {
    let req = native::encode(&NativeRequest::new(body)).unwrap();
    let out = env.call(source, target, method, &req);
    (native::decode(&out.stdout).unwrap(), out.status.code())
}

fn assign_body(mode: AssignmentMode) -> RequestBody {
    RequestBody::Assignment {
        mode,
        options: PciOptions::default(),
        device_id: None,
    }
}

#[test]
fn native_calls_do_what_text_calls_do() {
    let env = TestEnv::new(FakeSysfs::standard());
    let (r, code) = native_call(
        &env,
        "dom0",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_14.0",
        assign_body(AssignmentMode::Required),
    );
    assert_eq!(r.result, Ok(Answer::Done));
    assert_eq!(code, Some(0));
    // The text protocol sees the same record (qubesd's).
    assert!(body_of(&env.call("dom0", "work", "admin.vm.device.pci.Assigned", b"")).contains("port_id='00_14.0'"));
    let (r, _) = native_call(&env, "dom0", "work", "admin.vm.device.pci.Assigned", RequestBody::Empty);
    let Ok(Answer::Assignments(a)) = r.result else {
        panic!("{r:?}")
    };
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].port.as_str(), a[0].device_id.as_str(), a[0].mode),
        ("00_14.0", "*", AssignmentMode::Required)
    );
    let (r, _) = native_call(
        &env,
        "dom0",
        "@adminvm",
        "admin.vm.device.pci.Available",
        RequestBody::Empty,
    );
    let Ok(Answer::Devices(d)) = r.result else {
        panic!("{r:?}")
    };
    let text_lines = body_of(&env.call("dom0", "@adminvm", "admin.vm.device.pci.Available", b""))
        .lines()
        .count();
    assert_eq!(d.len(), text_lines);
    let usb = d.iter().find(|e| e.port == "00_14.0").unwrap();
    assert_eq!(usb.device_id, "0x8086:0x8cb1::p0c0330");
    assert!(usb.data.contains(&("sbdf".to_owned(), "0000:00:14.0".to_owned())));
    let (r, _) = native_call(
        &env,
        "dom0",
        "work",
        "admin.vm.device.pci.Set.assignment+dom0+00_14.0",
        RequestBody::Mode(AssignmentMode::AutoAttach),
    );
    assert_eq!(
        r.result.unwrap_err().kind,
        "QubesValueError",
        "only required takes effect for PCI"
    );
    let (r, _) = native_call(
        &env,
        "dom0",
        "work",
        "admin.vm.device.pci.Set.assignment+dom0+00_14.0",
        RequestBody::Mode(AssignmentMode::Required),
    );
    assert_eq!(r.result, Ok(Answer::Done));
    let (r, _) = native_call(
        &env,
        "dom0",
        "work",
        "admin.vm.device.pci.Unassign+dom0+00_14.0",
        RequestBody::Empty,
    );
    assert_eq!(r.result, Ok(Answer::Done));
    assert_eq!(
        body_of(&env.call("dom0", "work", "admin.vm.device.pci.Assigned", b"")),
        ""
    );
}

#[test]
fn native_errors_are_structured() {
    let env = TestEnv::new(FakeSysfs::standard());
    let (r, code) = native_call(
        &env,
        "dom0",
        "work",
        "admin.vm.device.pci.Unassign+dom0+00_14.0",
        RequestBody::Empty,
    );
    let e = r.result.unwrap_err();
    assert_eq!(e.kind, "DeviceNotAssigned");
    assert_eq!(e.code, qubes_pci_rpc::ExceptionKind::DeviceNotAssigned.code());
    assert_eq!(e.device.as_deref(), Some("dom0:00_14.0:*"));
    assert_eq!(e.qube.as_deref(), Some("work"));
    assert_eq!(code, Some(2));
    // Manual mode is refused the same way as in text.
    let (r, _) = native_call(
        &env,
        "dom0",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_14.0",
        assign_body(AssignmentMode::Manual),
    );
    assert_eq!(r.result.unwrap_err().kind, "QubesValueError");
    // A broken frame still gets a native, typed reply.
    let mut bad = native::encode(&NativeRequest::new(RequestBody::Empty)).unwrap();
    bad.push(7);
    let out = env.call("dom0", "work", "admin.vm.device.pci.Assigned", &bad);
    let r: NativeReply = native::decode(&out.stdout).unwrap();
    assert_eq!(r.result.unwrap_err().kind, "ProtocolError");
}

#[test]
fn the_policy_is_the_same_for_both_protocols() {
    let env = TestEnv::new(FakeSysfs::standard());
    env.write_policy(
        "30-t.policy",
        "admin.vm.device.pci.Assigned * mgmt @tag:created-by-mgmt allow target=dom0\n",
    );
    let (r, _) = native_call(&env, "mgmt", "work", "admin.vm.device.pci.Assigned", RequestBody::Empty);
    assert_eq!(r.result, Ok(Answer::Assignments(vec![])));
    let (r, _) = native_call(
        &env,
        "mgmt",
        "work",
        "admin.vm.device.pci.Assign+dom0+00_14.0",
        assign_body(AssignmentMode::Required),
    );
    assert_eq!(r.result.unwrap_err().kind, "PermissionDenied");
    let (r, _) = native_call(
        &env,
        "mgmt",
        "sys-net",
        "admin.vm.device.pci.Assigned",
        RequestBody::Empty,
    );
    assert_eq!(r.result.unwrap_err().kind, "PermissionDenied");
    // Exec mode speaks it too.
    let req = native::encode(&NativeRequest::new(RequestBody::Empty)).unwrap();
    let out = env.exec("admin.vm.device.pci.Assigned", "", "mgmt", "work", &req);
    let r: NativeReply = native::decode(&out.stdout).unwrap();
    assert_eq!(r.result, Ok(Answer::Assignments(vec![])));
}
