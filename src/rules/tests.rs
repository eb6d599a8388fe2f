//! `decide` as tables: facts in, verdict out, one row per rule and edge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use qubes_pci_rpc::{AssignmentMode, DeviceId, PciOptions, PciPath, QubeName, Sbdf, Wild};

use super::facts::Hidden;
use super::*;
use crate::pci::dom0_use::Dom0Use;
use crate::pci::{PciDevice, Reset};

fn q(name: &str) -> QubeName {
    QubeName::parse(name).unwrap()
}

fn port(p: &str) -> PciPath {
    PciPath::parse(p).unwrap()
}

/// A device at `port` (root bus 00) with `class`.
fn device(p: &str, class: u32) -> PciDevice {
    let path = port(p);
    let hop = path.root();
    PciDevice {
        sbdf: Sbdf::new(0, hop.bus, hop.device, hop.function).unwrap(),
        port: path,
        vendor: Some(0x8086),
        device: Some(0x1234),
        class: Some(class),
        subsystem: None,
        revision: None,
        driver: None,
        reset: Reset::Methods(vec!["flr".into()]),
        problems: Vec::new(),
    }
}

fn id_of(d: &PciDevice) -> Wild<DeviceId> {
    Wild::Is(d.device_id())
}

const NIC: u32 = 0x020000;
const BRIDGE: u32 = 0x060400;

const NSR: PciOptions = PciOptions {
    no_strict_reset: true,
    permissive: false,
};
const PERMISSIVE: PciOptions = PciOptions {
    no_strict_reset: false,
    permissive: true,
};

fn rec(qube: &str, p: &str, mode: AssignmentMode, options: PciOptions) -> Record {
    Record {
        frontend: q(qube),
        port: port(p),
        device_id: Wild::Any,
        mode,
        options,
    }
}

fn req(qube: &str, p: &str) -> Record {
    rec(qube, p, AssignmentMode::Required, PciOptions::default())
}

/// `work` (hvm, set explicitly, halted), called by `mgmt`, with a NIC at
/// 00_1f.6, another function of one device at 00_14.0/00_14.2, a bridge at
/// 00_1c.0, nothing granted, nothing assigned.
fn facts() -> Facts {
    Facts {
        source: q("mgmt"),
        dest: Dest {
            virt_mode: Some(Setting {
                value: VirtMode::Hvm,
                explicit: true,
            }),
            ..Dest::named(q("work"))
        },
        present: ["00_1f.6", "00_14.0", "00_14.2"]
            .iter()
            .map(|p| Present {
                device: device(p, NIC),
                dom0_uses: Vec::new(),
            })
            .chain(std::iter::once(Present {
                device: device("00_1c.0", BRIDGE),
                dom0_uses: Vec::new(),
            }))
            .collect(),
        assignments: Vec::new(),
        running: Vec::new(),
        grants: PciOptions::default(),
        hidden: None,
    }
}

fn refusal(kind: &Kind, f: &Facts) -> (String, String) {
    match decide(kind, f) {
        Ok(d) => panic!("{kind:?} allowed: {d:?}"),
        Err(e) => (e.to_reply().exception_name().unwrap_or("?").to_owned(), e.to_string()),
    }
}

fn plan(kind: &Kind, f: &Facts) -> Plan {
    match decide(kind, f) {
        Ok(d) => d.plan,
        Err(e) => panic!("{kind:?} refused: {e}"),
    }
}

