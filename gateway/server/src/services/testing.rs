//! A fixture for calling the services directly, as a second front end would: a real SQLite
//! store and audit log in a temporary dir, a fixed clock, the sample config, and a stand-in for
//! the running gateway that counts what the services told it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use ward_ca::{Clock, FixedClock, Identity, Kind};
use ward_core::access::Grant;
use ward_core::config::Config;
use ward_core::frame::LockTarget;
use ward_core::policy::Lock;
use ward_core::Principal;

use super::access::AccessService;
use super::devices::DeviceService;
use super::locks::LockService;
use super::login::{LoginService, LoginState};
use super::users::UserService;
use super::{principal_of, Audit, Caller, Context, LiveState};
use crate::access_store::AccessStore;
use crate::audit::{AuditLog, AuditWriter};
use crate::store::SqliteStore;
use crate::store_async::ServiceStores;

/// The gateway as the services see it, recording what they told it.
pub(crate) struct FakeLive {
    config: Arc<Config>,
    store: Arc<SqliteStore>,
    clock: FixedClock,
    grants: Mutex<Arc<[Grant]>>,
    locks: Mutex<Vec<Lock>>,
    /// `access_changed` calls.
    pub(crate) changed: AtomicUsize,
    /// What `locked` answers (sessions "ended").
    pub(crate) live_sessions: usize,
}

impl LiveState for FakeLive {
    fn config(&self) -> Arc<Config> {
        self.config.clone()
    }
    fn grants(&self) -> Arc<[Grant]> {
        self.grants.lock().unwrap().clone()
    }
    fn locks(&self) -> Vec<Lock> {
        self.locks.lock().unwrap().clone()
    }
    fn live_principals(&self) -> Vec<Principal> {
        Vec::new()
    }
    fn access_changed(&self) {
        self.changed.fetch_add(1, Ordering::SeqCst);
        let g = self.store.grants(self.clock.now(), false).unwrap();
        *self.grants.lock().unwrap() = g.into();
    }
    fn locked(&self, lock: &Lock) -> usize {
        let mut locks = self.locks.lock().unwrap();
        locks.retain(|l| l.target != lock.target);
        locks.push(lock.clone());
        self.live_sessions
    }
    fn unlocked(&self, target: &LockTarget) {
        self.locks.lock().unwrap().retain(|l| &l.target != target);
    }
}

/// Services over a fresh store.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) clock: FixedClock,
    pub(crate) store: Arc<SqliteStore>,
    pub(crate) live: Arc<FakeLive>,
    audit: AuditLog,
    _writer: AuditWriter,
    pub(crate) access: AccessService,
    pub(crate) users: UserService,
    pub(crate) login: LoginService,
    pub(crate) locks: LockService,
    pub(crate) devices: DeviceService,
}

/// Tuesday 2026-11-24 10:00 UTC.
pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_514_400).unwrap()
}

impl Fixture {
    /// Must run inside a tokio runtime (the audit writer is a task).
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = FixedClock::new(now());
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        // TOTP seeds are sealed under the store's key-encryption key.
        store.keys().set(ward_store::keywrap::KeyRing::of(
            ward_store::keywrap::Kek::generate().unwrap(),
        ));
        let mut config = Config::parse(ward_core::config::SAMPLE_CONFIG, "ward.toml").unwrap();
        // Clinicians log in without TOTP here (the sample's break-glass devices would require
        // it), so a password-only login can be shown.
        config
            .login
            .mfa
            .retain(|k| *k == ward_core::PrincipalKind::Security);
        let (signer, _) = ward_recording::Signer::generate().unwrap();
        let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
        let (audit, writer) =
            AuditLog::open(dir.path(), Arc::new(signer), clock_dyn.clone()).unwrap();
        let live = Arc::new(FakeLive {
            config: Arc::new(config),
            store: store.clone(),
            clock: clock.clone(),
            grants: Mutex::new(Arc::from(Vec::new())),
            locks: Mutex::new(Vec::new()),
            changed: AtomicUsize::new(0),
            live_sessions: 3,
        });
        let ctx = Context {
            clock: clock_dyn,
            audit: Audit::new(audit.clone()),
            live: live.clone(),
        };
        let stores = ServiceStores::off_thread(&store);
        Fixture {
            access: AccessService::new(ctx.clone(), stores.access.clone()),
            users: UserService::new(ctx.clone(), stores.users.clone()),
            login: LoginService::new(
                ctx.clone(),
                stores.users.clone(),
                Arc::new(LoginState::new(None)),
            ),
            locks: LockService::new(ctx.clone(), stores.locks, stores.users),
            devices: DeviceService::new(ctx),
            dir,
            clock,
            store,
            live,
            audit,
            _writer: writer,
        }
    }

    /// The audit events written so far, as `(event, outcome)` with the whole record.
    pub(crate) async fn events(&self) -> Vec<serde_json::Value> {
        self.audit.flush().await;
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect()
    }

    /// `event/outcome` of every event written so far.
    pub(crate) async fn outcomes(&self) -> Vec<String> {
        self.events()
            .await
            .iter()
            .map(|v| {
                format!(
                    "{}/{}",
                    v["event"].as_str().unwrap(),
                    v["outcome"].as_str().unwrap()
                )
            })
            .collect()
    }
}

/// An identity as the TLS handshake would have validated it.
pub(crate) fn identity(kind: Kind, org: Option<&str>, name: &str, roles: &[&str]) -> Identity {
    Identity {
        trust_domain: "ward.test".into(),
        kind,
        name: name.into(),
        org: org.map(Into::into),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        serial: format!("{name}-serial"),
        not_before: now() - time::Duration::HOUR,
        not_after: now() + time::Duration::HOUR,
        uri: format!("spiffe://ward.test/{kind}/{name}"),
    }
}

/// A caller holding `identity` (its principal derived once, as the dispatcher does).
pub(crate) struct Who {
    pub(crate) identity: Identity,
    pub(crate) principal: Principal,
}

impl Who {
    pub(crate) fn new(kind: Kind, org: Option<&str>, name: &str, roles: &[&str]) -> Who {
        let identity = identity(kind, org, name, roles);
        let principal = principal_of(&identity);
        Who {
            identity,
            principal,
        }
    }

    pub(crate) fn caller(&self) -> Caller<'_> {
        Caller {
            identity: &self.identity,
            principal: &self.principal,
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        }
    }
}
