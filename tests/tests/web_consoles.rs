//! Devices' HTTP consoles through Ward in the browser (issue 17, "HTTP device consoles"): a real
//! nginx with `auth_basic` as the monitor, its password in Ward's vault, the real `ward gateway`
//! with `[web] listen` and `[web] consoles_listen`, and curl as the browser (a real TLS client
//! trusting only Ward's root) carrying a signed-in browser session's cookie.
//!
//! - `a_monitors_console_through_the_consoles_origin`: the page renders with its absolute and
//!   root-relative links, style sheet and form put under `/d/monitor-3/`; the redirect and its
//!   cookie stay there; nginx sees the vaulted user on every request (never a 401), never Ward's
//!   cookie, and the user never sees `WWW-Authenticate`; all of it is one recorded session
//!   (`via = "web"`) holding the requests and `credential_injected`, never the password; an
//!   operation rule's refusal is a 403; requests from elsewhere are refused; a clinician without
//!   a rule gets the denial page; a lock ends the tab and the next request shows the lock's
//!   reason, escaped.
//! - `the_consoles_in_chromium`: tests/web/consoles.mjs in Debian's chromium: sign in on the
//!   console's origin, open the monitor's console on the consoles' origin, click an absolute link
//!   and the redirect, stay under `/d/monitor-3/`; a clinician without a rule sees the denial
//!   page; screenshots in target/web-screenshots/.
//!
//! Under CI a missing peer (nginx, curl, openssl, node, chromium, playwright-core) fails the
//! test; locally it is skipped with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use ward_ca::Kind;
use ward_core::config::LoginConfig;
use ward_core::PrincipalKind;
use ward_tests::process::{free_port, run, run_with, ward, Input, COMMAND_TIMEOUT};
use ward_tests::web::{browser_ready, run_node, workspace, WebUser};
use ward_tests::*;

/// The account nginx knows, as the vault holds it.
const VAULT_USER: &str = "svc-monitor";
const VAULT_PASSWORD: &str = "Mx4!q9-Lw2#vP7zr";
/// What only the monitor's pages say.
const MARKER: &str = "ward-consoles-9c1e";
const MARKER2: &str = "ward-consoles-trends-51b7";

/// The size of the monitor's big page: above `MAX_REWRITE_BODY`.
const BIG_PAGE: usize = ward_server::web::consoles::MAX_REWRITE_BODY + 4096;

/// The slow answer's size (nginx sends it at 1 KiB/s).
const SLOW_BYTES: usize = 10 * 1024;

/// nginx as a patient monitor's web console: `auth_basic` on everything, a home page with
/// absolute and root-relative links, a style sheet, a redirect that sets a cookie, a settings
/// page (refused by the rule) and a form.
type Monitor = ward_tests::nginx::Nginx;

