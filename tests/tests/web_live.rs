//! The web console's live sessions, kill switch, access requests, locks and devices (issue 16),
//! in process: requests go through `Gateway::web_router()` with the caller's certificate
//! identity in the connection info (as the HTTPS listener puts it), and live sessions are opened
//! by the real client over the gateway's TCP listener. Ending a session or locking its principal
//! reaches the client as the gateway's `Closed` reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tower::ServiceExt;
use ward_ca::{Clock, Identity, Kind, SystemClock};
use ward_client::{Client, SessionEnd, Transport};
use ward_core::frame::{AccessOp, AccessReply};
use ward_server::web::ConnInfo;
use ward_tests::*;

const RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }

[[approval]]
name = "pump-maintenance"
who = { kind = "vendor" }
devices = { labels = { class = "infusion-pump" } }
approvers = [ { kind = "clinician", roles = ["icu"] } ]
required = 1
max_duration = "8h"
pending_expiry = "1h"

[[approval]]
name = "icu-console"
who = { kind = "clinician" }
devices = { ids = ["monitor-7"] }
approvers = [ { kind = "clinician", roles = ["icu"] } ]
required = 1
max_duration = "8h"
pending_expiry = "1h"
"#;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A gateway with pump-12 (acme's, an echo device), pump-99 (by request) and monitor-7 (by
/// request, for clinicians).
async fn gateway(pki: Arc<Pki>) -> TestGateway {
    let echo = echo_device().await;
    let devices = vec![
        DeviceSpec::new("pump-12", echo, "raw", &[("vendor", "acme")]),
        DeviceSpec::new("pump-99", echo, "raw", &[("class", "infusion-pump")]),
        DeviceSpec::new("monitor-7", echo, "raw", &[("unit", "icu")]),
    ];
    start_gateway(pki, &devices, RULES, "", clock()).await
}

/// A certificate identity as the console's listener validates it.
fn identity(kind: Kind, name: &str, org: Option<&str>, roles: &[&str]) -> Identity {
    let now = SystemClock.now();
    Identity {
        trust_domain: "ward.test".into(),
        kind,
        name: name.into(),
        org: org.map(Into::into),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        serial: format!("{:016x}", rand::random::<u64>()),
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::hours(8),
        uri: format!("spiffe://ward.test/{kind}/{name}"),
    }
}

/// The console over one gateway, called as the caller with a given certificate.
struct Web {
    router: Router,
    peer: SocketAddr,
}

impl Web {
    fn new(tg: &TestGateway) -> Web {
        Web {
            router: tg.gw.as_ref().unwrap().web_router(),
            peer: "127.0.0.1:45678".parse().unwrap(),
        }
    }

    /// One request with the connection's certificate identity (the authentication middleware
    /// resolves the caller from it) and, on state-changing requests, the CSRF token `whoami`
    /// gives a certificate caller.
    async fn call(
        &self,
        who: &Identity,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let csrf = if method == Method::GET {
            None
        } else {
            let (status, me) = self
                .send(who, Method::GET, "/api/v1/whoami", None, None)
                .await;
            (status == StatusCode::OK)
                .then(|| me["csrf"].as_str().map(str::to_owned))
                .flatten()
        };
        self.send(who, method, uri, body, csrf).await
    }

    async fn send(
        &self,
        who: &Identity,
        method: Method,
        uri: &str,
        body: Option<Value>,
        csrf: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(token) = csrf {
            req = req.header("x-ward-csrf", token);
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).unwrap();
        req.extensions_mut().insert(ConnInfo {
            peer: self.peer,
            certificate: Some(who.clone()),
        });
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    async fn get(&self, who: &Identity, uri: &str) -> (StatusCode, Value) {
        self.call(who, Method::GET, uri, None).await
    }

    async fn post(&self, who: &Identity, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(who, Method::POST, uri, Some(body)).await
    }

    /// The live list as `who` sees it (must be allowed).
    async fn live(&self, who: &Identity) -> Vec<Value> {
        let (status, body) = self.get(who, "/api/v1/live").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["sessions"].as_array().unwrap().clone()
    }
}

/// A live session on a duplex pipe.
struct Live {
    id: String,
    run: JoinHandle<SessionEnd>,
    r: ReadHalf<DuplexStream>,
    w: WriteHalf<DuplexStream>,
}

impl Live {
    async fn open(client: &Client, device: &str) -> Live {
        let session = client.open(device, false, None).await.unwrap();
        let id = session.session_id.clone();
        let (local, remote) = tokio::io::duplex(64 * 1024);
        let (lr, lw) = tokio::io::split(local);
        let run = tokio::spawn(session.run(lr, lw));
        let (r, w) = tokio::io::split(remote);
        let mut live = Live { id, run, r, w };
        live.echo(b"hello").await;
        live
    }

