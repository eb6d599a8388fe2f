//! Loading policy files into one flat, ordered rule list.

use std::collections::BTreeMap;

use rustc_hash::FxHashSet as HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::RuleIndex;
use super::token::{Ctx, Name, Token};

/// The legacy (R4.0) per-service policy directory, for `!compat-4.0`.
pub const COMPAT_DIR: &str = "/etc/qubes-rpc/policy";

/// How deep includes may nest; deeper is reported as an include loop.
const MAX_DEPTH: usize = 32;
/// The most file loads one policy may take (includes of includes count
/// each time): a chain of files that each include the next one twice is
/// exponential within the depth bound.
pub const MAX_LOADS: usize = 4096;
/// The most rules one policy may have.
pub const MAX_RULES: usize = 500_000;

/// A policy that cannot be loaded: file and line where known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// What the loader reads: the real filesystem, or an in-memory set of
/// files (where include paths are looked up verbatim, as upstream's
/// `StringPolicy`).
pub trait PolicyFs {
    /// The path an include names, relative to the top-level file's directory.
    fn resolve(&self, policy_dir: &Path, path: &str) -> PathBuf;
    fn read(&self, path: &Path) -> std::io::Result<String>;
    fn is_file(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    /// The entries of a directory (names only).
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>>;
}

/// The real filesystem.
pub struct DiskFs;

impl PolicyFs for DiskFs {
    /// Lexically, so that a rule's location reads as its directory was
    /// given (`examples/policy.d/include/…`, not an absolute path beside
    /// relative ones); `..` and `.` are folded, so an include loop spelt
    /// two ways is still one file.
    fn resolve(&self, policy_dir: &Path, path: &str) -> PathBuf {
        let mut out = PathBuf::new();
        for c in policy_dir.join(path).components() {
            match c {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir if out.file_name().is_some() => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        let bytes = std::fs::read(path)?;
        String::from_utf8(bytes).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
    }
    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }
}

/// In-memory files keyed by path (for tests and the conformance cases).
#[derive(Default)]
pub struct MemFs {
    pub files: BTreeMap<String, String>,
}

impl PolicyFs for MemFs {
    fn resolve(&self, _policy_dir: &Path, path: &str) -> PathBuf {
        PathBuf::from(path)
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(&path.to_string_lossy().into_owned())
            .cloned()
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }
    fn is_file(&self, path: &Path) -> bool {
        self.files.contains_key(&path.to_string_lossy().into_owned())
    }
    fn is_dir(&self, path: &Path) -> bool {
        let prefix = format!("{}/", path.display());
        self.files.keys().any(|k| k.starts_with(&prefix))
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let prefix = format!("{}/", dir.display());
        let out: Vec<String> = self
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect();
        if out.is_empty() {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        Ok(out)
    }
}

/// `allow`, `deny` or `ask` with their parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Deny {
        notify: bool,
    },
    Allow {
        target: Option<Token>,
        user: Option<String>,
        notify: bool,
        autostart: bool,
    },
    Ask {
        target: Option<Token>,
        default_target: Option<Token>,
        user: Option<String>,
        notify: bool,
        autostart: bool,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Deny { .. } => "deny",
            Action::Allow { .. } => "allow",
            Action::Ask { .. } => "ask",
        }
    }

    pub fn redirect(&self) -> Option<&Token> {
        match self {
            Action::Allow { target, .. } | Action::Ask { target, .. } => target.as_ref(),
            Action::Deny { .. } => None,
        }
    }

    pub fn notify(&self) -> bool {
        match self {
            Action::Deny { notify } | Action::Allow { notify, .. } | Action::Ask { notify, .. } => *notify,
        }
    }
}

/// One rule of the flattened list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `None` is `*`.
    pub service: Option<Name>,
    /// `None` is `*`; otherwise starts with `+`.
    pub argument: Option<Name>,
    pub source: Token,
    pub target: Token,
    /// Shared by every rule with the same action and parameters.
    pub action: Arc<Action>,
    /// Shared by every rule of the file.
    pub file: Name,
    pub lineno: usize,
}

impl Rule {
    /// `FILE:LINE` of the rule.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.lineno)
    }
}

