//! Recording format: round trip, tamper detection (table-driven), crash sealing, robustness, size.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};
use common::*;
use proptest::prelude::*;
use ward_recording::export::{raw, read_all};
use ward_recording::*;

#[test]
fn round_trip_bytes_and_hashes_per_direction() {
    let s = signer();
    let mut out = Vec::new();
    let mut enc = Encoder::start(
        &meta("rt-1"),
        s.clone(),
        CheckpointPolicy::default(),
        &mut out,
    )
    .unwrap();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut x: u32 = 12345;
    for i in 0..500u64 {
        // Pseudo-random chunk sizes 1..=4096 with all byte values, including never-echoed input.
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let len = (x >> 8) as usize % 4096 + 1;
        let payload: Vec<u8> = (0..len).map(|j| (x as usize + j * 31) as u8).collect();
        let dir = if x % 3 == 0 {
            Direction::Up
        } else {
            Direction::Down
        };
        match dir {
            Direction::Up => up.extend_from_slice(&payload),
            Direction::Down => down.extend_from_slice(&payload),
        }
        enc.data(dir, i * 1000, &payload, &mut out);
        if enc.checkpoint_due(i * 1000) {
            enc.checkpoint(i * 1000, &mut out);
        }
    }
    let end = EndInfo {
        bytes_up: up.len() as u64,
        bytes_down: down.len() as u64,
        ..end_info()
    };
    enc.finish(600_000, &end, &mut out);

    let records = read_all(&out).unwrap();
    let (rup, rdown) = raw(&records);
    assert_eq!(rup, up);
    assert_eq!(rdown, down);
    assert_eq!(
        digest(&SHA256, &rup).as_ref(),
        digest(&SHA256, &up).as_ref()
    );
    assert_eq!(
        digest(&SHA256, &rdown).as_ref(),
        digest(&SHA256, &down).as_ref()
    );

    let report = verify(&out, &s.public_key());
    assert!(report.ok, "{:?}", report.first_error);
    assert_eq!(report.status, SealStatus::Sealed);
    assert_eq!(report.meta, Some(meta("rt-1")));
    assert_eq!(report.end, Some(end));
    assert_eq!(report.records, report.verified_records);
    assert_eq!(report.valid_prefix_len, out.len() as u64);
    assert_eq!(report.records, records.len() as u64);
}

#[test]
fn layout_meta_first_then_checkpoints_every_n() {
    let s = signer();
    let (bytes, _, _) = recording(&s, "layout", 10, 20, 4);
    let l = layout(&bytes);
    let kinds: Vec<char> = l
        .iter()
        .map(|r| match r.record {
            Record::Meta(_) => 'M',
            Record::Data { .. } => 'D',
            Record::Checkpoint { .. } => 'C',
            Record::End { .. } => 'E',
            Record::Interrupted { .. } => 'I',
            Record::Event { .. } => 'V',
            Record::Sealed { .. } => 'S',
        })
        .collect();
    assert_eq!(kinds.iter().collect::<String>(), "MCDDDDCDDDDCDDEC");
    for r in &l {
        if let Record::Checkpoint { index, key_id, .. } = &r.record {
            assert_eq!(*index, r.index);
            assert_eq!(key_id, &s.key_id());
        }
    }
    assert_eq!(&bytes[..8], MAGIC);
}

#[test]
fn checkpoint_due_by_count_and_time() {
    let s = signer();
    let mut out = Vec::new();
    let policy = CheckpointPolicy {
        every_records: 100,
        every_ns: 1_000,
    };
    let mut enc = Encoder::start(&meta("due"), s, policy, &mut out).unwrap();
    assert!(
        !enc.checkpoint_due(10_000),
        "nothing new since the initial checkpoint"
    );
    enc.data(Direction::Up, 10, b"x", &mut out);
    assert!(!enc.checkpoint_due(500));
    assert!(enc.checkpoint_due(1_000));
    let before = out.len();
    enc.checkpoint(1_000, &mut out);
    assert!(out.len() > before);
    let before = out.len();
    enc.checkpoint(2_000, &mut out);
    assert_eq!(out.len(), before, "no checkpoint without new records");
    assert_eq!(enc.records(), 4);
}

