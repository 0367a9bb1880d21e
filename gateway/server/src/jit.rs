//! Just-in-time access state held by the gateway: the grants and disabled users its sessions
//! are checked against, re-read from the store by [`refresh`] (host-side changes, other
//! gateways), and what login keeps between attempts. The operations themselves (access requests,
//! approvals, grants, revocation, users, login) are the services in [`crate::services`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use ward_ca::Ca;
use ward_core::access::Grant;

use crate::access_store::AccessStore;
use crate::gateway::Shared;
use crate::services::login::LoginState;
use crate::store::LockStore;
use crate::store_async::ServiceStores;
use crate::users::UserStore;
use ward_core::policy::Lock;

pub use crate::dispatch::user_line;
pub use crate::services::login::TOTP_REUSED;
pub use crate::services::users::{create_user, CreatedUser, NewUser};

/// How often the gateway re-reads locks, grants and disabled users from the store (host-side
/// changes, other gateways), and cuts sessions that lost their footing. On a shared PostgreSQL
/// the change feed (`LISTEN/NOTIFY`) triggers a re-read at once; this periodic resync stays as the
/// safety net, so a lost notification still takes effect within a second (security case 61).
pub const REFRESH_EVERY: Duration = Duration::from_millis(400);

/// The stores the gateway's services and sessions use, one trait object per aggregate.
pub struct Stores {
    /// Locks.
    pub locks: Arc<dyn LockStore>,
    /// Access requests, approvals and grants.
    pub access: Arc<dyn AccessStore>,
    /// Users.
    pub users: Arc<dyn UserStore>,
    /// What the services run on.
    pub services: ServiceStores,
}

impl Stores {
    /// All of them in one SQLite store.
    pub fn sqlite(db: &Arc<crate::store::SqliteStore>) -> Self {
        Self {
            locks: db.clone(),
            access: db.clone(),
            users: db.clone(),
            services: ServiceStores::off_thread(db),
        }
    }

    /// The ones of a [`ward_store::backend::Backend`].
    pub fn of(backend: &ward_store::backend::Backend) -> Self {
        Self {
            locks: backend.locks.clone(),
            access: backend.access.clone(),
            users: backend.users.clone(),
            services: backend.services(),
        }
    }
}

/// JIT state held by the gateway.
pub struct Jit {
    pub(crate) locks: Arc<dyn LockStore>,
    /// Bumped by every lock or unlock this gateway publishes itself, so a refresh that read the
    /// store before it does not publish the older set over it ([`refresh`]).
    pub(crate) lock_writes: AtomicU64,
    pub(crate) access: Arc<dyn AccessStore>,
    pub(crate) users: Arc<dyn UserStore>,
    /// The stores the services run on.
    pub(crate) services: ServiceStores,
    /// Swapped whole by [`refresh`]; a session open takes a reference, not a copy.
    pub(crate) grants: RwLock<Arc<[Grant]>>,
    pub(crate) disabled: RwLock<HashSet<String>>,
    /// The issuing CA and the failed-login back-off.
    pub(crate) login: Arc<LoginState>,
    /// Bounds the logins (argon2id) running and waiting at once.
    pub(crate) gate: crate::login_gate::LoginGate,
}

impl Jit {
    /// Loads current grants and disabled users. `ca` is the issuing CA when its key is readable
    /// (login needs it); without it login answers with a clear error.
    pub fn new(stores: Stores, ca: Option<Ca>, now: OffsetDateTime) -> anyhow::Result<Jit> {
        let Stores {
            locks,
            access,
            users,
            services,
        } = stores;
        let grants = access.grants(now, false)?;
        let disabled = users.disabled_users()?.into_iter().collect();
        Ok(Jit {
            locks,
            lock_writes: AtomicU64::new(0),
            access,
            users,
            services,
            grants: RwLock::new(grants.into()),
            disabled: RwLock::new(disabled),
            login: Arc::new(LoginState::new(ca)),
            gate: crate::login_gate::LoginGate::for_this_machine(),
        })
    }

    /// Current grants (live or upcoming): a shared snapshot. A poisoned lock reads as no grants
    /// (fail closed).
    pub fn grants(&self) -> Arc<[Grant]> {
        self.grants
            .read()
            .map(|g| Arc::clone(&g))
            .unwrap_or_else(|_| Arc::from(Vec::new()))
    }

