//! `cargo fuzz run -s none http_decode`: the HTTP/1.1 decoder stage (`ward_decode::http`, issue 15)
//! on hostile clients and devices.
//!
//! The first byte picks the chunk size (1..=255; 0: whole) and, by its low bit, whether an
//! operation list applies; the rest is split in two at its middle, fed client → device, then
//! device → client (the seeds in fuzz/seeds/http_decode/ are pipelined requests and responses
//! laid out that way). Properties (a failure is a panic, which libFuzzer reports as a crash):
//! - never a panic, whatever the bytes;
//! - what is forwarded, answered and reported does not depend on the chunking (and a session
//!   ended one way is ended the other way, for the same kind of reason);
//! - under an operation list, what reaches the device, decoded again, holds only operations the
//!   list allows: no refused request (or part of one) is smuggled through, whatever the framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use ward_core::operations::{OpDecision, OpList, OpPolicy, OpProtocol};
use ward_core::stage::Direction;
use ward_decode::harness::drive;
use ward_decode::kind;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let policy = if first & 1 == 1 {
        OpPolicy {
            rule: "fuzz".into(),
            protocol: OpProtocol::Http,
            list: Some(OpList {
                allow: vec!["GET /status*".into(), "HEAD *".into(), "POST /status/*".into()],
                deny: vec!["*/admin*".into()],
            }),
        }
    } else {
        OpPolicy::observe(OpProtocol::Http)
    };
    let (up, down) = rest.split_at(rest.len() / 2);
    let script = [(Direction::Up, up), (Direction::Down, down)];
    let now = OffsetDateTime::UNIX_EPOCH;
    let whole = drive(&mut *ward_decode::stage(policy.clone(), "fuzz"), &script, 0, now);
    let step = usize::from(first);
    let chunked = drive(&mut *ward_decode::stage(policy.clone(), "fuzz"), &script, step, now);
    match (&whole.stop, &chunked.stop) {
        (None, None) => assert_eq!(whole, chunked, "the outcome depends on the chunking"),
        // Bytes before the refusal may have been forwarded chunk by chunk; the session ends
        // either way, for the same kind of reason.
        (Some(a), Some(b)) => assert_eq!(
            std::mem::discriminant(&a.kind),
            std::mem::discriminant(&b.kind),
            "{a} / {b}"
        ),
        (a, b) => panic!("one run ended the session, the other did not: {a:?} / {b:?}"),
    }
    if policy.enforces() {
        for t in [&whole, &chunked] {
            let again = drive(
                &mut *ward_decode::stage(OpPolicy::observe(OpProtocol::Http), "again"),
                &[(Direction::Up, &t.up)],
                0,
                now,
            );
            for op in again.ops(kind::OPERATION) {
                assert_eq!(
                    policy.decide(&op),
                    OpDecision::Allow,
                    "a refused operation reached the device: {op}"
                );
            }
        }
    }
});
