//! The store's conformance suite: the same checks run against every backend (SQLite here, and
//! PostgreSQL in tests/tests/store_conformance.rs).
//!
//! Test support, not gateway code: the checks panic on a mismatch. Each takes a [`TestBackend`],
//! two handles on one empty database (two gateways sharing it: races run across both), with a
//! key ring set (TOTP seeds are sealed). Every check uses its own names and ids, so they can run
//! in any order on the same database; [`run_all`] runs them all.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Barrier};
use std::time::Duration;

use time::OffsetDateTime;
use ward_ca::Kind;
use ward_core::access::{
    approve, grant_for, AccessRequest, ApprovalPolicy, DecideError, PrincipalRef, RequestState,
};
use ward_core::frame::LockTarget;
use ward_core::policy::{DeviceSelector, Lock, Who};
use ward_core::{Principal, PrincipalKind};

use crate::access_store::{AccessStore, DecisionError};
use crate::gateways::{GatewayRegistry, GatewayRow};
use crate::pins::{PinStore, StoredPin};
use crate::store::{LockStore, StoreError};
use crate::users::{User, UserStore};

/// The session index and its search, the vault and the store's secrets (each on an empty store).
pub mod index_vault;

/// One handle on the database, as every trait the suite checks.
#[derive(Clone)]
pub struct Stores {
    /// Locks.
    pub locks: Arc<dyn LockStore>,
    /// Users and the login back-off.
    pub users: Arc<dyn UserStore>,
    /// Access requests, approvals and grants.
    pub access: Arc<dyn AccessStore>,
    /// Device pins.
    pub pins: Arc<dyn PinStore>,
    /// The gateway registry.
    pub gateways: Arc<dyn GatewayRegistry>,
}

impl Stores {
    /// Every trait of one store.
    pub fn of<S>(store: Arc<S>) -> Stores
    where
        S: LockStore + UserStore + AccessStore + PinStore + GatewayRegistry + 'static,
    {
        Stores {
            locks: store.clone(),
            users: store.clone(),
            access: store.clone(),
            pins: store.clone(),
            gateways: store,
        }
    }
}

/// Two handles on one database (as two gateways have).
#[derive(Clone)]
pub struct TestBackend {
    /// The backend's name, in failure messages.
    pub name: &'static str,
    /// The first handle.
    pub a: Stores,
    /// A second handle on the same database.
    pub b: Stores,
}

