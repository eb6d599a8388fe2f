//! Looking at the system: the policy (`policy eval`, `policy lint`) and
//! dom0's PCI devices with who uses them (`list`).

use std::io::Write;
use std::process::ExitCode;

use qubes_pci_admin::api::Service;
use qubes_pci_admin::pci::Inventory;
use qubes_pci_rpc::json::{AssignedJson, DeviceJson};
use qubes_pci_rpc::native::DeviceEntry;

use crate::PolicyCommand;

pub fn policy(svc: &Service, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    use qubes_pci_admin::policy::{Evaluation, Policy};
    if let PolicyCommand::Lint = cmd {
        let (p, errors) = Policy::lint_dirs(&svc.sources.config.policy_dirs());
        for e in &errors {
            eprintln!("{e}");
        }
        let dirs = svc.sources.config.policy_dirs();
        let warnings = qubes_pci_admin::policy::ignored_files(&dirs)
            .into_iter()
            .chain(qubes_pci_admin::policy::rule_warnings(&p))
            .chain(qubes_pci_admin::policy::argument_warnings(&p));
        for w in warnings {
            eprintln!("{w}");
        }
        if errors.is_empty() {
            println!("policy loads: {} rules", p.rules.len());
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "policy does not load: {} error{}; every call from a qube is denied until they are fixed",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        );
        return Ok(ExitCode::from(1));
    }
    // Never freed: the process ends after this command, and freeing every
    // rule one by one costs more than the kernel's teardown of the memory.
    let loaded = std::mem::ManuallyDrop::new(Policy::load_dirs(&svc.sources.config.policy_dirs()));
    if let Err(e) = &*loaded {
        // Not a decision: the command could not run (qrexec would deny
        // everything until the policy loads).
        eprintln!("qubes-pci-admin: the policy does not load, so qrexec denies every call: {e}");
        eprintln!("qubes-pci-admin: `qubes-pci-admin policy lint` lists every error");
        return Ok(ExitCode::from(2));
    }
    match cmd {
        PolicyCommand::Lint => Ok(ExitCode::SUCCESS),
        PolicyCommand::Eval { batch: true, .. } => {
            let system = svc.sources.system_info().map_err(|e| qubes_unknown(&e))?;
            eval_batch(&loaded, &system)
        }
        PolicyCommand::Eval {
            json,
            source,
            target,
            service,
            ..
        } => {
            let (Some(source), Some(target), Some(service)) = (source, target, service) else {
                anyhow::bail!("policy eval needs SOURCE TARGET SERVICE[+ARG], or --batch");
            };
            let system = svc.sources.system_info().map_err(|e| qubes_unknown(&e))?;
            notes(&system, &source, &target, &service);
            let eval = Evaluation::run(&loaded, &system, &source, &target, &service);
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer(&mut out, &eval.to_json(&system))?;
            } else {
                write!(out, "{}", eval.to_lines(&system))?;
                // Why, after qrexec-policy-exec's lines: the deciding rule
                // and, for a deny, the reason.
                let v = eval.to_json(&system);
                let rule = v.rule.unwrap_or("none (no rule matches)");
                write!(out, "\nrule={rule}")?;
                if let Some(reason) = v.error {
                    write!(out, "\nreason={}", reason.replace('\n', " "))?;
                }
            }
            writeln!(out)?;
            Ok(ExitCode::from(eval.exit_code(&system)))
        }
    }
}

/// `note: …` on standard error for what is likely a typo: a qube the
/// system does not know, a PCI method that does not exist.
fn notes(system: &qubes_pci_admin::policy::System, source: &str, target: &str, service: &str) {
    for (role, name) in [("source", source), ("target", target)] {
        if !name.starts_with('@') && system.get(name).is_none() {
            eprintln!("note: the {role} {name} is not a qube this system has");
        }
    }
    let method = service.split_once('+').map_or(service, |(m, _)| m);
    if let Some(meant) = qubes_pci_admin::policy::unknown_pci_service(method) {
        let hint = meant.map_or_else(String::new, |m| format!(" (did you mean {m}?)"));
        eprintln!("note: {method} is not a method of qubes-pci-admin{hint}");
    }
}

/// One request of `policy eval --batch`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    source: String,
    target: String,
    service: String,
}

/// `policy eval --batch`: one load, then a decision per input line.
fn eval_batch(
    loaded: &Result<qubes_pci_admin::policy::Policy, qubes_pci_admin::policy::PolicyError>,
    system: &qubes_pci_admin::policy::System,
) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let req: BatchRequest = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                out.flush()?;
                eprintln!(
                    "qubes-pci-admin: stdin line {}: expected {{\"source\", \"target\", \"service\"}}: {e}",
                    n + 1
                );
                return Ok(ExitCode::from(2));
            }
        };
        let eval = qubes_pci_admin::policy::Evaluation::run(loaded, system, &req.source, &req.target, &req.service);
        serde_json::to_writer(&mut out, &eval.to_json(system))?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Why a dom0 failure happened, without the words meant for a calling qube.
