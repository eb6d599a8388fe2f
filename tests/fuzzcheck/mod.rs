//! The checks of every fuzz target (`fuzz/fuzz_targets/*.rs`), shared with
//! the corpus replay that runs on the stable toolchain
//! (`tests/fuzz_corpus.rs`). Each check panics when a property fails:
//! a parser must never panic, a value that decodes must encode to bytes
//! that decode to the same value, and a whole call must get exactly one
//! well-formed reply and never send qubesd a request the rules refuse.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../common/fakesys.rs"]
mod fakesys;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use qubes_pci_admin::api::Service;
use qubes_pci_admin::pci::Inventory;
use qubes_pci_admin::policy::{Policy, PolicyRequest};
use qubes_pci_admin::qubes_xml::QubesXml;
use qubes_pci_admin::qubesd::Answer;
use qubes_pci_admin::sysinfo::SystemInfo;
use qubes_pci_admin::Config;
use qubes_pci_rpc::native::{self, NativeReply, NativeRequest};
use qubes_pci_rpc::{
    props, Assignment, AssignmentMode, DeviceId, DeviceRef, Method, PciOptions, PciPath, QubeName, Reply, Sbdf,
    UntrustedRequest, Wild,
};

/// Every target, by name (the fuzz target and its corpus directory).
pub const TARGETS: [&str; 9] = [
    "request",
    "device_arg",
    "payload",
    "native",
    "qubesd_reply",
    "qubes_xml",
    "system_info",
    "policy",
    "call",
];

/// Runs the check of `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "request" => request(data),
        "device_arg" => device_arg(data),
        "payload" => payload(data),
        "native" => native_frame(data),
        "qubesd_reply" => qubesd_reply(data),
        "qubes_xml" => qubes_xml(data),
        "system_info" => system_info(data),
        "policy" => policy(data),
        "call" => call(data),
        other => panic!("no fuzz target {other}"),
    }
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The socket-service header and the exec-service environment.
pub fn request(data: &[u8]) {
    if let Ok(r) = UntrustedRequest::decode_socket(data) {
        let again = UntrustedRequest::decode_socket(&r.encode_socket()).expect("an encoded request decodes");
        assert_eq!(again, r, "socket framing round trip");
        let _ = r.validate();
    }
    // Exec mode: argv0, argv1 and the QREXEC_* variables from NUL-separated
    // fields, the rest as payload.
    let mut f = data.splitn(7, |b| *b == 0);
    let mut field = || f.next().map(text);
    let argv0 = field().unwrap_or_default();
    let argv1 = field();
    let vars: Vec<Option<String>> = (0..4).map(|_| field()).collect();
    let payload = f.next().unwrap_or_default().to_vec();
    let env = |k: &str| {
        let i = [
            "QREXEC_REMOTE_DOMAIN",
            "QREXEC_REQUESTED_TARGET_TYPE",
            "QREXEC_REQUESTED_TARGET",
            "QREXEC_SERVICE_ARGUMENT",
        ]
        .iter()
        .position(|n| *n == k)?;
        vars.get(i).cloned().flatten()
    };
    if let Ok(r) = UntrustedRequest::decode_exec(&argv0, argv1.as_deref(), env, payload) {
        let _ = r.validate();
    }
}

/// The qrexec argument form of a device, PCI paths, device ids, names.
pub fn device_arg(data: &[u8]) {
    let s = text(data);
    if let Ok(v) = DeviceRef::from_qarg(&s) {
        let c = v.to_qarg();
        let again = DeviceRef::from_qarg(&c).expect("a canonical argument decodes");
        assert_eq!(again, v, "{s:?} -> {c:?}");
        assert_eq!(again.to_qarg(), c, "the canonical form is a fixed point");
        for m in [Method::Assign, Method::Unassign, Method::Assigned] {
            assert_eq!(m.canonical_arg(&s), Some(c.clone()));
        }
    }
    if let Ok(p) = PciPath::parse(&s) {
        assert_eq!(PciPath::parse(&p.to_string()).expect("a path re-parses"), p);
        assert_eq!(Method::Available.canonical_arg(&s), Some(p.to_string()));
    }
    if let Ok(d) = DeviceId::parse(&s) {
        assert_eq!(DeviceId::parse(&d.to_string()).expect("an id re-parses"), d);
    }
    if let Ok(q) = QubeName::parse(&s) {
        assert_eq!(QubeName::parse(q.as_str()).expect("a name re-parses"), q);
    }
    if let Ok(b) = Sbdf::parse(&s) {
        assert_eq!(Sbdf::parse(&b.to_string()).expect("an address re-parses"), b);
    }
}

