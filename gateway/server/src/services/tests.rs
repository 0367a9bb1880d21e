//! The services called directly, with no frames: what a second front end (the web console) gets.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ward_ca::{Clock, Kind};
use ward_core::access::RequestState;
use ward_core::frame::{LockTarget, Login};

use super::access::NewRequest;
use super::locks::LockRequest;
use super::testing::{Fixture, Who};
use super::users::{create_user, NewUser};
use super::Refusal;
use crate::users::UserStore;

fn vendor() -> Who {
    Who::new(Kind::Vendor, Some("acme"), "tech", &[])
}
fn icu() -> Who {
    Who::new(Kind::Clinician, None, "cara", &["icu"])
}
fn biomed() -> Who {
    Who::new(Kind::Clinician, None, "bob", &["biomed"])
}
fn security() -> Who {
    Who::new(Kind::Security, None, "sam", &[])
}
fn admin() -> Who {
    Who::new(Kind::Admin, None, "ada", &[])
}

fn pump_request(reason: &str) -> NewRequest {
    NewRequest {
        device: "pump-12".into(),
        reason: reason.into(),
        duration: Duration::from_secs(3600),
        start_unix: None,
    }
}

#[tokio::test]
async fn request_approve_revoke_and_deny_without_frames() {
    let f = Fixture::new();
    let (tech, cara, bob) = (vendor(), icu(), biomed());
    let r = f
        .access
        .request(tech.caller(), pump_request("firmware 4.2"))
        .await
        .unwrap();
    assert_eq!(r.state, RequestState::Pending);
    // The requester does not approve their own request.
    assert!(matches!(
        f.access.approve(tech.caller(), &r.id, None).await,
        Err(Refusal::Denied(_))
    ));
    let first = f.access.approve(cara.caller(), &r.id, None).await.unwrap();
    assert_eq!((first.approved.count, first.approved.required), (1, 2));
    assert!(first.grant.is_none());
    assert_eq!(f.live.changed.load(Ordering::SeqCst), 0);
    let second = f
        .access
        .approve(bob.caller(), &r.id, Some("ok".into()))
        .await
        .unwrap();
    let grant = second
        .grant
        .expect("the second approval completes the request");
    // The gateway is told at once, so sessions and login see the grant.
    assert_eq!(f.live.changed.load(Ordering::SeqCst), 1);
    let pending = f.access.list_requests(cara.caller(), false).await.unwrap();
    assert!(pending.is_empty());
    let all = f.access.list_requests(cara.caller(), true).await.unwrap();
    assert_eq!(all[0].approvals, vec!["cara", "bob"]);
    assert_eq!(
        f.access
            .list_grants(tech.caller(), false)
            .await
            .unwrap()
            .len(),
        1
    );
    // Someone else's vendor may neither see nor revoke it.
    let other = Who::new(Kind::Vendor, Some("globex"), "eve", &[]);
    assert!(f
        .access
        .list_grants(other.caller(), false)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        f.access.revoke(other.caller(), &grant.id, "mine now").await,
        Err(Refusal::Forbidden(_))
    ));
    assert!(matches!(
        f.access.revoke(tech.caller(), &grant.id, " ").await,
        Err(Refusal::Invalid(m)) if m.contains("--reason")
    ));
    let revoked = f
        .access
        .revoke(tech.caller(), &grant.id, "done")
        .await
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(f.live.changed.load(Ordering::SeqCst), 2);

    // Every operation wrote its events, refusals included.
    assert_eq!(
        f.outcomes().await,
        [
            "access_request/success",
            "access_approve/denied",
            "access_approve/success",
            "access_approve/success",
            "access_grant/success",
            "access_revoke/denied",
            "access_revoke/success",
        ]
    );
}

