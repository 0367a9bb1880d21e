//! Checking a presented certificate and turning it into an [`Identity`].

use std::fmt;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::parse_x509_certificate;

use crate::duration::format_duration;
use crate::error::CaError;
use crate::identity::{self, Identity, SpiffeError};
use crate::kind::{Caps, Kind};
use crate::names::{printable, NameError};

/// Clock skew tolerated on both ends of a certificate's validity window, and the most a
/// certificate's notBefore is backdated at issuance.
pub const MAX_SKEW: Duration = Duration::seconds(60);

/// What the certificate is presented for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Usage {
    /// A person or gateway connecting to a gateway (EKU clientAuth required).
    Client,
    /// A gateway serving connections (EKU serverAuth required).
    Server,
}

impl Usage {
    fn eku_name(self) -> &'static str {
        match self {
            Usage::Client => "clientAuth",
            Usage::Server => "serverAuth",
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Usage::Client => "client",
            Usage::Server => "server",
        })
    }
}

/// Why a presented certificate was refused: one variant per check, in the order they run. All are
/// caused by the peer that presented the certificate. `Display` states the failed check plainly;
/// [`ValidationError::check`] names it for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// 1. The certificate is not well-formed DER X.509.
    #[error("certificate could not be parsed: {reason}")]
    Parse {
        /// The parser's complaint.
        reason: String,
    },
    /// 2a. More certificates than leaf + issuing CA.
    #[error(
        "chain has {presented} certificates; Ward accepts only the leaf and its issuing CA (2)"
    )]
    ChainTooLong {
        /// Leaf plus intermediates presented.
        presented: usize,
    },
    /// 2b. The presented intermediate is not this CA's issuing certificate.
    #[error("the presented intermediate certificate is not this CA's issuing CA")]
    UnknownIntermediate,
    /// 2c. The leaf's issuer name is not this CA's issuing CA.
    #[error("certificate was issued by \"{issuer}\", not by this CA's issuing CA \"{expected}\"")]
    WrongIssuer {
        /// The leaf's issuer DN.
        issuer: String,
        /// Our issuing CA's subject DN.
        expected: String,
    },
    /// 2d. The leaf's signature does not verify with the issuing CA's key.
    #[error("certificate signature does not verify with this CA's issuing key (signed by another CA, or altered)")]
    BadSignature,
    /// 3a. Our issuing CA is outside its own validity window.
    #[error(
        "this CA's issuing certificate is not valid at {now} (valid {not_before} to {not_after})"
    )]
    IssuerNotValid {
        /// The time checked.
        now: String,
        /// Issuing CA notBefore.
        not_before: String,
        /// Issuing CA notAfter.
        not_after: String,
    },
    /// 3b. `now` is before notBefore (beyond the skew).
    #[error(
        "certificate is not valid until {not_before}, {starts_in} from now (tolerance {tolerance})"
    )]
    NotYetValid {
        /// notBefore, RFC 3339.
        not_before: String,
        /// How far ahead it is.
        starts_in: String,
        /// The skew tolerated.
        tolerance: String,
    },
    /// 3c. `now` is after notAfter (beyond the skew).
    #[error("certificate expired at {not_after}, {ago} ago (tolerance {tolerance})")]
    Expired {
        /// notAfter, RFC 3339.
        not_after: String,
        /// How long ago.
        ago: String,
        /// The skew tolerated.
        tolerance: String,
    },
    /// 4. The leaf says CA:true.
    #[error("certificate is a CA certificate (basicConstraints CA:true); only leaf certificates identify people and gateways")]
    IsCa,
    /// 5. The leaf lacks the extended key usage the connection needs.
    #[error("certificate lacks the {eku} extended key usage required for {usage} use")]
    MissingEku {
        /// `clientAuth` or `serverAuth`.
        eku: &'static str,
        /// The usage asked for.
        usage: Usage,
    },
    /// 6a. No URI SAN.
    #[error("certificate has no URI subject alternative name (expected spiffe://<trust-domain>/<kind>/<name>)")]
    MissingUri,
    /// 6b. More than one URI SAN.
    #[error("certificate has {count} URI subject alternative names; exactly one is allowed")]
    MultipleUris {
        /// How many.
        count: usize,
    },
    /// 6c. The URI SAN is not `spiffe://<td>/<kind>/<name>`.
    #[error("URI SAN \"{uri}\" is not a Ward SPIFFE ID: {reason}")]
    MalformedUri {
        /// The URI, with control characters escaped.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// 6d. The SPIFFE ID belongs to another trust domain.
    #[error("SPIFFE ID is in trust domain \"{found}\", not \"{expected}\"")]
    WrongTrustDomain {
        /// The certificate's trust domain.
        found: String,
        /// Ours.
        expected: String,
    },
    /// 6e. The SPIFFE ID's kind is not one Ward knows.
    #[error("SPIFFE ID kind \"{found}\" is unknown (expected vendor, clinician, security, admin or gateway)")]
    UnknownKind {
        /// The kind segment, escaped.
        found: String,
    },
    /// 6f. The name, org or roles are outside the safe character set.
    #[error("certificate {0}")]
    BadName(NameError),
    /// 7. notAfter - notBefore is longer than the kind's cap (+ the backdating allowance).
    #[error("certificate lifetime {lifetime} exceeds the {kind} cap of {cap} (+{slack} backdating allowance)")]
    LifetimeOverCap {
        /// The kind.
        kind: Kind,
        /// notAfter - notBefore.
        lifetime: String,
        /// The cap.
        cap: String,
        /// The allowance.
        slack: String,
    },
    /// This CA's own certificates could not be used (should not happen: checked when loaded).
    #[error("this CA's certificates are unusable: {0}")]
    CaUnusable(String),
}

