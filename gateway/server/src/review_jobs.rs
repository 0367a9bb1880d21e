//! Review work (listings, recording fetches, the audit log) off the async workers, behind a
//! limit, and streamed with bounded memory (security case TBD, issue 12 item 4).
//!
//! Reading and verifying a recording of hundreds of megabytes takes seconds of CPU and disk; on an
//! async worker it stalls every live session scheduled there. A review job runs on a blocking
//! thread once one of [`REVIEW_JOBS`] slots is free; at most [`REVIEW_QUEUE`] more wait, and a
//! review beyond that is answered at once with [`BUSY`]. Verification reads the file through a
//! bounded window (`ward_recording::verify_read`), and the answer is then read from the file and
//! sent chunk by chunk, each chunk only once the reviewer has taken the previous ones: a reviewer
//! that stops reading holds a chunk of gateway memory, not the recording.

use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::sync::Semaphore;
use ward_core::frame::Review;

use crate::audit::Event;
use crate::datapath::{FrameWriter, CHUNK, DATA, HEADER};

/// Review jobs running at once.
pub const REVIEW_JOBS: usize = 2;
/// Review jobs waiting for a slot before further ones are refused.
pub const REVIEW_QUEUE: usize = 8;
/// What a reviewer refused for load is told.
pub const BUSY: &str = "gateway busy: too many reviews in progress; try again shortly";

/// The review load was refused.
#[derive(Debug, thiserror::Error)]
#[error("{BUSY}")]
pub struct Busy;

/// Runs review jobs on blocking threads, [`REVIEW_JOBS`] at once, [`REVIEW_QUEUE`] waiting.
pub struct ReviewGate {
    slots: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    jobs: usize,
    queue: usize,
}

impl Default for ReviewGate {
    fn default() -> Self {
        Self::new(REVIEW_JOBS, REVIEW_QUEUE)
    }
}

/// Gives back an admission when dropped (also when the reviewer went away meanwhile).
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ReviewGate {
    /// `jobs` at once, `queue` waiting.
    pub fn new(jobs: usize, queue: usize) -> Self {
        ReviewGate {
            slots: Arc::new(Semaphore::new(jobs.max(1))),
            admitted: Arc::new(AtomicUsize::new(0)),
            jobs: jobs.max(1),
            queue,
        }
    }

    /// Run `job` on a blocking thread once a slot is free; [`Busy`] at once if the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.jobs + self.queue {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy);
        }
        let admitted = Admitted(self.admitted.clone());
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| Busy)?;
        let done = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let _admitted = admitted;
            job()
        })
        .await;
        done.map_err(|_| Busy)
    }
}

/// A review's answer.
pub enum Answer {
    /// A short text (the public key), sent as `Ok`.
    Message(String),
    /// A listing, sent as a stream.
    Bytes(String, Vec<u8>),
    /// The first `len` bytes of an open file (a recording, the audit log), sent as a stream.
    File(String, std::fs::File, u64),
}

/// Do the blocking part of a review: read, verify, list. `base` is the success event to complete.
pub fn review_job(
    state_dir: &Path,
    key: &[u8; 32],
    base: Event,
    review: Review,
) -> anyhow::Result<(Answer, Event)> {
    match review {
        Review::PublicKey => Ok((Answer::Message(hex::encode(key)), base)),
        Review::AuditLog => {
            let path = state_dir.join(crate::audit::AUDIT_LOG);
            let (file, len) = open_snapshot(&path).context("reading the audit log")?;
            Ok((Answer::File("audit log".into(), file, len), base))
        }
        Review::ListSessions {
            principal,
            device,
            since_unix,
            until_unix,
            grep,
        } => {
            let filter = crate::review::Filter {
                principal,
                device,
                since: since_unix,
                until: until_unix,
                grep,
            };
            let list = crate::review::list(state_dir, key, &filter)?;
            let mut out = Vec::new();
            for s in &list {
                serde_json::to_writer(&mut out, s)?;
                out.push(b'\n');
            }
            let ev = base
                .detail("sessions", list.len())
                .detail("grep", filter.grep.is_some());
            Ok((Answer::Bytes("sessions".into(), out), ev))
        }
        Review::Recording {
            session_id,
            purpose,
            force,
        } => recording_job(state_dir, key, base, session_id, &purpose, force),
    }
}

/// A file opened, and its length now (what will be sent, even if it grows meanwhile).
fn open_snapshot(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

fn recording_job(
    state_dir: &Path,
    key: &[u8; 32],
    base: Event,
    session_id: String,
    purpose: &str,
    force: bool,
) -> anyhow::Result<(Answer, Event)> {
    crate::review::check_session_id(&session_id)?;
    let path = crate::review::recordings_dir(state_dir)
        .join(format!("{session_id}.{}", crate::recorder::EXT));
    let (mut file, len) = open_snapshot(&path)
        .with_context(|| format!("no recording for session {session_id} ({})", path.display()))?;
    let report = ward_recording::verify_read(std::io::Read::take(&mut file, len), key)
        .with_context(|| format!("reading {}", path.display()))?;
    if purpose == "replay" && !report.ok && !force {
        let what = report
            .first_error
            .map(|e| e.to_string())
            .unwrap_or_else(|| "not sealed".into());
        anyhow::bail!("recording {session_id} fails verification ({what}); replay refused — use --force to replay anyway (audited)");
    }
    file.seek(SeekFrom::Start(0))?;
    let ev = base
        .session(session_id.clone())
        .detail("verified", report.ok)
        .detail("forced", force)
        // What a forced export holds: the records up to the last valid checkpoint.
        .detail("verified_records", report.verified_records)
        .detail("verified_bytes", report.valid_prefix_len)
        .severity(if force && !report.ok { "high" } else { "info" });
    Ok((
        Answer::File(format!("recording {session_id}"), file, len),
        ev,
    ))
}

/// Send the first `len` bytes of `file` as data frames followed by `EOF`, one chunk at a time:
/// the next chunk is read only once the previous one has been written (backpressure).
pub async fn send_file<W: AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    file: std::fs::File,
    len: u64,
) -> std::io::Result<()> {
    let mut file = tokio::fs::File::from_std(file).take(len);
    let mut buf = vec![0u8; HEADER + CHUNK];
    loop {
        let n = match buf.get_mut(HEADER..) {
            Some(space) => file.read(space).await?,
            None => 0,
        };
        if n == 0 {
            break;
        }
        let l = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
        if let Some(h) = buf.get_mut(..HEADER) {
            h.copy_from_slice(&[DATA, l[0], l[1], l[2], l[3]]);
        }
        w.write_frame(buf.get(..HEADER + n).unwrap_or_default())
            .await?;
    }
    w.write_eof().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn beyond_the_queue_reviews_are_refused_at_once() {
        let gate = Arc::new(ReviewGate::new(1, 1));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let hold = |g: Arc<ReviewGate>,
                    rx: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>| {
            tokio::spawn(async move {
                g.run(move || {
                    let _ = rx.lock().unwrap().recv();
                })
                .await
            })
        };
        let a = hold(gate.clone(), rx.clone());
        let b = hold(gate.clone(), rx.clone());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            gate.run(|| ()).await.is_err(),
            "a third review must be refused"
        );
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        assert!(a.await.unwrap().is_ok());
        assert!(b.await.unwrap().is_ok());
        assert!(gate.run(|| ()).await.is_ok());
    }
}
