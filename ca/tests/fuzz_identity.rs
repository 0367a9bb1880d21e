//! Fuzz-style property tests of certificate identity extraction and CSR handling (security case
//! 28): `Validator::validate` and `inspect` on random DER, mutated real certificates, and
//! certificates with arbitrary names, SANs and validity signed by the real issuing key (so the
//! identity checks behind the signature check are reached); `Ca::issue` with random and mutated
//! CSRs. The CI smoke run of what the `fuzz/` targets do in depth (see `docs/fuzzing.md`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use proptest::prelude::*;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use time::{Duration, OffsetDateTime};
use ward_ca::{inspect, CaError, Identity, IssueRequest, Kind, Usage, ValidationError};

struct Fixture {
    env: Env,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    /// A certificate Ward issued, DER, and its identity.
    cert: Vec<u8>,
    identity: Identity,
    /// A CSR (DER) and the SPKI it carries.
    csr: Vec<u8>,
    csr_spki: Vec<u8>,
}

thread_local! {
    static FX: Fixture = fixture();
}

fn fixture() -> Fixture {
    let env = Env::new();
    let key = KeyPair::from_pem(&std::fs::read_to_string(env.dir().join("issuing.key")).unwrap())
        .unwrap();
    let cert_pem = std::fs::read_to_string(env.dir().join("issuing.crt")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).unwrap();
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut req = IssueRequest::new(Kind::Vendor, "jdoe");
    req.org = Some("acme".into());
    req.roles = vec!["biomed".into(), "oncall".into()];
    let issued = env.ca.issue(&req, t0()).unwrap();
    let cert = pem::parse_many(&issued.chain_pem).unwrap()[0]
        .contents()
        .to_vec();
    let csr_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "root");
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://ward.dev/admin/root".try_into().unwrap(),
    )];
    let csr = p.serialize_request(&csr_key).unwrap().der().to_vec();
    Fixture {
        env,
        issuer,
        leaf_key,
        cert,
        identity: issued.identity,
        csr,
        csr_spki: csr_key.subject_public_key_info(),
    }
}

fn chain_pem(leaf: &[u8], issuing: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", leaf.to_vec()))
        + &pem::encode(&pem::Pem::new("CERTIFICATE", issuing.to_vec()))
}

/// validate + inspect on any leaf: never panic; errors are described; a success is a Ward
/// identity in our trust domain whose fields pass the same checks again.
fn check_leaf(fx: &Fixture, der: &[u8], now: OffsetDateTime) -> Result<(), TestCaseError> {
    let v = fx.env.ca.validator();
    for usage in [Usage::Client, Usage::Server] {
        for intermediates in [&[][..], &[v.issuing_der()][..]] {
            match v.validate(der, intermediates, usage, now) {
                Ok(id) => {
                    prop_assert!(id.uri.starts_with("spiffe://ward.dev/"), "{}", id.uri);
                    prop_assert_eq!(&id.trust_domain, "ward.dev");
                    prop_assert_eq!(
                        &id.uri,
                        &format!("spiffe://ward.dev/{}/{}", id.kind, id.name)
                    );
                    prop_assert!(id.not_before <= now + v.max_skew());
                    prop_assert!(now <= id.not_after + v.max_skew());
                    for s in std::iter::once(&id.name)
                        .chain(id.org.iter())
                        .chain(id.roles.iter())
                    {
                        prop_assert!(!s.chars().any(char::is_control), "{:?}", s);
                    }
                }
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    prop_assert!(!e.check().is_empty());
                }
            }
        }
    }
    let pem = chain_pem(der, v.issuing_der());
    for validator in [None, Some(&v)] {
        match inspect(&pem, validator, now) {
            Ok(i) => {
                let shown = i.to_string();
                prop_assert!(!shown.is_empty());
                // Peer-controlled text is escaped before it reaches a terminal.
                prop_assert!(
                    !shown.chars().any(|c| c.is_control() && c != '\n'),
                    "{:?}",
                    shown
                );
                prop_assert_eq!(i.chain_len, 2);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
    Ok(())
}

fn arb_mutation() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    // (operation, position, byte)
    proptest::collection::vec((0u8..4, any::<usize>(), any::<u8>()), 1..4)
}

fn mutate(base: &[u8], muts: &[(u8, usize, u8)]) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(op, at, x) in muts {
        let n = b.len();
        match op {
            0 if n > 0 => b[at % n] ^= x.max(1),
            1 => b.truncate(at % (n + 1)),
            2 => b.insert(at % (n + 1), x),
            _ if n > 0 => {
                b.remove(at % n);
            }
            _ => {}
        }
    }
    b
}

