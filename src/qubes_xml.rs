//! qubesd's record of PCI assignments, read from its `qubes.xml`: the
//! `<devices class="pci">` of every qube, read as qubesd loads them (the
//! `mode` attribute, or the legacy `required=`, or no mode at all meaning
//! required; the identity from the attribute or the legacy option).
//!
//! Port ids written by R4.2 (BDFs) are read as qubesd holds them once it
//! has loaded the file: converted to PCI paths ([`QubesXml::as_qubesd_loads`]).
//!
//! qubesd replaces the file atomically (a temporary file renamed over it)
//! before it answers any call that changed an assignment, so the file read
//! after such an answer is what qubesd holds.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use qubes_pci_rpc::{Assignment, AssignmentMode, DeviceId, DeviceRef, PciPath, QubeName, Wild};

use crate::rules::Record;

/// The largest qubes.xml read.
const MAX_QUBES_XML: u64 = 64 << 20;

/// One `<device>` entry of the file, as written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The owning qube's name and class (`AppVM`, `AdminVM`, …).
    pub qube: String,
    pub class: String,
    pub backend: String,
    pub id: String,
    pub mode: Option<String>,
    pub legacy_required: Option<String>,
    pub identity: Option<String>,
    pub options: Vec<(String, String)>,
}

impl Entry {
    /// The mode qubesd loads; `None` for a mode it ignores the entry for.
    pub fn mode(&self) -> Option<AssignmentMode> {
        match (&self.mode, &self.legacy_required) {
            (_, Some(r)) => Some(
                if matches!(r.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on") {
                    AssignmentMode::Required
                } else {
                    AssignmentMode::AutoAttach
                },
            ),
            (Some(m), None) => AssignmentMode::parse(m).ok(),
            (None, None) => Some(AssignmentMode::Required),
        }
    }

    /// The entry as qubesd lists it in `Assigned`; `None` when its ids are
    /// not a dom0 PCI device's or its options cannot be listed (qubesd
    /// lists those too; they cannot name a device here, and are logged).
    pub fn to_assignment(&self) -> Option<Assignment> {
        let device = DeviceRef {
            backend: QubeName::parse(&self.backend).ok()?,
            port: match self.id.as_str() {
                "*" => Wild::Any,
                p => Wild::Is(PciPath::parse(p).ok()?),
            },
            device_id: match self.identity.as_deref().unwrap_or("*") {
                "*" => Wild::Any,
                d => Wild::Is(DeviceId::parse(d).ok()?),
            },
        };
        let a = Assignment {
            device,
            frontend: Some(QubeName::parse(&self.qube).ok()?),
            mode: self.mode()?,
            options: self.options.clone(),
        };
        // An option whose name or value cannot be written in a listing
        // (found by fuzzing: a name with non-ASCII bytes) makes the entry
        // unlistable, not the whole listing.
        a.serialize().ok()?;
        Some(a)
    }

    /// The entry as the rules see it (dom0 devices with a port only), its
    /// options as qubesd renders them (a stored `False` is on).
    pub fn to_record(&self) -> Option<Record> {
        let a = self.to_assignment()?;
        Record::stored(a.frontend.clone()?, &a)
    }
}

/// The PCI assignments of every qube in one version of qubes.xml.
#[derive(Debug, Clone, Default)]
pub struct QubesXml {
    pub entries: Vec<Entry>,
}