impl ValidationError {
    /// A short stable name for the failed check, for audit records and tests:
    /// `parse`, `chain`, `validity`, `ca`, `eku`, `uri`, `name`, `lifetime`, `internal`.
    pub fn check(&self) -> &'static str {
        match self {
            ValidationError::Parse { .. } => "parse",
            ValidationError::ChainTooLong { .. }
            | ValidationError::UnknownIntermediate
            | ValidationError::WrongIssuer { .. }
            | ValidationError::BadSignature => "chain",
            ValidationError::IssuerNotValid { .. }
            | ValidationError::NotYetValid { .. }
            | ValidationError::Expired { .. } => "validity",
            ValidationError::IsCa => "ca",
            ValidationError::MissingEku { .. } => "eku",
            ValidationError::MissingUri
            | ValidationError::MultipleUris { .. }
            | ValidationError::MalformedUri { .. }
            | ValidationError::WrongTrustDomain { .. }
            | ValidationError::UnknownKind { .. } => "uri",
            ValidationError::BadName(_) => "name",
            ValidationError::LifetimeOverCap { .. } => "lifetime",
            ValidationError::CaUnusable(_) => "internal",
        }
    }
}

/// Checks certificates against one Ward CA. Holds only public material (the root and issuing
/// certificates, the trust domain and the caps), so the gateway can run it without any private
/// key. Cheap to clone.
#[derive(Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

struct Inner {
    root_der: Vec<u8>,
    issuing_der: Vec<u8>,
    trust_domain: String,
    caps: Caps,
    max_skew: Duration,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("trust_domain", &self.inner.trust_domain)
            .field("max_skew", &self.inner.max_skew)
            .finish_non_exhaustive()
    }
}

fn parse_whole(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes of trailing data", rest.len()));
    }
    Ok(cert)
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

