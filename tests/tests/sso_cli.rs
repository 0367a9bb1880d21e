//! `ward login --sso` (issue 17): the gateway brokers a CLI login through a signed-in browser.
//!
//! The first test runs the real binaries: `ward gateway` with `[web] listen`, and `ward login
//! --sso --no-browser` as a child process. It reads the URL and code the CLI prints; a browser
//! session (password + TOTP, driven over HTTPS by curl trusting only Ward's root) sees the same
//! code, the CLI's address and time, and approves; the CLI stores a certificate with the
//! approving user's identity that works for `ward devices`. A certificate caller cannot approve,
//! approving twice fails, a used or unknown login is refused with a reason, a refusal in the
//! browser reaches the CLI, and a login nobody approves times out with a clear message.
//!
//! The second runs an in-process gateway on a fixed clock: a login expires after 5 minutes,
//! one request per connection without a certificate, a bad CSR is refused at once, the
//! registry's per-source bound, and a gateway without a console refuses `--sso`.
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

use serde_json::{json, Value};
use ward_ca::{Clock, FixedClock, Kind, SystemClock};
use ward_client::{Client, Transport};
use ward_core::config::LoginConfig;
use ward_core::frame::{ErrorCode, Request, Response, SsoPending, SsoStart};
use ward_core::totp::{self, TotpSecret};
use ward_core::PrincipalKind;
use ward_tests::process::{run, ward, Input, Proc, COMMAND_TIMEOUT};
use ward_tests::web::{add_user, browser_ready, run_node, workspace, WebUser};
use ward_tests::{
    audit_events, init_logs, require_peer, start_gateway, ChildGateway, DeviceSpec, Pki, ACME_RULES,
};

/// What curl got back.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    stderr: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: status {}, body {:?}, curl said {:?}",
                self.status, self.body, self.stderr
            )
        })
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// The console, reached by curl trusting only Ward's root.
struct Console {
    base: String,
    root: PathBuf,
    tmp: tempfile::TempDir,
}

impl Console {
    fn call(&self, method: &str, path: &str, args: &[&str]) -> Reply {
        let body = self.tmp.path().join(format!("b{}", rand::random::<u64>()));
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-X", method, "--cacert"])
            .arg(&self.root)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(format!("{}{path}", self.base))
            .output()
            .unwrap();
        Reply {
            status: String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            body: std::fs::read_to_string(&body).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A signed-in caller's curl arguments and CSRF token.
struct Caller {
    args: Vec<String>,
    csrf: String,
}

impl Caller {
    fn get(&self, web: &Console, path: &str) -> Reply {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        web.call("GET", path, &args)
    }

    /// A state-changing POST with the CSRF token (`csrf: false`: without it).
    fn post(&self, web: &Console, path: &str, csrf: bool) -> Reply {
        let header = format!("X-Ward-CSRF: {}", self.csrf);
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "{}",
        ]);
        if csrf {
            args.extend(["-H", &header]);
        }
        web.call("POST", path, &args)
    }
}

/// `ward login --sso --no-browser ARGS` against `gw`, writing the identity at `out`.
fn sso_login(gw: &ChildGateway, out: &Path, extra: &[&str]) -> Proc {
    let mut cmd = ward(&["login", "--sso", "--no-browser", "--gateway", &gw.addr]);
    cmd.arg("--ca")
        .arg(gw.pki.root())
        .arg("--out")
        .arg(out)
        .args(extra);
    Proc::spawn(&mut cmd, Input::Null)
}

/// The URL and code the CLI printed (its `url:` and `code:` lines), once it has.
fn printed(p: &mut Proc) -> (String, String) {
    p.wait_for_stdout("Waiting for the approval", COMMAND_TIMEOUT);
    let out = p.stdout();
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {out}"))
            .trim()
            .to_owned()
    };
    let (url, code) = (line("url: "), line("code: "));
    assert!(
        out.contains(&format!("shows the code {code}")),
        "the CLI asks to compare the code: {out}"
    );
    (url, code)
}

/// The poll id in a login URL (`…/#/sso/cli/<poll>`).
fn poll_of(url: &str) -> String {
    url.split_once("#/sso/cli/")
        .map(|(_, p)| p.to_owned())
        .unwrap_or_else(|| panic!("not a login URL: {url}"))
}

fn is_code(code: &str) -> bool {
    code.len() == 9
        && code.as_bytes()[4] == b'-'
        && code
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 4 || b"BCDFGHJKLMNPQRSTVWXZ".contains(&b))
}

