//! Evaluating a request against the flattened policy: normalisation, first
//! match, redirects, `@dispvm` resolution, ask target collection, and the
//! `key=value` result qrexec reads.

use std::collections::BTreeSet;

use super::parser::{Action, Policy, Rule};
use super::targets::{Mask, Universe};
use super::token::{default_dispvm, is_dom0, match_strings, Ctx, Subject, Token};
use super::System;

/// Why a call is denied; `notify` says whether the GUI would be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub message: String,
    pub notify: bool,
    /// `FILE:LINE` of the deciding rule, when a rule decided.
    pub rule: Option<String>,
}

impl Denied {
    fn new(message: impl Into<String>) -> Denied {
        Denied {
            message: message.into(),
            notify: true,
            rule: None,
        }
    }
}

/// A request as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRequest {
    pub service: String,
    /// Starts with `+`.
    pub argument: String,
    pub source: String,
    /// The normalized target (`@default` for unknown qubes).
    pub target: String,
    /// The original source when relayed (Qubes Air), else `None`.
    pub relayvm: Option<String>,
}

impl PolicyRequest {
    /// Builds and normalizes a request. `service_and_arg` is split at the
    /// first `+`; no `+` means the empty argument `+`.
    pub fn new(
        service_and_arg: &str,
        source: &str,
        target: &str,
        requested_source: Option<&str>,
        system: &System,
    ) -> Result<PolicyRequest, Denied> {
        let (service, argument) = match service_and_arg.split_once('+') {
            Some((s, a)) => (s.to_owned(), format!("+{a}")),
            None => (service_and_arg.to_owned(), "+".to_owned()),
        };
        let target = verify_target(if target.is_empty() { "@default" } else { target }, system)?;
        let (source, relayvm) = match requested_source {
            None => (source.to_owned(), None),
            Some(rs) => {
                let Some((_, entry)) = system.get(rs) else {
                    return Err(Denied::new(
                        format!("unknown requested source qube {rs:?}").replace('"', "'"),
                    ));
                };
                if entry.klass.as_deref() != Some("RemoteVM") {
                    return Err(Denied::new(format!("requested source qube '{rs}' is not a RemoteVM")));
                }
                if entry.relayvm.as_deref() != Some(source) {
                    return Err(Denied::new(format!(
                        "requested source qube '{rs}' is not relayed by '{source}'"
                    )));
                }
                (rs.to_owned(), Some(source.to_owned()))
            }
        };
        Ok(PolicyRequest {
            service,
            argument,
            source,
            target,
            relayvm,
        })
    }
}

/// Parses and verifies an intended target: unknown names become
/// `@default`; `@dispvm:X` needs X to be a DispVM template.
pub fn verify_target(target: &str, system: &System) -> Result<String, Denied> {
    let tok = Token::parse(target, Ctx::Intended).map_err(Denied::new)?;
    Ok(match tok {
        Token::Literal(l) => {
            if system.get(&l).is_some() {
                l.to_string()
            } else {
                tracing::debug!(target = &*l, "policy: unknown target, using @default");
                "@default".to_owned()
            }
        }
        Token::DispVmTemplate(x) => {
            if system
                .get(&x)
                .is_some_and(|(_, d)| d.template_for_dispvms == Some(true))
            {
                format!("@dispvm:{x}")
            } else {
                return Err(Denied::new(format!("not a template for dispvm: {x}")));
            }
        }
        other => other.to_string(),
    })
}

/// The outcome of an evaluation that was not a deny.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Allow(Allow),
    Ask(Ask),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    pub target: String,
    pub user: Option<String>,
    pub autostart: bool,
    pub notify: bool,
    pub rule: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub targets: BTreeSet<String>,
    pub default_target: Option<String>,
    pub user: Option<String>,
    pub autostart: bool,
    pub notify: bool,
    pub rule: String,
}

fn rule_matches_but_target(rule: &Rule, req: &PolicyRequest, source: &Subject, system: &System) -> bool {
    rule.service.as_deref().is_none_or(|s| s == req.service)
        && rule.argument.as_deref().is_none_or(|a| a == req.argument)
        && rule.source.matches_source_subject(source, system)
}

/// `autostart=no`: the target must be dom0 or already running.
fn running_or_dom0(target: &str, system: &System) -> bool {
    if is_dom0(target) {
        return true;
    }
    !target.starts_with("@dispvm")
        && system
            .get(target)
            .is_some_and(|(_, d)| d.power_state.as_deref() == Some("Running"))
}

