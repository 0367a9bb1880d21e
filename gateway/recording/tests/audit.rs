//! Audit log: lines, escaping, chain/checkpoint verification (table-driven), resume.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::signer;
use time::macros::datetime;
use ward_recording::audit::*;
use ward_recording::*;

fn event(i: u64) -> AuditEvent {
    let mut detail = BTreeMap::new();
    detail.insert("bytes_up".to_string(), serde_json::json!(i * 10));
    AuditEvent {
        time: rfc3339_ms(datetime!(2026-11-22 08:15:57.123 UTC)),
        event: if i % 2 == 0 {
            "session_open".into()
        } else {
            "session_close".into()
        },
        outcome: "success".into(),
        severity: "info".into(),
        principal: Some(AuditPrincipal {
            name: format!("user-{i}"),
            kind: "clinician".into(),
            org: None,
            serial: "0a0b".into(),
        }),
        source: Some("192.0.2.1:4000".into()),
        device: Some("mri-3".into()),
        session_id: Some(format!("s-{i}")),
        reason: None,
        detail,
    }
}

/// 3 events per checkpoint: lines E E E C E E E C E E E C (1..=12).
fn log(s: &Arc<Signer>, events: u64) -> Vec<u8> {
    let mut chain = AuditChain::new(
        s.clone(),
        CheckpointPolicy {
            every_records: 3,
            every_ns: u64::MAX,
        },
    );
    let mut out = Vec::new();
    for i in 0..events {
        out.extend(chain.line(&event(i), i));
    }
    out.extend(chain.checkpoint(events));
    out
}