/// Assignment payloads, property lists, options, modes, listing bodies.
pub fn payload(data: &[u8]) {
    for expected in ["dom0+00_14.0+_", "dom0+00_14.0+0x8086+0x8cb1++p0c0330", "dom0+_+_"] {
        let expected = DeviceRef::from_qarg(expected).unwrap();
        if let Ok(a) = Assignment::deserialize(data, &expected) {
            let ser = a.serialize().expect("a decoded assignment serializes");
            let b = Assignment::deserialize(ser.as_bytes(), &a.device).expect("its serialization decodes");
            assert_eq!(a, b, "assignment round trip");
            if let Ok(o) = PciOptions::from_pairs(&a.options) {
                assert_eq!(PciOptions::from_pairs(&o.to_pairs()).unwrap(), o);
            }
        }
    }
    if let Ok(p) = props::unpack(data) {
        let mut out = String::new();
        for (k, v) in &p.properties {
            props::pack(&mut out, k, v).expect("a decoded property packs");
        }
        for (k, v) in &p.options {
            props::pack(&mut out, &format!("_{k}"), v).expect("a decoded option packs");
        }
        let again = props::unpack(out.as_bytes()).expect("packed properties unpack");
        assert_eq!(again.properties, p.properties);
        assert_eq!(again.options, p.options);
    }
    if let Ok(m) = AssignmentMode::parse(&text(data)) {
        assert_eq!(AssignmentMode::parse(m.as_str()).unwrap(), m);
    }
    if let Ok(list) = Assignment::parse_lines(data) {
        let body: String = list
            .iter()
            .map(|a| a.to_line().expect("a parsed line prints"))
            .collect();
        assert_eq!(
            Assignment::parse_lines(body.as_bytes()).expect("printed lines parse"),
            list
        );
    }
}

/// The native protocol's frames.
pub fn native_frame(data: &[u8]) {
    if let Ok(r) = NativeRequest::decode(data) {
        let again = NativeRequest::decode(&native::encode(&r).expect("encodes")).expect("decodes");
        assert_eq!(again, r);
        let _ = r.to_text_payload();
    }
    if let Ok(r) = native::decode::<NativeReply>(data) {
        let again: NativeReply = native::decode(&native::encode(&r).expect("encodes")).expect("decodes");
        assert_eq!(again, r);
    }
}

/// What qubesd answers, as the front door and the client read it.
pub fn qubesd_reply(data: &[u8]) {
    if let Some(r) = Reply::decode(data) {
        // Encoding escapes control characters, so its output is a fixed point.
        let once = r.encode();
        let again = Reply::decode(&once).expect("an encoded reply decodes");
        assert_eq!(again.encode(), once, "reply round trip");
        assert_eq!(again.exception_name(), r.exception_name());
    }
    if let Some(Answer::Refused { name, .. }) = Answer::parse(data) {
        assert!(qubes_pci_rpc::reply::is_exception_name(&name));
    }
}

/// qubesd's qubes.xml.
pub fn qubes_xml(data: &[u8]) {
    let Ok(x) = QubesXml::parse(&text(data)) else { return };
    for e in &x.entries {
        if let Some(a) = e.to_assignment() {
            let line = a.to_line().expect("a listed assignment prints");
            assert_eq!(
                Assignment::parse_lines(line.as_bytes()).expect("and parses back"),
                vec![a]
            );
        }
    }
    for r in x.records() {
        assert!(r.device_ref().backend.is_dom0());
    }
}