#[tokio::test]
async fn deny_needs_a_reason_and_an_approver() {
    let f = Fixture::new();
    let (tech, cara) = (vendor(), icu());
    let r2 = f
        .access
        .request(tech.caller(), pump_request("again"))
        .await
        .unwrap();
    assert!(matches!(
        f.access.deny(cara.caller(), &r2.id, "").await,
        Err(Refusal::Invalid(_))
    ));
    assert!(matches!(
        f.access.deny(tech.caller(), &r2.id, "no").await,
        Err(Refusal::Denied(_))
    ));
    let denied = f
        .access
        .deny(cara.caller(), &r2.id, "not today")
        .await
        .unwrap();
    assert_eq!(denied.state, RequestState::Denied);
    assert!(matches!(
        f.access.deny(cara.caller(), "req-missing", "x").await,
        Err(Refusal::Denied(m)) if m.contains("no access request")
    ));

    assert_eq!(
        f.outcomes().await,
        [
            "access_request/success",
            "access_deny/denied",
            "access_deny/success",
            "access_deny/denied",
        ]
    );
}

#[tokio::test]
async fn a_request_the_policy_refuses_is_denied_and_audited() {
    let f = Fixture::new();
    let mut too_long = pump_request("all week");
    too_long.duration = Duration::from_secs(7 * 24 * 3600);
    assert!(matches!(
        f.access.request(vendor().caller(), too_long).await,
        Err(Refusal::Denied(_))
    ));
    let mut bad_start = pump_request("x");
    bad_start.start_unix = Some(i64::MAX);
    assert_eq!(
        f.access.request(vendor().caller(), bad_start).await,
        Err(Refusal::Invalid("bad start time".into()))
    );
    assert_eq!(f.outcomes().await, ["access_request/denied"]);
}

#[tokio::test]
async fn lock_and_unlock_need_security_and_a_known_target() {
    let f = Fixture::new();
    let lock = |target: &str, force| LockRequest {
        target: LockTarget::Device(target.into()),
        duration: Some(Duration::from_secs(600)),
        reason: "recall".into(),
        force,
    };
    assert!(matches!(
        f.locks.lock(icu().caller(), lock("pump-12", false)).await,
        Err(Refusal::Forbidden(m)) if m.contains("only security and admin")
    ));
    // A typo is refused with a suggestion, unless forced.
    assert!(matches!(
        f.locks.lock(security().caller(), lock("pump-21", false)).await,
        Err(Refusal::Invalid(m)) if m.contains("pump-12")
    ));
    let done = f
        .locks
        .lock(security().caller(), lock("pump-12", false))
        .await
        .unwrap();
    assert_eq!(done.sessions_ended, f.live.live_sessions);
    assert!(done.lock.until.is_some());
    assert_eq!(f.locks.list(security().caller()).unwrap().len(), 1);
    assert!(matches!(
        f.locks.list(vendor().caller()),
        Err(Refusal::Forbidden(_))
    ));
    let target = LockTarget::Device("pump-12".into());
    f.locks.unlock(admin().caller(), &target).await.unwrap();
    assert!(f.locks.list(security().caller()).unwrap().is_empty());
    assert_eq!(
        f.locks.unlock(admin().caller(), &target).await,
        Err(Refusal::NotFound("no lock on device pump-12".into()))
    );
    // A duration past the calendar is refused, not a panic.
    let mut forever = lock("pump-12", false);
    forever.duration = Some(Duration::from_secs(u64::MAX));
    assert!(matches!(
        f.locks.lock(security().caller(), forever).await,
        Err(Refusal::Invalid(_))
    ));
    assert_eq!(
        f.outcomes().await,
        [
            "lock/denied",
            "lock/denied",
            "lock/success",
            "unlock/success",
            "unlock/failure"
        ]
    );
}