#[test]
fn empty_and_huge_payloads() {
    let s = signer();
    let mut out = Vec::new();
    let mut enc = Encoder::start(
        &meta("big"),
        s.clone(),
        CheckpointPolicy::default(),
        &mut out,
    )
    .unwrap();
    enc.data(Direction::Up, 1, b"", &mut out);
    assert_eq!(enc.records(), 2, "empty payload writes nothing");
    let big = vec![7u8; MAX_DATA_PAYLOAD * 2 + 5];
    enc.data(Direction::Down, 2, &big, &mut out);
    assert_eq!(enc.records(), 5, "split into three records");
    enc.finish(3, &end_info(), &mut out);
    assert!(verify(&out, &s.public_key()).ok);
    assert_eq!(raw(&read_all(&out).unwrap()).1, big);
}

type Mutate = fn(&mut Vec<u8>, &[RecordAt], &Arc<Signer>);

fn flip(bytes: &mut [u8], at: u64) {
    bytes[at as usize] ^= 0x01;
}

fn remove(bytes: &mut Vec<u8>, r: &RecordAt) {
    let (a, b) = (r.offset as usize, (r.offset + r.len) as usize);
    bytes.drain(a..b);
}

/// Each row: how the sealed 16-record recording (layout `MCDDDDCDDDDCDDEC`, records 0..=15) is
/// damaged, the record verification must name, words its message must contain, and the status.
#[test]
fn tamper_cases_name_the_first_bad_record() {
    let s = signer();
    let our_kid = s.key_id();
    let rows: Vec<(&str, Mutate, u64, Vec<String>, SealStatus)> = vec![
        (
            "flipped byte in a data payload",
            |b, l, _| flip(b, l[3].offset + 13 + 4),
            6,
            vec![
                "chain mismatch at checkpoint".into(),
                "among records 2..5".into(),
            ],
            SealStatus::Unsealed,
        ),
        (
            "flipped byte in a data header (direction)",
            |b, l, _| flip(b, l[8].offset),
            11,
            vec![
                "chain mismatch at checkpoint".into(),
                "among records 7..10".into(),
            ],
            SealStatus::Unsealed,
        ),
        (
            "flipped byte in a data header (time)",
            |b, l, _| flip(b, l[8].offset + 5),
            11,
            vec!["chain mismatch at checkpoint".into()],
            SealStatus::Unsealed,
        ),
        (
            "flipped byte in a data header (length)",
            |b, l, _| flip(b, l[8].offset + 1),
            9,
            vec!["unknown record type".into(), "length was altered".into()],
            SealStatus::Unsealed,
        ),
        (
            "flipped byte in the meta record",
            |b, _, _| {
                let at = b.windows(8).position(|w| w == b"infusion").unwrap();
                flip(b, at as u64 + 2);
            },
            1,
            vec!["chain mismatch at checkpoint".into()],
            SealStatus::Unsealed,
        ),
        (
            "flipped byte in the magic",
            |b, _, _| flip(b, 2),
            0,
            vec!["bad magic".into()],
            SealStatus::Unsealed,
        ),
        (
            "flipped byte in a checkpoint signature",
            |b, l, _| flip(b, l[6].offset + l[6].len - 1),
            6,
            vec![format!(
                "signature does not verify with the gateway key {}",
                ""
            )],
            SealStatus::Unsealed,
        ),
        (
            "flipped byte in a checkpoint index",
            |b, l, _| flip(b, l[6].offset + 5),
            6,
            vec!["signature does not verify".into()],
            SealStatus::Unsealed,
        ),
        (
            "flipped byte in the end reason",
            |b, l, _| flip(b, l[14].offset + l[14].len - 1),
            15,
            vec![
                "chain mismatch at checkpoint".into(),
                "among records 12..14".into(),
            ],
            SealStatus::Unsealed,
        ),
        (
            "deleted data record",
            |b, l, _| remove(b, &l[8]),
            10,
            vec![
                "chain mismatch at checkpoint".into(),
                "deleted, reordered or altered".into(),
            ],
            SealStatus::Unsealed,
        ),
        (
            "deleted checkpoint",
            |b, l, _| remove(b, &l[6]),
            10,
            vec!["checkpoint index 11 does not match its position 10".into()],
            SealStatus::Unsealed,
        ),
        (
            "two data records swapped",
            |b, l, _| {
                let (r8, r9) = (&l[8], &l[9]);
                let a = b[r8.offset as usize..(r8.offset + r8.len) as usize].to_vec();
                let c = b[r9.offset as usize..(r9.offset + r9.len) as usize].to_vec();
                let mut swapped = c;
                swapped.extend_from_slice(&a);
                b.splice(r8.offset as usize..(r9.offset + r9.len) as usize, swapped);
            },
            11,
            vec!["chain mismatch at checkpoint".into()],
            SealStatus::Unsealed,
        ),
        (
            "tail cut after the last checkpoint",
            |b, l, _| b.truncate(l[12].offset as usize),
            12,
            vec![
                "recording ends after record 11 without an end record (truncated or interrupted)"
                    .into(),
            ],
            SealStatus::Unsealed,
        ),
        (
            "tail cut mid-record",
            |b, l, _| b.truncate((l[13].offset + 7) as usize),
            13,
            vec!["truncated record".into(), "tail cut mid-record".into()],
            SealStatus::Unsealed,
        ),
        (
            "final checkpoint cut",
            |b, l, _| b.truncate(l[15].offset as usize),
            15,
            vec!["the end record 14 is not covered by a final checkpoint".into()],
            SealStatus::Unsealed,
        ),
        (
            "record appended after the final checkpoint",
            |b, _, _| {
                b.extend_from_slice(&[0x02, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'!']);
            },
            16,
            vec!["after the final checkpoint (appended)".into()],
            SealStatus::Sealed,
        ),
        (
            "checkpoint appended after the final checkpoint",
            |b, l, _| {
                let cp = b[l[15].offset as usize..].to_vec();
                b.extend_from_slice(&cp);
            },
            16,
            vec!["after the final checkpoint (appended)".into()],
            SealStatus::Sealed,
        ),
        (
            "checkpoint copied from another recording",
            |b, l, s| {
                let (other, _, _) = recording(s, "another-session", 10, 20, 4);
                let ol = layout(&other);
                let cp = other[ol[6].offset as usize..(ol[6].offset + ol[6].len) as usize].to_vec();
                b.splice(l[6].offset as usize..(l[6].offset + l[6].len) as usize, cp);
            },
            6,
            vec![
                "signature does not verify".into(),
                "copied from another recording".into(),
            ],
            SealStatus::Unsealed,
        ),
        (
            "re-signed with another key",
            |b, _, _| {
                let (other, _, _) = recording(&signer(), "tamper", 10, 20, 4);
                *b = other;
            },
            1,
            vec![
                "signature does not verify with the gateway key".into(),
                "re-signed with another key".into(),
            ],
            SealStatus::Unsealed,
        ),
    ];
    for (name, mutate, record, words, status) in rows {
        let (mut bytes, _, _) = recording(&s, "tamper", 10, 20, 4);
        let l = layout(&bytes);
        assert_eq!(l.len(), 16);
        mutate(&mut bytes, &l, &s);
        let report = verify(&bytes, &s.public_key());
        assert!(!report.ok, "{name}: must not verify");
        let err = report
            .first_error
            .clone()
            .unwrap_or_else(|| panic!("{name}: no error"));
        let msg = err.to_string();
        assert_eq!(err.record, record, "{name}: {msg}");
        for w in &words {
            assert!(msg.contains(w.as_str()), "{name}: {msg:?} lacks {w:?}");
        }
        assert!(
            msg.starts_with(&format!("record {record} at byte {}: ", err.offset)),
            "{name}: {msg}"
        );
        assert_eq!(report.status, status, "{name}: {msg}");
        if name == "re-signed with another key" {
            assert!(msg.contains(&our_kid), "{name}: names our key id: {msg}");
        }
        if name == "tail cut after the last checkpoint" {
            assert_eq!(report.verified_records, 12);
            assert_eq!(report.valid_prefix_len, l[12].offset);
        }
    }
}