impl fmt::Display for Rule {
    /// The canonical tab-separated form (`notify` and `autostart` are not
    /// part of it, as upstream).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}",
            self.service.as_deref().unwrap_or("*"),
            self.argument.as_deref().unwrap_or("*"),
            self.source,
            self.target,
            self.action.name()
        )?;
        let (target, default_target, user) = match &*self.action {
            Action::Deny { .. } => (None, None, None),
            Action::Allow { target, user, .. } => (target.as_ref(), None, user.as_ref()),
            Action::Ask {
                target,
                default_target,
                user,
                ..
            } => (target.as_ref(), default_target.as_ref(), user.as_ref()),
        };
        if let Some(t) = target {
            write!(f, " target={t}")?;
        }
        if let Some(t) = default_target {
            write!(f, " default_target={t}")?;
        }
        if let Some(u) = user {
            write!(f, " user={u}")?;
        }
        Ok(())
    }
}

/// The fields of a line, without a heap allocation for a line of up to
/// [`Fields::FEW`] fields (every valid rule has at most ten).
enum Fields<'a> {
    Few([&'a str; Fields::FEW], usize),
    Many(Vec<&'a str>),
}

impl Fields<'_> {
    const FEW: usize = 12;
}

impl<'a> std::ops::Deref for Fields<'a> {
    type Target = [&'a str];
    fn deref(&self) -> &[&'a str] {
        match self {
            Fields::Few(a, n) => a.get(..*n).unwrap_or_default(),
            Fields::Many(v) => v,
        }
    }
}

impl<'a> Fields<'a> {
    fn collect(mut it: impl Iterator<Item = &'a str>) -> Fields<'a> {
        let mut few = [""; Fields::FEW];
        let mut n = 0;
        for slot in &mut few {
            match it.next() {
                Some(f) => {
                    *slot = f;
                    n += 1;
                }
                None => return Fields::Few(few, n),
            }
        }
        match it.next() {
            None => Fields::Few(few, n),
            Some(f) => Fields::Many(few.into_iter().chain([f]).chain(it).collect()),
        }
    }
}

/// The whitespace-separated fields of a line, as Python's `str.split()`
/// with no argument gives them for the characters Rust counts as
/// whitespace; ASCII lines (nearly all) take a byte-wise fast path.
fn fields(line: &str) -> Fields<'_> {
    fields_split(line, false)
}

/// [`fields`], with `,` a separator too when `commas` (the legacy syntax).
fn fields_split(line: &str, commas: bool) -> Fields<'_> {
    Fields::collect(field_iter(line, commas))
}

/// The fields of [`fields_split`], one at a time.
fn field_iter(line: &str, commas: bool) -> FieldIter<'_> {
    if !line.is_ascii() {
        // Non-ASCII lines are rare (and never a valid rule).
        let separates = move |c: char| c.is_whitespace() || (commas && c == ',');
        let all: Vec<&str> = line.split(separates).filter(|f| !f.is_empty()).collect();
        return FieldIter::Other(all.into_iter());
    }
    FieldIter::Ascii(AsciiFields { line, pos: 0, commas })
}

enum FieldIter<'a> {
    Ascii(AsciiFields<'a>),
    Other(std::vec::IntoIter<&'a str>),
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        match self {
            FieldIter::Ascii(a) => a.next(),
            FieldIter::Other(o) => o.next(),
        }
    }
}

/// The next `N` fields, or `None` when the line has fewer.
fn next_fields<'a, const N: usize>(it: &mut impl Iterator<Item = &'a str>) -> Option<[&'a str; N]> {
    let mut out = [""; N];
    for slot in &mut out {
        *slot = it.next()?;
    }
    Some(out)
}

/// The rest of `line` from `field` (a slice of it) on.
fn from_field<'a>(line: &'a str, field: &str) -> &'a str {
    let offset = (field.as_ptr() as usize).saturating_sub(line.as_ptr() as usize);
    line.get(offset..).unwrap_or_default()
}

/// The fields of an ASCII line, byte by byte. `split_ascii_whitespace`
/// would leave out vertical tab (0x0b), which Rust's (and Python's)
/// whitespace includes.
struct AsciiFields<'a> {
    line: &'a str,
    pos: usize,
    commas: bool,
}

impl AsciiFields<'_> {
    /// Space, tab, line feed, vertical tab, form feed, carriage return;
    /// and `,` in the legacy syntax.
    fn separates(&self, b: u8) -> bool {
        b == b' ' || b.wrapping_sub(b'\t') < 5 || (self.commas && b == b',')
    }
}