#[test]
fn assign_refusals_name_the_rule() {
    type Change = fn(&mut Facts, &mut Record);
    let rows: &[(&str, Change, &str, &str)] = &[
        (
            "auto-attach",
            |_, r| r.mode = AssignmentMode::AutoAttach,
            "QubesValueError",
            "only as required. Assign it as required (`qvm-pci assign --required work dom0:00_1f.6`)",
        ),
        (
            "manual",
            |_, r| r.mode = AssignmentMode::Manual,
            "QubesValueError",
            "only as required",
        ),
        ("to dom0", |f, _| f.dest.admin_vm = true, "QubesException", "to dom0"),
        (
            "explicit pvh",
            |f, _| {
                f.dest.virt_mode = Some(Setting {
                    value: VirtMode::Pvh,
                    explicit: true,
                })
            },
            "QubesException",
            "pvh mode",
        ),
        (
            "nothing at the port",
            |_, r| r.port = port("00_15.0"),
            "DeviceNotFound",
            "no PCI device at port",
        ),
        (
            "another device at the port",
            |_, r| r.device_id = Wild::Is(DeviceId::pci(0x10de, 1, Some(NIC))),
            "DeviceNotFound",
            "the hardware changed",
        ),
        (
            "a bridge",
            |_, r| r.port = port("00_1c.0"),
            "QubesValueError",
            "PCI bridge",
        ),
        (
            "dom0 uses it, a qube asks",
            |f, _| {
                f.present[0].dom0_uses = vec![Dom0Use {
                    what: "it holds dom0's swap",
                    detail: "/dev/sda2".into(),
                }]
            },
            "QubesValueError",
            "dom0 itself uses it (it holds dom0's swap)",
        ),
        (
            "another function elsewhere",
            |f, r| {
                r.port = port("00_14.2");
                f.assignments.push(req("sys-usb", "00_14.0"));
            },
            "QubesValueError",
            "same physical device",
        ),
        (
            "another function elsewhere, no-strict-reset on one only",
            |f, r| {
                r.port = port("00_14.2");
                r.options = NSR;
                f.grants = NSR;
                f.assignments.push(req("sys-usb", "00_14.0"));
            },
            "QubesValueError",
            "same physical device",
        ),
        (
            "an option not granted",
            |_, r| r.options = PERMISSIVE,
            "QubesDaemonAccessError",
            "Option+permissive",
        ),
        (
            "an option granted is not the one asked",
            |f, r| {
                r.options = PERMISSIVE;
                f.grants = NSR;
            },
            "QubesDaemonAccessError",
            "Option+permissive",
        ),
        (
            "an option added to an existing assignment",
            |f, r| {
                r.options = PciOptions {
                    no_strict_reset: true,
                    permissive: true,
                };
                f.grants = NSR;
                f.assignments.push(Record {
                    options: NSR,
                    ..r.clone()
                });
            },
            "QubesDaemonAccessError",
            "Option+permissive",
        ),
    ];
    for (what, change, exception, text) in rows {
        let mut f = facts();
        let mut new = req("work", "00_1f.6");
        change(&mut f, &mut new);
        let (got, msg) = refusal(&Kind::Assign(new), &f);
        assert_eq!(got, *exception, "{what}: {msg}");
        assert!(msg.contains(text), "{what}: {msg}");
    }
}

#[test]
fn assign_plans_and_what_passes() {
    let f = facts();
    let new = req("work", "00_1f.6");
    assert_eq!(plan(&Kind::Assign(new.clone()), &f), Plan::New);
    // Pinned to the identity present.
    let pinned = Record {
        device_id: id_of(&f.present[0].device),
        ..new.clone()
    };
    assert_eq!(plan(&Kind::Assign(pinned), &f), Plan::New);
    // qubesd's default virt_mode (pvh until the first PCI device) is no refusal.
    let mut fresh = facts();
    fresh.dest.virt_mode = Some(Setting {
        value: VirtMode::Pvh,
        explicit: false,
    });
    assert_eq!(plan(&Kind::Assign(new.clone()), &fresh), Plan::New);
    for mode in [VirtMode::Hvm, VirtMode::Pv] {
        fresh.dest.virt_mode = Some(Setting {
            value: mode,
            explicit: true,
        });
        assert_eq!(plan(&Kind::Assign(new.clone()), &fresh), Plan::New, "{mode:?}");
    }
    // The same assignment exists: identical, even when the device is gone.
    let mut gone = facts();
    gone.present.clear();
    gone.assignments.push(new.clone());
    assert_eq!(plan(&Kind::Assign(new.clone()), &gone), Plan::Identical);
    // Another mode, same options: a mode change (never reached for PCI
    // from the front door, whose modes are required only; kept exact).
    let mut had = facts();
    let before = Record {
        mode: AssignmentMode::AutoAttach,
        ..new.clone()
    };
    had.assignments.push(before.clone());
    assert_eq!(plan(&Kind::Assign(new.clone()), &had), Plan::Mode { before });
    // Other options: a replacement; an option dropped needs no grant.
    let mut had = facts();
    let before = Record {
        options: NSR,
        ..new.clone()
    };
    had.assignments.push(before.clone());
    assert_eq!(plan(&Kind::Assign(new.clone()), &had), Plan::Replace { before });
    // Its own earlier assignment, and other qubes' other devices, make no
    // "several qubes" warning.
    had.assignments.push(req("sys-usb", "00_14.0"));
    let d = decide(&Kind::Assign(new.clone()), &had).unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    // An option granted; one the existing assignment already had needs none.
    let mut granted = facts();
    granted.grants = PERMISSIVE;
    let with = Record {
        options: PERMISSIVE,
        ..new.clone()
    };
    assert_eq!(plan(&Kind::Assign(with.clone()), &granted), Plan::New);
    let mut kept = facts();
    let both = Record {
        options: PciOptions {
            no_strict_reset: true,
            permissive: true,
        },
        ..new.clone()
    };
    kept.grants = NSR;
    kept.assignments.push(with);
    assert!(matches!(plan(&Kind::Assign(both), &kept), Plan::Replace { .. }));
    // Functions of one device: to one qube, or with no-strict-reset on both.
    let mut one = facts();
    one.assignments.push(req("work", "00_14.0"));
    assert_eq!(plan(&Kind::Assign(req("work", "00_14.2")), &one), Plan::New);
    let mut both_nsr = facts();
    both_nsr.grants = NSR;
    both_nsr
        .assignments
        .push(rec("sys-usb", "00_14.0", AssignmentMode::Required, NSR));
    let nsr_new = rec("work", "00_14.2", AssignmentMode::Required, NSR);
    assert_eq!(plan(&Kind::Assign(nsr_new), &both_nsr), Plan::New);
}