    /// Send `data` and read its echo back.
    async fn echo(&mut self, data: &[u8]) {
        self.w.write_all(data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(10), self.r.read_exact(&mut back))
            .await
            .expect("the echo came back")
            .unwrap();
        assert_eq!(back, data);
    }

    /// The gateway's `Closed` reason (bounded wait).
    async fn closed_by_gateway(self) -> String {
        let end = tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("the session ended")
            .unwrap();
        match end {
            SessionEnd::ClosedByGateway(reason) => reason,
            other => panic!("expected the gateway to end the session, got {other:?}"),
        }
    }
}

/// The first audit event `event` whose fields satisfy `pred` (bounded wait).
async fn audited(state_dir: &Path, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let find = || {
        audit_events(state_dir)
            .into_iter()
            .find(|e| e["event"] == event && pred(e))
    };
    assert!(
        eventually(Duration::from_secs(10), || find().is_some()).await,
        "no {event} event:\n{:#?}",
        audit_events(state_dir)
    );
    find().unwrap()
}

/// Sessions in the live list with id `id`.
fn with_id<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|s| s["id"] == id)
}

/// A live echo session shows in `/live` with its bytes growing; ending it with a reason ends
/// it, and the client is told who ended it and why; the end is audited; a reason is required;
/// vendors get 403.
#[tokio::test]
async fn end_one_live_session_with_a_reason() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let mut tg = gateway(pki.clone()).await;
    let web = Web::new(&tg);
    let sam = identity(Kind::Security, "sam", None, &[]);
    let vendor_id = identity(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let jdoe = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let kim = pki.person(Kind::Vendor, "kim", Some("acme"), &[]);
    let client = tg.client(&jdoe, Transport::Tcp);
    let mut live = Live::open(&client, "pump-12").await;
    let mut other = Live::open(&tg.client(&kim, Transport::Tcp), "pump-12").await;

    let list = web.live(&sam).await;
    assert_eq!(list.len(), 2, "{list:#?}");
    let s = with_id(&list, &live.id)
        .expect("the session is listed")
        .clone();
    assert_eq!(s["principal"], "vendor acme/jdoe");
    assert_eq!(s["name"], "acme/jdoe");
    assert_eq!(s["org"], "acme");
    assert_eq!(s["device"], "pump-12");
    assert_eq!(s["protocol"], "raw");
    assert_eq!(s["rule"], "acme-maintains-its-pumps");
    assert_eq!(s["break_glass"], false);
    assert!(
        s["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{s}"
    );
    assert!(s["since"].as_str().unwrap().ends_with('Z'), "{s}");
    let since = s["since_unix"].as_i64().unwrap();
    assert!(
        (SystemClock.now().unix_timestamp() - since).abs() < 60,
        "{s}"
    );
    assert_eq!(s["bytes_up"], 5, "{s}");
    assert_eq!(s["bytes_down"], 5, "{s}");

    // Bytes grow as the session carries them.
    live.echo(&payload(3000, 7)).await;
    let s = with_id(&web.live(&sam).await, &live.id).unwrap().clone();
    assert_eq!(s["bytes_up"], 3005, "{s}");
    assert_eq!(s["bytes_down"], 3005, "{s}");

    // Vendors may neither list nor end sessions.
    let (status, body) = web.get(&vendor_id, "/api/v1/live").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("security"),
        "{body}"
    );
    let end_uri = format!("/api/v1/live/{}/end", live.id);
    let (status, body) = web
        .post(&vendor_id, &end_uri, json!({"reason": "mine"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = web.post(&vendor_id, &end_uri, json!({})).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a vendor learns nothing from the body"
    );

    // Without the CSRF token the kill switch is refused before it is reached.
    let (status, body) = web
        .send(
            &sam,
            Method::POST,
            &end_uri,
            Some(json!({"reason": "x"})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");

    // A reason is required; an unknown id is 404; nothing ends.
    for bad in [json!({}), json!({"reason": "   "})] {
        let (status, body) = web.post(&sam, &end_uri, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"].as_str().unwrap().contains("reason"), "{body}");
    }
    let (status, body) = web
        .post(
            &sam,
            "/api/v1/live/0000000000000000/end",
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(web.live(&sam).await.len(), 2);

    // The kill switch for one session.
    let why = "incident 12: unexpected config change";
    let (status, body) = web.post(&sam, &end_uri, json!({ "reason": why })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ended"], true, "{body}");
    assert_eq!(body["session"]["id"], live.id.as_str(), "{body}");
    let id = live.id.clone();
    let told = live.closed_by_gateway().await;
    assert_eq!(told, format!("terminated by security sam: {why}"));

    let state = tg.state_dir();
    let ev = audited(&state, "session_terminated", |e| e["outcome"] == "success").await;
    assert_eq!(ev["session_id"], id.as_str(), "{ev}");
    assert_eq!(ev["reason"], why, "{ev}");
    assert_eq!(ev["device"], "pump-12", "{ev}");
    assert_eq!(ev["principal"]["name"], "sam", "{ev}");
    assert_eq!(ev["detail"]["target"], "vendor acme/jdoe", "{ev}");
    let close = audited(&state, "session_close", |e| e["session_id"] == id.as_str()).await;
    assert_eq!(close["detail"]["end"], "terminated", "{close}");
    assert_eq!(close["reason"], told.as_str(), "{close}");

    // The other session runs on, alone in the list.
    other.echo(b"still here").await;
    assert!(
        eventually(Duration::from_secs(5), || tg.live_sessions() == 1).await,
        "the ended session left the registry"
    );
    let list = web.live(&sam).await;
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["id"], other.id.as_str());
    // Ending it again: it is gone.
    let (status, _) = web.post(&sam, &end_uri, json!({"reason": "again"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    tg.shutdown(Duration::from_millis(100)).await;
}

/// Locking a principal from the console ends that principal's live session (its client is told
/// the lock's reason) and no other, refuses new ones until unlocked; the locks list shows it;
/// unlocking works once; vendors get 403.
#[tokio::test]
async fn lock_and_unlock_from_the_console() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let mut tg = gateway(pki.clone()).await;
    let web = Web::new(&tg);
    let sam = identity(Kind::Security, "sam", None, &[]);
    let vendor_id = identity(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let jdoe = tg.client(
        &pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]),
        Transport::Tcp,
    );
    let kim = tg.client(
        &pki.person(Kind::Vendor, "kim", Some("acme"), &[]),
        Transport::Tcp,
    );
    let live = Live::open(&jdoe, "pump-12").await;
    let mut other = Live::open(&kim, "pump-12").await;

    let target = json!({"kind": "principal", "value": "acme/jdoe"});
    // Vendors may not lock, list or unlock.
    let (status, body) = web
        .post(
            &vendor_id,
            "/api/v1/locks",
            json!({"target": target, "reason": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = web
        .post(&vendor_id, "/api/v1/locks", json!({"nonsense": 1}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = web.get(&vendor_id, "/api/v1/locks").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let state = tg.state_dir();
    audited(&state, "lock", |e| e["outcome"] == "denied").await;

    // A reason is required; the target must be a known kind.
    let (status, body) = web
        .post(
            &sam,
            "/api/v1/locks",
            json!({"target": target, "reason": " "}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = web
        .post(
            &sam,
            "/api/v1/locks",
            json!({"target": {"kind": "planet", "value": "mars"}, "reason": "r"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("principal, device or org"));

    let (status, body) = web
        .post(
            &sam,
            "/api/v1/locks",
            json!({"target": target, "reason": "investigating", "ttl": "2h"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ended_sessions"], 1, "{body}");
    assert_eq!(body["lock"]["target"], target, "{body}");
    assert!(body["lock"]["until"].is_string(), "{body}");
    assert_eq!(
        live.closed_by_gateway().await,
        "locked: investigating (by security sam)"
    );
    other.echo(b"kim is not locked").await;

    let (status, body) = web.get(&sam, "/api/v1/locks").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let locks = body["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 1, "{body}");
    assert_eq!(locks[0]["target"], target);
    assert_eq!(locks[0]["reason"], "investigating");
    assert_eq!(locks[0]["by"], "security sam");

    // Locked out until unlocked.
    assert!(jdoe.open("pump-12", false, None).await.is_err());
    // The principal's value may be percent-encoded (as a page does) or not.
    let uri = "/api/v1/locks/principal/acme/jdoe";
    let (status, body) = web.call(&vendor_id, Method::DELETE, uri, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = web.call(&sam, Method::DELETE, uri, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, body) = web.get(&sam, "/api/v1/locks").await;
    assert_eq!(body["locks"], json!([]), "{body}");
    let encoded = "/api/v1/locks/principal/acme%2Fjdoe";
    let (status, body) = web.call(&sam, Method::DELETE, encoded, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    audited(&state, "unlock", |e| e["outcome"] == "success").await;
    let mut again = Live::open(&jdoe, "pump-12").await;
    again.echo(b"back").await;

    // An org lock ends every session of the org.
    let (status, body) = web
        .post(
            &sam,
            "/api/v1/locks",
            json!({"target": {"kind": "org", "value": "acme"}, "reason": "all of acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ended_sessions"], 2, "{body}");
    let (status, _) = web
        .call(&sam, Method::DELETE, "/api/v1/locks/org/acme", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    tg.shutdown(Duration::from_millis(100)).await;
}

/// Approvers approve and deny access requests from the console with the CLI's rules (no
/// self-approval, a reason to deny); requesters see their own; vendors get 403; security sees
/// every device and who may reach it.
#[tokio::test]
async fn requests_and_devices_from_the_console() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let mut tg = gateway(pki.clone()).await;
    let web = Web::new(&tg);
    let sam = identity(Kind::Security, "sam", None, &[]);
    let vendor_id = identity(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let alice_id = identity(Kind::Clinician, "alice", None, &["icu"]);
    let bob = identity(Kind::Clinician, "bob", None, &["icu"]);
    let jdoe = tg.client(
        &pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]),
        Transport::Tcp,
    );
    let alice = tg.client(
        &pki.person(Kind::Clinician, "alice", None, &["icu"]),
        Transport::Tcp,
    );
    let ask = |device: &str| AccessOp::Request {
        device: device.into(),
        reason: format!("work on {device}"),
        duration_secs: 3600,
        start_unix: None,
    };
    let id_of = |answer: ward_client::AccessAnswer| match answer {
        ward_client::AccessAnswer::Reply(reply) => match *reply {
            AccessReply::Request { request } => request.id,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let vendor_req = id_of(jdoe.access(ask("pump-99")).await.unwrap());
    let alice_req = id_of(alice.access(ask("monitor-7")).await.unwrap());

    // Approvers see what they may approve; the requester sees their own.
    let (status, body) = web.get(&bob, "/api/v1/requests").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&vendor_req.as_str()) && ids.contains(&alice_req.as_str()),
        "{body}"
    );
    assert_eq!(body["me"]["name"], "bob", "{body}");
    let first = &body["requests"][0];
    assert_eq!(first["state_now"], "pending", "{body}");

    // Vendors get 403 on every one of these endpoints.
    for uri in [
        "/api/v1/requests",
        "/api/v1/devices",
        "/api/v1/locks",
        "/api/v1/live",
    ] {
        let (status, body) = web.get(&vendor_id, uri).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {body}");
    }
    let approve = format!("/api/v1/requests/{vendor_req}/approve");
    let (status, _) = web.post(&vendor_id, &approve, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let deny = format!("/api/v1/requests/{vendor_req}/deny");
    let (status, _) = web.post(&vendor_id, &deny, json!({"reason": "no"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // No self-approval: the service's own refusal.
    let own = format!("/api/v1/requests/{alice_req}/approve");
    let (status, body) = web.post(&alice_id, &own, json!({"reason": "me"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot approve or deny your own request"),
        "{body}"
    );
    let own_deny = format!("/api/v1/requests/{alice_req}/deny");
    let (status, _) = web
        .post(&alice_id, &own_deny, json!({"reason": "me"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Another approver approves: a grant.
    let (status, body) = web
        .post(&bob, &own, json!({"reason": "covered by ticket 5"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["request"]["id"], alice_req.as_str(), "{body}");
    assert_eq!(body["request"]["state_now"], "approved", "{body}");
    assert_eq!(body["request"]["approvals"], json!(["bob"]), "{body}");
    assert_eq!(body["grant"]["device"], "monitor-7", "{body}");
    let state = tg.state_dir();
    audited(&state, "access_approve", |e| {
        e["outcome"] == "success" && e["detail"]["request"] == alice_req.as_str()
    })
    .await;

    // Denying needs a reason.
    let (status, body) = web.post(&bob, &deny, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("reason"), "{body}");
    let (status, body) = web.post(&bob, &deny, json!({"reason": "not today"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["request"]["state_now"], "denied", "{body}");
    audited(&state, "access_deny", |e| e["reason"] == "not today").await;
    // The approve body is optional.
    let (status, body) = web
        .call(
            &bob,
            Method::POST,
            "/api/v1/requests/req-nope/approve",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("req-nope"),
        "{body}"
    );
    // Unknown ids are refused by the service.
    let (status, _) = web
        .post(&bob, "/api/v1/requests/req-nope/approve", json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The requester sees their own (all states with ?all=true).
    let (status, body) = web.get(&alice_id, "/api/v1/requests?all=true").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mine = body["requests"].as_array().unwrap();
    assert!(
        mine.iter()
            .any(|r| r["id"] == alice_req.as_str() && r["state_now"] == "approved"),
        "{body}"
    );
    let (status, _) = web.get(&alice_id, "/api/v1/requests?all=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Security sees every configured device and who may reach it.
    let (status, body) = web.get(&sam, "/api/v1/devices").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let devices = body["devices"].as_array().unwrap();
    let ids: Vec<&str> = devices.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["pump-12", "pump-99", "monitor-7"], "{body}");
    let reach = |id: &str| -> Vec<(String, String)> {
        devices.iter().find(|d| d["id"] == id).unwrap()["reach"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["via"].as_str().unwrap().to_owned(),
                    r["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        reach("pump-12"),
        vec![("rule".to_string(), "acme-maintains-its-pumps".to_string())]
    );
    assert_eq!(
        reach("pump-99"),
        vec![("request".to_string(), "pump-maintenance".to_string())]
    );
    let monitor = reach("monitor-7");
    assert_eq!(
        monitor[0],
        ("request".to_string(), "icu-console".to_string())
    );
    assert_eq!(monitor[1].0, "grant", "the approved grant: {monitor:?}");
    let pump12 = devices.iter().find(|d| d["id"] == "pump-12").unwrap();
    assert_eq!(pump12["reach"][0]["who"]["org"], "acme", "{pump12}");
    assert_eq!(pump12["protocol"], "raw");

    // A clinician sees the listing `ward devices` gives them.
    let (status, body) = web.get(&alice_id, "/api/v1/devices").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["monitor-7"], "{body}");
    tg.shutdown(Duration::from_millis(100)).await;
}

/// CLI parity: `ward live` and `ward end` (the `Live` frame) go through the same live service:
/// the same listing, the same refusals, and the same end the client is told.
#[tokio::test]
async fn ward_live_and_ward_end_over_the_wire() {
    use ward_client::AccessAnswer;
    use ward_core::frame::LiveOp;
    init_logs();
    let pki = Arc::new(Pki::new());
    let mut tg = gateway(pki.clone()).await;
    let jdoe = tg.client(
        &pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]),
        Transport::Tcp,
    );
    let sam = tg.client(
        &pki.person(Kind::Security, "sam", None, &[]),
        Transport::Tcp,
    );
    let live = Live::open(&jdoe, "pump-12").await;

    let lines = match sam.live(LiveOp::List).await.unwrap() {
        AccessAnswer::Lines(l) => l,
        other => panic!("{other:?}"),
    };
    let rows: Vec<Value> = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], live.id.as_str());
    assert_eq!(rows[0]["principal"], "vendor acme/jdoe");
    assert_eq!(rows[0]["bytes_up"], 5);

    let err = jdoe.live(LiveOp::List).await.unwrap_err().to_string();
    assert!(err.contains("security"), "{err}");
    let end = |reason: &str| LiveOp::End {
        session: live.id.clone(),
        reason: reason.into(),
    };
    assert!(jdoe.live(end("mine")).await.is_err());
    assert!(sam.live(end(" ")).await.is_err(), "a reason is required");
    let msg = match sam.live(end("incident 3")).await.unwrap() {
        AccessAnswer::Message(m) => m,
        other => panic!("{other:?}"),
    };
    assert!(
        msg.contains(&live.id) && msg.contains("incident 3"),
        "{msg}"
    );
    assert_eq!(
        live.closed_by_gateway().await,
        "terminated by security sam: incident 3"
    );
    tg.shutdown(Duration::from_millis(100)).await;
}
