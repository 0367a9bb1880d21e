//! Recordings encrypted at rest (format version 3): round trips through the library, the age
//! crate and the `age` CLI; verification without a key; tampering and re-encryption caught.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Read;
use std::sync::Arc;

use age::secrecy::ExposeSecret;
use common::*;
use proptest::prelude::*;
use ward_recording::sealed::{self, Unsealer};
use ward_recording::*;

fn identity() -> (age::x25519::Identity, age::x25519::Recipient) {
    let id = age::x25519::Identity::generate();
    let r = id.to_public();
    (id, r)
}

fn boxed(id: &age::x25519::Identity) -> Vec<Box<dyn age::Identity>> {
    vec![Box::new(id.clone())]
}

fn policy(every: u64) -> CheckpointPolicy {
    CheckpointPolicy {
        every_records: every,
        every_ns: u64::MAX,
    }
}

/// One operation of a session as the recorder drives the encoder.
#[derive(Clone, Debug)]
enum Op {
    Data(Direction, Vec<u8>),
    Event(Direction, String),
    /// The recorder's batch boundary.
    Flush,
    Checkpoint,
}

/// Encode `ops` (sealed to `recipients`, or plain when empty); returns the bytes and what went
/// each way.
fn encode(
    signer: &Arc<Signer>,
    recipients: &[age::x25519::Recipient],
    ops: &[Op],
    every: u64,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    let m = meta("sealed-0001");
    let mut enc = if recipients.is_empty() {
        Encoder::start(&m, signer.clone(), policy(every), &mut out).unwrap()
    } else {
        Encoder::start_sealed(&m, signer.clone(), policy(every), recipients, &mut out).unwrap()
    };
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut t = 1_000u64;
    for op in ops {
        t += 1_000;
        match op {
            Op::Data(d, p) => {
                enc.data(*d, t, p, &mut out);
                match d {
                    Direction::Up => up.extend_from_slice(p),
                    Direction::Down => down.extend_from_slice(p),
                }
            }
            Op::Event(d, kind) => {
                enc.event(*d, t, kind, &[("device".into(), "pump".into())], &mut out)
            }
            Op::Flush => enc.flush(t, &mut out).unwrap(),
            Op::Checkpoint => enc.checkpoint(t, &mut out),
        }
    }
    assert!(enc.failure().is_none());
    let end = EndInfo {
        bytes_up: up.len() as u64,
        bytes_down: down.len() as u64,
        ..end_info()
    };
    enc.finish(t + 1, &end, &mut out);
    (out, up, down)
}