impl<'a> Iterator for AsciiFields<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.line.as_bytes();
        let mut start = self.pos;
        while bytes.get(start).is_some_and(|&b| self.separates(b)) {
            start += 1;
        }
        if start >= bytes.len() {
            self.pos = start;
            return None;
        }
        let mut end = start + 1;
        while bytes.get(end).is_some_and(|&b| !self.separates(b)) {
            end += 1;
        }
        self.pos = end;
        // ASCII: every byte offset is a character boundary.
        self.line.get(start..end)
    }
}

fn rpcname_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_'))
}

/// Validates a rule's service and argument columns.
pub fn parse_service_argument<'a>(
    service: &'a str,
    argument: &'a str,
) -> Result<(Option<&'a str>, Option<&'a str>), String> {
    let service = match service {
        "*" => None,
        s if !s.is_empty() && rpcname_ok(s) && !s.contains('+') => Some(s),
        s => return Err(format!("service {s:?} contains invalid characters")),
    };
    let argument = match argument {
        "*" => None,
        a if !rpcname_ok(a) => return Err(format!("argument {a:?} contains invalid characters")),
        a if !a.starts_with('+') => return Err(format!("argument {a:?} does not start with +")),
        a => Some(a),
    };
    if service.is_none() && argument.is_some() {
        return Err("only * argument allowed for * service".to_owned());
    }
    Ok((service, argument))
}

fn yes_no(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("{key}= may only be yes or no, not {v:?}")),
    }
}

/// The parameters an action may take, in the order of [`PARAM_KEYS`].
const PARAM_KEYS: [&str; 5] = ["target", "default_target", "user", "notify", "autostart"];

/// Parses `ACTION [PARAM=VALUE …]` for a rule whose TARGET column is `target`.
pub fn parse_action(action: &str, params: &[&str], target: &Token) -> Result<Action, String> {
    parse_action_with(action, params, target, &mut |s| Name::from(s))
}

/// [`parse_action`], taking each name through `name` (the loader's interner).
fn parse_action_with(
    action: &str,
    params: &[&str],
    target: &Token,
    name: &mut dyn FnMut(&str) -> Name,
) -> Result<Action, String> {
    // Known keys in their slots; any other key (an error below) in `unknown`.
    let mut known: [Option<&str>; PARAM_KEYS.len()] = [None; PARAM_KEYS.len()];
    let mut unknown: Vec<&str> = Vec::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("invalid action parameter syntax: {p:?}"))?;
        let slot = PARAM_KEYS
            .iter()
            .position(|key| *key == k)
            .and_then(|i| known.get_mut(i));
        let given_twice = match slot {
            Some(slot) => slot.replace(v).is_some(),
            None if unknown.contains(&k) => true,
            None => {
                unknown.push(k);
                false
            }
        };
        if given_twice {
            return Err(format!("parameter given twice: {k}"));
        }
    }
    let get = |key: &str| {
        PARAM_KEYS
            .iter()
            .position(|k| *k == key)
            .and_then(|i| known.get(i).copied().flatten())
    };
    let allowed: &[&str] = match action {
        "deny" => &["notify"],
        "allow" => &["target", "user", "notify", "autostart"],
        "ask" => &PARAM_KEYS,
        other => return Err(format!("invalid action: {other:?}")),
    };
    unknown.extend(PARAM_KEYS.iter().filter(|k| !allowed.contains(k) && get(k).is_some()));
    unknown.sort_unstable();
    if !unknown.is_empty() {
        return Err(format!("invalid parameters for action {action}: {unknown:?}"));
    }
    let notify = get("notify").map(|v| yes_no("notify", v)).transpose()?;
    let autostart = get("autostart")
        .map(|v| yes_no("autostart", v))
        .transpose()?
        .unwrap_or(true);
    let mut redirect = |k: &str| get(k).map(|v| Token::parse_with(v, Ctx::Redirect, name)).transpose();
    let user = get("user").filter(|u| !u.is_empty()).map(str::to_owned);
    Ok(match action {
        "deny" => Action::Deny {
            notify: notify.unwrap_or(true),
        },
        "allow" => {
            let t = redirect("target")?;
            if *target == Token::Default && t.is_none() {
                return Err("allow action for @default rule must specify target= option".to_owned());
            }
            Action::Allow {
                target: t,
                user,
                notify: notify.unwrap_or(false),
                autostart,
            }
        }
        _ => Action::Ask {
            target: redirect("target")?,
            default_target: redirect("default_target")?,
            user,
            notify: notify.unwrap_or(false),
            autostart,
        },
    })
}

