//! Qube tokens of the policy language: parsing per context, matching
//! against a request, and expansion into concrete targets.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use super::System;

/// Where a token stands; each context allows a different set of forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctx {
    Source,
    Target,
    /// `target=` and `default_target=`.
    Redirect,
    /// The target a request names.
    Intended,
}

impl Ctx {
    fn name(self) -> &'static str {
        match self {
            Ctx::Source => "source",
            Ctx::Target => "target",
            Ctx::Redirect => "target= or default_target=",
            Ctx::Intended => "intended target",
        }
    }
}

/// A name in a policy (in a token, a service, an argument, a file name):
/// shared, so that a policy holds each distinct name once however many
/// rules use it (see [`Token::parse_with`]), behind a thin pointer, so that
/// a token is two words and a rule list of 10,000 rules stays small.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(Arc<String>);

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self
    }
}

/// As the `str` it holds (so that maps keyed by names are searched by `&str`).
impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(Arc::new(s.to_owned()))
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Token {
    /// A plain name, including `dom0` and `uuid:…`.
    Literal(Name),
    Star,
    AdminVm,
    AnyVm,
    Default,
    DispVm,
    /// `@dispvm:NAME` (NAME may be `uuid:…`).
    DispVmTemplate(Name),
    /// `@dispvm:@tag:TAG`
    DispVmTag(Name),
    Tag(Name),
    Type(Name),
}

pub const DOM0_UUID: &str = "uuid:00000000-0000-0000-0000-000000000000";

/// The three spellings of dom0.
pub fn is_dom0(s: &str) -> bool {
    matches!(s, "@adminvm" | "dom0" | DOM0_UUID)
}

impl Token {
    pub fn parse(untrusted: &str, ctx: Ctx) -> Result<Token, String> {
        Token::parse_with(untrusted, ctx, &mut |s| Name::from(s))
    }

    /// [`Token::parse`], taking each name through `name` (the loader's
    /// interner, so that equal names share one copy).
    pub fn parse_with(untrusted: &str, ctx: Ctx, name: &mut dyn FnMut(&str) -> Name) -> Result<Token, String> {
        use Ctx::*;
        if untrusted.is_empty() {
            return Err(format!("invalid empty {} token", ctx.name()));
        }
        if !untrusted.starts_with('@') && untrusted != "*" {
            return Ok(Token::Literal(name(untrusted)));
        }
        let invalid = || Err(format!("invalid {} token: {untrusted:?}", ctx.name()));
        let keyword = match untrusted {
            "*" => Some((Token::Star, matches!(ctx, Source | Target))),
            "@adminvm" => Some((Token::AdminVm, true)),
            "@anyvm" => Some((Token::AnyVm, matches!(ctx, Source | Target))),
            "@default" => Some((Token::Default, matches!(ctx, Target | Intended))),
            "@dispvm" => Some((Token::DispVm, matches!(ctx, Target | Redirect | Intended))),
            _ => None,
        };
        if let Some((tok, allowed)) = keyword {
            return if allowed { Ok(tok) } else { invalid() };
        }
        // Prefixes in declaration order; a value starting with `@` falls
        // through to a longer prefix.
        type Make = fn(Name) -> Token;
        let prefixes: [(&str, Make, bool); 4] = [
            ("@type:", Token::Type, matches!(ctx, Source | Target)),
            ("@tag:", Token::Tag, matches!(ctx, Source | Target)),
            ("@dispvm:", Token::DispVmTemplate, true),
            ("@dispvm:@tag:", Token::DispVmTag, matches!(ctx, Source | Target)),
        ];
        for (prefix, make, allowed) in prefixes {
            if !allowed {
                continue;
            }
            if let Some(value) = untrusted.strip_prefix(prefix) {
                if value.is_empty() {
                    return Err(format!("invalid empty {prefix} token"));
                }
                if value.starts_with('@') {
                    continue;
                }
                return Ok(make(name(value)));
            }
        }
        invalid()
    }

    /// Matches this rule token against a request value (the source, or the
    /// normalized target), for a call from `source`.
    pub fn matches(&self, other: &str, system: &System, source: &str) -> bool {
        self.matches_subject(&Subject::new(other, system), system, &Subject::new(source, system))
    }

    /// [`Token::matches`] with the value's system entry already looked up.
    pub fn matches_subject(&self, other: &Subject, system: &System, source: &Subject) -> bool {
        match self {
            Token::Literal(l) if is_dom0(l) => other.dom0,
            Token::AdminVm => other.dom0,
            Token::Literal(l) => {
                **l == *other.value
                    || ((l.starts_with("uuid:") || other.value.starts_with("uuid:"))
                        && match (system.get(l), other.entry) {
                            (Some((na, _)), Some((nb, _))) => na == nb,
                            _ => false,
                        })
            }
            Token::Star => true,
            Token::AnyVm => !other.dom0,
            Token::Tag(t) => other.entry.is_some_and(|(_, d)| d.tags.iter().any(|x| **x == **t)),
            Token::Type(t) => other.entry.is_some_and(|(_, d)| d.klass.as_deref() == Some(&**t)),
            Token::Default => other.value == "@default",
            Token::DispVm => other.value == "@dispvm",
            Token::DispVmTemplate(x) => {
                if let Some(y) = other.value.strip_prefix("@dispvm:") {
                    return match_strings(x, y, system);
                }
                other.value == "@dispvm" && source.default_dispvm() == Some(&**x)
            }
            Token::DispVmTag(t) => {
                let template = match other.value.strip_prefix("@dispvm:") {
                    Some(y) => Some(y),
                    None if other.value == "@dispvm" => source.default_dispvm(),
                    None => None,
                };
                template.is_some_and(|y| {
                    system
                        .get(y)
                        .is_some_and(|(_, d)| d.template_for_dispvms == Some(true) && d.tags.iter().any(|x| **x == **t))
                })
            }
        }
    }

