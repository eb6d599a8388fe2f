//! qubes-pci-admin: the dom0 service answering `admin.vm.device.pci.*`.

pub mod api;
pub mod cache;
pub mod config;
pub mod error;
pub mod extension;
pub mod gather;
pub mod handoff;
pub mod logging;
pub mod pci;
pub mod policy;
pub mod qubes_xml;
pub mod qubesd;
pub mod rules;
pub mod serve;
pub mod sysinfo;

pub use config::Config;
pub use error::ApiError;
