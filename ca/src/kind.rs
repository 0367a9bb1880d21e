//! Kinds of identity and their lifetime caps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::Duration;

use crate::duration::{format_duration, HumanDuration};

/// What an identity is. It is the first path segment of the SPIFFE ID and decides the certificate
/// profile (EKU, SANs) and the lifetime cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An outside vendor's engineer servicing a device.
    Vendor,
    /// Hospital clinical staff.
    Clinician,
    /// Hospital security staff (audit, replay, incident response).
    Security,
    /// A Ward administrator.
    Admin,
    /// A Ward gateway (a server identity).
    Gateway,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 5] = [
        Kind::Vendor,
        Kind::Clinician,
        Kind::Security,
        Kind::Admin,
        Kind::Gateway,
    ];

    /// The lowercase name used in SPIFFE IDs, on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vendor => "vendor",
            Kind::Clinician => "clinician",
            Kind::Security => "security",
            Kind::Admin => "admin",
            Kind::Gateway => "gateway",
        }
    }

    /// True for people (every kind but `gateway`): their certificates are client-only and their
    /// lifetime never exceeds [`Caps::PERSON_HARD_MAX`].
    pub fn is_person(self) -> bool {
        !matches!(self, Kind::Gateway)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the [`Kind`]s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {found:?} (expected one of vendor, clinician, security, admin, gateway)")]
pub struct UnknownKind {
    /// What was given.
    pub found: String,
}

impl FromStr for Kind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind {
                found: s.to_owned(),
            })
    }
}

/// The default and maximum certificate lifetime of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindCaps {
    /// Lifetime used when the issuer asks for none.
    pub default: HumanDuration,
    /// Longest lifetime the CA issues and the validator accepts.
    pub max: HumanDuration,
}

impl KindCaps {
    fn new(default: Duration, max: Duration) -> Self {
        Self {
            default: HumanDuration(default),
            max: HumanDuration(max),
        }
    }
}

/// Caps that break the hard rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    /// A default or maximum of zero or less.
    #[error("{kind} {which} lifetime must be longer than zero")]
    NotPositive {
        /// The kind.
        kind: Kind,
        /// `default` or `max`.
        which: &'static str,
    },
    /// A default longer than the maximum.
    #[error("{kind} default lifetime {default} is longer than its cap {max}")]
    DefaultOverMax {
        /// The kind.
        kind: Kind,
        /// The default.
        default: String,
        /// The cap.
        max: String,
    },
    /// A cap above the hard ceiling for its kind (24h for people, 397d for gateways).
    #[error("{kind} cap {max} is above the hard ceiling of {ceiling} for {what}")]
    AboveCeiling {
        /// The kind.
        kind: Kind,
        /// The cap asked for.
        max: String,
        /// The ceiling.
        ceiling: String,
        /// "people" or "gateways".
        what: &'static str,
    },
}

/// Per-kind lifetime defaults and caps, stored in `ca.json` and enforced both when issuing and
/// when validating. Valid by construction: no cap for a person exceeds 24 hours, no gateway cap
/// exceeds 397 days, every default is positive and at most its cap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CapsFile", into = "CapsFile")]
pub struct Caps {
    vendor: KindCaps,
    clinician: KindCaps,
    security: KindCaps,
    admin: KindCaps,
    gateway: KindCaps,
}

/// The on-disk shape of [`Caps`] (checked on the way in).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsFile {
    vendor: KindCaps,
    clinician: KindCaps,
    security: KindCaps,
    admin: KindCaps,
    gateway: KindCaps,
}

impl Caps {
    /// The longest lifetime any person's certificate may ever have.
    pub const PERSON_HARD_MAX: Duration = Duration::hours(24);
    /// The longest lifetime a gateway certificate may ever have (the public-CA limit).
    pub const GATEWAY_HARD_MAX: Duration = Duration::days(397);

    /// The lifetime used when none is asked for.
    pub fn default_ttl(&self, kind: Kind) -> Duration {
        self.get(kind).default.0
    }

    /// The longest lifetime allowed for `kind`.
    pub fn max_ttl(&self, kind: Kind) -> Duration {
        self.get(kind).max.0
    }

    /// The caps of one kind.
    pub fn get(&self, kind: Kind) -> KindCaps {
        match kind {
            Kind::Vendor => self.vendor,
            Kind::Clinician => self.clinician,
            Kind::Security => self.security,
            Kind::Admin => self.admin,
            Kind::Gateway => self.gateway,
        }
    }

    /// Change the default and cap of one kind, refusing values that break the hard rules.
    pub fn set(&mut self, kind: Kind, default: Duration, max: Duration) -> Result<(), CapsError> {
        let caps = KindCaps::new(default, max);
        check(kind, caps)?;
        *self.slot(kind) = caps;
        Ok(())
    }

    fn slot(&mut self, kind: Kind) -> &mut KindCaps {
        match kind {
            Kind::Vendor => &mut self.vendor,
            Kind::Clinician => &mut self.clinician,
            Kind::Security => &mut self.security,
            Kind::Admin => &mut self.admin,
            Kind::Gateway => &mut self.gateway,
        }
    }
}