#[test]
fn dom0_may_assign_what_it_uses_with_a_warning_and_several_assignees_are_noted() {
    let mut f = facts();
    f.source = QubeName::dom0();
    f.present[0].dom0_uses = vec![Dom0Use {
        what: "it is dom0's console GPU (boot_vga)",
        detail: String::new(),
    }];
    f.assignments.push(req("sys-net", "00_1f.6"));
    let d = decide(&Kind::Assign(req("work", "00_1f.6")), &f).unwrap();
    assert_eq!(d.plan, Plan::New);
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
    assert!(d.warnings[0].contains("console GPU"));
    assert!(d.warnings[1].contains("several qubes (work and sys-net)"));
    // A qube assigning a device no other qube has gets no warning.
    let d = decide(&Kind::Assign(req("work", "00_1f.6")), &facts()).unwrap();
    assert!(d.warnings.is_empty());
    // The same device already assigned to the same qube under another
    // spelling (pinned to its id, here by port alone): refused, since
    // libvirt refuses a device twice ("Hostdev already exists").
    let mut f = facts();
    f.assignments.push(Record {
        device_id: id_of(&f.present[0].device),
        ..req("work", "00_1f.6")
    });
    let (kind, msg) = refusal(&Kind::Assign(req("work", "00_1f.6")), &f);
    assert_eq!(kind, "DeviceAlreadyAssigned");
    assert!(
        msg.contains("Hostdev already exists") && msg.contains("0x8086:0x1234"),
        "{msg}"
    );
    // The other way round, too; another qube's is no twin.
    let mut f = facts();
    f.assignments.push(req("work", "00_1f.6"));
    let pinned = Record {
        device_id: id_of(&f.present[0].device),
        ..req("work", "00_1f.6")
    };
    assert_eq!(refusal(&Kind::Assign(pinned.clone()), &f).0, "DeviceAlreadyAssigned");
    f.assignments[0].frontend = q("sys-net");
    assert_eq!(plan(&Kind::Assign(pinned), &f), Plan::New);
}