/// A `ward gateway` child with `[web] listen` on a free port, the vendor `tech` (acme) with
/// password + TOTP, and `pump-7` (acme's); returns it, the console's port and tech.
fn world(pki: &Arc<Pki>) -> (ChildGateway, u16, WebUser) {
    let devices = [DeviceSpec::new(
        "pump-7",
        "127.0.0.1:9".parse().unwrap(),
        "telnet",
        &[("vendor", "acme")],
    )];
    let web_port = ward_tests::process::free_port();
    let rules =
        format!("{ACME_RULES}\n[web]\nlisten = \"127.0.0.1:{web_port}\"\nmax_session = \"1h\"\n");
    let state_dir = pki.dir.path().join("state");
    let login = LoginConfig {
        mfa: vec![PrincipalKind::Vendor],
        ..LoginConfig::default()
    };
    let tech = add_user(&state_dir, &login, "tech", "vendor", Some("acme"));
    let gw = ChildGateway::start(pki.clone(), &devices, &rules, "", Some(&state_dir));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", web_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the console does not listen\n{}",
            gw.proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (gw, web_port, tech)
}

/// `ward devices` with the identity at `prefix` lists acme's pump.
fn devices_work(gw: &ChildGateway, prefix: &Path) -> Result<(), String> {
    let mut cmd = ward(&["devices", "--gateway", &gw.addr, "--identity"]);
    cmd.arg(prefix);
    let listed = run(&mut cmd);
    if listed.status.success() && listed.stdout.contains("pump-7") {
        Ok(())
    } else {
        Err(format!("`ward devices` with the new identity: {listed:?}"))
    }
}

