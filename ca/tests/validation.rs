//! One row per validation rule: build a certificate that breaks exactly that rule (signed with
//! the real issuing key unless the rule is about the signer) and check the validator names it.
// Test code: clippy.toml allows these inside #[test] fns; the shared helpers need it too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::Duration;
use ward_ca::{Ca, IssueRequest, Kind, Usage, ValidationError};

/// Builds the leaf DER and the intermediates to present.
type Build = Box<dyn Fn(&Env) -> (Vec<u8>, Vec<Vec<u8>>)>;

struct Case {
    name: &'static str,
    /// Leaf DER and the intermediates to present.
    build: Build,
    usage: Usage,
    /// `now` relative to t0.
    at: Duration,
    /// None = must validate; Some((check, text the message must contain)).
    want: Option<(&'static str, &'static str)>,
}

fn forged(mutate: impl Fn(&mut CertificateParams) + 'static) -> Build {
    Box::new(move |env: &Env| {
        let mut p = good_params("spiffe://ward.dev/vendor/jdoe");
        mutate(&mut p);
        (forge_in(&env.dir(), &p), vec![])
    })
}

fn issued(req: IssueRequest) -> Build {
    Box::new(move |env: &Env| {
        let issued = env.ca.issue(&req, t0()).unwrap();
        let ders: Vec<Vec<u8>> = pem::parse_many(&issued.chain_pem)
            .unwrap()
            .iter()
            .map(|p| p.contents().to_vec())
            .collect();
        (ders[0].clone(), ders[1..].to_vec())
    })
}

fn vendor() -> IssueRequest {
    let mut r = IssueRequest::new(Kind::Vendor, "jdoe");
    r.org = Some("acme".into());
    r.roles = vec!["biomed".into(), "oncall".into()];
    r
}

