#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The rules of the policy spec beyond the public conformance sample
//! (the qrexec policy reference, §12 and §13 especially).

use qubes_pci_admin::policy::parser::{MemFs, Policy};
use qubes_pci_admin::policy::token::{Ctx, Token};
use qubes_pci_admin::policy::{PolicyRequest, Resolution, System};

fn system() -> System {
    serde_json::from_str(
        r#"{"domains": {
        "dom0": {"type": "AdminVM", "tags": ["dom0-tag"], "power_state": "Running", "uuid": "00000000-0000-0000-0000-000000000000"},
        "vm1": {"type": "AppVM", "tags": ["t1"], "power_state": "Running", "uuid": "c9024a97-9b15-46cc-8341-38d75d5d421b", "default_dispvm": "dvm"},
        "vm2": {"type": "AppVM", "tags": ["t1"], "power_state": "Halted", "uuid": "b3eb69d0-f9d9-4c3c-ad5c-454500303ea4"},
        "dvm": {"type": "AppVM", "tags": ["dt"], "power_state": "Halted", "uuid": "f3e538bd-4427-4697-bed7-45ef3270df21", "template_for_dispvms": true},
        "hidden": {"type": "AppVM", "tags": ["t1"], "internal": true, "power_state": "Halted", "uuid": "1d0c8f4e-0f4b-4c0b-9a6e-3b2f6c7a8d90"}
    }}"#,
    )
    .unwrap()
}

fn eval(policy: &str, source: &str, target: &str) -> Result<Resolution, String> {
    let sys = system();
    let p = Policy::parse_text(policy, "test.policy").map_err(|e| e.to_string())?;
    let req = PolicyRequest::new("svc+arg", source, target, None, &sys).map_err(|d| d.message)?;
    p.evaluate(&req, &sys).map_err(|d| d.message)
}

fn allowed_target(policy: &str, source: &str, target: &str) -> Option<String> {
    match eval(policy, source, target) {
        Ok(Resolution::Allow(a)) => Some(a.target),
        _ => None,
    }
}

#[test]
fn first_match_wins_across_includes() {
    let fs = MemFs {
        files: [
            ("main".to_owned(), "svc * @anyvm @anyvm deny\n!include inc\n".to_owned()),
            ("inc".to_owned(), "svc * vm1 vm2 allow\n".to_owned()),
        ]
        .into(),
    };
    let p = Policy::load_entry(&fs, std::path::Path::new("main"), std::path::Path::new("compat")).unwrap();
    let sys = system();
    let req = PolicyRequest::new("svc+arg", "vm1", "vm2", None, &sys).unwrap();
    assert_eq!(p.find_rule(&req, &sys), Some(0));
    assert_eq!(&*p.rules[1].file, "inc");
}

#[test]
fn anyvm_excludes_dom0_star_includes_it() {
    let sys = system();
    for d in ["dom0", "@adminvm", "uuid:00000000-0000-0000-0000-000000000000"] {
        assert!(!Token::AnyVm.matches(d, &sys, "vm1"), "{d}");
        assert!(Token::Star.matches(d, &sys, "vm1"), "{d}");
    }
    for t in ["@default", "@dispvm", "@dispvm:dvm", "vm2"] {
        assert!(Token::AnyVm.matches(t, &sys, "vm1"), "{t}");
    }
    assert!(allowed_target("svc * vm1 @anyvm allow", "vm1", "dom0").is_none());
    assert_eq!(
        allowed_target("svc * vm1 * allow", "vm1", "dom0").as_deref(),
        Some("dom0")
    );
}

#[test]
fn dom0_spellings_alias_but_tags_see_only_real_keys() {
    let sys = system();
    let dom0_rule = Token::parse("dom0", Ctx::Target).unwrap();
    assert!(dom0_rule.matches("@adminvm", &sys, "vm1"));
    assert!(Token::AdminVm.matches("dom0", &sys, "vm1"));
    let tag = Token::parse("@tag:dom0-tag", Ctx::Target).unwrap();
    assert!(tag.matches("dom0", &sys, "vm1"));
    assert!(tag.matches("uuid:00000000-0000-0000-0000-000000000000", &sys, "vm1"));
    assert!(!tag.matches("@adminvm", &sys, "vm1"));
    let ty = Token::parse("@type:AdminVM", Ctx::Target).unwrap();
    assert!(!ty.matches("@adminvm", &sys, "vm1"));
    // Output keeps the uuid spelling; only @adminvm is rewritten to dom0.
    assert_eq!(
        allowed_target("svc * vm1 @anyvm allow target=@adminvm", "vm1", "vm2").as_deref(),
        Some("dom0")
    );
    assert_eq!(
        allowed_target(
            "svc * vm1 vm2 allow",
            "vm1",
            "uuid:b3eb69d0-f9d9-4c3c-ad5c-454500303ea4"
        )
        .as_deref(),
        Some("uuid:b3eb69d0-f9d9-4c3c-ad5c-454500303ea4")
    );
}

