//! `cargo fuzz run -s none dicom_decode`: the dicom decoder stage (`ward_decode::dicom`, issue 15)
//! on hostile clients and devices.
//!
//! The first byte picks the chunk size (1..=127 by its high bits; 0: whole) and, by its low bit,
//! whether an operation list applies. The second byte picks which presentation contexts a valid
//! A-ASSOCIATE-RQ proposes (Verification, CT storage, Study Root FIND, MOVE, GET, an unknown SOP
//! class): it is put in front of what the client sends, so the fuzzer starts past the association
//! and spends its time in P-DATA-TF, PDVs and command sets. The rest is split in two at its
//! middle, fed client → device (after the request), then device → client. Properties (a failure
//! is a panic, which libFuzzer reports as a crash):
//! - never a panic, whatever the bytes;
//! - what is forwarded, answered and reported does not depend on the chunking (and a session
//!   ended one way is ended the other way, for the same kind of reason);
//! - under the operation list, a client's request the list denies (C-FIND, N-ACTION, N-DELETE)
//!   is never reported as an operation let through (only as `operation_denied`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use ward_core::operations::{OpList, OpPolicy, OpProtocol};
use ward_core::stage::Direction;
use ward_decode::harness::drive;

const CONTEXTS: [&str; 6] = [
    "1.2.840.10008.1.1",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.5.1.4.1.2.2.2",
    "1.2.840.10008.5.1.4.1.2.2.3",
    "1.2.3.4.5.6",
];

fn item(ty: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0];
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A valid A-ASSOCIATE-RQ proposing the contexts picked by `mask` (ids 1, 3, 5, …).
fn associate_rq(mask: u8) -> Vec<u8> {
    let mut b = vec![0, 1, 0, 0];
    b.extend_from_slice(b"DEVICE          ");
    b.extend_from_slice(b"FUZZSCU         ");
    b.extend_from_slice(&[0u8; 32]);
    b.extend(item(0x10, b"1.2.840.10008.3.1.1.1"));
    for (k, sop) in CONTEXTS.iter().enumerate() {
        if mask & (1 << k) != 0 {
            let mut d = vec![(2 * k + 1) as u8, 0, 0, 0];
            d.extend(item(0x30, sop.as_bytes()));
            d.extend(item(0x40, b"1.2.840.10008.1.2"));
            b.extend(item(0x20, &d));
        }
    }
    b.extend(item(0x50, &item(0x51, &16384u32.to_be_bytes())));
    let mut pdu = vec![0x01, 0];
    pdu.extend_from_slice(&(b.len() as u32).to_be_bytes());
    pdu.extend(b);
    pdu
}

fuzz_target!(|data: &[u8]| {
    let [first, mask, rest @ ..] = data else {
        return;
    };
    let policy = if first & 1 == 1 {
        OpPolicy {
            rule: "fuzz".into(),
            protocol: OpProtocol::Dicom,
            list: Some(OpList {
                // C-ECHO, C-STORE, C-GET, C-MOVE, N-SET… allowed; C-FIND and N-ACTION are not.
                allow: vec!["*E*".into()],
                deny: vec!["*DELETE*".into()],
            }),
        }
    } else {
        OpPolicy::observe(OpProtocol::Dicom)
    };
    let (up_tail, down) = rest.split_at(rest.len() / 2);
    let mut up = associate_rq(*mask);
    up.extend_from_slice(up_tail);
    let script = [(Direction::Up, &up[..]), (Direction::Down, down)];
    let now = OffsetDateTime::UNIX_EPOCH;
    let step = usize::from(first >> 1);
    let whole = drive(&mut *ward_decode::stage(policy.clone(), "fuzz"), &script, 0, now);
    let chunked = drive(&mut *ward_decode::stage(policy.clone(), "fuzz"), &script, step, now);
    match (&whole.stop, &chunked.stop) {
        (None, None) => assert_eq!(whole, chunked, "the outcome depends on the chunking"),
        (Some(a), Some(b)) => assert_eq!(
            std::mem::discriminant(&a.kind),
            std::mem::discriminant(&b.kind),
            "{a} / {b}"
        ),
        (a, b) => panic!("one run ended the session, the other did not: {a:?} / {b:?}"),
    }
    if policy.enforces() {
        // What the client alone sends (the device's own requests are not governed).
        let client = drive(
            &mut *ward_decode::stage(policy, "fuzz"),
            &[(Direction::Up, &up[..])],
            step,
            now,
        );
        for e in client.of_kind(ward_decode::kind::OPERATION) {
            let op = e.fields.iter().find(|(k, _)| k == "op").map(|(_, v)| v.as_str());
            let from_client = !e.fields.iter().any(|(k, _)| k == "status");
            assert!(
                !(from_client && matches!(op, Some("C-FIND" | "N-ACTION" | "N-DELETE"))),
                "a denied request was let through: {e:?}"
            );
        }
    }
});
