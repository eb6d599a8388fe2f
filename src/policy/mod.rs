//! The qrexec policy language (`/etc/qubes/policy.d`), checked on every
//! call that does not come from dom0. Fail closed: a policy that does not
//! load denies everything.

pub mod eval;
pub mod index;
pub mod parser;
pub mod targets;
pub mod token;

use std::sync::Arc;

use qubes_pci_rpc::{Method, QubeName, Request, Target};
use serde_json::json;

pub use eval::{Allow, Ask, Denied, PolicyRequest, Resolution};
pub use parser::{Policy, PolicyError};

use crate::error::ApiError;
pub use crate::sysinfo::SystemInfo as System;

/// Lets a call proceed or denies it. Calls from dom0 do not go through
/// qrexec (as with qubesd). Any other call must be allowed (or asked, since
/// qrexec has already asked the user) with dom0 as the resolved target:
/// admin rules need `target=dom0`, otherwise qrexec would run the call in
/// the managed qube, not here.
///
/// qrexec matched the argument as spelled, but one device has several
/// spellings (port only, port + device id, with or without the segment).
/// A deny rule on any of them holds for every one: `spellings` are the
/// other spellings of the device the call names (the canonical one, the
/// port alone, the port with the id of the device present there or
/// stored), and a rule that denies any of them denies the call.
pub fn check(
    policy: impl Fn() -> Result<Arc<Policy>, String>,
    system: &System,
    req: &Request,
    spellings: &[String],
) -> Result<(), ApiError> {
    if req.source.is_dom0() {
        return Ok(());
    }
    let service = req.method.to_string();
    let deny = |arg: &str, why: String| {
        tracing::warn!(method = %req.method, source = %req.source, target = %req.target, arg, "policy denied: {why}");
        ApiError::PermissionDenied {
            message: format!(
                "{} from {} to {} is denied by dom0's qrexec policy; nothing was changed. A dom0 administrator \
                 can allow it in the policy",
                req.method, req.source, req.target
            ),
            skippable: skippable(&policy, system, req),
        }
    };
    let raw = req.untrusted_arg.as_str();
    check_service(&policy, system, &req.source, &req.target, &service, raw, true).map_err(|why| deny(raw, why))?;
    for other in spellings.iter().filter(|s| s.as_str() != raw) {
        if let Some(why) = denied_by_rule(&policy, system, &req.source, &req.target, &service, other) {
            return Err(deny(other, format!("{why} (another spelling of {raw})")));
        }
    }
    Ok(())
}

/// Whether a refusal of `req` is one a stock `qvm-pci list` may skip: a
/// read of a qube other than dom0, or a read of dom0 other than
/// `Available` by a caller that may call `Available` of dom0 (the stock
/// client asks `Attached` of dom0 first and skips dom0 altogether when
/// that fails). A refused `Available` of dom0 is not: the caller must
/// learn it has no access, not that dom0 has no devices.
fn skippable(policy: impl Fn() -> Result<Arc<Policy>, String>, system: &System, req: &Request) -> bool {
    if !req.method.is_read_only() {
        return false;
    }
    if !req.target.is_dom0() {
        return true;
    }
    req.method != Method::Available
        && check_service(
            &policy,
            system,
            &req.source,
            &req.target,
            &Method::Available.to_string(),
            "",
            true,
        )
        .is_ok()
}

/// Why a rule denies `service+arg` from `source` to `target`, if one does
/// (a call that matches no rule is not denied by a rule).
fn denied_by_rule(
    policy: impl FnOnce() -> Result<Arc<Policy>, String>,
    system: &System,
    source: &QubeName,
    target: &Target,
    service: &str,
    arg: &str,
) -> Option<String> {
    let policy = match policy() {
        Ok(p) => p,
        Err(e) => return Some(format!("the policy does not load: {e}")),
    };
    let service_and_arg = format!("{service}+{arg}");
    let preq = PolicyRequest::new(&service_and_arg, source.as_str(), &target.to_string(), None, system).ok()?;
    match policy.evaluate(&preq, system) {
        Err(d) if d.rule.is_some() => Some(format!("{} ({})", d.message, d.rule.unwrap_or_default())),
        _ => None,
    }
}