/// The flattened policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// The rules by service and argument, for evaluation.
    pub index: RuleIndex,
    /// Every file read and every directory listed to build it (includes,
    /// `!include-dir` directories and the `!compat-4.0` directory too), for
    /// knowing when it is out of date.
    pub files: Vec<PathBuf>,
}

struct Loader<'a> {
    fs: &'a dyn PolicyFs,
    rules: Vec<Rule>,
    files: Vec<PathBuf>,
    /// Files loaded so far (see [`MAX_LOADS`]).
    loads: usize,
    stack: Vec<PathBuf>,
    compat_dir: PathBuf,
    /// One shared copy of each service, argument, file name and name in a
    /// token.
    names: HashSet<Name>,
    /// One shared copy of each action, by its text (the line from the
    /// action on), the syntax (commas separate) and whether the rule's
    /// target is `@default`.
    actions: ActionCache,
    /// `Some` when every error is collected and loading goes on (lint);
    /// `None` when the first error ends the load.
    errors: Option<Vec<PolicyError>>,
}

impl<'a> Loader<'a> {
    fn new(fs: &'a dyn PolicyFs, compat_dir: &Path) -> Loader<'a> {
        Loader {
            fs,
            rules: Vec::new(),
            files: Vec::new(),
            loads: 0,
            stack: Vec::new(),
            compat_dir: compat_dir.to_owned(),
            names: HashSet::default(),
            actions: ActionCache::default(),
            errors: None,
        }
    }

    /// Records `e` and goes on when collecting; otherwise returns it.
    fn fail(&mut self, e: PolicyError) -> Result<(), PolicyError> {
        match &mut self.errors {
            Some(all) => {
                all.push(e);
                Ok(())
            }
            None => Err(e),
        }
    }

    fn intern(&mut self, s: &str) -> Name {
        intern(&mut self.names, s)
    }

    fn finish(self) -> Policy {
        Policy {
            index: RuleIndex::build(&self.rules),
            rules: self.rules,
            files: self.files,
        }
    }
}

/// Parsed actions by their text, then by the two flags; see
/// [`Loader::actions`].
#[derive(Default)]
struct ActionCache(rustc_hash::FxHashMap<String, Vec<(bool, bool, Arc<Action>)>>);

impl ActionCache {
    fn get(&self, (text, commas, default): &(&str, bool, bool)) -> Option<&Arc<Action>> {
        self.0
            .get(*text)?
            .iter()
            .find(|(c, d, _)| c == commas && d == default)
            .map(|(_, _, a)| a)
    }
    fn insert(&mut self, (text, commas, default): (String, bool, bool), action: Arc<Action>) {
        self.0.entry(text).or_default().push((commas, default, action));
    }
}

/// The one shared copy of `s` in `names`.
fn intern(names: &mut HashSet<Name>, s: &str) -> Name {
    if let Some(a) = names.get(s) {
        return a.clone();
    }
    let a = Name::from(s);
    names.insert(a.clone());
    a
}

/// The service and argument an old-syntax file is bound to (interned).
type Binding = (Option<Name>, Option<Name>);

/// Whether a file in a policy directory counts, and whether its name is valid.
fn policy_file_name(name: &str) -> Option<Result<(), String>> {
    if !name.ends_with(".policy") || name.starts_with('.') {
        return None;
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || matches!(b, b'_' | b'.' | b'-'));
    Some(if ok {
        Ok(())
    } else {
        Err(format!("invalid filename: {name}"))
    })
}

impl Policy {
    /// Loads the policy directories: files merged by name (an earlier
    /// directory shadows a later one), sorted by name, each file's includes
    /// resolved against its own directory.
    pub fn load_dirs(dirs: &[PathBuf]) -> Result<Policy, PolicyError> {
        Policy::load_dirs_with(&DiskFs, dirs, Path::new(COMPAT_DIR))
    }

    pub fn load_dirs_with(fs: &dyn PolicyFs, dirs: &[PathBuf], compat_dir: &Path) -> Result<Policy, PolicyError> {
        let mut loader = Loader::new(fs, compat_dir);
        loader.load_dirs(dirs)?;
        Ok(loader.finish())
    }

