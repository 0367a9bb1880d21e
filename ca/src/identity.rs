//! The identity a validated certificate proves, and the SPIFFE ID format.

use std::fmt;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::AttributeTypeAndValue;

use crate::kind::Kind;
use crate::names::{self, printable};

/// Who a certificate says its holder is. Only [`crate::Validator::validate`] and
/// [`crate::Ca::issue`] produce one, so holding an `Identity` means the certificate passed every
/// check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The SPIFFE trust domain, e.g. `ward.dev`.
    pub trust_domain: String,
    /// What the holder is.
    pub kind: Kind,
    /// The holder's name (safe charset).
    pub name: String,
    /// The organisation, for vendors (subject O).
    pub org: Option<String>,
    /// Roles (subject OU, comma separated), in certificate order.
    pub roles: Vec<String>,
    /// The certificate serial number, lowercase hex without separators.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The SPIFFE ID, `spiffe://<trust-domain>/<kind>/<name>`.
    pub uri: String,
}

impl Identity {
    /// How the identity is shown in logs and audit records: `"<kind> <org>/<name>"` when an org
    /// is set (`"vendor acme/jdoe"`), else `"<kind> <name>"` (`"clinician alice"`).
    pub fn principal(&self) -> String {
        principal(self.kind, self.org.as_deref(), &self.name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.principal())
    }
}

pub(crate) fn principal(kind: Kind, org: Option<&str>, name: &str) -> String {
    match org {
        Some(org) => format!("{kind} {org}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The SPIFFE ID scheme prefix.
pub(crate) const SPIFFE_PREFIX: &str = "spiffe://";

/// Build a SPIFFE ID from checked parts.
pub(crate) fn spiffe_uri(trust_domain: &str, kind: Kind, name: &str) -> String {
    format!("{SPIFFE_PREFIX}{trust_domain}/{kind}/{name}")
}

/// A parsed Ward SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpiffeId {
    pub trust_domain: String,
    pub kind: Kind,
    pub name: String,
}

/// Why a URI is not a Ward SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SpiffeError {
    /// Not `spiffe://td/kind/name`.
    Malformed(&'static str),
    /// The trust domain is not DNS-like.
    TrustDomain(names::NameError),
    /// The kind segment is not a known kind.
    UnknownKind(String),
    /// The name segment is not in the safe set.
    Name(names::NameError),
}

/// Parse `spiffe://<td>/<kind>/<name>`, strictly: no port, user info, query, fragment, extra or
/// empty segments, percent-encoding or trailing slash.
pub(crate) fn parse_spiffe(uri: &str) -> Result<SpiffeId, SpiffeError> {
    let rest = uri
        .strip_prefix(SPIFFE_PREFIX)
        .ok_or(SpiffeError::Malformed("it does not start with spiffe://"))?;
    if rest.contains(['?', '#']) {
        return Err(SpiffeError::Malformed("it has a query or fragment"));
    }
    let mut parts = rest.split('/');
    let td = parts.next().unwrap_or_default();
    let kind = parts.next().ok_or(SpiffeError::Malformed(
        "it has no path; expected /<kind>/<name>",
    ))?;
    let name = parts.next().ok_or(SpiffeError::Malformed(
        "its path has one segment; expected /<kind>/<name>",
    ))?;
    if parts.next().is_some() {
        return Err(SpiffeError::Malformed(
            "its path has more than two segments; expected /<kind>/<name>",
        ));
    }
    names::check_trust_domain(td).map_err(SpiffeError::TrustDomain)?;
    let kind: Kind = kind
        .parse()
        .map_err(|_| SpiffeError::UnknownKind(printable(kind)))?;
    names::check_name(name).map_err(SpiffeError::Name)?;
    Ok(SpiffeId {
        trust_domain: td.to_owned(),
        kind,
        name: name.to_owned(),
    })
}

/// Lowercase hex of a DER INTEGER's content bytes, without leading zero bytes.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let trimmed = raw.get(start..).unwrap_or_default();
    if trimmed.is_empty() {
        "00".to_owned()
    } else {
        hex::encode(trimmed)
    }
}

/// The URIs in a certificate's SAN extension (an error if the extension is malformed or twice).
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, String> {
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// DNS names and IP addresses in a certificate's SAN extension.
pub(crate) fn dns_and_ip_sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => dns.push(printable(d)),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ips.push(std::net::IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ips.push(std::net::IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    (dns, ips)
}

fn attr_str<'a>(
    attr: &'a AttributeTypeAndValue<'_>,
) -> Result<&'a str, x509_parser::error::X509Error> {
    attr.as_str()
}

/// The subject's O (at most one) and OU role list (at most one OU, comma separated), checked
/// against the safe character set.
pub(crate) fn org_and_roles(
    cert: &X509Certificate<'_>,
) -> Result<(Option<String>, Vec<String>), names::NameError> {
    let subject = cert.subject();
    let dup = |field: &'static str| names::NameError {
        field,
        problem: names::Problem::Duplicate {
            value: format!("{} attribute", if field == "org" { "O" } else { "OU" }),
        },
    };
    let bad = |field: &'static str| names::NameError {
        field,
        problem: names::Problem::NotAString,
    };
    let orgs: Vec<_> = subject.iter_organization().collect();
    if orgs.len() > 1 {
        return Err(dup("org"));
    }
    let org = match orgs.first() {
        Some(a) => {
            let s = attr_str(a).map_err(|_| bad("org"))?;
            names::check_org(s)?;
            Some(s.to_owned())
        }
        None => None,
    };
    let ous: Vec<_> = subject.iter_organizational_unit().collect();
    if ous.len() > 1 {
        return Err(dup("roles"));
    }
    let roles = match ous.first() {
        Some(a) => {
            let s = attr_str(a).map_err(|_| bad("roles"))?;
            let roles: Vec<String> = s.split(',').map(str::to_owned).collect();
            names::check_roles(&roles)?;
            roles
        }
        None => Vec::new(),
    };
    Ok((org, roles))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_format() {
        assert_eq!(
            principal(Kind::Vendor, Some("acme"), "jdoe"),
            "vendor acme/jdoe"
        );
        assert_eq!(principal(Kind::Clinician, None, "alice"), "clinician alice");
    }

    #[test]
    fn spiffe_parse_table() {
        let ok = parse_spiffe("spiffe://ward.dev/vendor/jdoe").unwrap();
        assert_eq!(ok.trust_domain, "ward.dev");
        assert_eq!(ok.kind, Kind::Vendor);
        assert_eq!(ok.name, "jdoe");
        let bad: &[&str] = &[
            "https://ward.dev/vendor/jdoe",
            "SPIFFE://ward.dev/vendor/jdoe",
            "spiffe://ward.dev",
            "spiffe://ward.dev/vendor",
            "spiffe://ward.dev/vendor/",
            "spiffe://ward.dev/vendor/jdoe/",
            "spiffe://ward.dev/vendor/a/b",
            "spiffe://ward.dev/robot/jdoe",
            "spiffe://ward.dev:443/vendor/jdoe",
            "spiffe://user@ward.dev/vendor/jdoe",
            "spiffe://ward.dev/vendor/jdoe?x=1",
            "spiffe://ward.dev/vendor/jd%0aoe",
            "spiffe:///vendor/jdoe",
            "spiffe://ward.dev//jdoe",
        ];
        for uri in bad {
            assert!(parse_spiffe(uri).is_err(), "{uri} should be refused");
        }
    }

    #[test]
    fn serial_hex_trims_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x7f]), "7f");
        assert_eq!(serial_hex(&[0x00]), "00");
    }
}
