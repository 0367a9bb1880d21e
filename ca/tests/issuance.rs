//! Issuing: input rules, CSR policy, files and modes, the issuance log, inspect round trip, and
//! interoperability with openssl.
// Test code: clippy.toml allows these inside #[test] fns; the shared helpers need it too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::Duration;
use ward_ca::{inspect, Ca, CaError, IssueRequest, Kind, Usage, Validator, Verdict};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn req(kind: Kind, name: &str) -> IssueRequest {
    IssueRequest::new(kind, name)
}

#[test]
fn issuance_input_rules_table() {
    let env = Env::new();
    let with = |f: &dyn Fn(&mut IssueRequest)| {
        let mut r = req(Kind::Vendor, "jdoe");
        f(&mut r);
        r
    };
    let table: Vec<(&str, IssueRequest, &str)> = vec![
        (
            "newline in name",
            req(Kind::Vendor, "jdoe\nadmin"),
            "name contains a control character (\\n) at position 4",
        ),
        (
            "ANSI escape in name",
            req(Kind::Clinician, "\u{1b}[2Jalice"),
            "name contains a control character (\\u{1b}, an ANSI escape) at position 0",
        ),
        (
            "slash in name",
            req(Kind::Vendor, "acme/jdoe"),
            "name contains '/' at position 4",
        ),
        ("empty name", req(Kind::Vendor, ""), "name is empty"),
        (
            "leading dash",
            req(Kind::Vendor, "-jdoe"),
            "name must not start with '-'",
        ),
        (
            "org with a space",
            with(&|r| r.org = Some("Acme Inc".into())),
            "org contains ' ' at position 4",
        ),
        (
            "role with a comma",
            with(&|r| r.roles = vec!["a,b".into()]),
            "role contains ','",
        ),
        (
            "duplicate role",
            with(&|r| r.roles = vec!["x".into(), "x".into()]),
            "roles lists \"x\" twice",
        ),
        (
            "TTL over the vendor cap",
            with(&|r| r.ttl = Some(Duration::hours(48))),
            "requested TTL 2d exceeds the vendor cap of 12h",
        ),
        (
            "TTL just over the vendor cap",
            with(&|r| r.ttl = Some(Duration::hours(12) + Duration::seconds(1))),
            "requested TTL 12h1s exceeds the vendor cap of 12h",
        ),
        (
            "zero TTL",
            with(&|r| r.ttl = Some(Duration::ZERO)),
            "must be longer than zero",
        ),
        (
            "admin TTL over 4h",
            IssueRequest {
                ttl: Some(Duration::hours(5)),
                ..req(Kind::Admin, "root")
            },
            "exceeds the admin cap of 4h",
        ),
        (
            "DNS SAN for a person",
            with(&|r| r.dns = vec!["jdoe.example".into()]),
            "--dns and --ip are only for gateway certificates, not vendor",
        ),
        (
            "IP SAN for a person",
            with(&|r| r.ips = vec!["10.0.0.1".parse().unwrap()]),
            "only for gateway",
        ),
        (
            "bad DNS name for a gateway",
            IssueRequest {
                dns: vec!["gw_1.example".into()],
                ..req(Kind::Gateway, "gw1")
            },
            "dns name contains '_' at position 2",
        ),
        (
            "gateway TTL over 397d",
            IssueRequest {
                ttl: Some(Duration::days(398)),
                ..req(Kind::Gateway, "gw1")
            },
            "exceeds the gateway cap of 397d",
        ),
    ];
    for (name, r, want) in table {
        let err = env.ca.issue(&r, t0()).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: {err}");
    }
    let log = std::fs::read_to_string(env.dir().join("issued.jsonl")).unwrap();
    assert!(log.is_empty(), "refused requests are not logged: {log}");

    // And the limits themselves are accepted.
    env.ca
        .issue(&with(&|r| r.ttl = Some(Duration::hours(12))), t0())
        .unwrap();
    let gw = env.ca.issue(&req(Kind::Gateway, "gw1"), t0()).unwrap();
    assert_eq!(
        gw.identity.not_after,
        t0() + Duration::days(90),
        "gateway default 90d"
    );
    let admin = env.ca.issue(&req(Kind::Admin, "root"), t0()).unwrap();
    assert_eq!(
        admin.identity.not_after,
        t0() + Duration::hours(1),
        "admin default 1h"
    );
}

fn csr_pem(mutate: impl FnOnce(&mut CertificateParams)) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "root");
    mutate(&mut p);
    let csr = p.serialize_request(&key).unwrap();
    (csr.pem().unwrap(), key)
}

