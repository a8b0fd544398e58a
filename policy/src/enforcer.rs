//! The `policy.enforcer` value: a set of AppArmor, BPF and Seccomp.

use std::fmt;

/// A non-empty set of enforcers.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct EnforcerSet {
    /// AppArmor LSM.
    pub apparmor: bool,
    /// BPF LSM.
    pub bpf: bool,
    /// Seccomp.
    pub seccomp: bool,
}

/// The seven accepted spellings, in documentation order.
pub const ENFORCER_VALUES: [&str; 7] = [
    "AppArmor",
    "BPF",
    "Seccomp",
    "AppArmorBPF",
    "AppArmorSeccomp",
    "BPFSeccomp",
    "AppArmorBPFSeccomp",
];

impl EnforcerSet {
    /// AppArmor only.
    pub const APPARMOR: EnforcerSet = EnforcerSet {
        apparmor: true,
        bpf: false,
        seccomp: false,
    };
    /// BPF only.
    pub const BPF: EnforcerSet = EnforcerSet {
        apparmor: false,
        bpf: true,
        seccomp: false,
    };
    /// Seccomp only.
    pub const SECCOMP: EnforcerSet = EnforcerSet {
        apparmor: false,
        bpf: false,
        seccomp: true,
    };

    /// Parses an enforcer value as vArmor does: case-insensitively, as a concatenation of
    /// `apparmor`, `bpf` and `seccomp` (so `AppArmorBPF` and `bpfapparmor` are the same set).
    /// Anything else, including `NetworkProxy`, is an error naming the accepted values.
    pub fn parse(value: &str) -> Result<EnforcerSet, String> {
        let lower = value.trim().to_ascii_lowercase();
        let mut rest = lower.as_str();
        let mut set = EnforcerSet::default();
        if rest.is_empty() {
            return Err(format!("must be one of {}", ENFORCER_VALUES.join(", ")));
        }
        while !rest.is_empty() {
            let (flag, len) = if rest.starts_with("apparmor") {
                (&mut set.apparmor, "apparmor".len())
            } else if rest.starts_with("bpf") {
                (&mut set.bpf, "bpf".len())
            } else if rest.starts_with("seccomp") {
                (&mut set.seccomp, "seccomp".len())
            } else {
                let hint = if lower.contains("networkproxy") {
                    " (the NetworkProxy enforcer is not supported)"
                } else {
                    ""
                };
                return Err(format!(
                    "unknown enforcer {value:?}{hint}; must be one of {}",
                    ENFORCER_VALUES.join(", ")
                ));
            };
            if *flag {
                return Err(format!("enforcer {value:?} names the same enforcer twice"));
            }
            *flag = true;
            rest = &rest[len..];
        }
        Ok(set)
    }

    /// Whether every enforcer of `other` is in `self`.
    pub fn contains(self, other: EnforcerSet) -> bool {
        (!other.apparmor || self.apparmor)
            && (!other.bpf || self.bpf)
            && (!other.seccomp || self.seccomp)
    }

    /// The set as a bit mask (AppArmor 0x1, BPF 0x2, Seccomp 0x4, as vArmor).
    pub fn bits(self) -> u32 {
        u32::from(self.apparmor) | (u32::from(self.bpf) << 1) | (u32::from(self.seccomp) << 2)
    }

    /// The set from a bit mask.
    pub fn from_bits(bits: u32) -> EnforcerSet {
        EnforcerSet {
            apparmor: bits & 1 != 0,
            bpf: bits & 2 != 0,
            seccomp: bits & 4 != 0,
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.bits() == 0
    }
}

impl fmt::Display for EnforcerSet {
    /// The canonical spelling, e.g. `AppArmorBPFSeccomp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.apparmor {
            f.write_str("AppArmor")?;
        }
        if self.bpf {
            f.write_str("BPF")?;
        }
        if self.seccomp {
            f.write_str("Seccomp")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seven_values_case_insensitively() {
        for v in ENFORCER_VALUES {
            let s = EnforcerSet::parse(v).expect(v);
            assert_eq!(s.to_string(), v);
            assert_eq!(EnforcerSet::parse(&v.to_lowercase()), Ok(s));
            assert_eq!(EnforcerSet::parse(&v.to_uppercase()), Ok(s));
        }
        assert_eq!(
            EnforcerSet::parse("BPFAppArmor")
                .map(|s| s.to_string())
                .as_deref(),
            Ok("AppArmorBPF")
        );
    }

    #[test]
    fn rejects_others() {
        assert!(EnforcerSet::parse("").is_err());
        assert!(EnforcerSet::parse("SELinux").is_err());
        assert!(EnforcerSet::parse("BPFBPF")
            .expect_err("twice")
            .contains("twice"));
        assert!(EnforcerSet::parse("NetworkProxy")
            .expect_err("np")
            .contains("not supported"));
    }
}
