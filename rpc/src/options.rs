//! The two options a PCI assignment can carry. Both weaken isolation, so
//! they are only ever on when a caller set them explicitly to `True`.

use serde::{Deserialize, Serialize};

use crate::DecodeError;

/// `no-strict-reset`: start the qube even when the device cannot be reset.
pub const NO_STRICT_RESET: &str = "no-strict-reset";
/// `permissive`: let the qube write the device's whole config space.
pub const PERMISSIVE: &str = "permissive";
/// Every option name the service accepts.
pub const ALL: [&str; 2] = [NO_STRICT_RESET, PERMISSIVE];

/// The options of one assignment. Default: both off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PciOptions {
    pub no_strict_reset: bool,
    pub permissive: bool,
}

impl PciOptions {
    /// Validates `name=value` pairs (names without the leading `_`). Only
    /// the two known names, only `True` or `False`: upstream turns an option
    /// on for any non-empty value, including `False`; here `False` is off.
    pub fn from_pairs(untrusted_pairs: &[(String, String)]) -> Result<PciOptions, DecodeError> {
        let mut out = PciOptions::default();
        for (name, value) in untrusted_pairs {
            if !ALL.contains(&name.as_str()) {
                return Err(DecodeError::UnknownOption(name.clone()));
            }
            let on = match value.as_str() {
                "True" => true,
                "False" => false,
                _ => {
                    return Err(DecodeError::InvalidOptionValue {
                        name: name.clone(),
                        value: value.clone(),
                    })
                }
            };
            match name.as_str() {
                NO_STRICT_RESET => out.no_strict_reset = on,
                PERMISSIVE => out.permissive = on,
                _ => return Err(DecodeError::UnknownOption(name.clone())),
            }
        }
        Ok(out)
    }

    /// The options that are on, as `(name, "True")` pairs in a fixed order.
    pub fn to_pairs(self) -> Vec<(String, String)> {
        self.enabled().map(|n| (n.to_owned(), "True".to_owned())).collect()
    }

    /// Names of the options that are on.
    pub fn enabled(self) -> impl Iterator<Item = &'static str> {
        [(NO_STRICT_RESET, self.no_strict_reset), (PERMISSIVE, self.permissive)]
            .into_iter()
            .filter_map(|(n, on)| on.then_some(n))
    }

    /// Options that `self` turns on and `before` did not have.
    pub fn newly_enabled(self, before: PciOptions) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.no_strict_reset && !before.no_strict_reset {
            out.push(NO_STRICT_RESET);
        }
        if self.permissive && !before.permissive {
            out.push(PERMISSIVE);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn false_means_off_and_only_true_false_accepted() {
        let o = PciOptions::from_pairs(&pairs(&[("no-strict-reset", "False"), ("permissive", "True")])).unwrap();
        assert_eq!(
            o,
            PciOptions {
                no_strict_reset: false,
                permissive: true
            }
        );
        assert_eq!(o.to_pairs(), pairs(&[("permissive", "True")]));
        for bad in [
            ("no-strict-reset", "yes"),
            ("no-strict-reset", ""),
            ("permissive", "true"),
        ] {
            assert!(matches!(
                PciOptions::from_pairs(&pairs(&[bad])),
                Err(DecodeError::InvalidOptionValue { .. })
            ));
        }
        assert!(matches!(
            PciOptions::from_pairs(&pairs(&[("identity", "True")])),
            Err(DecodeError::UnknownOption(_))
        ));
    }

    #[test]
    fn newly_enabled_lists_only_additions() {
        let both = PciOptions {
            no_strict_reset: true,
            permissive: true,
        };
        let nsr = PciOptions {
            no_strict_reset: true,
            permissive: false,
        };
        assert_eq!(both.newly_enabled(nsr), vec![PERMISSIVE]);
        assert!(nsr.newly_enabled(both).is_empty());
    }
}