/// Text for names, SANs and subject attributes: the safe set, separators, and anything.
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9][a-z0-9._-]{0,12}",
        1 => "[a-zA-Z0-9 ,./:@%?#\\\\-]{0,16}",
        1 => "\\PC{0,12}",
        1 => proptest::sample::select(vec![
            "", ".", "..", "-", "a,b", ",", "a,,b", "\u{1b}[2J", "a\nb", "ａ", "x".repeat(300).leak(),
        ]).prop_map(str::to_owned),
    ]
}

fn arb_uri() -> impl Strategy<Value = String> {
    let kind = proptest::sample::select(vec![
        "vendor",
        "clinician",
        "service",
        "gateway",
        "security",
        "admin",
        "robot",
        "",
        "VENDOR",
    ]);
    let td = proptest::sample::select(vec![
        "ward.dev",
        "evil.dev",
        "ward.dev:443",
        "user@ward.dev",
        "",
        "WARD.DEV",
        "ward.dev.",
    ]);
    prop_oneof![
        4 => (td, kind, arb_name()).prop_map(|(td, k, n)| format!("spiffe://{td}/{k}/{n}")),
        1 => "[ -~]{0,40}",
    ]
}

fn arb_time() -> impl Strategy<Value = OffsetDateTime> {
    prop_oneof![
        // Around "now".
        (-7200i64..7200).prop_map(|s| t0() + Duration::seconds(s)),
        // Anywhere an X.509 time can be (UTCTime 1950..2049, GeneralizedTime to 9999).
        (-631_152_000i64..253_402_300_799)
            .prop_map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap()),
        Just(OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap()), // 9999-12-31T23:59:59Z
        Just(OffsetDateTime::from_unix_timestamp(-62_167_219_200).unwrap()), // 0000-01-01T00:00:00Z
    ]
}

#[derive(Clone, Debug)]
struct Forged {
    uris: Vec<String>,
    dns: Vec<String>,
    orgs: Vec<String>,
    ous: Vec<String>,
    cn: Option<String>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ca: bool,
    eku: u8,
}

/// Mostly a certificate Ward would accept, with one or more fields pushed somewhere else, so
/// every check after the signature is reached.
fn arb_forged() -> impl Strategy<Value = Forged> {
    let good_uri =
        "[a-z0-9][a-z0-9._-]{0,12}".prop_map(|n| vec![format!("spiffe://ward.dev/vendor/{n}")]);
    let uris = prop_oneof![
        3 => good_uri,
        1 => proptest::collection::vec(arb_uri(), 0..3),
    ];
    let dns = prop_oneof![
        3 => Just(vec![]),
        1 => proptest::collection::vec("[a-z0-9.*-]{0,20}", 0..2),
    ];
    let orgs = prop_oneof![
        2 => Just(vec![]),
        2 => Just(vec!["acme".to_string()]),
        1 => proptest::collection::vec(arb_name(), 0..3),
    ];
    let ous = prop_oneof![
        2 => Just(vec![]),
        2 => Just(vec!["biomed,oncall".to_string()]),
        1 => proptest::collection::vec(arb_name(), 0..3),
    ];
    let not_before = prop_oneof![3 => Just(t0() - Duration::seconds(60)), 1 => arb_time()];
    let not_after = prop_oneof![3 => Just(t0() + Duration::hours(1)), 1 => arb_time()];
    (
        (uris, dns, orgs, ous, proptest::option::of(arb_name())),
        (not_before, not_after),
        prop_oneof![4 => Just(false), 1 => Just(true)],
        prop_oneof![4 => Just(1u8), 1 => 0u8..4],
    )
        .prop_map(
            |((uris, dns, orgs, ous, cn), (not_before, not_after), ca, eku)| Forged {
                uris,
                dns,
                orgs,
                ous,
                cn,
                not_before,
                not_after,
                ca,
                eku,
            },
        )
}

