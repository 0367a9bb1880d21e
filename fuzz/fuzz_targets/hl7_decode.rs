//! `cargo fuzz run -s none hl7_decode`: the hl7 decoder stage (`ward_decode::hl7`, issue 15)
//! on hostile clients and devices.
//!
//! The first byte picks the chunk size (1..=255; 0: whole) and, by its low bit, whether an
//! operation list applies; the rest is split in two at its middle, fed client → device, then
//! device → client. Properties (a failure is a panic, which libFuzzer reports as a crash):
//! - never a panic, whatever the bytes;
//! - under a policy, only whole MLLP messages it allowed are forwarded (each reported as an
//!   operation) and every refused one is answered (an AR ACK);
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
            protocol: OpProtocol::Hl7,
            list: Some(OpList {
                allow: vec!["*E*".into(), "GET *".into(), "ADT^*".into(), "show*".into()],
                deny: vec!["*DELETE*".into(), "passwd*".into()],
            }),
        }
    } else {
        OpPolicy::observe(OpProtocol::Hl7)
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
            if policy_applies {
                // Under a policy only whole messages it allowed reach the device, each reported,
                // and every refused one is answered.
                let frames = whole.up.iter().filter(|&&b| b == 0x0b).count();
                assert_eq!(
                    frames,
                    whole.ops(kind::OPERATION).len(),
                    "an unreported message was forwarded"
                );
                assert_eq!(whole.replies.len(), whole.ops(kind::DENIED).len());
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