    /// Loads the policy directories the way qrexec would, but goes on past
    /// errors: the rules that load, and every error found (for `policy
    /// lint`). No error means the policy loads.
    pub fn lint_dirs(dirs: &[PathBuf]) -> (Policy, Vec<PolicyError>) {
        let mut loader = Loader::new(&DiskFs, Path::new(COMPAT_DIR));
        loader.errors = Some(Vec::new());
        if let Err(e) = loader.load_dirs(dirs) {
            loader.errors.get_or_insert_with(Vec::new).push(e);
        }
        let errors = loader.errors.take().unwrap_or_default();
        (loader.finish(), errors)
    }

    /// Loads one entry file (`__main__` style) from any filesystem.
    pub fn load_entry(fs: &dyn PolicyFs, entry: &Path, compat_dir: &Path) -> Result<Policy, PolicyError> {
        let mut loader = Loader::new(fs, compat_dir);
        let dir = entry.parent().unwrap_or(Path::new("")).to_owned();
        loader.load_file(entry, &dir, None)?;
        Ok(loader.finish())
    }

    /// Parses policy text given directly (one file).
    pub fn parse_text(text: &str, name: &str) -> Result<Policy, PolicyError> {
        let fs = MemFs {
            files: [(name.to_owned(), text.to_owned())].into(),
        };
        Policy::load_entry(&fs, Path::new(name), Path::new(COMPAT_DIR))
    }
}

impl Loader<'_> {
    /// Every `*.policy` file of `dirs`, merged by name (an earlier directory
    /// shadows a later one), in name order.
    fn load_dirs(&mut self, dirs: &[PathBuf]) -> Result<(), PolicyError> {
        let fs = self.fs;
        let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in dirs {
            let names = match fs.list(dir) {
                Ok(n) => n,
                Err(e) => {
                    self.fail(PolicyError {
                        file: dir.display().to_string(),
                        line: None,
                        message: format!("failed to load policy directory: {e}"),
                    })?;
                    continue;
                }
            };
            for name in names {
                let path = dir.join(&name);
                match policy_file_name(&name) {
                    None => continue,
                    Some(Err(message)) => self.fail(PolicyError {
                        file: path.display().to_string(),
                        line: None,
                        message,
                    })?,
                    Some(Ok(())) if !fs.is_file(&path) => continue,
                    Some(Ok(())) => {
                        by_name.entry(name).or_insert(path);
                    }
                }
            }
        }
        for path in by_name.values() {
            let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
            if let Err(e) = self.load_file(path, &dir, None) {
                self.fail(e)?;
            }
        }
        Ok(())
    }

    /// Loads a file; `service` set means old per-service syntax bound to it.
    fn load_file(&mut self, path: &Path, policy_dir: &Path, service: Option<&Binding>) -> Result<(), PolicyError> {
        let file = path.display().to_string();
        let err = |line: Option<usize>, message: String| PolicyError {
            file: file.clone(),
            line,
            message,
        };
        if self.stack.iter().any(|p| p == path) || self.stack.len() >= MAX_DEPTH {
            return Err(err(
                None,
                "include loop: the file includes itself, directly or indirectly".to_owned(),
            ));
        }
        self.loads += 1;
        if self.loads > MAX_LOADS {
            return Err(err(
                None,
                format!(
                    "the policy loads more than {MAX_LOADS} files: an !include chain that includes files \
                     several times grows exponentially; include each file once"
                ),
            ));
        }
        let text = self
            .fs
            .read(path)
            .map_err(|e| err(None, format!("failed to read policy file: {e}")))?;
        if !self.files.iter().any(|f| f == path) {
            self.files.push(path.to_owned());
        }
        self.stack.push(path.to_owned());
        let name = self.intern(&file);
        let result = self.load_lines(&text, &name, policy_dir, service);
        self.stack.pop();
        result
    }

