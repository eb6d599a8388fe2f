//! Sets of ask targets as bit sets over every name a token can expand to,
//! so collecting the targets of an `ask` costs a few word operations per
//! rule instead of building and searching sets of strings.

#[cfg(test)]
use std::collections::BTreeSet;

use super::token::Token;
use super::System;

/// Every value [`Token::expand`] can give for one system: each qube's
/// name, `dom0`, `@adminvm`, `@dispvm`, and `@dispvm:T` for each DispVM
/// template T. Names are borrowed from the system info; nothing is
/// formatted until the result is read.
pub struct Universe<'a> {
    /// The system's qube names, sorted (the map's order).
    qubes: Vec<&'a str>,
    /// For each qube, the number of its `@dispvm:NAME` when it is a DispVM
    /// template.
    dispvm_of: Vec<Option<usize>>,
    /// The number of `dom0` when it is not one of `qubes`.
    extra_dom0: Option<usize>,
    adminvm: usize,
    dispvm: usize,
    len: usize,
    system: &'a System,
    /// Masks computed so far, by token number (see `mask_numbered`).
    memo: Vec<Option<Mask>>,
}

/// A set of names of a [`Universe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mask(Vec<u64>);

impl Mask {
    fn with_len(len: usize) -> Mask {
        Mask(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        if let Some(word) = self.0.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    pub fn add(&mut self, other: &Mask) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    pub fn remove(&mut self, other: &Mask) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a &= !b;
        }
    }

    fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(w, &word)| (0..64).filter(move |b| word & (1 << b) != 0).map(move |b| w * 64 + b))
    }
}

impl<'a> Universe<'a> {
    pub fn new(system: &'a System) -> Universe<'a> {
        let qubes: Vec<&'a str> = system.domains.keys().map(String::as_str).collect();
        let mut len = qubes.len();
        let mut next = || {
            len += 1;
            len - 1
        };
        let extra_dom0 = (!system.domains.contains_key("dom0")).then(&mut next);
        let adminvm = next();
        let dispvm = next();
        let dispvm_of = system
            .domains
            .values()
            .map(|d| (d.template_for_dispvms == Some(true)).then(&mut next))
            .collect();
        Universe {
            qubes,
            dispvm_of,
            extra_dom0,
            adminvm,
            dispvm,
            len,
            system,
            memo: Vec::new(),
        }
    }

    fn qube(&self, name: &str) -> Option<usize> {
        self.qubes.binary_search(&name).ok()
    }

    fn dom0(&self) -> Option<usize> {
        self.extra_dom0.or_else(|| self.qube("dom0"))
    }

    fn of(&self, found: impl IntoIterator<Item = usize>) -> Mask {
        let mut m = Mask::with_len(self.len);
        for i in found {
            m.set(i);
        }
        m
    }

    /// The DispVM templates whose entry passes `keep`, as `@dispvm:NAME`.
    fn templates(&self, keep: impl Fn(&crate::sysinfo::DomainInfo) -> bool) -> Mask {
        self.of(self
            .system
            .domains
            .values()
            .zip(&self.dispvm_of)
            .filter(|(d, _)| keep(d))
            .filter_map(|(_, t)| *t))
    }

    /// [`Universe::mask`] of a token numbered `id` (each number standing
    /// for one token), computed once per number.
    pub fn mask_numbered(&mut self, id: usize, token: &Token) -> &Mask {
        if self.memo.len() <= id {
            self.memo.resize(id + 1, None);
        }
        if self.memo.get(id).is_some_and(Option::is_none) {
            let m = self.mask(token);
            if let Some(slot) = self.memo.get_mut(id) {
                *slot = Some(m);
            }
        }
        static EMPTY: Mask = Mask(Vec::new());
        self.memo.get(id).and_then(Option::as_ref).unwrap_or(&EMPTY)
    }

    /// The set [`Token::expand`] gives for `token`.
    pub fn mask(&self, token: &Token) -> Mask {
        let system = self.system;
        let domains = || system.domains.values().enumerate();
        let m = match token {
            Token::Literal(l) => self.of(system.get(l).and_then(|(n, _)| self.qube(n))),
            Token::AdminVm => self.of([self.adminvm]),
            Token::Default => Mask::with_len(self.len),
            Token::DispVm => self.of([self.dispvm]),
            Token::Tag(t) => self.of(domains()
                .filter(|(_, d)| d.tags.iter().any(|x| **x == **t))
                .map(|(i, _)| i)),
            Token::Type(t) => self.of(domains()
                .filter(|(_, d)| d.klass.as_deref() == Some(&**t))
                .map(|(i, _)| i)),
            Token::DispVmTemplate(x) => {
                let i = system.get(x).and_then(|(n, _)| self.qube(n));
                self.of(i.and_then(|i| self.dispvm_of.get(i).copied().flatten()))
            }
            Token::DispVmTag(t) => self.templates(|d| d.tags.iter().any(|x| **x == **t)),
            Token::AnyVm | Token::Star => {
                let qubes = self
                    .qubes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| !super::token::is_dom0(n))
                    .map(|(i, _)| i);
                let mut m = self.of(qubes.chain([self.dispvm]));
                m.add(&self.templates(|_| true));
                if *token == Token::Star {
                    m.add(&self.of(self.dom0()));
                }
                m
            }
        };
        m
    }