fn check(kind: Kind, caps: KindCaps) -> Result<(), CapsError> {
    if caps.default.0 <= Duration::ZERO {
        return Err(CapsError::NotPositive {
            kind,
            which: "default",
        });
    }
    if caps.max.0 <= Duration::ZERO {
        return Err(CapsError::NotPositive { kind, which: "max" });
    }
    let (ceiling, what) = if kind.is_person() {
        (Caps::PERSON_HARD_MAX, "people")
    } else {
        (Caps::GATEWAY_HARD_MAX, "gateways")
    };
    if caps.max.0 > ceiling {
        return Err(CapsError::AboveCeiling {
            kind,
            max: format_duration(caps.max.0),
            ceiling: format_duration(ceiling),
            what,
        });
    }
    if caps.default.0 > caps.max.0 {
        return Err(CapsError::DefaultOverMax {
            kind,
            default: format_duration(caps.default.0),
            max: format_duration(caps.max.0),
        });
    }
    Ok(())
}

impl Default for Caps {
    /// vendor 1h (cap 12h), clinician 8h (12h), security 8h (12h), admin 1h (4h),
    /// gateway 90d (397d).
    fn default() -> Self {
        Self {
            vendor: KindCaps::new(Duration::hours(1), Duration::hours(12)),
            clinician: KindCaps::new(Duration::hours(8), Duration::hours(12)),
            security: KindCaps::new(Duration::hours(8), Duration::hours(12)),
            admin: KindCaps::new(Duration::hours(1), Duration::hours(4)),
            gateway: KindCaps::new(Duration::days(90), Duration::days(397)),
        }
    }
}

impl TryFrom<CapsFile> for Caps {
    type Error = CapsError;
    fn try_from(f: CapsFile) -> Result<Self, Self::Error> {
        let caps = Caps {
            vendor: f.vendor,
            clinician: f.clinician,
            security: f.security,
            admin: f.admin,
            gateway: f.gateway,
        };
        for kind in Kind::ALL {
            check(kind, caps.get(kind))?;
        }
        Ok(caps)
    }
}

impl From<Caps> for CapsFile {
    fn from(c: Caps) -> Self {
        CapsFile {
            vendor: c.vendor,
            clinician: c.clinician,
            security: c.security,
            admin: c.admin,
            gateway: c.gateway,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_round_trips_through_strings() {
        for k in Kind::ALL {
            assert_eq!(k.to_string().parse::<Kind>(), Ok(k));
        }
        assert!("Vendor".parse::<Kind>().is_err());
        assert!(Kind::Vendor.is_person());
        assert!(!Kind::Gateway.is_person());
        let err = "robot".parse::<Kind>().unwrap_err().to_string();
        assert!(
            err.contains("\"robot\"") && err.contains("clinician"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let c = Caps::default();
        for k in Kind::ALL {
            check(k, c.get(k)).unwrap();
        }
        assert_eq!(c.default_ttl(Kind::Vendor), Duration::hours(1));
        assert_eq!(c.max_ttl(Kind::Vendor), Duration::hours(12));
        assert_eq!(c.max_ttl(Kind::Admin), Duration::hours(4));
        assert_eq!(c.default_ttl(Kind::Gateway), Duration::days(90));
    }

    #[test]
    fn caps_rules_table() {
        let h = Duration::hours;
        let table: &[(Kind, Duration, Duration, Option<&str>)] = &[
            (Kind::Vendor, h(1), h(24), None),
            (
                Kind::Vendor,
                h(1),
                h(25),
                Some("hard ceiling of 1d for people"),
            ),
            (Kind::Admin, h(1), Duration::days(2), Some("hard ceiling")),
            (Kind::Gateway, h(1), Duration::days(397), None),
            (
                Kind::Gateway,
                h(1),
                Duration::days(398),
                Some("397d for gateways"),
            ),
            (Kind::Clinician, h(13), h(12), Some("longer than its cap")),
            (
                Kind::Clinician,
                Duration::ZERO,
                h(12),
                Some("default lifetime must be longer"),
            ),
            (
                Kind::Clinician,
                h(1),
                Duration::ZERO,
                Some("max lifetime must be longer"),
            ),
        ];
        for (kind, default, max, want) in table {
            let mut caps = Caps::default();
            let got = caps.set(*kind, *default, *max);
            match want {
                None => {
                    got.unwrap();
                    assert_eq!(caps.max_ttl(*kind), *max);
                }
                Some(want) => {
                    let err = got.unwrap_err().to_string();
                    assert!(err.contains(want), "{kind} {default} {max}: {err}");
                    assert_eq!(caps, Caps::default(), "a refused set changes nothing");
                }
            }
        }
    }

    #[test]
    fn loading_caps_enforces_the_ceiling() {
        let json = serde_json::to_value(Caps::default()).unwrap();
        assert_eq!(json["vendor"]["max"], "12h");
        let back: Caps = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, Caps::default());
        let mut bad = json.clone();
        bad["clinician"]["max"] = "48h".into();
        let err = serde_json::from_value::<Caps>(bad).unwrap_err().to_string();
        assert!(err.contains("hard ceiling"), "{err}");
        let mut unknown = json;
        unknown["robot"] = serde_json::json!({"default": "1h", "max": "1h"});
        assert!(serde_json::from_value::<Caps>(unknown).is_err());
    }
}