    fn load_lines(
        &mut self,
        text: &str,
        file: &Name,
        policy_dir: &Path,
        service: Option<&Binding>,
    ) -> Result<(), PolicyError> {
        // Python's universal newlines: "\r\n", "\r" and "\n" all end a line.
        let text = if memchr::memchr(b'\r', text.as_bytes()).is_some() {
            std::borrow::Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
        } else {
            std::borrow::Cow::Borrowed(text)
        };
        // Room for a rule per line at most, in one step.
        let lines = memchr::memchr_iter(b'\n', text.as_bytes()).count() + 1;
        self.rules
            .reserve(lines.min(MAX_RULES.saturating_sub(self.rules.len())));
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', text.as_bytes()).chain([text.len()]);
        for (i, end) in ends.enumerate() {
            let lineno = i + 1;
            let raw = text.get(start..end).unwrap_or_default();
            start = end + 1;
            // A line that begins and ends with printable ASCII needs no trim.
            let printable = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_graphic());
            let bytes = raw.as_bytes();
            let line = if printable(bytes.first()) && printable(bytes.last()) {
                raw
            } else {
                raw.trim()
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| PolicyError {
                file: file.to_string(),
                line: Some(lineno),
                message,
            };
            let parsed = match service {
                None => self.new_syntax_line(line, file, lineno, policy_dir),
                Some(binding) => self.old_syntax_line(line, file, lineno, policy_dir, binding),
            };
            if let Err(e) = parsed {
                self.fail(err(e))?;
            }
        }
        Ok(())
    }

    fn include(&mut self, policy_dir: &Path, path: &str, service: Option<&Binding>) -> Result<(), String> {
        let p = self.fs.resolve(policy_dir, path);
        if !self.fs.is_file(&p) {
            return Err(format!("not a file: {path}"));
        }
        self.load_file(&p, policy_dir, service)
            .map_err(|e| format!("in included file: {e}"))
    }