fn cases() -> Vec<Case> {
    let s = Duration::seconds;
    let case = |name, build, at, want| Case {
        name,
        build,
        usage: Usage::Client,
        at,
        want,
    };
    vec![
        case("ward-issued vendor cert", issued(vendor()), s(0), None),
        case("forged but well-formed", forged(|_| {}), s(0), None),
        case(
            "garbage bytes",
            Box::new(|_: &Env| (b"not a certificate".to_vec(), vec![])),
            s(0),
            Some(("parse", "could not be parsed")),
        ),
        case(
            "trailing data after the certificate",
            Box::new(|env: &Env| {
                let (mut der, _) = issued(vendor())(env);
                der.push(0);
                (der, vec![])
            }),
            s(0),
            Some(("parse", "trailing data")),
        ),
        case(
            "cert from another CA (same trust domain)",
            Box::new(|env: &Env| {
                let other =
                    Ca::init(&env.path("other"), TD, true, t0() - Duration::days(1)).unwrap();
                let issued = other.issue(&vendor(), t0()).unwrap();
                let der = pem::parse_many(&issued.chain_pem).unwrap()[0]
                    .contents()
                    .to_vec();
                (der, vec![])
            }),
            s(0),
            Some(("chain", "not by this CA's issuing CA")),
        ),
        case(
            "cert from another CA presented with that CA's intermediate",
            Box::new(|env: &Env| {
                let other =
                    Ca::init(&env.path("other"), TD, true, t0() - Duration::days(1)).unwrap();
                let issued = other.issue(&vendor(), t0()).unwrap();
                let ders = pem::parse_many(&issued.chain_pem).unwrap();
                (
                    ders[0].contents().to_vec(),
                    vec![ders[1].contents().to_vec()],
                )
            }),
            s(0),
            Some((
                "chain",
                "intermediate certificate is not this CA's issuing CA",
            )),
        ),
        case(
            "issuer name copied, signed by another key",
            Box::new(|env: &Env| {
                let ours = env.ca.validator();
                let (_, ours) = x509_parser::parse_x509_certificate(ours.issuing_der()).unwrap();
                let mut dn = DistinguishedName::new();
                for attr in ours.subject().iter_attributes() {
                    let ty =
                        DnType::from_oid(&attr.attr_type().iter().unwrap().collect::<Vec<_>>());
                    dn.push(ty, attr.as_str().unwrap());
                }
                let mut ca_params = CertificateParams::default();
                ca_params.distinguished_name = dn;
                let rogue = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
                let issuer = Issuer::new(ca_params, rogue);
                let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
                let der = good_params("spiffe://ward.dev/vendor/jdoe")
                    .signed_by(&leaf_key, &issuer)
                    .unwrap()
                    .der()
                    .to_vec();
                (der, vec![])
            }),
            s(0),
            Some(("chain", "signature does not verify")),
        ),
        case(
            "chain longer than leaf + issuing",
            Box::new(|env: &Env| {
                let (leaf, mut inter) = issued(vendor())(env);
                inter.push(env.ca.validator().root_der().to_vec());
                (leaf, inter)
            }),
            s(0),
            Some(("chain", "chain has 3 certificates")),
        ),
        case(
            "expired just inside skew (59 s)",
            issued(vendor()),
            s(3600 + 59),
            None,
        ),
        case(
            "expired just outside skew (61 s)",
            issued(vendor()),
            s(3600 + 61),
            Some((
                "validity",
                "certificate expired at 2026-03-01T13:00:00Z, 1m1s ago (tolerance 60s)",
            )),
        ),
        case(
            "expired long ago",
            issued(vendor()),
            Duration::days(2),
            Some(("validity", "certificate expired at")),
        ),
        // notBefore is t0 - 60 s, so "now" is measured from there.
        case(
            "not yet valid, just inside skew (59 s)",
            issued(vendor()),
            s(-60 - 59),
            None,
        ),
        case(
            "not yet valid, just outside skew (61 s)",
            issued(vendor()),
            s(-60 - 61),
            Some((
                "validity",
                "not valid until 2026-03-01T11:59:00Z, 1m1s from now",
            )),
        ),
        case(
            "leaf with CA:true",
            forged(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            s(0),
            Some(("ca", "CA:true")),
        ),
        case(
            "missing clientAuth EKU (serverAuth only)",
            forged(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]),
            s(0),
            Some((
                "eku",
                "lacks the clientAuth extended key usage required for client use",
            )),
        ),
        case(
            "no EKU extension at all",
            forged(|p| p.extended_key_usages = vec![]),
            s(0),
            Some(("eku", "clientAuth")),
        ),
        Case {
            name: "person cert presented as a server",
            build: issued(vendor()),
            usage: Usage::Server,
            at: s(0),
            want: Some(("eku", "serverAuth")),
        },
        Case {
            name: "gateway cert as a server",
            build: issued({
                let mut r = IssueRequest::new(Kind::Gateway, "gw1");
                r.dns = vec!["gw1.ward.dev".into()];
                r
            }),
            usage: Usage::Server,
            at: Duration::days(89),
            want: None,
        },
        case(
            "URI SAN missing (DNS SAN only)",
            forged(|p| {
                p.subject_alt_names = vec![SanType::DnsName("jdoe.example".try_into().unwrap())]
            }),
            s(0),
            Some(("uri", "no URI subject alternative name")),
        ),
        case(
            "no SAN extension",
            forged(|p| p.subject_alt_names = vec![]),
            s(0),
            Some(("uri", "no URI subject alternative name")),
        ),
        case(
            "two URI SANs",
            forged(|p| {
                p.subject_alt_names.push(SanType::URI(
                    "spiffe://ward.dev/admin/root".try_into().unwrap(),
                ))
            }),
            s(0),
            Some(("uri", "2 URI subject alternative names")),
        ),
        case(
            "URI SAN malformed (no name)",
            forged(|p| {
                p.subject_alt_names =
                    vec![SanType::URI("spiffe://ward.dev/vendor".try_into().unwrap())]
            }),
            s(0),
            Some(("uri", "is not a Ward SPIFFE ID: its path has one segment")),
        ),
        case(
            "URI SAN malformed (extra segment)",
            forged(|p| {
                p.subject_alt_names = vec![SanType::URI(
                    "spiffe://ward.dev/vendor/acme/jdoe".try_into().unwrap(),
                )]
            }),
            s(0),
            Some(("uri", "more than two segments")),
        ),
        case(
            "URI SAN not spiffe",
            forged(|p| {
                p.subject_alt_names = vec![SanType::URI(
                    "https://ward.dev/vendor/jdoe".try_into().unwrap(),
                )]
            }),
            s(0),
            Some(("uri", "does not start with spiffe://")),
        ),
        case(
            "URI SAN in another trust domain",
            forged(|p| {
                p.subject_alt_names = vec![SanType::URI(
                    "spiffe://evil.example/vendor/jdoe".try_into().unwrap(),
                )]
            }),
            s(0),
            Some(("uri", "trust domain \"evil.example\", not \"ward.dev\"")),
        ),
        case(
            "URI SAN with unknown kind",
            forged(|p| {
                p.subject_alt_names = vec![SanType::URI(
                    "spiffe://ward.dev/root/jdoe".try_into().unwrap(),
                )]
            }),
            s(0),
            Some(("uri", "kind \"root\" is unknown")),
        ),
        case(
            "URI SAN with unsafe name",
            forged(|p| {
                p.subject_alt_names = vec![SanType::URI(
                    "spiffe://ward.dev/vendor/j%1bdoe".try_into().unwrap(),
                )]
            }),
            s(0),
            Some(("name", "name contains '%' at position 1")),
        ),
        case(
            "role with an ANSI escape in the OU",
            forged(|p| {
                p.distinguished_name
                    .push(DnType::OrganizationalUnitName, "biomed,\u{1b}[31mroot")
            }),
            s(0),
            Some((
                "name",
                "role contains a control character (\\u{1b}, an ANSI escape) at position 0",
            )),
        ),
        case(
            "org with a newline",
            forged(|p| {
                p.distinguished_name
                    .push(DnType::OrganizationName, "acme\nlegit")
            }),
            s(0),
            Some((
                "name",
                "org contains a control character (\\n) at position 4",
            )),
        ),
        case(
            "lifetime over cap but correctly signed (one-year vendor cert)",
            forged(|p| p.not_after = t0() + Duration::days(365)),
            s(0),
            Some(("lifetime", "exceeds the vendor cap of 12h")),
        ),
        case(
            "lifetime exactly cap + backdate",
            forged(|p| p.not_after = t0() + Duration::hours(12)),
            s(0),
            None,
        ),
        case(
            "lifetime cap + backdate + 1 s",
            forged(|p| p.not_after = t0() + Duration::hours(12) + Duration::seconds(1)),
            s(0),
            Some((
                "lifetime",
                "certificate lifetime 12h1m1s exceeds the vendor cap of 12h",
            )),
        ),
        case(
            "issuing CA expired (leaf would be fine)",
            forged(|p| {
                p.not_before = t0() + Duration::days(1900);
                p.not_after = t0() + Duration::days(1900) + Duration::hours(1);
            }),
            Duration::days(1900) + s(10),
            Some(("validity", "issuing certificate is not valid")),
        ),
    ]
}