#[test]
fn resigned_recording_verifies_under_its_own_key_only() {
    let (ours, theirs) = (signer(), signer());
    let (bytes, _, _) = recording(&theirs, "x", 6, 10, 4);
    assert!(verify(&bytes, &theirs.public_key()).ok);
    let r = verify(&bytes, &ours.public_key());
    assert!(!r.ok);
    assert_eq!(
        r.first_error.unwrap().to_string(),
        format!(
            "record 1 at byte {}: signature does not verify with the gateway key {} (checkpoint names key {}: re-signed with another key?)",
            layout(&bytes)[1].offset,
            ours.key_id(),
            theirs.key_id()
        )
    );
}

#[test]
fn seal_interrupted_at_every_cut() {
    let s = signer();
    let (full, _, _) = recording(&s, "cut", 6, 9, 3);
    let l = layout(&full);
    let meta_end = (l[0].offset + l[0].len) as usize;
    let end_rec = l
        .iter()
        .find(|r| matches!(r.record, Record::End { .. }))
        .unwrap();
    let end_complete = (end_rec.offset + end_rec.len) as usize;
    for cut in 0..=full.len() {
        let prefix = &full[..cut];
        let mut tail = Vec::new();
        let res = seal_interrupted(prefix, &s, "gateway killed", 0, &mut tail);
        if cut < meta_end {
            assert!(
                matches!(res, Err(RecError::Unrecoverable(_))),
                "cut {cut}: {res:?}"
            );
            continue;
        }
        if cut == full.len() {
            assert!(
                matches!(res, Err(RecError::AlreadySealed(_))),
                "cut {cut}: {res:?}"
            );
            continue;
        }
        let keep = res.unwrap_or_else(|e| panic!("cut {cut}: {e}")) as usize;
        // Keep every complete record; drop only the torn one.
        let complete_end = l
            .iter()
            .map(|r| (r.offset + r.len) as usize)
            .filter(|e| *e <= cut)
            .max()
            .unwrap();
        assert_eq!(keep, complete_end, "cut {cut}");
        let mut sealed = prefix[..keep].to_vec();
        sealed.extend_from_slice(&tail);
        let report = verify(&sealed, &s.public_key());
        assert!(report.ok, "cut {cut}: {:?}", report.first_error);
        let want = if cut >= end_complete {
            SealStatus::Sealed
        } else {
            SealStatus::Interrupted
        };
        assert_eq!(report.status, want, "cut {cut}");
        // Every data record complete in the prefix is kept, byte for byte.
        let kept: Vec<Record> = read_all(&sealed)
            .unwrap()
            .into_iter()
            .filter(|r| matches!(r, Record::Data { .. }))
            .collect();
        let expected: Vec<Record> = l
            .iter()
            .filter(|r| {
                matches!(r.record, Record::Data { .. }) && (r.offset + r.len) as usize <= cut
            })
            .map(|r| r.record.clone())
            .collect();
        assert_eq!(kept, expected, "cut {cut}");
        if want == SealStatus::Interrupted {
            let last = read_all(&sealed).unwrap();
            let Some(Record::Interrupted { reason, t_ns }) = last.iter().rev().nth(1) else {
                panic!("cut {cut}: no interrupted record")
            };
            assert!(reason.starts_with("gateway killed"), "{reason}");
            assert!(
                *t_ns > 0 || cut < (l[2].offset + l[2].len) as usize,
                "time raised to the last seen"
            );
            // Sealing again finds nothing to do.
            let again = seal_interrupted(&sealed, &s, "again", 0, &mut Vec::new());
            assert!(
                matches!(again, Err(RecError::AlreadySealed(_))),
                "cut {cut}: {again:?}"
            );
        }
    }
}