/// Every check, in order.
pub fn run_all(b: &TestBackend) {
    locks(b);
    users(b);
    totp_race(b);
    login_backoff(b);
    login_backoff_race(b);
    access(b);
    approval_race(b);
    pins(b);
    gateways(b);
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

const NOW: i64 = 1_800_000_000;

/// Locks: every target kind, replace, expiry, removal; seen through the other handle.
pub fn locks(b: &TestBackend) {
    let n = b.name;
    let now = at(NOW);
    let lock = |target: LockTarget, until: Option<OffsetDateTime>, reason: &str| Lock {
        target,
        until,
        reason: reason.into(),
        by: "security sam".into(),
    };
    let org = lock(LockTarget::Org("conf-acme".into()), None, "incident 42");
    let dev = lock(
        LockTarget::Device("conf-pump".into()),
        Some(now + time::Duration::hours(1)),
        "recall",
    );
    let who = lock(
        LockTarget::Principal("vendor:conf-tech".into()),
        Some(now - time::Duration::seconds(1)),
        "already over",
    );
    for l in [&org, &dev, &who] {
        b.a.locks.put_lock(l).unwrap();
    }
    let mine = |locks: Vec<Lock>| -> Vec<Lock> {
        let mut v: Vec<Lock> = locks
            .into_iter()
            .filter(|l| match &l.target {
                LockTarget::Org(v) | LockTarget::Device(v) | LockTarget::Principal(v) => {
                    v.contains("conf-")
                }
            })
            .collect();
        v.sort_by_key(|l| format!("{:?}", l.target));
        v
    };
    // The expired one is not active; the others are, through either handle.
    let active = mine(b.b.locks.active_locks(now).unwrap());
    assert_eq!(active, vec![dev.clone(), org.clone()], "{n}");
    assert_eq!(
        mine(
            b.a.locks
                .active_locks(now + time::Duration::hours(2))
                .unwrap()
        ),
        vec![org.clone()],
        "{n}: the device lock ended"
    );
    // Replacing a lock keeps one row with the new values.
    let org2 = lock(
        LockTarget::Org("conf-acme".into()),
        Some(now + time::Duration::minutes(5)),
        "incident 43",
    );
    b.b.locks.put_lock(&org2).unwrap();
    let active = mine(b.a.locks.active_locks(now).unwrap());
    assert_eq!(active, vec![dev.clone(), org2], "{n}");
    // Removal: once.
    assert!(b.a.locks.remove_lock(&org.target).unwrap(), "{n}");
    assert!(!b.b.locks.remove_lock(&org.target).unwrap(), "{n}");
    assert!(b.b.locks.remove_lock(&who.target).unwrap(), "{n}");
    assert_eq!(
        mine(b.a.locks.active_locks(now).unwrap()),
        vec![dev.clone()]
    );
    assert!(b.a.locks.remove_lock(&dev.target).unwrap(), "{n}");
    assert!(mine(b.a.locks.active_locks(now).unwrap()).is_empty(), "{n}");
}

fn user(name: &str, created: i64) -> User {
    User {
        name: name.into(),
        kind: Kind::Vendor,
        org: Some("acme".into()),
        roles: vec!["infusion".into(), "field-service".into()],
        password_phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        totp_secret: Some("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into()),
        totp_last_step: None,
        disabled: false,
        created_unix: created,
        disabled_unix: None,
        must_change_password: false,
    }
}

/// Users: add (and refusals), read back equal (TOTP seed sealed and opened), list, disable,
/// password, TOTP enrolment and steps; through both handles.
pub fn users(b: &TestBackend) {
    let n = b.name;
    let (a, o) = (&b.a.users, &b.b.users);
    let alice = user("conf-alice", NOW);
    a.add_user(&alice).unwrap();
    let bob = User {
        name: "conf-bob".into(),
        kind: Kind::Clinician,
        org: None,
        roles: vec![],
        totp_secret: None,
        must_change_password: true,
        ..user("conf-bob", NOW + 5)
    };
    o.add_user(&bob).unwrap();
    // The name is taken: Exists, on either handle, and the first record is untouched.
    let again = User {
        kind: Kind::Admin,
        ..user("conf-alice", NOW + 9)
    };
    assert!(
        matches!(o.add_user(&again), Err(StoreError::Exists(_))),
        "{n}"
    );
    assert_eq!(o.user("conf-alice").unwrap(), Some(alice.clone()), "{n}");
    assert_eq!(a.user("conf-bob").unwrap(), Some(bob.clone()), "{n}");
    assert_eq!(a.user("conf-nobody").unwrap(), None, "{n}");
    // Refused before the database.
    for bad in [
        User {
            name: "Conf-Upper".into(),
            ..user("x", 1)
        },
        User {
            name: "conf-gw".into(),
            kind: Kind::Gateway,
            ..user("x", 1)
        },
    ] {
        assert!(
            matches!(a.add_user(&bad), Err(StoreError::Invalid(_))),
            "{n}: {bad:?}"
        );
    }
    let names: Vec<String> = o
        .list_users()
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .filter(|u| u.starts_with("conf-"))
        .collect();
    assert_eq!(names, ["conf-alice", "conf-bob"], "{n}");

    // Disable: once, the first time kept; unknown users are not.
    assert!(a.disable_user("conf-bob", at(NOW + 100)).unwrap(), "{n}");
    assert!(!o.disable_user("conf-bob", at(NOW + 200)).unwrap(), "{n}");
    assert!(!o.disable_user("conf-nobody", at(NOW)).unwrap(), "{n}");
    let got = o.user("conf-bob").unwrap().unwrap();
    assert!(got.disabled, "{n}");
    assert_eq!(got.disabled_unix, Some(NOW + 100), "{n}");
    let disabled: Vec<String> = a
        .disabled_users()
        .unwrap()
        .into_iter()
        .filter(|u| u.starts_with("conf-"))
        .collect();
    assert_eq!(disabled, ["conf-bob"], "{n}");

    // A new password clears the must-change flag.
    assert!(o.set_password("conf-bob", "$argon2id$mine").unwrap(), "{n}");
    assert!(
        !o.set_password("conf-nobody", "$argon2id$x").unwrap(),
        "{n}"
    );
    let got = a.user("conf-bob").unwrap().unwrap();
    assert_eq!(got.password_phc, "$argon2id$mine", "{n}");
    assert!(!got.must_change_password, "{n}");

    // TOTP: steps are consumed once and in order; enrolling resets the step.
    assert!(a.record_totp_step("conf-alice", 1000).unwrap(), "{n}");
    assert!(!o.record_totp_step("conf-alice", 1000).unwrap(), "{n}");
    assert!(!o.record_totp_step("conf-alice", 999).unwrap(), "{n}");
    assert!(o.record_totp_step("conf-alice", 1001).unwrap(), "{n}");
    assert!(!a.record_totp_step("conf-nobody", 5000).unwrap(), "{n}");
    assert_eq!(
        a.user("conf-alice").unwrap().unwrap().totp_last_step,
        Some(1001),
        "{n}"
    );
    assert!(
        a.set_totp("conf-bob", Some("JBSWY3DPEHPK3PXP")).unwrap(),
        "{n}"
    );
    let got = o.user("conf-bob").unwrap().unwrap();
    assert_eq!(got.totp_secret.as_deref(), Some("JBSWY3DPEHPK3PXP"), "{n}");
    assert_eq!(got.totp_last_step, None, "{n}");
    assert!(o.set_totp("conf-bob", None).unwrap(), "{n}");
    assert_eq!(a.user("conf-bob").unwrap().unwrap().totp_secret, None);
    assert!(!a.set_totp("conf-nobody", None).unwrap(), "{n}");
}

/// Two logins racing with the same TOTP code on two gateways: exactly one consumes the step.
pub fn totp_race(b: &TestBackend) {
    let n = b.name;
    b.a.users.add_user(&user("conf-racer", NOW)).unwrap();
    for round in 0..20i64 {
        let step = 50_000 + round;
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [b.a.users.clone(), b.b.users.clone()]
            .into_iter()
            .map(|users| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    users.record_totp_step("conf-racer", step).unwrap()
                })
            })
            .collect();
        let won: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "{n}: round {round}: {won:?}"
        );
    }
    assert_eq!(
        b.b.users
            .user("conf-racer")
            .unwrap()
            .unwrap()
            .totp_last_step,
        Some(50_019),
        "{n}"
    );
}

