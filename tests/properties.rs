#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Property tests: every wire type's encoding decodes to the same value,
//! and the policy's parse → print → parse is stable. (The qrexec argument
//! form, PCI paths, property lists and socket framing have theirs in the
//! rpc crate.)

use proptest::prelude::*;
use qubes_pci_admin::policy::Policy;
use qubes_pci_admin::qubes_xml::QubesXml;
use qubes_pci_rpc::native::{self, AssignmentEntry, NativeError, NativeReply, NativeRequest, RequestBody};
use qubes_pci_rpc::{
    Assignment, AssignmentMode, DeviceId, DeviceRef, ExceptionKind, PathHop, PciOptions, PciPath, QubeName, Reply,
    Sbdf, Wild,
};

fn qube() -> impl Strategy<Value = QubeName> {
    "[a-z][a-z0-9_.-]{0,20}".prop_filter_map("a qube name", |s| QubeName::parse(&s).ok())
}

fn path() -> impl Strategy<Value = PciPath> {
    (
        any::<u16>(),
        proptest::collection::vec((any::<u8>(), 0u8..0x20, 0u8..8), 1..4),
    )
        .prop_map(|(s, h)| {
            PciPath::new(
                s,
                h.into_iter()
                    .map(|(bus, device, function)| PathHop { bus, device, function })
                    .collect(),
            )
            .unwrap()
        })
}

fn devid() -> impl Strategy<Value = DeviceId> {
    (
        "[0-9a-zA-Z_.-]{0,8}",
        "[0-9a-zA-Z_.-]{0,8}",
        "[0-9a-zA-Z_.-]{0,8}",
        proptest::collection::vec("[pubm?][0-9a-f*]{6}", 0..4),
    )
        .prop_map(|(v, p, s, i)| DeviceId::parse(&format!("{v}:{p}:{s}:{}", i.concat())).unwrap())
}

fn device() -> impl Strategy<Value = DeviceRef> {
    (qube(), proptest::option::of(path()), proptest::option::of(devid())).prop_map(|(b, p, d)| DeviceRef {
        backend: b,
        port: p.map_or(Wild::Any, Wild::Is),
        device_id: d.map_or(Wild::Any, Wild::Is),
    })
}

fn mode() -> impl Strategy<Value = AssignmentMode> {
    prop_oneof![
        Just(AssignmentMode::Manual),
        Just(AssignmentMode::AskToAttach),
        Just(AssignmentMode::AutoAttach),
        Just(AssignmentMode::Required),
    ]
}

fn assignment() -> impl Strategy<Value = Assignment> {
    (
        device(),
        proptest::option::of(qube()),
        mode(),
        proptest::collection::btree_map("[a-z][a-z0-9-]{0,10}", "([ -~]{0,12}[ -<>-~])?", 0..3),
    )
        .prop_map(|(device, frontend, mode, options)| Assignment {
            device,
            frontend,
            mode,
            options: options.into_iter().collect(),
        })
}