#[test]
fn seal_interrupted_refuses_tampered_and_foreign_recordings() {
    let s = signer();
    let (mut bytes, _, _) = recording(&s, "t", 10, 20, 4);
    let l = layout(&bytes);
    bytes.truncate(l[12].offset as usize + 3); // crash-like torn tail...
    bytes[(l[3].offset + 15) as usize] ^= 0x40; // ...but an earlier record was altered
    let res = seal_interrupted(&bytes, &s, "x", 0, &mut Vec::new());
    let Err(RecError::Tampered(e)) = res else {
        panic!("{res:?}")
    };
    assert_eq!(e.record, 6);

    // Sealed, then garbage: left alone.
    let (mut sealed, _, _) = recording(&s, "t", 3, 5, 4);
    sealed.extend_from_slice(&[0x00, 0x01]);
    let res = seal_interrupted(&sealed, &s, "x", 0, &mut Vec::new());
    assert!(
        matches!(&res, Err(RecError::AlreadySealed(m)) if m.contains("is sealed, but record 7")),
        "{res:?}"
    );

    let (foreign, _, _) = recording(&signer(), "t", 3, 5, 4);
    let cut = &foreign[..foreign.len() - 10];
    assert!(matches!(
        seal_interrupted(cut, &s, "x", 0, &mut Vec::new()),
        Err(RecError::Tampered(_))
    ));
}