impl Policy {
    /// The rules that can match the request's service and argument, in
    /// policy order (from the index: no other rule is looked at).
    /// The index of the first rule matching the request.
    pub fn find_rule(&self, req: &PolicyRequest, system: &System) -> Option<usize> {
        let source = Subject::new(&req.source, system);
        let target = Subject::new(&req.target, system);
        self.index.candidates(&req.service, &req.argument, &source).find(|&i| {
            self.rules.get(i).is_some_and(|r| {
                rule_matches_but_target(r, req, &source, system) && r.target.matches_subject(&target, system, &source)
            })
        })
    }

    pub fn evaluate(&self, req: &PolicyRequest, system: &System) -> Result<Resolution, Denied> {
        let rule = self
            .find_rule(req, system)
            .and_then(|i| self.rules.get(i))
            .ok_or(Denied {
                message: "no matching rule found".to_owned(),
                notify: true,
                rule: None,
            })?;
        let loc = rule.location();
        let deny = |message: String, notify: bool| Denied {
            message,
            notify,
            rule: Some(loc.clone()),
        };
        match &*rule.action {
            Action::Deny { notify } => Err(deny(format!("denied by policy {loc}"), *notify)),
            Action::Allow {
                target,
                user,
                notify,
                autostart,
            } => {
                let effective = match target {
                    Some(t) => verify_target(&t.to_string(), system).map_err(|d| deny(d.message, *notify))?,
                    None => req.target.clone(),
                };
                let target = match effective.as_str() {
                    "@default" => {
                        return Err(deny(
                            format!("policy {loc} allows, but no target is specified by caller or policy"),
                            *notify,
                        ))
                    }
                    "@dispvm" => match default_dispvm(system, &req.source) {
                        Some(d) => format!("@dispvm:{d}"),
                        None => {
                            return Err(deny(
                                format!("policy {loc}: source {} has no default DispVM", req.source),
                                *notify,
                            ))
                        }
                    },
                    "@adminvm" => "dom0".to_owned(),
                    other => other.to_owned(),
                };
                if !autostart && !running_or_dom0(&target, system) {
                    return Err(deny(
                        format!("policy {loc}: autostart=no and {target} is not running"),
                        *notify,
                    ));
                }
                Ok(Resolution::Allow(Allow {
                    target,
                    user: user.clone(),
                    autostart: *autostart,
                    notify: *notify,
                    rule: loc,
                }))
            }
            Action::Ask {
                target,
                default_target,
                user,
                notify,
                autostart,
            } => {
                let mut targets: BTreeSet<String> = match target {
                    Some(t) if is_dom0(&t.to_string()) => ["dom0".to_owned()].into(),
                    Some(t) => [t.to_string()].into(),
                    None => self.collect_targets_for_ask(req, system),
                };
                if !autostart {
                    targets.retain(|t| running_or_dom0(t, system));
                }
                if targets.is_empty() {
                    return Err(deny(
                        format!("policy {loc} asks, but no target is available to choose from"),
                        *notify,
                    ));
                }
                let default_target = default_target.as_ref().and_then(|d| {
                    let d = match d.to_string() {
                        s if s == "@dispvm" => default_dispvm(system, &req.source).map(|x| format!("@dispvm:{x}"))?,
                        s if is_dom0(&s) => "dom0".to_owned(),
                        s => s,
                    };
                    if targets.contains(&d) {
                        Some(d)
                    } else {
                        tracing::warn!(rule = %loc, default_target = d, "policy: default_target is not among the targets");
                        None
                    }
                });
                Ok(Resolution::Ask(Ask {
                    targets,
                    default_target,
                    user: user.clone(),
                    autostart: *autostart,
                    notify: *notify,
                    rule: loc,
                }))
            }
        }
    }