impl Validator {
    /// Build a validator from the CA's certificates (DER). Checks that the root is a self-signed
    /// CA, that the issuing certificate is a CA whose issuer is the root and whose signature
    /// verifies with the root's key; this is the chain check "issuing CA signed by root", done
    /// once here rather than on every handshake.
    pub fn new(
        root_der: Vec<u8>,
        issuing_der: Vec<u8>,
        trust_domain: &str,
        caps: Caps,
    ) -> Result<Validator, CaError> {
        crate::names::check_trust_domain(trust_domain)?;
        let broken = |reason: String| CaError::BrokenCa {
            dir: Default::default(),
            reason,
        };
        let root = parse_whole(&root_der).map_err(|e| broken(format!("root.crt: {e}")))?;
        let issuing = parse_whole(&issuing_der).map_err(|e| broken(format!("issuing.crt: {e}")))?;
        if !root.is_ca() || !issuing.is_ca() {
            return Err(broken(
                "root or issuing certificate is not a CA (CA:true)".into(),
            ));
        }
        root.verify_signature(None)
            .map_err(|e| broken(format!("root certificate is not validly self-signed: {e}")))?;
        if issuing.issuer().as_raw() != root.subject().as_raw() {
            return Err(broken(
                "issuing CA's issuer is not the root's subject".into(),
            ));
        }
        issuing
            .verify_signature(Some(root.public_key()))
            .map_err(|e| {
                broken(format!(
                    "issuing CA's signature does not verify with the root key: {e}"
                ))
            })?;
        Ok(Validator {
            inner: Arc::new(Inner {
                root_der,
                issuing_der,
                trust_domain: trust_domain.to_owned(),
                caps,
                max_skew: MAX_SKEW,
            }),
        })
    }

    /// Load from a CA directory, reading only `root.crt`, `issuing.crt` and `ca.json` (no private
    /// keys).
    pub fn from_dir(dir: &std::path::Path) -> Result<Validator, CaError> {
        crate::ca::load_public(dir).map(|p| p.validator)
    }

    /// The root CA certificate (DER): the trust anchor to give TLS stacks.
    pub fn root_der(&self) -> &[u8] {
        &self.inner.root_der
    }

    /// The issuing CA certificate (DER): the intermediate sent along with leaf certificates.
    pub fn issuing_der(&self) -> &[u8] {
        &self.inner.issuing_der
    }

