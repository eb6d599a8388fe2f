//! The `key='value'` property lists of device and assignment serializations.
//!
//! Escaping is upstream's: only `'` becomes `\'`. Parsing follows upstream's
//! algorithm, so any list upstream produces parses the same way, and keys
//! may come in any order.

use crate::DecodeError;

/// Characters allowed in a property name (upstream's set).
fn key_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&()*+,-./:;<>?@[\\]^_{|}~".contains(c)
}

/// Characters allowed in a property value: printable ASCII.
fn value_char_ok(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// Appends ` key='value'` (without the leading space for the first entry).
///
/// A value ending in `=` is refused: followed by the closing quote it reads
/// as a `='` separator, so no client (upstream's parser included) could
/// read it back.
pub fn pack(out: &mut String, key: &str, value: &str) -> Result<(), DecodeError> {
    if key.is_empty() || !key.chars().all(key_char_ok) {
        return Err(DecodeError::InvalidPropertyName(key.to_owned()));
    }
    if !value.chars().all(value_char_ok) || value.ends_with('=') {
        return Err(DecodeError::InvalidPropertyValue(key.to_owned()));
    }
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(key);
    out.push_str("='");
    out.push_str(&value.replace('\'', "\\'"));
    out.push('\'');
    Ok(())
}

/// The parsed list: plain properties, and options (keys that started with `_`,
/// stored without it). Later duplicates replace earlier ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Properties {
    pub properties: Vec<(String, String)>,
    pub options: Vec<(String, String)>,
}

impl Properties {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn insert(&mut self, key: String, value: String) -> Result<(), DecodeError> {
        if let Some((k, v)) = key
            .split_once('=')
            .filter(|(k, _)| !k.is_empty() && k.chars().all(key_char_ok))
        {
            return Err(DecodeError::UnquotedValue(format!("{k}={v}")));
        }
        if key.is_empty() || !key.chars().all(key_char_ok) {
            return Err(DecodeError::InvalidPropertyName(key));
        }
        if !value.chars().all(value_char_ok) {
            return Err(DecodeError::InvalidPropertyValue(key));
        }
        let (list, key) = match key.strip_prefix('_') {
            Some(opt) if !opt.is_empty() => (&mut self.options, opt.to_owned()),
            _ => (&mut self.properties, key),
        };
        match list.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => list.push((key, value)),
        }
        Ok(())
    }
}

/// Parses a property list, as upstream's `unpack_properties` does.
pub fn unpack(untrusted: &[u8]) -> Result<Properties, DecodeError> {
    let text = std::str::from_utf8(untrusted)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or(DecodeError::NotAscii)?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let mut props = Properties::default();
    if text.is_empty() {
        return Ok(props);
    }
    let (key0, mut rest) = match text.split_once("='") {
        Some((k, r)) => (k, r),
        None => (text, ""),
    };
    let mut key = key0.trim().to_owned();
    while let Some((chunk, after)) = rest.split_once("='") {
        let (value, next_key) = chunk.rsplit_once("' ").ok_or(DecodeError::MalformedProperties)?;
        props.insert(std::mem::take(&mut key), unescape(value))?;
        key = next_key.trim().to_owned();
        rest = after;
    }
    // The last value runs to the end, which must be the closing quote.
    let last = match rest.strip_suffix('\'') {
        Some(v) => v,
        None if rest.is_empty() => "",
        None => return Err(DecodeError::MalformedProperties),
    };
    props.insert(key, unescape(last))?;
    Ok(props)
}

fn unescape(v: &str) -> String {
    v.replace("\\'", "'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn upstream_example() {
        let p = unpack(b"device_id='0x8086:0x8cb1::p0c0330' port_id='00_14.0' devclass='pci' backend_domain='dom0' mode='required' frontend_domain='work' _no-strict-reset='True'").unwrap();
        assert_eq!(p.get("port_id"), Some("00_14.0"));
        assert_eq!(p.get("mode"), Some("required"));
        assert_eq!(p.options, vec![("no-strict-reset".to_owned(), "True".to_owned())]);
    }

    #[test]
    fn double_space_and_escapes() {
        let p = unpack(b"a='x'  b='it\\'s' c=''").unwrap();
        assert_eq!(p.get("a"), Some("x"));
        assert_eq!(p.get("b"), Some("it's"));
        assert_eq!(p.get("c"), Some(""));
    }

    #[test]
    fn bare_word_is_a_key_with_empty_value() {
        assert_eq!(unpack(b"required").unwrap().get("required"), Some(""));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(unpack("a='\u{e9}'".as_bytes()).is_err());
        assert!(unpack(b"a='x\ny'").is_err());
        assert!(unpack(b"a b='x'").is_err());
        assert!(unpack(b"a='x").is_err());
        let mut s = String::new();
        assert!(pack(&mut s, "a b", "x").is_err());
        assert!(pack(&mut s, "a", "x\ty").is_err());
        assert!(pack(&mut s, "a", "x=").is_err());
    }

    fn key() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&()*+,./:;<>?@\\[\\]^{|}~-][A-Za-z0-9!#$%&()*+,./:;<>?@\\[\\]^_{|}~-]{0,12}"
    }

    proptest! {
        #[test]
        fn roundtrip(entries in proptest::collection::btree_map(key(), "([ -~]{0,20}[ -<>-~])?", 0..6)) {
            let mut s = String::new();
            for (k, v) in &entries {
                pack(&mut s, k, v).unwrap();
            }
            let parsed = unpack(s.as_bytes()).unwrap();
            let got: std::collections::BTreeMap<String, String> = parsed.properties.into_iter().collect();
            prop_assert_eq!(got, entries);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = unpack(&bytes);
        }
    }
}