#[test]
fn ward_login_sso_is_approved_in_a_signed_in_browser() {
    init_logs();
    if !require_peer("curl") {
        return;
    }
    let pki = Arc::new(Pki::new());
    let soc = pki.person(Kind::Security, "soc", None, &["soc"]);
    let (gw, web_port, tech) = world(&pki);
    let web = Console {
        base: format!("https://127.0.0.1:{web_port}"),
        root: pki.root(),
        tmp: tempfile::tempdir().unwrap(),
    };
    let out_dir = tempfile::tempdir().unwrap();

    // The page is served, and the console's router knows its route.
    let js = web.call("GET", "/cli.js", &[]);
    assert_eq!(js.status, 200, "{js:?}");
    assert!(js.body.contains("export async function cliPage"), "{js:?}");
    let app = web.call("GET", "/app.js", &[]);
    assert!(app.body.contains("import('./cli.js')"), "{app:?}");

    // The CLI prints the URL of the console's page and a code, and waits.
    let started = SystemClock.now().unix_timestamp();
    let identity = out_dir.path().join("sso-id");
    let mut cli = sso_login(&gw, &identity, &[]);
    let (url, code) = printed(&mut cli);
    assert!(
        url.starts_with(&format!("https://127.0.0.1:{web_port}/#/sso/cli/")),
        "{url}"
    );
    assert!(is_code(&code), "{code}");
    let poll = poll_of(&url);
    assert_eq!(poll.len(), 43, "{poll}");

    // Without a sign-in the page's API asks for one.
    let r = web.call("GET", &format!("/api/v1/sso/cli/{poll}"), &[]);
    assert_eq!(r.status, 401, "{r:?}");

    // tech signs in to the console with password and TOTP.
    let secret = TotpSecret::from_base32(&tech.totp).unwrap();
    let creds = json!({
        "user": tech.user,
        "password": tech.password,
        "totp": totp::code_at(&secret, SystemClock.now().unix_timestamp()),
    });
    let headers = web.tmp.path().join("signin-headers");
    let r = web.call(
        "POST",
        "/api/v1/signin",
        &[
            "-D",
            headers.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &creds.to_string(),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let me = r.json();
    assert_eq!(me["principal"], "vendor acme/tech", "{me}");
    let cookie = std::fs::read_to_string(&headers)
        .unwrap()
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap_or("").to_owned())
        })
        .expect("a session cookie");
    let browser = Caller {
        args: vec!["-H".into(), format!("Cookie: {cookie}")],
        csrf: me["csrf"].as_str().unwrap().to_owned(),
    };
    let browser_serial = me["serial"].as_str().unwrap().to_owned();

    // The page shows the same code, where the CLI connected from and when.
    let r = browser.get(&web, &format!("/api/v1/sso/cli/{poll}"));
    assert_eq!(r.status, 200, "{r:?}");
    let shown = r.json();
    assert_eq!(shown["user_code"], code.as_str(), "{shown}");
    assert_eq!(shown["source"], "127.0.0.1", "{shown}");
    assert_eq!(shown["state"], "pending", "{shown}");
    assert_eq!(shown["can_approve"], true, "{shown}");
    let t = shown["started_unix"].as_i64().unwrap();
    assert!((started - 5..=started + 30).contains(&t), "{shown}");
    assert_eq!(shown["expires_unix"].as_i64().unwrap(), t + 300, "{shown}");

    // A client certificate cannot approve (it would mint its own successors).
    let cert = Caller {
        args: vec![
            "--cert".into(),
            format!("{}.crt", soc.display()),
            "--key".into(),
            format!("{}.key", soc.display()),
        ],
        csrf: String::new(),
    };
    let who = cert.get(&web, "/api/v1/whoami");
    assert_eq!(who.json()["via"], "certificate", "{who:?}");
    let cert = Caller {
        csrf: who.json()["csrf"].as_str().unwrap().to_owned(),
        ..cert
    };
    let r = cert.get(&web, &format!("/api/v1/sso/cli/{poll}"));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.error().contains("client certificate cannot approve"),
        "{r:?}"
    );
    let r = cert.post(&web, &format!("/api/v1/sso/cli/{poll}/approve"), true);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.error().contains("client certificate cannot approve"),
        "{r:?}"
    );
    // Nor a browser request without the CSRF token.
    let r = browser.post(&web, &format!("/api/v1/sso/cli/{poll}/approve"), false);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("X-Ward-CSRF"), "{r:?}");

    // tech approves; approving again fails.
    let r = browser.post(&web, &format!("/api/v1/sso/cli/{poll}/approve"), true);
    assert_eq!(r.status, 200, "{r:?}");
    let approved = r.json();
    assert_eq!(approved["approved"], true, "{approved}");
    assert_eq!(approved["principal"], "vendor acme/tech", "{approved}");
    assert_eq!(approved["user_code"], code.as_str(), "{approved}");
    let r = browser.post(&web, &format!("/api/v1/sso/cli/{poll}/approve"), true);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("already approved"), "{r:?}");

    // The CLI stores a certificate with tech's identity, as `ward login` does.
    let done = cli.finish(COMMAND_TIMEOUT);
    assert!(done.status.success(), "{done:?}");
    assert!(
        done.stdout.contains("logged in as vendor acme/tech"),
        "{done:?}"
    );
    let crt = std::fs::read_to_string(identity.with_extension("crt")).unwrap();
    let seen = ward_ca::inspect(&crt, None, SystemClock.now()).unwrap();
    assert_eq!(seen.kind, Some(Kind::Vendor), "{seen:?}");
    assert_eq!(seen.name.as_deref(), Some("tech"), "{seen:?}");
    assert_eq!(seen.org.as_deref(), Some("acme"), "{seen:?}");
    // It never outlives the browser session that approved it.
    let rfc = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let session_end = rfc(me["expires_at"].as_str().unwrap());
    assert!(rfc(&seen.not_after) <= session_end, "{seen:?} {me}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(identity.with_extension("key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is private");
    assert!(out_dir.path().join("root.crt").exists());
    devices_work(&gw, &identity).unwrap();

    // Audited as a login through SSO, naming the approving browser session.
    let events = audit_events(&gw.state_dir);
    let issued: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "login" && e["outcome"] == "success")
        .filter(|e| e["detail"]["via"] == "sso")
        .collect();
    assert_eq!(issued.len(), 1, "{events:#?}");
    let e = issued[0];
    assert_eq!(e["principal"]["name"], "tech", "{e}");
    assert_eq!(e["detail"]["web_session"], browser_serial.as_str(), "{e}");
    assert_eq!(e["detail"]["user_code"], code.as_str(), "{e}");
    assert_eq!(e["detail"]["mfa"], true, "{e}");
    assert!(e["detail"]["serial"].is_string(), "{e}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "sso_cli_start" && e["detail"]["user_code"] == code.as_str()),
        "{events:#?}"
    );

    // Used once: the page and the API now refuse it, with a reason.
    for r in [
        browser.get(&web, &format!("/api/v1/sso/cli/{poll}")),
        browser.post(&web, &format!("/api/v1/sso/cli/{poll}/approve"), true),
    ] {
        assert_eq!(r.status, 404, "{r:?}");
        assert!(r.error().contains("no such SSO login"), "{r:?}");
    }
    let unknown = "A".repeat(43);
    let r = browser.post(&web, &format!("/api/v1/sso/cli/{unknown}/approve"), true);
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.error().contains("expired"), "{r:?}");

    // A login refused in the browser: the CLI is told so, and stores nothing.
    let refused_id = out_dir.path().join("refused");
    let mut cli = sso_login(&gw, &refused_id, &[]);
    let (url, _) = printed(&mut cli);
    let r = browser.post(
        &web,
        &format!("/api/v1/sso/cli/{}/deny", poll_of(&url)),
        true,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let done = cli.finish(COMMAND_TIMEOUT);
    assert!(!done.status.success(), "{done:?}");
    assert!(
        done.stderr
            .contains("refused in the browser by vendor acme/tech"),
        "{done:?}"
    );
    assert!(!refused_id.with_extension("crt").exists());

    // A login nobody approves: the CLI gives up with a clear message.
    let waited_id = out_dir.path().join("waited");
    let t0 = Instant::now();
    let mut cli = sso_login(&gw, &waited_id, &["--wait", "3s"]);
    let _ = printed(&mut cli);
    let done = cli.finish(COMMAND_TIMEOUT);
    assert!(!done.status.success(), "{done:?}");
    assert!(
        done.stderr
            .contains("nobody approved this login in the browser within 3s"),
        "{done:?}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(!waited_id.with_extension("crt").exists());
}

/// A fresh anonymous client (one request per connection without a certificate).
fn anonymous(addr: &str, root: &Path, transport: Transport) -> Client {
    Client::anonymous(addr, root, transport).unwrap()
}

async fn start_sso(client: &Client, csr: &str) -> Response {
    client
        .request(&Request::SsoStart(SsoStart {
            provider: None,
            csr: csr.to_owned(),
        }))
        .await
        .unwrap()
}

async fn poll(addr: &str, root: &Path, id: &str) -> Response {
    anonymous(addr, root, Transport::Tcp)
        .request(&Request::SsoPoll {
            poll: id.to_owned(),
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_logins_expire_are_bounded_and_need_the_console() {
    init_logs();
    let clock = Arc::new(FixedClock::new(ward_tests::now()));
    let pki = Arc::new(Pki::new());
    let tg = start_gateway(
        pki.clone(),
        &[],
        "",
        "\n[web]\nlisten = \"127.0.0.1:0\"\n",
        clock.clone(),
    )
    .await;
    let gw = tg.gw.as_ref().unwrap();
    let web_addr = gw.web_addr().unwrap();
    let (tcp, quic, root) = (tg.tcp(), tg.quic(), pki.root());
    let (_key, csr) = ward_client::key_and_csr("anyone").unwrap();

    // A start answers the console's URL, a code and the expiry, 5 minutes on.
    let pending = match start_sso(&anonymous(&tcp, &root, Transport::Tcp), &csr).await {
        Response::SsoPending(p) => p,
        other => panic!("{other:?}"),
    };
    let SsoPending {
        url,
        user_code,
        poll: id,
        expires_unix,
    } = pending;
    assert_eq!(url, format!("https://{web_addr}/#/sso/cli/{id}"));
    assert!(is_code(&user_code), "{user_code}");
    assert_eq!(expires_unix, clock.now().unix_timestamp() + 300);

    // One request per connection without a certificate: a second stream on the same QUIC
    // connection is refused.
    let q = anonymous(&quic, &root, Transport::Quic);
    assert!(matches!(
        q.request(&Request::SsoPoll { poll: id.clone() })
            .await
            .unwrap(),
        Response::SsoPending(_)
    ));
    match q
        .request(&Request::SsoPoll { poll: id.clone() })
        .await
        .unwrap()
    {
        Response::Error {
            code: ErrorCode::Forbidden,
            message,
        } => assert!(message.contains("one login per connection"), "{message}"),
        other => panic!("{other:?}"),
    }

    // A provider the gateway does not have is refused with what to do.
    let named = Request::SsoStart(SsoStart {
        provider: Some("nope".into()),
        csr: csr.clone(),
    });
    match anonymous(&tcp, &root, Transport::Tcp)
        .request(&named)
        .await
        .unwrap()
    {
        Response::Error {
            code: ErrorCode::BadRequest,
            message,
        } => assert!(message.contains("no identity provider"), "{message}"),
        other => panic!("{other:?}"),
    }

    // A CSR that could never be certified is refused at once.
    match start_sso(&anonymous(&tcp, &root, Transport::Tcp), "not a csr").await {
        Response::Error {
            code: ErrorCode::BadRequest,
            message,
        } => assert!(message.contains("CSR refused"), "{message}"),
        other => panic!("{other:?}"),
    }

    // Just before 5 minutes it still waits; at 5 minutes it is gone, with a reason, for the CLI
    // and for the page.
    clock.advance(time::Duration::seconds(299));
    assert!(matches!(
        poll(&tcp, &root, &id).await,
        Response::SsoPending(_)
    ));
    clock.advance(time::Duration::seconds(1));
    match poll(&tcp, &root, &id).await {
        Response::Denied { reason } => {
            assert!(reason.contains("unknown or has expired"), "{reason}");
            assert!(reason.contains("ward login --sso"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    match poll(&tcp, &root, &"x".repeat(43)).await {
        Response::Denied { reason } => assert!(reason.contains("unknown"), "{reason}"),
        other => panic!("{other:?}"),
    }

    // At most 8 waiting from one address.
    for _ in 0..ward_server::services::sso::MAX_PER_SOURCE {
        assert!(matches!(
            start_sso(&anonymous(&tcp, &root, Transport::Tcp), &csr).await,
            Response::SsoPending(_)
        ));
    }
    match start_sso(&anonymous(&tcp, &root, Transport::Tcp), &csr).await {
        Response::Denied { reason } => assert!(reason.contains("your address"), "{reason}"),
        other => panic!("{other:?}"),
    }
    drop(tg);

    // A gateway without the console refuses `--sso` and says what to do.
    let pki = Arc::new(Pki::new());
    let tg = start_gateway(pki.clone(), &[], "", "", clock.clone()).await;
    match start_sso(&anonymous(&tg.tcp(), &pki.root(), Transport::Tcp), &csr).await {
        Response::Denied { reason } => {
            assert!(reason.contains("web console is off"), "{reason}");
            assert!(reason.contains("ward login"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// The page in real Chromium (tests/web/cli.mjs): the login URL sends the user to sign in and
/// back, the page shows the code and source, approving gives the CLI its certificate, refusing
/// tells the CLI so, a used link says so.
#[test]
fn ward_login_sso_in_a_real_browser() {
    init_logs();
    if !browser_ready() {
        return;
    }
    let pki = Arc::new(Pki::new());
    let (gw, web_port, tech) = world(&pki);
    let out_dir = tempfile::tempdir().unwrap();
    let first = out_dir.path().join("first");
    let mut cli = Some(sso_login(&gw, &first, &[]));
    let (url, code) = printed(cli.as_mut().unwrap());
    let screenshots = std::env::var_os("WARD_WEB_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/web-screenshots"));
    std::fs::create_dir_all(&screenshots).unwrap();
    let node_state = tempfile::tempdir().unwrap();
    let env = [
        ("WARD_WEB_URL", format!("https://127.0.0.1:{web_port}")),
        (
            "WARD_WEB_USERS",
            json!({ "vendor": tech.json() }).to_string(),
        ),
        (
            "WARD_WEB_CASE",
            json!({"url": url, "code": code, "source": "127.0.0.1"}).to_string(),
        ),
        ("WARD_WEB_SCREENSHOTS", screenshots.display().to_string()),
        ("WARD_WEB_STATE", node_state.path().display().to_string()),
    ];
    let second = out_dir.path().join("second");
    let mut failures = Vec::new();
    let (ok, output) = run_node("cli.mjs", &env, &mut failures, |name, data| match name {
        "second" => {
            let mut p = sso_login(&gw, &second, &[]);
            let (url, code) = printed(&mut p);
            cli = Some(p);
            json!({"ok": true, "url": url, "code": code})
        }
        "cli-done" => {
            let Some(p) = cli.take() else {
                return json!({"ok": false, "why": "no CLI is running"});
            };
            let done = p.finish(COMMAND_TIMEOUT);
            let verdict = match data["expect"].as_str() {
                Some("approved")
                    if done.status.success()
                        && done.stdout.contains("logged in as vendor acme/tech") =>
                {
                    devices_work(&gw, &first)
                }
                Some("refused")
                    if !done.status.success()
                        && done
                            .stderr
                            .contains("refused in the browser by vendor acme/tech")
                        && !second.with_extension("crt").exists() =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "the CLI did not end as {}: {done:?}",
                    data["expect"]
                )),
            };
            match verdict {
                Ok(()) => json!({"ok": true}),
                Err(why) => json!({"ok": false, "why": why}),
            }
        }
        other => json!({"ok": false, "why": format!("the Rust test knows no {other:?}")}),
    });
    assert!(ok && failures.is_empty(), "{failures:#?}\n{output}");
}
