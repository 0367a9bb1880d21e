#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use ward_recording::*;

pub fn meta(session_id: &str) -> SessionMeta {
    SessionMeta {
        session_id: session_id.into(),
        principal_kind: "vendor".into(),
        principal_name: "acme-field-service".into(),
        principal_org: Some("ACME Medical".into()),
        cert_serial: "5a3f01".into(),
        source: "192.0.2.10:50123".into(),
        device: "infusion-pump-12".into(),
        device_addr: "10.20.0.12:23".into(),
        protocol: "telnet".into(),
        rule: "vendor-maintenance".into(),
        transport: "quic".into(),
        break_glass: false,
        started_unix_ms: 1_795_000_000_123,
        recipients: Vec::new(),
        age_header: None,
    }
}

pub fn signer() -> Arc<Signer> {
    Arc::new(Signer::generate().unwrap().0)
}

pub fn end_info() -> EndInfo {
    EndInfo {
        ended_unix_ms: 1_795_000_009_000,
        reason: "client closed".into(),
        bytes_up: 0,
        bytes_down: 0,
    }
}

/// A recording with `n` data records of `len` bytes, alternating directions, checkpoint every
/// `every` records, sealed with an end record. Returns the bytes and what was written per
/// direction.
pub fn recording(
    signer: &Arc<Signer>,
    session_id: &str,
    n: usize,
    len: usize,
    every: u64,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    let policy = CheckpointPolicy {
        every_records: every,
        every_ns: u64::MAX,
    };
    let mut enc = Encoder::start(&meta(session_id), signer.clone(), policy, &mut out).unwrap();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..n {
        let payload: Vec<u8> = (0..len).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect();
        let dir = if i % 2 == 0 {
            Direction::Up
        } else {
            Direction::Down
        };
        match dir {
            Direction::Up => up.extend_from_slice(&payload),
            Direction::Down => down.extend_from_slice(&payload),
        }
        enc.data(dir, 1_000_000 * (i as u64 + 1), &payload, &mut out);
    }
    enc.finish(1_000_000 * (n as u64 + 1), &end_info(), &mut out);
    (out, up, down)
}

/// (index, offset, len, record) of every record.
pub fn layout(bytes: &[u8]) -> Vec<RecordAt> {
    let mut r = Reader::new(bytes);
    std::iter::from_fn(|| r.next_record())
        .map(|r| r.unwrap())
        .collect()
}