#[test]
fn unknown_targets_become_default() {
    let sys = system();
    let req = PolicyRequest::new("svc", "vm1", "no-such-vm", None, &sys).unwrap();
    assert_eq!(req.target, "@default");
    assert_eq!(req.argument, "+");
    assert!(allowed_target("svc * vm1 no-such-vm allow", "vm1", "no-such-vm").is_none());
    assert_eq!(
        allowed_target("svc * vm1 @default allow target=vm2", "vm1", "no-such-vm").as_deref(),
        Some("vm2")
    );
    // Reaching allow with @default and no target= is a deny.
    assert!(eval("svc * vm1 @anyvm allow", "vm1", "")
        .unwrap_err()
        .contains("no target"));
}

#[test]
fn dispvm_resolves_through_the_source_default() {
    assert_eq!(
        allowed_target("svc * vm1 @dispvm allow", "vm1", "@dispvm").as_deref(),
        Some("@dispvm:dvm")
    );
    // vm2 has no default_dispvm: deny, and @dispvm:X rules simply do not match.
    assert!(allowed_target("svc * vm2 @dispvm allow", "vm2", "@dispvm").is_none());
    assert!(allowed_target("svc * vm2 @dispvm:dvm allow", "vm2", "@dispvm").is_none());
    assert_eq!(
        allowed_target("svc * vm1 @dispvm:dvm allow", "vm1", "@dispvm").as_deref(),
        Some("@dispvm:dvm")
    );
    // @dispvm does not match @dispvm:X; @dispvm:@tag matches via the template's tags.
    assert!(allowed_target("svc * vm1 @dispvm allow", "vm1", "@dispvm:dvm").is_none());
    assert!(allowed_target(
        "svc * vm1 @dispvm:@tag:dt allow target=@dispvm:dvm",
        "vm1",
        "@dispvm:dvm"
    )
    .is_some());
    // Not a template: the request itself is refused.
    assert!(eval("svc * vm1 @anyvm allow", "vm1", "@dispvm:vm2")
        .unwrap_err()
        .contains("not a template"));
    // Unknown templates expand to nothing instead of crashing.
    assert!(Token::parse("@dispvm:nope", Ctx::Target)
        .unwrap()
        .expand(&system())
        .is_empty());
}

#[test]
fn ask_collects_targets_from_the_whole_policy() {
    let policy = "svc * vm1 vm2 deny\nsvc * vm1 @tag:t1 ask\nsvc * vm1 @adminvm allow\nsvc * vm1 @dispvm ask";
    let Ok(Resolution::Ask(a)) = eval(policy, "vm1", "hidden") else {
        panic!("expected ask")
    };
    // vm2 removed by the earlier deny, vm1 (the source) and hidden (internal) dropped,
    // @adminvm offered as dom0, @dispvm as the source's default template.
    let got: Vec<&str> = a.targets.iter().map(String::as_str).collect();
    assert_eq!(got, ["@dispvm:dvm", "dom0"]);
}

#[test]
fn ask_target_is_not_verified_and_default_outside_the_list_is_dropped() {
    let Ok(Resolution::Ask(a)) = eval("svc * vm1 @anyvm ask target=no-such default_target=vm2", "vm1", "vm2") else {
        panic!()
    };
    assert_eq!(a.targets.iter().cloned().collect::<Vec<_>>(), ["no-such"]);
    assert_eq!(a.default_target, None);
    assert!(a.answer(true, "vm2").is_err());
    assert!(a.answer(true, "no-such").is_ok());
}

#[test]
fn autostart_no_needs_a_running_target() {
    assert!(allowed_target("svc * vm1 vm2 allow autostart=no", "vm1", "vm2").is_none());
    assert_eq!(
        allowed_target("svc * vm2 vm1 allow autostart=no", "vm2", "vm1").as_deref(),
        Some("vm1")
    );
    assert!(allowed_target("svc * vm1 @dispvm allow autostart=no", "vm1", "@dispvm").is_none());
}

