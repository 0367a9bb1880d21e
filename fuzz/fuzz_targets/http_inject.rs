//! `cargo fuzz run -s none http_inject`: the HTTP credential injector
//! (`ward_core::inject::http::HttpInjector`, issue 14) on hostile clients and devices.
//!
//! The first byte picks how the input is chunked (1..=255 bytes a piece; 0: whole) and the
//! credential scheme (its low bit: Basic or a configured header); the rest is fed client → device,
//! then device → client. Properties (a failure is a panic, which libFuzzer reports as a crash):
//! - never a panic, whatever the bytes;
//! - the outcome does not depend on the chunking: the same bytes forwarded and the same secret
//!   spans (at absolute positions) when it passes, the same stop kind when it ends the session;
//! - every secret span holds exactly the secret, and the secret appears nowhere else;
//! - no client credential header reaches the device unless the input had one in a body (the
//!   marker `Authorization: Basic CLIENT` is only looked for when the input has no body framing);
//! - device → client bytes pass unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use ward_core::inject::http::HttpInjector;
use ward_core::inject::{Credential, HttpAuth};
use ward_core::secret::Secret;
use ward_core::stage::{Direction, Note, Stage, StageStop, StopKind, Verdict};

/// base64("admin:fuzz-secret")
const B64: &[u8] = b"YWRtaW46ZnV6ei1zZWNyZXQ=";
const KEY: &[u8] = b"fuzz-secret";

fn stage(header: bool) -> HttpInjector {
    let cred = Credential {
        account: "service".into(),
        username: "admin".into(),
        secret: Secret::new(String::from_utf8_lossy(KEY).into_owned()),
    };
    let auth = if header {
        HttpAuth::Header("X-Api-Key".into())
    } else {
        HttpAuth::Basic
    };
    HttpInjector::new("fuzz", cred, auth)
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    out: Vec<u8>,
    secrets: Vec<(usize, usize)>,
    events: usize,
    stop: Option<StopKind>,
    /// The stop came when the direction ended (a partial head), not with a chunk.
    at_finish: bool,
}

fn feed(s: &mut HttpInjector, dir: Direction, input: &[u8], step: usize) -> Seen {
    let mut seen = Seen {
        out: Vec::new(),
        secrets: Vec::new(),
        events: 0,
        stop: None,
        at_finish: false,
    };
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let pieces: Vec<&[u8]> = if step == 0 || input.is_empty() {
        vec![input]
    } else {
        input.chunks(step).collect()
    };
    let end = |seen: &mut Seen, stop: StageStop| {
        // Secret spans of earlier chunks stay valid; what they forwarded is a prefix.
        seen.stop = Some(stop.kind);
    };
    for piece in pieces {
        out.clear();
        let verdict = s.process(dir, piece, OffsetDateTime::UNIX_EPOCH, &mut out);
        s.take_notes(&mut notes);
        let base = seen.out.len();
        match verdict {
            Verdict::Pass => seen.out.extend_from_slice(piece),
            Verdict::Hold => {}
            Verdict::Replace => seen.out.extend_from_slice(&out),
            Verdict::End(stop) => {
                assert!(notes.is_empty(), "notes for a chunk that ended the session");
                end(&mut seen, stop);
                return seen;
            }
        }
        for n in notes.drain(..) {
            match n {
                Note::Secret { range, .. } => {
                    assert!(matches!(verdict, Verdict::Replace), "a secret span on {verdict:?}");
                    assert!(range.start <= range.end && range.end <= out.len());
                    seen.secrets.push((base + range.start, base + range.end));
                }
                Note::Event(_) => seen.events += 1,
                Note::Reply(r) => panic!("the injector never answers: {r:?}"),
            }
        }
    }
    out.clear();
    match s.finish(dir, OffsetDateTime::UNIX_EPOCH, &mut out) {
        Ok(()) => seen.out.extend_from_slice(&out),
        Err(stop) => {
            seen.at_finish = true;
            end(&mut seen, stop);
        }
    }
    seen
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<(usize, usize)> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| (i, i + needle.len()))
        .collect()
}

fn check(data: &[u8]) {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let header = mode & 1 == 1;
    let step = usize::from(mode >> 1);
    let secret = if header { KEY } else { B64 };

    let whole = feed(&mut stage(header), Direction::Up, input, 0);
    let pieces = feed(&mut stage(header), Direction::Up, input, step);
    match (&whole.stop, &pieces.stop) {
        (None, None) => assert_eq!(whole, pieces, "chunking changed the outcome"),
        (Some(a), Some(b)) => {
            assert_eq!(a, b, "chunking changed why the session ended");
            assert!(
                whole.at_finish || whole.out.is_empty(),
                "a chunk that ended the session was forwarded"
            );
            // What the pieces forwarded before the end are whole requests.
            assert!(pieces.secrets.iter().all(|&(s, e)| pieces.out.get(s..e) == Some(secret)));
        }
        _ => panic!("whole: {:?}, pieces: {:?}", whole.stop, pieces.stop),
    }
    for seen in [&whole, &pieces] {
        for &(s, e) in &seen.secrets {
            assert_eq!(seen.out.get(s..e), Some(secret), "a span that is not the secret");
        }
        if !input.windows(secret.len()).any(|w| w == secret) {
            assert_eq!(find_all(&seen.out, secret), seen.secrets, "the secret outside a span");
        }
    }
    let has_body = |needle: &[u8]| {
        input
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    let client = if header { &b"\nx-api-key:"[..] } else { &b"\nauthorization:"[..] };
    if !has_body(b"content-length") && !has_body(b"transfer-encoding") {
        let lower = whole.out.to_ascii_lowercase();
        assert_eq!(
            find_all(&lower, client).len(),
            whole.secrets.len(),
            "a client credential header reached the device"
        );
    }

    // Device → client: unchanged, the same 401 reports however chunked.
    let mut a = stage(header);
    let mut b = stage(header);
    let reqs = b"GET / HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    feed(&mut a, Direction::Up, reqs, 0);
    feed(&mut b, Direction::Up, reqs, 0);
    let da = feed(&mut a, Direction::Down, input, 0);
    let db = feed(&mut b, Direction::Down, input, step);
    assert_eq!(da.out, input, "a response was changed");
    assert_eq!(da, db, "chunking changed what the responses report");
}

fuzz_target!(|data: &[u8]| {
    check(data);
});