fn lines(b: &[u8]) -> Vec<Vec<u8>> {
    b.split_inclusive(|c| *c == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn rfc3339_ms_is_utc_with_milliseconds() {
    assert_eq!(
        rfc3339_ms(datetime!(2026-11-22 08:15:57.123456 UTC)),
        "2026-11-22T08:15:57.123Z"
    );
    assert_eq!(
        rfc3339_ms(datetime!(2026-11-22 10:15:57.5 +02:00)),
        "2026-11-22T08:15:57.500Z"
    );
}

#[test]
fn lines_are_json_with_seq_and_chain_and_verify() {
    let s = signer();
    let b = log(&s, 9);
    let ls = lines(&b);
    assert_eq!(ls.len(), 12);
    for (i, l) in ls.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
        assert_eq!(v["seq"], serde_json::json!(i + 1));
        if (i + 1) % 4 == 0 {
            assert_eq!(v["type"], "checkpoint");
            assert_eq!(v["key_id"], s.key_id());
        } else {
            assert!(l.starts_with(b"{\"seq\":"));
            let ev: AuditEvent = serde_json::from_slice(l).unwrap();
            assert_eq!(ev, event((i - i / 4) as u64));
            assert_eq!(v["chain"].as_str().unwrap().len(), 64);
            assert_eq!(v["time"], "2026-11-22T08:15:57.123Z");
        }
    }
    let r = verify_audit(&b, &s.public_key());
    assert!(r.ok, "{:?}", r.first_error);
    assert_eq!(
        (r.records, r.verified_records, r.valid_prefix_len),
        (12, 12, b.len() as u64)
    );
    assert!(
        verify_audit(b"", &s.public_key()).ok,
        "an empty log is fine"
    );
}

#[test]
fn hostile_field_values_cannot_forge_lines() {
    let s = signer();
    let mut chain = AuditChain::new(s.clone(), CheckpointPolicy::default());
    let mut ev = event(1);
    ev.principal.as_mut().unwrap().name = "mallory\n{\"event\":\"forged\"}".into();
    ev.reason = Some("\x1b[2J\r\n{\"seq\":2,\"event\":\"forged\"}\u{7}".into());
    ev.device = Some("\"}\n".into());
    let line = chain.line(&ev, 0);
    assert_eq!(
        line.iter().filter(|c| **c == b'\n').count(),
        1,
        "exactly one line"
    );
    assert_eq!(line.last(), Some(&b'\n'));
    assert!(
        !line.contains(&0x1b) && !line.contains(&b'\r') && !line.contains(&7),
        "control characters escaped"
    );
    assert!(String::from_utf8_lossy(&line).contains("\\u001b[2J"));
    let back: AuditEvent = serde_json::from_slice(&line).unwrap();
    assert_eq!(back, ev);
    let mut all = line.clone();
    all.extend(chain.checkpoint(1));
    let r = verify_audit(&all, &s.public_key());
    assert!(r.ok, "{:?}", r.first_error);
    assert_eq!(r.records, 2);
}

type Mutate = fn(&mut Vec<Vec<u8>>, &Arc<Signer>);

#[test]
fn tamper_cases_name_the_first_bad_line() {
    let s = signer();
    let rows: Vec<(&str, Mutate, u64, &str)> = vec![
        (
            "flipped byte in an event value",
            |l, _| {
                let at = l[4].windows(6).position(|w| w == b"user-3").unwrap();
                l[4][at] ^= 0x01;
            },
            5,
            "chain mismatch (line altered",
        ),
        (
            "flipped byte breaking JSON",
            |l, _| l[5][0] = b'[',
            6,
            "not valid JSON",
        ),
        (
            "flipped byte in a chain value",
            |l, _| {
                let n = l[1].len();
                l[1][n - 5] = if l[1][n - 5] == b'0' { b'1' } else { b'0' };
            },
            2,
            "chain mismatch",
        ),
        (
            "deleted event line",
            |l, _| {
                l.remove(5);
            },
            6,
            "line has seq 7, expected 6 (line deleted, inserted or reordered)",
        ),
        (
            "deleted checkpoint line",
            |l, _| {
                l.remove(3);
            },
            4,
            "line has seq 5, expected 4",
        ),
        (
            "two lines swapped",
            |l, _| l.swap(4, 5),
            5,
            "line has seq 6, expected 5",
        ),
        (
            "tail cut mid-line",
            |l, _| {
                let n = l[10].len();
                l[10].truncate(n / 2);
                l.truncate(11);
            },
            11,
            "line 11 is incomplete (no newline at the end): truncated mid-line",
        ),
        (
            "tail cut after an event line",
            |l, _| l.truncate(10),
            9,
            "lines 9..10 after the last checkpoint are not covered by a signature",
        ),
        (
            "line appended after the last checkpoint",
            |l, s| {
                let mut c = AuditChain::new(s.clone(), CheckpointPolicy::default());
                let mut forged = c.line(&event(99), 0);
                forged.splice(7..8, b"13".iter().copied()); // seq 1 -> 13
                l.push(forged);
            },
            13,
            "chain mismatch",
        ),
        (
            "checkpoint line re-formatted",
            |l, _| {
                let t =
                    String::from_utf8(l[7].clone())
                        .unwrap()
                        .replacen("\"seq\":8", "\"seq\": 8", 1);
                l[7] = t.into_bytes();
            },
            8,
            "not in canonical form",
        ),
        (
            "event edited and every later chain recomputed",
            |l, s| {
                // An attacker without the key rewrites line 2 and re-chains the rest: caught at the
                // next checkpoint.
                let other = Arc::new(Signer::generate().unwrap().0);
                let _ = s;
                let mut c = AuditChain::new(
                    other,
                    CheckpointPolicy {
                        every_records: 1000,
                        every_ns: u64::MAX,
                    },
                );
                let mut forged = Vec::new();
                for i in 0..3u64 {
                    let mut ev = event(i);
                    if i == 1 {
                        ev.outcome = "denied".into();
                    }
                    forged.push(c.line(&ev, 0));
                }
                l.splice(0..3, forged);
            },
            4,
            "chain mismatch at checkpoint (line deleted, reordered or altered among lines 1..3)",
        ),
        (
            "re-signed with another key",
            |l, _| {
                *l = lines(&log(&signer(), 9));
            },
            4,
            "signature does not verify with the gateway key",
        ),
    ];
    for (name, mutate, line, words) in rows {
        let mut ls = lines(&log(&s, 9));
        mutate(&mut ls, &s);
        let b: Vec<u8> = ls.concat();
        let r = verify_audit(&b, &s.public_key());
        assert!(!r.ok, "{name}");
        let e = r.first_error.unwrap();
        let msg = e.to_string();
        assert_eq!(e.record, line, "{name}: {msg}");
        assert_eq!(e.unit, ErrorUnit::Line);
        assert!(
            msg.starts_with(&format!("line {line} at byte {}: ", e.offset)),
            "{name}: {msg}"
        );
        assert!(msg.contains(words), "{name}: {msg:?} lacks {words:?}");
        if name == "re-signed with another key" {
            assert!(msg.contains(&s.key_id()), "{msg}");
        }
    }
}

#[test]
fn resume_drops_a_torn_line_and_continues_the_chain() {
    let s = signer();
    let policy = CheckpointPolicy {
        every_records: 3,
        every_ns: u64::MAX,
    };
    let mut c = AuditChain::new(s.clone(), policy);
    let mut file = Vec::new();
    for i in 0..4 {
        file.extend(c.line(&event(i), i));
    }
    // Line 5 = event 3 (after a checkpoint at 4) is not covered; then a torn line (crash).
    let torn_at = file.len();
    let partial = c.line(&event(4), 4);
    file.extend_from_slice(&partial[..partial.len() / 2]);
    let (mut resumed, keep) = AuditChain::resume(&file, s.clone(), policy).unwrap();
    assert_eq!(keep, torn_at as u64);
    file.truncate(keep as usize);
    assert_eq!(resumed.next_seq(), 6);
    file.extend(resumed.line(&event(5), 0));
    file.extend(resumed.checkpoint(1));
    let r = verify_audit(&file, &s.public_key());
    assert!(r.ok, "{:?}", r.first_error);
    assert_eq!(r.records, 7);

    // A clean log resumes as is; an altered one is refused.
    let (_, keep) = AuditChain::resume(&file, s.clone(), policy).unwrap();
    assert_eq!(keep, file.len() as u64);
    let mut bad = file.clone();
    let at = bad.windows(6).position(|w| w == b"user-0").unwrap();
    bad[at] = b'U';
    let Err(RecError::Tampered(e)) = AuditChain::resume(&bad, s.clone(), policy) else {
        panic!()
    };
    assert_eq!(e.record, 1);
    assert!(
        AuditChain::resume(&file, signer(), policy).is_err(),
        "another key"
    );
}

#[test]
fn checkpoints_by_time_and_not_when_idle() {
    let s = signer();
    let mut c = AuditChain::new(
        s.clone(),
        CheckpointPolicy {
            every_records: 100,
            every_ns: 1_000,
        },
    );
    assert!(c.checkpoint(0).is_empty(), "nothing to sign");
    let a = c.line(&event(0), 5_000);
    assert_eq!(lines(&a).len(), 1);
    assert!(!c.checkpoint_due(5_500));
    let b = c.line(&event(1), 6_000);
    assert_eq!(
        lines(&b).len(),
        2,
        "event + checkpoint (1 µs since the first line)"
    );
    assert!(c.checkpoint(7_000).is_empty());
    let all = [a, b].concat();
    assert!(verify_audit(&all, &s.public_key()).ok);
}