/// `internal.GetSystemInfo`.
pub fn system_info(data: &[u8]) {
    let Ok(s) = SystemInfo::parse(data, "fuzz") else { return };
    let json = serde_json::to_vec(&s).expect("serializes");
    let again = SystemInfo::parse(&json, "again").expect("its JSON parses");
    assert_eq!(serde_json::to_vec(&again).unwrap(), json);
    // Every qube a request can name is found (`uuid:…` keys are uuid
    // look-ups, and no qube name has a `:`).
    for name in s.domains.keys().take(4).filter(|n| QubeName::parse(n).is_ok()) {
        assert!(s.get(name).is_some());
    }
}

/// A policy file: parse, print, parse again; evaluate a few requests.
pub fn policy(data: &[u8]) {
    let Ok(p) = Policy::parse_text(&text(data), "30-fuzz.policy") else {
        return;
    };
    let printed: String = p.rules.iter().map(|r| format!("{r}\n")).collect();
    if let Ok(again) = Policy::parse_text(&printed, "30-fuzz.policy") {
        let reprinted: String = again.rules.iter().map(|r| format!("{r}\n")).collect();
        assert_eq!(reprinted, printed, "parse -> print -> parse");
    }
    let system = SystemInfo::parse(
        br#"{"domains": {"dom0": {"type": "AdminVM", "tags": []}, "mgmt": {"type": "AppVM", "tags": ["t"]},
            "work": {"type": "AppVM", "tags": ["created-by-mgmt"]}}}"#,
        "fuzz",
    )
    .unwrap();
    for (service, target) in [
        ("admin.vm.device.pci.Assign+dom0+00_14.0+_", "work"),
        ("admin.vm.device.pci.Available", "@adminvm"),
        ("admin.vm.device.pci.Option+permissive", "work"),
    ] {
        if let Ok(req) = PolicyRequest::new(service, "mgmt", target, None, &system) {
            let _ = p.evaluate(&req, &system);
        }
    }
    let _ = qubes_pci_admin::policy::argument_warnings(&p);
}

/// One request the fake qubesd received: method, argument, destination,
/// payload.
type Received = (String, String, String, Vec<u8>);

/// What the fake qubesd of the `call` target received.
static QUBESD_LOG: Mutex<Vec<Received>> = Mutex::new(Vec::new());

/// The `call` target's world: a fake sysfs, a policy, system info, a
/// qubes.xml and a fake qubesd on a socket that records every request.
struct World {
    svc: Service,
    /// The fake sysfs as read once (it never changes).
    inventory: Inventory,
    _sysfs: fakesys::FakeSysfs,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut sysfs = fakesys::FakeSysfs::new(&["0000:00"]);
        sysfs
            .add(fakesys::FakeDev::new("0000:00:00.0", 0x8086, 0x0d04, 0x060000).reset(None))
            .add(fakesys::FakeDev::new("0000:00:14.0", 0x8086, 0x8cb1, 0x0c0330))
            .add(fakesys::FakeDev::new("0000:00:14.2", 0x8086, 0x8cb2, 0x118000))
            .add(fakesys::FakeDev::new("0000:00:1f.0", 0x8086, 0x9d4e, 0x060100))
            .add(fakesys::FakeDev::new("0000:00:1f.6", 0x8086, 0x15a3, 0x020000));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("policy")).unwrap();
        std::fs::create_dir_all(d.join("proc/self")).unwrap();
        std::fs::write(
            d.join("policy/30-fuzz.policy"),
            "admin.vm.device.pci.Option +no-strict-reset mgmt @anyvm allow target=dom0\n\
             admin.vm.device.pci.Assign +dom0+00_1f.6+_ mgmt @anyvm deny\n\
             admin.vm.device.pci.* * mgmt @anyvm allow target=dom0\n\
             admin.vm.device.pci.* * gui @anyvm ask default_target=dom0\n",
        )
        .unwrap();
        std::fs::write(
            d.join("system-info.json"),
            r#"{"domains": {"dom0": {"type": "AdminVM", "power_state": "Running"},
                "mgmt": {"type": "AppVM", "power_state": "Running"},
                "gui": {"type": "AppVM", "power_state": "Running"},
                "work": {"type": "AppVM", "power_state": "Halted"},
                "sys-usb": {"type": "AppVM", "power_state": "Running"},
                "personal": {"type": "AppVM", "power_state": "Halted"}}}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("qubes.xml"),
            r#"<qubes><domains>
              <domain class="AppVM"><properties><property name="name">work</property></properties>
               <devices class="pci"><device backend-domain="dom0" id="00_14.0" mode="required" identity="*"/></devices></domain>
              <domain class="AppVM"><properties><property name="name">sys-usb</property></properties>
               <devices class="pci"><device backend-domain="dom0" id="00_14.2" mode="required" identity="*"/></devices></domain>
            </domains></qubes>"#,
        )
        .unwrap();
        // dom0's procfs: virtual filesystems mounted, no swap.
        std::fs::create_dir_all(d.join("proc/self")).unwrap();
        std::fs::write(d.join("proc/self/mountinfo"), "20 1 0:22 / /proc rw - proc proc rw\n").unwrap();
        std::fs::write(d.join("proc/swaps"), "Filename\tType\tSize\tUsed\tPriority\n").unwrap();
        let sock = d.join("qubesd.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || fake_qubesd(listener));
        let config = Config {
            sysfs: sysfs.root().to_owned(),
            procfs: d.join("proc"),
            qubesd_socket: sock.clone(),
            qubesd_internal_socket: sock,
            qubesd_timeout_ms: 5000,
            read_deadline_ms: 5000,
            qubes_xml: d.join("qubes.xml"),
            policy_dirs: vec![d.join("policy")],
            system_info: Some(d.join("system-info.json")),
            pci_ids: Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pci.ids"))),
            daemon_socket: PathBuf::from("none"),
        };
        World {
            svc: Service::new(config),
            inventory: Inventory::scan(sysfs.root()).unwrap(),
            _sysfs: sysfs,
            _dir: dir,
        }
    })
}