/// The login back-off: counted per name (users or not), shared by both handles, the last
/// failure's time kept (to the millisecond, never moved back), cleared on success.
pub fn login_backoff(b: &TestBackend) {
    let n = b.name;
    let (a, o) = (&b.a.users, &b.b.users);
    let t0 = at(NOW) + time::Duration::milliseconds(250);
    assert_eq!(a.login_failures("conf-guess").unwrap(), (0, None), "{n}");
    assert_eq!(a.note_login_failure("conf-guess", t0).unwrap(), 1, "{n}");
    assert_eq!(
        o.note_login_failure("conf-guess", t0 + time::Duration::seconds(2))
            .unwrap(),
        2,
        "{n}"
    );
    // A failure noted late by a slow gateway does not move the time back.
    assert_eq!(
        a.note_login_failure("conf-guess", t0 + time::Duration::seconds(1))
            .unwrap(),
        3,
        "{n}"
    );
    assert_eq!(
        o.login_failures("conf-guess").unwrap(),
        (3, Some(t0 + time::Duration::seconds(2))),
        "{n}"
    );
    // Names are independent; clearing one leaves the other.
    assert_eq!(a.note_login_failure("conf-other", t0).unwrap(), 1, "{n}");
    o.clear_login_failures("conf-guess").unwrap();
    assert_eq!(a.login_failures("conf-guess").unwrap(), (0, None), "{n}");
    assert_eq!(
        a.login_failures("conf-other").unwrap(),
        (1, Some(t0)),
        "{n}"
    );
    // Clearing what is not there is fine; counting starts again from one.
    a.clear_login_failures("conf-guess").unwrap();
    assert_eq!(a.note_login_failure("conf-guess", t0).unwrap(), 1, "{n}");
    a.clear_login_failures("conf-guess").unwrap();
    a.clear_login_failures("conf-other").unwrap();
}