#[test]
fn seal_interrupted_records_what_was_recovered() {
    let s = signer();
    let (full, _, _) = recording(&s, "note", 10, 20, 4);
    let l = layout(&full);
    let cut = (l[13].offset + 4) as usize; // records 12 complete, 13 torn
    let mut tail = Vec::new();
    let keep = seal_interrupted(&full[..cut], &s, "crash", 5, &mut tail).unwrap();
    assert_eq!(keep, l[13].offset);
    let mut sealed = full[..keep as usize].to_vec();
    sealed.extend_from_slice(&tail);
    let recs = read_all(&sealed).unwrap();
    let Some(Record::Interrupted { reason, t_ns }) = recs.iter().rev().nth(1) else {
        panic!()
    };
    assert_eq!(*t_ns, 9_000_000, "raised to the last record's time");
    assert!(
        reason.contains("records 12..12 recovered without a checkpoint"),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("dropped 4 bytes from byte {}", l[13].offset)),
        "{reason}"
    );
    let r = verify(&sealed, &s.public_key());
    assert!(r.ok && r.status == SealStatus::Interrupted);
}

fn first_err(b: &[u8]) -> ReadError {
    Reader::new(b).next().unwrap().unwrap_err()
}

#[test]
fn reader_reports_typed_errors() {
    assert_eq!(first_err(b""), ReadError::BadMagic);
    assert_eq!(first_err(b"GIF89a.."), ReadError::BadMagic);
    assert_eq!(first_err(b"WARDREC\x04"), ReadError::UnsupportedVersion(4));
    assert!(matches!(first_err(b"WARD"), ReadError::Truncated { .. }));
    assert!(
        Reader::new(MAGIC).next().is_none(),
        "magic alone: no records, no error"
    );
    let with = |rest: &[u8]| [MAGIC.as_slice(), rest].concat();
    let e = first_err(&with(&[0x02, 0xff, 0xff, 0xff, 0xff]));
    assert!(
        matches!(
            e,
            ReadError::Oversized {
                record: 0,
                offset: 8,
                ..
            }
        ),
        "{e}"
    );
    let e = first_err(&with(&[0x7f, 0, 0, 0, 0]));
    assert!(
        matches!(e, ReadError::UnknownType { code: 0x7f, .. }),
        "{e}"
    );
    let e = first_err(&with(&[0x06, 3, 0, 0, 0, 1, 2, 3]));
    assert!(matches!(e, ReadError::Malformed { .. }), "{e}");
    let e = first_err(&with(&[0x01, 2, 0, 0, 0, b'{', b'}']));
    assert!(
        matches!(e, ReadError::Malformed { .. }),
        "meta without fields: {e}"
    );
    let b = with(&[0x02, 20, 0, 0, 0, 1]);
    let mut r = Reader::new(&b);
    assert!(matches!(
        r.next(),
        Some(Err(ReadError::Truncated {
            needed: 25,
            available: 6,
            ..
        }))
    ));
    assert!(r.next().is_none(), "fused after an error");
    // Offsets are byte positions.
    let s = signer();
    let (b, _, _) = recording(&s, "off", 2, 3, 100);
    let offsets: Vec<u64> = Reader::new(&b).map(|r| r.unwrap().0).collect();
    assert_eq!(offsets[0], 8);
    assert_eq!(
        offsets,
        layout(&b).iter().map(|r| r.offset).collect::<Vec<_>>()
    );
}

#[test]
fn size_overhead_bulk_64k_chunks() {
    // Prints figures (encode/verify throughput); asserts only the size bound, never a time.
    let s = signer();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut out = Vec::with_capacity(68 << 20);
    let t0 = std::time::Instant::now();
    let mut enc = Encoder::start(
        &meta("bulk"),
        s.clone(),
        CheckpointPolicy::default(),
        &mut out,
    )
    .unwrap();
    let total = 64usize << 20;
    for i in 0..(total / chunk.len()) {
        let dir = if i % 2 == 0 {
            Direction::Down
        } else {
            Direction::Up
        };
        enc.data(dir, i as u64 * 1_000_000, &chunk, &mut out);
        if enc.checkpoint_due(i as u64 * 1_000_000) {
            enc.checkpoint(i as u64 * 1_000_000, &mut out);
        }
    }
    enc.finish(2_000_000_000, &end_info(), &mut out);
    let enc_s = t0.elapsed().as_secs_f64();
    let ratio = out.len() as f64 / total as f64;
    let t1 = std::time::Instant::now();
    let report = verify(&out, &s.public_key());
    let ver_s = t1.elapsed().as_secs_f64();
    println!(
        "64 MiB in 64 KiB chunks: {} bytes, overhead ratio {ratio:.6}; encode {:.0} MiB/s, verify {:.0} MiB/s",
        out.len(),
        64.0 / enc_s,
        64.0 / ver_s
    );
    assert!(ratio <= 1.01, "ratio {ratio}");
    assert!(report.ok);
}

