//! Shared fixtures and checks for the fuzz targets. Each target is a thin `fuzz_target!` around
//! one of the `check_*` functions here; a failed property is a panic, which libFuzzer reports as
//! a crash and saves under `fuzz/artifacts/<target>/`. The same properties run as proptest
//! harnesses in `cargo test` (see docs/fuzzing.md for the mapping).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use ward_recording::audit::{verify_audit, AuditChain, AuditEvent, AuditPrincipal};
use ward_recording::export::{self, AsciicastOpts, TelnetFilter};
use ward_recording::{
    seal_interrupted, verify, CheckpointPolicy, Direction, Encoder, EndInfo, Reader, Record,
    SealStatus, SessionMeta, Signer, MAGIC,
};

/// Splits fuzz input into a mode byte and the rest.
pub fn mode(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((m, rest)) => (*m, rest),
        None => (0, data),
    }
}

/// Applies edits encoded in `edits` (4 bytes each: op, position u16 BE, byte) to `base`.
/// Returns the result and the offset of its first byte that differs from `base`.
pub fn apply_edits(base: &[u8], edits: &[u8]) -> (Vec<u8>, usize) {
    let mut b = base.to_vec();
    for e in edits.chunks_exact(4) {
        let (op, at, x) = (e[0], usize::from(u16::from_be_bytes([e[1], e[2]])), e[3]);
        let n = b.len();
        match op % 4 {
            0 if n > 0 => b[at % n] ^= x.max(1),
            1 => b.truncate(at % (n + 1)),
            2 => b.insert(at % (n + 1), x),
            _ if n > 0 => {
                b.remove(at % n);
            }
            _ => {}
        }
    }
    let first = base
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(base.len().min(b.len()));
    (b, first)
}

// ------------------------------------------------------------------------------------------------
// Control frames.