/// Guesses counted on two gateways at once are all counted (no lost update).
pub fn login_backoff_race(b: &TestBackend) {
    let n = b.name;
    const EACH: u32 = 25;
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [b.a.users.clone(), b.b.users.clone()]
        .into_iter()
        .map(|users| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut seen = Vec::new();
                for i in 0..EACH {
                    let t = at(NOW) + time::Duration::milliseconds(i64::from(i));
                    seen.push(users.note_login_failure("conf-spray", t).unwrap());
                }
                seen
            })
        })
        .collect();
    let mut seen: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    seen.sort_unstable();
    // Every count from 1 to 50 was returned exactly once.
    assert_eq!(seen, (1..=2 * EACH).collect::<Vec<_>>(), "{n}");
    assert_eq!(
        b.a.users.login_failures("conf-spray").unwrap().0,
        2 * EACH,
        "{n}"
    );
}

fn person(kind: PrincipalKind, name: &str) -> Principal {
    Principal {
        kind,
        name: name.into(),
        org: None,
        roles: vec![],
        serial: "01".into(),
        not_after: at(NOW) + time::Duration::hours(1),
    }
}

fn policy(required: u32) -> ApprovalPolicy {
    ApprovalPolicy {
        name: "conf-policy".into(),
        devices: DeviceSelector::All,
        who: Who {
            kind: Some(PrincipalKind::Vendor),
            ..Who::default()
        },
        approvers: vec![Who {
            kind: Some(PrincipalKind::Clinician),
            ..Who::default()
        }],
        required,
        max_duration: Duration::from_secs(3600),
        pending_expiry: Duration::from_secs(3600),
    }
}

fn request(id: &str, created: i64) -> AccessRequest {
    AccessRequest {
        id: id.into(),
        requester: PrincipalRef::of(&person(PrincipalKind::Vendor, "conf-tech")),
        device: "conf-pump".into(),
        reason: "fix".into(),
        start: at(NOW),
        end: at(NOW) + time::Duration::hours(1),
        created: at(created),
        expires: at(NOW) + time::Duration::hours(1),
        policy: "conf-policy".into(),
        state: RequestState::Pending,
    }
}

fn approve_as(
    store: &dyn AccessStore,
    id: &str,
    approver: &str,
    required: u32,
) -> Result<crate::access_store::ApproveOutcome, DecisionError> {
    let policies = [policy(required)];
    let who = person(PrincipalKind::Clinician, approver);
    let grant_id = format!("grant-{id}-{approver}");
    store.approve(
        id,
        &|r, a| approve(r, a, &policies, &who, Some("ok".into()), at(NOW)),
        &|r, a| grant_for(r, a, grant_id.clone()),
    )
}

