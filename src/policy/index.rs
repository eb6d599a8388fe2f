//! The compiled form of a loaded policy: the rules that can match a
//! request, found without looking at the others.
//!
//! A rule names one service or `*`, and one argument or `*`. A request
//! `SERVICE+ARG` can only match the rules of that service with that very
//! argument, the rules of that service with `*`, and the `*` rules. Each of
//! the three groups is kept as a list of rule numbers in policy order, and
//! evaluation walks the three lists merged by rule number: the first
//! matching rule is the same one a scan of the whole policy finds.

use rustc_hash::FxHashMap as HashMap;

use super::parser::Rule;
use super::token::{is_dom0, Name, Subject, Token};

/// Rule numbers by service and argument, then by the source they name.
#[derive(Clone, Debug, Default)]
pub struct RuleIndex {
    services: HashMap<Name, ServiceRules>,
    /// Rules whose service is `*` (their argument is `*` too).
    any_service: Group,
    /// Built on the first `ask` that collects targets: most loads never
    /// need it (a process answering one call, a policy with no `ask`).
    ask_tokens: std::sync::OnceLock<AskTokens>,
}

/// For each rule, the number of the token an `ask` collects targets from
/// (its `target=`, else its target column) among `tokens`.
#[derive(Clone, Debug, Default)]
struct AskTokens {
    of_rule: Vec<u32>,
    /// Each distinct such token once.
    tokens: Vec<Token>,
}

impl AskTokens {
    fn build(rules: &[Rule]) -> AskTokens {
        let mut out = AskTokens::default();
        let mut ids: HashMap<&Token, u32> = HashMap::default();
        for rule in rules {
            let token = rule.action.redirect().unwrap_or(&rule.target);
            let next = u32::try_from(out.tokens.len()).unwrap_or(u32::MAX);
            let id = *ids.entry(token).or_insert_with(|| {
                out.tokens.push(token.clone());
                next
            });
            out.of_rule.push(id);
        }
        out
    }
}

#[derive(Clone, Debug, Default)]
struct ServiceRules {
    /// Rules naming this service and one argument, by argument (`+ARG`).
    by_arg: HashMap<Name, Group>,
    /// Rules naming this service with argument `*`.
    any_arg: Group,
}

/// Rules of one service and argument, split by their source column: a
/// rule for a named qube can only match that qube, a `@tag:` rule only a
/// qube with that tag; the rest are checked for every source.
#[derive(Clone, Debug, Default)]
struct Group {
    by_name: HashMap<Name, Vec<u32>>,
    by_tag: HashMap<Name, Vec<u32>>,
    rest: Vec<u32>,
}

impl Group {
    fn push(&mut self, n: u32, source: &Token) {
        match source {
            Token::Literal(l) if !is_dom0(l) && !l.starts_with("uuid:") => {
                self.by_name.entry(l.clone()).or_default().push(n);
            }
            Token::Tag(t) => self.by_tag.entry(t.clone()).or_default().push(n),
            _ => self.rest.push(n),
        }
    }

    /// The lists that can hold rules matching a source named `name`
    /// (resolved) with `tags`.
    fn lists<'a>(&'a self, name: &str, tags: &[String], out: &mut Vec<&'a [u32]>) {
        if let Some(l) = self.by_name.get(name) {
            out.push(l);
        }
        if !self.by_tag.is_empty() {
            out.extend(
                tags.iter()
                    .filter_map(|t| self.by_tag.get(t.as_str()))
                    .map(Vec::as_slice),
            );
        }
        if !self.rest.is_empty() {
            out.push(&self.rest);
        }
    }
}

impl RuleIndex {
    /// Indexes `rules` (at most `u32::MAX` of them; the loader caps far lower).
    pub fn build(rules: &[Rule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            let Ok(n) = u32::try_from(i) else { break };
            let group = match (&rule.service, &rule.argument) {
                (None, _) => &mut index.any_service,
                (Some(s), None) => &mut index.services.entry(s.clone()).or_default().any_arg,
                (Some(s), Some(a)) => index
                    .services
                    .entry(s.clone())
                    .or_default()
                    .by_arg
                    .entry(a.clone())
                    .or_default(),
            };
            group.push(n, &rule.source);
        }
        index
    }

    /// The distinct ask tokens of `rules` (the rules this index was built
    /// from); [`RuleIndex::ask_token`] numbers them.
    pub fn tokens(&self, rules: &[Rule]) -> &[Token] {
        &self.ask_tokens.get_or_init(|| AskTokens::build(rules)).tokens
    }

    /// The number of rule `rule`'s ask token among [`RuleIndex::tokens`].
    pub fn ask_token(&self, rules: &[Rule], rule: usize) -> Option<usize> {
        let ask = self.ask_tokens.get_or_init(|| AskTokens::build(rules));
        ask.of_rule.get(rule).map(|&id| id as usize)
    }

