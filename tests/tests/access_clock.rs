//! Just-in-time access on an injected clock: a pending request expires and then cannot be
//! approved, and a grant whose window lies ahead opens nothing until its start.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ward_ca::{Clock, FixedClock, Kind};
use ward_client::{AccessAnswer, Transport};
use ward_core::frame::{AccessOp, AccessReply};
use ward_tests::*;

const POLICY: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }

[[approval]]
name = "pumps"
who = { kind = "vendor" }
devices = { labels = { vendor = "acme" } }
approvers = [ { kind = "clinician", roles = ["icu"] } ]
pending_expiry = "5m"
max_duration = "2h"
"#;

fn request_id(answer: AccessAnswer) -> String {
    match answer {
        AccessAnswer::Reply(r) => match *r {
            AccessReply::Request { request } => request.id,
            other => panic!("expected a request, got {other:?}"),
        },
        other => panic!("expected a request, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_cannot_be_approved_and_future_grants_open_nothing_early() {
    init_logs();
    let clock = Arc::new(FixedClock::new(now()));
    let pki = Arc::new(Pki::new());
    let (pump, pump_count) = counting_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        pump,
        "telnet",
        &[("vendor", "acme")],
    )];
    let gw = start_gateway(pki.clone(), &devices, POLICY, "", clock.clone()).await;
    let ttl = Some(time::Duration::hours(4));
    let vendor = pki.person_at(Kind::Vendor, "tech", Some("acme"), &[], ttl, clock.now());
    let nurse = pki.person_at(Kind::Clinician, "alice", None, &["icu"], ttl, clock.now());
    let tech = gw.client(&vendor, Transport::Quic);
    let alice = gw.client(&nurse, Transport::Quic);

    // 1. A request left pending past `pending_expiry` cannot be approved.
    let stale = request_id(
        tech.access(AccessOp::Request {
            device: "pump-12".into(),
            reason: "firmware".into(),
            duration_secs: 3600,
            start_unix: None,
        })
        .await
        .unwrap(),
    );
    clock.advance(time::Duration::minutes(6));
    let err = alice
        .access(AccessOp::Approve {
            id: stale.clone(),
            comment: None,
        })
        .await
        .expect_err("an expired request must not be approvable");
    assert!(err.to_string().contains("expired"), "{err}");
    let grants = match alice
        .access(AccessOp::ListGrants { all: true })
        .await
        .unwrap()
    {
        AccessAnswer::Lines(l) => l,
        other => panic!("{other:?}"),
    };
    assert!(grants.is_empty(), "{}", String::from_utf8_lossy(&grants));

    // 2. A grant for a window starting in 30 minutes opens nothing now, then opens the device.
    let start = clock.now() + time::Duration::minutes(30);
    let ahead = request_id(
        tech.access(AccessOp::Request {
            device: "pump-12".into(),
            reason: "scheduled maintenance".into(),
            duration_secs: 1800,
            start_unix: Some(start.unix_timestamp()),
        })
        .await
        .unwrap(),
    );
    let approved = alice
        .access(AccessOp::Approve {
            id: ahead,
            comment: Some("ok for tonight".into()),
        })
        .await
        .unwrap();
    let grant = match approved {
        AccessAnswer::Reply(r) => match *r {
            AccessReply::Approved { grant: Some(g), .. } => g,
            other => panic!("expected a grant, got {other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let err = tech
        .open("pump-12", false, None)
        .await
        .err()
        .expect("the grant has not started");
    assert!(
        err.to_string()
            .contains(&format!("grant {} for pump-12 starts at", grant.id)),
        "{err}"
    );
    assert_eq!(pump_count.load(Ordering::SeqCst), 0);
    clock.advance(time::Duration::minutes(31));
    let session = tech
        .open("pump-12", false, None)
        .await
        .expect("inside the grant's window");
    assert_eq!(session.rule, format!("grant {}", grant.id));
    drop(session);
    // After its end, nothing again (the standing rule does not help: approval policy governs).
    clock.advance(time::Duration::minutes(30));
    let err = tech
        .open("pump-12", false, None)
        .await
        .err()
        .expect("the grant has ended");
    assert!(
        err.to_string().contains("needs an approved access request"),
        "{err}"
    );
}