impl QubesXml {
    /// Reads the file (at most 64 MiB). `Err` says why, naming the file:
    /// for the journal.
    pub fn load(path: &Path) -> Result<QubesXml, String> {
        let shown = path.display();
        let mut buf = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_QUBES_XML + 1).read_to_string(&mut buf))
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        if buf.len() as u64 > MAX_QUBES_XML {
            return Err(format!("{shown} is larger than 64 MiB"));
        }
        QubesXml::parse(&buf).map_err(|e| format!("{shown} is not a qubes.xml: {e}"))
    }

    pub fn parse(text: &str) -> Result<QubesXml, String> {
        let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
        let root = doc.root_element();
        if root.tag_name().name() != "qubes" {
            return Err(format!("the root element is <{}>, not <qubes>", root.tag_name().name()));
        }
        let mut entries = Vec::new();
        let domains = root
            .children()
            .filter(|n| n.has_tag_name("domains"))
            .flat_map(|d| d.children().filter(|n| n.has_tag_name("domain")));
        for domain in domains {
            let name = domain
                .children()
                .filter(|n| n.has_tag_name("properties"))
                .flat_map(|p| p.children().filter(|n| n.has_tag_name("property")))
                .find(|p| p.attribute("name") == Some("name"))
                .and_then(|p| p.text())
                .unwrap_or_default()
                .to_owned();
            let class = domain.attribute("class").unwrap_or_default().to_owned();
            let devices = domain
                .children()
                .filter(|n| n.has_tag_name("devices") && n.attribute("class") == Some("pci"))
                .flat_map(|d| d.children().filter(|n| n.has_tag_name("device")));
            for dev in devices {
                let mut identity = None;
                let mut options = Vec::new();
                for opt in dev.children().filter(|n| n.has_tag_name("option")) {
                    let key = opt.attribute("name").unwrap_or_default().to_owned();
                    let value = opt.text().unwrap_or_default().to_owned();
                    if key == "identity" {
                        identity = Some(value);
                    } else if let Some(slot) = options.iter_mut().find(|(k, _)| *k == key) {
                        // As qubesd loads them (a dict): the last one wins,
                        // in the first one's place (found by fuzzing).
                        slot.1 = value;
                    } else {
                        options.push((key, value));
                    }
                }
                entries.push(Entry {
                    qube: name.clone(),
                    class: class.clone(),
                    backend: dev.attribute("backend-domain").unwrap_or_default().to_owned(),
                    id: dev.attribute("id").unwrap_or("*").to_owned(),
                    mode: dev.attribute("mode").map(str::to_owned),
                    legacy_required: dev.attribute("required").map(str::to_owned),
                    identity: identity.or_else(|| dev.attribute("identity").map(str::to_owned)),
                    options,
                });
            }
        }
        Ok(QubesXml { entries })
    }

    /// The file as qubesd holds it once loaded: port ids written by R4.2
    /// (BDFs) converted to PCI paths with `sysfs`, as qubesd converts them.
    /// The same value when nothing needs converting.
    pub fn as_qubesd_loads(self: &Arc<Self>, sysfs: &Path) -> Arc<QubesXml> {
        let convert = crate::pci::sysfs::ports_as_qubesd_loads(sysfs);
        let converted: Vec<(usize, String)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.id != "*")
            .filter_map(|(i, e)| Some((i, convert(&e.id)?.to_string())))
            .filter(|(i, id)| self.entries.get(*i).is_some_and(|e| &e.id != id))
            .collect();
        if converted.is_empty() {
            return self.clone();
        }
        let mut out = QubesXml::clone(self);
        for (i, id) in converted {
            if let Some(e) = out.entries.get_mut(i) {
                e.id = id;
            }
        }
        Arc::new(out)
    }

    /// The assignments of `qube`, as qubesd lists them.
    pub fn assigned_to(&self, qube: &str) -> Vec<Assignment> {
        self.entries
            .iter()
            .filter(|e| e.qube == qube)
            .filter_map(|e| {
                let a = e.to_assignment();
                if a.is_none() {
                    tracing::warn!(qube, id = %e.id, "a PCI assignment in qubes.xml names no dom0 PCI device; not listed");
                }
                a
            })
            .collect()
    }

    /// Every qube's assignments of dom0 PCI devices, as the rules see them.
    pub fn records(&self) -> Vec<Record> {
        self.entries.iter().filter_map(Entry::to_record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version='1.0' encoding='utf-8'?>
<qubes><domains>
 <domain id="domain-1" class="AppVM">
  <properties><property name="name">sys-usb</property></properties>
  <devices class="pci">
   <device backend-domain="dom0" id="00_14.0" mode="required" identity="0x8086:0x8cb1::p0c0330">
    <option name="no-strict-reset">False</option>
   </device>
   <device backend-domain="dom0" id="00_1d.0" required="False"><option name="identity">*</option></device>
   <device backend-domain="dom0" id="00_1a.0"/>
   <device backend-domain="dom0" id="00_1b.0" mode="bogus"/>
  </devices>
  <devices class="usb"><device backend-domain="sys-usb" id="1-1"/></devices>
 </domain>
</domains></qubes>"#;

    #[test]
    fn reads_what_qubesd_loads() {
        let x = QubesXml::parse(XML).unwrap();
        assert_eq!(x.entries.len(), 4, "pci only");
        let a = x.assigned_to("sys-usb");
        assert_eq!(a.len(), 3, "an unrecognised mode is ignored, as qubesd does");
        assert_eq!(
            a[0].to_line().unwrap(),
            "dom0+00_14.0:0x8086:0x8cb1::p0c0330 device_id='0x8086:0x8cb1::p0c0330' port_id='00_14.0' \
             devclass='pci' backend_domain='dom0' mode='required' frontend_domain='sys-usb' \
             _no-strict-reset='False'\n"
        );
        assert_eq!(a[1].mode, AssignmentMode::AutoAttach, "legacy required=False");
        assert_eq!(a[2].mode, AssignmentMode::Required, "no mode at all");
        let r = x.records();
        assert!(
            r[0].options.no_strict_reset,
            "a stored False is on once qubesd renders it"
        );
        assert_eq!(r[1].device_id, Wild::Any);
    }

    /// Found by fuzzing: a repeated option read as two, which no listing can
    /// carry; qubesd keeps the last value.
    #[test]
    fn a_repeated_option_keeps_the_last_value() {
        let x = QubesXml::parse(
            "<qubes><domains><domain><properties><property name=\"name\">w</property></properties>\
             <devices class=\"pci\"><device backend-domain=\"dom0\" id=\"00_14.0\"><option name=\"a\">1</option>\
             <option name=\"b\">2</option><option name=\"a\">3</option></device></devices></domain></domains></qubes>",
        )
        .unwrap();
        assert_eq!(
            x.entries[0].options,
            vec![("a".to_owned(), "3".to_owned()), ("b".to_owned(), "2".to_owned())]
        );
    }

    /// Found by fuzzing: an option name with non-ASCII bytes made the whole
    /// listing fail; the entry is left out instead.
    #[test]
    fn an_unlistable_entry_is_left_out() {
        let x = QubesXml::parse(
            "<qubes><domains><domain><properties><property name=\"name\">w</property></properties>\
             <devices class=\"pci\"><device backend-domain=\"dom0\" id=\"00_14.0\"><option name=\"n\u{fffd}\">True</option></device>\
             <device backend-domain=\"dom0\" id=\"00_1f.6\"/></devices></domain></domains></qubes>",
        )
        .unwrap();
        let listed = x.assigned_to("w");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].to_line().unwrap().contains("00_1f.6"));
    }

    #[test]
    fn refuses_other_documents() {
        assert!(QubesXml::parse("<nope/>").is_err());
        assert!(QubesXml::parse("<qubes>").is_err());
    }
}
