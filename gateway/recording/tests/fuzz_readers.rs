//! Fuzz-style property tests of every reader of untrusted bytes in this crate (security cases 27
//! and 28): the recording `Reader`, `verify`, `seal_interrupted`, the audit-log verifier and
//! `AuditChain::resume`, and the exports a reviewer runs on a recording they were handed
//! (`TelnetFilter`, asciicast, pcap, JSON lines, raw, hexdump). The CI smoke run of what the
//! `fuzz/` targets do in depth (see `docs/fuzzing.md`).
//!
//! Inputs: real recordings and audit logs made with the crate's own `Encoder`/`AuditChain`, with
//! bytes flipped, truncated, inserted or removed, and purely random bytes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use ward_recording::audit::{verify_audit, AuditChain, AuditEvent, AuditPrincipal};
use ward_recording::export::{self, AsciicastOpts, TelnetFilter};
use ward_recording::*;

const IAC: u8 = 255;

struct Fixtures {
    signer: Arc<Signer>,
    /// Sealed recordings: a telnet session with negotiation and UTF-8, and a short one.
    recordings: Vec<Vec<u8>>,
    /// Audit logs: checkpoint every 3 lines, ends with a checkpoint.
    audit: Vec<u8>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let signer = common::signer();
        let mut recordings = Vec::new();
        for (id, every, chunks) in [
            ("s-telnet", 3u64, telnet_chunks()),
            ("s-short", 1024, vec![b"x".to_vec()]),
        ] {
            let mut out = Vec::new();
            let policy = CheckpointPolicy {
                every_records: every,
                every_ns: u64::MAX,
            };
            let mut enc =
                Encoder::start(&common::meta(id), signer.clone(), policy, &mut out).unwrap();
            for (i, c) in chunks.iter().enumerate() {
                let dir = if i % 2 == 0 {
                    Direction::Down
                } else {
                    Direction::Up
                };
                enc.data(dir, 1_000 * (i as u64 + 1), c, &mut out);
            }
            enc.finish(1_000_000, &common::end_info(), &mut out);
            assert!(verify(&out, &signer.public_key()).ok);
            recordings.push(out);
        }
        let mut chain = AuditChain::new(
            signer.clone(),
            CheckpointPolicy {
                every_records: 3,
                every_ns: u64::MAX,
            },
        );
        let mut audit = Vec::new();
        for i in 0..7u64 {
            audit.extend(chain.line(&event(i), i));
        }
        audit.extend(chain.checkpoint(7));
        assert!(verify_audit(&audit, &signer.public_key()).ok);
        Fixtures {
            signer,
            recordings,
            audit,
        }
    })
}

fn telnet_chunks() -> Vec<Vec<u8>> {
    vec![
        vec![IAC, 251, 1, IAC, 251, 3, b'l', b'o', b'g', b'i', b'n', b':'],
        b"admin\r\n".to_vec(),
        vec![IAC, 250, 24, 0, b'x', b't', IAC, 240, b'$', b' ', IAC, IAC],
        "ü→\u{1b}[31mred\u{1b}[0m".as_bytes().to_vec(),
        vec![0xe2, 0x86],
        vec![0x92, b'\n', IAC],
        vec![241, b'e', b'n', b'd'],
    ]
}

fn event(i: u64) -> AuditEvent {
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

/// One change to a file: what was done and the first byte it touched.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, n: usize },
    Overwrite { at: usize, bytes: Vec<u8> },
}