#[test]
fn validation_rules_table() {
    let env = Env::new();
    let validator = env.ca.validator();
    let mut failures = Vec::new();
    for case in cases() {
        let (leaf, inter) = (case.build)(&env);
        let inter: Vec<&[u8]> = inter.iter().map(Vec::as_slice).collect();
        let got = validator.validate(&leaf, &inter, case.usage, t0() + case.at);
        match (&got, case.want) {
            (Ok(id), None) => assert!(id.uri.starts_with("spiffe://ward.dev/"), "{}", case.name),
            (Err(e), Some((check, text))) if e.check() == check && e.to_string().contains(text) => {
            }
            (got, want) => failures.push(format!(
                "{}: got {got:?} / {}, wanted {want:?}",
                case.name,
                got.as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn valid_identity_fields() {
    let env = Env::new();
    let issued = env.ca.issue(&vendor(), t0()).unwrap();
    let ders = pem::parse_many(&issued.chain_pem).unwrap();
    assert_eq!(ders.len(), 2, "leaf + issuing CA");
    let id = env
        .ca
        .validator()
        .validate(
            ders[0].contents(),
            &[ders[1].contents()],
            Usage::Client,
            t0(),
        )
        .unwrap();
    assert_eq!(id, issued.identity);
    assert_eq!(id.kind, Kind::Vendor);
    assert_eq!(id.name, "jdoe");
    assert_eq!(id.org.as_deref(), Some("acme"));
    assert_eq!(id.roles, ["biomed", "oncall"]);
    assert_eq!(id.uri, "spiffe://ward.dev/vendor/jdoe");
    assert_eq!(id.trust_domain, "ward.dev");
    assert_eq!(id.principal(), "vendor acme/jdoe");
    assert_eq!(id.not_before, t0() - Duration::seconds(60));
    assert_eq!(id.not_after, t0() + Duration::hours(1));
    assert_eq!(id.serial.len(), 32, "128-bit serial: {}", id.serial);
    assert!(id
        .serial
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(ders[1].contents(), env.ca.validator().issuing_der());
}

#[test]
fn every_check_has_a_distinct_error_variant_order() {
    // A cert that is expired AND has CA:true AND a bad URI reports the first failing check
    // (validity), proving the order parse → chain → validity → ca → eku → uri → lifetime.
    let env = Env::new();
    let mut p = good_params("spiffe://evil.example/vendor/jdoe");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.extended_key_usages = vec![];
    let der = forge_in(&env.dir(), &p);
    let v = env.ca.validator();
    let at = |d: Duration| v.validate(&der, &[], Usage::Client, t0() + d).unwrap_err();
    assert!(matches!(
        at(Duration::days(1)),
        ValidationError::Expired { .. }
    ));
    assert!(matches!(at(Duration::ZERO), ValidationError::IsCa));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Arbitrary bytes are refused without panicking.
        #[test]
        fn garbage_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let env = ENV.with(|e| e.ca.validator());
            prop_assert!(env.validate(&bytes, &[], Usage::Client, t0()).is_err());
        }

        /// Flipping any bit of a valid certificate either breaks it or changes nothing the
        /// identity depends on (never yields a different identity).
        #[test]
        fn bit_flips_never_forge(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (validator, der, want) = ENV.with(fresh_cert);
            let mut der = der;
            let i = pos.index(der.len());
            der[i] ^= 1 << bit;
            if let Ok(id) = validator.validate(&der, &[], Usage::Client, t0()) {
                prop_assert_eq!(id, want);
            }
        }
    }

    thread_local! {
        static ENV: Env = Env::new();
    }

    fn fresh_cert(env: &Env) -> (ward_ca::Validator, Vec<u8>, ward_ca::Identity) {
        let issued = env.ca.issue(&vendor(), t0()).unwrap();
        let der = pem::parse_many(&issued.chain_pem).unwrap()[0]
            .contents()
            .to_vec();
        (env.ca.validator(), der, issued.identity)
    }
}
