//! Abuse resistance and honest errors (issue 12 items 5-7): nothing from a peer reaches a log or a
//! terminal unescaped, a lock that matches nothing is refused, and the small things that erode
//! trust (key permissions, refusal texts, config limits).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use ward_ca::{Clock, Kind, SystemClock};
use ward_client::Transport;
use ward_core::frame::{ErrorCode, LockTarget, Request, Response};
use ward_tests::process::{run, ward};
use ward_tests::*;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Raw bytes that would drive a terminal or forge a line: ESC, BEL, C1 CSI, and a line that
/// starts with the forged text.
fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b') && !text.contains('\x07') && !text.contains('\u{9b}'),
        "raw control characters in {what}:\n{text:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("FAKE")),
        "a forged line in {what}:\n{text}"
    );
}

/// Issue 12 item 5. Reproduction: `ward connect $'pump\x1b]0;T\x07-12\nFAKE line'` wrote the OSC
/// sequence and a forged line into the gateway's text log, the denial echoed to the client was
/// raw, and 5,000-character ids were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_device_ids_are_refused_and_never_reach_a_log_raw() {
    let pki = Arc::new(Pki::new());
    let dev = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        dev,
        "raw",
        &[("vendor", "acme")],
    )];
    let gw = ChildGateway::start_env(
        pki.clone(),
        &devices,
        ACME_RULES,
        "",
        None,
        &[("RUST_LOG", "info")],
    );
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let hostile = "pump\x1b]0;T\x07-12\nFAKE line";
    let out = run(&mut ward(&[
        "connect",
        hostile,
        "--gateway",
        &gw.addr,
        "--identity",
        vendor.to_str().unwrap(),
        "--transport",
        "tcp",
    ]));
    assert!(!out.status.success(), "{out:?}");
    assert_clean(
        "ward connect's output",
        &format!("{}{}", out.stdout, out.stderr),
    );
    assert!(out.stderr.contains("device id"), "{}", out.stderr);

    // A 5,000-character id: refused with a sentence naming the limit, not looked up.
    let client = gw.client(&vendor, Transport::Quic);
    let long = "p".repeat(5000);
    let err = client.open(&long, false, None).await.err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("limit is 64"), "{msg}");
    assert!(msg.len() < 300, "the refusal echoes the id: {msg}");
    // Control characters in the id and the break-glass reason.
    let err = client
        .open(
            "x\x1b[2J\u{9b}31m",
            true,
            Some("why\x1b]0;owned\x07\nFAKE reason".into()),
        )
        .await
        .err()
        .unwrap();
    assert_clean("the refusal", &format!("{err:#}"));

    // The gateway's text log (bounded wait for the audit trace of the denials).
    let ok = eventually(Duration::from_secs(5), || {
        gw.proc.stderr().matches("session_deny").count() >= 3
    })
    .await;
    let log = gw.proc.stderr();
    assert!(ok, "no session_deny in the gateway log:\n{log}");
    assert_clean("the gateway's log", &log);
    assert!(!log.contains(&long), "the 5,000-character id was logged");
}

const PUMPS: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

async fn lock(client: &ward_client::Client, target: LockTarget, force: bool) -> Response {
    client
        .request(&Request::Lock {
            target,
            for_secs: Some(600),
            reason: "incident 7".into(),
            force,
        })
        .await
        .unwrap()
}