fn arb_mutation() -> impl Strategy<Value = (Vec<Mutation>, usize)> {
    let at = any::<usize>();
    let one = prop_oneof![
        (at, 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        at.prop_map(|at| Mutation::Truncate { at }),
        (at, proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (at, 1usize..32).prop_map(|(at, n)| Mutation::Remove { at, n }),
        (
            at,
            proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\n'), Just(b'"'), Just(0xff)],
                1..8
            )
        )
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
    ];
    (proptest::collection::vec(one, 1..4), any::<usize>())
}

/// Applies the mutations; returns the new bytes and the offset of the first byte that differs
/// from `base` (its length if one is a prefix of the other).
fn apply(base: &[u8], muts: &[Mutation]) -> (Vec<u8>, usize) {
    let mut b = base.to_vec();
    for m in muts {
        let n = b.len();
        match m {
            Mutation::Flip { at, mask } if n > 0 => b[at % n] ^= mask,
            Mutation::Truncate { at } => b.truncate(at % (n + 1)),
            Mutation::Insert { at, bytes } => {
                let at = at % (n + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove { at, n: k } if n > 0 => {
                let at = at % n;
                b.drain(at..(at + k).min(n));
            }
            Mutation::Overwrite { at, bytes } if n > 0 => {
                for (slot, x) in b.iter_mut().skip(at % n).zip(bytes) {
                    *slot = *x;
                }
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

/// The `Reader` contract on any input: records are contiguous and inside the buffer, ordinals
/// count up, at most one error and it is last, and the iterator stays finished.
fn check_reader(buf: &[u8]) -> Result<Vec<Record>, TestCaseError> {
    let mut r = Reader::new(buf);
    let mut records = Vec::new();
    let mut expect_offset = None;
    let mut error = None;
    let mut steps = 0;
    while let Some(item) = r.next_record() {
        steps += 1;
        prop_assert!(steps <= buf.len() + 1, "more records than bytes");
        prop_assert!(error.is_none(), "an item after an error");
        match item {
            Ok(at) => {
                prop_assert_eq!(at.index, records.len() as u64);
                if let Some(o) = expect_offset {
                    prop_assert_eq!(at.offset, o);
                } else {
                    prop_assert_eq!(at.offset, MAGIC.len() as u64);
                }
                prop_assert!(at.len >= RECORD_HEADER_LEN as u64);
                prop_assert!(
                    at.offset + at.len <= buf.len() as u64,
                    "record past the end"
                );
                expect_offset = Some(at.offset + at.len);
                prop_assert_eq!(r.offset(), at.offset + at.len);
                if let Record::Data { payload, .. } = &at.record {
                    prop_assert!(payload.len() <= MAX_DATA_PAYLOAD);
                }
                records.push(at.record);
            }
            Err(e) => {
                prop_assert!(e.offset() <= buf.len() as u64);
                prop_assert!(!e.to_string().is_empty());
                error = Some(e);
            }
        }
    }
    prop_assert!(r.next_record().is_none(), "fused");
    // The other entry points agree with the iterator.
    let (prefix, err) = read_prefix(buf);
    prop_assert_eq!(&prefix, &records);
    prop_assert_eq!(err.clone(), error.clone());
    match read_all(buf) {
        Ok(all) => {
            prop_assert!(error.is_none());
            prop_assert_eq!(all, records.clone());
        }
        Err(e) => prop_assert_eq!(Some(e), error),
    }
    Ok(records)
}

/// What a reviewer does with the records of a file they were handed: never panics, and the
/// outputs are well-formed.
fn check_exports(records: &[Record]) -> Result<(), TestCaseError> {
    for include_input in [false, true] {
        let opts = AsciicastOpts {
            include_input,
            ..AsciicastOpts::default()
        };
        match export::asciicast(records, &opts) {
            Ok(cast) => {
                for line in cast.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    prop_assert!(
                        serde_json::from_slice::<serde_json::Value>(line).is_ok(),
                        "asciicast line is not JSON: {:?}",
                        String::from_utf8_lossy(line)
                    );
                }
            }
            Err(e) => prop_assert!(
                !records.iter().any(|r| matches!(r, Record::Meta(_))),
                "asciicast failed with a meta record: {e}"
            ),
        }
    }
    let lines = export::json_lines(records);
    prop_assert_eq!(
        lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        records.len()
    );
    let (up, down) = export::raw(records);
    let total: usize = records
        .iter()
        .map(|r| match r {
            Record::Data { payload, .. } => payload.len(),
            _ => 0,
        })
        .sum();
    prop_assert_eq!(up.len() + down.len(), total);
    let a: SocketAddr = "192.0.2.10:50123".parse().unwrap();
    let b: SocketAddr = "[2001:db8::1]:23".parse().unwrap();
    let pcap = export::pcap(records, a, b).unwrap();
    prop_assert!(pcap.len() >= 24);
    for r in records {
        if let Record::Data { dir, t_ns, payload } = r {
            let dump = export::hexdump(*t_ns, *dir, payload);
            prop_assert_eq!(dump.lines().count(), payload.len().div_ceil(16));
        }
    }
    Ok(())
}

/// `verify` on a changed recording: never ok, names a problem at or after the change, and its
/// valid prefix ends at or before the change.
fn check_verify_mutated(base: &[u8], bytes: &[u8], first: usize) -> Result<(), TestCaseError> {
    let key = fixtures().signer.public_key();
    let report = verify(bytes, &key);
    prop_assert!(report.valid_prefix_len <= bytes.len() as u64);
    prop_assert!(report.verified_records <= report.records);
    if let Some(e) = &report.first_error {
        prop_assert!(e.offset <= bytes.len() as u64);
        prop_assert!(!e.to_string().is_empty());
    }
    if bytes == base {
        prop_assert!(report.ok);
        return Ok(());
    }
    prop_assert!(!report.ok, "a changed recording verified: {:?}", report);
    prop_assert!(
        report.valid_prefix_len <= first as u64,
        "valid prefix {} extends past the change at {}",
        report.valid_prefix_len,
        first
    );
    Ok(())
}

/// `seal_interrupted` never panics; whatever it recovers verifies.
fn check_seal(bytes: &[u8]) -> Result<(), TestCaseError> {
    let f = fixtures();
    let mut out = Vec::new();
    match seal_interrupted(bytes, &f.signer, "fuzz", 5, &mut out) {
        Ok(keep) => {
            prop_assert!(keep <= bytes.len() as u64);
            let mut sealed = bytes[..keep as usize].to_vec();
            sealed.extend_from_slice(&out);
            let report = verify(&sealed, &f.signer.public_key());
            prop_assert!(report.ok, "sealed recording does not verify: {:?}", report);
            prop_assert!(report.status != SealStatus::Unsealed);
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

/// The line ends after which a cut cannot be detected (after a checkpoint line, or the start).
fn undetectable_audit_cuts(log: &[u8]) -> Vec<usize> {
    let mut cuts = vec![0];
    let mut pos = 0;
    for line in log.split_inclusive(|b| *b == b'\n') {
        pos += line.len();
        if line.starts_with(br#"{"type":"checkpoint""#) {
            cuts.push(pos);
        }
    }
    cuts
}

fn check_audit(base: &[u8], bytes: &[u8], first: usize) -> Result<(), TestCaseError> {
    let f = fixtures();
    let key = f.signer.public_key();
    let report = verify_audit(bytes, &key);
    prop_assert!(report.valid_prefix_len <= bytes.len() as u64);
    if let Some(e) = &report.first_error {
        prop_assert!(e.offset <= bytes.len() as u64);
    }
    let undetectable =
        base.starts_with(bytes) && undetectable_audit_cuts(base).contains(&bytes.len());
    if bytes != base && !undetectable {
        prop_assert!(!report.ok, "a changed audit log verified: {:?}", report);
        prop_assert!(report.valid_prefix_len <= first as u64);
    }
    // Resuming a damaged log either refuses (tampering) or continues a log that verifies.
    let policy = CheckpointPolicy {
        every_records: 2,
        every_ns: u64::MAX,
    };
    match AuditChain::resume(bytes, f.signer.clone(), policy) {
        Ok((mut chain, keep)) => {
            prop_assert!(keep <= bytes.len() as u64);
            let mut log = bytes[..keep as usize].to_vec();
            log.extend(chain.line(&event(99), 1));
            log.extend(chain.checkpoint(2));
            let r = verify_audit(&log, &key);
            prop_assert!(r.ok, "resumed log does not verify: {:?}", r);
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn reader_on_random_bytes(
        with_magic in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut buf = if with_magic { MAGIC.to_vec() } else { Vec::new() };
        buf.extend_from_slice(&bytes);
        let records = check_reader(&buf)?;
        check_exports(&records)?;
        let report = verify(&buf, &fixtures().signer.public_key());
        prop_assert!(!report.ok);
        check_seal(&buf)?;
    }

    #[test]
    fn reader_on_random_records(
        records in proptest::collection::vec(
            (0u8..8, prop_oneof![0u32..200, Just(MAX_RECORD_BODY), Just(MAX_RECORD_BODY + 1), any::<u32>()],
             proptest::collection::vec(any::<u8>(), 0..200)),
            0..6),
    ) {
        // Well-framed records of any type and declared length, bodies of any content.
        let mut buf = MAGIC.to_vec();
        for (code, len, body) in &records {
            buf.push(*code);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(body);
        }
        let recs = check_reader(&buf)?;
        check_exports(&recs)?;
        prop_assert!(!verify(&buf, &fixtures().signer.public_key()).ok);
        check_seal(&buf)?;
    }

    #[test]
    fn mutated_recordings((muts, which) in arb_mutation()) {
        let f = fixtures();
        let base = &f.recordings[which % f.recordings.len()];
        let (bytes, first) = apply(base, &muts);
        let records = check_reader(&bytes)?;
        check_exports(&records)?;
        check_verify_mutated(base, &bytes, first)?;
        check_seal(&bytes)?;
    }

    #[test]
    fn mutated_audit_logs((muts, _) in arb_mutation()) {
        let base = &fixtures().audit;
        let (bytes, first) = apply(base, &muts);
        check_audit(base, &bytes, first)?;
    }

    #[test]
    fn audit_verify_on_random_lines(
        lines in proptest::collection::vec(
            prop_oneof![
                "\\PC{0,40}",
                Just(r#"{"seq":1,"chain":"00"}"#.to_string()),
                Just(r#"{"type":"checkpoint","seq":1,"chain":"","key_id":"","sig":""}"#.to_string()),
                "\\{\"seq\":[0-9]{1,20},\"type\":\"checkpoint\"\\}",
            ],
            0..6),
        torn in any::<bool>(),
    ) {
        let mut log = lines.join("\n").into_bytes();
        if !torn && !log.is_empty() {
            log.push(b'\n');
        }
        let report = verify_audit(&log, &fixtures().signer.public_key());
        if !log.is_empty() {
            prop_assert!(!report.ok);
        }
        check_audit(&log, &log, usize::MAX)?;
    }

    #[test]
    fn telnet_filter_is_chunking_invariant(
        input in proptest::collection::vec(
            prop_oneof![3 => any::<u8>(), 1 => Just(IAC), 1 => 240u8..=255], 0..300),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let whole = TelnetFilter::new().filter(&input);
        prop_assert!(whole.len() <= input.len());
        if !input.contains(&IAC) {
            prop_assert_eq!(&whole, &input);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut f = TelnetFilter::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain([input.len()]) {
            f.push(&input[prev..c], &mut out);
            prev = c;
        }
        prop_assert_eq!(out, whole);
    }

    #[test]
    fn hexdump_of_any_payload(t_ns in any::<u64>(), up in any::<bool>(),
                              payload in proptest::collection::vec(any::<u8>(), 0..100)) {
        let dir = if up { Direction::Up } else { Direction::Down };
        let dump = export::hexdump(t_ns, dir, &payload);
        prop_assert_eq!(dump.lines().count(), payload.len().div_ceil(16));
        // Peer bytes never reach the reviewer's terminal as control characters.
        prop_assert!(!dump.chars().any(|c| c.is_control() && c != '\n'));
    }
}

#[test]
fn telnet_filter_unescapes_and_drops_negotiation() {
    let input = [
        b'a', IAC, IAC, b'b', IAC, 251, 1, b'c', IAC, 250, 24, IAC, IAC, b'z', IAC, 240, b'd', IAC,
        241, b'e',
    ];
    assert_eq!(TelnetFilter::new().filter(&input), b"a\xffbcde");
}

#[test]
fn every_single_byte_flip_of_a_recording_is_detected() {
    // Exhaustive over the short recording (a few hundred bytes): the strongest form of the
    // mutation property, cheap enough to run every time.
    let f = fixtures();
    let base = &f.recordings[1];
    let key = f.signer.public_key();
    for at in 0..base.len() {
        let mut b = base.clone();
        b[at] ^= 0x01;
        let r = verify(&b, &key);
        assert!(!r.ok, "flip at {at} verified");
        assert!(r.valid_prefix_len <= at as u64, "flip at {at}: {r:?}");
    }
    for cut in 0..base.len() {
        assert!(!verify(&base[..cut], &key).ok, "cut at {cut} verified");
    }
}