    /// The trust domain, e.g. `ward.dev`.
    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }

    /// The lifetime caps enforced.
    pub fn caps(&self) -> &Caps {
        &self.inner.caps
    }

    /// The clock skew tolerated ([`MAX_SKEW`]).
    pub fn max_skew(&self) -> Duration {
        self.inner.max_skew
    }

    /// Check a presented leaf (DER) and intermediates for `usage` at `now`. Checks run in this
    /// order and the first failure is returned: parse; chain (at most one intermediate, which must
    /// be our issuing CA; issuer name; signature by the issuing key); validity (our issuing CA,
    /// then the leaf's window with ±60 s skew); not a CA; EKU; exactly one well-formed Ward SPIFFE
    /// URI in our trust domain with safe name, org and roles; lifetime within the kind's cap.
    pub fn validate(
        &self,
        leaf_der: &[u8],
        intermediates: &[&[u8]],
        usage: Usage,
        now: OffsetDateTime,
    ) -> Result<Identity, ValidationError> {
        let inner = &*self.inner;
        let skew = inner.max_skew;

        // 1. Parse.
        let leaf = parse_whole(leaf_der).map_err(|reason| ValidationError::Parse { reason })?;
        let issuing = parse_whole(&inner.issuing_der).map_err(ValidationError::CaUnusable)?;

        // 2. Chain.
        if intermediates.len() > 1 {
            return Err(ValidationError::ChainTooLong {
                presented: intermediates.len() + 1,
            });
        }
        if let Some(presented) = intermediates.first() {
            if *presented != inner.issuing_der.as_slice() {
                return Err(ValidationError::UnknownIntermediate);
            }
        }
        if leaf.issuer().as_raw() != issuing.subject().as_raw() {
            return Err(ValidationError::WrongIssuer {
                issuer: printable(&leaf.issuer().to_string()),
                expected: printable(&issuing.subject().to_string()),
            });
        }
        leaf.verify_signature(Some(issuing.public_key()))
            .map_err(|_| ValidationError::BadSignature)?;

        // 3. Validity, ours first.
        let ca_nb = issuing.validity().not_before.to_datetime();
        let ca_na = issuing.validity().not_after.to_datetime();
        // Differences, not `time ± skew`: a certificate can say 9999-12-31T23:59:59Z, and adding
        // the skew to that overflows (a panic), while the difference of two dates never does.
        if ca_nb - now > skew || now - ca_na > skew {
            return Err(ValidationError::IssuerNotValid {
                now: rfc3339(now),
                not_before: rfc3339(ca_nb),
                not_after: rfc3339(ca_na),
            });
        }
        let not_before = leaf.validity().not_before.to_datetime();
        let not_after = leaf.validity().not_after.to_datetime();
        if not_before - now > skew {
            return Err(ValidationError::NotYetValid {
                not_before: rfc3339(not_before),
                starts_in: format_duration(not_before - now),
                tolerance: format!("{}s", skew.whole_seconds()),
            });
        }
        if now - not_after > skew {
            return Err(ValidationError::Expired {
                not_after: rfc3339(not_after),
                ago: format_duration(now - not_after),
                tolerance: format!("{}s", skew.whole_seconds()),
            });
        }

        // 4. Not a CA.
        let bc = leaf
            .basic_constraints()
            .map_err(|e| ValidationError::Parse {
                reason: format!("basicConstraints: {e}"),
            })?;
        if bc.is_some_and(|bc| bc.value.ca) {
            return Err(ValidationError::IsCa);
        }

        // 5. EKU.
        let eku = leaf
            .extended_key_usage()
            .map_err(|e| ValidationError::Parse {
                reason: format!("extendedKeyUsage: {e}"),
            })?;
        let has = eku.is_some_and(|e| match usage {
            Usage::Client => e.value.client_auth,
            Usage::Server => e.value.server_auth,
        });
        if !has {
            return Err(ValidationError::MissingEku {
                eku: usage.eku_name(),
                usage,
            });
        }

        // 6. URI SAN and names.
        let uris = identity::uri_sans(&leaf).map_err(|e| ValidationError::Parse {
            reason: format!("subjectAltName: {e}"),
        })?;
        let uri = match uris.as_slice() {
            [] => return Err(ValidationError::MissingUri),
            [one] => *one,
            more => return Err(ValidationError::MultipleUris { count: more.len() }),
        };
        let id = identity::parse_spiffe(uri).map_err(|e| match e {
            SpiffeError::Malformed(reason) => ValidationError::MalformedUri {
                uri: printable(uri),
                reason: reason.to_owned(),
            },
            SpiffeError::TrustDomain(e) => ValidationError::MalformedUri {
                uri: printable(uri),
                reason: e.to_string(),
            },
            SpiffeError::UnknownKind(found) => ValidationError::UnknownKind { found },
            SpiffeError::Name(e) => ValidationError::BadName(e),
        })?;
        if id.trust_domain != inner.trust_domain {
            return Err(ValidationError::WrongTrustDomain {
                found: id.trust_domain,
                expected: inner.trust_domain.clone(),
            });
        }
        let (org, roles) = identity::org_and_roles(&leaf).map_err(ValidationError::BadName)?;

        // 7. Lifetime.
        let lifetime = not_after - not_before;
        let cap = inner.caps.max_ttl(id.kind);
        if lifetime > cap + MAX_SKEW {
            return Err(ValidationError::LifetimeOverCap {
                kind: id.kind,
                lifetime: format_duration(lifetime),
                cap: format_duration(cap),
                slack: format_duration(MAX_SKEW),
            });
        }

        Ok(Identity {
            uri: uri.to_owned(),
            trust_domain: id.trust_domain,
            kind: id.kind,
            name: id.name,
            org,
            roles,
            serial: identity::serial_hex(leaf.raw_serial()),
            not_before,
            not_after,
        })
    }
}
