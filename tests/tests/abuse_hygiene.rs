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

use ward::client::Transport;
use ward_ca::{Clock, Kind, SystemClock};
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

async fn lock(client: &ward::client::Client, target: LockTarget, force: bool) -> Response {
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