/// `FILE:LINE: warning: …` for every rule of a PCI method whose argument
/// is not the canonical spelling of a device (calls are checked on their
/// canonical spelling too, so such a rule is dodged by that spelling), and
/// for every allow or ask rule that names a device by one spelling only:
/// a deny holds for every spelling of the device, an allow only for the
/// spelling it names, so a call spelling the device the other way (port
/// only, or port and device id) is not allowed by it.
pub fn argument_warnings(policy: &Policy) -> Vec<String> {
    let names = |service: &Option<token::Name>, arg: &str| {
        policy
            .rules
            .iter()
            .any(|r| r.service == *service && r.argument.as_deref().is_some_and(|a| a.starts_with(arg)))
    };
    policy
        .rules
        .iter()
        .filter_map(|r| {
            let method = Method::parse(r.service.as_deref()?).ok()?;
            let arg = r.argument.as_deref()?.strip_prefix('+')?;
            let canonical = method.canonical_arg(arg);
            let fix = match canonical.as_deref() {
                Some(c) if c == arg => {
                    let dev = qubes_pci_rpc::DeviceRef::from_qarg(arg).ok()?;
                    let port = dev.port.as_option()?;
                    if matches!(*r.action, parser::Action::Deny { .. }) {
                        return None;
                    }
                    let (other, named) = match dev.device_id {
                        qubes_pci_rpc::Wild::Any => (
                            "with its device id".to_owned(),
                            names(&r.service, &format!("+dom0+{port}+0x")),
                        ),
                        qubes_pci_rpc::Wild::Is(_) => {
                            let port_only = format!("+dom0+{port}+_");
                            let named = names(&r.service, &port_only);
                            (format!("as {port_only}"), named)
                        }
                    };
                    if named {
                        return None;
                    }
                    format!(
                        "it names dom0:{port} by one spelling, so a call naming the device {other} is not {} by \
                         it (a deny holds for every spelling, an {} only for its own): add a rule for that \
                         spelling too, or use *",
                        if matches!(*r.action, parser::Action::Ask { .. }) {
                            "asked"
                        } else {
                            "allowed"
                        },
                        r.action.name()
                    )
                }
                Some(c) => format!("write it as +{c}, the spelling every call is also checked on"),
                None => "it names no device, so it matches no call the service accepts".to_owned(),
            };
            Some(format!("{}: warning: {} +{arg}: {fix}", r.location(), method))
        })
        .collect()
}

/// The closest of `names` to `wrong` (for "did you mean …?"), when close.
fn closest<'a>(wrong: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row.first().copied().unwrap_or(0);
            if let Some(first) = row.first_mut() {
                *first = i + 1;
            }
            for (j, cb) in b.iter().enumerate() {
                let above = row.get(j + 1).copied().unwrap_or(0);
                let left = row.get(j).copied().unwrap_or(0);
                let next = (prev + usize::from(ca != *cb)).min(above + 1).min(left + 1);
                prev = above;
                if let Some(slot) = row.get_mut(j + 1) {
                    *slot = next;
                }
            }
        }
        row.last().copied().unwrap_or(0)
    }
    names
        .map(|n| (distance(wrong, n), n))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

/// The services of this project: the eight methods and the option grants.
fn known_services() -> impl Iterator<Item = String> {
    Method::ALL
        .into_iter()
        .map(|m| m.to_string())
        .chain(std::iter::once(crate::rules::OPTION_SERVICE.to_owned()))
}

/// Whether `service` names a PCI service of this project that does not
/// exist, and the one it likely means.
pub fn unknown_pci_service(service: &str) -> Option<Option<String>> {
    if !service.starts_with(qubes_pci_rpc::method::PREFIX) || known_services().any(|k| k == service) {
        return None;
    }
    let known: Vec<String> = known_services().collect();
    Some(closest(service, known.iter().map(String::as_str)).map(str::to_owned))
}

