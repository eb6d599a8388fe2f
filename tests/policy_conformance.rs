#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Runs every case of `tests/data/conformance/policy-cases-public.json`
//! (categories token … policy_exec; daemon_protocol is reference only)
//! through the public policy API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use qubes_pci_admin::policy::parser::{Action, MemFs, Policy, PolicyError};
use qubes_pci_admin::policy::token::{Ctx, Token};
use qubes_pci_admin::policy::{eval, handle_request, Agent, ExecOptions, PolicyRequest, Resolution, System};
use serde_json::Value;

const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/conformance/policy-cases-public.json"
);

fn system_of(case: &Value) -> System {
    let domains = case.get("system").cloned().unwrap_or_else(|| serde_json::json!({}));
    serde_json::from_value(serde_json::json!({ "domains": domains })).unwrap()
}

fn load_policy(case: &Value) -> Result<Policy, PolicyError> {
    let mut fs = MemFs::default();
    match &case["policy"] {
        Value::String(s) => {
            fs.files.insert("__main__".into(), s.clone());
        }
        Value::Object(o) => {
            for (k, v) in o["files"].as_object().unwrap() {
                fs.files.insert(k.clone(), v.as_str().unwrap().to_owned());
            }
            if let Some(c) = o.get("compat_files").and_then(Value::as_object) {
                for (k, v) in c {
                    fs.files.insert(format!("compat/{k}"), v.as_str().unwrap().to_owned());
                }
            }
        }
        Value::Null => {}
        other => panic!("unexpected policy {other}"),
    }
    Policy::load_entry(&fs, Path::new("__main__"), Path::new("compat"))
}

fn ctx_of(s: &str) -> Ctx {
    match s {
        "source" => Ctx::Source,
        "target" => Ctx::Target,
        "redirect" => Ctx::Redirect,
        "intended_target" => Ctx::Intended,
        other => panic!("context {other}"),
    }
}

fn set_of(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

fn query_request(q: &Value, system: &System) -> Result<PolicyRequest, eval::Denied> {
    let service_and_arg = format!("{}{}", q["service"].as_str().unwrap(), q["argument"].as_str().unwrap());
    PolicyRequest::new(
        &service_and_arg,
        q["source"].as_str().unwrap(),
        q["target"].as_str().unwrap(),
        q.get("requested_source").and_then(Value::as_str),
        system,
    )
}

fn check_rule(rule: &qubes_pci_admin::policy::parser::Rule, want: &Value) -> Result<(), String> {
    let w = want.as_object().unwrap();
    let opt_str = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
    let tok = |t: Option<&Token>| t.map_or(Value::Null, |t| Value::String(t.to_string()));
    for (k, v) in w {
        let got = match k.as_str() {
            "service" => Value::String(rule.service.as_deref().unwrap_or("*").into()),
            "argument" => Value::String(rule.argument.as_deref().unwrap_or("*").into()),
            "source" => Value::String(rule.source.to_string()),
            "target" => Value::String(rule.target.to_string()),
            "action" => Value::String(rule.action.name().into()),
            "file" => Value::String(rule.file.to_string()),
            "lineno" => Value::from(rule.lineno),
            "params" => {
                for (pk, pv) in v.as_object().unwrap() {
                    let got = match (&*rule.action, pk.as_str()) {
                        (Action::Allow { target, .. } | Action::Ask { target, .. }, "target") => tok(target.as_ref()),
                        (Action::Ask { default_target, .. }, "default_target") => tok(default_target.as_ref()),
                        (Action::Allow { user, .. } | Action::Ask { user, .. }, "user") => opt_str(user),
                        (a, "notify") => Value::Bool(a.notify()),
                        (Action::Allow { autostart, .. } | Action::Ask { autostart, .. }, "autostart") => {
                            Value::Bool(*autostart)
                        }
                        _ => Value::Null,
                    };
                    if &got != pv {
                        return Err(format!("param {pk}: got {got}, want {pv}"));
                    }
                }
                continue;
            }
            other => return Err(format!("unknown rule key {other}")),
        };
        if &got != v {
            return Err(format!("{k}: got {got}, want {v}"));
        }
    }
    Ok(())
}

struct MockAgent {
    response: Value,
    calls: Vec<Value>,
}

impl Agent for MockAgent {
    fn call(&mut self, guivm: &str, service: &str, params: Value) -> Result<String, String> {
        self.calls
            .push(serde_json::json!({"guivm": guivm, "service": service, "source_domain": "dom0", "params": params}));
        match &self.response {
            Value::String(s) if service == "policy.Ask" => Ok(s.clone()),
            Value::Object(o) if o.contains_key("raise") && service == "policy.Ask" => Err(o["raise"].to_string()),
            _ => Ok(String::new()),
        }
    }
}

/// Compares agent calls, the `targets` of policy.Ask as a set.
fn normalize_calls(calls: &[Value]) -> Vec<Value> {
    calls
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(t) = c["params"].get_mut("targets") {
                let mut v: Vec<String> = t
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_owned())
                    .collect();
                v.sort();
                *t = serde_json::json!(v);
            }
            c
        })
        .collect()
}