/// Starts the monitor (see [`Monitor`]'s doc above).
fn start_monitor() -> Monitor {
    Monitor::start(
        |d| {
            let hash = run_with(
                Command::new("openssl").args(["passwd", "-apr1", "-stdin"]),
                Input::Bytes(format!("{VAULT_PASSWORD}\n").into_bytes()),
                COMMAND_TIMEOUT,
            );
            assert!(hash.status.success(), "{hash:?}");
            std::fs::write(
                d.join("htpasswd"),
                format!("{VAULT_USER}:{}\n", hash.stdout.trim()),
            )
            .unwrap();
        },
        |d, port, temp_paths| {
            let origin = format!("http://127.0.0.1:{port}");
            std::fs::create_dir_all(d.join("html/admin")).unwrap();
            std::fs::write(
                d.join("html/index.html"),
                format!(
                    r#"<!doctype html>
<html><head><meta charset="utf-8"><title>VitalView bedside monitor</title>
<link rel="stylesheet" href="{origin}/style.css"></head>
<body><h1 id="title">VitalView bedside monitor</h1><p id="marker">{MARKER}</p>
<ul>
<li><a id="abs" href="{origin}/page2.html">Trends (absolute link)</a></li>
<li><a id="root" href="/page2.html">Trends (root-relative link)</a></li>
<li><a id="redir" href="/old">Old trends (a redirect)</a></li>
<li><a id="admin" href="/admin/">Settings</a></li>
</ul>
<form id="save" method="post" action="/save"><input name="rate" value="12"><button id="save-button">Save</button></form>
</body></html>
"#
                ),
            )
            .unwrap();
            std::fs::write(
                d.join("html/page2.html"),
                format!(
                    r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Trends</title><link rel="stylesheet" href="/style.css"></head>
<body><h1 id="title">Trends</h1><p id="marker">{MARKER2}</p><a id="home" href="{origin}/">Home</a></body></html>
"#
                ),
            )
            .unwrap();
            std::fs::write(
                d.join("html/style.css"),
                "body { font-family: sans-serif; background: #eef url(/bg.png) no-repeat; }\n",
            )
            .unwrap();
            std::fs::write(d.join("html/admin/index.html"), "<h1>Settings</h1>\n").unwrap();
            std::fs::write(d.join("html/bye.html"), "<p>goodbye</p>\n").unwrap();
            std::fs::write(d.join("html/slow.txt"), "r".repeat(SLOW_BYTES)).unwrap();
            // Larger than Ward rewrites: streamed through as the monitor sent it.
            let mut big = b"<!doctype html><a id=\"big\" href=\"/x\">".to_vec();
            big.resize(BIG_PAGE, b'a');
            std::fs::write(d.join("html/big.html"), big).unwrap();
            format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
      log_format who '$remote_user "$request" $status host=[$http_host] cookie=[$http_cookie] ae=[$http_accept_encoding]';
      access_log {d}/access.log who;
      client_body_temp_path {d}/body;
      proxy_temp_path {d}/proxy;
      types {{ text/html html; text/css css; }}
      default_type application/octet-stream;
      keepalive_requests 1000;
{temp_paths}  server {{
listen 127.0.0.1:{port};
root {d}/html;
auth_basic "VitalView monitor";
auth_basic_user_file {d}/htpasswd;
location / {{ }}
# After the access phase (try_files runs later), so the redirect needs the password too.
location = /old {{ try_files /nonexistent @old; }}
# A slow answer (a long poll, a stream of readings).
location = /slow.txt {{ limit_rate 1k; }}
# The monitor closes the connection after this page.
location = /bye.html {{ keepalive_timeout 0; }}
location @old {{
      add_header Set-Cookie "monitor_sid=abc123; Path=/; HttpOnly" always;
      return 302 {origin}/page2.html;
}}
      }}
}}
"#,
                d = d.display()
            )
        },
    )
}

/// The rules: ICU clinicians read the ICU monitors' pages (GET and HEAD, but not the settings),
/// with the vaulted `console` account injected.
const RULES: &str = r#"
[[rule]]
name = "icu-nurses-see-icu-monitors"
who = { kind = "clinician", roles = ["icu"] }
devices = { labels = { unit = "icu", class = "patient-monitor" } }
inject = "console"
operations.http = { allow = ["GET *", "HEAD *"], deny = ["GET /admin*"] }

# A monitor whose password is not injected (a configuration mistake): the user still never gets
# the device's password prompt.
[[rule]]
name = "icu-nurses-see-the-spare-monitor"
who = { kind = "clinician", roles = ["icu"] }
devices = { ids = ["monitor-spare"] }

[login]
mfa = ["clinician", "security"]
"#;

/// What curl got back.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Response headers, lowercased names, in order.
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// curl against Ward's HTTPS origins, trusting only Ward's root.
struct Curl {
    root: PathBuf,
    tmp: tempfile::TempDir,
}

impl Curl {
    /// `curl -X METHOD URL ARGS...` (no redirects followed).
    fn call(&self, method: &str, url: &str, args: &[&str]) -> Reply {
        let n = rand::random::<u64>();
        let head = self.tmp.path().join(format!("h{n}"));
        let body = self.tmp.path().join(format!("b{n}"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "-X", method, "--cacert"])
            .arg(&self.root)
            .arg("-D")
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(url);
        let out = run(&mut cmd);
        let headers = std::fs::read_to_string(&head)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply {
            status: out.stdout.trim().parse().unwrap_or(0),
            headers,
            body: std::fs::read_to_string(&body).unwrap_or_default(),
        }
    }
}