#[test]
fn signer_keys_and_redaction() {
    let (s, pkcs8) = Signer::generate().unwrap();
    let again = Signer::from_pkcs8(&pkcs8).unwrap();
    assert_eq!(s.public_key(), again.public_key());
    assert_eq!(s.key_id(), again.key_id());
    assert_eq!(s.key_id().len(), 16);
    assert_eq!(s.key_id(), key_id_of(&s.public_key()));
    assert_eq!(format!("{s:?}"), "[redacted]");
    assert!(matches!(
        Signer::from_pkcs8(b"not a key"),
        Err(RecError::Key(_))
    ));
}

fn small_recording() -> (Arc<Signer>, Vec<u8>) {
    static CELL: std::sync::OnceLock<(Arc<Signer>, Vec<u8>)> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        let s = signer();
        let (b, _, _) = recording(&s, "prop", 5, 6, 2);
        (s, b)
    })
    .clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn reader_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        let mut b = if magic { MAGIC.to_vec() } else { Vec::new() };
        b.extend_from_slice(&tail);
        let n = Reader::new(&b).count();
        // Every record takes at least 5 bytes; at most one error item ends the iteration.
        prop_assert!(n <= b.len() / 5 + 1);
        let (s, _) = small_recording();
        let report = verify(&b, &s.public_key());
        prop_assert!(!report.ok);
        let _ = seal_interrupted(&b, &s, "x", 0, &mut Vec::new());
    }

    #[test]
    fn any_single_byte_change_fails_verification(pos in any::<prop::sample::Index>(), x in 1u8..=255) {
        let (s, mut b) = small_recording();
        let i = pos.index(b.len());
        b[i] ^= x;
        let report = verify(&b, &s.public_key());
        prop_assert!(!report.ok, "byte {} ^ {:#x} went unnoticed", i, x);
        prop_assert!(report.first_error.is_some());
    }

    #[test]
    fn garbage_after_a_valid_prefix_is_named(cut in any::<prop::sample::Index>(), junk in proptest::collection::vec(any::<u8>(), 1..64)) {
        let (s, original) = small_recording();
        let mut b = original[..cut.index(original.len())].to_vec();
        b.extend_from_slice(&junk);
        // The junk may happen to restore the cut bytes exactly (a signature's last byte is < 0x20).
        prop_assume!(b != original);
        let report = verify(&b, &s.public_key());
        prop_assert!(!report.ok);
        let mut tail = Vec::new();
        if let Ok(keep) = seal_interrupted(&b, &s, "x", 0, &mut tail) {
            let mut sealed = b[..keep as usize].to_vec();
            sealed.extend_from_slice(&tail);
            prop_assert!(verify(&sealed, &s.public_key()).ok);
        }
    }
}

#[test]
fn long_reasons_are_cut_on_a_character_boundary() {
    let s = signer();
    let mut out = Vec::new();
    let mut enc = Encoder::start(
        &meta("long"),
        s.clone(),
        CheckpointPolicy::default(),
        &mut out,
    )
    .unwrap();
    enc.data(Direction::Up, 1, b"x", &mut out);
    let reason = "é".repeat(MAX_DATA_PAYLOAD); // 2 bytes each: cut mid-character without care
    let end = EndInfo {
        reason: reason.clone(),
        ..end_info()
    };
    enc.finish(2, &end, &mut out);
    let report = verify(&out, &s.public_key());
    assert!(report.ok, "{:?}", report.first_error);
    let got = report.end.unwrap().reason;
    assert_eq!(got.len(), MAX_DATA_PAYLOAD);
    assert!(reason.starts_with(&got));
    // And an interrupted record's reason too.
    let cut = &out[..out.len() - 200];
    let mut tail = Vec::new();
    let keep = seal_interrupted(cut, &s, &"ü".repeat(MAX_DATA_PAYLOAD), 0, &mut tail).unwrap();
    let mut sealed = cut[..keep as usize].to_vec();
    sealed.extend_from_slice(&tail);
    assert_eq!(
        verify(&sealed, &s.public_key()).status,
        SealStatus::Interrupted
    );
}