fn check_evaluation(
    case: &Value,
    expect: &Value,
    policy: &Result<Policy, PolicyError>,
    system: &System,
) -> Result<(), String> {
    let policy = policy.as_ref().map_err(|e| format!("policy failed to load: {e}"))?;
    let q = &case["query"];
    let req = match query_request(q, system) {
        Ok(r) => r,
        Err(d) => {
            return if expect["result"] == "deny" {
                Ok(())
            } else {
                Err(format!("request refused: {}", d.message))
            };
        }
    };
    let outcome = policy.evaluate(&req, system);
    let result = match &outcome {
        Ok(Resolution::Allow(_)) => "allow",
        Ok(Resolution::Ask(_)) => "ask",
        Err(_) => "deny",
    };
    if expect["result"] != result {
        return Err(format!("result {result} ({outcome:?}), want {}", expect["result"]));
    }
    if let Some(m) = expect.get("matched_rule") {
        let got = policy.find_rule(&req, system).map_or(Value::Null, Value::from);
        if &got != m {
            return Err(format!("matched_rule {got}, want {m}"));
        }
    }
    if let Some(rt) = expect.get("requested_target") {
        if rt != &Value::String(req.target.clone()) {
            return Err(format!("requested_target {}, want {rt}", req.target));
        }
    }
    match &outcome {
        Ok(Resolution::Allow(a)) => {
            if let Some(t) = expect.get("target") {
                if t != &Value::String(a.target.clone()) {
                    return Err(format!("target {}, want {t}", a.target));
                }
            }
            if let Some(u) = expect.get("user") {
                if u != &a.user.clone().map_or(Value::Null, Value::String) {
                    return Err(format!("user {:?}, want {u}", a.user));
                }
            }
            if let Some(n) = expect.get("notify") {
                if n != &Value::Bool(a.notify) {
                    return Err(format!("notify {}, want {n}", a.notify));
                }
            }
            let executed = a.execute(&req, &req.target, system);
            if let Some(r) = expect.get("response") {
                if executed.as_ref().ok().map(|s| Value::String(s.clone())).as_ref() != Some(r) {
                    return Err(format!("response {executed:?}, want {r}"));
                }
            }
            if let Some(e) = expect.get("execute_error") {
                match &executed {
                    Err(d) if e.as_str().is_none_or(|m| d.message.contains(m)) => {}
                    other => return Err(format!("execute gave {other:?}, want error {e}")),
                }
            }
        }
        Ok(Resolution::Ask(a)) => {
            if let Some(t) = expect.get("targets_for_ask") {
                if set_of(t) != a.targets {
                    return Err(format!("targets_for_ask {:?}, want {t}", a.targets));
                }
            }
            if let Some(d) = expect.get("default_target") {
                if d != &a.default_target.clone().map_or(Value::Null, Value::String) {
                    return Err(format!("default_target {:?}, want {d}", a.default_target));
                }
            }
            if let Some(n) = expect.get("notify") {
                if n != &Value::Bool(a.notify) {
                    return Err(format!("notify {}, want {n}", a.notify));
                }
            }
            if let (Some(after), Some(resp)) = (expect.get("after_response"), case.get("user_response")) {
                let answered = a.answer(resp["allow"].as_bool().unwrap(), resp["target"].as_str().unwrap_or(""));
                let (res, target, notify) = match &answered {
                    Ok(x) => ("allow", Some(x.target.clone()), x.notify),
                    Err(d) => ("deny", None, d.notify),
                };
                if after["result"] != res {
                    return Err(format!("after response {res}, want {after}"));
                }
                if let Some(t) = after.get("target") {
                    if Some(t.as_str().unwrap().to_owned()) != target {
                        return Err(format!("after response target {target:?}, want {t}"));
                    }
                }
                if let Some(n) = after.get("notify") {
                    if n != &Value::Bool(notify) {
                        return Err(format!("after response notify {notify}, want {n}"));
                    }
                }
            }
        }
        Err(_) => {}
    }
    Ok(())
}

