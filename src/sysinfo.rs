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
    #[serde(default)]
    pub template_for_dispvms: Option<bool>,
    #[serde(default)]
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
