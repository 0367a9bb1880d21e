//! `cargo fuzz run -s none telnet_decode`: the telnet decoder stage (`ward_decode::telnet`, issue 15)
//! on hostile clients and devices.
//!
//! The first byte picks the chunk size (1..=255; 0: whole) and, by its low bit, whether an
//! operation list applies; the rest is split in two at its middle, fed client → device, then
//! device → client. Properties (a failure is a panic, which libFuzzer reports as a crash):
//! - never a panic, whatever the bytes;
//! - every refused line is explained to the user; without a policy the bytes pass untouched;
//! - what is forwarded, answered and reported does not depend on the chunking (and a session
//!   ended one way is ended the other way, for the same kind of reason).
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use ward_core::operations::{OpList, OpPolicy, OpProtocol};
use ward_core::stage::Direction;
use ward_decode::harness::drive;
use ward_decode::kind;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let policy_applies = first & 1 == 1;
    let policy = if policy_applies {
        OpPolicy {
            rule: "fuzz".into(),
            protocol: OpProtocol::Telnet,
            list: Some(OpList {
                allow: vec!["*E*".into(), "GET *".into(), "ADT^*".into(), "show*".into()],
                deny: vec!["*DELETE*".into(), "passwd*".into()],
            }),
        }
    } else {
        OpPolicy::observe(OpProtocol::Telnet)
    };
    let (up, down) = rest.split_at(rest.len() / 2);
    let script = [(Direction::Up, up), (Direction::Down, down)];
    let now = OffsetDateTime::UNIX_EPOCH;
    let whole = drive(
        &mut *ward_decode::stage(policy.clone(), "fuzz"),
        &script,
        0,
        now,
    );
    let chunked = drive(
        &mut *ward_decode::stage(policy, "fuzz"),
        &script,
        usize::from(first),
        now,
    );
    match (&whole.stop, &chunked.stop) {
        (None, None) => {
            assert_eq!(whole, chunked, "the outcome depends on the chunking");
            // Every refused line is explained to the user; without a policy nothing is changed.
            assert_eq!(whole.replies.len(), whole.ops(kind::DENIED).len());
            if !policy_applies {
                assert_eq!(
                    whole.up, up,
                    "without a policy the client's bytes pass untouched"
                );
            }
        }
        // Bytes before the refusal may have been forwarded chunk by chunk; the session ends
        // either way, for the same kind of reason.
        (Some(a), Some(b)) => assert_eq!(
            std::mem::discriminant(&a.kind),
            std::mem::discriminant(&b.kind),
            "{a} / {b}"
        ),
        (a, b) => panic!("one run ended the session, the other did not: {a:?} / {b:?}"),
    }
});