#[test]
fn csr_only_its_public_key_is_used() {
    let env = Env::new();
    let (csr, key) = csr_pem(|p| {
        p.subject_alt_names = vec![
            SanType::DnsName("evil.example".try_into().unwrap()),
            SanType::URI("spiffe://ward.dev/admin/root".try_into().unwrap()),
            SanType::IpAddress("10.9.9.9".parse().unwrap()),
        ];
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::CodeSigning,
        ];
        p.distinguished_name.push(DnType::OrganizationName, "evil");
    });
    let mut r = req(Kind::Vendor, "jdoe");
    r.csr_pem = Some(csr);
    let issued = env.ca.issue(&r, t0()).unwrap();
    assert!(issued.key_pem.is_none(), "no key when issuing from a CSR");

    let der = pem::parse_many(&issued.chain_pem).unwrap()[0]
        .contents()
        .to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        key.subject_public_key_info().as_slice(),
        "the CSR's key is certified"
    );
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1, "only Ward's URI SAN: {sans:?}");
    assert_eq!(
        format!("{:?}", sans[0]),
        "URI(\"spiffe://ward.dev/vendor/jdoe\")"
    );
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("explicit basicConstraints");
    assert!(!bc.value.ca, "CA:true from the CSR must not survive");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.code_signing);
    assert_eq!(
        cert.subject().to_string(),
        "CN=jdoe",
        "subject is Ward's, not the CSR's"
    );
    assert_eq!(issued.identity.principal(), "vendor jdoe");
}

#[test]
fn csr_with_bad_signature_is_refused() {
    let env = Env::new();
    let (csr, _) = csr_pem(|_| {});
    let mut der = pem::parse(&csr).unwrap().contents().to_vec();
    // The signature BIT STRING ends the CSR: flip its last byte (part of ECDSA's s).
    *der.last_mut().unwrap() ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let mut r = req(Kind::Vendor, "jdoe");
    r.csr_pem = Some(tampered);
    let err = env.ca.issue(&r, t0()).unwrap_err();
    assert!(matches!(err, CaError::Csr(_)), "{err:?}");
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );

    let mut r = req(Kind::Vendor, "jdoe");
    r.csr_pem = Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
    let err = env.ca.issue(&r, t0()).unwrap_err().to_string();
    assert!(err.contains("expected \"CERTIFICATE REQUEST\""), "{err}");
}

/// Issue 12 item 7. Reproduction: a CSR for a key type Ward does not support (ECDSA P-521) was
/// refused with "its signature does not verify", not with the reason.
#[test]
fn csr_with_an_unsupported_key_type_says_so() {
    let env = Env::new();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "jdoe");
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let mut r = req(Kind::Vendor, "jdoe");
    r.csr_pem = Some(csr);
    let err = env.ca.issue(&r, t0()).unwrap_err().to_string();
    assert!(err.contains("unsupported public key"), "{err}");
}

#[test]
fn init_files_modes_and_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs-dev");
    let ca = Ca::init(&dir, "ward.dev", false, t0()).unwrap();
    assert_eq!(ca.trust_domain(), "ward.dev");
    for f in [
        "root.crt",
        "root.key",
        "issuing.crt",
        "issuing.key",
        "ca.json",
        "issued.jsonl",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&dir.join("root.key")), 0o600);
    assert_eq!(mode(&dir.join("issuing.key")), 0o600);
    assert_eq!(mode(&dir.join("root.crt")), 0o644);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ca.json")).unwrap()).unwrap();
    assert_eq!(meta["format_version"], 1);
    assert_eq!(meta["trust_domain"], "ward.dev");
    assert_eq!(meta["caps"]["vendor"]["max"], "12h");

    let err = Ca::init(&dir, "ward.dev", false, t0())
        .unwrap_err()
        .to_string();
    assert!(err.contains("use --force"), "{err}");
    let before = std::fs::read(dir.join("root.crt")).unwrap();
    let again = Ca::init(&dir, "other.dev", true, t0()).unwrap();
    assert_eq!(again.trust_domain(), "other.dev");
    assert_ne!(before, std::fs::read(dir.join("root.crt")).unwrap());
    assert_eq!(mode(&dir.join("root.key")), 0o600, "mode kept on --force");

    let err = Ca::init(&tmp.path().join("x"), "Bad Domain", false, t0())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("trust domain contains uppercase 'B'"),
        "{err}"
    );

    let debug = format!("{ca:?}");
    assert!(
        !debug.contains("PRIVATE KEY") && debug.contains("[redacted]"),
        "{debug}"
    );
}