    /// The name numbered `i`.
    fn name(&self, i: usize) -> Option<String> {
        if let Some(q) = self.qubes.get(i) {
            return Some((*q).to_owned());
        }
        let fixed = [
            (self.extra_dom0, "dom0"),
            (Some(self.adminvm), "@adminvm"),
            (Some(self.dispvm), "@dispvm"),
        ];
        if let Some((_, n)) = fixed.iter().find(|(at, _)| *at == Some(i)) {
            return Some((*n).to_owned());
        }
        let q = self.dispvm_of.iter().position(|t| *t == Some(i))?;
        self.qubes.get(q).map(|q| format!("@dispvm:{q}"))
    }

    /// The names in `mask`.
    pub fn names(&self, mask: &Mask) -> Vec<String> {
        mask.members().filter_map(|i| self.name(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::token::Ctx;

    #[test]
    fn a_mask_holds_what_expand_gives() {
        let system: System = serde_json::from_value(serde_json::json!({"domains": {
            "dom0": {"type": "AdminVM", "tags": ["t"], "uuid": "00000000-0000-0000-0000-000000000000"},
            "a": {"type": "AppVM", "tags": ["t", "u"], "uuid": "11111111-0000-0000-0000-000000000000", "template_for_dispvms": true},
            "b": {"type": "TemplateVM", "tags": ["u"], "template_for_dispvms": false},
            "c": {"type": "AppVM", "tags": [], "template_for_dispvms": true},
        }}))
        .unwrap();
        let tokens: Vec<Token> = [
            "a",
            "dom0",
            "nope",
            "uuid:11111111-0000-0000-0000-000000000000",
            "@adminvm",
            "@anyvm",
            "*",
            "@default",
            "@dispvm",
            "@dispvm:a",
            "@dispvm:b",
            "@dispvm:@tag:t",
            "@tag:t",
            "@tag:u",
            "@type:AppVM",
            "@type:AdminVM",
        ]
        .iter()
        .map(|t| Token::parse(t, Ctx::Target).unwrap())
        .collect();
        let mut u = Universe::new(&system);
        for token in &tokens {
            let t = token.to_string();
            let want: BTreeSet<String> = token.expand(&system);
            let m = u.mask(token);
            let got: BTreeSet<String> = u.names(&m).into_iter().collect();
            assert_eq!(got, want, "{t}");
            // Memoized masks are the same.
            assert_eq!(u.mask_numbered(3, token), &m, "{t}");
            u.memo.clear();
        }
    }
}
