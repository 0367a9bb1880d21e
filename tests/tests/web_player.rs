//! The web console's session player, hex view, export downloads and live watch (issue 16),
//! in process through `Gateway::web_router()`:
//!
//! - a telnet-like session (a pump console that negotiates, prints a coloured prompt and answers
//!   `status`) is recorded; the screen at its end holds what the device printed, the screen at
//!   t = 0 does not; the keystrokes hold `status⏎`; the prompt's colour is a class, never an
//!   escape; the hex view of the client's direction decodes to the bytes it sent;
//! - many seeks are one audit event (`recording_replayed`), the download one
//!   (`recording_exported`), and the asciicast download is byte for byte `ward export`'s;
//! - a live session's watch stream shows a line the device prints within 1 s, then ends with
//!   the session; `session_watched` is audited;
//! - a vendor gets 403 everywhere, an unknown session 404, a malformed id 400.
//!
//! Loopback only; every wait bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::ServiceExt;
use ward_ca::{Identity, Kind, SystemClock};
use ward_client::Transport;
use ward_server::web::ConnInfo;
use ward_tests::process::{run_ok, ward};
use ward_tests::*;

const LIMIT: Duration = Duration::from_secs(30);
const PROMPT: &[u8] = b"\x1b[1;32mpump>\x1b[0m ";

