//! Fuzz-style property tests of the control-frame decoder (security cases 27 and 28): the CI
//! smoke run of what `fuzz/fuzz_targets/frame_decode.rs` does in depth (see `docs/fuzzing.md`).
//!
//! The harness only uses the public `decode`/`decode_request`/`decode_response`/`encode`
//! functions and the type bytes the decoder itself accepts, so frame types added later are
//! covered without changing this file: arbitrary bytes, arbitrary type byte + length + JSON-ish
//! payload, mutated valid payloads, streams of frames, and oversized headers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use ward_core::frame::{
    decode, decode_request, decode_response, encode, Frame, FrameError, HEADER_LEN, MAX_PAYLOAD,
};

fn frame_bytes(t: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![t];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Every type byte the decoder knows, asked of the decoder itself (not a copied list).
fn known_types() -> Vec<u8> {
    static KNOWN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| (0..=255u8).filter(|t| decode(&[*t]) == Ok(None)).collect())
        .clone()
}

/// The properties every decode result must have, whatever the input.
fn check_decode(buf: &[u8]) -> Result<(), TestCaseError> {
    let got = decode(buf);
    match &got {
        Ok(None) => {
            // Incomplete: the header is short, or the declared payload has not all arrived.
            if buf.len() >= HEADER_LEN {
                let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
                prop_assert!(len <= MAX_PAYLOAD, "an oversized length must be an error");
                prop_assert!(
                    buf.len() < HEADER_LEN + len,
                    "a whole frame is not incomplete"
                );
            }
            if let Some(&t) = buf.first() {
                prop_assert!(known_types().contains(&t));
            }
        }
        Ok(Some((frame, used))) => {
            let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
            prop_assert_eq!(*used, HEADER_LEN + len, "consumes exactly header + payload");
            prop_assert!(*used <= buf.len(), "never reads past the buffer");
            prop_assert_eq!(frame.type_byte(), buf[0]);
            // Trailing bytes do not change the frame; every strict prefix is incomplete.
            prop_assert_eq!(decode(&buf[..*used]), got.clone());
            for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, *used - 1] {
                if cut < *used {
                    prop_assert_eq!(decode(&buf[..cut]), Ok(None), "prefix of {}", cut);
                }
            }
            check_round_trip(frame, len)?;
        }
        Err(FrameError::UnknownType(t)) => {
            prop_assert_eq!(Some(t), buf.first());
            // Reported after the one byte that proves it.
            prop_assert_eq!(decode(&buf[..1]), got.clone());
        }
        Err(FrameError::TooLarge { len }) => {
            prop_assert!(*len > MAX_PAYLOAD);
            // Reported from the header alone, before any payload is buffered.
            prop_assert_eq!(decode(&buf[..HEADER_LEN]), got.clone());
        }
        Err(e @ (FrameError::NotUtf8 { .. } | FrameError::BadJson { .. })) => {
            prop_assert!(!e.to_string().is_empty());
            let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
            prop_assert!(
                buf.len() >= HEADER_LEN + len,
                "payload errors need the payload"
            );
        }
        Err(FrameError::WrongDirection { .. }) => {
            prop_assert!(false, "decode has no direction: {:?}", got);
        }
    }
    check_directions(buf, &got)?;
    Ok(())
}

/// `decode_request`/`decode_response` agree with `decode` and refuse the other direction.
fn check_directions(
    buf: &[u8],
    got: &Result<Option<(Frame, usize)>, FrameError>,
) -> Result<(), TestCaseError> {
    let req = decode_request(buf);
    let resp = decode_response(buf);
    match got {
        Ok(None) => {
            prop_assert_eq!(req, Ok(None));
            prop_assert_eq!(resp, Ok(None));
        }
        Ok(Some((Frame::Request(r), used))) => {
            prop_assert_eq!(req, Ok(Some((r.clone(), *used))));
            prop_assert!(
                matches!(
                    resp,
                    Err(FrameError::WrongDirection {
                        expected: "response",
                        ..
                    })
                ),
                "{:?}",
                resp
            );
        }
        Ok(Some((Frame::Response(r), used))) => {
            prop_assert_eq!(resp, Ok(Some((r.clone(), *used))));
            prop_assert!(
                matches!(
                    req,
                    Err(FrameError::WrongDirection {
                        expected: "request",
                        ..
                    })
                ),
                "{:?}",
                req
            );
        }
        Err(e) => {
            prop_assert_eq!(req, Err(e.clone()));
            prop_assert_eq!(resp, Err(e.clone()));
        }
    }
    Ok(())
}

