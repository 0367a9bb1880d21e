//! Space reservation: bytes are recorded before they are delivered, even when the disk fills.
//!
//! The recorder writes batches on a blocking thread while the data path moves on, so without
//! reservation a full disk would show up only after the chunks of the failed batch had been
//! forwarded. Instead the recording file is kept allocated ahead of what has been written
//! (`fallocate(KEEP_SIZE)` on local files) and the data path claims the room a chunk's record will
//! take before forwarding it: in the common case one atomic subtract. When the budget is short
//! the claiming chunk extends the reservation (growing steps, at most [`MAX_STEP`], so idle
//! sessions stay small) and waits; when the disk has no room left the claim fails and the chunk
//! is not forwarded. The recorder gives back what claims over-counted ([`Ledger`]). [`END_MARGIN`], reserved at creation and never claimed, holds the end record
//! and the final checkpoint, so a session can always be sealed. The recorder gives back what is
//! left at finish (the file is truncated to its written length); crash recovery truncates too.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use ward_recording::{MAX_DATA_PAYLOAD, RECORD_HEADER_LEN};

use super::Reserver;

/// Data budget a recording starts with (beyond its header and [`END_MARGIN`]).
pub const FIRST_BUDGET: u64 = 8 * 1024;
/// Largest step by which a busy session's reservation grows.
pub const MAX_STEP: u64 = 1 << 20;
/// Reserved at creation for the end record and the final checkpoint.
pub const END_MARGIN: u64 = 2048;
/// Longest end reason that fits the margin (longer ones are cut).
pub const END_REASON_MAX: usize = 1024;

/// A data record's header: type, length, `t_ns`.
const DATA_HEADER: u64 = RECORD_HEADER_LEN as u64 + 8;
/// A checkpoint record. At most one follows each data record: the encoder writes one after
/// `every_records` records, the recorder one per second only if records were written since.
const CHECKPOINT: u64 = RECORD_HEADER_LEN as u64 + 120;

/// What a sealed record adds around the records it holds: its header and time (13), nonce (16),
/// and the last chunk's tag (16); plus a tag per 64 KiB chunk ([`SEALED_CHUNK_TAG`]).
const SEALED_FIXED: u64 = DATA_HEADER + 16 + 16;
/// Poly1305 tag per 64 KiB of sealed plaintext.
const SEALED_CHUNK_TAG: u64 = 16;

/// The room a chunk of `len` bytes can take in the file: its records and a checkpoint after each.
/// Encrypted (`sealed`): as if every record were sealed on its own, plus one more sealed record
/// (the sealed encoder may split a chunk across two) and a tag per 64 KiB: the recorder seals
/// each batch, so a batch of one chunk pays all of that; [`Ledger`] gives back what larger
/// batches did not use.
pub fn claim_for(len: usize, sealed: bool) -> u64 {
    let records = len.div_ceil(MAX_DATA_PAYLOAD).max(1) as u64;
    let plain = len as u64 + records * (DATA_HEADER + CHECKPOINT);
    if !sealed {
        return plain;
    }
    let chunks = len.div_ceil(ward_recording::sealed::CHUNK) as u64;
    plain + (records + 1) * (SEALED_FIXED + DATA_HEADER) + chunks * SEALED_CHUNK_TAG
}

/// One recording's reserved room, shared by the taps of both directions.
pub struct Space {
    /// Reserved bytes no chunk has claimed yet.
    avail: AtomicU64,
    /// The recording is encrypted: claims include the sealed records' overhead.
    sealed: bool,
    /// Extensions, one at a time.
    grow: tokio::sync::Mutex<Grow>,
}

struct Grow {
    reserver: Reserver,
    /// End of the reserved range (a file offset).
    end: u64,
    /// Data budget granted so far; the next step is as large, within bounds.
    granted: u64,
}

impl Space {
    /// Reserve room for a new recording's `header_len` bytes, the end margin and a first budget
    /// (blocking: call it where the file is created).
    pub fn open(reserver: Reserver, header_len: u64, sealed: bool) -> io::Result<Space> {
        let end = header_len + END_MARGIN + FIRST_BUDGET;
        reserver(0, end)?;
        Ok(Space {
            avail: AtomicU64::new(FIRST_BUDGET),
            sealed,
            grow: tokio::sync::Mutex::new(Grow {
                reserver,
                end,
                granted: FIRST_BUDGET,
            }),
        })
    }