proptest! {
    #[test]
    fn assignment_serialization_round_trips(a in assignment()) {
        let ser = a.serialize().unwrap();
        prop_assert_eq!(Assignment::deserialize(ser.as_bytes(), &a.device).unwrap(), a.clone());
        let line = a.to_line().unwrap();
        prop_assert_eq!(Assignment::parse_lines(line.as_bytes()).unwrap(), vec![a]);
    }

    #[test]
    fn identifiers_print_and_parse_back(d in devid(), q in qube(), seg in any::<u16>(), bus in any::<u8>(), dev in 0u8..0x20, func in 0u8..8) {
        prop_assert_eq!(DeviceId::parse(&d.to_string()).unwrap(), d);
        prop_assert_eq!(QubeName::parse(q.as_str()).unwrap(), q);
        let sbdf = Sbdf::new(seg, bus, dev, func).unwrap();
        prop_assert_eq!(Sbdf::parse(&sbdf.to_string()).unwrap(), sbdf);
    }

    #[test]
    fn options_round_trip(nsr in any::<bool>(), perm in any::<bool>()) {
        let o = PciOptions { no_strict_reset: nsr, permissive: perm };
        prop_assert_eq!(PciOptions::from_pairs(&o.to_pairs()).unwrap(), o);
    }

    #[test]
    fn replies_round_trip(body in proptest::collection::vec(any::<u8>(), 0..64), k in 0usize..12, message in "[^\u{0}]{0,40}", name in "[A-Z][A-Za-z0-9_]{0,20}") {
        for r in [
            Reply::Ok(body.clone()),
            Reply::error(ExceptionKind::ALL[k], message.clone()),
            Reply::Named { name: name.clone(), message: message.clone() },
        ] {
            let decoded = Reply::decode(&r.encode()).unwrap();
            prop_assert_eq!(decoded.encode(), r.encode());
            prop_assert_eq!(decoded.exception_name(), r.exception_name().map(|n| if ExceptionKind::from_name(n).is_some() || qubes_pci_rpc::reply::is_exception_name(n) { n } else { "QubesException" }));
        }
    }

    #[test]
    fn native_frames_round_trip(m in mode(), nsr in any::<bool>(), id in proptest::option::of("[ -~]{0,20}"), port in "[ -~]{0,12}", msg in "[ -~]{0,30}", k in 0usize..12) {
        for body in [
            RequestBody::Empty,
            RequestBody::Mode(m),
            RequestBody::Assignment { mode: m, options: PciOptions { no_strict_reset: nsr, permissive: false }, device_id: id.clone() },
        ] {
            let r = NativeRequest::new(body);
            prop_assert_eq!(NativeRequest::decode(&native::encode(&r).unwrap()).unwrap(), r);
        }
        for result in [
            Ok(native::Answer::Assignments(vec![AssignmentEntry { backend: "dom0".into(), port: port.clone(), device_id: "*".into(), frontend: None, mode: m, options: vec![] }])),
            Err(NativeError::new(ExceptionKind::ALL[k], msg.clone(), id.clone(), None)),
        ] {
            let r = NativeReply { version: native::VERSION, result };
            prop_assert_eq!(native::decode::<NativeReply>(&native::encode(&r).unwrap()).unwrap(), r);
        }
    }

    /// The policy's canonical print of its rules parses back to the same rules.
    #[test]
    fn policy_parse_print_parse(rules in proptest::collection::vec((
        prop_oneof![Just("*".to_owned()), Just("admin.vm.device.pci.Assign".to_owned()), Just("qubes.Filecopy".to_owned())],
        prop_oneof![Just("*".to_owned()), Just("+".to_owned()), Just("+dom0+00_14.0+_".to_owned())],
        prop_oneof![Just("@anyvm"), Just("mgmt"), Just("@tag:created-by-mgmt"), Just("@type:AppVM"), Just("@adminvm")],
        prop_oneof![Just("@anyvm"), Just("work"), Just("@adminvm"), Just("@dispvm"), Just("@dispvm:default-dvm"), Just("@default")],
        prop_oneof![Just("allow"), Just("deny"), Just("allow target=dom0"), Just("ask default_target=work"), Just("deny notify=no")],
    ), 0..8)) {
        let text: String = rules.iter().map(|(s, a, src, dst, act)| format!("{s} {a} {src} {dst} {act}\n")).collect();
        let Ok(p) = Policy::parse_text(&text, "30-prop.policy") else { return Ok(()) };
        let printed: String = p.rules.iter().map(|r| format!("{r}\n")).collect();
        let again = Policy::parse_text(&printed, "30-prop.policy").unwrap();
        let reprinted: String = again.rules.iter().map(|r| format!("{r}\n")).collect();
        prop_assert_eq!(reprinted, printed);
        prop_assert_eq!(again.rules.len(), p.rules.len());
    }

    /// An assignment written the way qubesd writes qubes.xml reads back as
    /// the same assignment.
    #[test]
    fn qubes_xml_entries_read_back(q in qube(), p in path(), d in proptest::option::of(devid()), m in mode(), nsr in any::<bool>()) {
        let identity = d.as_ref().map_or("*".to_owned(), |d| d.to_string());
        let option = if nsr { "<option name=\"no-strict-reset\">True</option>" } else { "" };
        let xml = format!(
            "<qubes><domains><domain class=\"AppVM\"><properties><property name=\"name\">{q}</property></properties>\
             <devices class=\"pci\"><device backend-domain=\"dom0\" id=\"{p}\" mode=\"{m}\" identity=\"{identity}\">{option}</device>\
             </devices></domain></domains></qubes>"
        );
        let x = QubesXml::parse(&xml).unwrap();
        let a = x.assigned_to(q.as_str());
        prop_assert_eq!(a.len(), 1);
        prop_assert_eq!(&a[0].device.port, &Wild::Is(p.clone()));
        prop_assert_eq!(&a[0].device.device_id, &d.map_or(Wild::Any, Wild::Is));
        prop_assert_eq!(a[0].mode, m);
        prop_assert_eq!(x.records()[0].options.no_strict_reset, nsr);
    }
}
