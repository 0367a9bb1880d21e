//! Issue 16: the web console's JSON API, in process (`Gateway::web_router`, no sockets): every
//! endpoint refuses an anonymous caller and a vendor, state-changing requests need the CSRF
//! token, and the session search, session detail, audit log and overview answer from the
//! session index and the audit log — paginated, filtered, text inside recordings found, a
//! recording changed after it was indexed never shown as `ok`.
//!
//! The gateway's state dir is prepared before it starts: recordings signed with its key, which
//! crash recovery indexes at start (the path a store's recordings take into the index).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use ward_ca::{Clock, Identity, Kind, SystemClock};
use ward_recording::{CheckpointPolicy, Direction, Encoder, EndInfo, SessionMeta, Signer};
use ward_server::web::ConnInfo;
use ward_tests::*;

/// How many recordings the fixture holds.
const N: u32 = 60;
/// The text only one recording holds (device → client).
const NEEDLE: &str = "needle-7f3a in the haystack";
/// The recording that holds it.
const NEEDLE_AT: u32 = 17;

fn sid(n: u32) -> String {
    format!("{n:016x}")
}

/// Recording `n`: even ones by vendor acme/jdoe on pump-1, odd ones by vendor globex/kim on pacs;
/// one an hour, the newest an hour ago; every fifth terminated, the rest closed by the client.
fn meta(n: u32, now_ms: i64) -> (SessionMeta, EndInfo) {
    let (name, org, device, protocol) = if n % 2 == 0 {
        ("jdoe", "acme", "pump-1", "telnet")
    } else {
        ("kim", "globex", "pacs", "raw")
    };
    let started = now_ms - i64::from(N + 1 - n) * 3_600_000;
    let meta = SessionMeta {
        session_id: sid(n),
        principal_kind: "vendor".into(),
        principal_name: name.into(),
        principal_org: Some(org.into()),
        cert_serial: "02".into(),
        source: "127.0.0.1:40000".into(),
        device: device.into(),
        device_addr: "127.0.0.1:4000".into(),
        protocol: protocol.into(),
        rule: "r".into(),
        transport: "quic".into(),
        break_glass: n % 10 == 3,
        started_unix_ms: started,
        recipients: Vec::new(),
        age_header: None,
    };
    let end = EndInfo {
        ended_unix_ms: started + 60_000,
        reason: if n % 5 == 0 {
            "terminated by sam: test".into()
        } else {
            "client closed".into()
        },
        bytes_up: 0,
        bytes_down: 0,
    };
    (meta, end)
}

fn write_recording(dir: &Path, signer: &Arc<Signer>, n: u32, now_ms: i64) {
    let (meta, mut end) = meta(n, now_ms);
    let up = format!("show status {n}\r\n").into_bytes();
    let down = if n == NEEDLE_AT {
        NEEDLE.as_bytes().to_vec()
    } else {
        format!("status of session {n}: ok\r\n").into_bytes()
    };
    end.bytes_up = up.len() as u64;
    end.bytes_down = down.len() as u64;
    let mut out = Vec::new();
    let mut enc =
        Encoder::start(&meta, signer.clone(), CheckpointPolicy::default(), &mut out).unwrap();
    enc.data(Direction::Up, 1_000, &up, &mut out);
    enc.data(Direction::Down, 2_000, &down, &mut out);
    enc.finish(3_000, &end, &mut out);
    std::fs::write(
        dir.join(ward_server::RECORDINGS_DIR)
            .join(format!("{}.wrec", sid(n))),
        out,
    )
    .unwrap();
}