    fn new_syntax_line(&mut self, line: &str, file: &Name, lineno: usize, policy_dir: &Path) -> Result<(), String> {
        if line.starts_with('!') {
            let fields = fields(line);
            let (directive, params) = fields.split_first().ok_or("empty directive")?;
            let count = |n: usize| {
                if params.len() == n {
                    Ok(())
                } else {
                    Err("invalid number of params".to_owned())
                }
            };
            return match *directive {
                "!include" => {
                    count(1)?;
                    self.include(policy_dir, params.first().copied().unwrap_or_default(), None)
                }
                "!include-dir" => {
                    count(1)?;
                    self.include_dir(policy_dir, params.first().copied().unwrap_or_default())
                }
                "!include-service" => {
                    count(3)?;
                    let [svc, arg, path] = [0, 1, 2].map(|i| params.get(i).copied().unwrap_or_default());
                    let (svc, arg) = parse_service_argument(svc, arg)?;
                    let binding = (svc.map(|s| self.intern(s)), arg.map(|a| self.intern(a)));
                    self.include(policy_dir, path, Some(&binding))
                }
                "!compat-4.0" => {
                    count(0)?;
                    tracing::warn!(
                        "{file}:{lineno}: !compat-4.0 is deprecated; move the rules to the new policy format"
                    );
                    self.compat()
                }
                other => Err(format!("invalid directive: {other}")),
            };
        }
        let mut it = field_iter(line, false);
        let Some([service, argument, source, target, action]) = next_fields(&mut it) else {
            return Err("wrong number of fields".to_owned());
        };
        let (service, argument) = parse_service_argument(service, argument)?;
        let service = service.map(|s| self.intern(s));
        let argument = argument.map(|a| self.intern(a));
        let tail = from_field(line, action);
        self.push_rule(service, argument, source, target, (tail, false), file, lineno)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_rule(
        &mut self,
        service: Option<Name>,
        argument: Option<Name>,
        source: &str,
        target: &str,
        (tail, commas): (&str, bool),
        file: &Name,
        lineno: usize,
    ) -> Result<(), String> {
        if self.rules.len() >= MAX_RULES {
            return Err(format!("the policy has more than {MAX_RULES} rules"));
        }
        let names = &mut self.names;
        let mut name = |s: &str| intern(names, s);
        let source = Token::parse_with(source, Ctx::Source, &mut name)?;
        let target = Token::parse_with(target, Ctx::Target, &mut name)?;
        // The same action text parses the same way (given whether the
        // target is `@default`): most rules repeat a handful of actions.
        let key = (tail, commas, target == Token::Default);
        let action = match self.actions.get(&key) {
            Some(shared) => shared.clone(),
            None => {
                let mut fields = field_iter(tail, commas);
                let action_name = fields.next().unwrap_or_default();
                let params = Fields::collect(fields);
                let shared = Arc::new(parse_action_with(action_name, &params, &target, &mut name)?);
                self.actions.insert((tail.to_owned(), commas, key.2), shared.clone());
                shared
            }
        };
        let file = file.clone();
        self.rules.push(Rule {
            service,
            argument,
            source,
            target,
            action,
            file,
            lineno,
        });
        Ok(())
    }

    fn old_syntax_line(
        &mut self,
        line: &str,
        file: &Name,
        lineno: usize,
        policy_dir: &Path,
        binding: &Binding,
    ) -> Result<(), String> {
        // `$` for `@` (and `$include:` for `!include`) needs a copy; commas
        // separate like spaces, without one.
        let line = if memchr::memchr(b'$', line.as_bytes()).is_some() {
            std::borrow::Cow::Owned(line.replace("$include:", "!include ").replace('$', "@"))
        } else {
            std::borrow::Cow::Borrowed(line)
        };
        if line.starts_with('!') {
            let fields = fields_split(&line, true);
            return match &*fields {
                ["!include", path] => self.include(policy_dir, path, Some(binding)),
                ["!include", ..] => Err("invalid number of params".to_owned()),
                _ => Err(format!(
                    "invalid directive: {}",
                    fields.first().copied().unwrap_or_default()
                )),
            };
        }
        let mut it = field_iter(&line, true);
        let Some([source, target, action]) = next_fields(&mut it) else {
            return Err("wrong number of fields".to_owned());
        };
        let tail = from_field(&line, action);
        self.push_rule(
            binding.0.clone(),
            binding.1.clone(),
            source,
            target,
            (tail, true),
            file,
            lineno,
        )
    }

    fn include_dir(&mut self, policy_dir: &Path, path: &str) -> Result<(), String> {
        let dir = self.fs.resolve(policy_dir, path);
        // Watched as it is: a file added to it changes the policy.
        if !self.files.contains(&dir) {
            self.files.push(dir.clone());
        }
        if !self.fs.is_dir(&dir) {
            return Err(format!("not a directory: {path}"));
        }
        let mut names = self.fs.list(&dir).map_err(|e| format!("cannot list {path}: {e}"))?;
        names.sort();
        for name in names {
            match policy_file_name(&name) {
                None => continue,
                Some(Err(e)) => return Err(e),
                Some(Ok(())) => {
                    let p = dir.join(&name);
                    if self.fs.is_file(&p) {
                        self.load_file(&p, policy_dir, None)
                            .map_err(|e| format!("in included file: {e}"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `!compat-4.0`: the legacy per-service files, each bound to its
    /// service and argument, a specific argument followed by two deny rules.
    fn compat(&mut self) -> Result<(), String> {
        let compat_dir = self.compat_dir.clone();
        // Watched whether it exists or not: creating it changes the policy.
        if !self.files.contains(&compat_dir) {
            self.files.push(compat_dir.clone());
        }
        let Ok(names) = self.fs.list(&compat_dir) else {
            return Ok(());
        };
        let mut entries: Vec<(String, Option<String>, String)> = names
            .into_iter()
            .filter(|n| {
                !n.starts_with('.')
                    && ![".rpmsave", ".rpmnew", ".swp"].iter().any(|s| n.ends_with(s))
                    && rpcname_ok(n)
                    && self.fs.is_file(&compat_dir.join(n))
            })
            .map(|n| match n.split_once('+') {
                Some((s, a)) => (s.to_owned(), Some(format!("+{a}")), n.clone()),
                None => (n.clone(), None, n.clone()),
            })
            .collect();
        // By service, then specific arguments before `*`.
        entries.sort_by(|a, b| (&a.0, a.1.is_none(), &a.1).cmp(&(&b.0, b.1.is_none(), &b.1)));
        for (service, argument, name) in entries {
            let path = compat_dir.join(&name);
            let binding = (Some(self.intern(&service)), argument.as_deref().map(|a| self.intern(a)));
            self.load_file(&path, &compat_dir, Some(&binding))
                .map_err(|e| format!("in legacy policy: {e}"))?;
            if argument.is_some() {
                let file = self.intern(&path.display().to_string());
                let (service, argument) = binding;
                for target in [Token::AnyVm, Token::AdminVm] {
                    self.rules.push(Rule {
                        service: service.clone(),
                        argument: argument.clone(),
                        source: Token::AnyVm,
                        target,
                        action: Arc::new(Action::Deny { notify: true }),
                        file: file.clone(),
                        lineno: 0,
                    });
                }
            }
        }
        Ok(())
    }
}