#[test]
fn load_checks_files() {
    let env = Env::new();
    let dir = env.dir();
    // The root key is not needed to issue: it can live offline.
    std::fs::remove_file(dir.join("root.key")).unwrap();
    Ca::load(&dir)
        .unwrap()
        .issue(&req(Kind::Clinician, "alice"), t0())
        .unwrap();

    // A group-readable issuing key is refused.
    std::fs::set_permissions(
        dir.join("issuing.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let err = Ca::load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("readable by group or others (mode 640)"),
        "{err}"
    );
    std::fs::set_permissions(
        dir.join("issuing.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // Caps above the 24h ceiling for people are refused when loaded.
    let json = std::fs::read_to_string(dir.join("ca.json")).unwrap();
    let tampered = json.replacen("\"12h\"", "\"48h\"", 1);
    assert_ne!(json, tampered);
    std::fs::write(dir.join("ca.json"), &tampered).unwrap();
    let err = Ca::load(&dir).unwrap_err().to_string();
    assert!(err.contains("hard ceiling of 1d for people"), "{err}");
    let err = Validator::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("hard ceiling"), "{err}");
    std::fs::write(dir.join("ca.json"), &json).unwrap();

    // A key that does not belong to the certificate is refused.
    let other = Env::new();
    std::fs::copy(other.dir().join("issuing.key"), dir.join("issuing.key")).unwrap();
    let err = Ca::load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("issuing.key does not match issuing.crt"),
        "{err}"
    );

    // A missing directory says how to make one.
    let err = Ca::load(&env.path("nope")).unwrap_err().to_string();
    assert!(err.contains("ward ca init"), "{err}");
}

#[test]
fn validator_from_dir_needs_no_private_keys() {
    let env = Env::new();
    let public = env.path("public");
    std::fs::create_dir(&public).unwrap();
    for f in ["root.crt", "issuing.crt", "ca.json"] {
        std::fs::copy(env.dir().join(f), public.join(f)).unwrap();
    }
    let v = Validator::from_dir(&public).unwrap();
    assert_eq!(v.trust_domain(), "ward.dev");
    assert_eq!(v.root_der(), env.ca.validator().root_der());
    let issued = env.ca.issue(&req(Kind::Security, "sec1"), t0()).unwrap();
    let der = pem::parse_many(&issued.chain_pem).unwrap()[0]
        .contents()
        .to_vec();
    let id = v.validate(&der, &[], Usage::Client, t0()).unwrap();
    assert_eq!(id.principal(), "security sec1");

    // A validator is cheap to clone and usable across threads.
    fn assert_send_sync<T: Send + Sync + Clone>(_: &T) {}
    assert_send_sync(&v);

    // Swapping in another CA's issuing certificate breaks the chain to the root.
    let other = Env::new();
    std::fs::copy(other.dir().join("issuing.crt"), public.join("issuing.crt")).unwrap();
    let err = Validator::from_dir(&public).unwrap_err().to_string();
    assert!(err.contains("is broken"), "{err}");
}

#[test]
fn round_trip_issue_write_inspect_validate_and_log() {
    let env = Env::new();
    let mut r = req(Kind::Vendor, "jdoe");
    r.org = Some("acme".into());
    r.roles = vec!["biomed".into()];
    r.ttl = Some(Duration::minutes(30));
    let issued = env.ca.issue(&r, t0()).unwrap();
    let debug = format!("{issued:?}");
    assert!(
        !debug.contains("PRIVATE KEY") && debug.contains("[redacted]"),
        "{debug}"
    );
    assert!(issued
        .key_pem
        .as_ref()
        .unwrap()
        .expose()
        .contains("PRIVATE KEY"));

    let prefix = env.path("out/jdoe");
    issued.write(&prefix).unwrap();
    let crt = env.path("out/jdoe.crt");
    let key = env.path("out/jdoe.key");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&crt), 0o644);
    KeyPair::from_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();

    let pem_text = std::fs::read_to_string(&crt).unwrap();
    let v = Validator::from_dir(&env.dir()).unwrap();
    let now = t0() + Duration::minutes(10);
    let i = inspect(&pem_text, Some(&v), now).unwrap();
    assert_eq!(i.principal.as_deref(), Some("vendor acme/jdoe"));
    assert_eq!(i.kind, Some(Kind::Vendor));
    assert_eq!(i.roles, ["biomed"]);
    assert_eq!(i.serial, issued.identity.serial);
    assert_eq!(i.remaining_seconds, 20 * 60);
    assert_eq!(i.remaining, "20m");
    assert_eq!(i.chain_len, 2);
    assert_eq!(i.validation, Some(Verdict::Valid));
    assert!(
        i.issuer.contains("Ward issuing CA ward.dev"),
        "{}",
        i.issuer
    );
    let text = i.to_string();
    assert!(text.contains("validation: valid"), "{text}");
    let json = serde_json::to_value(&i).unwrap();
    assert_eq!(json["validation"]["valid"], true);
    assert_eq!(json["principal"], "vendor acme/jdoe");

    // Later, inspect says exactly which check fails.
    let late = inspect(&pem_text, Some(&v), t0() + Duration::hours(1)).unwrap();
    assert!(late.remaining_seconds < 0);
    assert!(
        late.to_string().contains("remaining:  expired 30m ago"),
        "{late}"
    );
    let Some(Verdict::Invalid(e)) = &late.validation else {
        panic!("{late:?}")
    };
    assert_eq!(e.check(), "validity");
    let json = serde_json::to_value(&late).unwrap();
    assert_eq!(json["validation"]["valid"], false);
    assert_eq!(json["validation"]["check"], "validity");
    assert!(json["validation"]["error"]
        .as_str()
        .unwrap()
        .contains("expired"));

    // Without a validator: fields only.
    assert_eq!(inspect(&pem_text, None, now).unwrap().validation, None);
    assert!(matches!(
        inspect("nothing here", None, now),
        Err(CaError::NoCertificate)
    ));

    // The issuance log has one line with the identity and no key material.
    let log = std::fs::read_to_string(env.dir().join("issued.jsonl")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1);
    assert!(!log.contains("PRIVATE"));
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["serial"], issued.identity.serial.as_str());
    assert_eq!(line["kind"], "vendor");
    assert_eq!(line["name"], "jdoe");
    assert_eq!(line["org"], "acme");
    assert_eq!(line["roles"], serde_json::json!(["biomed"]));
    assert_eq!(line["uri"], "spiffe://ward.dev/vendor/jdoe");
    assert_eq!(line["time"], "2026-03-01T12:00:00Z");
    assert_eq!(line["not_before"], "2026-03-01T11:59:00Z");
    assert_eq!(line["not_after"], "2026-03-01T12:30:00Z");
    let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 9, "{keys:?}");
}