/// decode/decode_request/decode_response on any bytes: never panic, never read past the buffer,
/// oversize lengths refused from the header alone, whole frames round-trip through encode.
pub fn check_frame(buf: &[u8]) {
    use ward_core::frame::{
        decode, decode_request, decode_response, encode, Frame, FrameError, HEADER_LEN, MAX_PAYLOAD,
    };
    let got = decode(buf);
    let declared = buf
        .get(1..HEADER_LEN)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
    match &got {
        Ok(None) => {
            if let Some(len) = declared {
                assert!(len <= MAX_PAYLOAD);
                assert!(buf.len() < HEADER_LEN + len);
            }
        }
        Ok(Some((frame, used))) => {
            assert_eq!(Some(*used), declared.map(|l| l + HEADER_LEN));
            assert!(*used <= buf.len());
            assert_eq!(decode(&buf[..*used]), got);
            assert_eq!(decode(&buf[..*used - 1]), Ok(None));
            match encode(frame) {
                Ok(bytes) => {
                    assert_eq!(decode(&bytes), Ok(Some((frame.clone(), bytes.len()))));
                }
                Err(FrameError::TooLarge { .. }) => assert!(*used > MAX_PAYLOAD / 2),
                Err(e) => panic!("re-encoding a decoded frame failed: {e}"),
            }
        }
        Err(FrameError::UnknownType(t)) => assert_eq!(buf.first(), Some(t)),
        Err(FrameError::TooLarge { len }) => {
            assert!(*len > MAX_PAYLOAD);
            assert_eq!(decode(&buf[..HEADER_LEN]), got);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let (req, resp) = (decode_request(buf), decode_response(buf));
    match got {
        Ok(None) => assert!(req == Ok(None) && resp == Ok(None)),
        Ok(Some((Frame::Request(r), used))) => {
            assert_eq!(req, Ok(Some((r, used))));
            assert!(matches!(resp, Err(FrameError::WrongDirection { .. })));
        }
        Ok(Some((Frame::Response(r), used))) => {
            assert_eq!(resp, Ok(Some((r, used))));
            assert!(matches!(req, Err(FrameError::WrongDirection { .. })));
        }
        Err(e) => assert!(req == Err(e.clone()) && resp == Err(e)),
    }
}

// ------------------------------------------------------------------------------------------------
// Configuration.

/// Config::parse: never panics; errors name the file and a location inside the text.
pub fn check_config(text: &str) {
    match ward_core::Config::parse(text, "fuzz.toml") {
        Ok(c) => {
            assert_eq!(ward_core::Config::parse(text, "fuzz.toml"), Ok(c.clone()));
            for d in &c.devices {
                assert!(c.device(d.id.as_str()).is_some());
            }
        }
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.toml:"));
            if let Some(loc) = e.location {
                let lines: Vec<&str> = text.split('\n').collect();
                assert!(loc.line >= 1 && loc.line <= lines.len());
                assert!(loc.column >= 1 && loc.column <= lines[loc.line - 1].chars().count() + 1);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Recordings and audit logs.

/// A signer and real files made with it.
pub struct RecFixture {
    /// The gateway key.
    pub signer: Arc<Signer>,
    /// A sealed telnet recording.
    pub recording: Vec<u8>,
    /// An audit log ending with a checkpoint.
    pub audit: Vec<u8>,
}

fn meta() -> SessionMeta {
    SessionMeta {
        session_id: "s-fuzz".into(),
        principal_kind: "vendor".into(),
        principal_name: "acme-field-service".into(),
        principal_org: Some("ACME".into()),
        cert_serial: "5a3f01".into(),
        source: "192.0.2.10:50123".into(),
        device: "pump-12".into(),
        device_addr: "10.20.0.12:23".into(),
        protocol: "telnet".into(),
        rule: "r".into(),
        transport: "quic".into(),
        break_glass: false,
        started_unix_ms: 1_795_000_000_123,
        recipients: Vec::new(),
        age_header: None,
    }
}

/// An audit event with hostile text in it.
pub fn event(i: u64) -> AuditEvent {
    let mut detail = BTreeMap::new();
    detail.insert("n".to_string(), serde_json::json!(i));
    AuditEvent {
        time: "2026-11-22T08:15:57.123Z".into(),
        event: "session_open".into(),
        outcome: "success".into(),
        severity: "info".into(),
        principal: Some(AuditPrincipal {
            name: format!("user-{i}\n\u{1b}[2J\"}}"),
            kind: "vendor".into(),
            org: None,
            serial: "0a".into(),
        }),
        source: Some("192.0.2.1:4000".into()),
        device: Some("pump-12".into()),
        session_id: Some(format!("s-{i}")),
        reason: None,
        detail,
    }
}

/// Built once per process.
pub fn rec_fixture() -> &'static RecFixture {
    static F: OnceLock<RecFixture> = OnceLock::new();
    F.get_or_init(|| {
        let signer = Arc::new(Signer::generate().expect("key").0);
        let policy = CheckpointPolicy {
            every_records: 3,
            every_ns: u64::MAX,
        };
        let mut recording = Vec::new();
        let mut enc =
            Encoder::start(&meta(), signer.clone(), policy, &mut recording).expect("meta");
        let chunks: [&[u8]; 6] = [
            &[255, 251, 1, 255, 251, 3, b'l', b'o', b'g', b'i', b'n', b':'],
            b"admin\r\n",
            &[255, 250, 24, 0, b'x', 255, 240, b'$', b' ', 255, 255],
            "ü→\u{1b}[31mred".as_bytes(),
            &[0xe2, 0x86],
            &[0x92, b'\n', 255, 241],
        ];
        for (i, c) in chunks.iter().enumerate() {
            let dir = if i % 2 == 0 {
                Direction::Down
            } else {
                Direction::Up
            };
            enc.data(dir, 1_000 * (i as u64 + 1), c, &mut recording);
        }
        let end = EndInfo {
            ended_unix_ms: 1_795_000_009_000,
            reason: "client closed".into(),
            bytes_up: 0,
            bytes_down: 0,
        };
        enc.finish(1_000_000, &end, &mut recording);
        assert!(verify(&recording, &signer.public_key()).ok);
        let mut chain = AuditChain::new(signer.clone(), policy);
        let mut audit = Vec::new();
        for i in 0..5 {
            audit.extend(chain.line(&event(i), i));
        }
        audit.extend(chain.checkpoint(5));
        assert!(verify_audit(&audit, &signer.public_key()).ok);
        RecFixture {
            signer,
            recording,
            audit,
        }
    })
}

/// The recording readers on any bytes. Mode bit 0 clear: the input is the file (after the magic
/// if bit 1 is set); set: the input edits a real recording, and then the verifier must notice.
pub fn check_recording(data: &[u8]) {
    let f = rec_fixture();
    let (m, rest) = mode(data);
    let (bytes, first) = if m & 1 == 1 {
        apply_edits(&f.recording, rest)
    } else if m & 2 == 2 {
        ([MAGIC.as_slice(), rest].concat(), 0)
    } else {
        (rest.to_vec(), 0)
    };
    // Reader: contiguous records inside the buffer, at most one error, last.
    let mut r = Reader::new(&bytes);
    let mut records = Vec::new();
    let mut next = MAGIC.len() as u64;
    let mut errored = false;
    while let Some(item) = r.next_record() {
        assert!(!errored, "an item after an error");
        match item {
            Ok(at) => {
                assert_eq!(at.offset, next);
                assert!(at.offset + at.len <= bytes.len() as u64);
                next = at.offset + at.len;
                records.push(at.record);
            }
            Err(e) => {
                assert!(e.offset() <= bytes.len() as u64);
                errored = true;
            }
        }
    }
    assert!(r.next_record().is_none());
    check_exports(&records);
    let key = f.signer.public_key();
    let report = verify(&bytes, &key);
    assert!(report.valid_prefix_len <= bytes.len() as u64);
    if m & 1 == 1 && bytes != f.recording {
        assert!(!report.ok, "a changed recording verified");
        assert!(report.valid_prefix_len <= first as u64);
    }
    let mut out = Vec::new();
    if let Ok(keep) = seal_interrupted(&bytes, &f.signer, "fuzz", 5, &mut out) {
        let mut sealed = bytes[..keep as usize].to_vec();
        sealed.extend_from_slice(&out);
        let r = verify(&sealed, &key);
        assert!(
            r.ok && r.status != SealStatus::Unsealed,
            "sealed recording does not verify"
        );
    }
}

/// Exports of any decoded records: never panic, well-formed output.
pub fn check_exports(records: &[Record]) {
    for include_input in [false, true] {
        let opts = AsciicastOpts {
            include_input,
            ..AsciicastOpts::default()
        };
        if let Ok(cast) = export::asciicast(records, &opts) {
            for line in cast.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                assert!(serde_json::from_slice::<serde_json::Value>(line).is_ok());
            }
        }
    }
    let _ = export::json_lines(records);
    let _ = export::raw(records);
    let a: SocketAddr = "192.0.2.10:50123".parse().expect("addr");
    let b: SocketAddr = "[2001:db8::1]:23".parse().expect("addr");
    let _ = export::pcap(records, a, b);
    for r in records {
        if let Record::Data { dir, t_ns, payload } = r {
            let dump = export::hexdump(*t_ns, *dir, payload);
            assert_eq!(dump.lines().count(), payload.len().div_ceil(16));
        }
    }
}

/// The audit-log verifier and resume on any bytes (mode bit 0: edits of a real log).
pub fn check_audit(data: &[u8]) {
    let f = rec_fixture();
    let (m, rest) = mode(data);
    let (bytes, first) = if m & 1 == 1 {
        apply_edits(&f.audit, rest)
    } else {
        (rest.to_vec(), 0)
    };
    let key = f.signer.public_key();
    let report = verify_audit(&bytes, &key);
    assert!(report.valid_prefix_len <= bytes.len() as u64);
    if m & 1 == 1 && bytes != f.audit {
        // A cut right after a checkpoint line is undetectable by design (see the format doc).
        let cut_after_checkpoint = f.audit.starts_with(&bytes)
            && (bytes.is_empty()
                || bytes.ends_with(b"}\n") && {
                    let body = &bytes[..bytes.len() - 1];
                    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                    body[start..].starts_with(br#"{"type":"checkpoint""#)
                });
        if !cut_after_checkpoint {
            assert!(!report.ok, "a changed audit log verified");
            assert!(report.valid_prefix_len <= first as u64);
        }
    }
    let policy = CheckpointPolicy {
        every_records: 2,
        every_ns: u64::MAX,
    };
    if let Ok((mut chain, keep)) = AuditChain::resume(&bytes, f.signer.clone(), policy) {
        let mut log = bytes[..keep as usize].to_vec();
        log.extend(chain.line(&event(99), 1));
        log.extend(chain.checkpoint(2));
        assert!(verify_audit(&log, &key).ok, "resumed log does not verify");
    }
}

/// The telnet filter: output never longer than input, and the same however the stream is split
/// (the first byte picks the split points).
pub fn check_telnet(data: &[u8]) {
    let (step, input) = mode(data);
    let whole = TelnetFilter::new().filter(input);
    assert!(whole.len() <= input.len());
    if !input.contains(&255) {
        assert_eq!(whole, input);
    }
    let mut f = TelnetFilter::new();
    let mut out = Vec::new();
    for chunk in input.chunks(usize::from(step).max(1)) {
        f.push(chunk, &mut out);
    }
    assert_eq!(out, whole);
    let dump = export::hexdump(u64::from(step) << 40, Direction::Down, input);
    assert!(!dump.chars().any(|c| c.is_control() && c != '\n'));
}

// ------------------------------------------------------------------------------------------------
// Certificates and CSRs.

/// A CA in a temporary directory, an issued certificate, a CSR, and the issuing key for forging.
pub struct CaFixture {
    _dir: tempfile::TempDir,
    /// The CA.
    pub ca: ward_ca::Ca,
    /// A vendor certificate it issued (DER).
    pub cert: Vec<u8>,
    /// Its identity.
    pub identity: ward_ca::Identity,
    /// A CSR (DER) and the SPKI it carries.
    pub csr: Vec<u8>,
    /// The CSR's key.
    pub csr_spki: Vec<u8>,
    issuing_key_pem: String,
    issuing_cert_pem: String,
}

/// The fixed "now".
pub fn now() -> time::OffsetDateTime {
    time::macros::datetime!(2026-03-01 12:00:00 UTC)
}

/// Built once per process.
pub fn ca_fixture() -> &'static CaFixture {
    use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, PKCS_ECDSA_P256_SHA256};
    static F: OnceLock<CaFixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let ca = ward_ca::Ca::init(&ca_dir, "ward.dev", false, now() - time::Duration::days(1))
            .expect("ca");
        let mut req = ward_ca::IssueRequest::new(ward_ca::Kind::Vendor, "jdoe");
        req.org = Some("acme".into());
        req.roles = vec!["biomed".into()];
        let issued = ca.issue(&req, now()).expect("issue");
        let cert = pem::parse_many(&issued.chain_pem).expect("pem")[0]
            .contents()
            .to_vec();
        let csr_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "root");
        let csr = p.serialize_request(&csr_key).expect("csr").der().to_vec();
        CaFixture {
            issuing_key_pem: std::fs::read_to_string(ca_dir.join("issuing.key")).expect("key"),
            issuing_cert_pem: std::fs::read_to_string(ca_dir.join("issuing.crt")).expect("crt"),
            _dir: dir,
            ca,
            cert,
            identity: issued.identity,
            csr,
            csr_spki: csr_key.subject_public_key_info(),
        }
    })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(rest.len());
    let (a, b) = rest.split_at(n);
    *rest = b;
    a
}

