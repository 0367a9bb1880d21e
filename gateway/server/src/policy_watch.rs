//! One watched policy snapshot: the config (devices, rules, approval policies), locks, grants,
//! disabled users and whether the gateway is shutting down, as one immutable value published
//! through one `tokio::sync::watch`.
//!
//! Whatever changes policy (a lock or unlock, a grant approved or revoked, a user disabled, the
//! store refresh, a config reload, shutdown) publishes a new snapshot with
//! [`PolicyWatch::publish`]. Every live session holds a receiver, and on each change re-checks
//! itself through core's pure `Authorized::check`, which returns the typed `EndReason` it ends
//! with. Nothing else cuts a session. A session reads the snapshot it authorizes against from the
//! same receiver, so a change that lands between its decision and its first wait is still seen.
//!
//! The registry of live sessions sits here too: the publisher checks each of them against the
//! new snapshot before publishing (so `ward lock` and a reload can say how many sessions end),
//! and the registry answers "how many sessions are live", "who is connected" and, for the live
//! list, what each session is (id, since, source, rule, break-glass, its byte counters, shared
//! with the pump).
//!
//! Ending one session (security staff's "end session", [`PolicyWatch::terminate`]) is a policy
//! change like any other: the snapshot carries the ids of the sessions ended by hand with their
//! [`EndReason::Terminated`], and the session finds its own id there when it wakes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;
use tokio::sync::watch;
use ward_core::access::Grant;
use ward_core::config::Config;
use ward_core::policy::{AccessInputs, Lock};
use ward_core::session::{Authorized, PolicyView};
use ward_core::{EndReason, Principal};

use crate::datapath::Activity;
use crate::services::live::LiveSession;

/// Everything a live session is re-checked against, at one instant. Immutable: a change is a new
/// snapshot.
#[derive(Debug, Clone)]
pub(crate) struct PolicySnapshot {
    /// The current config (swapped whole by a reload).
    pub(crate) config: Arc<Config>,
    /// Locks (expired ones may linger; they no longer apply).
    pub(crate) locks: Arc<[Lock]>,
    /// Grants, live or upcoming.
    pub(crate) grants: Arc<[Grant]>,
    /// Names of disabled users.
    pub(crate) disabled: Arc<BTreeSet<String>>,
    /// The gateway is shutting down: every session ends.
    pub(crate) shutting_down: bool,
    /// Live sessions ended one by one by security staff, by session id (pruned to the live ones
    /// whenever one is added).
    pub(crate) terminated: Arc<BTreeMap<String, EndReason>>,
}

impl PolicySnapshot {
    /// A snapshot of a gateway that is not shutting down.
    pub(crate) fn new(
        config: Arc<Config>,
        locks: Vec<Lock>,
        grants: Arc<[Grant]>,
        disabled: BTreeSet<String>,
    ) -> Self {
        PolicySnapshot {
            config,
            locks: locks.into(),
            grants,
            disabled: Arc::new(disabled),
            shutting_down: false,
            terminated: Arc::new(BTreeMap::new()),
        }
    }

    /// Whether the live session `id` (authorized as `session`) must end under this snapshot at
    /// `now`, and why: ended by hand, else core's re-check.
    pub(crate) fn ends(
        &self,
        id: &str,
        session: &Authorized,
        now: OffsetDateTime,
    ) -> Option<EndReason> {
        if let Some(end) = self.terminated.get(id) {
            return Some(end.clone());
        }
        session.check(&self.view(), now)
    }

    /// What session authorization reads: rules, locks, approval policies and grants.
    pub(crate) fn access(&self) -> AccessInputs<'_> {
        AccessInputs {
            rules: &self.config.rules,
            locks: &self.locks,
            approvals: &self.config.approvals,
            grants: &self.grants,
        }
    }

    /// The view core's `Authorized::check` takes.
    pub(crate) fn view(&self) -> PolicyView<'_> {
        PolicyView {
            access: self.access(),
            devices: &self.config.devices,
            disabled: &self.disabled,
            shutting_down: self.shutting_down,
        }
    }
}

/// What a publish did.
#[derive(Debug)]
pub(crate) struct Published {
    /// The snapshot now current.
    pub(crate) snapshot: Arc<PolicySnapshot>,
    /// How each live session ends under it (sessions it keeps are not listed).
    pub(crate) ends: Vec<EndReason>,
}

impl Published {
    /// How many live sessions end for a reason `which` accepts.
    pub(crate) fn ending(&self, which: impl Fn(&EndReason) -> bool) -> usize {
        self.ends.iter().filter(|e| which(e)).count()
    }
}