    /// Claim room for the record of a chunk of `len` bytes, extending the reservation when the
    /// budget is short. An error means the disk has no room for it: do not forward the chunk.
    pub async fn claim(&self, len: usize) -> io::Result<()> {
        let need = claim_for(len, self.sealed);
        if self.take(need) {
            return Ok(());
        }
        self.extend(need).await
    }

    fn take(&self, need: u64) -> bool {
        self.avail
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| a.checked_sub(need))
            .is_ok()
    }

    async fn extend(&self, need: u64) -> io::Result<()> {
        let mut grow = self.grow.lock().await;
        // The other direction may have extended while this one waited for the lock.
        if self.take(need) {
            return Ok(());
        }
        let got = grow.extend(need).await?;
        self.avail.fetch_add(got - need, Ordering::AcqRel);
        Ok(())
    }
}

/// The recorder's side of the reservation: what the chunks it encoded claimed, against what their
/// records took. A claim counts a checkpoint after every record; most records get none, so the
/// surplus goes back to the budget after each batch (an interactive session then holds about
/// what it wrote, not 139 bytes per keystroke). One checkpoint's worth is kept back: a checkpoint
/// may still come for records already written.
#[derive(Debug, Default)]
pub struct Ledger {
    surplus: u64,
}

impl Ledger {
    /// Chunks that claimed `claimed` bytes were encoded into a batch of `used` bytes.
    pub fn settle(&mut self, space: &Space, claimed: u64, used: u64) {
        self.surplus = (self.surplus + claimed).saturating_sub(used);
        let back = self.surplus.saturating_sub(CHECKPOINT);
        self.surplus -= back;
        space.avail.fetch_add(back, Ordering::AcqRel);
    }
}

impl Grow {
    /// Reserve at least `need` more bytes; returns how many were reserved.
    async fn extend(&mut self, need: u64) -> io::Result<u64> {
        let step = self.granted.clamp(FIRST_BUDGET, MAX_STEP).max(need);
        match self.reserve(step).await {
            // Near the end of the disk, take what this chunk needs rather than a whole step.
            Err(e) if e.kind() == io::ErrorKind::StorageFull && step > need => {
                self.reserve(need).await.map(|()| need)
            }
            r => r.map(|()| step),
        }
    }