/// A certificate signed by the real issuing key whose URI SAN, O, OU and validity come from
/// the input, so the checks behind the signature are reached.
fn forge(f: &CaFixture, mut rest: &[u8]) -> Option<Vec<u8>> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
        PKCS_ECDSA_P256_SHA256,
    };
    let flags = take(&mut rest, 1).first().copied().unwrap_or(0);
    let mut times = [0i64; 2];
    for t in &mut times {
        let mut b = [0u8; 8];
        b.copy_from_slice(&[take(&mut rest, 8), &[0; 8]].concat()[..8]);
        // Anywhere in 0000-01-01 ..= 9999-12-31T23:59:59Z, biased to the ends and to "now".
        let v = i64::from_be_bytes(b);
        *t = match v.rem_euclid(4) {
            0 => now().unix_timestamp() + (v >> 2) % 7200,
            1 => 253_402_300_799 - (v >> 2).rem_euclid(86_400),
            2 => -62_167_219_200 + (v >> 2).rem_euclid(86_400),
            _ => (v >> 2).rem_euclid(253_402_300_799 + 62_167_219_200) - 62_167_219_200,
        };
    }
    let text = String::from_utf8_lossy(rest).into_owned();
    let mut parts = text.splitn(3, '\u{0}');
    let uri = parts.next().unwrap_or_default();
    let org = parts.next();
    let ou = parts.next();
    let mut p = CertificateParams::default();
    let uri = if flags & 1 == 0 {
        format!("spiffe://ward.dev/vendor/{uri}")
    } else {
        uri.to_owned()
    };
    p.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().ok()?)];
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    if let Some(ou) = ou {
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, ou);
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(times[0]).ok()?;
    p.not_after = time::OffsetDateTime::from_unix_timestamp(times[1]).ok()?;
    let key = KeyPair::from_pem(&f.issuing_key_pem).ok()?;
    let issuer = Issuer::from_ca_cert_pem(&f.issuing_cert_pem, key).ok()?;
    static LEAF: OnceLock<KeyPair> = OnceLock::new();
    let leaf = LEAF.get_or_init(|| KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key"));
    Some(p.signed_by(leaf, &issuer).ok()?.der().to_vec())
}