/// Sign the forged certificate with the real issuing key (`None` if rcgen refuses the values,
/// e.g. a non-IA5 URI).
fn forge(fx: &Fixture, f: &Forged) -> Option<Vec<u8>> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in &f.orgs {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    for ou in &f.ous {
        dn.push(DnType::OrganizationalUnitName, ou.as_str());
    }
    if let Some(cn) = &f.cn {
        dn.push(DnType::CommonName, cn.as_str());
    }
    p.distinguished_name = dn;
    for u in &f.uris {
        p.subject_alt_names
            .push(SanType::URI(u.as_str().try_into().ok()?));
    }
    for d in &f.dns {
        p.subject_alt_names
            .push(SanType::DnsName(d.as_str().try_into().ok()?));
    }
    p.is_ca = if f.ca {
        IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    p.extended_key_usages = match f.eku {
        0 => vec![],
        1 => vec![ExtendedKeyUsagePurpose::ClientAuth],
        2 => vec![ExtendedKeyUsagePurpose::ServerAuth],
        _ => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    p.not_before = f.not_before;
    p.not_after = f.not_after;
    Some(p.signed_by(&fx.leaf_key, &fx.issuer).ok()?.der().to_vec())
}

fn issue_with_csr(fx: &Fixture, csr_pem: String) -> Result<ward_ca::Issued, CaError> {
    let mut r = IssueRequest::new(Kind::Vendor, "jdoe");
    r.csr_pem = Some(csr_pem);
    fx.env.ca.issue(&r, t0())
}

/// Issuing from any CSR: never panics; success certifies exactly the CSR's key (and only if its
/// signature verified), with Ward's identity, not the CSR's.
fn check_csr(
    fx: &Fixture,
    csr_pem: String,
    expect_spki: Option<&[u8]>,
) -> Result<(), TestCaseError> {
    match issue_with_csr(fx, csr_pem) {
        Ok(issued) => {
            prop_assert!(issued.key_pem.is_none());
            prop_assert_eq!(issued.identity.principal(), "vendor jdoe");
            let der = pem::parse_many(&issued.chain_pem).unwrap()[0]
                .contents()
                .to_vec();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            if let Some(spki) = expect_spki {
                prop_assert_eq!(cert.public_key().raw, spki, "a different key was certified");
            }
        }
        Err(e) => {
            prop_assert!(matches!(e, CaError::Csr(_)), "{:?}", e);
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_der(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        FX.with(|fx| check_leaf(fx, &bytes, t0()))?;
    }

    #[test]
    fn mutated_issued_certificate(muts in arb_mutation()) {
        FX.with(|fx| {
            let der = mutate(&fx.cert, &muts);
            check_leaf(fx, &der, t0())?;
            // A change never yields a different identity (no forgery by bit flips).
            if let Ok(id) = fx.env.ca.validator().validate(&der, &[], Usage::Client, t0()) {
                prop_assert_eq!(id, fx.identity.clone());
            }
            Ok(())
        })?;
    }

    #[test]
    fn forged_certificates_signed_by_the_issuing_key(f in arb_forged(), offset in -7200i64..7200) {
        FX.with(|fx| {
            if let Some(der) = forge(fx, &f) {
                check_leaf(fx, &der, t0() + Duration::seconds(offset))?;
                let v = fx.env.ca.validator();
                if let Ok(id) = v.validate(&der, &[], Usage::Client, t0()) {
                    // What the validator accepted is exactly what the certificate says.
                    prop_assert_eq!(f.uris.len(), 1);
                    prop_assert_eq!(&id.uri, &f.uris[0]);
                    prop_assert!(!f.ca);
                    // (rcgen keeps one attribute per type, so read what was really encoded.)
                    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                    let orgs: Vec<_> = cert.subject().iter_organization().collect();
                    let ous: Vec<_> = cert.subject().iter_organizational_unit().collect();
                    prop_assert!(orgs.len() <= 1 && ous.len() <= 1);
                    prop_assert_eq!(
                        id.org.as_deref(),
                        orgs.first().map(|a| a.as_str().unwrap())
                    );
                    let roles: Option<Vec<&str>> =
                        ous.first().map(|a| a.as_str().unwrap().split(',').collect());
                    prop_assert_eq!(
                        id.roles.iter().map(String::as_str).collect::<Vec<_>>(),
                        roles.unwrap_or_default()
                    );
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn csr_random_text(text in "\\PC{0,200}") {
        FX.with(|fx| check_csr(fx, text, None))?;
    }

    #[test]
    fn csr_random_der(
        tag in proptest::sample::select(vec!["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST", "CERTIFICATE", "X"]),
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        FX.with(|fx| check_csr(fx, pem::encode(&pem::Pem::new(tag, bytes)), None))?;
    }

    #[test]
    fn csr_mutated(muts in arb_mutation()) {
        FX.with(|fx| {
            let der = mutate(&fx.csr, &muts);
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
            check_csr(fx, pem, Some(&fx.csr_spki))
        })?;
    }
}

#[test]
fn csrs_of_every_supported_key_type_certify_that_key() {
    FX.with(|fx| {
        for alg in [
            &PKCS_ECDSA_P256_SHA256,
            &PKCS_ECDSA_P384_SHA384,
            &PKCS_ED25519,
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, "x");
            let csr = p.serialize_request(&key).unwrap().pem().unwrap();
            let spki = key.subject_public_key_info();
            check_csr(fx, csr.clone(), Some(&spki)).unwrap();
            assert!(issue_with_csr(fx, csr).is_ok(), "{alg:?}");
        }
    });
}

#[test]
fn a_well_formed_forgery_validates_so_the_properties_above_are_live() {
    FX.with(|fx| {
        let f = Forged {
            uris: vec!["spiffe://ward.dev/vendor/jdoe".into()],
            dns: vec![],
            orgs: vec!["acme".into()],
            ous: vec!["biomed,oncall".into()],
            cn: Some("jdoe".into()),
            not_before: t0() - Duration::seconds(60),
            not_after: t0() + Duration::hours(1),
            ca: false,
            eku: 1,
        };
        let der = forge(fx, &f).unwrap();
        let id = fx
            .env
            .ca
            .validator()
            .validate(&der, &[], Usage::Client, t0())
            .unwrap();
        assert_eq!(id.principal(), "vendor acme/jdoe");
        check_leaf(fx, &der, t0()).unwrap();
    });
}

#[test]
fn extreme_validity_dates_are_errors_not_panics() {
    // Certificates at the edges of what X.509 can express, signed by the real issuing key: the
    // validator's skew arithmetic must not overflow.
    FX.with(|fx| {
        let min = OffsetDateTime::from_unix_timestamp(-62_167_219_200).unwrap();
        let max = OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap();
        for (nb, na) in [(min, max), (min, min), (max, max), (t0(), max), (min, t0())] {
            let f = Forged {
                uris: vec!["spiffe://ward.dev/vendor/jdoe".into()],
                dns: vec![],
                orgs: vec![],
                ous: vec![],
                cn: None,
                not_before: nb,
                not_after: na,
                ca: false,
                eku: 1,
            };
            let der = forge(fx, &f).unwrap();
            for now in [t0(), min, max] {
                check_leaf(fx, &der, now).unwrap();
            }
            let e = fx
                .env
                .ca
                .validator()
                .validate(&der, &[], Usage::Client, t0())
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    ValidationError::Expired { .. }
                        | ValidationError::NotYetValid { .. }
                        | ValidationError::LifetimeOverCap { .. }
                ),
                "{e:?}"
            );
        }
    });
}