/// What a live session tells the registry about itself when it registers (for the live list).
#[derive(Debug, Clone)]
pub(crate) struct LiveMeta {
    /// The session id (recording name, audit events, the client's `Opened`).
    pub(crate) id: String,
    /// When it was asked for.
    pub(crate) since: OffsetDateTime,
    /// The client's address.
    pub(crate) source: SocketAddr,
    /// The byte counters, shared with the pump.
    pub(crate) activity: Arc<Activity>,
}

/// One registered live session.
struct Entry {
    session: Authorized,
    meta: LiveMeta,
}

impl Entry {
    /// The session as the live list shows it, its counters read now.
    fn listed(&self) -> LiveSession {
        let p = self.session.principal();
        let device = self.session.device();
        LiveSession {
            id: self.meta.id.clone(),
            principal: p.clone(),
            device: device.id.to_string(),
            protocol: device.protocol.to_string(),
            source: self.meta.source,
            since: self.meta.since,
            bytes_up: self.meta.activity.up.load(Ordering::Relaxed),
            bytes_down: self.meta.activity.down.load(Ordering::Relaxed),
            break_glass: self.session.permit().break_glass(),
            rule: self.session.permit().rule().to_string(),
        }
    }
}

/// The watched snapshot and the live sessions watching it.
pub(crate) struct PolicyWatch {
    tx: watch::Sender<Arc<PolicySnapshot>>,
    live: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

impl PolicyWatch {
    pub(crate) fn new(initial: PolicySnapshot) -> Self {
        PolicyWatch {
            tx: watch::Sender::new(Arc::new(initial)),
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }
    }

    /// The current snapshot. Take one per decision, so that no decision mixes two.
    pub(crate) fn current(&self) -> Arc<PolicySnapshot> {
        Arc::clone(&self.tx.borrow())
    }

    /// A receiver for a live session: its current value is the snapshot to authorize against,
    /// and it wakes on every later publish.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.tx.subscribe()
    }

    /// Publish the snapshot `next` builds from the current one, unless it returns `Ok(None)`
    /// (nothing changed) or an error (nothing applied). Building, checking the live sessions
    /// against the result at `now` and publishing happen under the watch's one lock, so
    /// concurrent publishers cannot interleave and no session ends before it is counted. `next`
    /// gets the current snapshot and must not read the watch itself (it holds the lock).
    pub(crate) fn publish<E>(
        &self,
        now: OffsetDateTime,
        next: impl FnOnce(&PolicySnapshot) -> Result<Option<PolicySnapshot>, E>,
    ) -> Result<Published, E> {
        let mut outcome = Ok(Vec::new());
        self.tx.send_if_modified(|cur| match next(cur) {
            Ok(Some(snapshot)) => {
                let ends = self
                    .registry()
                    .values()
                    .filter_map(|e| snapshot.ends(&e.meta.id, &e.session, now))
                    .collect();
                outcome = Ok(ends);
                *cur = Arc::new(snapshot);
                true
            }
            Ok(None) => false,
            Err(e) => {
                outcome = Err(e);
                false
            }
        });
        outcome.map(|ends| Published {
            snapshot: self.current(),
            ends,
        })
    }

    /// [`PolicyWatch::publish`] for changes that cannot fail.
    pub(crate) fn update(
        &self,
        now: OffsetDateTime,
        next: impl FnOnce(&PolicySnapshot) -> Option<PolicySnapshot>,
    ) -> Published {
        match self.publish::<std::convert::Infallible>(now, |cur| Ok(next(cur))) {
            Ok(published) => published,
            Err(never) => match never {},
        }
    }

