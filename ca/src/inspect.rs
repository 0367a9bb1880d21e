//! `ward ca inspect`: what a certificate says, and whether this CA would accept it.

use std::fmt;
use std::net::IpAddr;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::parse_x509_certificate;

use crate::duration::format_duration;
use crate::error::CaError;
use crate::identity::{self, principal};
use crate::kind::Kind;
use crate::names::printable;
use crate::validate::{rfc3339, Usage, ValidationError, Validator};

/// What [`inspect`] found. Fields taken from the certificate are escaped for display (control
/// characters shown as `\u{..}`); the Ward fields (`kind`, `name`, `principal`) are set only when
/// the certificate carries a well-formed Ward SPIFFE ID.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// `"vendor acme/jdoe"`, when the certificate carries a Ward SPIFFE ID.
    pub principal: Option<String>,
    /// The kind from the SPIFFE ID.
    pub kind: Option<Kind>,
    /// The name from the SPIFFE ID.
    pub name: Option<String>,
    /// Subject O.
    pub org: Option<String>,
    /// Subject OU, split on commas.
    pub roles: Vec<String>,
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// notAfter - now, in seconds (negative once expired).
    pub remaining_seconds: i64,
    /// notAfter - now, human (`"7h59m"`, `"-3m"`).
    pub remaining: String,
    /// basicConstraints CA:true.
    pub is_ca: bool,
    /// Certificates in the PEM input (leaf first).
    pub chain_len: usize,
    /// The validation result, when a validator was given.
    pub validation: Option<Verdict>,
}

/// The result of validating an inspected certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed.
    Valid,
    /// The first check that failed.
    Invalid(ValidationError),
}

impl Verdict {
    /// True when every check passed.
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid)
    }
}

impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Verdict::Valid => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("valid", &true)?;
                m.end()
            }
            Verdict::Invalid(e) => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("valid", &false)?;
                m.serialize_entry("check", e.check())?;
                m.serialize_entry("error", &e.to_string())?;
                m.end()
            }
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid => f.write_str("valid"),
            Verdict::Invalid(e) => write!(f, "INVALID ({} check): {e}", e.check()),
        }
    }
}

/// Read a PEM chain (leaf first; other PEM blocks such as keys are ignored) and describe the
/// leaf. With a validator, also validate it at `now`, for server use when the SPIFFE ID says
/// `gateway` and for client use otherwise, passing the chain's other certificates as
/// intermediates.
pub fn inspect(
    pem_chain: &str,
    validator: Option<&Validator>,
    now: OffsetDateTime,
) -> Result<Inspection, CaError> {
    let blocks = pem::parse_many(pem_chain).map_err(|e| CaError::Parse(e.to_string()))?;
    let ders: Vec<&[u8]> = blocks
        .iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.contents())
        .collect();
    let (leaf_der, intermediates) = ders.split_first().ok_or(CaError::NoCertificate)?;
    let (_, cert) = parse_x509_certificate(leaf_der).map_err(|e| CaError::Parse(e.to_string()))?;

    let uris = identity::uri_sans(&cert).unwrap_or_default();
    let spiffe = match uris.as_slice() {
        [one] => identity::parse_spiffe(one).ok(),
        _ => None,
    };
    let subject = cert.subject();
    let org = subject
        .iter_organization()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(printable);
    let roles = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(|s| s.split(',').map(printable).collect())
        .unwrap_or_default();
    let (dns, ips) = identity::dns_and_ip_sans(&cert);
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let remaining: Duration = not_after - now;

    let validation = validator.map(|v| {
        let usage = match spiffe.as_ref().map(|s| s.kind) {
            Some(Kind::Gateway) => Usage::Server,
            _ => Usage::Client,
        };
        match v.validate(leaf_der, intermediates, usage, now) {
            Ok(_) => Verdict::Valid,
            Err(e) => Verdict::Invalid(e),
        }
    });

    Ok(Inspection {
        principal: spiffe
            .as_ref()
            .map(|s| principal(s.kind, org.as_deref(), &s.name)),
        kind: spiffe.as_ref().map(|s| s.kind),
        name: spiffe.as_ref().map(|s| s.name.clone()),
        org,
        roles,
        uris: uris.iter().map(|u| printable(u)).collect(),
        dns,
        ips,
        serial: identity::serial_hex(cert.raw_serial()),
        subject: printable(&subject.to_string()),
        issuer: printable(&cert.issuer().to_string()),
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        remaining_seconds: remaining.whole_seconds(),
        remaining: format_duration(remaining),
        is_ca: cert.is_ca(),
        chain_len: ders.len(),
        validation,
    })
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let none = "-";
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: &str| writeln!(f, "{k:<12}{v}");
        row(
            f,
            "principal:",
            self.principal.as_deref().unwrap_or("(not a Ward identity)"),
        )?;
        row(
            f,
            "kind:",
            &self
                .kind
                .map(|k| k.to_string())
                .unwrap_or_else(|| none.into()),
        )?;
        row(f, "name:", self.name.as_deref().unwrap_or(none))?;
        row(f, "org:", self.org.as_deref().unwrap_or(none))?;
        let roles = if self.roles.is_empty() {
            none.to_owned()
        } else {
            self.roles.join(", ")
        };
        row(f, "roles:", &roles)?;
        for u in &self.uris {
            row(f, "uri:", u)?;
        }
        for d in &self.dns {
            row(f, "dns:", d)?;
        }
        for ip in &self.ips {
            row(f, "ip:", &ip.to_string())?;
        }
        row(f, "serial:", &self.serial)?;
        row(f, "subject:", &self.subject)?;
        row(f, "issuer:", &self.issuer)?;
        row(f, "not before:", &self.not_before)?;
        row(f, "not after:", &self.not_after)?;
        let remaining = if self.remaining_seconds < 0 {
            format!(
                "expired {} ago",
                format_duration(Duration::seconds(-self.remaining_seconds))
            )
        } else {
            self.remaining.clone()
        };
        row(f, "remaining:", &remaining)?;
        if self.is_ca {
            row(f, "ca:", "yes (CA:true)")?;
        }
        if let Some(v) = &self.validation {
            row(f, "validation:", &v.to_string())?;
        }
        Ok(())
    }
}