/// Answers every request as qubesd would for these qubes, recording it.
fn fake_qubesd(listener: UnixListener) {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let mut buf = Vec::new();
        if s.read_to_end(&mut buf).is_err() {
            continue;
        }
        let req = UntrustedRequest::decode_socket(&buf).expect("the front door frames its requests");
        let dest = match &req.untrusted_target {
            qubes_pci_rpc::UntrustedTarget::Name(n) => n.clone(),
            qubes_pci_rpc::UntrustedTarget::Keyword(k) => format!("@{k}"),
        };
        assert_eq!(req.untrusted_source, "dom0", "the front door asks as dom0");
        let reply: &[u8] = match req.untrusted_method.as_str() {
            "admin.vm.property.Get" if dest == "personal" => b"0\0default=False type=str pvh",
            "admin.vm.property.Get" => b"0\0default=True type=str hvm",
            "admin.vm.device.pci.Attached" if dest == "sys-usb" => {
                b"0\0dom0+00_14.2:* device_id='*' port_id='00_14.2' devclass='pci' backend_domain='dom0' mode='required' frontend_domain='sys-usb'\n"
            }
            _ => b"0\0",
        };
        if let Ok(mut log) = QUBESD_LOG.lock() {
            log.push((req.untrusted_method, req.untrusted_arg, dest, req.untrusted_payload));
        }
        let _ = s.write_all(reply);
    }
}

