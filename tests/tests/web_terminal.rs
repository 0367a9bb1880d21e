//! Issue 17: "My devices" and the web terminal, against the real `ward gateway` binary with
//! `[web] listen` on.
//!
//! - `web_terminal_over_a_websocket`: a WebSocket client (tokio-tungstenite over TLS with a
//!   clinician's client certificate) opens the pump's console, types `status` and reads `rate=`
//!   off a screen message; the recording holds exactly those bytes (`ward export`, `ward
//!   replay`), the audit log's `session_open` says `via = "web"`; a device without a rule is
//!   refused with the policy's reason; a hello without the CSRF token is closed with 1008; a
//!   vaulted telnet device lands at its prompt without a password; a `ward lock` ends an open
//!   terminal with `closed` (the lock's reason) within a second.
//! - `my_devices_lists_the_same_decisions`: `GET /api/v1/my/devices` as `ward devices` decides,
//!   and `POST /api/v1/my/requests` files a request as `ward request` does.
//! - `web_terminal_in_a_real_browser`: Chromium (tests/web/terminal.mjs): a clinician signs in
//!   with password + TOTP, sees My devices, opens the pump's console, types `status`, reads
//!   `rate=`; a device without a rule shows the denial reason; a lock ends the terminal within a
//!   second and the page shows why. Screenshots in target/web-screenshots/ (`terminal-*.png`).
//!
//! Everything talks to 127.0.0.1 only; every wait is bounded.
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

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use ward_ca::Kind;
use ward_core::config::LoginConfig;
use ward_core::PrincipalKind;
use ward_tests::hostile::{console_device, CONSOLE_PROMPT, STATUS_REPLY};
use ward_tests::process::{free_port, run, run_with, ward, Finished, Input, COMMAND_TIMEOUT};
use ward_tests::web::{add_user, browser_ready, run_node, workspace, WebUser};
use ward_tests::{ChildGateway, DeviceSpec, Pki};

/// How long any one wait for the terminal may take.
const WAIT: Duration = Duration::from_secs(15);

/// The gateway, its devices and people.
struct World {
    /// Runs the devices.
    _rt: tokio::runtime::Runtime,
    gw: ChildGateway,
    web_port: u16,
    /// A clinician's certificate (the WebSocket tests sign in with it).
    carol: PathBuf,
    /// Security staff (locks, exports).
    soc: PathBuf,
    /// A clinician with password + TOTP (the browser signs in as her).
    nina: WebUser,
    /// The vaulted pump's password (must never reach a browser).
    pump_password: String,
}

fn rules(web_port: u16, console: SocketAddr) -> String {
    format!(
        r#"
[[rule]]
name = "nurses-run-pumps"
who = {{ kind = "clinician" }}
devices = {{ labels = {{ class = "infusion-pump" }} }}

[[rule]]
name = "nurses-vaulted-pumps"
who = {{ kind = "clinician" }}
devices = {{ labels = {{ class = "vaulted-pump" }} }}
inject = "service"

[[rule]]
name = "admins"
who = {{ kind = "admin" }}
devices = {{ all = true }}

[[approval]]
name = "pump-jit-requests"
who = {{ kind = "clinician" }}
devices = {{ ids = ["pump-jit"] }}
approvers = [ {{ kind = "admin" }} ]
max_duration = "8h"
pending_expiry = "1h"

[[device]]
id = "pump-bg"
address = "{console}"
protocol = "telnet"
labels = {{ class = "emergency-pump" }}
break_glass = true

[login]
mfa = ["security", "clinician"]

[web]
listen = "127.0.0.1:{web_port}"
"#
    )
}

/// A random password (letters and digits).
fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..20)
        .map(|_| {
            let i = rng.random_range(0..62u8);
            char::from(match i {
                0..=9 => b'0' + i,
                10..=35 => b'a' + i - 10,
                _ => b'A' + i - 36,
            })
        })
        .collect()
}