/// `FILE:LINE: warning: …` for mistakes the policy language accepts: a
/// PCI service that does not exist (a misspelt method), an `allow` of an
/// Admin API call to another qube without `target=dom0` (qrexec would run
/// it in that qube, not in dom0), and an empty policy.
pub fn rule_warnings(policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    for r in &policy.rules {
        let Some(service) = r.service.as_deref() else { continue };
        if let Some(meant) = unknown_pci_service(service) {
            let hint = meant.map_or_else(String::new, |m| format!(" (did you mean {m}?)"));
            out.push(format!(
                "{}: warning: {service} is not a method of qubes-pci-admin{hint}: the rule matches no call",
                r.location()
            ));
        }
        let admin = service.starts_with("admin.");
        let to_dom0 = matches!(r.target.to_string().as_str(), "@adminvm" | "dom0");
        if let (true, false, parser::Action::Allow { target: None, .. }) = (admin, to_dom0, &*r.action) {
            out.push(format!(
                "{}: warning: this allow of {service} has no target=dom0, so qrexec runs the call in the \
                 requested qube ({}), not in dom0 where the Admin API is: add target=dom0",
                r.location(),
                r.target
            ));
        }
    }
    if policy.rules.is_empty() {
        out.push("warning: the policy has no rule at all, so qrexec denies every call".to_owned());
    }
    out
}

/// Files in the policy directories that qrexec ignores for their name (it
/// reads only `NAME.policy`): `FILE: warning: …`.
pub fn ignored_files(dirs: &[std::path::PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut names: Vec<(String, bool)> = entries
            .flatten()
            .map(|e| {
                let file = e.file_type().is_ok_and(|t| t.is_file());
                (e.file_name().to_string_lossy().into_owned(), file)
            })
            .collect();
        names.sort();
        for (name, file) in names {
            if file && !name.ends_with(".policy") && !name.starts_with('.') && !name.ends_with('~') {
                out.push(format!(
                    "{}: warning: ignored: qrexec reads only files named NAME.policy",
                    dir.join(&name).display()
                ));
            }
        }
    }
    out
}

/// Whether the policy lets `source` call `service+arg` with `target`,
/// resolved to dom0. Calls from dom0 are always allowed. An `ask` counts
/// only when `asked` says qrexec has already asked the user about this very
/// call. `Err` says why not (for the log; callers choose what the caller
/// is told).
pub fn check_service(
    policy: impl FnOnce() -> Result<Arc<Policy>, String>,
    system: &System,
    source: &QubeName,
    target: &Target,
    service: &str,
    untrusted_arg: &str,
    asked: bool,
) -> Result<(), String> {
    if source.is_dom0() {
        return Ok(());
    }
    let policy =
        policy().map_err(|e| format!("the policy does not load, so every call is denied until it is fixed: {e}"))?;
    let service_and_arg = format!("{service}+{untrusted_arg}");
    let preq = PolicyRequest::new(&service_and_arg, source.as_str(), &target.to_string(), None, system)
        .map_err(|d| d.message)?;
    match policy.evaluate(&preq, system) {
        Ok(Resolution::Allow(a)) if token::is_dom0(&a.target) => {
            tracing::debug!(service, rule = a.rule, "policy allowed");
            Ok(())
        }
        Ok(Resolution::Ask(a)) if asked && a.targets.contains("dom0") => {
            tracing::debug!(service, rule = a.rule, "policy asked, dom0 among the targets");
            Ok(())
        }
        Ok(Resolution::Allow(a)) => Err(format!("rule {} redirects to {}, not dom0", a.rule, a.target)),
        Ok(Resolution::Ask(a)) if asked => Err(format!("rule {} asks, but dom0 is not among the targets", a.rule)),
        Ok(Resolution::Ask(a)) => Err(format!(
            "rule {} asks, but nobody can be asked about {service}: it needs an allow rule",
            a.rule
        )),
        Err(d) => Err(format!("{} ({})", d.message, d.rule.as_deref().unwrap_or("no rule"))),
    }
}

/// `policy eval --json`'s object for one evaluation: every key always
/// present (null when it does not apply), in sorted order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EvaluationJson<'a> {
    pub autostart: Option<bool>,
    pub default_target: Option<&'a str>,
    /// Why the call is denied (for a deny, or an allow qrexec could not run).
    pub error: Option<String>,
    pub notify: bool,
    pub requested_target: Option<&'a str>,
    /// `allow`, `ask` or `deny`.
    pub result: &'static str,
    /// `FILE:LINE` of the deciding rule.
    pub rule: Option<&'a str>,
    pub target: Option<&'a str>,
    pub targets_for_ask: Option<&'a std::collections::BTreeSet<String>>,
    pub user: Option<&'a str>,
}