fn run_case(case: &Value) -> Result<(), String> {
    let expect = &case["expect"];
    let system = system_of(case);
    match case["category"].as_str().unwrap() {
        "token" => {
            let t = &case["token"];
            let parsed = Token::parse(t["value"].as_str().unwrap(), ctx_of(t["context"].as_str().unwrap()));
            let want_ok = expect["parse"] == "ok";
            if parsed.is_ok() != want_ok {
                return Err(format!("token parse {parsed:?}, want {}", expect["parse"]));
            }
            if case.get("policy").is_some() && load_policy(case).is_ok() != want_ok {
                return Err(format!(
                    "one-line policy {:?}, want {}",
                    load_policy(case).err(),
                    expect["parse"]
                ));
            }
            Ok(())
        }
        "parse" | "serialize" => {
            let mode = case.get("parse_mode").and_then(Value::as_str).unwrap_or("file");
            let loaded = match mode {
                "file" => load_policy(case),
                // A single line that must parse as a rule: an empty line is no rule.
                _ => {
                    let text = case["policy"].as_str().unwrap();
                    if text.trim().is_empty() {
                        Err(PolicyError {
                            file: "line".into(),
                            line: Some(1),
                            message: "empty rule line".into(),
                        })
                    } else {
                        load_policy(case)
                    }
                }
            };
            if (expect["parse"] == "ok") != loaded.is_ok() {
                return Err(format!(
                    "parse gave {:?}, want {}",
                    loaded.as_ref().err(),
                    expect["parse"]
                ));
            }
            let Ok(policy) = loaded else { return Ok(()) };
            if let Some(n) = expect.get("rule_count") {
                if n.as_u64() != Some(policy.rules.len() as u64) {
                    return Err(format!("rule_count {}, want {n}", policy.rules.len()));
                }
            }
            if let Some(rules) = expect.get("rules").and_then(Value::as_array) {
                for (i, want) in rules.iter().enumerate() {
                    let rule = policy.rules.get(i).ok_or(format!("no rule {i}"))?;
                    check_rule(rule, want).map_err(|e| format!("rule {i}: {e}"))?;
                }
            }
            if let Some(c) = expect.get("canonical") {
                let got = policy.rules.first().map(|r| r.to_string()).unwrap_or_default();
                if Value::String(got.clone()) != *c {
                    return Err(format!("canonical {got:?}, want {c}"));
                }
            }
            Ok(())
        }
        "target_expand" => {
            let t = &case["token"];
            let tok = Token::parse(t["value"].as_str().unwrap(), ctx_of(t["context"].as_str().unwrap()))
                .map_err(|e| e.to_string())?;
            let got = tok.expand(&system);
            if got != set_of(&expect["expand"]) {
                return Err(format!("expand {got:?}, want {}", expect["expand"]));
            }
            Ok(())
        }
        "match" => {
            let m = &case["match"];
            let target = eval::verify_target(m["intended_target"].as_str().unwrap(), &system).map_err(|d| d.message)?;
            let rule = Token::parse(m["rule_target"].as_str().unwrap(), Ctx::Target).map_err(|e| e.to_string())?;
            let got = rule.matches(&target, &system, "");
            if Value::Bool(got) != expect["match"] {
                return Err(format!("match {got}, want {}", expect["match"]));
            }
            if let Some(eq) = case.get("equivalent_evaluate") {
                let policy = load_policy(eq);
                check_evaluation(eq, &eq["expect"], &policy, &system)
                    .map_err(|e| format!("equivalent_evaluate: {e}"))?;
            }
            Ok(())
        }
        "request" => {
            let got = query_request(&case["query"], &system);
            match (expect["request"].as_str().unwrap(), &got) {
                ("ok", Ok(r)) => {
                    if let Some(t) = expect.get("normalized_target") {
                        if t != &Value::String(r.target.clone()) {
                            return Err(format!("normalized_target {}, want {t}", r.target));
                        }
                    }
                    if let Some(s) = expect.get("normalized_source") {
                        if s != &Value::String(r.source.clone()) {
                            return Err(format!("normalized_source {}, want {s}", r.source));
                        }
                    }
                    Ok(())
                }
                ("error", Err(d)) => match expect.get("message") {
                    Some(m) if m != &Value::String(d.message.clone()) => {
                        Err(format!("message {:?}, want {m}", d.message))
                    }
                    _ => Ok(()),
                },
                (want, got) => Err(format!("request {got:?}, want {want}")),
            }
        }
        "find_rule" => {
            let policy = load_policy(case).map_err(|e| e.to_string())?;
            let req = query_request(&case["query"], &system).map_err(|d| d.message)?;
            let got = policy.find_rule(&req, &system).map_or(Value::Null, Value::from);
            if got != expect["matched_rule"] {
                return Err(format!("matched_rule {got}, want {}", expect["matched_rule"]));
            }
            Ok(())
        }
        "collect_targets" => {
            let policy = load_policy(case).map_err(|e| e.to_string())?;
            let req = query_request(&case["query"], &system).map_err(|d| d.message)?;
            let got = policy.collect_targets_for_ask(&req, &system);
            if got != set_of(&expect["targets_for_ask"]) {
                return Err(format!("targets {got:?}, want {}", expect["targets_for_ask"]));
            }
            Ok(())
        }
        "evaluate" => check_evaluation(case, expect, &load_policy(case), &system),
        "policy_exec" => {
            let q = &case["query"];
            let opts = ExecOptions {
                just_evaluate: q["just_evaluate"].as_bool().unwrap_or(false),
                assume_yes_for_ask: q["assume_yes_for_ask"].as_bool().unwrap_or(false),
            };
            let mut agent = MockAgent {
                response: case.get("agent_response").cloned().unwrap_or(Value::Null),
                calls: vec![],
            };
            let out = handle_request(
                &load_policy(case),
                &system,
                q["source"].as_str().unwrap(),
                q["target"].as_str().unwrap(),
                q["service_and_arg"].as_str().unwrap(),
                opts,
                &mut agent,
            );
            if let Some(o) = expect.get("output") {
                if o != &Value::String(out.clone()) {
                    return Err(format!("output {out:?}, want {o}"));
                }
            }
            if let Some(calls) = expect.get("agent_calls") {
                let want = normalize_calls(calls.as_array().unwrap());
                let got = normalize_calls(&agent.calls);
                if want != got {
                    return Err(format!("agent calls {got:?}\n want {want:?}"));
                }
            }
            Ok(())
        }
        "daemon_protocol" => Ok(()),
        other => Err(format!("unknown category {other}")),
    }
}

#[test]
fn public_conformance_cases() {
    let text = std::fs::read_to_string(CASES).expect("the conformance cases live in tests/data/conformance");
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut failures = Vec::new();
    let mut ran: BTreeMap<String, usize> = BTreeMap::new();
    for case in &cases {
        let cat = case["category"].as_str().unwrap().to_owned();
        if cat == "daemon_protocol" {
            continue;
        }
        *ran.entry(cat).or_default() += 1;
        if let Err(e) = run_case(case) {
            failures.push(format!("{}: {e}", case["name"]));
        }
    }
    eprintln!("ran {ran:?}");
    assert!(ran.values().sum::<usize>() >= 130, "too few cases ran: {ran:?}");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        ran.values().sum::<usize>(),
        failures.join("\n")
    );
}