    async fn reserve(&mut self, len: u64) -> io::Result<()> {
        let (reserver, at) = (self.reserver.clone(), self.end);
        tokio::task::spawn_blocking(move || reserver(at, len))
            .await
            .map_err(io::Error::other)??;
        self.end += len;
        self.granted += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<(u64, u64)>>>;

    /// A reserver over a pretend disk of `free` bytes, logging each (offset, len).
    fn disk(free: u64) -> (Reserver, Log) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (l, left) = (log.clone(), Arc::new(Mutex::new(free)));
        let r: Reserver = Arc::new(move |at, len| {
            let mut left = left.lock().unwrap();
            if len > *left {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            *left -= len;
            l.lock().unwrap().push((at, len));
            Ok(())
        });
        (r, log)
    }

    #[test]
    fn claims_cover_records_and_one_checkpoint_each() {
        assert_eq!(claim_for(1, false), 1 + 13 + 125);
        assert_eq!(claim_for(64 * 1024, false), 64 * 1024 + 138);
        assert_eq!(
            claim_for(MAX_DATA_PAYLOAD + 1, false),
            MAX_DATA_PAYLOAD as u64 + 1 + 2 * 138
        );
    }

    #[tokio::test]
    async fn steps_grow_to_the_cap_and_ranges_are_contiguous() {
        let (r, log) = disk(u64::MAX);
        let space = Space::open(r, 600, false).unwrap();
        for _ in 0..200 {
            space.claim(64 * 1024).await.unwrap();
        }
        let log = log.lock().unwrap();
        assert_eq!(log[0], (0, 600 + END_MARGIN + FIRST_BUDGET));
        for w in log.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0, "{log:?}");
        }
        assert!(log.iter().all(|(_, len)| *len <= MAX_STEP), "{log:?}");
        assert_eq!(log.last().unwrap().1, MAX_STEP);
        let reserved: u64 = log.iter().map(|(_, l)| l).sum();
        assert!(reserved >= 600 + END_MARGIN + 200 * claim_for(64 * 1024, false));
    }

    #[tokio::test]
    async fn idle_sessions_reserve_little() {
        let (r, log) = disk(u64::MAX);
        let space = Space::open(r, 600, false).unwrap();
        for _ in 0..20 {
            space.claim(1).await.unwrap();
        }
        assert_eq!(
            log.lock().unwrap().len(),
            1,
            "keystrokes fit the first budget"
        );
    }

    #[tokio::test]
    async fn what_records_did_not_use_goes_back_but_one_checkpoint() {
        let (r, log) = disk(u64::MAX);
        let space = Space::open(r, 600, false).unwrap();
        let mut ledger = Ledger::default();
        // A keystroke session: 1-byte records of 14 bytes, a checkpoint now and then.
        for i in 0..10_000u64 {
            space.claim(1).await.unwrap();
            let used = 14 + if i % 100 == 99 { CHECKPOINT } else { 0 };
            ledger.settle(&space, claim_for(1, false), used);
        }
        let reserved: u64 = log.lock().unwrap().iter().map(|(_, l)| l).sum();
        let written = 10_000 * 14 + 100 * CHECKPOINT;
        assert!(reserved < 600 + END_MARGIN + written + 2 * MAX_STEP);
        assert!(
            reserved < 600 + END_MARGIN + 10_000 * claim_for(1, false) / 4,
            "{reserved}"
        );
        // A checkpoint for records already written always finds its room.
        assert_eq!(ledger.surplus, CHECKPOINT);
    }

    #[tokio::test]
    async fn a_full_disk_fails_the_claim_after_taking_what_is_left() {
        let (r, _) = disk(600 + END_MARGIN + FIRST_BUDGET + 3 * claim_for(10_000, false));
        let space = Space::open(r, 600, false).unwrap();
        let mut forwarded = 0;
        while space.claim(10_000).await.is_ok() {
            forwarded += 1;
        }
        let e = space.claim(10_000).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        // The first budget holds no 10,000-byte chunk; the three that fit on the disk were claimed.
        assert_eq!(forwarded, 3);
        // A small chunk still fits what the failed claims left unclaimed.
        space.claim(1).await.unwrap();
    }

    #[test]
    fn sealed_claims_cover_what_sealed_batches_write() {
        use std::sync::Arc;
        use ward_recording::{CheckpointPolicy, Direction, Encoder, SessionMeta, Signer};
        let signer = Arc::new(Signer::generate().unwrap().0);
        let r = age::x25519::Identity::generate().to_public();
        let policy = CheckpointPolicy {
            every_records: 3,
            every_ns: u64::MAX,
        };
        let mut out = Vec::new();
        let meta = SessionMeta {
            session_id: "s".into(),
            ..SessionMeta::default()
        };
        let mut enc = Encoder::start_sealed(&meta, signer, policy, &[r], &mut out).unwrap();
        out.clear();
        let sizes = [
            1usize,
            3,
            64 * 1024,
            64 * 1024 + 1,
            200_000,
            1,
            MAX_DATA_PAYLOAD,
            17,
        ];
        let (mut claimed, mut used) = (0u64, 0u64);
        // Batches of one chunk (the worst case) up to batches of many.
        for batch in 1..=sizes.len() {
            for (i, len) in sizes.iter().cycle().take(batch * 3).enumerate() {
                enc.data(Direction::Down, i as u64, &vec![7u8; *len], &mut out);
                claimed += claim_for(*len, true);
                if i % batch == batch - 1 {
                    enc.flush(i as u64, &mut out).unwrap();
                    used += out.len() as u64;
                    out.clear();
                    assert!(used <= claimed, "batch {batch}: {used} > {claimed}");
                }
            }
            enc.checkpoint(0, &mut out);
            used += out.len() as u64;
            out.clear();
            assert!(used <= claimed, "{used} > {claimed}");
        }
        // The overhead claimed per bulk chunk stays small: 64 KiB chunks claim < 0.5 % extra.
        let extra = claim_for(64 * 1024, true) - 64 * 1024;
        assert!(extra < 330, "{extra}");
    }
}