#[test]
fn set_mode_to_required_meets_the_assign_rules() {
    let rows: &[(&str, AssignmentMode, &str, &str)] = &[
        (
            "00_1f.6",
            AssignmentMode::AutoAttach,
            "QubesValueError",
            "only as required",
        ),
        (
            "00_1f.6",
            AssignmentMode::AskToAttach,
            "QubesValueError",
            "only as required",
        ),
        ("00_1c.0", AssignmentMode::Required, "QubesValueError", "bridge"),
        ("00_15.0", AssignmentMode::Required, "DeviceNotFound", "no PCI device"),
    ];
    for (p, mode, exception, text) in rows {
        let (got, msg) = refusal(&Kind::SetMode(rec("work", p, *mode, PciOptions::default())), &facts());
        assert_eq!(
            (got.as_str(), msg.contains(text)),
            (*exception, true),
            "{p} {mode}: {msg}"
        );
    }
    let mut f = facts();
    f.dest.admin_vm = true;
    assert_eq!(refusal(&Kind::SetMode(req("dom0", "00_1f.6")), &f).0, "QubesException");
    let mut f = facts();
    f.dest.virt_mode = Some(Setting {
        value: VirtMode::Pvh,
        explicit: true,
    });
    assert_eq!(refusal(&Kind::SetMode(req("work", "00_1f.6")), &f).0, "QubesException");
    let mut f = facts();
    f.assignments.push(req("sys-usb", "00_14.0"));
    assert!(refusal(&Kind::SetMode(req("work", "00_14.2")), &f)
        .1
        .contains("same physical device"));
    let mut f = facts();
    f.present[0].dom0_uses = vec![Dom0Use {
        what: "dom0's input devices are attached to it",
        detail: String::new(),
    }];
    assert!(refusal(&Kind::SetMode(req("work", "00_1f.6")), &f)
        .1
        .contains("input devices"));
    f.source = QubeName::dom0();
    assert_eq!(plan(&Kind::SetMode(req("work", "00_1f.6")), &f), Plan::Proceed);
    assert_eq!(plan(&Kind::SetMode(req("work", "00_1f.6")), &facts()), Plan::Proceed);
}

#[test]
fn no_hotplug_and_no_hand_back_while_running() {
    let p = port("00_1f.6");
    let mut running = facts();
    running.dest.running = true;
    assert_eq!(refusal(&Kind::Attach(p.clone()), &running).0, "QubesVMNotHaltedError");
    // Detach from a running qube that holds it: refused; that does not hold
    // it, or halted: left to qubesd's own answer.
    assert_eq!(plan(&Kind::Detach(p.clone()), &running), Plan::Proceed);
    running.dest.attached.push(p.clone());
    let (kind, msg) = refusal(&Kind::Detach(p.clone()), &running);
    assert_eq!(kind, "QubesVMNotHaltedError");
    assert!(msg.contains("never handed back to dom0"), "{msg}");
    let mut halted = facts();
    halted.dest.attached.push(p.clone());
    assert_eq!(plan(&Kind::Attach(p.clone()), &halted), Plan::Proceed);
    assert_eq!(plan(&Kind::Detach(p), &halted), Plan::Proceed);
    assert_eq!(plan(&Kind::Unassign, &facts()), Plan::Proceed);
}