/// A gateway whose state dir holds the fixture's recordings, with an admin user `sally`
/// (password + TOTP). Returns the gateway, its state dir, and sally's password and TOTP secret.
async fn gateway() -> (TestGateway, PathBuf, String, ward_core::totp::TotpSecret) {
    let pki = Arc::new(Pki::new());
    let state = pki
        .dir
        .path()
        .join(format!("state-{}", rand::random::<u32>()));
    std::fs::create_dir_all(state.join(ward_server::RECORDINGS_DIR)).unwrap();
    let signer = ward_server::gateway::load_or_create_signer(&state).unwrap();
    let now_ms = now().unix_timestamp() * 1000;
    for n in 1..=N {
        write_recording(&state, &signer, n, now_ms);
    }
    let device = echo_device().await;
    let config = pki.dir.path().join("ward-web.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nca = \".\"\ncert = \"gateway.crt\"\nkey = \"gateway.key\"\nstate_dir = \"{}\"\n\n\
             [[device]]\nid = \"pump-1\"\naddress = \"{device}\"\nprotocol = \"telnet\"\nlabels = {{ vendor = \"acme\", class = \"infusion\" }}\n\n\
             [[device]]\nid = \"pacs\"\naddress = \"{device}\"\nprotocol = \"raw\"\nlabels = {{ vendor = \"globex\" }}\n\n{ACME_RULES}",
            state.display()
        ),
    )
    .unwrap();
    let cfg = ward_server::gateway::load_config(&config).unwrap();
    let gw = ward_server::gateway::Gateway::start(cfg, Arc::new(SystemClock))
        .await
        .unwrap();
    let tg = TestGateway {
        gw: Some(gw),
        pki,
        config,
    };
    // An admin user (TOTP always) for the cookie sign-in.
    use ward_store::users::UserStore;
    let db = ward_store::store::SqliteStore::open(&state).unwrap();
    let sally = ward_server::jit::NewUser {
        must_change: false,
        ..ward_server::jit::NewUser::new("sally", "admin")
    };
    let created = ward_server::jit::create_user(
        &db,
        &ward_core::config::LoginConfig::default(),
        sally,
        SystemClock.now(),
    )
    .unwrap();
    let secret = db.user("sally").unwrap().unwrap().totp_secret.unwrap();
    (
        tg,
        state,
        created.password,
        ward_core::totp::TotpSecret::from_base32(&secret).unwrap(),
    )
}

fn identity(kind: Kind, name: &str, org: Option<&str>) -> Identity {
    let t = now();
    Identity {
        trust_domain: "ward.test".into(),
        kind,
        name: name.into(),
        org: org.map(str::to_owned),
        roles: Vec::new(),
        serial: format!("{:x}", rand::random::<u32>()),
        not_before: t - time::Duration::hours(1),
        not_after: t + time::Duration::days(1),
        uri: format!("spiffe://ward.test/{}/{name}", kind.as_str()),
    }
}

const PEER: &str = "127.0.0.1:50000";