/// The result of `policy eval`: one evaluation with everything it decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub request: Option<PolicyRequest>,
    pub outcome: Result<Resolution, Denied>,
}

impl Evaluation {
    pub fn run(
        policy: &Result<Policy, PolicyError>,
        system: &System,
        source: &str,
        target: &str,
        service_and_arg: &str,
    ) -> Evaluation {
        let request = PolicyRequest::new(service_and_arg, source, target, None, system);
        let outcome = match (&request, policy) {
            (Err(d), _) => Err(d.clone()),
            (_, Err(e)) => Err(Denied {
                message: format!("invalid policy: {e}"),
                notify: false,
                rule: None,
            }),
            (Ok(r), Ok(p)) => p.evaluate(r, system),
        };
        Evaluation {
            request: request.ok(),
            outcome,
        }
    }

    /// 0 allow, 1 deny (an allow that qrexec could not execute, such as a
    /// loopback, is a deny), 3 ask.
    pub fn exit_code(&self, system: &System) -> u8 {
        match (&self.outcome, &self.request) {
            (Ok(Resolution::Allow(a)), Some(r)) if a.execute(r, &r.target, system).is_ok() => 0,
            (Ok(Resolution::Ask(_)), _) => 3,
            _ => 1,
        }
    }

    /// The `--json` object of `policy eval` (keys in sorted order).
    pub fn to_json(&self, system: &System) -> EvaluationJson<'_> {
        let requested_target = self.request.as_ref().map(|r| r.target.as_str());
        let none = EvaluationJson {
            autostart: None,
            default_target: None,
            error: None,
            notify: false,
            requested_target,
            result: "deny",
            rule: None,
            target: None,
            targets_for_ask: None,
            user: None,
        };
        match &self.outcome {
            Ok(Resolution::Allow(a)) => {
                let error = self
                    .request
                    .as_ref()
                    .and_then(|r| a.execute(r, &r.target, system).err())
                    .map(|d| d.message);
                EvaluationJson {
                    autostart: Some(a.autostart),
                    result: if error.is_some() { "deny" } else { "allow" },
                    error,
                    notify: a.notify,
                    rule: Some(&a.rule),
                    target: Some(&a.target),
                    user: a.user.as_deref(),
                    ..none
                }
            }
            Ok(Resolution::Ask(a)) => EvaluationJson {
                autostart: Some(a.autostart),
                default_target: a.default_target.as_deref(),
                notify: a.notify,
                result: "ask",
                rule: Some(&a.rule),
                targets_for_ask: Some(&a.targets),
                user: a.user.as_deref(),
                ..none
            },
            Err(d) => EvaluationJson {
                error: Some(d.message.clone()),
                notify: d.notify,
                rule: d.rule.as_deref(),
                ..none
            },
        }
    }

    /// The `key=value` lines qrexec-policy-exec prints; for an ask (which
    /// would prompt) `result=ask` with the choices.
    pub fn to_lines(&self, system: &System) -> String {
        match (&self.outcome, &self.request) {
            (Ok(Resolution::Allow(a)), Some(r)) => a
                .execute(r, &r.target, system)
                .unwrap_or_else(|_| "result=deny".to_owned()),
            (Ok(Resolution::Ask(a)), _) => {
                let targets: Vec<&str> = a.targets.iter().map(String::as_str).collect();
                format!(
                    "result=ask\ntargets_for_ask={}\ndefault_target={}",
                    targets.join(" "),
                    a.default_target.as_deref().unwrap_or("")
                )
            }
            _ => "result=deny".to_owned(),
        }
    }
}

/// Where `policy.Ask` and `policy.Notify` go: the source's GUI qube.
pub trait Agent {
    /// Calls `service` in `guivm` with JSON `params`; the answer, or an
    /// error when the call failed.
    fn call(&mut self, guivm: &str, service: &str, params: serde_json::Value) -> Result<String, String>;
}

