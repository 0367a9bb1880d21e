//! Shared helpers: a CA in a temporary directory at a fixed time, and a forger that signs
//! arbitrary certificates with that CA's issuing key (to build certificates Ward would never
//! issue and check that the validator refuses them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use ward_ca::{Ca, FixedClock};

pub const TD: &str = "ward.dev";

/// The fixed "now" of every test.
pub fn t0() -> OffsetDateTime {
    datetime!(2026-03-01 12:00:00 UTC)
}

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub ca: Ca,
    pub clock: FixedClock,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let clock = FixedClock::new(t0());
        // The CA was created a day before "now", as in real life.
        let ca = Ca::init(&tmp.path().join("ca"), TD, false, t0() - Duration::days(1)).unwrap();
        Env { tmp, ca, clock }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("ca")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Parameters shaped like a Ward vendor certificate issued at `t0` for 1 hour.
pub fn good_params(uri: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "acme");
    dn.push(DnType::CommonName, "jdoe");
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = t0() - Duration::seconds(60);
    p.not_after = t0() + Duration::hours(1);
    p
}

/// Sign `params` with the issuing key found in `ca_dir`.
pub fn forge_in(ca_dir: &Path, params: &CertificateParams) -> Vec<u8> {
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("issuing.key")).unwrap()).unwrap();
    let cert_pem = std::fs::read_to_string(ca_dir.join("issuing.crt")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).unwrap();
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    params.signed_by(&leaf_key, &issuer).unwrap().der().to_vec()
}

pub fn run(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed?)"));
    out
}