fn world() -> World {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let console = rt.block_on(console_device());
    let pump_password = random_secret();
    let accounts = ward::sim::factory_accounts();
    accounts
        .lock()
        .unwrap()
        .insert("service".into(), pump_password.clone());
    let pump = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ward::sim::telnet_console_with(l, accounts).unwrap().addr
    });
    let pki = Arc::new(Pki::new());
    let carol = pki.person(Kind::Clinician, "carol", None, &["icu"]);
    let soc = pki.person(Kind::Security, "soc", None, &["soc"]);
    let admin = pki.person(Kind::Admin, "root", None, &[]);
    let devices = [
        DeviceSpec::new("pump-7", console, "telnet", &[("class", "infusion-pump")]),
        DeviceSpec::new("vent-3", console, "telnet", &[("class", "ventilator")]),
        DeviceSpec::new("pump-12", pump, "telnet", &[("class", "vaulted-pump")]),
        DeviceSpec::new("pump-jit", console, "telnet", &[("class", "jit-pump")]),
    ];
    let web_port = free_port();
    let state_dir = pki.dir.path().join("state");
    let login = LoginConfig {
        mfa: vec![PrincipalKind::Security, PrincipalKind::Clinician],
        ..LoginConfig::default()
    };
    let nina = add_user(&state_dir, &login, "nina", "clinician", None);
    let gw = ChildGateway::start(
        pki.clone(),
        &devices,
        &rules(web_port, console),
        "",
        Some(&state_dir),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", web_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the web console does not listen on 127.0.0.1:{web_port}\nstderr:\n{}",
            gw.proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The pump's service password, in the vault (as an admin sets it).
    let mut cmd = ward_as(&gw, &admin, &["vault", "set", "pump-12", "service"]);
    cmd.args(["--user", "service", "--stdin"]);
    let out = run_with(
        &mut cmd,
        Input::Bytes(format!("{pump_password}\n").into_bytes()),
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "vault set: {out:?}");
    World {
        _rt: rt,
        gw,
        web_port,
        carol,
        soc,
        nina,
        pump_password,
    }
}

/// `ward ARGS --gateway G --identity ID --ca ROOT`.
fn ward_as(gw: &ChildGateway, identity: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = ward(args);
    cmd.args(["--gateway", &gw.addr, "--identity"])
        .arg(identity)
        .arg("--ca")
        .arg(gw.pki.root());
    cmd
}

// ---- a WebSocket client over TLS with a client certificate -------------------------------------

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
type Ws = tokio_tungstenite::WebSocketStream<Tls>;