/// A whole call through the service: exactly one well-formed reply, and
/// no request reaches qubesd that the rules refuse.
pub fn call(data: &[u8]) {
    let w = world();
    QUBESD_LOG.lock().unwrap().clear();
    let request = UntrustedRequest::decode_socket(data);
    let native = request.as_ref().is_ok_and(|r| native::is_native(&r.untrusted_payload));
    let source_is_dom0 = request.as_ref().is_ok_and(|r| r.untrusted_source == "dom0");
    let response = w.svc.answer(request);
    if native && response.bytes.starts_with(&[0, b'Q']) {
        native::decode::<NativeReply>(&response.bytes).expect("a native reply decodes");
    } else {
        let reply = Reply::decode(&response.bytes).expect("one well-formed reply");
        assert_eq!(reply.code() == 0, response.ok);
        if let Some(name) = reply.exception_name() {
            assert_ne!(name, "PermissionDenied", "stock clients print a traceback for it");
        }
    }
    let inventory = &w.inventory;
    for (method, arg, dest, payload) in QUBESD_LOG.lock().unwrap().iter() {
        let short = method.strip_prefix("admin.vm.device.pci.");
        if !matches!(
            short,
            Some("Assign" | "Unassign" | "Set.assignment" | "Attach" | "Detach")
        ) {
            continue;
        }
        assert!(
            matches!(short, Some("Assign" | "Unassign" | "Set.assignment")),
            "{method}: hot-plug or detach never reaches qubesd"
        );
        let dev = DeviceRef::from_qarg(arg).expect("qubesd gets a device argument");
        assert_eq!(&dev.to_qarg(), arg, "qubesd gets the canonical spelling");
        assert!(dev.backend.is_dom0());
        let Wild::Is(port) = &dev.port else {
            panic!("qubesd gets a concrete port: {arg}")
        };
        match short {
            Some("Set.assignment") => assert_eq!(payload, b"required"),
            Some("Assign") => {
                assert!(
                    dest != "dom0" && dest != "personal",
                    "no PCI device for dom0 or a pvh qube"
                );
                let a = Assignment::deserialize(payload, &dev).expect("a canonical payload");
                assert_eq!(a.mode, AssignmentMode::Required);
                assert_eq!(a.frontend.as_ref().map(QubeName::as_str), Some(dest.as_str()));
                assert!(a
                    .options
                    .iter()
                    .all(|(k, v)| v == "True" && (k == "no-strict-reset" || (k == "permissive" && source_is_dom0))));
                let live = inventory.by_port(port).expect("the device exists");
                assert!(!live.is_bridge(), "bridges stay in dom0");
                assert!(dev.device_id.matches(&live.device_id()));
                assert!(
                    port.to_string() != "00_1f.6" || source_is_dom0,
                    "the policy denies 00_1f.6 to qubes, in every spelling"
                );
            }
            _ => {}
        }
    }
}

/// Native frames for the seed corpora (`native`, and `call` with a native
/// payload), made with the encoder; the replay test checks them too.
pub fn native_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use qubes_pci_rpc::native::{Answer as NativeAnswer, AssignmentEntry, NativeError, RequestBody};
    let req = |body| native::encode(&NativeRequest::new(body)).unwrap();
    let assign = req(RequestBody::Assignment {
        mode: AssignmentMode::Required,
        options: PciOptions {
            no_strict_reset: true,
            permissive: false,
        },
        device_id: Some("0x8086:0x8cb1::p0c0330".into()),
    });
    let reply = |result| {
        native::encode(&NativeReply {
            version: native::VERSION,
            result,
        })
        .unwrap()
    };
    let mut call_assign = b"admin.vm.device.pci.Assign+dom0+00_14.0 mgmt name work\0".to_vec();
    call_assign.extend_from_slice(&assign);
    let mut call_mode = b"admin.vm.device.pci.Set.assignment+dom0+00_14.0 mgmt name work\0".to_vec();
    call_mode.extend_from_slice(&req(RequestBody::Mode(AssignmentMode::AutoAttach)));
    vec![
        ("native", req(RequestBody::Empty)),
        ("native", req(RequestBody::Mode(AssignmentMode::Required))),
        ("native", assign),
        ("native", reply(Ok(NativeAnswer::Done))),
        (
            "native",
            reply(Ok(NativeAnswer::Assignments(vec![AssignmentEntry {
                backend: "dom0".into(),
                port: "00_14.0".into(),
                device_id: "*".into(),
                frontend: Some("work".into()),
                mode: AssignmentMode::Required,
                options: vec![("no-strict-reset".into(), "True".into())],
            }]))),
        ),
        (
            "native",
            reply(Err(NativeError::new(
                qubes_pci_rpc::ExceptionKind::DeviceNotAssigned,
                "not assigned".into(),
                Some("dom0:00_14.0:*".into()),
                Some("work".into()),
            ))),
        ),
        ("call", call_assign),
        ("call", call_mode),
    ]
}