fn refusal(r: &Response) -> &str {
    match r {
        Response::Error {
            code: ErrorCode::BadRequest,
            message,
        } => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Issue 12 item 6. Reproduction: `ward lock --device pump-l2` (a typo for pump-12), `--org
/// acmee` and `--device ../../x` succeeded and locked nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_matches_nothing_is_refused_with_the_closest_names() {
    let pki = Arc::new(Pki::new());
    let dev = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        dev,
        "raw",
        &[("vendor", "acme")],
    )];
    let gw = start_gateway(pki.clone(), &devices, PUMPS, "", clock()).await;
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let sec = gw.client(&security, Transport::Quic);

    let r = lock(&sec, LockTarget::Device("pump-l2".into()), false).await;
    assert!(refusal(&r).contains("did you mean pump-12?"), "{r:?}");
    let r = lock(&sec, LockTarget::Org("acmee".into()), false).await;
    assert!(refusal(&r).contains("did you mean acme?"), "{r:?}");
    let r = lock(&sec, LockTarget::Device("../../x".into()), false).await;
    assert!(refusal(&r).contains("not valid"), "{r:?}");
    let r = lock(&sec, LockTarget::Device("../../x".into()), true).await;
    assert!(refusal(&r).contains("not valid"), "{r:?}");
    let r = lock(&sec, LockTarget::Principal("newvendor".into()), false).await;
    assert!(refusal(&r).contains("--force"), "{r:?}");
    // Nothing was locked by any of those.
    let Response::Locks { locks } = sec.request(&Request::ListLocks).await.unwrap() else {
        panic!("no lock list")
    };
    assert!(locks.is_empty(), "{locks:?}");

    // Real targets lock; an unknown principal locks with --force, audited as forced.
    let r = lock(&sec, LockTarget::Device("pump-12".into()), false).await;
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    let r = lock(&sec, LockTarget::Org("acme".into()), false).await;
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    let r = lock(&sec, LockTarget::Principal("newvendor".into()), true).await;
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    let events = audit_events(&gw.state_dir());
    let forced: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "lock" && e["outcome"] == "success")
        .map(|e| (e["detail"]["target"].clone(), e["detail"]["forced"].clone()))
        .collect();
    assert!(
        forced.contains(&("principal newvendor".into(), true.into()))
            && forced.contains(&("device pump-12".into(), false.into())),
        "{forced:?}"
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "lock" && e["outcome"] == "denied"));

    // The CLI has --force too.
    let (addr, id) = (gw.quic(), security.to_str().unwrap().to_owned());
    let out = tokio::task::spawn_blocking(move || {
        run(&mut ward(&[
            "lock",
            "--device",
            "pump-l2",
            "--reason",
            "typo",
            "--gateway",
            &addr,
            "--identity",
            &id,
        ]))
    })
    .await
    .unwrap();
    assert!(
        !out.status.success() && out.stderr.contains("pump-12"),
        "{out:?}"
    );
}

/// A client identity signed by `pki`'s issuing CA for the trust domain `evil.test`.
fn foreign_trust_domain(pki: &Pki) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = pki.dir.path();
    let ca_key = std::fs::read_to_string(dir.join("issuing.key")).unwrap();
    let ca_crt = std::fs::read_to_string(dir.join("issuing.crt")).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca_crt, rcgen::KeyPair::from_pem(&ca_key).unwrap())
            .unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "jdoe");
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "acme");
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://evil.test/vendor/jdoe".try_into().unwrap(),
    )];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = now() - time::Duration::minutes(10);
    p.not_after = now() + time::Duration::hours(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    let prefix = dir.join("foreign");
    std::fs::write(prefix.with_extension("crt"), cert.pem() + &ca_crt).unwrap();
    std::fs::write(prefix.with_extension("key"), key.serialize_pem()).unwrap();
    let private = std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(prefix.with_extension("key"), private).unwrap();
    prefix
}

async fn connect_error(gw: &TestGateway, identity: &std::path::Path, t: Transport) -> String {
    let files = ward_client::IdentityFiles::resolve(identity, Some(&gw.pki.root())).unwrap();
    let addr = match t {
        Transport::Tcp => gw.tcp(),
        _ => gw.quic(),
    };
    let client = ward_client::Client::new(&addr, &files, t).unwrap();
    let err = client.request(&Request::ListDevices).await.err();
    format!(
        "{:#}",
        err.unwrap_or_else(|| panic!("{} over {t:?} was not refused", identity.display()))
    )
}

/// Issue 12 item 7. Reproduction: a certificate the CA validator refuses for other than its
/// dates or chain (here the gateway's own certificate as a client identity) was refused with the
/// Rust `Debug` of the gateway's internal error in the QUIC close reason (`… Other(OtherError(
/// MissingEku { … }))`); the same path carried `WrongTrustDomain { found, expected }`.
/// `ward connect` now prints a sentence for each refusal, decided from the TLS alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_tell_the_peer_nothing_internal_and_the_user_what_to_do() {
    let pki = Arc::new(Pki::new());
    let gw = start_gateway(pki.clone(), &[], PUMPS, "", clock()).await;
    // The CA's own certificate and key as the identity.
    let ca_as_identity = pki.dir.path().join("issuing");
    let expired = pki.person_at(
        Kind::Vendor,
        "old",
        Some("acme"),
        &[],
        Some(time::Duration::hours(1)),
        now() - time::Duration::hours(5),
    );
    let early = pki.person_at(
        Kind::Vendor,
        "early",
        Some("acme"),
        &[],
        Some(time::Duration::hours(8)),
        now() + time::Duration::hours(3),
    );
    let foreign = foreign_trust_domain(&pki);
    let other = Pki::new();
    let stranger = other.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    for t in [Transport::Quic, Transport::Tcp] {
        let e = connect_error(&gw, &ca_as_identity, t).await;
        assert!(e.contains("CA certificate, not an identity"), "{t:?}: {e}");
        // Signed by this CA but for another trust domain: the validator's WrongTrustDomain went
        // to the peer as Rust Debug.
        let e = connect_error(&gw, &foreign, t).await;
        assert!(e.contains("another Ward"), "{t:?}: {e}");
        for internal in ["WrongTrustDomain", "Other", "{", "evil.test", "ward.test"] {
            assert!(
                !e.contains(internal),
                "{t:?}: {internal} reached the peer: {e}"
            );
        }
        let e = connect_error(&gw, &expired, t).await;
        assert!(
            e.contains("expired at") && e.contains("ward login"),
            "{t:?}: {e}"
        );
        let e = connect_error(&gw, &early, t).await;
        assert!(e.contains("not valid yet"), "{t:?}: {e}");
        let e = connect_error(&gw, &stranger, t).await;
        assert!(e.contains("another Ward"), "{t:?}: {e}");
    }
}