/// A decoded frame encodes to bytes that decode to the same frame (unless re-encoding a payload
/// that was already near the limit makes it too large, which `encode` must then say).
fn check_round_trip(frame: &Frame, payload_len: usize) -> Result<(), TestCaseError> {
    match encode(frame) {
        Ok(bytes) => {
            prop_assert_eq!(decode(&bytes), Ok(Some((frame.clone(), bytes.len()))));
            // Encoding is canonical: encode(decode(encode(f))) == encode(f).
            let (again, _) = decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(encode(&again), Ok(bytes));
        }
        Err(FrameError::TooLarge { len }) => {
            prop_assert!(len > MAX_PAYLOAD);
            prop_assert!(
                payload_len > MAX_PAYLOAD / 2,
                "a {payload_len}-byte payload re-encoded to {len} bytes"
            );
        }
        Err(e) => prop_assert!(false, "re-encoding a decoded frame failed: {e}"),
    }
    Ok(())
}

/// Valid payloads of today's frame types, as mutation seeds. Types added later still get the
/// generic JSON below; adding a seed here gives them deeper coverage.
fn seeds() -> Vec<(u8, Value)> {
    let target = json!({"principal": "acme/jdoe"});
    vec![
        (
            0x01,
            json!({"device": "pump-12", "break_glass": true, "reason": "ticket 4711"}),
        ),
        (0x01, json!({"device": "pump-12"})),
        (0x02, json!({})),
        (
            0x03,
            json!({"target": target, "for_secs": 3600, "reason": "leak"}),
        ),
        (0x04, json!({"target": {"device": "pump-12"}})),
        (0x05, json!({})),
        (
            0x06,
            json!({"op": "list_sessions", "principal": "acme/jdoe", "device": null,
                "since_unix": 1, "until_unix": null, "grep": "GET"}),
        ),
        (
            0x06,
            json!({"op": "recording", "session_id": "s1", "purpose": "replay", "force": false}),
        ),
        (0x06, json!({"op": "audit_log"})),
        (0x06, json!({"op": "public_key"})),
        (
            0x81,
            json!({"session_id": "s1", "device": "pump-12", "rule": "r", "ends_at_unix": 17,
                "end_reason_if_uncut": "certificate expiry"}),
        ),
        (0x82, json!({"reason": "outside hours"})),
        (0x83, json!({"code": "device_timeout", "message": "m"})),
        (
            0x84,
            json!({"devices": [{"id": "pump-12", "protocol": "telnet",
                "labels": {"ward": "icu"}, "rule": "r"}]}),
        ),
        (0x85, json!({"message": "done"})),
        (
            0x86,
            json!({"locks": [{"target": {"org": "acme"}, "until_unix": null,
                "reason": "leak", "by": "security/bob"}]}),
        ),
        (0x87, json!({"reason": "locked"})),
        (0x88, json!({"what": "audit log"})),
    ]
}

/// Field names and values that matter to the decoder: the ones it knows, plus junk.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(vec![
            "device", "break_glass", "reason", "target", "for_secs", "op", "principal", "org",
            "session_id", "rule", "ends_at_unix", "end_reason_if_uncut", "code", "message",
            "devices", "locks", "what", "id", "protocol", "labels", "until_unix", "by",
            "purpose", "force", "since_unix", "grep",
        ])
        .prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        proptest::sample::select(vec![
            "telnet",
            "http",
            "dicom",
            "hl7",
            "raw",
            "list_sessions",
            "recording",
            "audit_log",
            "public_key",
            "bad_request",
            "internal",
            "\u{1b}[2J",
            "",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Changes one spot of a JSON value: replace a value, drop or add a key, change a type.
fn mutate(v: &mut Value, path: &[usize], replacement: Value, key: String, op: u8) {
    match (v, path.split_first()) {
        (Value::Object(m), Some((i, rest))) if !m.is_empty() => {
            let k = m.keys().nth(i % m.len()).unwrap().clone();
            if rest.is_empty() || op % 4 == 0 {
                match op % 3 {
                    0 => {
                        m.remove(&k);
                    }
                    1 => {
                        m.insert(key, replacement);
                    }
                    _ => {
                        m.insert(k, replacement);
                    }
                }
            } else {
                mutate(m.get_mut(&k).unwrap(), rest, replacement, key, op);
            }
        }
        (Value::Array(a), Some((i, rest))) if !a.is_empty() => {
            let n = a.len();
            if rest.is_empty() {
                a[i % n] = replacement;
            } else {
                mutate(&mut a[i % n], rest, replacement, key, op);
            }
        }
        (v, _) => *v = replacement,
    }
}

fn arb_seeded_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds()),
        proptest::collection::vec(any::<usize>(), 1..4),
        arb_json(),
        arb_key(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|((t, mut v), path, replacement, key, op, keep)| {
            if !keep {
                mutate(&mut v, &path, replacement, key, op);
            }
            frame_bytes(t, &serde_json::to_vec(&v).unwrap())
        })
}