    /// The numbers of the rules that can match a call of `service` with
    /// `argument` (which starts with `+`) from `source`, in policy order.
    /// Every rule that matches is among them; the caller still checks each.
    pub fn candidates<'a>(&'a self, service: &str, argument: &str, source: &Subject) -> Candidates<'a> {
        let (name, tags) = source.name_and_tags();
        let mut lists = Vec::new();
        if let Some(s) = self.services.get(service) {
            if let Some(g) = s.by_arg.get(argument) {
                g.lists(name, tags, &mut lists);
            }
            s.any_arg.lists(name, tags, &mut lists);
        }
        self.any_service.lists(name, tags, &mut lists);
        Candidates { lists }
    }
}

/// Ascending lists of rule numbers, walked as one.
#[derive(Clone, Debug)]
pub struct Candidates<'a> {
    lists: Vec<&'a [u32]>,
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let n = self.lists.iter().filter_map(|l| l.first()).min().copied()?;
        // A rule is in one list only, except that a qube's tag list may
        // repeat (tags are a list): skip equal heads everywhere.
        for list in &mut self.lists {
            if list.first() == Some(&n) {
                *list = list.get(1..).unwrap_or_default();
            }
        }
        Some(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, System};

    #[test]
    fn candidates_are_the_rules_that_can_match_in_order() {
        let p = Policy::parse_text(
            "a +x @anyvm @anyvm allow\n\
             * * @anyvm @anyvm deny\n\
             a * @anyvm @anyvm allow\n\
             b +x @anyvm @anyvm allow\n\
             a +y @anyvm @anyvm allow\n\
             a +x @anyvm @anyvm deny\n",
            "t",
        )
        .unwrap();
        let system = System::default();
        let vm = Subject::new("vm", &system);
        let got = |s: &str, a: &str| p.index.candidates(s, a, &vm).collect::<Vec<_>>();
        assert_eq!(got("a", "+x"), [0, 1, 2, 5]);
        assert_eq!(got("a", "+y"), [1, 2, 4]);
        assert_eq!(got("a", "+"), [1, 2]);
        assert_eq!(got("b", "+x"), [1, 3]);
        assert_eq!(got("c", "+x"), [1]);
        // The same as filtering every rule by service and argument.
        for (s, a) in [("a", "+x"), ("a", "+y"), ("b", "+x"), ("b", "+"), ("z", "+q")] {
            let scan: Vec<usize> = p
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.service.as_deref().is_none_or(|x| x == s) && r.argument.as_deref().is_none_or(|x| x == a)
                })
                .map(|(i, _)| i)
                .collect();
            assert_eq!(got(s, a), scan, "{s}{a}");
        }
    }

    proptest::proptest! {
        /// The first matching rule found through the index is the first
        /// one a scan of every rule finds, for random policies and calls.
        #[test]
        fn the_index_finds_what_a_full_scan_finds(
            rules in proptest::collection::vec((0..3usize, 0..3usize, 0..9usize, 0..6usize, 0..3usize), 1..40),
            calls in proptest::collection::vec((0..3usize, 0..3usize, 0..5usize, 0..5usize), 1..20),
        ) {
            let services = ["*", "svc.A", "svc.B"];
            let args = ["*", "+x", "+y"];
            let sources = ["@anyvm", "*", "vm1", "vm2", "@tag:t1", "@tag:t2", "@type:AppVM", "dom0",
                           "uuid:00000000-0000-4000-8000-000000000001"];
            let targets = ["@anyvm", "*", "vm1", "vm2", "@adminvm", "@tag:t1"];
            let actions = ["allow target=dom0", "deny notify=no", "ask default_target=vm1"];
            let text: String = rules
                .iter()
                .map(|&(s, a, src, t, act)| {
                    let (s, a) = if s == 0 { ("*", "*") } else { (services[s], args[a]) };
                    format!("{s} {a} {} {} {}\n", sources[src], targets[t], actions[act])
                })
                .collect();
            let p = Policy::parse_text(&text, "gen").unwrap();
            let system: System = serde_json::from_value(serde_json::json!({"domains": {
                "dom0": {"type": "AdminVM", "tags": []},
                "vm1": {"type": "AppVM", "tags": ["t1", "t1"], "uuid": "00000000-0000-4000-8000-000000000001"},
                "vm2": {"type": "TemplateVM", "tags": ["t2"]},
                "vm3": {"type": "AppVM", "tags": ["t1", "t2"]},
            }})).unwrap();
            let call_sources = ["vm1", "vm2", "vm3", "unknown", "uuid:00000000-0000-4000-8000-000000000001"];
            let call_targets = ["vm1", "vm2", "dom0", "@default", "vm3"];
            for &(s, a, src, t) in &calls {
                let svc = format!("{}{}", ["svc.A", "svc.B", "svc.C"][s], ["+x", "+y", ""][a]);
                let req = crate::policy::PolicyRequest::new(&svc, call_sources[src], call_targets[t], None, &system).unwrap();
                let scan = p.rules.iter().position(|r| {
                    r.service.as_deref().is_none_or(|x| x == req.service)
                        && r.argument.as_deref().is_none_or(|x| x == req.argument)
                        && r.source.matches_source(&req.source, &system)
                        && r.target.matches(&req.target, &system, &req.source)
                });
                proptest::prop_assert_eq!(p.find_rule(&req, &system), scan, "{} {:?}", text, req);
            }
        }
    }
}