/// Requests, approvals, denials, grants and revocation, across both handles.
pub fn access(b: &TestBackend) {
    let n = b.name;
    let (a, o) = (&b.a.access, &b.b.access);
    a.put_request(&request("conf-req-1", NOW)).unwrap();
    o.put_request(&request("conf-req-2", NOW + 1)).unwrap();
    a.put_request(&request("conf-req-3", NOW + 2)).unwrap();
    assert_eq!(
        o.request("conf-req-1").unwrap(),
        Some(request("conf-req-1", NOW)),
        "{n}"
    );
    assert_eq!(o.request("conf-none").unwrap(), None, "{n}");
    // Two approvals needed: the first leaves it pending, a repeat is refused, the second (on
    // the other gateway) completes it with a grant.
    let first = approve_as(&**a, "conf-req-1", "conf-a", 2).unwrap();
    assert!(!first.approved.complete && first.grant.is_none(), "{n}");
    assert!(
        matches!(
            approve_as(&**o, "conf-req-1", "conf-a", 2),
            Err(DecisionError::Refused(DecideError::AlreadyApproved(_)))
        ),
        "{n}"
    );
    let second = approve_as(&**o, "conf-req-1", "conf-b", 2).unwrap();
    let grant = second.grant.clone().expect("the second approval grants");
    assert_eq!(second.request.state, RequestState::Approved, "{n}");
    assert_eq!(grant.approvers.len(), 2, "{n}: {grant:?}");
    assert_eq!(a.grant(&grant.id).unwrap(), Some(grant.clone()), "{n}");
    assert!(
        matches!(
            approve_as(&**a, "conf-req-1", "conf-c", 2),
            Err(DecisionError::Refused(DecideError::NotPending { .. }))
        ),
        "{n}"
    );
    assert!(
        matches!(
            approve_as(&**a, "conf-none", "conf-c", 2),
            Err(DecisionError::NotFound(_))
        ),
        "{n}"
    );
    // Deny: atomic after the check; a refused check changes nothing.
    assert!(
        matches!(
            o.deny("conf-req-2", &|r| Err(DecideError::NotPending {
                id: r.id.clone(),
                state: "pending"
            })),
            Err(DecisionError::Refused(_))
        ),
        "{n}"
    );
    assert_eq!(
        a.request("conf-req-2").unwrap().unwrap().state,
        RequestState::Pending,
        "{n}"
    );
    let denied = o.deny("conf-req-2", &|_| Ok(())).unwrap();
    assert_eq!(denied.state, RequestState::Denied, "{n}");
    assert!(matches!(
        a.deny("conf-none", &|_| Ok(())),
        Err(DecisionError::NotFound(_))
    ));
    // Listing: newest first, with approvals in the order they were made.
    let listed: Vec<(String, RequestState, Vec<String>)> = a
        .requests()
        .unwrap()
        .into_iter()
        .filter(|(r, _)| r.id.starts_with("conf-req-"))
        .map(|(r, ap)| {
            (
                r.id,
                r.state,
                ap.into_iter().map(|x| x.approver.name).collect(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("conf-req-3".into(), RequestState::Pending, vec![]),
            ("conf-req-2".into(), RequestState::Denied, vec![]),
            (
                "conf-req-1".into(),
                RequestState::Approved,
                vec!["conf-a".to_string(), "conf-b".to_string()]
            ),
        ],
        "{n}"
    );
    // Grants: current at NOW, gone after the end; revocation sticks with its first reason.
    let mine = |gs: Vec<ward_core::access::Grant>| -> Vec<String> {
        gs.into_iter()
            .filter(|g| g.request.starts_with("conf-req-"))
            .map(|g| g.id)
            .collect()
    };
    assert_eq!(
        mine(o.grants(at(NOW), false).unwrap()),
        vec![grant.id.clone()]
    );
    assert!(mine(o.grants(at(NOW) + time::Duration::hours(2), false).unwrap()).is_empty());
    let revoked = o
        .revoke_grant(&grant.id, at(NOW + 60), "by soc: done early")
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at(NOW + 60)), "{n}");
    let again = a
        .revoke_grant(&grant.id, at(NOW + 120), "second")
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(at(NOW + 60)), "{n}");
    assert_eq!(again.revoked.as_deref(), Some("by soc: done early"), "{n}");
    assert!(mine(a.grants(at(NOW), false).unwrap()).is_empty(), "{n}");
    assert_eq!(
        mine(a.grants(at(NOW), true).unwrap()),
        vec![grant.id.clone()]
    );
    assert!(a.revoke_grant("conf-none", at(NOW), "x").unwrap().is_none());
}

/// Two approvers racing for the last slot on two gateways: exactly one grant, the other refused
/// as no longer pending; round after round.
pub fn approval_race(b: &TestBackend) {
    let n = b.name;
    for round in 0..10 {
        let id = format!("conf-race-{round}");
        b.a.access.put_request(&request(&id, NOW + 10)).unwrap();
        approve_as(&*b.a.access, &id, "conf-first", 2).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [
            (b.a.access.clone(), "conf-x"),
            (b.b.access.clone(), "conf-y"),
        ]
        .into_iter()
        .map(|(store, who)| {
            let (barrier, id) = (barrier.clone(), id.clone());
            std::thread::spawn(move || {
                barrier.wait();
                approve_as(&*store, &id, who, 2)
            })
        })
        .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let granted = results
            .iter()
            .filter(|r| matches!(r, Ok(o) if o.grant.is_some()))
            .count();
        assert_eq!(granted, 1, "{n}: round {round}: {results:?}");
        assert!(
            results.iter().any(|r| matches!(
                r,
                Err(DecisionError::Refused(DecideError::NotPending { .. }))
            )),
            "{n}: round {round}: {results:?}"
        );
        let grants =
            b.b.access
                .grants(at(NOW), true)
                .unwrap()
                .into_iter()
                .filter(|g| g.request == id)
                .count();
        assert_eq!(grants, 1, "{n}: round {round}");
        assert_eq!(
            b.b.access.request(&id).unwrap().unwrap().state,
            RequestState::Approved,
            "{n}"
        );
    }
}

