//! The login path's abuse limits (issue 12): one login per anonymous connection, and password
//! hashing behind a small gate.
//!
//! argon2id costs 19 MiB and tens of milliseconds per check. Unbounded, parallel logins each took a
//! blocking thread and their own 19 MiB (512 of them took the gateway from 36 MB to 1.7 GB). The
//! gate runs at most [`LoginGate::workers`] logins at once (the number of cores) and lets at most
//! [`LoginGate::queue`] more wait (4 × workers); beyond that a login is turned away at once with
//! [`ErrorCode::LoginBusy`], before any work, and the client says "gateway busy: too many logins
//! in progress, retry in a moment". Memory for hashing is thus bounded by workers × 19 MiB.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWrite;
use tokio::sync::Semaphore;
use ward_core::frame::{ErrorCode, Login};

use crate::datapath::FrameWriter;
use crate::dispatch::error_frame;
use crate::gateway::Shared;

/// What a client refused by the gate is told (and `ward login` prints).
pub use ward_core::messages::LOGIN_BUSY as BUSY;

/// What a second login on one anonymous connection is told.
pub const ONE_LOGIN: &str = "one login per connection without a client certificate: \
                             open a new connection to try again";

/// At most `workers` logins run at once, at most `queue` more wait.
pub struct LoginGate {
    running: Semaphore,
    admitted: AtomicUsize,
    workers: usize,
    queue: usize,
}

impl LoginGate {
    /// A gate for `workers` concurrent logins (at least one) and `queue` waiting ones.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        Self {
            running: Semaphore::new(workers),
            admitted: AtomicUsize::new(0),
            workers,
            queue,
        }
    }

    /// One worker per core, four waiting per worker.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cores, 4 * cores)
    }

    /// Logins that may run at once.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Logins that may wait for a worker.
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Runs `f` on a blocking thread once a worker is free; [`GateError::Busy`] at once when the
    /// workers and the queue are full.
    pub async fn run<T, F>(&self, f: F) -> Result<T, GateError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let admitted = self.admitted.fetch_add(1, Ordering::AcqRel);
        let _admission = Admission(&self.admitted);
        if admitted >= self.workers + self.queue {
            return Err(GateError::Busy);
        }
        let _permit = self
            .running
            .acquire()
            .await
            .map_err(|_| GateError::Failed)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| GateError::Failed)
    }
}

/// Why [`LoginGate::run`] did not produce an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateError {
    /// Every worker is busy and the queue is full.
    Busy,
    /// The login panicked or the gate closed.
    Failed,
}

struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One login per connection without a client certificate: the first [`OneLogin::take`] wins.
#[derive(Debug, Default)]
pub struct OneLogin(AtomicBool);

impl OneLogin {
    /// A fresh connection's allowance.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// True the first time only.
    pub fn take(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }
}

/// Answers a `Login` on a stream: refuses a second one on an anonymous connection, runs the login
/// behind the gate, and writes the answer once it is in the audit log.
pub(crate) async fn answer<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    anonymous: Option<&OneLogin>,
    login: Login,
    writer: &mut FrameWriter<W>,
) {
    let response = if anonymous.is_some_and(|once| !once.take()) {
        tracing::info!(event = "login_refused", source = %peer, reason = "second login on an anonymous connection");
        error_frame(ErrorCode::Forbidden, ONE_LOGIN)
    } else {
        let services = crate::dispatch::Services::of(shared);
        // The login runs on the gate's blocking thread (argon2id); its store calls are driven
        // from there.
        let runtime = tokio::runtime::Handle::current();
        match shared
            .jit
            .gate
            .run(move || runtime.block_on(crate::dispatch::login(&services, peer, &login)))
            .await
        {
            Ok(r) => r,
            Err(GateError::Busy) => {
                // Counted per source and summarized like other unauthenticated noise.
                shared.audit_noise(
                    peer,
                    crate::audit::Event::new("login_busy", "denied", shared.clock.now())
                        .severity("warning")
                        .source(peer)
                        .reason("too many logins in progress"),
                );
                error_frame(ErrorCode::LoginBusy, BUSY)
            }
            Err(GateError::Failed) => {
                error_frame(ErrorCode::Internal, "login failed inside the gateway")
            }
        }
    };
    // A certificate leaves the gateway only once its issuance is in the audit log.
    let response = crate::gateway::gated(shared, response).await;
    let _ = writer.write_response(&response).await;
    let _ = writer.finish().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_workers_run_and_the_queue_is_bounded() {
        let gate = Arc::new(LoginGate::new(2, 3));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                gate.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        let mut done = 0;
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => done += 1,
                Err(GateError::Busy) => busy += 1,
                Err(GateError::Failed) => panic!("failed"),
            }
        }
        assert_eq!(done + busy, 20);
        assert!(busy > 0 && done >= 2, "{done} ran, {busy} busy");
        assert!(peak.load(Ordering::SeqCst) <= 2);
        // Once drained, the gate admits again.
        assert_eq!(gate.run(|| 7).await, Ok(7));
    }

    #[test]
    fn one_login_is_taken_once() {
        let once = OneLogin::new();
        assert!(once.take());
        assert!(!once.take());
    }
}