/// The payload each way, and the event kinds, of opened records.
fn payloads(records: &[Record]) -> (Vec<u8>, Vec<u8>, Vec<String>) {
    let (mut up, mut down, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for r in records {
        match r {
            Record::Data { dir, payload, .. } => match dir {
                Direction::Up => up.extend_from_slice(payload),
                Direction::Down => down.extend_from_slice(payload),
            },
            Record::Event { kind, .. } => events.push(kind.clone()),
            Record::Sealed { .. } => panic!("a sealed record was left unopened"),
            _ => {}
        }
    }
    (up, down, events)
}

/// The encoded inner records of every age file, decrypted by the age crate.
fn age_crate_plaintext(files: &[Vec<u8>], id: &age::x25519::Identity) -> Vec<u8> {
    let mut all = Vec::new();
    for f in files {
        let d = age::Decryptor::new(&f[..]).unwrap();
        let mut r = d
            .decrypt(std::iter::once(id as &dyn age::Identity))
            .unwrap();
        r.read_to_end(&mut all).unwrap();
    }
    all
}

/// Parse concatenated inner records (5-byte headers) into the payload each way.
fn inner_payloads(plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut pos = 0;
    while pos < plain.len() {
        let code = plain[pos];
        let len = u32::from_le_bytes(plain[pos + 1..pos + 5].try_into().unwrap()) as usize;
        let body = &plain[pos + 5..pos + 5 + len];
        match code {
            0x02 => up.extend_from_slice(&body[8..]),
            0x03 => down.extend_from_slice(&body[8..]),
            0x07 => {}
            c => panic!("inner record type 0x{c:02x}"),
        }
        pos += 5 + len;
    }
    (up, down)
}

fn marker() -> Vec<u8> {
    (0..64u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn session_ops() -> Vec<Op> {
    let mut ops = vec![
        Op::Data(Direction::Down, b"login: ".to_vec()),
        Op::Data(Direction::Up, marker()),
        Op::Event(Direction::Up, "credential_injected".into()),
        Op::Flush,
    ];
    for i in 0..40u8 {
        ops.push(Op::Data(Direction::Down, vec![i; 70_000]));
        if i % 7 == 0 {
            ops.push(Op::Flush);
        }
    }
    ops.push(Op::Data(Direction::Down, marker()));
    ops.push(Op::Data(Direction::Up, vec![1; 3 << 20]));
    ops
}

#[test]
fn round_trip_verify_without_key_and_no_plaintext_on_disk() {
    let s = signer();
    let (id, r) = identity();
    let (bytes, up, down) = encode(&s, std::slice::from_ref(&r), &session_ops(), 16);
    // Verification needs no key.
    let report = verify(&bytes, &s.public_key());
    assert!(report.ok, "{:?}", report.first_error);
    assert_eq!(report.status, SealStatus::Sealed);
    let meta = report.meta.unwrap();
    assert!(sealed::is_sealed(&meta));
    assert_eq!(meta.recipients, vec![r.to_string()]);
    assert_eq!(report.end.unwrap().bytes_up, up.len() as u64);
    // The marker is nowhere in the stored bytes.
    let m = marker();
    assert!(!bytes.windows(m.len()).any(|w| w == m.as_slice()));
    // Every data and event record is sealed.
    let records = read_all(&bytes).unwrap();
    assert!(records
        .iter()
        .all(|r| !matches!(r, Record::Data { .. } | Record::Event { .. })));
    let sealed_count = records
        .iter()
        .filter(|r| matches!(r, Record::Sealed { .. }))
        .count();
    assert!(sealed_count >= 8, "{sealed_count}");
    // Without a key: a clear error naming the record.
    let e = sealed::open_records(records.clone(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("record 2") && e.contains("encrypted"), "{e}");
    // With the key: the exact bytes, and the event.
    let u = Unsealer::new(&meta, &boxed(&id)).unwrap();
    let opened = sealed::open_records(records, Some(&u)).unwrap();
    let (u_up, u_down, events) = payloads(&opened);
    assert_eq!(u_up, up);
    assert_eq!(u_down, down);
    assert_eq!(events, vec!["credential_injected".to_string()]);
    // The age crate decrypts each sealed record as a standalone age file.
    let files = sealed::age_files(&bytes).unwrap();
    assert_eq!(files.len(), sealed_count);
    let (a_up, a_down) = inner_payloads(&age_crate_plaintext(&files, &id));
    assert_eq!((a_up, a_down), (up, down));
}

#[test]
fn the_age_cli_decrypts_every_sealed_record() {
    let Some(age_bin) = which("age") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the age CLI (Debian package age) is required under CI"
        );
        eprintln!("skipping: no age binary (apt-get install age)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ward-sealed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (id, r) = identity();
    let key = dir.join("key.txt");
    std::fs::write(&key, format!("{}\n", id.to_string().expose_secret())).unwrap();
    let s = signer();
    let (bytes, up, down) = encode(&s, &[r], &session_ops(), 16);
    let mut plain = Vec::new();
    for (i, f) in sealed::age_files(&bytes).unwrap().iter().enumerate() {
        let path = dir.join(format!("{i:04}.age"));
        std::fs::write(&path, f).unwrap();
        let out = std::process::Command::new(&age_bin)
            .arg("-d")
            .arg("-i")
            .arg(&key)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "age -d: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        plain.extend_from_slice(&out.stdout);
    }
    assert_eq!(inner_payloads(&plain), (up, down));
    // A flipped ciphertext byte: age refuses the file.
    let mut f = sealed::age_files(&bytes).unwrap().remove(0);
    let n = f.len();
    f[n - 20] ^= 0x40;
    let path = dir.join("bad.age");
    std::fs::write(&path, &f).unwrap();
    let out = std::process::Command::new(&age_bin)
        .args(["-d", "-i"])
        .arg(&key)
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// Records with their offsets.
fn layout(bytes: &[u8]) -> Vec<RecordAt> {
    let mut r = Reader::new(bytes);
    let mut v = Vec::new();
    while let Some(x) = r.next_record() {
        v.push(x.unwrap());
    }
    v
}

#[test]
fn a_flipped_ciphertext_byte_fails_verification_at_the_next_checkpoint() {
    let s = signer();
    let (_, r) = identity();
    let (bytes, _, _) = encode(&s, &[r], &session_ops(), 4);
    let l = layout(&bytes);
    let sealed_at: Vec<&RecordAt> = l
        .iter()
        .filter(|r| matches!(r.record, Record::Sealed { .. }))
        .collect();
    for rec in [
        sealed_at[0],
        sealed_at[sealed_at.len() / 2],
        *sealed_at.last().unwrap(),
    ] {
        let mut b = bytes.clone();
        b[(rec.offset + rec.len - 3) as usize] ^= 0x01;
        let report = verify(&b, &s.public_key());
        assert!(!report.ok);
        let e = report.first_error.unwrap();
        let next_cp = l
            .iter()
            .find(|x| x.index > rec.index && matches!(x.record, Record::Checkpoint { .. }))
            .unwrap();
        assert_eq!(e.record, next_cp.index, "{e}");
        assert!(e.what.contains("chain mismatch"), "{e}");
    }
}

#[test]
fn a_recording_re_encrypted_to_another_recipient_fails_verification() {
    let s = signer();
    let (id, r) = identity();
    let ops = session_ops();
    let (bytes, _, _) = encode(&s, &[r], &ops, 16);
    let (_, attacker_r) = identity();
    // The attacker has the reviewer's key (to read) but not the gateway's signing key: they
    // decrypt and re-seal the same records to their own recipient with the library.
    let records = read_all(&bytes).unwrap();
    let Record::Meta(meta) = &records[0] else {
        panic!()
    };
    let u = Unsealer::new(meta, &boxed(&id)).unwrap();
    assert!(sealed::open_records(records.clone(), Some(&u)).is_ok());
    // 1. Re-signed with their own key: the checkpoints name a key that is not the gateway's.
    let forger = signer();
    let (forged, _, _) = encode(&forger, std::slice::from_ref(&attacker_r), &ops, 16);
    let report = verify(&forged, &s.public_key());
    assert!(!report.ok);
    assert!(
        report
            .first_error
            .as_ref()
            .unwrap()
            .what
            .contains("re-signed with another key"),
        "{:?}",
        report.first_error
    );
    // 2. The gateway's own checkpoints spliced into the re-encrypted file: chain mismatch at the
    //    first checkpoint (the meta names other recipients).
    let (forged, _, _) = encode(&s, &[attacker_r], &ops, 16);
    let (lo, lf) = (layout(&bytes), layout(&forged));
    assert_eq!(lo.len(), lf.len());
    let mut spliced = forged[..lf[0].offset as usize].to_vec();
    for (o, f) in lo.iter().zip(&lf) {
        let src = if matches!(o.record, Record::Checkpoint { .. }) {
            &bytes[o.offset as usize..(o.offset + o.len) as usize]
        } else {
            &forged[f.offset as usize..(f.offset + f.len) as usize]
        };
        spliced.extend_from_slice(src);
    }
    let report = verify(&spliced, &s.public_key());
    assert!(!report.ok);
    let e = report.first_error.unwrap();
    assert_eq!(e.record, 1, "{e}");
    assert!(e.what.contains("chain mismatch"), "{e}");
}

#[test]
fn plaintext_in_an_encrypted_recording_and_sealed_in_a_plain_one_are_named() {
    let s = signer();
    let (_, r) = identity();
    let ops = vec![Op::Data(Direction::Up, b"abc".to_vec()), Op::Flush];
    let (enc, _, _) = encode(&s, &[r], &ops, 1000);
    let (plain, _, _) = encode(&s, &[], &ops, 1000);
    let (le, lp) = (layout(&enc), layout(&plain));
    // Encrypted header (magic, meta, first checkpoint) + the plain recording's records.
    let mut mixed = enc[..le[2].offset as usize].to_vec();
    mixed.extend_from_slice(&plain[lp[2].offset as usize..]);
    let e = verify(&mixed, &s.public_key()).first_error.unwrap();
    assert_eq!(e.record, 2);
    assert!(
        e.what
            .contains("plaintext data record in an encrypted recording"),
        "{e}"
    );
    // And the other way round.
    let mut mixed = plain[..lp[2].offset as usize].to_vec();
    mixed.extend_from_slice(&enc[le[2].offset as usize..]);
    let e = verify(&mixed, &s.public_key()).first_error.unwrap();
    assert_eq!(e.record, 2);
    assert!(
        e.what
            .contains("sealed record in a recording without recipients"),
        "{e}"
    );
    // A sealed body shorter than time + nonce + one tag is malformed.
    let mut short = enc[..le[2].offset as usize].to_vec();
    short.push(0x08);
    short.extend_from_slice(&39u32.to_le_bytes());
    short.extend_from_slice(&[0u8; 39]);
    let e = verify(&short, &s.public_key()).first_error.unwrap();
    assert!(e.what.contains("sealed body of 39 bytes"), "{e}");
}

#[test]
fn meta_recipients_without_header_are_refused() {
    let s = signer();
    let mut m = meta("x");
    m.recipients = vec!["age1notreally".into()];
    let mut out = Vec::new();
    let e = Encoder::start(&m, s, policy(10), &mut out).unwrap_err();
    assert!(e.to_string().contains("start_sealed"), "{e}");
}

#[test]
fn a_torn_sealed_record_is_dropped_by_recovery() {
    let s = signer();
    let (id, r) = identity();
    let mut out = Vec::new();
    let mut enc =
        Encoder::start_sealed(&meta("torn"), s.clone(), policy(1000), &[r], &mut out).unwrap();
    enc.data(Direction::Up, 10, b"first batch", &mut out);
    enc.flush(10, &mut out).unwrap();
    enc.checkpoint(11, &mut out);
    enc.data(
        Direction::Up,
        20,
        b"second batch, signed at recovery",
        &mut out,
    );
    enc.flush(20, &mut out).unwrap();
    let whole_second = out.len();
    enc.data(Direction::Up, 30, &[7u8; 100_000], &mut out);
    enc.flush(30, &mut out).unwrap();
    // A crash mid-write of the third sealed record.
    let cut = whole_second + 50_000;
    let torn = &out[..cut];
    let mut tail = Vec::new();
    let keep = seal_interrupted(torn, &s, "gateway restarted", 0, &mut tail).unwrap();
    assert_eq!(keep as usize, whole_second);
    let mut fixed = torn[..keep as usize].to_vec();
    fixed.extend_from_slice(&tail);
    let report = verify(&fixed, &s.public_key());
    assert!(report.ok, "{:?}", report.first_error);
    assert_eq!(report.status, SealStatus::Interrupted);
    let records = read_all(&fixed).unwrap();
    let Record::Meta(m) = &records[0] else {
        panic!()
    };
    let u = Unsealer::new(m, &boxed(&id)).unwrap();
    let (up, _, _) = payloads(&sealed::open_records(records, Some(&u)).unwrap());
    assert_eq!(up, b"first batchsecond batch, signed at recovery");
}

#[test]
fn size_overhead_encrypted_bulk_64k_chunks() {
    let s = signer();
    let (_, r) = identity();
    let payload = vec![0x5au8; 64 * 1024];
    let mut out = Vec::new();
    let mut enc = Encoder::start_sealed(
        &meta("bulk"),
        s.clone(),
        CheckpointPolicy::default(),
        &[r],
        &mut out,
    )
    .unwrap();
    let n = 1024; // 64 MiB
    let t0 = std::time::Instant::now();
    for i in 0..n {
        enc.data(Direction::Down, i as u64 * 1000, &payload, &mut out);
        if i % 16 == 15 {
            // The recorder's batches: about 1 MiB each.
            enc.flush(i as u64 * 1000, &mut out).unwrap();
        }
    }
    enc.finish(n as u64 * 1000, &end_info(), &mut out);
    let secs = t0.elapsed().as_secs_f64();
    let total = (n * payload.len()) as f64;
    let ratio = out.len() as f64 / total;
    println!(
        "encrypted 64 MiB in 64 KiB chunks: {} bytes, ratio {ratio:.5}, encode {:.0} MiB/s",
        out.len(),
        total / secs / (1 << 20) as f64
    );
    assert!(ratio <= 1.01, "{ratio}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn any_session_round_trips_and_verifies(
        ops in proptest::collection::vec(prop_oneof![
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..3000)).prop_map(|(u, p)|
                Op::Data(if u { Direction::Up } else { Direction::Down }, p)),
            (any::<bool>(), 0usize..200_000).prop_map(|(u, n)|
                Op::Data(if u { Direction::Up } else { Direction::Down }, vec![0xab; n])),
            Just(Op::Event(Direction::Down, "operation".into())),
            Just(Op::Flush),
            Just(Op::Checkpoint),
        ], 0..40),
        every in 1u64..20,
    ) {
        let s = signer();
        let (id, r) = identity();
        let (bytes, up, down) = encode(&s, &[r], &ops, every);
        let report = verify(&bytes, &s.public_key());
        prop_assert!(report.ok, "{:?}", report.first_error);
        let records = read_all(&bytes).unwrap();
        let Record::Meta(m) = &records[0] else { panic!() };
        let u = Unsealer::new(m, &boxed(&id)).unwrap();
        let (u_up, u_down, _) = payloads(&sealed::open_records(records, Some(&u)).unwrap());
        prop_assert_eq!(u_up, up);
        prop_assert_eq!(u_down, down);
    }

    #[test]
    fn any_single_byte_change_of_an_encrypted_recording_fails_verification(
        pos in any::<prop::sample::Index>(), x in 1u8..=255,
    ) {
        let s = signer();
        let (_, r) = identity();
        let ops = vec![
            Op::Data(Direction::Up, b"user\r\n".to_vec()), Op::Flush,
            Op::Data(Direction::Down, vec![3; 5000]), Op::Flush,
        ];
        let (mut bytes, _, _) = encode(&s, &[r], &ops, 2);
        let i = pos.index(bytes.len());
        bytes[i] ^= x;
        prop_assert!(!verify(&bytes, &s.public_key()).ok, "byte {i}");
    }
}