/// A web user with password + TOTP and roles, in the store before the gateway starts.
fn add_user(state: &Path, login: &LoginConfig, name: &str, kind: &str, roles: &[&str]) -> WebUser {
    use ward_store::users::UserStore;
    std::fs::create_dir_all(state).unwrap();
    let db = ward_tests::open_store(state);
    let new = ward_server::jit::NewUser {
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        must_change: false,
        ..ward_server::jit::NewUser::new(name, kind)
    };
    let created = ward_server::jit::create_user(&db, login, new, now()).unwrap();
    let totp = db.user(name).unwrap().unwrap().totp_secret.unwrap();
    WebUser {
        user: name.into(),
        password: created.password,
        totp,
    }
}

/// Signs `user` in on the console's origin; the `Cookie:` header of its browser session.
fn sign_in(curl: &Curl, web: &str, user: &WebUser) -> String {
    sign_in_full(curl, web, user, 0).0
}

/// Signs `user` in: the `Cookie:` header line and the sign-in's CSRF token.
/// `steps_ahead`: the TOTP step after this one to use (codes are single use: a second sign-in
/// within 30 s takes the next step's code, which the skew window accepts).
fn sign_in_full(curl: &Curl, web: &str, user: &WebUser, steps_ahead: i64) -> (String, String) {
    let secret = ward_core::totp::TotpSecret::from_base32(&user.totp).unwrap();
    let step = now().unix_timestamp() + 30 * steps_ahead;
    let code = ward_core::totp::code_at(&secret, step);
    let body = json!({"user": user.user, "password": user.password, "totp": code}).to_string();
    let r = curl.call(
        "POST",
        &format!("{web}/api/v1/signin"),
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(r.status, 200, "sign-in of {}: {r:?}", user.user);
    let set = r.header("set-cookie").unwrap();
    let token = set
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("ward_session="))
        .unwrap();
    let csrf = serde_json::from_str::<Value>(&r.body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    (format!("Cookie: ward_session={token}"), csrf)
}

/// Every byte of every recording in `state`.
fn recordings(state: &Path) -> Vec<u8> {
    let mut recorded = Vec::new();
    for e in std::fs::read_dir(state.join("recordings"))
        .unwrap()
        .flatten()
    {
        recorded.extend(std::fs::read(e.path()).unwrap_or_default());
    }
    recorded
}

/// Wait until `check` holds on the audit log (bounded); returns the events.
fn audit_until(gw: &ChildGateway, limit: Duration, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let events = gw.audit_events();
        if check(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log did not show what was expected within {limit:?}: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn via_web(e: &Value) -> bool {
    e["via"] == "web" || e["detail"]["via"] == "web"
}

/// The gateway with the monitor, the vault filled and the users made.
struct World {
    monitor: Monitor,
    gw: ChildGateway,
    state: PathBuf,
    web: String,
    consoles: String,
    curl: Curl,
    soc: PathBuf,
    users: Vec<WebUser>,
}

fn world(users: &[(&str, &str, &[&str])]) -> World {
    let monitor = start_monitor();
    let pki = Arc::new(Pki::new());
    let devices = [
        DeviceSpec::new(
            "monitor-3",
            monitor.addr,
            "http",
            &[("class", "patient-monitor"), ("unit", "icu")],
        ),
        DeviceSpec::new("monitor-spare", monitor.addr, "http", &[("unit", "spare")]),
    ];
    let (web_port, consoles_port) = (free_port(), free_port());
    let rules = format!(
        "{RULES}\n[web]\nlisten = \"127.0.0.1:{web_port}\"\nconsoles_listen = \"127.0.0.1:{consoles_port}\"\n"
    );
    let state = pki.dir.path().join("state-consoles");
    let config = write_gateway_config(&pki, &devices, &rules, "", 0, &state);
    let set = run_with(
        ward(&[
            "vault",
            "set",
            "monitor-3",
            "console",
            "--user",
            VAULT_USER,
            "--stdin",
        ])
        .arg("--config")
        .arg(&config),
        Input::Bytes(format!("{VAULT_PASSWORD}\n").into_bytes()),
        COMMAND_TIMEOUT,
    );
    assert!(set.status.success(), "ward vault set: {set:?}");
    let login = LoginConfig {
        mfa: vec![PrincipalKind::Clinician, PrincipalKind::Security],
        ..LoginConfig::default()
    };
    let users = users
        .iter()
        .map(|(name, kind, roles)| add_user(&state, &login, name, kind, roles))
        .collect();
    let gw = ChildGateway::start(pki.clone(), &devices, &rules, "", Some(&state));
    for port in [web_port, consoles_port] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ward does not listen on 127.0.0.1:{port}\nstderr:\n{}",
                gw.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let soc = pki.person(Kind::Security, "soc", None, &["soc"]);
    World {
        monitor,
        gw,
        state,
        web: format!("https://127.0.0.1:{web_port}"),
        consoles: format!("https://127.0.0.1:{consoles_port}"),
        curl: Curl {
            root: pki.root(),
            tmp: tempfile::tempdir().unwrap(),
        },
        soc,
        users,
    }
}

fn peers() -> bool {
    require_peer("curl") && require_peer("nginx") && require_peer("openssl")
}

#[test]
fn a_monitors_console_through_the_consoles_origin() {
    if !peers() {
        return;
    }
    let w = world(&[
        ("nina", "clinician", &["icu"]),
        ("carl", "clinician", &["er"]),
    ]);
    let nginx_origin = format!("http://{}", w.monitor.addr);
    let url = |p: &str| format!("{}{p}", w.consoles);
    let get = |p: &str, cookie: Option<&str>, extra: &[&str]| {
        let mut args: Vec<&str> = Vec::new();
        if let Some(c) = cookie {
            args.extend(["-H", c]);
        }
        args.extend(extra);
        w.curl.call("GET", &url(p), &args)
    };

    // Without a sign-in: Ward's page, a link to the console, and the monitor never asked.
    let r = get("/d/monitor-3/", None, &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.body.contains("Sign in first"), "{r:?}");
    assert!(r.body.contains(&format!("href=\"{}/\"", w.web)), "{r:?}");
    assert!(w.monitor.access_log().is_empty());

    let nina_cookie = sign_in(&w.curl, &w.web, &w.users[0]);
    let nina = Some(nina_cookie.as_str());

    // The device's root needs its slash.
    let r = get("/d/monitor-3", nina, &[]);
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(r.header("location"), Some("/d/monitor-3/"), "{r:?}");

    // The home page renders through Ward, every link of the monitor's put under the prefix.
    let r = get("/d/monitor-3/", nina, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(MARKER), "{r:?}");
    for want in [
        r#"<a id="abs" href="/d/monitor-3/page2.html">"#,
        r#"<a id="root" href="/d/monitor-3/page2.html">"#,
        r#"<a id="redir" href="/d/monitor-3/old">"#,
        r#"<link rel="stylesheet" href="/d/monitor-3/style.css">"#,
        r#"action="/d/monitor-3/save""#,
    ] {
        assert!(r.body.contains(want), "{want} not in {}", r.body);
    }
    assert!(!r.body.contains(&nginx_origin), "{}", r.body);
    assert!(r.header("www-authenticate").is_none(), "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "{r:?}"
    );

    // The style sheet too.
    let r = get("/d/monitor-3/style.css", nina, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("url(/d/monitor-3/bg.png)"), "{r:?}");

    // A page too large to rewrite streams through untouched, whole.
    let started = Instant::now();
    let r = get("/d/monitor-3/big.html", nina, &[]);
    eprintln!("the big page took {:?}", started.elapsed());
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.body.len(), BIG_PAGE);
    assert!(r
        .body
        .starts_with(r#"<!doctype html><a id="big" href="/x">"#));

    // The redirect stays under the prefix, its cookie is the monitor's path's only.
    let r = get("/d/monitor-3/old", nina, &[]);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("/d/monitor-3/page2.html"),
        "{r:?}"
    );
    assert_eq!(
        r.all("set-cookie"),
        ["monitor_sid=abc123; HttpOnly; Path=/d/monitor-3/; Secure"],
        "{r:?}"
    );
    assert!(r.header("www-authenticate").is_none(), "{r:?}");
    let both = format!("{}; monitor_sid=abc123", nina_cookie.as_str());
    let r = get("/d/monitor-3/page2.html", Some(&both), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(MARKER2), "{r:?}");
    assert!(
        r.body.contains(r#"<a id="home" href="/d/monitor-3/">"#),
        "{r:?}"
    );

    // The operation rule: the settings are refused by Ward (a 403 with the rule's reason), the
    // monitor never sees the request.
    let lines_before = w.monitor.access_log().len();
    let r = get("/d/monitor-3/admin/", nina, &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("Ward refused GET /admin/"), "{r:?}");
    assert!(r.body.contains("icu-nurses-see-icu-monitors"), "{r:?}");
    // A form's POST: refused unless the browser says it came from the same origin; then the
    // rule (GET and HEAD only) refuses it.
    let r = w.curl.call(
        "POST",
        &url("/d/monitor-3/save"),
        &["-H", nina_cookie.as_str(), "--data", "rate=999"],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("Sec-Fetch-Site"), "{r:?}");
    let r = w.curl.call(
        "POST",
        &url("/d/monitor-3/save"),
        &[
            "-H",
            nina_cookie.as_str(),
            "-H",
            "Sec-Fetch-Site: same-origin",
            "-H",
            &format!("Origin: {}", w.consoles),
            "--data",
            "rate=999",
        ],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("Ward refused POST /save"), "{r:?}");
    // Another site's page cannot use the tab, not even to read.
    let r = get("/d/monitor-3/", nina, &["-H", "Sec-Fetch-Site: cross-site"]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = get(
        "/d/monitor-3/",
        nina,
        &[
            "-H",
            "Sec-Fetch-Site: same-site",
            "-H",
            "Sec-Fetch-Mode: no-cors",
        ],
    );
    assert_eq!(r.status, 403, "{r:?}");
    // A top-level navigation from the console's origin (same site) is how the tab opens.
    let r = get(
        "/d/monitor-3/",
        nina,
        &[
            "-H",
            "Sec-Fetch-Site: same-site",
            "-H",
            "Sec-Fetch-Mode: navigate",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.monitor.access_log().len(), lines_before + 1);
    // Nothing of the console's is served on the consoles' origin.
    for p in ["/", "/api/v1/whoami", "/index.html", "/d/", "/app.js"] {
        let r = get(p, nina, &[]);
        assert_eq!(r.status, 404, "{p}: {r:?}");
    }
    let r = get("/d/no-such-device/", nina, &[]);
    assert_eq!(r.status, 404, "{r:?}");

    // What the monitor saw: the vaulted user on every request (never a 401), its own Host,
    // identity encoding, its own cookie and never Ward's.
    let log = w.monitor.access_log();
    // Home, style sheet, big page, redirect, trends, home again (the navigation): nothing
    // refused got through.
    assert_eq!(log.len(), 6, "{log:#?}");
    for line in &log {
        assert!(
            line.starts_with(&format!("{VAULT_USER} \"")),
            "a request without the vaulted user: {log:#?}"
        );
        assert!(!line.contains("\" 401 "), "{log:#?}");
        assert!(
            line.contains(&format!("host=[{}]", w.monitor.addr)),
            "{log:#?}"
        );
        assert!(line.contains("ae=[identity]"), "{log:#?}");
        assert!(
            !line.contains("ward_session"),
            "Ward's cookie reached the monitor: {log:#?}"
        );
    }
    assert!(
        log.iter()
            .any(|l| l.contains("\"GET /page2.html HTTP/1.1\" 200")
                && l.contains("cookie=[monitor_sid=abc123]")),
        "{log:#?}"
    );

    // One session for the whole tab, through the one pipeline, via the web.
    let events = audit_until(&w.gw, Duration::from_secs(5), |ev| {
        ev.iter().any(|e| e["event"] == "operation_denied")
    });
    let opened: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "session_open" && e["device"] == "monitor-3")
        .collect();
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert_eq!(opened[0]["outcome"], "success", "{opened:#?}");
    assert!(via_web(opened[0]), "{opened:#?}");
    let session = opened[0]["session_id"].as_str().unwrap().to_owned();
    let text = serde_json::to_string(&events).unwrap();
    assert!(text.contains("\"injected_account\":\"console\""), "{text}");
    assert!(!text.contains(VAULT_PASSWORD), "{text}");

    // A clinician without a rule: the denial page with the policy's own reason.
    let carl = sign_in(&w.curl, &w.web, &w.users[1]);
    let r = get("/d/monitor-3/", Some(&carl), &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("Ward refused access to monitor-3"), "{r:?}");
    let events = audit_until(&w.gw, Duration::from_secs(5), |ev| {
        ev.iter()
            .any(|e| e["event"] == "session_deny" && e["principal"]["name"] == "carl")
    });
    let denied = events
        .iter()
        .find(|e| e["event"] == "session_deny" && e["principal"]["name"] == "carl")
        .unwrap();
    assert!(via_web(denied), "{denied:#?}");
    let reason = denied["reason"].as_str().unwrap();
    assert!(
        r.body
            .contains(&ward_server::web::consoles::rewrite::escape_html(reason)),
        "the page does not show the denial reason {reason:?}: {}",
        r.body
    );

    // A monitor whose rule injects nothing answers 401 with a Basic challenge: Ward's page says
    // why, and the browser gets no challenge to prompt with.
    let r = get("/d/monitor-spare/", nina, &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").is_none(), "{r:?}");
    assert!(
        r.body.contains("monitor-spare asks for a password"),
        "{r:?}"
    );
    assert!(r.body.contains("ask a Ward administrator"), "{r:?}");

    // A second Ward session cookie (a device's script can set one for a path under /d/): refused,
    // and expired where it can be.
    let two = format!(
        "Cookie: ward_session={}; {}",
        "A".repeat(43),
        nina_cookie.trim_start_matches("Cookie: ")
    );
    let r = get("/d/monitor-3/", Some(&two), &[]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.contains("more than one Ward session cookie"),
        "{r:?}"
    );
    assert!(
        r.all("set-cookie")
            .contains(&"ward_session=; Path=/d/monitor-3/; Max-Age=0; Secure"),
        "{r:?}"
    );
    assert!(
        r.all("set-cookie").iter().all(|c| !c.contains("Path=/;")),
        "{r:?}"
    );

    // The monitor closes its connection after a page: the tab's session ends with it, and the
    // next request opens a new one (decided and recorded like the first), unnoticed by the user.
    let r = get("/d/monitor-3/bye.html", nina, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("goodbye"), "{r:?}");
    let events = audit_until(&w.gw, Duration::from_secs(5), |ev| {
        ev.iter()
            .any(|e| e["event"] == "session_close" && e["session_id"] == session.as_str())
    });
    let first_close = events
        .iter()
        .find(|e| e["event"] == "session_close" && e["session_id"] == session.as_str())
        .unwrap();
    assert!(via_web(first_close), "{first_close:#?}");
    let r = get("/d/monitor-3/", nina, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(MARKER), "{r:?}");
    let events = w.gw.audit_events();
    let opened: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["event"] == "session_open"
                && e["device"] == "monitor-3"
                && e["principal"]["name"] == "nina"
        })
        .collect();
    assert_eq!(opened.len(), 2, "{opened:#?}");
    let session = opened[1]["session_id"].as_str().unwrap().to_owned();

    // While a slow answer holds the tab's connection, another request of the tab is answered
    // over an overflow connection (a session of its own, decided and recorded like the first).
    let slow = {
        let curl = Curl {
            root: w.curl.root.clone(),
            tmp: tempfile::tempdir().unwrap(),
        };
        let (url, cookie) = (url("/d/monitor-3/slow.txt"), nina_cookie.clone());
        std::thread::spawn(move || curl.call("GET", &url, &["-H", &cookie]))
    };
    std::thread::sleep(Duration::from_millis(500));
    let r = get("/d/monitor-3/page2.html", nina, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(MARKER2), "{r:?}");
    assert!(
        !slow.is_finished(),
        "the slow answer was over before the other request was answered: no overflow was needed"
    );
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.body.len(), SLOW_BYTES);
    let opened =
        w.gw.audit_events()
            .iter()
            .filter(|e| e["event"] == "session_open" && e["principal"]["name"] == "nina")
            .filter(|e| e["device"] == "monitor-3")
            .count();
    assert_eq!(opened, 3, "the tab's own session, then one overflow");

    // A sign-out ends that sign-in's device tab within a second (not at its idle timeout): a
    // second sign-in of nina's opens a tab, signs out, and the tab's session closes.
    let second = sign_in_full(&w.curl, &w.web, &w.users[0], 1);
    let r = get("/d/monitor-3/page2.html", Some(second.0.as_str()), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let opens = |ev: &[Value]| -> Vec<String> {
        ev.iter()
            .filter(|e| e["event"] == "session_open" && e["principal"]["name"] == "nina")
            .filter_map(|e| e["session_id"].as_str().map(str::to_owned))
            .collect()
    };
    let second_tab = opens(&w.gw.audit_events()).last().cloned().unwrap();
    let out = w.curl.call(
        "POST",
        &format!("{}/api/v1/signout", w.web),
        &["-H", &second.0, "-H", &format!("X-Ward-CSRF: {}", second.1)],
    );
    assert!(out.status == 200 || out.status == 204, "sign-out: {out:?}");
    let signed_out = Instant::now();
    let events = audit_until(&w.gw, Duration::from_secs(5), |ev| {
        ev.iter()
            .any(|e| e["event"] == "session_close" && e["session_id"] == second_tab.as_str())
    });
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "session_close" && e["session_id"] == second_tab.as_str()),
        "the signed-out browser's device tab is still open"
    );
    assert!(
        signed_out.elapsed() < Duration::from_secs(3),
        "the tab closed {:?} after the sign-out",
        signed_out.elapsed()
    );
    // nina's first sign-in keeps its own tab.
    let r = get("/d/monitor-3/page2.html", nina, &[]);
    assert_eq!(r.status, 200, "{r:?}");

    // A lock ends nina's tab; the next request is refused with the lock's reason, escaped.
    let lock_reason = "incident <77> & \"co\"";
    let out = run(ward(&[
        "lock",
        "--principal",
        "nina",
        "--force",
        "--reason",
        lock_reason,
        "--gateway",
        &w.gw.addr,
        "--identity",
    ])
    .arg(&w.soc)
    .arg("--ca")
    .arg(w.gw.pki.root()));
    assert!(out.status.success(), "ward lock: {out:?}");
    let locked_at = Instant::now();
    let events = audit_until(&w.gw, Duration::from_secs(5), |ev| {
        ev.iter()
            .any(|e| e["event"] == "session_close" && e["session_id"] == session.as_str())
    });
    let closed = events
        .iter()
        .find(|e| e["event"] == "session_close" && e["session_id"] == session.as_str())
        .unwrap();
    eprintln!(
        "the lock ended the tab's session within {:?}: {closed}",
        locked_at.elapsed()
    );
    assert!(
        closed.to_string().contains("incident <77>"),
        "the tab's session did not end for the lock: {closed:#?}"
    );
    let lines_before = w.monitor.access_log().len();
    let r = get("/d/monitor-3/page2.html", nina, &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("incident &lt;77&gt; &amp; &quot;co&quot;"),
        "the page does not show the lock's reason, escaped: {}",
        r.body
    );
    assert!(!r.body.contains("<77>"), "{}", r.body);
    assert_eq!(w.monitor.access_log().len(), lines_before);

    // The recording holds the requests and the injection's event, never the secret.
    let recorded = recordings(&w.state);
    let has = |n: &[u8]| recorded.windows(n.len()).any(|w| w == n);
    assert!(
        has(b"GET /page2.html HTTP/1.1"),
        "the recording lacks the requests"
    );
    assert!(has(b"credential_injected"));
    assert!(!has(VAULT_PASSWORD.as_bytes()));
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{VAULT_USER}:{VAULT_PASSWORD}"));
    assert!(!has(basic.as_bytes()));
}

#[test]
fn the_consoles_in_chromium() {
    if !(peers() && browser_ready()) {
        return;
    }
    let w = world(&[
        ("nora", "clinician", &["icu"]),
        ("cleo", "clinician", &["er"]),
    ]);
    let screenshots = std::env::var_os("WARD_WEB_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/web-screenshots"));
    std::fs::create_dir_all(&screenshots).unwrap();
    let node_state = tempfile::tempdir().unwrap();
    let env = vec![
        ("WARD_WEB_URL", w.web.clone()),
        ("WARD_CONSOLES_URL", w.consoles.clone()),
        (
            "WARD_WEB_USERS",
            json!({ "clinician": w.users[0].json(), "no_rule": w.users[1].json() }).to_string(),
        ),
        (
            "WARD_WEB_CASE",
            json!({
                "device": "monitor-3",
                "marker": MARKER,
                "marker2": MARKER2,
                "device_origin": format!("http://{}", w.monitor.addr),
                "denial": "no rule lets clinician cleo reach monitor-3",
            })
            .to_string(),
        ),
        ("WARD_WEB_SCREENSHOTS", screenshots.display().to_string()),
        ("WARD_WEB_STATE", node_state.path().display().to_string()),
    ];
    let mut failures = Vec::new();
    let (ok, out) = run_node(
        "consoles.mjs",
        &env,
        &mut failures,
        |name, _| json!({"ok": false, "why": format!("the Rust test knows no {name:?}")}),
    );
    assert!(
        ok && failures.is_empty(),
        "the browser test failed (screenshots in {}):\n{out}\n{failures:#?}",
        screenshots.display()
    );
    let log = w.monitor.access_log();
    assert!(!log.is_empty());
    for line in &log {
        assert!(
            line.starts_with(&format!("{VAULT_USER} \"")) && !line.contains("\" 401 "),
            "{log:#?}"
        );
        assert!(!line.contains("ward_session"), "{log:#?}");
    }
}

/// `ward quickstart` prints the monitor's console on the consoles' origin, and it opens for the
/// clinician `alice` (password + TOTP from clinician-login.txt) with the vaulted password.
#[test]
fn the_quickstart_prints_the_monitors_console_and_it_opens() {
    if !require_peer("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs-dev");
    let (qs, _port) = ward_tests::process::start_quickstart(&dir);
    let printed = qs.stdout();
    let after = |prefix: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{printed}"))
            .trim()
            .to_owned()
    };
    let web = after("The web console, for the security team and approvers: ");
    let monitor = after("The monitor's own web console in the browser, through Ward: ");
    assert!(
        monitor.starts_with("https://127.0.0.1:") && monitor.ends_with("/d/monitor-3/"),
        "{monitor}"
    );
    assert_ne!(
        web.trim_end_matches('/'),
        monitor.trim_end_matches("/d/monitor-3/"),
        "the devices' consoles must be on an origin of their own"
    );
    assert!(
        printed.contains(&format!("{}/clinician-login.txt", dir.display())),
        "{printed}"
    );
    let login = std::fs::read_to_string(dir.join("clinician-login.txt")).unwrap();
    let field = |name: &str| {
        login
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix('='))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in clinician-login.txt:\n{login}"))
    };
    let alice = WebUser {
        user: field("user"),
        password: field("password"),
        totp: field("totp_secret"),
    };
    let curl = Curl {
        root: dir.join("root.crt"),
        tmp: tempfile::tempdir().unwrap(),
    };
    let cookie = sign_in(&curl, web.trim_end_matches('/'), &alice);
    let r = curl.call("GET", &monitor, &["-H", &cookie]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("VitalView 900 bedside monitor"), "{r:?}");
    assert!(r.header("www-authenticate").is_none(), "{r:?}");
    // The rule allows GET and HEAD only.
    let r = curl.call(
        "POST",
        &format!("{monitor}config"),
        &[
            "-H",
            &cookie,
            "-H",
            "Sec-Fetch-Site: same-origin",
            "--data",
            "alarm=off",
        ],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("icu-nurses-see-icu-monitors"), "{r:?}");
    drop(qs);
}