#[tokio::test]
async fn users_are_created_disabled_and_listed_by_admins_only() {
    let f = Fixture::new();
    let nina = || NewUser::new("nina", "clinician");
    assert!(matches!(
        f.users.add(security().caller(), nina()).await,
        Err(Refusal::Forbidden(m)) if m.contains("only admin identities")
    ));
    let created = f.users.add(admin().caller(), nina()).await.unwrap();
    assert!(!created.password.is_empty());
    let stored = f.store.user("nina").unwrap().unwrap();
    assert!(stored.must_change_password);
    assert!(matches!(
        f.users.add(admin().caller(), nina()).await,
        Err(Refusal::Invalid(m)) if m.contains("exists")
    ));
    assert!(matches!(
        f.users.add(admin().caller(), NewUser::new("gw", "gateway")).await,
        Err(Refusal::Invalid(m)) if m.contains("kind must be")
    ));
    assert_eq!(f.users.list(admin().caller()).await.unwrap().len(), 1);
    assert!(f.users.list(security().caller()).await.is_err());
    assert!(matches!(
        f.users.disable(security().caller(), "nina").await,
        Err(Refusal::Forbidden(_))
    ));
    f.users.disable(admin().caller(), "nina").await.unwrap();
    assert!(f.store.user("nina").unwrap().unwrap().disabled);
    assert_eq!(f.live.changed.load(Ordering::SeqCst), 1);
    assert_eq!(
        f.users.disable(admin().caller(), "ghost").await,
        Err(Refusal::NotFound("no user ghost".into()))
    );
    assert_eq!(
        f.outcomes().await,
        [
            "user_add/denied",
            "user_add/success",
            "user_add/failure",
            "user_add/failure",
            "user_disable/denied",
            "user_disable/success",
        ]
    );
}

fn login(user: &str, password: &str, totp: Option<String>) -> Login {
    Login {
        user: user.into(),
        password: password.into(),
        totp,
        csr_pem: String::new(),
        grant: None,
        new_password: None,
    }
}

#[tokio::test]
async fn login_refusals_say_nothing_about_which_part_was_wrong() {
    let f = Fixture::new();
    let peer = "127.0.0.1:50000".parse().unwrap();
    let cfg = ward_core::config::LoginConfig::default();
    let clin = NewUser {
        must_change: false,
        ..NewUser::new("cleo", "clinician")
    };
    let cleo = create_user(f.store.as_ref(), &cfg, clin, f.clock.now()).unwrap();
    let failed = |r: Result<_, Refusal>| matches!(r, Err(Refusal::Denied(m)) if m.starts_with("login failed"));
    assert!(failed(
        f.login.login(peer, &login("nobody", "x", None)).await
    ));
    assert!(failed(
        f.login.login(peer, &login("cleo", "wrong", None)).await
    ));
    // The right password reaches issuance, which this gateway cannot do (no CA key).
    let r = f
        .login
        .login(peer, &login("cleo", &cleo.password, None))
        .await;
    assert!(
        matches!(&r, Err(Refusal::Unavailable(m)) if m.contains("not enabled")),
        "{r:?}"
    );
    // A vendor has TOTP: a code used once is refused as reused, not as a failure.
    let tech = NewUser {
        must_change: false,
        org: Some("acme".into()),
        ..NewUser::new("tech", "vendor")
    };
    let tech_pw = create_user(f.store.as_ref(), &cfg, tech, f.clock.now())
        .unwrap()
        .password;
    assert!(failed(
        f.login.login(peer, &login("tech", &tech_pw, None)).await
    ));
    let secret = f.store.user("tech").unwrap().unwrap().totp_secret.unwrap();
    let secret = ward_core::totp::TotpSecret::from_base32(&secret).unwrap();
    let code = ward_core::totp::code_at(&secret, f.clock.now().unix_timestamp());
    assert!(matches!(
        f.login
            .login(peer, &login("tech", &tech_pw, Some(code.clone())))
            .await,
        Err(Refusal::Unavailable(_))
    ));
    assert_eq!(
        f.login
            .login(peer, &login("tech", &tech_pw, Some(code)))
            .await,
        Err(Refusal::TotpReused)
    );
    // An initial password must be changed first; a disabled user fails like a wrong password.
    let nina = create_user(
        f.store.as_ref(),
        &cfg,
        NewUser::new("nina", "clinician"),
        f.clock.now(),
    )
    .unwrap();
    assert!(matches!(
        f.login.login(peer, &login("nina", &nina.password, None)).await,
        Err(Refusal::Denied(m)) if m.contains("--change-password")
    ));
    f.store.disable_user("cleo", f.clock.now()).unwrap();
    assert!(failed(
        f.login
            .login(peer, &login("cleo", &cleo.password, None))
            .await
    ));
    let events = f.events().await;
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        reasons,
        [
            "unknown user",
            "wrong password",
            "login disabled: no issuing CA key",
            "TOTP code missing",
            "login disabled: no issuing CA key",
            "TOTP code reused",
            "the initial password must be changed before a certificate is issued",
            "user is disabled",
        ]
    );
}