fn arb_type() -> impl Strategy<Value = u8> {
    prop_oneof![3 => proptest::sample::select(known_types()), 1 => any::<u8>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        check_decode(&bytes)?;
    }

    #[test]
    fn known_type_and_arbitrary_payload(
        t in arb_type(),
        payload in proptest::collection::vec(any::<u8>(), 0..96),
        trailing in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut bytes = frame_bytes(t, &payload);
        bytes.extend_from_slice(&trailing);
        check_decode(&bytes)?;
        prop_assert!(!matches!(decode(&bytes), Ok(None)), "a whole frame is never incomplete");
    }

    #[test]
    fn json_payloads(t in arb_type(), v in arb_json()) {
        check_decode(&frame_bytes(t, &serde_json::to_vec(&v).unwrap()))?;
    }

    #[test]
    fn mutated_valid_payloads(bytes in arb_seeded_frame()) {
        check_decode(&bytes)?;
    }

    #[test]
    fn any_declared_length(t in arb_type(), len in any::<u32>(), have in 0usize..64) {
        // A header declaring `len` bytes, followed by fewer (or more) than that.
        let mut bytes = vec![t];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(b' ', have));
        check_decode(&bytes)?;
        if decode(&[t]) == Ok(None) && len as usize > MAX_PAYLOAD {
            prop_assert_eq!(decode(&bytes), Err(FrameError::TooLarge { len: len as usize }));
        }
    }

    #[test]
    fn streams_of_frames_split_into_chunks(
        frames in proptest::collection::vec(arb_seeded_frame(), 1..5),
        chunk in 1usize..17,
    ) {
        // Feed the stream in chunks, as the I/O layer does: append, decode, consume.
        let stream: Vec<u8> = frames.concat();
        let mut buf = Vec::new();
        let mut decoded = 0;
        let mut fed = 0;
        'outer: while fed < stream.len() {
            let end = (fed + chunk).min(stream.len());
            buf.extend_from_slice(&stream[fed..end]);
            fed = end;
            loop {
                match decode(&buf) {
                    Ok(None) => break,
                    Ok(Some((_, used))) => {
                        prop_assert_eq!(used, frames[decoded].len());
                        buf.drain(..used);
                        decoded += 1;
                    }
                    Err(_) => {
                        // The frame that failed is the same frame decoded on its own.
                        prop_assert!(decode(&frames[decoded]).is_err());
                        break 'outer;
                    }
                }
            }
        }
        if fed == stream.len() && decoded == frames.len() {
            prop_assert!(buf.is_empty());
        }
    }
}

#[test]
fn every_known_type_has_a_seed_or_is_still_decoded_generically() {
    // Not a coverage requirement (new types are fuzzed with generic JSON), but today's seeds must
    // all decode, or the mutation seeds are testing nothing.
    for (t, v) in seeds() {
        let bytes = frame_bytes(t, &serde_json::to_vec(&v).unwrap());
        assert!(
            matches!(decode(&bytes), Ok(Some(_))),
            "seed for type 0x{t:02x} does not decode: {:?}",
            decode(&bytes)
        );
    }
    assert!(!known_types().is_empty());
}

#[test]
fn oversized_lengths_are_refused_from_the_header_alone() {
    for t in known_types() {
        for len in [MAX_PAYLOAD as u32 + 1, 1 << 24, u32::MAX] {
            let mut header = vec![t];
            header.extend_from_slice(&len.to_be_bytes());
            assert_eq!(
                decode(&header),
                Err(FrameError::TooLarge { len: len as usize })
            );
            let e = decode(&header).unwrap_err().to_string();
            assert!(e.contains("exceeds"), "{e}");
        }
        // Exactly at the limit is fine (and waits for the payload).
        let mut header = vec![t];
        header.extend_from_slice(&(MAX_PAYLOAD as u32).to_be_bytes());
        assert_eq!(decode(&header), Ok(None));
    }
}

#[test]
fn deep_json_nesting_is_an_error_not_a_stack_overflow() {
    // Within MAX_PAYLOAD, 8000 nested arrays: serde_json's recursion limit must refuse them.
    for t in known_types() {
        let mut payload = "[".repeat(8000);
        payload.push_str(&"]".repeat(8000));
        assert!(matches!(
            decode(&frame_bytes(t, payload.as_bytes())),
            Err(FrameError::BadJson { .. })
        ));
        let mut payload = r#"{"device":"#.to_string() + &"{\"a\":".repeat(2000);
        payload.push_str(&"}".repeat(2001));
        assert!(matches!(
            decode(&frame_bytes(t, payload.as_bytes())),
            Err(FrameError::BadJson { .. })
        ));
    }
}
