//! Review work (listings, recording fetches, the audit log) off the async workers, behind a
//! limit, and streamed with bounded memory (security case TBD, issue 12 item 4). The work itself is
//! the review service's (`services::review`); this is its pool and its streaming.
//!
//! Reading and verifying a recording of hundreds of megabytes takes seconds of CPU and disk; on an
//! async worker it stalls every live session scheduled there. A review job runs on a blocking
//! thread once one of [`REVIEW_JOBS`] slots is free; at most [`REVIEW_QUEUE`] more wait, and a
//! review beyond that is answered at once with [`BUSY`]. Verification reads the file through a
//! bounded window (`ward_recording::verify_read`), and the answer is then read from the file and
//! sent chunk by chunk, each chunk only once the reviewer has taken the previous ones: a reviewer
//! that stops reading holds a chunk of gateway memory, not the recording.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWrite;
use tokio::sync::Semaphore;

use crate::datapath::{FrameWriter, CHUNK, DATA, HEADER};
use crate::recording_store::Snapshot;

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

/// Send the first `snapshot.len` bytes of a blob as data frames followed by `EOF`, one chunk at a
/// time: the next chunk is read (on a blocking thread) only once the previous one has been
/// written (backpressure).
pub async fn send_snapshot<W: AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    snapshot: Snapshot,
) -> std::io::Result<()> {
    let Snapshot { reader, len } = snapshot;
    let mut reader = reader.take(len);
    let mut buf = vec![0u8; HEADER + CHUNK];
    loop {
        let (r, b, n) = tokio::task::spawn_blocking(move || {
            let n = match buf.get_mut(HEADER..) {
                Some(space) => read_some(&mut reader, space),
                None => Ok(0),
            };
            (reader, buf, n)
        })
        .await
        .map_err(std::io::Error::other)?;
        (reader, buf) = (r, b);
        let n = n?;
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

/// One read, retried when interrupted.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
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
