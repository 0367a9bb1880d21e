//! The CA directory: creating it, loading it, issuing from it.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::duration::format_duration;
use crate::error::CaError;
use crate::fsutil::{self, PRIVATE, PUBLIC};
use crate::identity::{self, Identity};
use crate::kind::{Caps, Kind};
use crate::names;
use crate::secret::Secret;
use crate::validate::{rfc3339, Usage, Validator, MAX_SKEW};

/// Root CA certificate (PEM), the trust anchor.
pub const ROOT_CRT: &str = "root.crt";
/// Root CA private key (PEM PKCS#8, mode 0600). Only `init` uses it; it can be moved offline.
pub const ROOT_KEY: &str = "root.key";
/// Issuing CA certificate (PEM), signed by the root.
pub const ISSUING_CRT: &str = "issuing.crt";
/// Issuing CA private key (PEM PKCS#8, mode 0600), signs every leaf.
pub const ISSUING_KEY: &str = "issuing.key";
/// Trust domain, caps and format version.
pub const CA_JSON: &str = "ca.json";
/// One JSON line per issued certificate.
pub const ISSUED_LOG: &str = "issued.jsonl";

const FORMAT_VERSION: u32 = 1;
const ROOT_LIFETIME: Duration = Duration::days(3650);
const ISSUING_LIFETIME: Duration = Duration::days(1825);

/// The contents of `ca.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaMeta {
    format_version: u32,
    trust_domain: String,
    caps: Caps,
}

/// What to issue. Ward builds every field of the certificate from this (and, with a CSR, takes
/// only the CSR's public key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueRequest {
    /// The kind of identity.
    pub kind: Kind,
    /// The holder's name: the SPIFFE ID's last segment and the subject CN.
    pub name: String,
    /// The organisation (subject O), typically for vendors.
    pub org: Option<String>,
    /// Roles (subject OU, comma joined).
    pub roles: Vec<String>,
    /// Lifetime; `None` takes the kind's default. Must not exceed the kind's cap.
    pub ttl: Option<Duration>,
    /// A PEM CSR whose public key to certify; `None` makes Ward generate a P-256 key.
    pub csr_pem: Option<String>,
    /// DNS SANs (gateways only).
    pub dns: Vec<String>,
    /// IP SANs (gateways only).
    pub ips: Vec<IpAddr>,
}

impl IssueRequest {
    /// A request for `kind`/`name` with everything else empty or default.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            org: None,
            roles: Vec::new(),
            ttl: None,
            csr_pem: None,
            dns: Vec::new(),
            ips: Vec::new(),
        }
    }
}

/// An issued certificate.
#[derive(Debug)]
pub struct Issued {
    /// The leaf then the issuing CA, PEM.
    pub chain_pem: String,
    /// The private key (PEM PKCS#8) when Ward generated it; `None` when issued from a CSR.
    pub key_pem: Option<Secret<String>>,
    /// The identity the certificate proves.
    pub identity: Identity,
}

impl Issued {
    /// Where [`Issued::write`] puts the chain: `PREFIX.crt`.
    pub fn cert_path(prefix: &Path) -> PathBuf {
        with_suffix(prefix, ".crt")
    }

    /// Where [`Issued::write`] puts the key: `PREFIX.key`.
    pub fn key_path(prefix: &Path) -> PathBuf {
        with_suffix(prefix, ".key")
    }

    /// Write `PREFIX.crt` (mode 0644) and, when there is a key, `PREFIX.key` (created with mode
    /// 0600). Each file is written to a temporary sibling and renamed into place.
    pub fn write(&self, prefix: &Path) -> Result<(), CaError> {
        if let Some(parent) = prefix.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| CaError::io(parent, e))?;
        }
        if let Some(key) = &self.key_pem {
            fsutil::write_atomic(&Self::key_path(prefix), key.expose().as_bytes(), PRIVATE)?;
        }
        fsutil::write_atomic(&Self::cert_path(prefix), self.chain_pem.as_bytes(), PUBLIC)
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A loaded CA directory, able to issue. Holds the issuing key (redacted in `Debug`), not the
/// root key.
pub struct Ca {
    dir: PathBuf,
    trust_domain: String,
    caps: Caps,
    issuing_key: Secret<KeyPair>,
    validator: Validator,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("trust_domain", &self.trust_domain)
            .field("issuing_key", &self.issuing_key)
            .finish_non_exhaustive()
    }
}