    /// The targets an `ask` offers: the whole policy, walked from the end;
    /// a deny removes what its target stands for, allow and ask add it.
    pub fn collect_targets_for_ask(&self, req: &PolicyRequest, system: &System) -> BTreeSet<String> {
        let mut universe = Universe::new(system);
        let mut set = Mask::default();
        let source = Subject::new(&req.source, system);
        let numbers: Vec<usize> = self.index.candidates(&req.service, &req.argument, &source).collect();
        let tokens = self.index.tokens(&self.rules);
        for &i in numbers.iter().rev() {
            let Some(rule) = self.rules.get(i) else { continue };
            if !rule_matches_but_target(rule, req, &source, system) {
                continue;
            }
            let Some((id, token)) = self
                .index
                .ask_token(&self.rules, i)
                .and_then(|id| Some((id, tokens.get(id)?)))
            else {
                continue;
            };
            let expanded = universe.mask_numbered(id, token);
            match *rule.action {
                Action::Deny { .. } => set.remove(expanded),
                _ => set.add(expanded),
            }
        }
        let default = default_dispvm(system, &req.source);
        universe
            .names(&set)
            .into_iter()
            .filter_map(|t| match t.as_str() {
                "@dispvm" => default.as_ref().map(|d| format!("@dispvm:{d}")),
                "@adminvm" => Some("dom0".to_owned()),
                _ => Some(t),
            })
            .filter(|t| !match_strings(t, &req.source, system))
            .filter(|t| {
                let q = t.strip_prefix("@dispvm:").unwrap_or(t);
                system.get(q).is_none_or(|(_, d)| d.internal != Some(true))
            })
            .collect()
    }
}

impl Ask {
    /// The user's answer to an ask prompt.
    pub fn answer(&self, allow: bool, target: &str) -> Result<Allow, Denied> {
        if !allow {
            return Err(Denied {
                message: "denied by the user".to_owned(),
                notify: self.notify,
                rule: Some(self.rule.clone()),
            });
        }
        if !self.targets.contains(target) {
            return Err(Denied {
                message: format!("target {target:?} is not among the offered targets"),
                notify: true,
                rule: Some(self.rule.clone()),
            });
        }
        Ok(Allow {
            target: target.to_owned(),
            user: self.user.clone(),
            autostart: self.autostart,
            notify: self.notify,
            rule: self.rule.clone(),
        })
    }
}

impl Allow {
    /// The `key=value` lines qrexec-policy-exec returns for an allow.
    pub fn execute(&self, req: &PolicyRequest, requested_target: &str, system: &System) -> Result<String, Denied> {
        let fail = |m: String| Denied {
            message: m,
            notify: true,
            rule: Some(self.rule.clone()),
        };
        if req.source == self.target {
            return Err(fail("loopback qrexec connection not supported".to_owned()));
        }
        let autostart = if self.autostart { "True" } else { "False" };
        let user = self.user.as_deref().unwrap_or("DEFAULT");
        let policy_source = req
            .relayvm
            .as_ref()
            .map(|_| format!("\npolicy_source={}", req.source))
            .unwrap_or_default();
        if is_dom0(&self.target) {
            return Ok(format!(
                "user={user}\nresult=allow\ntarget=dom0\nautostart={autostart}\nrequested_target={requested_target}"
            ));
        }
        if let Some(x) = self.target.strip_prefix("@dispvm:") {
            let uuid = system
                .get(x)
                .and_then(|(_, d)| d.uuid.clone())
                .ok_or_else(|| fail(format!("unknown DispVM template {x}")))?;
            return Ok(format!(
                "user={user}\nresult=allow\ntarget={}\ntarget_uuid=@dispvm:uuid:{uuid}\nautostart={autostart}\nrequested_target={requested_target}{policy_source}",
                self.target
            ));
        }
        let (_, entry) = system
            .get(&self.target)
            .ok_or_else(|| fail(format!("unknown target {}", self.target)))?;
        if entry.klass.as_deref() == Some("RemoteVM") {
            let relay = entry
                .relayvm
                .as_deref()
                .ok_or_else(|| fail(format!("{}: relay VM is not set", self.target)))?;
            let transport = entry
                .transport_rpc
                .as_deref()
                .ok_or_else(|| fail(format!("{}: transport RPC is not set", self.target)))?;
            let relay_uuid = system.get(relay).and_then(|(_, d)| d.uuid.clone()).unwrap_or_default();
            return Ok(format!(
                "user=DEFAULT\nresult=allow\ntarget={relay}\ntarget_uuid=uuid:{relay_uuid}\nautostart={autostart}\nrequested_target={requested_target}\nservice={transport}+{}+{}{}{policy_source}",
                self.target, req.service, req.argument
            ));
        }
        let uuid = entry.uuid.clone().unwrap_or_default();
        Ok(format!(
            "user={user}\nresult=allow\ntarget={}\ntarget_uuid=uuid:{uuid}\nautostart={autostart}\nrequested_target={requested_target}{policy_source}",
            self.target
        ))
    }
}
