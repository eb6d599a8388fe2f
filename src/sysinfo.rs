//! System info: upstream's `internal.GetSystemInfo` JSON,
//! `{"domains": {name: {"type", "tags", "power_state", "uuid", …}}}`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use qubes_pci_rpc::QubeRef;

/// The largest system-info document read.
const MAX_SYSTEM_INFO: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SystemInfoError {
    #[error("cannot read system info {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("system info {path} is not valid JSON of the internal.GetSystemInfo shape: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("system info {0} is larger than 64 MiB")]
    TooLarge(String),
}

/// One qube's entry. Unknown keys are ignored.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct DomainInfo {
    #[serde(rename = "type", default)]
    pub klass: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub power_state: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub default_dispvm: Option<String>,
    /// A property (a bool), read by truthiness like `internal`.
    #[serde(default, deserialize_with = "truthy")]
    pub template_for_dispvms: Option<bool>,
    /// A feature: qubesd stores features as strings (`"1"`, `""`) and sends
    /// them as stored; read by Python's truthiness, as qrexec reads it.
    #[serde(default, deserialize_with = "truthy")]
    pub internal: Option<bool>,
    #[serde(default)]
    pub guivm: Option<String>,
    #[serde(default)]
    pub relayvm: Option<String>,
    #[serde(default)]
    pub transport_rpc: Option<String>,
    #[serde(default)]
    pub icon: Option<String>,
}

/// Any JSON value as Python's `bool()` sees it (`null` stays unknown):
/// qubesd sends features as the strings it stores, properties as their
/// types, and a value of an unexpected type must not make the whole
/// system info unreadable (which would stop every call).
fn truthy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    use serde::Deserialize;
    use serde_json::Value;
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::Bool(b) => Some(b),
        Value::Number(n) => Some(n.as_f64().is_some_and(|f| f != 0.0)),
        Value::String(s) => Some(!s.is_empty()),
        Value::Array(a) => Some(!a.is_empty()),
        Value::Object(o) => Some(!o.is_empty()),
    })
}

impl DomainInfo {
    pub fn is_running(&self) -> bool {
        matches!(self.power_state.as_deref(), Some("Running" | "Paused" | "Transient"))
    }
}

#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct SystemInfo {
    pub domains: BTreeMap<String, DomainInfo>,
}

impl SystemInfo {
    pub fn parse(text: &[u8], origin: &str) -> Result<SystemInfo, SystemInfoError> {
        serde_json::from_slice(text).map_err(|source| SystemInfoError::Parse {
            path: origin.to_owned(),
            source,
        })
    }

    pub fn load_file(path: &Path) -> Result<SystemInfo, SystemInfoError> {
        let shown = path.display().to_string();
        let read_err = |source| SystemInfoError::Read {
            path: shown.clone(),
            source,
        };
        let mut buf = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SYSTEM_INFO + 1).read_to_end(&mut buf))
            .map_err(read_err)?;
        if buf.len() as u64 > MAX_SYSTEM_INFO {
            return Err(SystemInfoError::TooLarge(shown));
        }
        SystemInfo::parse(&buf, &shown)
    }

    /// An entry by name or by `uuid:<uuid>`.
    pub fn get(&self, key: &str) -> Option<(&str, &DomainInfo)> {
        if let Some(uuid) = key.strip_prefix("uuid:") {
            return self
                .domains
                .iter()
                .find(|(_, d)| d.uuid.as_deref() == Some(uuid))
                .map(|(n, d)| (n.as_str(), d));
        }
        self.domains.get_key_value(key).map(|(n, d)| (n.as_str(), d))
    }

    pub fn resolve(&self, q: &QubeRef) -> Option<(&str, &DomainInfo)> {
        self.get(&q.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// qubesd sends `internal` as the feature string it stores (`"1"` on
    /// default-mgmt-dvm and preloaded disposables, `""` when cleared),
    /// `null` when unset; any other type is read by truthiness too.
    #[test]
    fn features_are_read_as_qubesd_sends_them() {
        let info = SystemInfo::parse(
            br#"{"domains": {
                "default-mgmt-dvm": {"type": "AppVM", "internal": "1", "template_for_dispvms": true},
                "cleared": {"type": "AppVM", "internal": ""},
                "unset": {"type": "AppVM", "internal": null, "template_for_dispvms": false},
                "odd": {"type": "AppVM", "internal": 0, "template_for_dispvms": "1"},
                "bool": {"type": "AppVM", "internal": true}
            }}"#,
            "test",
        )
        .unwrap();
        let internal = |n: &str| info.domains[n].internal;
        assert_eq!(internal("default-mgmt-dvm"), Some(true));
        assert_eq!(internal("cleared"), Some(false));
        assert_eq!(internal("unset"), None);
        assert_eq!(internal("odd"), Some(false));
        assert_eq!(internal("bool"), Some(true));
        assert_eq!(info.domains["odd"].template_for_dispvms, Some(true));
        assert_eq!(info.domains["unset"].template_for_dispvms, Some(false));
    }
}