#[test]
fn start_refusals_and_what_starts() {
    type Change = fn(&mut Facts);
    let rows: &[(&str, Change, &str, &str)] = &[
        (
            "device gone",
            |f| f.assignments.push(req("work", "00_15.0")),
            "DeviceNotFound",
            "no device is there",
        ),
        (
            "another device at the port",
            |f| {
                f.assignments.push(Record {
                    device_id: Wild::Is(DeviceId::pci(0x10de, 1, Some(NIC))),
                    ..req("work", "00_1f.6")
                })
            },
            "DeviceNotFound",
            "is there instead",
        ),
        (
            "a bridge",
            |f| f.assignments.push(req("work", "00_1c.0")),
            "QubesValueError",
            "bridges stay in dom0",
        ),
        (
            "in use by another running qube",
            |f| {
                f.assignments.push(req("work", "00_1f.6"));
                f.running.push(req("sys-net", "00_1f.6"));
            },
            "QubesException",
            "in use by sys-net",
        ),
        (
            "another function in use, no-strict-reset on one side",
            |f| {
                f.assignments
                    .push(rec("work", "00_14.2", AssignmentMode::Required, NSR));
                f.running.push(req("sys-usb", "00_14.0"));
            },
            "QubesException",
            "same physical device as dom0:00_14.0, which sys-usb",
        ),
        (
            "memory balancing noted in the refusal",
            |f| {
                f.dest.memory_balancing = true;
                f.assignments.push(req("work", "00_15.0"));
            },
            "DeviceNotFound",
            "memory balancing",
        ),
    ];
    for (what, change, exception, text) in rows {
        let mut f = facts();
        change(&mut f);
        let (got, msg) = refusal(&Kind::Start, &f);
        assert_eq!(got, *exception, "{what}: {msg}");
        assert!(msg.contains(text), "{what}: {msg}");
    }
    let starts = |change: Change| {
        let mut f = facts();
        change(&mut f);
        decide(&Kind::Start, &f).map(|d| d.warnings)
    };
    assert_eq!(starts(|_| {}).unwrap(), Vec::<String>::new(), "nothing required");
    assert!(starts(|f| f.assignments.push(req("work", "00_1f.6"))).is_ok());
    // Only required assignments of the qube starting count.
    assert!(starts(|f| {
        f.assignments.push(rec(
            "work",
            "00_15.0",
            AssignmentMode::AutoAttach,
            PciOptions::default(),
        ));
        f.assignments.push(req("sys-net", "00_15.0"));
    })
    .is_ok());
    // Pinned to the identity present.
    assert!(starts(|f| {
        let id = id_of(&f.present[0].device);
        f.assignments.push(Record {
            device_id: id,
            ..req("work", "00_1f.6")
        });
    })
    .is_ok());
    // What the starting qube itself is listed as holding does not count.
    assert!(starts(|f| {
        f.assignments.push(req("work", "00_1f.6"));
        f.running.push(req("work", "00_1f.6"));
    })
    .is_ok());
    // Another function, no-strict-reset on both sides.
    assert!(starts(|f| {
        f.assignments
            .push(rec("work", "00_14.2", AssignmentMode::Required, NSR));
        f.running.push(rec("sys-usb", "00_14.0", AssignmentMode::Required, NSR));
    })
    .is_ok());
    // Another device held elsewhere is no concern.
    assert!(starts(|f| {
        f.assignments.push(req("work", "00_1f.6"));
        f.running.push(req("sys-usb", "00_14.0"));
    })
    .is_ok());
    // dom0 uses it: a warning, not a refusal (dom0 itself assigned it).
    let warned = starts(|f| {
        f.present[0].dom0_uses = vec![Dom0Use {
            what: "it holds dom0's swap",
            detail: String::new(),
        }];
        f.assignments.push(req("work", "00_1f.6"));
    })
    .unwrap();
    assert_eq!(warned.len(), 1);
    assert!(warned[0].contains("dom0's swap"), "{warned:?}");
}

#[test]
fn classes_of_the_installer_defaults() {
    assert!(is_network(&device("00_1f.6", 0x020000)));
    assert!(is_network(&device("00_1f.6", 0x028000)));
    assert!(!is_network(&device("00_1f.6", 0x0c0330)));
    assert!(is_usb(&device("00_14.0", 0x0c0330)));
    assert!(is_usb(&device("00_14.0", 0x0c0320)));
    assert!(!is_usb(&device("00_14.0", 0x0c0500)));
    assert!(!is_usb(&device("00_14.0", 0x030c00)));
    let mut unknown = device("00_14.0", 0);
    unknown.class = None;
    assert!(!is_usb(&unknown) && !is_network(&unknown));
}