#[test]
fn gateway_inspect_validates_as_server() {
    let env = Env::new();
    let mut r = req(Kind::Gateway, "gw1");
    r.dns = vec!["gw1.ward.dev".into(), "localhost".into()];
    r.ips = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let issued = env.ca.issue(&r, t0()).unwrap();
    let i = inspect(&issued.chain_pem, Some(&env.ca.validator()), t0()).unwrap();
    assert_eq!(i.validation, Some(Verdict::Valid));
    assert_eq!(i.dns, ["gw1.ward.dev", "localhost"]);
    assert_eq!(i.ips.len(), 2);
    assert_eq!(i.principal.as_deref(), Some("gateway gw1"));
}

/// Real peer: openssl must accept the chain and show the SPIFFE URI. Fails (never skips) when
/// openssl is missing.
#[test]
fn openssl_interop() {
    let env = Env::new();
    let mut r = req(Kind::Vendor, "jdoe");
    r.org = Some("acme".into());
    r.roles = vec!["biomed".into(), "oncall".into()];
    let vendor = env.ca.issue(&r, t0()).unwrap();
    vendor.write(&env.path("jdoe")).unwrap();
    let mut g = req(Kind::Gateway, "gw1");
    g.dns = vec!["gw1.ward.dev".into()];
    let gw = env.ca.issue(&g, t0()).unwrap();
    gw.write(&env.path("gw1")).unwrap();

    let dir = env.dir();
    let attime = (t0() + Duration::minutes(5)).unix_timestamp().to_string();
    for (leaf, purpose) in [("jdoe.crt", "sslclient"), ("gw1.crt", "sslserver")] {
        let out = run(Command::new("openssl")
            .arg("verify")
            .args(["-attime", &attime, "-purpose", purpose, "-x509_strict"])
            .arg("-CAfile")
            .arg(dir.join("root.crt"))
            .arg("-untrusted")
            .arg(dir.join("issuing.crt"))
            .arg(env.path(leaf)));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "openssl verify {leaf}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A person's certificate is not good for a server.
    let out = run(Command::new("openssl")
        .arg("verify")
        .args(["-attime", &attime, "-purpose", "sslserver"])
        .arg("-CAfile")
        .arg(dir.join("root.crt"))
        .arg("-untrusted")
        .arg(dir.join("issuing.crt"))
        .arg(env.path("jdoe.crt")));
    assert!(
        !out.status.success(),
        "openssl accepted a client cert for sslserver"
    );

    let out = run(Command::new("openssl")
        .args(["x509", "-text", "-noout", "-in"])
        .arg(env.path("jdoe.crt")));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "URI:spiffe://ward.dev/vendor/jdoe",
        "CA:FALSE",
        "TLS Web Client Authentication",
        "Digital Signature",
        "Subject: O = acme, OU = \"biomed,oncall\", CN = jdoe",
        "ASN1 OID: prime256v1",
    ] {
        assert!(
            text.contains(want),
            "openssl x509 -text lacks {want:?}:\n{text}"
        );
    }
    assert!(!text.contains("TLS Web Server Authentication"));

    let out = run(Command::new("openssl")
        .args(["x509", "-text", "-noout", "-in"])
        .arg(dir.join("issuing.crt")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
}