/// The public half of a CA directory.
pub(crate) struct PublicCa {
    pub validator: Validator,
    pub meta_caps: Caps,
    pub trust_domain: String,
    pub issuing_der: Vec<u8>,
}

fn read_cert(dir: &Path, name: &str) -> Result<Vec<u8>, CaError> {
    let text = fsutil::read_ca_file(dir, name)?;
    let path = dir.join(name);
    let blocks = pem::parse_many(&text).map_err(|e| CaError::bad_file(&path, e.to_string()))?;
    match blocks.as_slice() {
        [one] if one.tag() == "CERTIFICATE" => Ok(one.contents().to_vec()),
        _ => Err(CaError::bad_file(
            &path,
            "expected exactly one PEM CERTIFICATE block",
        )),
    }
}

pub(crate) fn load_public(dir: &Path) -> Result<PublicCa, CaError> {
    let meta_path = dir.join(CA_JSON);
    let meta: CaMeta = serde_json::from_str(&fsutil::read_ca_file(dir, CA_JSON)?)
        .map_err(|e| CaError::bad_file(&meta_path, e.to_string()))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(CaError::bad_file(
            &meta_path,
            format!(
                "format_version {} is not supported (this Ward reads {FORMAT_VERSION})",
                meta.format_version
            ),
        ));
    }
    names::check_trust_domain(&meta.trust_domain)
        .map_err(|e| CaError::bad_file(&meta_path, e.to_string()))?;
    let root_der = read_cert(dir, ROOT_CRT)?;
    let issuing_der = read_cert(dir, ISSUING_CRT)?;
    let validator = Validator::new(
        root_der,
        issuing_der.clone(),
        &meta.trust_domain,
        meta.caps.clone(),
    )
    .map_err(|e| match e {
        CaError::BrokenCa { reason, .. } => CaError::BrokenCa {
            dir: dir.to_path_buf(),
            reason,
        },
        other => other,
    })?;
    Ok(PublicCa {
        validator,
        meta_caps: meta.caps,
        trust_domain: meta.trust_domain,
        issuing_der,
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive (top bit clear) and 16 bytes long (first byte non-zero): 126+ bits of randomness.
    if let Some(first) = bytes.first_mut() {
        *first &= 0x7f;
        if *first == 0 {
            *first = 0x01;
        }
    }
    SerialNumber::from_slice(&bytes)
}

fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

fn ca_params(
    cn: String,
    pathlen: u8,
    now: OffsetDateTime,
    lifetime: Duration,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Ward");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(pathlen));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(random_serial());
    p.not_before = now - MAX_SKEW;
    p.not_after = now + lifetime;
    p.use_authority_key_identifier_extension = true;
    p
}

impl Ca {
    /// Create a CA in `dir`: a P-256 root CA (10 years, pathlen 1) and a P-256 issuing CA (5
    /// years, pathlen 0) signed by it, `ca.json` with the trust domain and default caps, and an
    /// empty `issued.jsonl`. Keys are created with mode 0600. Refuses if a CA is already there
    /// unless `force` (which replaces the keys and certificates and keeps `issued.jsonl`).
    pub fn init(
        dir: &Path,
        trust_domain: &str,
        force: bool,
        now: OffsetDateTime,
    ) -> Result<Ca, CaError> {
        names::check_trust_domain(trust_domain)?;
        if !force {
            for file in [CA_JSON, ROOT_CRT, ROOT_KEY, ISSUING_CRT, ISSUING_KEY] {
                if dir.join(file).exists() {
                    return Err(CaError::AlreadyExists {
                        dir: dir.to_path_buf(),
                        file,
                    });
                }
            }
        }
        fsutil::create_private_dir(dir)?;
        let now = whole_seconds(now);
        // A short random tag tells CAs with the same trust domain apart in issuer names.
        let tag = hex::encode(rand::random::<[u8; 4]>());

        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params(
            format!("Ward root CA {trust_domain} {tag}"),
            1,
            now,
            ROOT_LIFETIME,
        );
        let root_cert = root_params.self_signed(&root_key)?;

        let issuing_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issuing_params = ca_params(
            format!("Ward issuing CA {trust_domain} {tag}"),
            0,
            now,
            ISSUING_LIFETIME,
        );
        let root_issuer = Issuer::from_params(&root_params, &root_key);
        let issuing_cert = issuing_params.signed_by(&issuing_key, &root_issuer)?;

        let meta = CaMeta {
            format_version: FORMAT_VERSION,
            trust_domain: trust_domain.to_owned(),
            caps: Caps::default(),
        };
        let meta_json = serde_json::to_string_pretty(&meta)
            .map_err(|e| CaError::bad_file(dir.join(CA_JSON), e.to_string()))?;

        fsutil::write_atomic(
            &dir.join(ROOT_KEY),
            root_key.serialize_pem().as_bytes(),
            PRIVATE,
        )?;
        fsutil::write_atomic(
            &dir.join(ISSUING_KEY),
            issuing_key.serialize_pem().as_bytes(),
            PRIVATE,
        )?;
        fsutil::write_atomic(&dir.join(ROOT_CRT), root_cert.pem().as_bytes(), PUBLIC)?;
        fsutil::write_atomic(
            &dir.join(ISSUING_CRT),
            issuing_cert.pem().as_bytes(),
            PUBLIC,
        )?;
        fsutil::append_line_if_missing(&dir.join(ISSUED_LOG), PUBLIC)?;
        fsutil::write_atomic(&dir.join(CA_JSON), (meta_json + "\n").as_bytes(), PUBLIC)?;
        Ca::load(dir)
    }

    /// Load the CA in `dir` for issuing: `ca.json`, both certificates and `issuing.key` (which must
    /// not be readable by group or others, and must match `issuing.crt`). `root.key` is not read.
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let public = load_public(dir)?;
        let key_path = dir.join(ISSUING_KEY);
        let key_pem = Secret::new(fsutil::read_ca_file(dir, ISSUING_KEY)?);
        fsutil::check_private(&key_path)?;
        let issuing_key = KeyPair::from_pem(key_pem.expose())
            .map_err(|e| CaError::bad_file(&key_path, format!("not a usable private key: {e}")))?;
        let (_, issuing) = x509_parser::parse_x509_certificate(&public.issuing_der)
            .map_err(|e| CaError::Parse(e.to_string()))?;
        if issuing.public_key().raw != issuing_key.subject_public_key_info().as_slice() {
            return Err(CaError::BrokenCa {
                dir: dir.to_path_buf(),
                reason: format!("{ISSUING_KEY} does not match {ISSUING_CRT}"),
            });
        }
        Ok(Ca {
            dir: dir.to_path_buf(),
            trust_domain: public.trust_domain,
            caps: public.meta_caps,
            issuing_key: Secret::new(issuing_key),
            validator: public.validator,
        })
    }

    /// The trust domain, e.g. `ward.dev`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lifetime caps from `ca.json`.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// A validator for certificates of this CA.
    pub fn validator(&self) -> Validator {
        self.validator.clone()
    }

    /// Issue a certificate. Checks the name, org, roles and DNS names, refuses a TTL above the
    /// kind's cap, takes only the public key from a CSR, builds the certificate (see
    /// `docs/identity.md`), checks it with this CA's own validator, and appends a line to
    /// `issued.jsonl` before returning it.
    pub fn issue(&self, req: &IssueRequest, now: OffsetDateTime) -> Result<Issued, CaError> {
        names::check_name(&req.name)?;
        if let Some(org) = &req.org {
            names::check_org(org)?;
        }
        names::check_roles(&req.roles)?;
        if req.kind.is_person() && (!req.dns.is_empty() || !req.ips.is_empty()) {
            return Err(CaError::SansForPerson { kind: req.kind });
        }
        for d in &req.dns {
            names::check_dns_name(d)?;
        }
        let ttl = req.ttl.unwrap_or_else(|| self.caps.default_ttl(req.kind));
        if ttl <= Duration::ZERO {
            return Err(CaError::TtlNotPositive {
                ttl: format_duration(ttl),
            });
        }
        let cap = self.caps.max_ttl(req.kind);
        if ttl > cap {
            return Err(CaError::TtlOverCap {
                ttl: format_duration(ttl),
                kind: req.kind,
                cap: format_duration(cap),
            });
        }

        let (subject_key, key_pem): (Box<dyn PublicKeyData>, Option<Secret<String>>) =
            match &req.csr_pem {
                Some(csr) => (Box::new(csr_public_key(csr)?), None),
                None => {
                    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
                    let pem = Secret::new(key.serialize_pem());
                    (Box::new(key), Some(pem))
                }
            };

        let now = whole_seconds(now);
        let uri = identity::spiffe_uri(&self.trust_domain, req.kind, &req.name);
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(org) = &req.org {
            dn.push(DnType::OrganizationName, org.as_str());
        }
        if !req.roles.is_empty() {
            dn.push(DnType::OrganizationalUnitName, req.roles.join(","));
        }
        dn.push(DnType::CommonName, req.name.as_str());
        p.distinguished_name = dn;
        let uri_san = rcgen::string::Ia5String::try_from(uri.as_str())?;
        p.subject_alt_names = vec![SanType::URI(uri_san)];
        for d in &req.dns {
            let d = rcgen::string::Ia5String::try_from(d.as_str())?;
            p.subject_alt_names.push(SanType::DnsName(d));
        }
        p.subject_alt_names
            .extend(req.ips.iter().copied().map(SanType::IpAddress));
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = if req.kind.is_person() {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        p.serial_number = Some(random_serial());
        p.not_before = now - MAX_SKEW;
        p.not_after = now + ttl;
        p.use_authority_key_identifier_extension = true;

        let issuing_der = self.validator.issuing_der();
        let issuer = Issuer::from_ca_cert_der(&issuing_der.into(), self.issuing_key.expose())?;
        let subject_key: &dyn PublicKeyData = &*subject_key;
        let cert = p.signed_by(&subject_key, &issuer)?;

        let usage = if req.kind.is_person() {
            Usage::Client
        } else {
            Usage::Server
        };
        let identity = self
            .validator
            .validate(cert.der(), &[issuing_der], usage, now)
            .map_err(CaError::SelfCheck)?;

        let chain_pem = format!(
            "{}{}",
            cert.pem(),
            pem::encode(&pem::Pem::new("CERTIFICATE", issuing_der.to_vec()))
        );
        self.log_issued(&identity, now)?;
        Ok(Issued {
            chain_pem,
            key_pem,
            identity,
        })
    }

    fn log_issued(&self, id: &Identity, now: OffsetDateTime) -> Result<(), CaError> {
        let line = serde_json::json!({
            "time": rfc3339(now),
            "serial": id.serial,
            "kind": id.kind,
            "name": id.name,
            "org": id.org,
            "roles": id.roles,
            "not_before": rfc3339(id.not_before),
            "not_after": rfc3339(id.not_after),
            "uri": id.uri,
        });
        fsutil::append_line(&self.dir.join(ISSUED_LOG), &line.to_string(), PUBLIC)
    }
}

/// Checks a PEM CSR as [`Ca::issue`] will (PEM, PKCS#10, a supported key, a valid
/// self-signature) without issuing: for a request kept until someone approves it
/// (`ward login --sso`), so a CSR that could never be certified is refused at once.
pub fn check_csr(csr_pem: &str) -> Result<(), CaError> {
    csr_public_key(csr_pem).map(|_| ())
}

/// Parse a PEM CSR, verify its self-signature, and return only its public key. Everything else
/// in the CSR (subject, SANs, basicConstraints, key usages, any extension) is ignored.
fn csr_public_key(csr_pem: &str) -> Result<SubjectPublicKeyInfo, CaError> {
    let block = pem::parse(csr_pem).map_err(|e| CaError::Csr(format!("not PEM: {e}")))?;
    if !matches!(
        block.tag(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) {
        return Err(CaError::Csr(format!(
            "PEM block is \"{}\", expected \"CERTIFICATE REQUEST\"",
            names::printable(block.tag())
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|e| CaError::Csr(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::Csr("trailing data after the request".into()));
    }
    // The key type first: a key Ward does not support would otherwise fail as "its signature does
    // not verify", which sends its owner looking for the wrong problem.
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::EC(point)) if matches!(point.key_size(), 256 | 384) => {}
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => {}
        Ok(PublicKey::Unknown(_))
            if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => {}
        _ => {
            return Err(CaError::Csr(
                "unsupported public key (use ECDSA P-256/P-384, Ed25519 or RSA >= 2048 bits)"
                    .into(),
            ))
        }
    }
    csr.verify_signature().map_err(|_| {
        CaError::Csr("its signature does not verify with its own public key".into())
    })?;
    SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CaError::Csr(format!("unsupported public key: {e}")))
}