#[test]
fn start_problems_each_with_its_code_and_severity() {
    type Change = fn(&mut Facts);
    let rows: &[(&str, Change, &str, Severity)] = &[
        (
            "no reset method",
            |f| {
                f.present[0].device.reset = Reset::None;
                f.assignments.push(req("work", "00_1f.6"));
            },
            "no-reset",
            Severity::Error,
        ),
        (
            "an empty reset_method",
            |f| {
                f.present[0].device.reset = Reset::Methods(Vec::new());
                f.assignments.push(req("work", "00_1f.6"));
            },
            "no-reset",
            Severity::Error,
        ),
        (
            "explicit pvh",
            |f| {
                f.dest.virt_mode = Some(Setting {
                    value: VirtMode::Pvh,
                    explicit: true,
                });
                f.assignments.push(req("work", "00_1f.6"));
            },
            "pvh",
            Severity::Error,
        ),
        (
            "twice",
            |f| {
                f.assignments.push(req("work", "00_1f.6"));
                let id = id_of(&f.present[0].device);
                f.assignments.push(Record {
                    device_id: id,
                    ..req("work", "00_1f.6")
                });
            },
            "duplicate",
            Severity::Error,
        ),
        (
            "another function required elsewhere, not running",
            |f| {
                f.assignments.push(req("work", "00_14.2"));
                f.assignments.push(req("sys-usb", "00_14.0"));
            },
            "shared-function",
            Severity::Warning,
        ),
        (
            "another function required elsewhere, no-strict-reset on one side only",
            |f| {
                f.assignments
                    .push(rec("work", "00_14.2", AssignmentMode::Required, NSR));
                f.assignments.push(req("sys-usb", "00_14.0"));
            },
            "shared-function",
            Severity::Warning,
        ),
        (
            "dom0 uses it",
            |f| {
                f.present[0].dom0_uses = vec![Dom0Use {
                    what: "it holds dom0's swap",
                    detail: String::new(),
                }];
                f.assignments.push(req("work", "00_1f.6"));
            },
            "dom0-uses",
            Severity::Warning,
        ),
        (
            "a big HVM",
            |f| {
                f.dest.maxmem_mb = Some(4000);
                f.assignments.push(req("work", "00_1f.6"));
            },
            "memory-over-3.5g",
            Severity::Warning,
        ),
        (
            "not hidden at boot",
            |f| {
                f.hidden = Some(Hidden::default());
                f.assignments.push(req("work", "00_1f.6"));
            },
            "not-hidden",
            Severity::Warning,
        ),
    ];
    for (what, change, code, severity) in rows {
        let mut f = facts();
        change(&mut f);
        let problems = start_problems(&f);
        assert!(
            problems.iter().any(|p| p.code == *code && p.severity == *severity),
            "{what}: {:?}",
            problems.iter().map(|p| (p.code, p.severity)).collect::<Vec<_>>()
        );
        assert_eq!(
            decide(&Kind::Start, &f).is_err(),
            problems.iter().any(|p| p.severity == Severity::Error),
            "{what}: the start is refused exactly on an error"
        );
    }
    // Nothing of the kind: at 3584 MB, hidden, reset, no-strict-reset.
    let mut f = facts();
    f.dest.memory_mb = Some(3584);
    f.hidden = Some(Hidden {
        sbdfs: f.present.iter().map(|p| p.device.sbdf).collect(),
    });
    f.present[0].device.reset = Reset::None;
    f.assignments
        .push(rec("work", "00_1f.6", AssignmentMode::Required, NSR));
    f.assignments
        .push(rec("work", "00_14.2", AssignmentMode::Required, NSR));
    f.assignments
        .push(rec("sys-usb", "00_14.0", AssignmentMode::Required, NSR));
    let problems = start_problems(&f);
    assert!(
        problems.is_empty(),
        "{:?}",
        problems.iter().map(|p| p.code).collect::<Vec<_>>()
    );
    // A PV qube with much memory is not an HVM.
    f.dest.virt_mode = Some(Setting {
        value: VirtMode::Pv,
        explicit: true,
    });
    f.dest.memory_mb = Some(8000);
    assert!(start_problems(&f).is_empty());
}

#[test]
fn virt_modes_parse_as_qubesd_spells_them() {
    assert_eq!(VirtMode::parse("hvm"), Some(VirtMode::Hvm));
    assert_eq!(VirtMode::parse("pv"), Some(VirtMode::Pv));
    assert_eq!(VirtMode::parse("pvh"), Some(VirtMode::Pvh));
    for other in ["", "HVM", "pvhx", "default"] {
        assert_eq!(VirtMode::parse(other), None, "{other:?}");
    }
}

#[test]
fn devices_denied_patterns_match_as_upstream_matches_them() {
    let mut d = Dest::named(q("work"));
    assert_eq!(d.denied_by("p020000"), None, "an empty list denies nothing");
    d.devices_denied = "u03****p02****".into();
    assert_eq!(d.denied_by("p028000"), Some("p02****"));
    assert_eq!(d.denied_by("p0c0330"), None);
    assert_eq!(
        d.denied_by("p******"),
        Some("u03****"),
        "what cannot be checked is denied"
    );
    d.devices_denied = "p0c0330".into();
    assert_eq!(d.denied_by("p0c0330"), Some("p0c0330"));
    assert_eq!(d.denied_by("p0c0320"), None);
    // At assignment, from any source.
    let mut f = facts();
    f.dest.devices_denied = "p02****".into();
    f.source = QubeName::dom0();
    let (kind, msg) = refusal(&Kind::Assign(req("work", "00_1f.6")), &f);
    assert_eq!(kind, "QubesDaemonAccessError");
    assert!(msg.contains("p02****") && msg.contains("p020000"), "{msg}");
    assert!(refusal(&Kind::SetMode(req("work", "00_1f.6")), &f)
        .1
        .contains("p02****"));
}
