//! Who is asking: the policy's view of an authenticated client.
//!
//! The gateway builds a [`Principal`] from the certificate identity that `ward-ca` validated during
//! the handshake; policy only ever sees this plain value, so the core does not depend on the CA.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The kind of certificate holder, fixed by the certificate profile that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// An outside vendor's engineer maintaining their own devices.
    Vendor,
    /// Hospital clinical staff.
    Clinician,
    /// Hospital security staff (may lock principals, devices, orgs).
    Security,
    /// Gateway administrators.
    Admin,
    /// Another gateway (or the gateway's own certificate).
    Gateway,
}

impl PrincipalKind {
    /// Every kind, in declaration order.
    pub const ALL: [PrincipalKind; 5] = [
        PrincipalKind::Vendor,
        PrincipalKind::Clinician,
        PrincipalKind::Security,
        PrincipalKind::Admin,
        PrincipalKind::Gateway,
    ];

    /// Security staff or an admin: who may lock, review, and see and revoke every grant. The one
    /// definition of that role.
    pub fn is_security_staff(self) -> bool {
        matches!(self, PrincipalKind::Security | PrincipalKind::Admin)
    }

    /// The lowercase name used in config files, certificates and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Vendor => "vendor",
            PrincipalKind::Clinician => "clinician",
            PrincipalKind::Security => "security",
            PrincipalKind::Admin => "admin",
            PrincipalKind::Gateway => "gateway",
        }
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`PrincipalKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown principal kind {0:?} (expected vendor, clinician, security, admin or gateway)")]
pub struct UnknownPrincipalKind(pub String);

impl FromStr for PrincipalKind {
    type Err = UnknownPrincipalKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PrincipalKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownPrincipalKind(s.to_owned()))
    }
}

/// An authenticated client as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Certificate profile.
    pub kind: PrincipalKind,
    /// Person or system name (certificate CN).
    pub name: String,
    /// Organisation (certificate O); vendors always have one.
    pub org: Option<String>,
    /// Roles carried in the certificate.
    pub roles: Vec<String>,
    /// Certificate serial number (hex), identifies this one certificate.
    pub serial: String,
    /// Certificate expiry: no session outlives it.
    pub not_after: OffsetDateTime,
}

impl Principal {
    /// `org/name` when the principal has an org, else `name`.
    pub fn qualified_name(&self) -> String {
        match &self.org {
            Some(org) => format!("{org}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// `vendor acme/jdoe`, `clinician alice`.
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.org {
            Some(org) => write!(f, "{} {org}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn kinds_round_trip_through_strings() {
        for kind in PrincipalKind::ALL {
            assert_eq!(kind.to_string().parse::<PrincipalKind>(), Ok(kind));
        }
        assert!("Vendor".parse::<PrincipalKind>().is_err());
    }

    #[test]
    fn display_includes_org_when_present() {
        let mut p = Principal {
            kind: PrincipalKind::Vendor,
            name: "jdoe".into(),
            org: Some("acme".into()),
            roles: vec![],
            serial: "01".into(),
            not_after: datetime!(2030-01-01 0:00 UTC),
        };
        assert_eq!(p.to_string(), "vendor acme/jdoe");
        p.kind = PrincipalKind::Clinician;
        p.org = None;
        p.name = "alice".into();
        assert_eq!(p.to_string(), "clinician alice");
    }
}