/// A telnet-like pump console: negotiates echo, greets, prints a green prompt, echoes what is
/// typed and answers `status` and `tick` (telling the test when each tick was written).
async fn pump_console() -> (SocketAddr, mpsc::UnboundedReceiver<(String, Instant)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut hello = b"\xff\xfb\x01\xff\xfb\x03Welcome to pump-7\r\n".to_vec();
                hello.extend_from_slice(PROMPT);
                s.write_all(&hello).await.unwrap();
                let (mut line, mut ticks, mut buf) = (Vec::new(), 0, [0u8; 256]);
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for &b in &buf[..n] {
                        if b != b'\r' && b != b'\n' {
                            line.push(b);
                            let _ = s.write_all(&[b]).await;
                            continue;
                        }
                        if line.is_empty() {
                            continue;
                        }
                        let mut out = b"\r\n".to_vec();
                        let tick = match line.as_slice() {
                            b"status" => {
                                out.extend_from_slice(b"rate 5 ml/h \x1b[31mALARM none\x1b[0m\r\n");
                                None
                            }
                            b"tick" => {
                                ticks += 1;
                                let t = format!("tick-{ticks}");
                                out.extend_from_slice(format!("{t}\r\n").as_bytes());
                                Some(t)
                            }
                            _ => {
                                out.extend_from_slice(b"unknown command\r\n");
                                None
                            }
                        };
                        out.extend_from_slice(PROMPT);
                        line.clear();
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        if let Some(t) = tick {
                            let _ = tx.send((t, Instant::now()));
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn identity(kind: Kind, name: &str, org: Option<&str>) -> Identity {
    let now = now();
    Identity {
        trust_domain: "ward.test".into(),
        kind,
        name: name.into(),
        org: org.map(Into::into),
        roles: Vec::new(),
        serial: format!("{:016x}", rand::random::<u64>()),
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::hours(1),
        uri: format!("spiffe://ward.test/{}/{name}", kind.as_str()),
    }
}

/// A request from `who`, as the listener hands it on: the connection's validated client
/// certificate (the authentication middleware resolves the caller from it).
fn request(path: &str, who: &Identity) -> Request<Body> {
    let mut req = Request::builder().uri(path).body(Body::empty()).unwrap();
    req.extensions_mut().insert(ConnInfo {
        peer: "127.0.0.1:50000".parse().unwrap(),
        certificate: Some(who.clone()),
    });
    req
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn get(router: &axum::Router, path: &str, who: &Identity) -> Answer {
    let resp = tokio::time::timeout(LIMIT, router.clone().oneshot(request(path, who)))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// The text of a Screen JSON, one line per row.
fn screen_text(screen: &serde_json::Value) -> String {
    screen["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            line.as_array()
                .unwrap()
                .iter()
                .map(|run| run["text"].as_str().unwrap().to_string())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The recordings in `state` (session ids), sorted by modification time.
fn recordings(state: &Path) -> Vec<String> {
    let dir = state.join(ward_server::RECORDINGS_DIR);
    let mut found: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let id = name.strip_suffix(".wrec")?.to_string();
                    Some((e.metadata().ok()?.modified().ok()?, id))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.into_iter().map(|(_, id)| id).collect()
}

async fn read_until(s: &mut TcpStream, seen: &mut Vec<u8>, what: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(seen).contains(what) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {what:?} in {:?}", String::from_utf8_lossy(seen)))
            .unwrap();
        assert!(
            n > 0,
            "closed before {what:?}: {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

struct Setup {
    tg: TestGateway,
    state: PathBuf,
    router: axum::Router,
    ticks: mpsc::UnboundedReceiver<(String, Instant)>,
    vendor: PathBuf,
    security: Identity,
}

async fn setup() -> Setup {
    init_logs();
    let (console, ticks) = pump_console().await;
    let pki = Arc::new(Pki::new());
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let tg = start_gateway(
        pki,
        &[DeviceSpec::new(
            "pump-7",
            console,
            "telnet",
            &[("vendor", "acme")],
        )],
        ACME_RULES,
        "",
        Arc::new(SystemClock),
    )
    .await;
    let state = tg.state_dir();
    let router = tg.gw.as_ref().unwrap().web_router();
    Setup {
        tg,
        state,
        router,
        ticks,
        vendor,
        security: identity(Kind::Security, "sam", None),
    }
}

/// A session through the gateway to the pump console: the local end of the forwarder.
async fn open_session(s: &Setup) -> (TcpStream, Vec<u8>) {
    let client = s.tg.client(&s.vendor, Transport::Quic);
    let local = forwarder(client, "pump-7").await;
    let mut conn = TcpStream::connect(local).await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut conn, &mut seen, "pump>").await;
    (conn, seen)
}

fn count(state: &Path, event: &str) -> usize {
    audit_events(state)
        .iter()
        .filter(|e| e["event"] == event)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_plays_seeks_shows_hex_and_downloads_as_ward_export_does() {
    let s = setup().await;
    let (mut conn, mut seen) = open_session(&s).await;
    conn.write_all(b"status\r\n").await.unwrap();
    read_until(&mut conn, &mut seen, "ALARM none").await;
    read_until(&mut conn, &mut seen, "ALARM none\x1b[0m\r\n\x1b[1;32mpump>").await;
    drop(conn);
    let gw = s.tg.gw.as_ref().unwrap();
    assert!(
        eventually(LIMIT, || gw.live_sessions() == 0).await,
        "the session ended"
    );
    let ids = recordings(&s.state);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    let sam = &s.security;
    let base = format!("/api/v1/sessions/{id}");

    // The timeline: a terminal session, the keystrokes printable.
    let tl = get(&s.router, &format!("{base}/timeline"), sam).await;
    assert_eq!(
        tl.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&tl.body)
    );
    let tl = tl.json();
    assert_eq!(tl["terminal"], true);
    assert_eq!(tl["verified"], true);
    assert_eq!(
        (tl["cols"].as_u64(), tl["rows"].as_u64()),
        (Some(80), Some(24))
    );
    assert_eq!(tl["up_bytes"], 8);
    let keys: String = tl["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["text"].as_str().unwrap())
        .collect();
    assert!(keys.contains("status⏎"), "{keys:?}");
    let duration = tl["duration_s"].as_f64().unwrap();
    assert!(duration > 0.0, "{tl}");
    assert!(!tl["marks"].as_array().unwrap().is_empty());

    // The screen at the end holds what the device printed; at t = 0, not yet.
    let end = get(&s.router, &format!("{base}/screen?t={duration}"), sam).await;
    assert_eq!(end.status, StatusCode::OK);
    let end = end.json();
    let text = screen_text(&end);
    assert!(
        text.contains("Welcome to pump-7")
            && text.contains("pump> status")
            && text.contains("rate 5 ml/h ALARM none"),
        "{text}"
    );
    // Telnet negotiation and escape sequences are not text; colours are classes.
    assert!(
        !text.contains('\u{fffd}') && !text.contains('\u{1b}'),
        "{text:?}"
    );
    let runs: Vec<(String, String)> = end["lines"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l.as_array().unwrap().iter())
        .map(|r| {
            (
                r["text"].as_str().unwrap().to_string(),
                r["cls"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        runs.contains(&("pump>".to_string(), "fg2 b".to_string())),
        "{runs:?}"
    );
    assert!(
        runs.contains(&("ALARM none".to_string(), "fg1".to_string())),
        "{runs:?}"
    );
    let start = get(&s.router, &format!("{base}/screen?t=0"), sam)
        .await
        .json();
    assert!(!screen_text(&start).contains("rate 5"), "{start}");
    assert_eq!(start["t"], 0.0);
    let bad_t = get(&s.router, &format!("{base}/screen?t=soon"), sam).await;
    assert_eq!(bad_t.status, StatusCode::BAD_REQUEST);
    assert!(bad_t.json()["error"].is_string());

    // The hex view of the client's direction is the bytes it sent.
    let hex = get(
        &s.router,
        &format!("{base}/hex?dir=up&offset=0&limit=4096"),
        sam,
    )
    .await
    .json();
    assert_eq!(hex["total"], 8);
    let sent: Vec<u8> = hex["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["hex"]
                .as_str()
                .unwrap()
                .split(' ')
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(sent, b"status\r\n");
    assert_eq!(hex["rows"][0]["ascii"], "status..");
    let down = get(&s.router, &format!("{base}/hex?dir=down&limit=16"), sam)
        .await
        .json();
    assert_eq!(down["rows"].as_array().unwrap().len(), 1);
    assert_eq!(
        down["rows"][0]["hex"].as_str().unwrap().get(..8),
        Some("ff fb 01")
    );

    // All of that was one replay in the audit log.
    assert_eq!(count(&s.state, "recording_replayed"), 1);

    // The asciicast download is what `ward export` writes.
    let cast = get(&s.router, &format!("{base}/export?format=asciicast"), sam).await;
    assert_eq!(
        cast.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&cast.body)
    );
    assert_eq!(
        cast.headers["content-disposition"],
        format!("attachment; filename=\"ward-{id}.cast\"").as_str()
    );
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("session.cast");
    let (state, id2, p) = (
        s.state.display().to_string(),
        id.clone(),
        path.display().to_string(),
    );
    tokio::task::spawn_blocking(move || {
        run_ok(&mut ward(&[
            "export",
            &id2,
            "--format",
            "asciicast",
            "--out",
            &p,
            "--state-dir",
            &state,
        ]))
    })
    .await
    .unwrap();
    assert_eq!(cast.body, std::fs::read(&path).unwrap());
    assert_eq!(count(&s.state, "recording_exported"), 1);
    let pcap = get(&s.router, &format!("{base}/export?format=pcap"), sam).await;
    assert_eq!(pcap.status, StatusCode::OK);
    assert_eq!(pcap.body.get(..4), Some(&[0xd4, 0xc3, 0xb2, 0xa1][..]));
    let raw = get(&s.router, &format!("{base}/export?format=raw&dir=up"), sam).await;
    assert_eq!(raw.body, b"status\r\n");
    assert!(raw.headers["content-disposition"]
        .to_str()
        .unwrap()
        .ends_with(".up.raw\""));
    let nope = get(&s.router, &format!("{base}/export?format=html"), sam).await;
    assert_eq!(nope.status, StatusCode::BAD_REQUEST);

    // A vendor: 403 everywhere, audited as refused.
    let jdoe = identity(Kind::Vendor, "jdoe", Some("acme"));
    for path in [
        format!("{base}/timeline"),
        format!("{base}/screen?t=1"),
        format!("{base}/hex?dir=up"),
        format!("{base}/export?format=asciicast"),
        format!("/api/v1/live/{id}/watch"),
    ] {
        let a = get(&s.router, &path, &jdoe).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            a.json()["error"].as_str().unwrap().contains("security"),
            "{path}"
        );
    }
    let denied = |event: &str| {
        audit_events(&s.state)
            .into_iter()
            .filter(|e| e["outcome"] == "denied" && e["event"] == event)
            .count()
    };
    // Refusals are written with the log's next batch.
    let all_denied = || {
        (
            denied("recording_replayed"),
            denied("recording_exported"),
            denied("session_watched"),
        ) == (3, 1, 1)
    };
    assert!(
        eventually(LIMIT, all_denied).await,
        "timeline, screen, hex; export; watch: each refusal audited"
    );

    // A recording that no longer verifies: refused unless forced, and forcing is audited.
    let path = s
        .state
        .join(ward_server::RECORDINGS_DIR)
        .join(format!("{id}.wrec"));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    // Another reviewer (the first one's player is kept for a few minutes).
    let kim = identity(Kind::Security, "kim", None);
    let refused = get(&s.router, &format!("{base}/timeline"), &kim).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let why = refused.json()["error"].as_str().unwrap().to_string();
    assert!(
        why.contains("fails verification") && why.contains("force=true"),
        "{why}"
    );
    let forced = get(&s.router, &format!("{base}/timeline?force=true"), &kim).await;
    assert_eq!(forced.status, StatusCode::OK);
    assert_eq!(forced.json()["verified"], false);
    let high = audit_events(&s.state)
        .into_iter()
        .filter(|e| e["event"] == "recording_replayed" && e["severity"] == "high")
        .count();
    assert_eq!(high, 1);
    let unforced = get(&s.router, &format!("{base}/export?format=json"), &kim).await;
    assert_eq!(unforced.status, StatusCode::BAD_REQUEST);

    // Unknown sessions: 404; not a session id: 400.
    for path in [
        "/api/v1/sessions/00000000deadbeef/timeline",
        "/api/v1/sessions/00000000deadbeef/screen?t=1",
        "/api/v1/sessions/00000000deadbeef/export?format=json",
        "/api/v1/live/00000000deadbeef/watch",
    ] {
        assert_eq!(
            get(&s.router, path, sam).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(
        get(&s.router, "/api/v1/sessions/not-hex/timeline", sam)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

/// Server-sent events read off a response body as they come: `(event, data, when)`.
fn sse_events(body: Body) -> Events {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = body;
        let mut text = String::new();
        loop {
            let frame =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
            let Some(Ok(frame)) = frame else { return };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            text.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let (mut event, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if !event.is_empty() && tx.send((event, data, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

type Events = mpsc::UnboundedReceiver<(String, String, Instant)>;

/// The next event, in time.
async fn next(events: &mut Events) -> (String, String, Instant) {
    tokio::time::timeout(LIMIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_is_watched_with_under_a_second_of_lag_and_the_watch_ends_with_it() {
    let mut s = setup().await;
    let (mut conn, mut seen) = open_session(&s).await;
    let id = {
        let mut ids = Vec::new();
        assert!(
            eventually(LIMIT, || {
                ids = recordings(&s.state);
                !ids.is_empty()
            })
            .await
        );
        ids.remove(0)
    };
    let resp = s
        .router
        .clone()
        .oneshot(request(&format!("/api/v1/live/{id}/watch"), &s.security))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut events = sse_events(resp.into_body());
    assert_eq!(count(&s.state, "session_watched"), 1);
    let watched = audit_events(&s.state)
        .into_iter()
        .find(|e| e["event"] == "session_watched")
        .unwrap();
    assert_eq!(watched["session_id"], id.as_str());
    assert_eq!(watched["outcome"], "success");

    // The first screen: the greeting, as it is now.
    let mut screen = String::new();
    while !screen.contains("Welcome to pump-7") {
        let (event, data, _) = next(&mut events).await;
        assert_eq!(event, "screen", "{data}");
        screen = screen_text(&serde_json::from_str(&data).unwrap());
    }

    // Each line the device prints is on the watcher's screen within a second.
    for round in 1..=3 {
        conn.write_all(b"tick\r\n").await.unwrap();
        let want = format!("tick-{round}");
        read_until(&mut conn, &mut seen, &want).await;
        let (tick, printed) = tokio::time::timeout(LIMIT, s.ticks.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tick, want);
        let shown = loop {
            let (event, data, at) = next(&mut events).await;
            assert_eq!(event, "screen", "{data}");
            let screen: serde_json::Value = serde_json::from_str(&data).unwrap();
            assert!(screen["t"].as_f64().unwrap() > 0.0);
            if screen_text(&screen).contains(&want) {
                break at;
            }
        };
        let lag = shown.saturating_duration_since(printed);
        assert!(
            lag < Duration::from_secs(1),
            "{want} shown {lag:?} after it was printed"
        );
    }

    // The session ends: so does the watch, with its reason.
    drop(conn);
    let reason = loop {
        let (event, data, _) = next(&mut events).await;
        if event == "end" {
            break serde_json::from_str::<serde_json::Value>(&data).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string();
        }
    };
    assert!(!reason.is_empty());
    assert!(
        tokio::time::timeout(LIMIT, events.recv())
            .await
            .unwrap()
            .is_none(),
        "the stream closes after `end`"
    );
    s.tg.shutdown(Duration::from_millis(100)).await;
}
