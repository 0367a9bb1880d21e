//! `cargo fuzz run telnet_login`: the telnet login and rotation dialogues
//! (`ward_core::inject::telnet`) against a hostile device. See docs/fuzzing.md.
//!
//! The first byte picks how the rest is cut into reads (1–16 bytes, or whole). Properties, beyond
//! "no panic": every read's record copy is as long as the bytes it accounts for (masking keeps
//! lengths, nothing is lost or invented); the password never leaves in a send outside its
//! secret span, nor in the leftover or the record after it was sent; with prompts that never
//! match, the record is the input byte for byte and the option answers do not depend on how the
//! input was cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use ward_core::inject::telnet::{LoginState, Progress, TelnetLogin, TelnetRotate};
use ward_core::inject::{Credential, LoginProfile, RotateProcedure};
use ward_core::secret::Secret;

const PW: &str = "Fz-9!qpW";
const NEW: &str = "Nw-7#kR2x";

fn chunks(data: &[u8], size: usize) -> Vec<&[u8]> {
    if size == 0 {
        vec![data]
    } else {
        data.chunks(size).collect()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn check_sends(p: &Progress, secrets: &[&str]) {
    for s in &p.send {
        let public = s.public_bytes();
        for secret in secrets {
            assert!(!contains(&public, secret.as_bytes()), "a secret outside its span");
        }
        if let Some(r) = &s.secret {
            assert!(r.end <= s.bytes.len());
        }
    }
}

fn login(data: &[u8], size: usize, profile: &LoginProfile) -> (Vec<u8>, Vec<u8>, LoginState) {
    let t0 = time::OffsetDateTime::UNIX_EPOCH;
    let cred = Credential {
        account: "service".into(),
        username: "admin".into(),
        secret: Secret::new(PW.to_string()),
    };
    let mut m = TelnetLogin::new(&cred, profile, t0);
    let mut record = Vec::new();
    let mut answers = Vec::new();
    let mut fed = 0usize;
    let mut after_pw_record = Vec::new();
    for c in chunks(data, size) {
        if m.is_done() {
            break;
        }
        let sent_before = m.password_sent();
        let p = m.feed(c, t0);
        fed += c.len();
        check_sends(&p, &[PW]);
        for s in &p.send {
            if s.secret.is_none() {
                answers.extend_from_slice(&s.bytes);
            }
        }
        if sent_before {
            after_pw_record.extend_from_slice(&p.record);
        }
        record.extend_from_slice(&p.record);
    }
    let p = m.closed();
    record.extend_from_slice(&p.record);
    after_pw_record.extend_from_slice(&p.record);
    assert_eq!(record.len(), fed, "the record lost or invented bytes");
    assert!(!contains(&after_pw_record, PW.as_bytes()), "an echoed password in the record");
    if let LoginState::LoggedIn { leftover } = m.state() {
        assert!(!contains(leftover, PW.as_bytes()), "the password in the leftover");
    }
    let _ = m.tick(t0 + time::Duration::days(1));
    (record, answers, m.state().clone())
}

fn rotate(data: &[u8], size: usize) {
    let t0 = time::OffsetDateTime::UNIX_EPOCH;
    let mut r = TelnetRotate::new(
        &RotateProcedure::passwd(),
        "admin",
        &Secret::new(PW.to_string()),
        &Secret::new(NEW.to_string()),
        Duration::from_secs(10),
        t0,
    );
    check_sends(&r.start(), &[PW, NEW]);
    let mut fed = 0usize;
    let mut record = Vec::new();
    for c in chunks(data, size) {
        if r.is_done() {
            break;
        }
        let p = r.feed(c, t0);
        fed += c.len();
        check_sends(&p, &[PW, NEW]);
        record.extend_from_slice(&p.record);
    }
    record.extend_from_slice(&r.closed().record);
    assert_eq!(record.len(), fed);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let size = usize::from(mode % 17);
    login(rest, size, &LoginProfile::generic_telnet());
    rotate(rest, size);
    // Prompts that never match: the record is the input, the option answers are the same
    // however the input was cut.
    let mut deaf = LoginProfile::generic_telnet();
    deaf.user_prompt = vec![];
    deaf.password_prompt = vec![];
    let (record, answers, _) = login(rest, size, &deaf);
    let fed = rest.len().min(record.len());
    assert_eq!(&record[..], &rest[..fed]);
    let (_, whole_answers, _) = login(rest, 0, &deaf);
    if rest.len() <= ward_core::inject::telnet::MAX_DIALOGUE {
        assert_eq!(answers, whole_answers, "option answers depend on chunking");
    }
});