/// Options of `qrexec-policy-exec`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecOptions {
    pub just_evaluate: bool,
    pub assume_yes_for_ask: bool,
}

/// qrexec-policy-exec's `handle_request`: evaluates, asks the user through
/// the agent, notifies, and returns the result lines.
pub fn handle_request(
    policy: &Result<Policy, PolicyError>,
    system: &System,
    source: &str,
    target: &str,
    service_and_arg: &str,
    opts: ExecOptions,
    agent: &mut dyn Agent,
) -> String {
    let guivm = system.get(source).and_then(|(_, d)| d.guivm.clone());
    let req = PolicyRequest::new(service_and_arg, source, target, None, system);
    let (service, argument) = match &req {
        Ok(r) => (r.service.clone(), r.argument.clone()),
        Err(_) => {
            let (s, a) = service_and_arg.split_once('+').unwrap_or((service_and_arg, ""));
            (s.to_owned(), format!("+{a}"))
        }
    };
    let mut notify = |agent: &mut dyn Agent, resolution: &str, t: &str| {
        if let Some(g) = &guivm {
            let params = json!({"resolution": resolution, "service": service, "source": source, "argument": argument, "target": t});
            let _ = agent.call(g, "policy.Notify", params);
        }
    };
    let denied = |agent: &mut dyn Agent, d: &Denied, notify: &mut dyn FnMut(&mut dyn Agent, &str, &str)| {
        if d.notify && !opts.just_evaluate {
            notify(agent, "deny", target);
        }
        "result=deny".to_owned()
    };
    let (req, policy) = match (req, policy) {
        (Err(d), _) => return denied(agent, &d, &mut notify),
        (_, Err(e)) => {
            tracing::error!("invalid policy, denying: {e}");
            return "result=deny".to_owned();
        }
        (Ok(r), Ok(p)) => (r, p),
    };
    let allowed = |agent: &mut dyn Agent, a: &Allow, notify: &mut dyn FnMut(&mut dyn Agent, &str, &str)| {
        if opts.just_evaluate {
            return "result=allow".to_owned();
        }
        match a.execute(&req, &req.target, system) {
            Ok(out) => {
                if a.notify {
                    notify(agent, "allow", &a.target);
                }
                out
            }
            Err(d) => {
                if d.notify {
                    notify(agent, "deny", target);
                }
                "result=deny".to_owned()
            }
        }
    };
    match policy.evaluate(&req, system) {
        Err(d) => denied(agent, &d, &mut notify),
        Ok(Resolution::Allow(a)) => allowed(agent, &a, &mut notify),
        Ok(Resolution::Ask(ask)) => {
            let answer = if opts.assume_yes_for_ask {
                ask.answer(true, &req.target)
            } else if opts.just_evaluate {
                return "result=deny".to_owned();
            } else {
                let Some(g) = guivm.clone() else {
                    return "result=deny".to_owned();
                };
                let mut icons = serde_json::Map::new();
                for (name, d) in &system.domains {
                    let icon = d.icon.clone().unwrap_or_default();
                    if d.template_for_dispvms == Some(true) {
                        icons.insert(format!("@dispvm:{name}"), json!(icon.replace("app", "disp")));
                    }
                    icons.insert(name.clone(), json!(icon));
                }
                let params = json!({"source": source, "service": req.service, "argument": req.argument,
                    "targets": ask.targets, "default_target": ask.default_target.clone().unwrap_or_default(), "icons": icons});
                match agent.call(&g, "policy.Ask", params) {
                    Ok(resp) if resp == "deny" => ask.answer(false, ""),
                    Ok(resp) => match resp.strip_prefix("allow:") {
                        Some(t) => ask.answer(true, t),
                        None => Err(Denied {
                            message: "invalid answer from the agent".to_owned(),
                            notify: true,
                            rule: None,
                        }),
                    },
                    Err(e) => Err(Denied {
                        message: format!("asking the user failed: {e}"),
                        notify: true,
                        rule: None,
                    }),
                }
            };
            match answer {
                Ok(a) => allowed(agent, &a, &mut notify),
                Err(d) => denied(agent, &d, &mut notify),
            }
        }
    }
}