/// Issue 12 item 7. Reproduction: `chmod 644` on an identity key, the gateway's key or the audit
/// signing key, and Ward used them as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_others_can_read_are_refused_with_the_chmod_to_run() {
    use std::os::unix::fs::PermissionsExt;
    let lax = || std::fs::Permissions::from_mode(0o644);
    let pki = Arc::new(Pki::new());
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let key = vendor.with_extension("key");
    std::fs::set_permissions(&key, lax()).unwrap();
    let files = ward_client::IdentityFiles::resolve(&vendor, Some(&pki.root())).unwrap();
    let e = ward_client::Client::new("127.0.0.1:1", &files, Transport::Quic).unwrap_err();
    let want = format!("chmod 600 {}", key.display());
    assert!(format!("{e:#}").contains(&want), "{e:#}");

    // The gateway's key.
    let gw_key = pki.dir.path().join("gateway.key");
    std::fs::set_permissions(&gw_key, lax()).unwrap();
    let config = write_gateway_config(&pki, &[], PUMPS, "", 0, &pki.dir.path().join("st"));
    let cfg = ward_server::gateway::load_config(&config).unwrap();
    let e = ward_server::gateway::Gateway::start(cfg, clock())
        .await
        .err()
        .unwrap();
    let want = format!("chmod 600 {}", gw_key.display());
    assert!(format!("{e:#}").contains(&want), "{e:#}");
    std::fs::set_permissions(&gw_key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The audit signing key (made by a first start).
    let mut gw = start_gateway(pki.clone(), &[], PUMPS, "", clock()).await;
    let state = gw.state_dir();
    gw.shutdown(Duration::from_millis(50)).await;
    let audit_key = state.join(ward_server::AUDIT_KEY);
    std::fs::set_permissions(&audit_key, lax()).unwrap();
    let cfg = ward_server::gateway::load_config(&gw.config).unwrap();
    let e = ward_server::gateway::Gateway::start(cfg, clock())
        .await
        .err()
        .unwrap();
    let want = format!("chmod 600 {}", audit_key.display());
    assert!(format!("{e:#}").contains(&want), "{e:#}");
}

const APPROVED_PUMPS: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }

[[approval]]
name = "pumps"
who = { kind = "vendor" }
devices = { labels = { vendor = "acme" } }
approvers = [ { kind = "clinician", roles = ["icu"] } ]
max_duration = "2h"
"#;

/// Issue 12 item 7. Reproduction: an access request starting years ahead was accepted and sat
/// pending (a grant nobody would remember approving). `[access] max_start_ahead` (30 days).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_request_may_not_start_beyond_max_start_ahead() {
    use ward_core::frame::AccessOp;
    let pki = Arc::new(Pki::new());
    let dev = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        dev,
        "raw",
        &[("vendor", "acme")],
    )];
    let gw = start_gateway(pki.clone(), &devices, APPROVED_PUMPS, "", clock()).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let client = gw.client(&vendor, Transport::Quic);
    let ask = |days: i64| AccessOp::Request {
        device: "pump-12".into(),
        reason: "firmware".into(),
        duration_secs: 3600,
        start_unix: Some((now() + time::Duration::days(days)).unix_timestamp()),
    };
    let e = client.access(ask(400)).await.err().unwrap();
    let e = format!("{e:#}");
    assert!(e.contains("max_start_ahead") && e.contains("30d"), "{e}");
    assert!(client.access(ask(29)).await.is_ok());
}