/// A request as `who` would send it: a client certificate on the connection, which the auth
/// middleware resolves to the caller handlers take.
fn request(
    method: Method,
    uri: &str,
    who: Option<&Identity>,
    body: Option<Value>,
) -> Request<Body> {
    let peer: SocketAddr = PEER.parse().unwrap();
    let mut b = Request::builder().method(method).uri(uri);
    b = b.extension(ConnInfo {
        peer,
        certificate: who.cloned(),
    });
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

/// The console's router over a gateway: one per test, as the gateway serves one (its browser
/// sessions and CSRF key live in it).
fn router(tg: &TestGateway) -> axum::Router {
    tg.gw.as_ref().unwrap().web_router()
}

async fn send(web: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = web.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

async fn get(web: &axum::Router, uri: &str, who: &Identity) -> Value {
    let (status, body) = send(web, request(Method::GET, uri, Some(who), None)).await;
    assert_eq!(status, StatusCode::OK, "GET {uri}: {body}");
    body
}

fn ids(page: &Value) -> Vec<String> {
    page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every route of the API, with its parameters filled in.
/// Every route as (method, a URI to call, the route as `ROUTES` spells it).
fn endpoints() -> Vec<(Method, String, &'static str)> {
    ward_server::web::openapi::ROUTES
        .iter()
        .map(|(m, p)| {
            let path = p
                .replace("{id}", &sid(1))
                .replace("{kind}", "principal")
                .replace("{value}", "vendor%20acme%2Fjdoe")
                .replace("{device}", "pump-1")
                .replace("{name}", "hospital");
            // What the export needs before it gets to the role check.
            let query = if path.ends_with("/export") {
                "?format=json"
            } else {
                ""
            };
            (
                Method::from_bytes(m.as_bytes()).unwrap(),
                format!("/api/v1{path}{query}"),
                *p,
            )
        })
        .collect()
}

/// The endpoints this file's area serves: their refusals' wording is checked too.
const INDEX_AREA: &[&str] = &[
    "/api/v1/sessions",
    "/api/v1/sessions/0000000000000001",
    "/api/v1/audit",
    "/api/v1/overview",
];

/// What a vendor may do in the console: see who it is, sign out, and use its own devices (My
/// devices, access requests, the web terminal). Everything else is for security staff and
/// approvers.
const VENDOR_MAY: &[(&str, &str)] = &[
    ("GET", "/whoami"),
    ("POST", "/signout"),
    ("GET", "/my/devices"),
    ("POST", "/my/requests"),
    ("GET", "/terminal/{device}"),
];

#[tokio::test]
async fn every_endpoint_refuses_anonymous_callers_and_vendors() {
    let (tg, _state, _, _) = gateway().await;
    let web = router(&tg);
    let vendor = identity(Kind::Vendor, "jdoe", Some("acme"));
    // A certificate caller's CSRF token, as a script gets it (state-changing requests carry it,
    // so that what refuses the vendor below is the role check).
    let whoami = get(&web, "/api/v1/whoami", &vendor).await;
    let vendor_csrf = whoami["csrf"].as_str().unwrap().to_string();
    let public = ward_server::web::openapi::PUBLIC;
    for (method, uri, route) in endpoints() {
        let is_public = public
            .iter()
            .any(|(m, p)| *m == method.as_str() && route == *p);
        let body = (method != Method::GET).then(|| serde_json::json!({}));
        let (anon, why) = send(&web, request(method.clone(), &uri, None, body.clone())).await;
        let mut req = request(method.clone(), &uri, Some(&vendor), body);
        req.headers_mut()
            .insert("x-ward-csrf", vendor_csrf.parse().unwrap());
        let (as_vendor, why_v) = send(&web, req).await;
        if is_public {
            continue;
        }
        assert_eq!(
            anon,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} anonymous: {why}"
        );
        if !VENDOR_MAY.contains(&(method.as_str(), route)) {
            assert_eq!(
                as_vendor,
                StatusCode::FORBIDDEN,
                "{method} {uri} vendor: {why_v}"
            );
            assert!(
                !why_v["error"].as_str().unwrap().contains("CSRF"),
                "refused by the role check, not the token: {why_v}"
            );
        }
        if INDEX_AREA.contains(&uri.as_str()) {
            assert_eq!(anon, StatusCode::UNAUTHORIZED, "{method} {uri}: {why}");
            assert!(why["error"].as_str().unwrap().contains("sign in"), "{why}");
            assert_eq!(as_vendor, StatusCode::FORBIDDEN, "{method} {uri}: {why_v}");
            assert!(
                why_v["error"]
                    .as_str()
                    .unwrap()
                    .contains("security and admin"),
                "{why_v}"
            );
        }
    }
    // The OpenAPI document needs no sign-in, and documents every route.
    let (status, doc) = send(
        &web,
        request(Method::GET, "/api/v1/openapi.json", None, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    for (method, path) in ward_server::web::openapi::ROUTES {
        assert!(
            doc["paths"][path][method.to_lowercase()].is_object(),
            "{method} {path}"
        );
    }
    // A vendor's refusals are audited as the CLI's are.
    let state = tg.state_dir();
    let denied = || -> Vec<Value> {
        audit_events(&state)
            .into_iter()
            .filter(|e| e["event"] == "recording_listed" && e["outcome"] == "denied")
            .collect()
    };
    assert!(eventually(Duration::from_secs(10), || !denied().is_empty()).await);
    let denied = denied();
    assert_eq!(denied[0]["principal"]["name"], "jdoe");
}

#[tokio::test]
async fn sessions_are_paged_filtered_and_found_by_text_inside() {
    let (tg, _state, _, _) = gateway().await;
    let web = router(&tg);
    let sam = identity(Kind::Security, "sam", None);
    let one = get(&web, "/api/v1/sessions?per_page=25", &sam).await;
    let two = get(&web, "/api/v1/sessions?per_page=25&page=2", &sam).await;
    let three = get(&web, "/api/v1/sessions?per_page=25&page=3", &sam).await;
    assert_eq!(one["total"], N);
    assert_eq!(
        (one["page"].as_u64(), one["per_page"].as_u64()),
        (Some(1), Some(25))
    );
    assert_eq!(one["has_more"], true);
    assert_eq!(three["has_more"], false);
    let (a, b, c) = (ids(&one), ids(&two), ids(&three));
    assert_eq!((a.len(), b.len(), c.len()), (25, 25, 10));
    assert_eq!(a[0], sid(N), "newest first");
    assert!(a.iter().all(|id| !b.contains(id)), "page 2 differs");
    let all: Vec<String> = a.into_iter().chain(b).chain(c).collect();
    let expected: Vec<String> = (1..=N).rev().map(sid).collect();
    assert_eq!(all, expected);
    let first = &one["sessions"][0];
    assert_eq!(first["verification"], "ok");
    assert_eq!(first["principal"], "vendor acme/jdoe");
    assert!(first["start"].as_str().unwrap().ends_with('Z'));

    // Filters.
    let by_device = get(&web, "/api/v1/sessions?device=pacs&per_page=200", &sam).await;
    assert_eq!(by_device["total"], N / 2);
    assert!(by_device["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["device"] == "pacs"));
    let by_principal = get(&web, "/api/v1/sessions?principal=acme%2Fjdoe", &sam).await;
    assert_eq!(by_principal["total"], N / 2);
    assert_eq!(
        get(&web, "/api/v1/sessions?principal=kim&device=pump-1", &sam).await["total"],
        0
    );
    let ended = get(&web, "/api/v1/sessions?end_reason=terminated", &sam).await;
    assert_eq!(ended["total"], N / 5);
    assert!(ended["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["end_reason"] == "terminated by sam: test"));
    assert_eq!(
        get(
            &web,
            "/api/v1/sessions?org=globex&end_reason=terminated",
            &sam
        )
        .await["total"],
        N / 10
    );
    // Half-way between two sessions (one an hour): the 9 newest started after it, whichever
    // second the recordings were written in.
    let since = (now() - time::Duration::minutes(9 * 60 + 30)).unix_timestamp();
    assert_eq!(
        get(&web, &format!("/api/v1/sessions?since={since}"), &sam).await["total"],
        9
    );
    assert_eq!(
        get(&web, "/api/v1/sessions?verification=failed", &sam).await["total"],
        0
    );

    // Text inside a recording.
    let found = get(&web, "/api/v1/sessions?grep=needle-7f3a", &sam).await;
    assert_eq!(ids(&found), [sid(NEEDLE_AT)], "{found}");
    assert_eq!(found["scanned"], N);
    assert_eq!(found["has_more"], false);
    let narrowed = get(&web, "/api/v1/sessions?grep=needle-7f3a&device=pacs", &sam).await;
    assert_eq!(ids(&narrowed), [sid(NEEDLE_AT)]);
    assert_eq!(
        narrowed["scanned"],
        N / 2,
        "only the index's candidates are read"
    );
    let none = get(
        &web,
        "/api/v1/sessions?grep=needle-7f3a&device=pump-1",
        &sam,
    )
    .await;
    assert!(ids(&none).is_empty());

    // Bad parameters: 400 saying what to write.
    for bad in [
        "/api/v1/sessions?verification=great",
        "/api/v1/sessions?since=last-tuesday",
        "/api/v1/sessions?page=x",
        "/api/v1/sessions?op=POST",
        "/api/v1/sessions?colour=red",
    ] {
        let (status, body) = send(&web, request(Method::GET, bad, Some(&sam), None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().len() > 10, "{body}");
    }

    // Each listing is audited as `ward sessions`' is.
    let listed: Vec<Value> = audit_events(&tg.state_dir())
        .into_iter()
        .filter(|e| e["event"] == "recording_listed" && e["outcome"] == "success")
        .collect();
    assert!(listed.len() >= 10, "{}", listed.len());
    assert!(listed.iter().any(|e| e["detail"]["grep"] == true));
    assert_eq!(listed[0]["principal"]["name"], "sam");
}

#[tokio::test]
async fn a_recording_changed_after_it_was_indexed_is_never_listed_ok() {
    let (tg, state, _, _) = gateway().await;
    let web = router(&tg);
    let sam = identity(Kind::Security, "sam", None);
    let page = get(&web, "/api/v1/sessions?per_page=3", &sam).await;
    assert_eq!(page["sessions"][0]["verification"], "ok");
    // One byte of the newest recording flipped, and another one deleted.
    let path = state
        .join(ward_server::RECORDINGS_DIR)
        .join(format!("{}.wrec", sid(N)));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(
        state
            .join(ward_server::RECORDINGS_DIR)
            .join(format!("{}.wrec", sid(N - 1))),
    )
    .unwrap();
    let page = get(&web, "/api/v1/sessions?per_page=3", &sam).await;
    let v: Vec<&str> = page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["verification"].as_str().unwrap())
        .collect();
    assert!(v[0].starts_with("FAILED"), "{v:?}");
    assert!(
        v[1].starts_with("FAILED") && v[1].contains("missing"),
        "{v:?}"
    );
    assert_eq!(v[2], "ok");
    let detail = get(&web, &format!("/api/v1/sessions/{}", sid(N)), &sam).await;
    assert!(
        detail["session"]["verification"]
            .as_str()
            .unwrap()
            .starts_with("FAILED"),
        "{detail}"
    );
}

#[tokio::test]
async fn the_detail_names_its_audit_events_and_the_audit_log_filters_and_verifies() {
    let (tg, _state, _, _) = gateway().await;
    let web = router(&tg);
    let sam = identity(Kind::Security, "sam", None);
    let id = sid(NEEDLE_AT);
    let detail = get(&web, &format!("/api/v1/sessions/{id}"), &sam).await;
    assert_eq!(detail["session"]["id"], id.as_str());
    assert_eq!(detail["session"]["device"], "pacs");
    assert_eq!(detail["terminal"], true, "raw is played as a terminal");
    let events = detail["audit"].as_array().unwrap();
    assert!(!events.is_empty(), "{detail}");
    assert!(
        events.iter().all(|e| e["session_id"] == id.as_str()),
        "{detail}"
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "recording_listed" && e["principal"]["name"] == "sam"));
    let pump = get(&web, &format!("/api/v1/sessions/{}", sid(2)), &sam).await;
    assert_eq!(pump["terminal"], true);
    for (uri, want) in [
        ("/api/v1/sessions/00000000000000ff", StatusCode::NOT_FOUND),
        ("/api/v1/sessions/..%2Fetc", StatusCode::BAD_REQUEST),
    ] {
        let (status, body) = send(&web, request(Method::GET, uri, Some(&sam), None)).await;
        assert_eq!(status, want, "{uri}: {body}");
    }

    // The audit log: newest first, filtered, paginated, its chain verified.
    let log = get(&web, "/api/v1/audit?per_page=5", &sam).await;
    assert_eq!(log["chain"]["ok"], true, "{}", log["chain"]);
    assert!(log["chain"]["checkpoints"].as_u64().unwrap() > 0);
    assert!(log["total"].as_u64().unwrap() > 5);
    assert_eq!(log["events"].as_array().unwrap().len(), 5);
    let times: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["time"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let second = get(&web, "/api/v1/audit?per_page=5&page=2", &sam).await;
    assert_ne!(second["events"][0], log["events"][0]);
    let listed = get(
        &web,
        &format!("/api/v1/audit?event=recording_listed&session={id}"),
        &sam,
    )
    .await;
    assert!(listed["total"].as_u64().unwrap() >= 1, "{listed}");
    assert!(listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event"] == "recording_listed" && e["session_id"] == id.as_str()));
    let started = get(&web, "/api/v1/audit?event=gateway_start", &sam).await;
    assert_eq!(started["total"], 1);
    let by_sam = get(&web, "/api/v1/audit?principal=sam&severity=info", &sam).await;
    assert!(by_sam["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["principal"]["name"] == "sam" && e["severity"] == "info"));
    let future = (now() + time::Duration::days(1)).unix_timestamp();
    assert_eq!(
        get(&web, &format!("/api/v1/audit?since={future}"), &sam).await["total"],
        0
    );
}

#[tokio::test]
async fn the_overview_counts_sessions_by_org_class_and_day() {
    let (tg, _state, _, _) = gateway().await;
    let web = router(&tg);
    let admin = identity(Kind::Admin, "ada", None);
    let o = get(&web, "/api/v1/overview?days=5", &admin).await;
    let days = o["days"].as_array().unwrap();
    assert_eq!(days.len(), 5);
    let sum = |series: &Value, key: &str| -> u64 {
        series
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["key"] == key)
            .flat_map(|s| s["counts"].as_array().unwrap().clone())
            .map(|c| c.as_u64().unwrap())
            .sum()
    };
    // 60 sessions one an hour up to an hour ago: all within 4 days.
    assert_eq!(sum(&o["sessions_by_org"], "acme"), u64::from(N / 2));
    assert_eq!(sum(&o["sessions_by_org"], "globex"), u64::from(N / 2));
    assert_eq!(
        sum(&o["sessions_by_class"], "infusion"),
        u64::from(N / 2),
        "the class label"
    );
    assert_eq!(
        sum(&o["sessions_by_class"], "raw"),
        u64::from(N / 2),
        "else the protocol"
    );
    let bg: u64 = o["break_glass"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(bg, 6);
    assert_eq!(o["busiest_devices"].as_array().unwrap().len(), 2);
    assert!(o["failing_verification"].as_array().unwrap().is_empty());
    assert_eq!(o["denials"].as_array().unwrap().len(), 5);
    let (status, _) = send(
        &web,
        request(
            Method::GET,
            "/api/v1/overview?days=1000",
            Some(&admin),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A state-changing request with the session cookie but without `X-Ward-CSRF` is refused, as is
/// a cross-site one; with the token it gets past the check.
#[tokio::test]
async fn state_changing_requests_need_the_csrf_token() {
    let (tg, _state, password, secret) = gateway().await;
    let code = ward_core::totp::code_at(&secret, SystemClock.now().unix_timestamp());
    let signin = serde_json::json!({"user": "sally", "password": password, "totp": code});
    let router = tg.gw.as_ref().unwrap().web_router();
    let peer: SocketAddr = PEER.parse().unwrap();
    let resp = router
        .clone()
        .oneshot(
            Request::post("/api/v1/signin")
                .header("content-type", "application/json")
                .extension(ConnInfo {
                    peer,
                    certificate: None,
                })
                .body(Body::from(signin.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "sign-in");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("ward_session="))
        .expect("a ward_session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let whoami = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let whoami: Value = serde_json::from_slice(&whoami).unwrap();
    let csrf = whoami["csrf"].as_str().unwrap().to_string();
    let lock =
        serde_json::json!({"target": {"kind": "device", "value": "pacs"}, "reason": "csrf test"});
    let post = |csrf: Option<&str>, site: Option<&str>| {
        let mut b = Request::post("/api/v1/locks")
            .header("content-type", "application/json")
            .header("cookie", &cookie)
            .extension(ConnInfo {
                peer,
                certificate: None,
            });
        if let Some(t) = csrf {
            b = b.header("x-ward-csrf", t);
        }
        if let Some(s) = site {
            b = b.header("sec-fetch-site", s);
        }
        b.body(Body::from(lock.to_string())).unwrap()
    };
    let without = router.clone().oneshot(post(None, None)).await.unwrap();
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    let wrong = router
        .clone()
        .oneshot(post(Some("not-the-token"), None))
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let cross = router
        .clone()
        .oneshot(post(Some(&csrf), Some("cross-site")))
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    let with = router
        .clone()
        .oneshot(post(Some(&csrf), None))
        .await
        .unwrap();
    assert_ne!(with.status(), StatusCode::FORBIDDEN);
    // The cookie alone reads (GET needs no token).
    let read = router
        .oneshot(
            Request::get("/api/v1/sessions?per_page=1")
                .header("cookie", &cookie)
                .extension(ConnInfo {
                    peer,
                    certificate: None,
                })
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
}