    /// Register a live session until the returned guard drops.
    pub(crate) fn register(&self, session: Authorized, meta: LiveMeta) -> LiveGuard<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.registry().insert(id, Entry { session, meta });
        LiveGuard { watch: self, id }
    }

    /// The live sessions, oldest first.
    pub(crate) fn live_sessions(&self) -> Vec<LiveSession> {
        let mut list: Vec<LiveSession> = self.registry().values().map(Entry::listed).collect();
        list.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.id.cmp(&b.id)));
        list
    }

    /// End the one live session `id` with `end` (an [`EndReason::Terminated`]): published as a
    /// policy change that only that session finds itself in. Returns the session as it was
    /// listed, or `None` when no live session has that id (nothing is published then).
    pub(crate) fn terminate(
        &self,
        id: &str,
        end: EndReason,
        now: OffsetDateTime,
    ) -> Option<LiveSession> {
        let mut found = None;
        self.update(now, |cur| {
            let live = self.registry();
            let entry = live.values().find(|e| e.meta.id == id)?;
            found = Some(entry.listed());
            let is_live = |k: &str| live.values().any(|e| e.meta.id == k);
            let mut terminated: BTreeMap<String, EndReason> = cur
                .terminated
                .iter()
                .filter(|(k, _)| is_live(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            terminated.insert(id.to_owned(), end);
            drop(live);
            Some(PolicySnapshot {
                terminated: Arc::new(terminated),
                ..cur.clone()
            })
        });
        found
    }

    /// Sessions proxying now.
    pub(crate) fn live_count(&self) -> usize {
        self.registry().len()
    }

    /// Live break-glass sessions.
    pub(crate) fn live_break_glass(&self) -> usize {
        let live = self.registry();
        live.values()
            .filter(|e| e.session.permit().break_glass())
            .count()
    }

    /// Who is connected now (one entry per live session).
    pub(crate) fn live_principals(&self) -> Vec<Principal> {
        let live = self.registry();
        live.values()
            .map(|e| e.session.principal().clone())
            .collect()
    }

    /// The registry; a poisoned lock still holds whole entries (each change is one insert or
    /// remove).
    fn registry(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A live session's place in the registry; dropping it removes the session, whichever way the
/// session ends.
pub(crate) struct LiveGuard<'a> {
    watch: &'a PolicyWatch,
    id: u64,
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.watch.registry().remove(&self.id);
    }
}

/// Wait until a change to the watched snapshot ends `session` (live session `id`), and return
/// why. Checks the receiver's current value first if it was not seen yet. Never resolves once
/// the publisher is gone (the gateway is being dropped and ends the session by other means).
pub(crate) async fn ended_by_policy(
    session: &Authorized,
    id: &str,
    rx: &mut watch::Receiver<Arc<PolicySnapshot>>,
    clock: &dyn ward_ca::Clock,
) -> EndReason {
    loop {
        let snapshot = Arc::clone(&rx.borrow_and_update());
        if let Some(end) = snapshot.ends(id, session, clock.now()) {
            return end;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_without_a_change_wakes_nobody() {
        let config: Config = toml_config();
        let watch = PolicyWatch::new(PolicySnapshot::new(
            Arc::new(config),
            vec![],
            Arc::from(Vec::new()),
            BTreeSet::new(),
        ));
        let mut rx = watch.subscribe();
        rx.borrow_and_update();
        let now = OffsetDateTime::UNIX_EPOCH;
        let p = watch.update(now, |_| None);
        assert!(p.ends.is_empty());
        assert!(!rx.has_changed().unwrap());
        let p = watch.update(now, |cur| {
            Some(PolicySnapshot {
                shutting_down: true,
                ..cur.clone()
            })
        });
        assert!(p.snapshot.shutting_down);
        assert!(rx.has_changed().unwrap());
        let refused: Result<Published, &str> = watch.publish(now, |_| Err("no"));
        assert_eq!(refused.unwrap_err(), "no");
        assert!(watch.current().shutting_down);
    }

    /// A registered session is checked by every publish before it is published: the publisher
    /// learns how it ends, the session's receiver wakes, and the guard takes it out of the
    /// registry whichever way it ends.
    #[test]
    fn publish_reports_how_registered_sessions_end() {
        use ward_core::policy::LockTarget;
        use ward_core::session::Handshaken;
        let config = Arc::new(toml_config());
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let watch = PolicyWatch::new(PolicySnapshot::new(
            config.clone(),
            vec![],
            Arc::from(Vec::new()),
            BTreeSet::new(),
        ));
        let principal = Principal {
            kind: ward_core::PrincipalKind::Vendor,
            name: "jdoe".into(),
            org: Some("acme".into()),
            roles: vec![],
            serial: "0a".into(),
            not_after: now + time::Duration::days(1),
        };
        let session = Handshaken::new(principal.clone())
            .authorize(&config.rules, &[], &config.devices, "pump-12", now)
            .unwrap();
        let mut rx = watch.subscribe();
        rx.borrow_and_update();
        let guard = watch.register(session, meta("s1"));
        assert_eq!(watch.live_count(), 1);
        assert_eq!(watch.live_principals(), vec![principal]);
        assert_eq!(watch.live_break_glass(), 0);

        let lock = Lock {
            target: LockTarget::Org("acme".into()),
            until: None,
            reason: "incident 42".into(),
            by: "security/sam".into(),
        };
        let published = watch.update(now, |cur| {
            Some(PolicySnapshot {
                locks: vec![lock].into(),
                ..cur.clone()
            })
        });
        let locked = EndReason::Locked {
            reason: "incident 42".into(),
            by: "security/sam".into(),
        };
        assert_eq!(published.ends, vec![locked]);
        assert_eq!(
            published.ending(|e| matches!(e, EndReason::Locked { .. })),
            1
        );
        assert!(rx.has_changed().unwrap());
        drop(guard);
        assert_eq!(watch.live_count(), 0);
    }

    fn meta(id: &str) -> LiveMeta {
        LiveMeta {
            id: id.into(),
            since: OffsetDateTime::UNIX_EPOCH,
            source: "127.0.0.1:5000".parse().unwrap(),
            activity: Activity::new(),
        }
    }

    /// Ending one session by hand ends that session only: the publisher learns it ends (and
    /// no other), its own wait resolves with the reason, another session's re-check finds
    /// nothing, the live list shows the shared byte counters, and an id that is not live
    /// publishes nothing.
    #[test]
    fn terminate_ends_one_session_only() {
        use ward_core::session::Handshaken;
        let config = Arc::new(toml_config());
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let watch = PolicyWatch::new(PolicySnapshot::new(
            config.clone(),
            vec![],
            Arc::from(Vec::new()),
            BTreeSet::new(),
        ));
        let principal = |name: &str| Principal {
            kind: ward_core::PrincipalKind::Vendor,
            name: name.into(),
            org: Some("acme".into()),
            roles: vec![],
            serial: format!("{name}-serial"),
            not_after: now + time::Duration::days(1),
        };
        let open = |name: &str| {
            Handshaken::new(principal(name))
                .authorize(&config.rules, &[], &config.devices, "pump-12", now)
                .unwrap()
        };
        let (a, b) = (open("jdoe"), open("kim"));
        let meta_a = meta("aaaa");
        meta_a.activity.up.fetch_add(5, Ordering::Relaxed);
        meta_a.activity.down.fetch_add(7, Ordering::Relaxed);
        let _ga = watch.register(a.clone(), meta_a);
        let gb = watch.register(b.clone(), meta("bbbb"));
        let listed = watch.live_sessions();
        assert_eq!(listed.len(), 2);
        let la = listed.iter().find(|s| s.id == "aaaa").unwrap();
        assert_eq!((la.bytes_up, la.bytes_down), (5, 7));
        assert_eq!(la.device, "pump-12");
        assert_eq!(la.rule, "acme");
        assert!(!la.break_glass);

        let mut rx_b = watch.subscribe();
        rx_b.borrow_and_update();
        let end = EndReason::Terminated {
            by: "security sam".into(),
            reason: "incident 9".into(),
        };
        assert!(watch.terminate("nope", end.clone(), now).is_none());
        assert!(!rx_b.has_changed().unwrap(), "nothing published");

        let ended = watch.terminate("bbbb", end.clone(), now).unwrap();
        assert_eq!(ended.principal, principal("kim"));
        let snapshot = watch.current();
        assert_eq!(snapshot.ends("bbbb", &b, now), Some(end.clone()));
        assert_eq!(
            snapshot.ends("aaaa", &a, now),
            None,
            "the other one runs on"
        );
        assert!(rx_b.has_changed().unwrap());
        let clock = ward_ca::FixedClock::new(now);
        let woke = futures_now(ended_by_policy(&b, "bbbb", &mut rx_b, &clock));
        assert_eq!(woke, Some(end.clone()));
        let mut rx_a = watch.subscribe();
        assert_eq!(
            futures_now(ended_by_policy(&a, "aaaa", &mut rx_a, &clock)),
            None
        );

        // The next publish counts only the terminated session; once it left the registry, the
        // next termination prunes it from the snapshot.
        let p = watch.update(now, |cur| Some(cur.clone()));
        assert_eq!(p.ends, vec![end.clone()]);
        drop(gb);
        assert!(watch.terminate("aaaa", end.clone(), now).is_some());
        let ids: Vec<String> = watch.current().terminated.keys().cloned().collect();
        assert_eq!(ids, vec!["aaaa".to_string()]);
    }

    /// Polls `f` once: its output if it is ready.
    fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    fn toml_config() -> Config {
        Config::parse(
            r#"
[gateway]
listen = "127.0.0.1:0"
ca = "ca"
cert = "gw.crt"
key = "gw.key"
state_dir = "state"

[[device]]
id = "pump-12"
address = "127.0.0.1:2323"
protocol = "raw"
labels = { vendor = "acme" }

[[rule]]
name = "acme"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#,
            "test.toml",
        )
        .unwrap()
    }
}
