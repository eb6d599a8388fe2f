//! The front door's facts for [`crate::rules::decide`]: the destination
//! from the system info and qubesd, the devices from sysfs, the
//! assignments from qubesd's qubes.xml, the option grants from the policy.

use qubes_pci_rpc::{PciOptions, PciPath};

use super::{Call, Sources};
use crate::error::ApiError;
use crate::rules::{Dest, Facts, Setting, VirtMode};

/// What the front door reads for one call.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Needs<'a> {
    /// The ports whose devices the decision concerns.
    pub ports: &'a [&'a PciPath],
    /// The options the call turns on (their grants are asked for).
    pub options: PciOptions,
    /// The destination's `virt_mode` (assignments).
    pub virt_mode: bool,
    /// Every qube's assignments.
    pub assignments: bool,
    /// The devices the destination holds now.
    pub attached: bool,
    /// The destination's `devices_denied` (assignments).
    pub denied: bool,
}

/// The destination of `call` and what `needs` asks for, read now.
pub(super) fn gather(sources: &Sources, call: &Call, needs: Needs) -> Result<Facts, ApiError> {
    let name = call.dest.clone();
    let info = call.dest_info();
    let admin_vm = name.is_dom0() || info.is_some_and(|i| i.klass.as_deref() == Some("AdminVM"));
    let running = info.is_some_and(|i| i.is_running());
    let virt_mode = if needs.virt_mode && !admin_vm {
        let (value, default) = sources.qubesd().virt_mode(&name)?;
        let value = VirtMode::parse(&value).ok_or_else(|| {
            ApiError::dom0(
                "qubesd, which keeps dom0's record of PCI assignments, did not answer as expected; nothing was \
                 changed by this call. Try again; if it persists, a dom0 administrator can find the cause in the \
                 journal",
                format!("{name} has virt_mode {value:?}"),
            )
        })?;
        Some(Setting {
            value,
            explicit: !default,
        })
    } else {
        None
    };
    let attached = if needs.attached && running && !admin_vm {
        sources
            .qubesd()
            .attached(&name)?
            .into_iter()
            .filter_map(|a| a.device.port.as_option().cloned())
            .collect()
    } else {
        Vec::new()
    };
    let devices_denied = if needs.denied && !admin_vm {
        sources.qubesd().property(&name, "devices_denied")?.0
    } else {
        String::new()
    };
    let assignments = if needs.assignments {
        sources.qubes_xml()?.records()
    } else {
        Vec::new()
    };
    let present = crate::gather::present(&sources.config.sysfs, &sources.config.procfs, needs.ports)?;
    let grants = crate::gather::grants(
        || sources.policy(),
        &call.system,
        &call.req.source,
        &call.req.target,
        needs.options,
    );
    Ok(Facts {
        source: call.req.source.clone(),
        dest: Dest {
            name,
            admin_vm,
            virt_mode,
            running,
            attached,
            devices_denied,
            ..Dest::named(call.dest.clone())
        },
        present,
        assignments,
        running: Vec::new(),
        grants,
        hidden: None,
    })
}