fn why(e: &qubes_pci_admin::ApiError) -> String {
    match e {
        qubes_pci_admin::ApiError::Dom0 { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// qubes.xml cannot be read: say which flag reads another one.
fn record_unreadable(e: &qubes_pci_admin::ApiError) -> anyhow::Error {
    anyhow::anyhow!(
        "qubesd's record of PCI assignments cannot be read ({}): run this in dom0, or give --qubes-xml FILE \
         (examples/qubes.xml is the demo's)",
        why(e)
    )
}

/// The qubes cannot be learnt from qubesd: say which flag gives them.
fn qubes_unknown(e: &qubes_pci_admin::ApiError) -> anyhow::Error {
    anyhow::anyhow!(
        "the qubes cannot be asked from qubesd ({}): run this in dom0, or give --system-info FILE \
         (examples/system-info.json has the demo's qubes)",
        why(e)
    )
}

pub fn list(svc: &Service, json: bool) -> anyhow::Result<()> {
    let inventory = Inventory::scan(&svc.sources.config.sysfs)?;
    let infos = qubes_pci_admin::api::device_infos(&inventory, &svc.sources.pci_names_for(&inventory), None);
    let xml = svc.sources.qubes_xml().map_err(|e| record_unreadable(&e))?;
    let system = svc.sources.system_info().map_err(|e| qubes_unknown(&e))?;
    let mut attached = Vec::new();
    let running = system
        .domains
        .iter()
        .filter(|(n, i)| i.is_running() && n.as_str() != qubes_pci_rpc::QubeName::dom0().as_str());
    for (name, _) in running {
        let q = qubes_pci_rpc::QubeName::parse(name)?;
        match svc.sources.qubesd().attached(&q) {
            Ok(held) => attached.extend(held.into_iter().map(|a| (q.clone(), a))),
            Err(qubes_pci_admin::qubesd::QubesdError::Connect { .. }) => {
                eprintln!("note: qubesd is not reachable here, so the devices running qubes hold are not shown");
                break;
            }
            Err(e) => return Err(anyhow::anyhow!("qubesd did not say what {q} holds: {e}")),
        }
    }
    let records = xml.records();
    let dom0_uses = qubes_pci_admin::pci::dom0_use::scan(&svc.sources.config.sysfs, &svc.sources.config.procfs);
    // One JSON shape for both binaries (qubes_pci_rpc::json).
    let rows: Vec<DeviceJson> = infos
        .iter()
        .map(|i| {
            let mut j = DeviceJson::new(&DeviceEntry::from(i), Some(Vec::new()));
            j.assigned_to = Some(
                records
                    .iter()
                    .filter(|r| r.port == i.port)
                    .map(|r| AssignedJson {
                        qube: Some(r.frontend.to_string()),
                        mode: r.mode.to_string(),
                        options: r.options.enabled().map(|o| (o.to_owned(), true)).collect(),
                    })
                    .collect(),
            );
            j.attached_to = Some(
                attached
                    .iter()
                    .filter(|(_, a)| a.device.port.as_option() == Some(&i.port))
                    .map(|(q, _)| q.to_string())
                    .collect(),
            );
            j.used_by_dom0 = Some(
                inventory
                    .by_port(&i.port)
                    .map(|d| dom0_uses.uses(&d.sbdf))
                    .into_iter()
                    .flatten()
                    .map(|u| u.what.to_string())
                    .collect(),
            );
            j
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let table: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            let used: Vec<String> = r
                .assigned_to
                .iter()
                .flatten()
                .map(|a| {
                    let q = a.qube.as_deref().unwrap_or("?");
                    let opts: Vec<String> = a.options.keys().map(|o| format!("{o}=True")).collect();
                    if opts.is_empty() {
                        format!("{q} ({})", a.mode)
                    } else {
                        format!("{q} ({}, {})", a.mode, opts.join(", "))
                    }
                })
                .chain(
                    r.attached_to
                        .iter()
                        .flatten()
                        .map(|q| format!("{q} (attached, running)")),
                )
                .chain(r.used_by_dom0.iter().flatten().map(|w| format!("dom0 ({w})")))
                .collect();
            [
                format!("{}:{}", r.backend, r.port_id),
                r.sbdf.clone().unwrap_or_default(),
                r.description.clone(),
                used.join("; "),
            ]
        })
        .collect();
    let header = [
        "BACKEND:DEVID".to_owned(),
        "SBDF".to_owned(),
        "DESCRIPTION".to_owned(),
        "USED BY".to_owned(),
    ];
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            std::iter::once(&header)
                .chain(&table)
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&table) {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}