    /// Whether a user name is disabled.
    pub fn is_disabled(&self, name: &str) -> bool {
        self.disabled
            .read()
            .map(|d| d.contains(name))
            .unwrap_or(true)
    }
}

/// Re-reads locks, grants and disabled users and publishes them in the policy snapshot when they
/// changed: sessions under a lock another gateway set, sessions on a revoked or vanished grant,
/// and sessions of disabled users then end. A store that cannot be read keeps what was published
/// (a lock never disappears because the database is down).
pub(crate) fn refresh(shared: &Shared) {
    let now = shared.clock.now();
    let jit = &shared.jit;
    let writes_before = jit.lock_writes.load(Ordering::Acquire);
    let locks = match jit.locks.active_locks(now) {
        Ok(l) => Some((l, writes_before)),
        Err(e) => {
            tracing::warn!(event = "store_failed", reason = %e, "reading locks");
            None
        }
    };
    match jit.access.grants(now, false) {
        Ok(g) => {
            if let Ok(mut cur) = jit.grants.write() {
                *cur = g.into();
            }
        }
        Err(e) => tracing::warn!(event = "store_failed", reason = %e, "reading grants"),
    }
    match jit.users.disabled_users() {
        Ok(d) => {
            if let Ok(mut cur) = jit.disabled.write() {
                *cur = d.into_iter().collect();
            }
        }
        Err(e) => tracing::warn!(event = "store_failed", reason = %e, "reading users"),
    }
    // Live sessions under a new lock, on a revoked or ended grant, and those of disabled users,
    // see the change in the policy snapshot and end themselves.
    shared.publish_jit(locks);
}

/// Whether two lock sets are the same, whatever their order.
pub(crate) fn same_locks(a: &[Lock], b: &[Lock]) -> bool {
    a.len() == b.len() && a.iter().all(|l| b.contains(l))
}

/// The refresh task: at every change the store's feed announces (another gateway wrote), and
/// every [`REFRESH_EVERY`] whatever the feed says. Each refresh runs on the blocking pool (a
/// networked store's round trips never hold an async worker).
pub(crate) async fn refresh_loop(
    shared: Arc<Shared>,
    mut changes: Option<tokio::sync::watch::Receiver<u64>>,
) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut worker = refresh_thread(&shared);
    loop {
        match changes.as_mut() {
            None => {
                tick.tick().await;
            }
            Some(feed) => {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = feed.changed() => {
                        if changed.is_err() {
                            tracing::warn!(event = "change_feed_closed", "the store's change feed ended; re-reading every {} ms only", REFRESH_EVERY.as_millis());
                            changes = None;
                        } else {
                            feed.borrow_and_update();
                        }
                    }
                }
            }
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        match worker.as_ref().map(|w| w.send(done_tx)) {
            Some(Ok(())) => {
                if done_rx.await.is_err() {
                    tracing::warn!(event = "store_failed", "a store refresh panicked");
                    worker = None;
                }
            }
            // No refresh thread (it could not be started, or a refresh panicked on it): the
            // blocking pool.
            _ => {
                let s = shared.clone();
                if tokio::task::spawn_blocking(move || refresh(&s))
                    .await
                    .is_err()
                {
                    tracing::warn!(event = "store_failed", "a store refresh panicked");
                }
            }
        }
    }
}

/// The thread the refresh's store reads run on (they block: SQLite, or the PostgreSQL store's
/// bridge). One long-lived thread rather than the blocking pool: a pool thread woken every
/// [`REFRESH_EVERY`] by turns never reaches its idle timeout, so after a burst of sessions the pool
/// would never shrink back. The thread ends when the loop (its sender) is dropped.
fn refresh_thread(
    shared: &Arc<Shared>,
) -> Option<std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>> {
    let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    let s = shared.clone();
    match std::thread::Builder::new()
        .name("ward-refresh".into())
        .spawn(move || {
            while let Ok(done) = rx.recv() {
                refresh(&s);
                let _ = done.send(());
            }
        }) {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!(event = "store_failed", reason = %e, "starting the refresh thread; refreshing on the blocking pool");
            None
        }
    }
}
