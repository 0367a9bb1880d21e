//! Version 2 of the format: event records (an injected credential recorded in place of its
//! bytes), and version-1 recordings still read and verified.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use ward_recording::export::{json_lines, pcap, raw, read_all};
use ward_recording::*;

fn fields(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// A login: the device's prompt, the user name typed, the password injected (an event, 11
/// bytes), the shell prompt.
fn with_event() -> (std::sync::Arc<Signer>, Vec<u8>) {
    let s = signer();
    let mut out = Vec::new();
    let mut enc = Encoder::start(
        &meta("ev"),
        s.clone(),
        CheckpointPolicy::default(),
        &mut out,
    )
    .unwrap();
    enc.data(Direction::Down, 10, b"Password: ", &mut out);
    let f = fields(&[
        ("device", "pump-12"),
        ("account", "service"),
        ("length", "11"),
        ("outcome", "sent"),
    ]);
    enc.event(Direction::Up, 20, "credential_injected", &f, &mut out);
    enc.data(Direction::Down, 30, b"\r\npump> ", &mut out);
    enc.finish(40, &end_info(), &mut out);
    (s, out)
}

#[test]
fn an_event_is_read_back_chained_and_signed() {
    let (s, bytes) = with_event();
    assert_eq!(&bytes[..8], MAGIC);
    assert_eq!(MAGIC, b"WARDREC\x03");
    let report = verify(&bytes, &s.public_key());
    assert!(report.ok, "{report:?}");
    let recs = read_all(&bytes).unwrap();
    let ev = recs
        .iter()
        .find_map(|r| match r {
            Record::Event {
                t_ns,
                dir,
                kind,
                fields,
            } => Some((*t_ns, *dir, kind.clone(), fields.clone())),
            _ => None,
        })
        .expect("the event record");
    assert_eq!(ev.0, 20);
    assert_eq!(ev.1, Direction::Up);
    assert_eq!(ev.2, "credential_injected");
    assert!(ev.3.contains(&("length".to_string(), "11".to_string())));
    // The raw export holds only the recorded bytes: the secret was never written.
    let (up, down) = raw(&recs);
    assert!(up.is_empty());
    assert_eq!(down, b"Password: \r\npump> ");
    let json = String::from_utf8(json_lines(&recs)).unwrap();
    assert!(json.contains(r#""type":"event""#), "{json}");
    assert!(json.contains(r#""kind":"credential_injected""#), "{json}");
}

#[test]
fn an_altered_event_fails_verification() {
    let (s, bytes) = with_event();
    let at = bytes
        .windows(b"service".len())
        .position(|w| w == b"service")
        .unwrap();
    let mut forged = bytes.clone();
    forged[at] = b'S';
    let report = verify(&forged, &s.public_key());
    assert!(!report.ok);
    assert!(
        report
            .first_error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("chain mismatch"),
        "{report:?}"
    );
}

#[test]
fn pcap_fills_an_injected_secret_with_same_length_filler() {
    let (_, bytes) = with_event();
    let recs = read_all(&bytes).unwrap();
    let p = pcap(
        &recs,
        "192.0.2.10:50123".parse().unwrap(),
        "10.20.0.12:23".parse().unwrap(),
    )
    .unwrap();
    assert!(
        p.windows(11).any(|w| w == b"***********"),
        "11 bytes of filler where the password went"
    );
    assert!(!p.windows(12).any(|w| w == b"************"));
}

#[test]
fn version_1_recordings_still_verify_and_read() {
    // Written by the version-1 encoder (main at db8f309): telnet login, 3 data records.
    let bytes = include_bytes!("fixtures/v1-telnet.wrec");
    let key: [u8; 32] = include_bytes!("fixtures/v1-telnet.pub").to_owned();
    assert_eq!(&bytes[..8], b"WARDREC\x01");
    let report = verify(bytes, &key);
    assert!(report.ok, "{report:?}");
    let recs = read_all(bytes).unwrap();
    let (up, down) = raw(&recs);
    assert_eq!(up, b"admin\r\n");
    assert_eq!(down, b"login: pump> ");
    let mut streamed = std::io::Cursor::new(bytes.to_vec());
    assert!(verify_read(&mut streamed, &key).unwrap().ok);
}