    /// Matches a source column token against the calling qube. `@dispvm:…`
    /// tokens parse in this column but never match a source.
    pub fn matches_source(&self, source: &str, system: &System) -> bool {
        self.matches_source_subject(&Subject::new(source, system), system)
    }

    /// [`Token::matches_source`] with the source looked up once.
    pub fn matches_source_subject(&self, source: &Subject, system: &System) -> bool {
        match self {
            Token::DispVmTemplate(_) | Token::DispVmTag(_) => false,
            t => t.matches_subject(source, system, source),
        }
    }

    /// The concrete targets a rule token stands for, for ask target lists.
    pub fn expand(&self, system: &System) -> BTreeSet<String> {
        let templates = || {
            system
                .domains
                .iter()
                .filter(|(_, d)| d.template_for_dispvms == Some(true))
                .map(|(n, _)| format!("@dispvm:{n}"))
        };
        match self {
            Token::Literal(l) => system.get(l).map(|(n, _)| n.to_owned()).into_iter().collect(),
            Token::AdminVm => ["@adminvm".to_owned()].into(),
            Token::Default => BTreeSet::new(),
            Token::DispVm => ["@dispvm".to_owned()].into(),
            Token::Tag(t) => system
                .domains
                .iter()
                .filter(|(_, d)| d.tags.iter().any(|x| **x == **t))
                .map(|(n, _)| n.clone())
                .collect(),
            Token::Type(t) => system
                .domains
                .iter()
                .filter(|(_, d)| d.klass.as_deref() == Some(&**t))
                .map(|(n, _)| n.clone())
                .collect(),
            Token::DispVmTemplate(x) => system
                .get(x)
                .filter(|(_, d)| d.template_for_dispvms == Some(true))
                .map(|(n, _)| format!("@dispvm:{n}"))
                .into_iter()
                .collect(),
            Token::DispVmTag(t) => system
                .domains
                .iter()
                .filter(|(_, d)| d.template_for_dispvms == Some(true) && d.tags.iter().any(|x| **x == **t))
                .map(|(n, _)| format!("@dispvm:{n}"))
                .collect(),
            Token::AnyVm | Token::Star => {
                let mut out: BTreeSet<String> = system
                    .domains
                    .keys()
                    .filter(|n| !is_dom0(n))
                    .cloned()
                    .chain(templates())
                    .collect();
                out.insert("@dispvm".to_owned());
                if *self == Token::Star {
                    out.insert("dom0".to_owned());
                }
                out
            }
        }
    }
}

/// A request value (its source or target) with its system entry looked up
/// once, for matching it against many rules.
pub struct Subject<'a> {
    pub value: &'a str,
    entry: Option<(&'a str, &'a crate::sysinfo::DomainInfo)>,
    dom0: bool,
}

impl<'a> Subject<'a> {
    pub fn new(value: &'a str, system: &'a System) -> Subject<'a> {
        Subject {
            value,
            entry: system.get(value),
            dom0: is_dom0(value),
        }
    }

    /// The qube's name (resolved from `uuid:…`) and tags; for an unknown
    /// qube the value itself and no tags.
    pub fn name_and_tags(&self) -> (&'a str, &'a [String]) {
        match self.entry {
            Some((n, d)) => (n, &d.tags),
            None => (self.value, &[]),
        }
    }

    /// The qube's default DispVM template, if it has one.
    pub fn default_dispvm(&self) -> Option<&'a str> {
        self.entry.and_then(|(_, d)| d.default_dispvm.as_deref())
    }
}

/// Plain-name equality with UUID bridging: `uuid:X` equals the name of the
/// qube whose uuid is X.
pub fn match_strings(a: &str, b: &str, system: &System) -> bool {
    if a == b {
        return true;
    }
    if !(a.starts_with("uuid:") || b.starts_with("uuid:")) {
        return false;
    }
    match (system.get(a), system.get(b)) {
        (Some((na, _)), Some((nb, _))) => na == nb,
        _ => false,
    }
}

/// The source's default DispVM template, if it has one.
pub fn default_dispvm(system: &System, source: &str) -> Option<String> {
    system.get(source).and_then(|(_, d)| d.default_dispvm.clone())
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Literal(s) => f.write_str(s),
            Token::Star => f.write_str("*"),
            Token::AdminVm => f.write_str("@adminvm"),
            Token::AnyVm => f.write_str("@anyvm"),
            Token::Default => f.write_str("@default"),
            Token::DispVm => f.write_str("@dispvm"),
            Token::DispVmTemplate(x) => write!(f, "@dispvm:{x}"),
            Token::DispVmTag(t) => write!(f, "@dispvm:@tag:{t}"),
            Token::Tag(t) => write!(f, "@tag:{t}"),
            Token::Type(t) => write!(f, "@type:{t}"),
        }
    }
}