#[test]
fn syntax_errors_name_file_and_line() {
    for (text, needle) in [
        ("svc * @anyvm @anyvm allow # comment", "invalid action parameter syntax"),
        ("svc * @anyvm @anyvm allow notify=maybe", "yes or no"),
        ("svc * @anyvm @anyvm allow user=a user=b", "given twice"),
        ("svc * @anyvm @anyvm deny target=vm1", "invalid parameters"),
        ("svc * @anyvm @default allow", "must specify target="),
        ("svc * @anyvm @anyvm permit", "invalid action"),
        ("svc * @anyvm", "wrong number of fields"),
        ("svc arg @anyvm @anyvm allow", "does not start with +"),
        ("* +arg @anyvm @anyvm allow", "only * argument"),
        ("s+x * @anyvm @anyvm allow", "invalid characters"),
        ("svc * @anyvm @anyvm allow target=@anyvm", "invalid"),
        ("svc * @default @anyvm allow", "invalid source token"),
        ("svc * @anyvm @tag: allow", "empty"),
        ("!include", "invalid number of params"),
        ("!frobnicate x", "invalid directive"),
    ] {
        let err = Policy::parse_text(&format!("# header\n\n{text}\n"), "f.policy")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.policy:3: "), "{text}: {err}");
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn old_syntax_substitutions_and_directives() {
    let fs = MemFs {
        files: [
            ("main".to_owned(), "!include-service svc +arg old\n".to_owned()),
            (
                "old".to_owned(),
                "$anyvm $dispvm ask,default_target=$dispvm\n$include:old2\n".to_owned(),
            ),
            ("old2".to_owned(), "vm1 vm2 allow,user=root\n".to_owned()),
        ]
        .into(),
    };
    let p = Policy::load_entry(&fs, std::path::Path::new("main"), std::path::Path::new("compat")).unwrap();
    assert_eq!(p.rules.len(), 2);
    assert_eq!(
        p.rules[0].to_string(),
        "svc\t+arg\t@anyvm\t@dispvm\task default_target=@dispvm"
    );
    assert_eq!(p.rules[1].to_string(), "svc\t+arg\tvm1\tvm2\tallow user=root");
    let bad = MemFs {
        files: [
            ("main".to_owned(), "!include-service svc +arg old\n".to_owned()),
            ("old".to_owned(), "!include-dir x\n".to_owned()),
        ]
        .into(),
    };
    assert!(Policy::load_entry(&bad, std::path::Path::new("main"), std::path::Path::new("compat")).is_err());
}

/// An action's text is parsed once and shared, but what else decides
/// whether it parses still counts: the `@default` target column, and
/// whether commas separate (the legacy syntax).
#[test]
fn a_repeated_action_is_judged_with_its_own_rule() {
    let err = Policy::parse_text("svc * vm1 vm2 allow\nsvc * vm1 @default allow\n", "f")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("f:2: ") && err.contains("must specify target="),
        "{err}"
    );

    let fs = MemFs {
        files: [
            (
                "main".to_owned(),
                "!include-service svc +arg old\nsvc * vm1 vm2 allow,user=root\n".to_owned(),
            ),
            ("old".to_owned(), "vm1 vm2 allow,user=root\n".to_owned()),
        ]
        .into(),
    };
    let err = Policy::load_entry(&fs, std::path::Path::new("main"), std::path::Path::new("compat"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("main:2: ") && err.contains("invalid action"), "{err}");

    // Every rule still gets its own line and the shared action.
    let p = Policy::parse_text("svc * vm1 vm2 deny notify=no\nsvc * vm2 vm1 deny notify=no\n", "f").unwrap();
    assert_eq!((p.rules[0].lineno, p.rules[1].lineno), (1, 2));
    assert_eq!(p.rules[1].to_string(), "svc\t*\tvm2\tvm1\tdeny");
}

/// In the legacy syntax a comma separates as a space does on every line,
/// as upstream replaces each comma before splitting, non-ASCII lines too.
#[test]
fn legacy_commas_separate_on_a_non_ascii_line() {
    let fs = MemFs {
        files: [
            ("main".to_owned(), "!include-service svc +arg old\n".to_owned()),
            ("old".to_owned(), "vm1 vm2 allow,user=r\u{e9}mi\n".to_owned()),
        ]
        .into(),
    };
    let p = Policy::load_entry(&fs, std::path::Path::new("main"), std::path::Path::new("compat")).unwrap();
    assert_eq!(p.rules[0].to_string(), "svc\t+arg\tvm1\tvm2\tallow user=r\u{e9}mi");
}

#[test]
fn loopback_is_refused_at_execution() {
    let sys = system();
    let p = Policy::parse_text("svc * vm1 @anyvm allow target=vm1", "f").unwrap();
    let req = PolicyRequest::new("svc", "vm1", "vm2", None, &sys).unwrap();
    let Ok(Resolution::Allow(a)) = p.evaluate(&req, &sys) else {
        panic!()
    };
    assert!(a
        .execute(&req, &req.target, &sys)
        .unwrap_err()
        .message
        .contains("loopback"));
}