/// Device pins: set, replace (returning the old), read through the other handle, remove.
pub fn pins(b: &TestBackend) {
    let n = b.name;
    let pin = |p: &str, by: &str| StoredPin {
        device: "conf-pacs".into(),
        pin: p.into(),
        set_by: by.into(),
        set_unix: NOW,
    };
    assert_eq!(b.a.pins.device_pin("conf-pacs").unwrap(), None, "{n}");
    assert_eq!(
        b.a.pins.set_device_pin(&pin("sha256:aa", "sam")).unwrap(),
        None
    );
    assert_eq!(
        b.b.pins.set_device_pin(&pin("sha256:bb", "kim")).unwrap(),
        Some(pin("sha256:aa", "sam")),
        "{n}"
    );
    assert_eq!(
        b.a.pins.device_pin("conf-pacs").unwrap(),
        Some(pin("sha256:bb", "kim")),
        "{n}"
    );
    assert_eq!(
        b.a.pins.remove_device_pin("conf-pacs").unwrap(),
        Some(pin("sha256:bb", "kim")),
        "{n}"
    );
    assert_eq!(b.b.pins.remove_device_pin("conf-pacs").unwrap(), None);
    assert_eq!(b.b.pins.device_pin("conf-pacs").unwrap(), None, "{n}");
}

/// The gateway registry: heartbeats insert then refresh; listed oldest first; times kept to the
/// millisecond.
pub fn gateways(b: &TestBackend) {
    let n = b.name;
    let ms = |x: i64| at(NOW) + time::Duration::milliseconds(x);
    let gw1 = GatewayRow {
        id: "conf-gw-1".into(),
        quic: "10.0.0.1:4433".into(),
        tcp: Some("10.0.0.1:4433".into()),
        web: None,
        version: "0.19.0".into(),
        started: ms(1),
        last_seen: ms(1),
        keyring: "{\"key_id\":\"k1\"}\n".into(),
    };
    let gw2 = GatewayRow {
        id: "conf-gw-2".into(),
        quic: "10.0.0.2:4433".into(),
        tcp: None,
        web: Some("https://10.0.0.2:8443".into()),
        version: "0.19.0".into(),
        started: ms(500),
        last_seen: ms(500),
        keyring: String::new(),
    };
    b.b.gateways.heartbeat(&gw2).unwrap();
    b.a.gateways.heartbeat(&gw1).unwrap();
    let gw1_later = GatewayRow {
        last_seen: ms(10_123),
        // A rotated key: the heartbeat carries the new keyring.
        keyring: "{\"key_id\":\"k1\"}\n{\"key_id\":\"k2\"}\n".into(),
        ..gw1.clone()
    };
    b.a.gateways.heartbeat(&gw1_later).unwrap();
    let listed: Vec<GatewayRow> =
        b.b.gateways
            .gateways()
            .unwrap()
            .into_iter()
            .filter(|g| g.id.starts_with("conf-gw-"))
            .collect();
    assert_eq!(listed, vec![gw1_later, gw2], "{n}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keywrap::{Kek, KeyRing};
    use crate::store::SqliteStore;

    #[test]
    fn sqlite_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::of(Kek::generate().unwrap());
        let open = || {
            let s = Arc::new(SqliteStore::open(dir.path()).unwrap());
            s.keys().set(ring.clone());
            s
        };
        let backend = TestBackend {
            name: "sqlite",
            a: Stores::of(open()),
            b: Stores::of(open()),
        };
        run_all(&backend);
    }
}
