//! `verify_read` (a recording read through a bounded window) reports exactly what `verify` (the
//! whole recording in memory) reports: intact, cut anywhere, bytes altered anywhere, read in
//! chunks of any size.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Read;

use common::*;
use ward_recording::*;

/// A reader that hands out at most `n` bytes per call.
struct Dribble<'a> {
    data: &'a [u8],
    n: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.n.min(buf.len()).min(self.data.len());
        buf[..k].copy_from_slice(&self.data[..k]);
        self.data = &self.data[k..];
        Ok(k)
    }
}

fn recording() -> (Vec<u8>, [u8; 32]) {
    let s = signer();
    let mut out = Vec::new();
    let mut enc = Encoder::start(
        &meta("vr-1"),
        s.clone(),
        CheckpointPolicy::default(),
        &mut out,
    )
    .unwrap();
    for i in 0..300u64 {
        let payload = vec![(i % 251) as u8; (i as usize * 37) % 3000 + 1];
        let dir = if i % 3 == 0 {
            Direction::Up
        } else {
            Direction::Down
        };
        enc.data(dir, i * 1000, &payload, &mut out);
        if enc.checkpoint_due(i * 1000) || i % 50 == 0 {
            enc.checkpoint(i * 1000, &mut out);
        }
    }
    enc.finish(400_000, &end_info(), &mut out);
    (out, s.public_key())
}

fn same(bytes: &[u8], key: &[u8; 32]) {
    same_in(bytes, key, &[7, 4096, 1 << 20]);
}

fn same_in(bytes: &[u8], key: &[u8; 32], chunks: &[usize]) {
    let want = verify(bytes, key);
    for &n in chunks {
        let got = verify_read(Dribble { data: bytes, n }, key).unwrap();
        assert_eq!(got, want, "chunk {n}, {} bytes", bytes.len());
    }
}

#[test]
fn streamed_verification_matches_in_memory() {
    let (rec, key) = recording();
    assert!(verify(&rec, &key).ok);
    same_in(&rec, &key, &[1, 2, 5, 64 * 1024 - 1]);
    same(&[], &key);
    same(&rec[..5], &key);
    for cut in (0..rec.len()).step_by(rec.len() / 97 + 1) {
        same(&rec[..cut], &key);
    }
    for at in (0..rec.len()).step_by(rec.len() / 61 + 1) {
        let mut bad = rec.clone();
        bad[at] ^= 0x5a;
        same(&bad, &key);
    }
    let mut appended = rec.clone();
    appended.extend_from_slice(&rec[8..200]);
    same(&appended, &key);
}

#[test]
fn streamed_verification_reports_read_errors() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let (_, key) = recording();
    assert!(verify_read(Failing, &key).is_err());
}