/// The console's TLS as a script sees it: Ward's root, `identity`'s certificate, HTTP/1.1.
fn tls_config(identity: &Path, root: &Path) -> Arc<rustls::ClientConfig> {
    use ward_transport::tls::{client_config, load_certs, load_key};
    let root = load_certs(root).unwrap().remove(0);
    let chain = load_certs(&ward_ca::Issued::cert_path(identity)).unwrap();
    let key = load_key(&ward_ca::Issued::key_path(identity)).unwrap();
    let mut cfg = client_config(root, chain, key).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

async fn tls(port: u16, cfg: &Arc<rustls::ClientConfig>) -> Tls {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .unwrap()
}

/// One HTTP/1.1 request (`Connection: close`); the status and the body parsed as JSON.
async fn http(
    port: u16,
    cfg: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    csrf: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = tls(port, cfg).await;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(c) = csrf {
        req.push_str(&format!("X-Ward-CSRF: {c}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A terminal client.
struct Term {
    ws: Ws,
    /// The messages read so far.
    seen: Vec<Value>,
    /// How the server closed the socket, if it did.
    close: Option<(u16, String)>,
    /// The screen as the page would show it: the last `screen` with the `rows` since applied.
    current: Value,
}

impl Term {
    /// Open `/api/v1/terminal/DEVICE` as `identity` and say hello with `csrf` (whoami's if
    /// `None`).
    async fn open(world: &World, identity: &Path, device: &str, csrf: Option<&str>) -> Term {
        let cfg = tls_config(identity, &world.gw.pki.root());
        let csrf = match csrf {
            Some(c) => c.to_owned(),
            None => {
                let (status, me) =
                    http(world.web_port, &cfg, "GET", "/api/v1/whoami", None, None).await;
                assert_eq!(status, 200, "whoami: {me}");
                me["csrf"].as_str().unwrap().to_owned()
            }
        };
        let stream = tls(world.web_port, &cfg).await;
        let url = format!(
            "wss://127.0.0.1:{}/api/v1/terminal/{device}",
            world.web_port
        );
        let (mut ws, resp) = tokio_tungstenite::client_async(url, stream)
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade to the terminal of {device}: {e}"));
        assert_eq!(resp.status(), 101);
        let hello = json!({"type": "hello", "csrf": csrf, "cols": 100, "rows": 30});
        ws.send(Message::Text(hello.to_string().into()))
            .await
            .unwrap();
        Term {
            ws,
            seen: Vec::new(),
            close: None,
            current: Value::Null,
        }
    }

    /// The next JSON message before `deadline`; `None` once the socket closed.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no message from the terminal in time; seen: {:#?}",
                        self.seen.iter().map(short).collect::<Vec<_>>()
                    )
                });
            match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    self.apply(&v);
                    self.seen.push(v.clone());
                    return Some(v);
                }
                Some(Ok(Message::Close(f))) => {
                    self.close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return None;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Bring [`Term::current`] up to date with a `screen` (all of it) or `rows` (the rows
    /// named, of the same size) message.
    fn apply(&mut self, v: &Value) {
        if v["type"] == "screen" {
            self.current = v.clone();
        } else if v["type"] == "rows" {
            assert_eq!(
                (&v["cols"], &v["rows"]),
                (&self.current["cols"], &self.current["rows"]),
                "rows of another size than the screen: {v}"
            );
            for l in v["lines"].as_array().unwrap() {
                let row = l["row"].as_u64().unwrap() as usize;
                self.current["lines"][row] = l["runs"].clone();
            }
            self.current["cursor"] = v["cursor"].clone();
        }
    }

    /// Wait for a message of `kind`.
    async fn expect(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.next(deadline).await {
                Some(v) if v["type"] == kind => return v,
                Some(_) => {}
                None => panic!(
                    "the terminal closed ({:?}) before a {kind:?} message; seen: {:#?}",
                    self.close,
                    self.seen.iter().map(short).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Wait until a screen shows `needle`; returns that screen's text.
    async fn screen_with(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.next(deadline).await {
                Some(v) if v["type"] == "screen" || v["type"] == "rows" => {
                    let text = screen_text(&self.current);
                    if text.contains(needle) {
                        return text;
                    }
                }
                Some(_) => {}
                None => panic!(
                    "the terminal closed ({:?}) before a screen showed {needle:?}; last screen:\n{}",
                    self.close,
                    self.last_screen()
                ),
            }
        }
    }

    fn last_screen(&self) -> String {
        screen_text(&self.current)
    }

    async fn type_text(&mut self, data: &str) {
        let m = json!({"type": "input", "data": data});
        self.ws
            .send(Message::Text(m.to_string().into()))
            .await
            .unwrap();
    }

    async fn end(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A message for a failure's listing (screens as their text).
fn short(v: &Value) -> Value {
    if v["type"] == "screen" {
        json!({"type": "screen", "text": screen_text(v)})
    } else if v["type"] == "rows" {
        json!({"type": "rows", "rows": v["lines"].as_array().map(|l| l.iter().map(|x| x["row"].clone()).collect::<Vec<_>>())})
    } else {
        v.clone()
    }
}

/// A screen message's text: its rows' runs joined, rows by newlines.
fn screen_text(v: &Value) -> String {
    v["lines"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|runs| {
                    runs.as_array()
                        .map(|r| {
                            r.iter()
                                .filter_map(|x| x["text"].as_str())
                                .collect::<String>()
                        })
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The audit log's events of `event` for session `id`, waiting (bounded) for one.
fn audit_of(gw: &ChildGateway, event: &str, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(e) = gw
            .audit_events()
            .into_iter()
            .find(|e| e["event"] == event && e["session_id"] == id)
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {event} for session {id} in the audit log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ok(out: Finished, what: &str) -> Finished {
    assert!(out.status.success(), "{what}: {out:?}");
    out
}

#[test]
fn web_terminal_over_a_websocket() {
    let world = world();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // ---- the pump's console: type status, read rate= off the screen ----------------------
        let mut t = Term::open(&world, &world.carol, "pump-7", None).await;
        let opened = t.expect("opened").await;
        assert_eq!(opened["rule"], "nurses-run-pumps", "{opened}");
        assert!(opened["ends_at"].as_i64().unwrap() > 0, "{opened}");
        let id = opened["session_id"].as_str().unwrap().to_owned();
        t.screen_with(CONSOLE_PROMPT.trim_end()).await;
        t.type_text("status\r").await;
        let screen = t.screen_with("rate=").await;
        assert!(screen.contains(STATUS_REPLY), "{screen}");
        // The screen message is the emulator's: the size the hello asked for.
        let last = t
            .seen
            .iter()
            .rev()
            .find(|v| v["type"] == "screen")
            .unwrap()
            .clone();
        assert_eq!(
            (last["cols"].as_u64(), last["rows"].as_u64()),
            (Some(100), Some(30)),
            "{last}"
        );
        // After the first screen, a change sends only the rows that changed.
        let partial = t
            .seen
            .iter()
            .filter(|v| v["type"] == "rows")
            .map(|v| v["lines"].as_array().map_or(0, Vec::len))
            .collect::<Vec<_>>();
        assert!(
            !partial.is_empty() && partial.iter().all(|&n| n < 15),
            "typing sent no rows messages of a few rows: {partial:?}"
        );
        t.end().await;

        // The audit log: the session opened through the web, by carol, and closed.
        let open = audit_of(&world.gw, "session_open", &id);
        assert_eq!(open["detail"]["via"], "web", "{open}");
        assert_eq!(open["principal"]["name"], "carol", "{open}");
        assert_eq!(open["device"], "pump-7", "{open}");
        audit_of(&world.gw, "session_close", &id);

        // The recording holds exactly what was typed and what the screen showed.
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("web");
        let out = ok(
            run(&mut ward_as(
                &world.gw,
                &world.soc,
                &[
                    "export",
                    &id,
                    "--format",
                    "raw",
                    "--out",
                    base.to_str().unwrap(),
                ],
            )),
            "ward export",
        );
        assert!(out.stdout.contains("wrote "), "{out:?}");
        let up = std::fs::read(dir.path().join("web.up")).unwrap();
        let down = String::from_utf8_lossy(&std::fs::read(dir.path().join("web.down")).unwrap())
            .into_owned();
        assert_eq!(
            up,
            b"status\r\n",
            "the recording's client side: {:?}",
            String::from_utf8_lossy(&up)
        );
        for line in screen.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            assert!(
                down.contains(line),
                "the screen's line {line:?} is not in the recording:\n{down}"
            );
        }
        let replay = ok(
            run(&mut ward_as(
                &world.gw,
                &world.soc,
                &["replay", &id, "--no-timing"],
            )),
            "ward replay",
        );
        assert!(replay.stdout.contains(STATUS_REPLY), "{replay:?}");
        assert_eq!(
            replay.stdout, down,
            "ward replay shows other bytes than the recording's"
        );

        // ---- a device without a rule: refused with the policy's reason -----------------------
        let mut t = Term::open(&world, &world.carol, "vent-3", None).await;
        let refused = t.expect("refused").await;
        assert_eq!(refused["status"], 403, "{refused}");
        let reason = refused["reason"].as_str().unwrap();
        assert!(
            reason.contains("no rule lets") && reason.contains("vent-3"),
            "{refused}"
        );
        assert!(
            t.next(tokio::time::Instant::now() + WAIT).await.is_none(),
            "the socket stays open after refused"
        );
        // The denial is audited (the audit log is written asynchronously: wait, bounded).
        let deadline = Instant::now() + WAIT;
        while !world
            .gw
            .audit_events()
            .iter()
            .any(|e| e["event"] == "session_deny" && e["device"] == "vent-3")
        {
            assert!(
                Instant::now() < deadline,
                "no session_deny for vent-3 in the audit log"
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        // ---- a hello without the right CSRF token: closed with 1008, nothing opened ----------
        let opens_before = world
            .gw
            .audit_events()
            .iter()
            .filter(|e| e["event"] == "session_open")
            .count();
        let mut t = Term::open(&world, &world.carol, "pump-7", Some("not-the-token")).await;
        assert!(t.next(tokio::time::Instant::now() + WAIT).await.is_none());
        assert_eq!(t.close.as_ref().map(|c| c.0), Some(1008), "{:?}", t.close);
        std::thread::sleep(Duration::from_millis(300));
        let opens_after = world
            .gw
            .audit_events()
            .iter()
            .filter(|e| e["event"] == "session_open")
            .count();
        assert_eq!(
            opens_before, opens_after,
            "a session opened without the CSRF token"
        );

        // ---- the vaulted pump: at the prompt without a password ------------------------------
        let mut t = Term::open(&world, &world.carol, "pump-12", None).await;
        let opened = t.expect("opened").await;
        let vid = opened["session_id"].as_str().unwrap().to_owned();
        let screen = t.screen_with("pump>").await;
        assert!(
            !screen.contains(&world.pump_password),
            "the password is on the screen:\n{screen}"
        );
        assert!(
            !screen.contains("Password:"),
            "the terminal was asked for a password:\n{screen}"
        );
        t.type_text("status\r").await;
        t.screen_with("RUNNING").await;
        for m in &t.seen {
            assert!(
                !m.to_string().contains(&world.pump_password),
                "the password reached the browser: {m}"
            );
        }
        t.end().await;
        // The gateway injected the vaulted credential (the session's audit says which account).
        let open = audit_of(&world.gw, "session_open", &vid);
        assert_eq!(open["detail"]["injected_account"], "service", "{open}");
        assert_eq!(open["detail"]["via"], "web", "{open}");

        // ---- a lock ends an open terminal within a second ------------------------------------
        let mut t = Term::open(&world, &world.carol, "pump-7", None).await;
        t.expect("opened").await;
        t.screen_with(CONSOLE_PROMPT.trim_end()).await;
        let why = "web terminal test: carol's badge reported lost";
        let out = ok(
            run(&mut ward_as(
                &world.gw,
                &world.soc,
                &["lock", "--principal", "carol", "--force", "--reason", why],
            )),
            "ward lock",
        );
        let locked = tokio::time::Instant::now();
        let closed = t.expect("closed").await;
        let took = locked.elapsed();
        let reason = closed["reason"].as_str().unwrap();
        assert!(
            reason.contains("locked") && reason.contains(why),
            "{closed} (lock: {out:?})"
        );
        assert!(
            took <= Duration::from_secs(1),
            "the lock ended the terminal {took:?} after `ward lock` returned"
        );
        assert!(
            t.next(tokio::time::Instant::now() + WAIT).await.is_none(),
            "the socket stays open after closed"
        );
        // And a new terminal is refused with the lock's reason.
        let mut t = Term::open(&world, &world.carol, "pump-7", None).await;
        let refused = t.expect("refused").await;
        assert!(
            refused["reason"].as_str().unwrap().contains(why),
            "{refused}"
        );
    });
}

#[test]
fn my_devices_lists_the_same_decisions() {
    let world = world();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = tls_config(&world.carol, &world.gw.pki.root());
        let (status, mine) = http(world.web_port, &cfg, "GET", "/api/v1/my/devices", None, None).await;
        assert_eq!(status, 200, "{mine}");
        let rows = mine["devices"].as_array().unwrap();
        let row = |id: &str| rows.iter().find(|r| r["id"] == id).cloned();
        let pump = row("pump-7").unwrap();
        assert_eq!(pump["access"], "open", "{pump}");
        assert_eq!(pump["rule"], "nurses-run-pumps", "{pump}");
        assert_eq!(pump["console"], "terminal", "{pump}");
        assert!(pump["until"].as_i64().unwrap() > 0, "{pump}");
        assert!(pump["why"].as_str().unwrap().contains("nurses-run-pumps"), "{pump}");
        let jit = row("pump-jit").unwrap();
        assert_eq!(jit["access"], "request", "{jit}");
        assert!(jit["why"].as_str().unwrap().contains("pump-jit-requests"), "{jit}");
        let bg = row("pump-bg").unwrap();
        assert_eq!(bg["access"], "break_glass", "{bg}");
        assert!(bg["break_glass_requires"].as_str().unwrap().contains("emergency"), "{bg}");
        // Nothing lets carol near vent-3: not listed (the listing reveals nothing).
        assert!(row("vent-3").is_none(), "{mine}");
        // The same devices and reaches as `ward devices`.
        let cli = ok(run(&mut ward_as(&world.gw, &world.carol, &["devices", "--json"])), "ward devices");
        let listed: Value = serde_json::from_str(&cli.stdout)
            .unwrap_or_else(|e| panic!("ward devices --json: {e}: {}", cli.stdout));
        let listed: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect();
        let mut web: Vec<String> = rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
        let mut cli_ids = listed.clone();
        web.sort();
        cli_ids.sort();
        assert_eq!(web, cli_ids, "My devices and `ward devices` differ: {}", cli.stdout);

        // The request form: a request as `ward request` makes, then the row is pending.
        let (_, me) = http(world.web_port, &cfg, "GET", "/api/v1/whoami", None, None).await;
        let csrf = me["csrf"].as_str().unwrap();
        let body = json!({"device": "pump-jit", "reason": "pump alarm log review", "start": null, "duration": "2h"});
        let (status, made) = http(world.web_port, &cfg, "POST", "/api/v1/my/requests", None, Some(&body)).await;
        assert_eq!(status, 403, "a request without the CSRF token: {made}");
        let (status, made) = http(world.web_port, &cfg, "POST", "/api/v1/my/requests", Some(csrf), Some(&body)).await;
        assert_eq!(status, 201, "{made}");
        let req = made["request"]["id"].as_str().unwrap().to_owned();
        assert_eq!(made["request"]["policy"], "pump-jit-requests", "{made}");
        let (_, mine) = http(world.web_port, &cfg, "GET", "/api/v1/my/devices", None, None).await;
        let jit = mine["devices"].as_array().unwrap().iter().find(|r| r["id"] == "pump-jit").unwrap().clone();
        assert_eq!(jit["access"], "pending", "{jit}");
        assert_eq!(jit["request_id"], req.as_str(), "{jit}");
        let audited = world.gw.audit_events().into_iter().any(|e| {
            e["event"] == "access_request" && e["outcome"] == "success" && e["detail"]["request"] == req.as_str()
        });
        assert!(audited, "no access_request event for {req}");
        // The same checks as `ward request`: a device without an approval policy is refused.
        let bad = json!({"device": "vent-3", "reason": "x", "duration": "2h"});
        let (status, refused) = http(world.web_port, &cfg, "POST", "/api/v1/my/requests", Some(csrf), Some(&bad)).await;
        assert_eq!(status, 403, "{refused}");
        let bad = json!({"device": "pump-jit", "reason": "x", "duration": "soon"});
        let (status, refused) = http(world.web_port, &cfg, "POST", "/api/v1/my/requests", Some(csrf), Some(&bad)).await;
        assert_eq!(status, 400, "{refused}");
        assert!(refused["error"].as_str().unwrap().contains("2h"), "{refused}");
    });
}

#[test]
fn web_terminal_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let world = world();
    let shots = std::env::var_os("WARD_WEB_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/web-screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let node_state = tempfile::tempdir().unwrap();
    let case = json!({
        "device": "pump-7",
        "prompt": CONSOLE_PROMPT.trim_end(),
        "expect": "rate=",
        "denied_device": "vent-3",
        "request_device": "pump-jit",
        "lock_principal": "nina",
    });
    let env = vec![
        (
            "WARD_WEB_URL",
            format!("https://127.0.0.1:{}", world.web_port),
        ),
        (
            "WARD_WEB_USERS",
            json!({"clinician": world.nina.json()}).to_string(),
        ),
        ("WARD_WEB_CASE", case.to_string()),
        ("WARD_WEB_SCREENSHOTS", shots.display().to_string()),
        ("WARD_WEB_STATE", node_state.path().display().to_string()),
    ];
    let mut failures = Vec::new();
    let (node_ok, out) = run_node("terminal.mjs", &env, &mut failures, |name, data| {
        let s = |k: &str| data[k].as_str().unwrap_or_default().to_owned();
        match name {
            "lock" => {
                let out = run(&mut ward_as(
                    &world.gw,
                    &world.soc,
                    &[
                        "lock",
                        "--principal",
                        &s("principal"),
                        "--force",
                        "--reason",
                        &s("reason"),
                    ],
                ));
                let now = ward_tests::now();
                let locked_ms = now.unix_timestamp() * 1000 + i64::from(now.millisecond());
                if out.status.success() {
                    json!({"ok": true, "locked_ms": locked_ms})
                } else {
                    json!({"ok": false, "why": format!("ward lock: {out:?}")})
                }
            }
            "session" => {
                // The browser's session: opened through the web, and its recording holds `rate=`.
                let id = s("id");
                // (The audit log is written asynchronously: wait, bounded.)
                let deadline = Instant::now() + WAIT;
                let open = loop {
                    let found =
                        world.gw.audit_events().into_iter().find(|e| {
                            e["event"] == "session_open" && e["session_id"] == id.as_str()
                        });
                    if found.is_some() || Instant::now() > deadline {
                        break found;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                match open {
                    Some(e) if e["detail"]["via"] == "web" && e["principal"]["name"] == "nina" => {
                        json!({"ok": true})
                    }
                    other => {
                        json!({"ok": false, "why": format!("session_open of {id}: {other:?}")})
                    }
                }
            }
            other => json!({"ok": false, "why": format!("the Rust test knows no {other:?}")}),
        }
    });
    assert!(
        node_ok && failures.is_empty(),
        "the browser terminal test failed (screenshots in {}):\n{out}\nRust-side failures: {failures:#?}",
        shots.display()
    );
}