#[tokio::test]
async fn devices_list_what_the_caller_could_open() {
    let f = Fixture::new();
    let ids = |w: &Who| -> Vec<String> {
        f.devices
            .list(w.caller())
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect()
    };
    assert_eq!(ids(&admin()), ["pump-12", "monitor-3", "pacs-1"]);
    // A vendor no rule names opens nothing; what it could request is listed as such, by the
    // same policy that would decide the request.
    let eve = Who::new(Kind::Vendor, Some("globex"), "eve", &[]);
    let listed = f.devices.list(eve.caller()).unwrap();
    assert!(
        listed
            .iter()
            .all(|d| d.reach == ward_core::frame::Reach::Request),
        "{listed:?}"
    );
}

/// The web console's sign-in: the login's checks with a TOTP code always required (even for a
/// kind `[login]` lets in on a password), no certificate, the same back-off as `ward login`, and
/// its own audit event.
#[tokio::test]
async fn web_sign_in_always_needs_totp_and_shares_the_login_back_off() {
    use super::login::{Credentials, SignedIn};
    let f = Fixture::new();
    let peer = "127.0.0.1:50001".parse().unwrap();
    let cfg = ward_core::config::LoginConfig::default();
    let creds = |user: &str, password: &str, totp: Option<String>| Credentials {
        user: user.into(),
        password: password.into(),
        totp,
    };
    // A clinician without TOTP logs in on a password, but cannot sign in to the console.
    let cleo = NewUser {
        must_change: false,
        ..NewUser::new("cleo", "clinician")
    };
    let cleo = create_user(f.store.as_ref(), &cfg, cleo, f.clock.now()).unwrap();
    let r = f
        .login
        .sign_in(peer, &creds("cleo", &cleo.password, None), "s1")
        .await;
    assert!(
        matches!(&r, Err(Refusal::Denied(m)) if m.starts_with("login failed")),
        "{r:?}"
    );
    // A vendor with TOTP: a wrong code fails, the right one signs in (no CA needed: nothing is
    // issued), and the same code again is a replay.
    let tech = NewUser {
        must_change: false,
        org: Some("acme".into()),
        ..NewUser::new("tech", "vendor")
    };
    let pw = create_user(f.store.as_ref(), &cfg, tech, f.clock.now())
        .unwrap()
        .password;
    let secret = f.store.user("tech").unwrap().unwrap().totp_secret.unwrap();
    let secret = ward_core::totp::TotpSecret::from_base32(&secret).unwrap();
    let code = ward_core::totp::code_at(&secret, f.clock.now().unix_timestamp());
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert!(f
        .login
        .sign_in(peer, &creds("tech", &pw, Some(wrong.into())), "s2")
        .await
        .is_err());
    let signed = f
        .login
        .sign_in(peer, &creds("tech", &pw, Some(code.clone())), "s3")
        .await
        .unwrap();
    assert_eq!(
        signed,
        SignedIn {
            name: "tech".into(),
            kind: Kind::Vendor,
            org: Some("acme".into()),
            roles: vec![],
        }
    );
    assert_eq!(
        f.login
            .sign_in(peer, &creds("tech", &pw, Some(code)), "s4")
            .await,
        Err(Refusal::TotpReused)
    );
    // Three failed `ward login`s for tech from this address: the console's sign-in waits too.
    for _ in 0..3 {
        assert!(f
            .login
            .login(peer, &login("tech", "wrong", None))
            .await
            .is_err());
    }
    // (The next step's code: fresh, and inside the verifier's skew.)
    let code = ward_core::totp::code_at(&secret, f.clock.now().unix_timestamp() + 30);
    let r = f
        .login
        .sign_in(peer, &creds("tech", &pw, Some(code)), "s5")
        .await;
    assert!(
        matches!(&r, Err(Refusal::Denied(m)) if m.contains("too many failed logins")),
        "{r:?}"
    );
    let events = f.events().await;
    let web: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "web_signin")
        .map(|e| {
            format!(
                "{}: {}",
                e["outcome"].as_str().unwrap(),
                e["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        web,
        [
            "denied: MFA required but the user has no TOTP secret",
            "denied: wrong TOTP code",
            "success: password and TOTP verified; web session started",
            "denied: TOTP code reused",
            "denied: rate-limited for 2s after repeated failures",
        ],
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["detail"]["serial"].is_string()),
        "no certificate was issued: {events:#?}"
    );
}

/// "My devices" shows what `ward devices` lists, with the same decisions, in words: the rule and
/// the end of an open device, the break-glass cap, and a device a rule names but not now.
#[tokio::test]
async fn my_devices_say_why_with_the_listing_s_decisions() {
    use super::devices::Access;
    use ward_core::frame::Reach;
    let f = Fixture::new();
    let nurse = Who::new(Kind::Clinician, None, "nia", &["icu", "nurse"]);
    let globex = Who::new(Kind::Vendor, Some("globex"), "gus", &[]);
    for w in [&nurse, &icu(), &vendor(), &globex, &admin()] {
        let listed = f.devices.list(w.caller()).unwrap();
        let mine = f.devices.mine(w.caller()).unwrap();
        for l in &listed {
            let m = mine.iter().find(|m| m.info.id == l.id).unwrap_or_else(|| {
                panic!("{} lists {} but My devices does not", w.identity.name, l.id)
            });
            let same = matches!(
                (l.reach, m.access),
                (Reach::Open, Access::Open)
                    | (Reach::Request | Reach::RequestOrBreakGlass, Access::Request)
                    | (Reach::BreakGlass, Access::BreakGlass)
            );
            assert!(
                same,
                "{}: {} listed {:?}, mine {:?}",
                w.identity.name, l.id, l.reach, m.access
            );
            assert_eq!(m.info.rule, l.rule);
        }
        // Beyond the listing only devices a rule names, closed now.
        for m in mine
            .iter()
            .filter(|m| !listed.iter().any(|l| l.id == m.info.id))
        {
            assert_eq!(m.access, Access::None, "{}: {m:?}", w.identity.name);
        }
    }
    let mine = f.devices.mine(nurse.caller()).unwrap();
    let monitor = mine.iter().find(|m| m.info.id == "monitor-3").unwrap();
    assert_eq!(monitor.access, Access::Open);
    assert_eq!(monitor.rule.as_deref(), Some("icu-nurses-see-icu-consoles"));
    assert!(monitor.until.unwrap() > super::testing::now().unix_timestamp());
    assert!(
        monitor.why.contains("icu-nurses-see-icu-consoles"),
        "{}",
        monitor.why
    );
    let pump = mine.iter().find(|m| m.info.id == "pump-12").unwrap();
    assert_eq!(pump.access, Access::BreakGlass);
    assert!(
        pump.break_glass_requires
            .as_deref()
            .unwrap()
            .contains("at most 30m"),
        "{pump:?}"
    );
    // cara lacks the nurse role: the monitor only by break-glass, capped at its 15 minutes.
    let mine = f.devices.mine(icu().caller()).unwrap();
    let monitor = mine.iter().find(|m| m.info.id == "monitor-3").unwrap();
    assert_eq!(monitor.access, Access::BreakGlass);
    assert!(monitor.why.contains("at most 15m"), "{}", monitor.why);
    // globex's weekend rule names pacs-1, but it is Tuesday: not now, and why.
    let mine = f.devices.mine(globex.caller()).unwrap();
    let pacs = mine.iter().find(|m| m.info.id == "pacs-1").unwrap();
    assert_eq!(pacs.access, Access::None);
    assert!(pacs.why.contains("only during"), "{}", pacs.why);
    assert!(pacs.rule.is_none() && pacs.until.is_none());
}