/// Validator::validate and inspect. Mode 0: the input is the leaf DER; 1: edits of an issued
/// certificate (never a different identity); 2: the input is PEM text; 3: a forged
/// certificate signed by the issuing key.
pub fn check_cert(data: &[u8]) {
    let f = ca_fixture();
    let v = f.ca.validator();
    let (m, rest) = mode(data);
    let der = match m % 4 {
        0 => rest.to_vec(),
        1 => apply_edits(&f.cert, rest).0,
        2 => {
            let text = String::from_utf8_lossy(rest);
            for validator in [None, Some(&v)] {
                if let Ok(i) = ward_ca::inspect(&text, validator, now()) {
                    assert!(!i.to_string().chars().any(|c| c.is_control() && c != '\n'));
                }
            }
            return;
        }
        _ => match forge(f, rest) {
            Some(der) => der,
            None => return,
        },
    };
    for usage in [ward_ca::Usage::Client, ward_ca::Usage::Server] {
        for intermediates in [&[][..], &[v.issuing_der()][..]] {
            match v.validate(&der, intermediates, usage, now()) {
                Ok(id) => {
                    assert_eq!(id.uri, format!("spiffe://ward.dev/{}/{}", id.kind, id.name));
                    if m % 4 == 1 {
                        assert_eq!(
                            id, f.identity,
                            "an edited certificate gave another identity"
                        );
                    }
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
    let chain = pem::encode(&pem::Pem::new("CERTIFICATE", der))
        + &pem::encode(&pem::Pem::new("CERTIFICATE", v.issuing_der().to_vec()));
    for validator in [None, Some(&v)] {
        if let Ok(i) = ward_ca::inspect(&chain, validator, now()) {
            assert!(!i.to_string().chars().any(|c| c.is_control() && c != '\n'));
        }
    }
}

/// Ca::issue from a CSR. Mode 0: the input is the PEM text; 1: DER in a CSR PEM block; 2: edits
/// of a real CSR (success must certify the CSR's own key). Success never takes anything but the
/// key from the CSR.
pub fn check_csr(data: &[u8]) {
    let f = ca_fixture();
    let (m, rest) = mode(data);
    let pem_text = match m % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", rest.to_vec())),
        _ => pem::encode(&pem::Pem::new(
            "CERTIFICATE REQUEST",
            apply_edits(&f.csr, rest).0,
        )),
    };
    let mut r = ward_ca::IssueRequest::new(ward_ca::Kind::Vendor, "jdoe");
    r.csr_pem = Some(pem_text);
    match f.ca.issue(&r, now()) {
        Ok(issued) => {
            assert!(issued.key_pem.is_none());
            assert_eq!(issued.identity.principal(), "vendor jdoe");
            if m % 3 == 2 {
                let der = pem::parse_many(&issued.chain_pem).expect("pem")[0]
                    .contents()
                    .to_vec();
                let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
                assert_eq!(cert.public_key().raw, f.csr_spki.as_slice());
            }
        }
        Err(e) => assert!(matches!(e, ward_ca::CaError::Csr(_)), "{e:?}"),
    }
}
