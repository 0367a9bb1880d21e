//! The web console's sign-in, for real: a gateway with `[web] listen` on 127.0.0.1:0, talked to
//! over HTTPS by curl (a real TLS client, trusting only Ward's root). Password sign-in always
//! needs TOTP and shares `ward login`'s back-off and audit; browser sessions end on sign-out, on
//! the idle timeout (the gateway's injected clock) and when the user is disabled; state-changing
//! requests need the CSRF token and are refused cross-site; client certificates from Ward's CA
//! sign in whatever their kind; every response carries the security headers; TLS 1.2 is refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::{Clock, FixedClock, Kind};
use ward_core::totp::{self, TotpSecret};
use ward_store::users::UserStore;
use ward_tests::*;

/// What curl got back.
#[derive(Debug)]
struct Reply {
    /// The HTTP status; 0 when no HTTP answer came (the handshake failed).
    status: u16,
    /// Response headers, lowercased names, in order.
    headers: Vec<(String, String)>,
    body: String,
    /// curl's exit code and stderr.
    exit: Option<i32>,
    stderr: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// The console at `base`, reached by curl trusting `root`.
struct Console {
    base: String,
    root: PathBuf,
    tmp: tempfile::TempDir,
}

impl Console {
    /// `curl -X METHOD base+path ARGS...`.
    async fn call(&self, method: &str, path: &str, args: &[&str]) -> Reply {
        let n = rand::random::<u64>();
        let head = self.tmp.path().join(format!("h{n}"));
        let body = self.tmp.path().join(format!("b{n}"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-X", method, "--cacert"])
            .arg(&self.root)
            .arg("-D")
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(format!("{}{path}", self.base));
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let headers = std::fs::read_to_string(&head)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply {
            status: String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            headers,
            body: std::fs::read_to_string(&body).unwrap_or_default(),
            exit: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn get(&self, path: &str, args: &[&str]) -> Reply {
        self.call("GET", path, args).await
    }

    /// POST /api/v1/signin with `body` as JSON.
    async fn signin(&self, body: &Value, extra: &[&str]) -> Reply {
        let body = body.to_string();
        let mut args = vec![
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ];
        args.extend(extra);
        self.call("POST", "/api/v1/signin", &args).await
    }
}

/// The session cookie's value from a sign-in's `Set-Cookie`.
fn cookie_of(r: &Reply) -> String {
    let set = r.header("set-cookie").unwrap_or_else(|| panic!("{r:?}"));
    let value = set
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("ward_session="))
        .unwrap_or_else(|| panic!("{set}"));
    format!("ward_session={value}")
}

/// A user with a known password (and TOTP where `[login]` asks for it, here every kind but
/// clinician); returns its TOTP secret.
fn add_user(state: &Path, name: &str, kind: &str, clock: &dyn Clock) -> Option<TotpSecret> {
    let db = ward_tests::open_store(state);
    let login = ward_core::config::LoginConfig {
        mfa: vec![
            ward_core::PrincipalKind::Vendor,
            ward_core::PrincipalKind::Admin,
            ward_core::PrincipalKind::Security,
        ],
        ..Default::default()
    };
    let user = ward_server::jit::NewUser {
        password: Some(PASSWORD.into()),
        must_change: false,
        roles: vec!["soc".into()],
        ..ward_server::jit::NewUser::new(name, kind)
    };
    ward_server::jit::create_user(&db, &login, user, clock.now()).unwrap();
    db.user(name)
        .unwrap()
        .unwrap()
        .totp_secret
        .map(|s| TotpSecret::from_base32(&s).unwrap())
}

const PASSWORD: &str = "correct horse battery staple 42";

/// The security headers every response carries.
fn assert_security_headers(r: &Reply) {
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("no CSP: {r:?}"));
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{r:?}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{r:?}");
    assert!(
        r.header("strict-transport-security")
            .is_some_and(|v| v.starts_with("max-age=")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_sign_in_sessions_csrf_certificates_and_tls() {
    init_logs();
    if !require_peer("curl") {
        return;
    }
    let clock = Arc::new(FixedClock::new(now()));
    let pki = Arc::new(Pki::new());
    let mut tg = start_gateway(
        pki.clone(),
        &[],
        "",
        "\n[web]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"10m\"\n",
        clock.clone(),
    )
    .await;
    let state = tg.state_dir();
    let addr = tg
        .gw
        .as_ref()
        .unwrap()
        .web_addr()
        .expect("[web] listen is set");
    let web = Console {
        base: format!("https://{addr}"),
        root: pki.root(),
        tmp: tempfile::tempdir().unwrap(),
    };
    let sam = add_user(&state, "sam", "security", clock.as_ref()).expect("security has TOTP");
    let dana = add_user(&state, "dana", "security", clock.as_ref()).unwrap();
    assert!(add_user(&state, "carol", "clinician", clock.as_ref()).is_none());
    let code = |s: &TotpSecret| totp::code_at(s, clock.now().unix_timestamp());
    let next_step = || clock.advance(time::Duration::seconds(31));

    // Nothing without signing in; the security headers are on every answer, 401s too.
    let r = web.get("/api/v1/whoami", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.error().contains("sign in"), "{r:?}");
    assert_security_headers(&r);
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");

    // A password alone is never enough: without a code, with a wrong one, and for a user who has
    // no TOTP at all (a clinician: `ward login` would let her in on a password).
    let no_totp = serde_json::json!({"user": "sam", "password": PASSWORD});
    let r = web.signin(&no_totp, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.error().starts_with("login failed"), "{r:?}");
    assert!(r.header("set-cookie").is_none(), "{r:?}");
    next_step();
    let wrong = serde_json::json!({"user": "sam", "password": PASSWORD, "totp": "000000"});
    let wrong = if code(&sam) == "000000" {
        serde_json::json!({"user": "sam", "password": PASSWORD, "totp": "111111"})
    } else {
        wrong
    };
    let r = web.signin(&wrong, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.error().starts_with("login failed"), "{r:?}");
    let r = web
        .signin(
            &serde_json::json!({"user": "carol", "password": PASSWORD, "totp": "123456"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    // The same back-off as `ward login`: a third failure for sam from here, then even the right
    // code waits.
    let r = web.signin(&wrong, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    let right = serde_json::json!({"user": "sam", "password": PASSWORD, "totp": code(&sam)});
    let r = web.signin(&right, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.error().contains("too many failed logins"), "{r:?}");

    // Sign-in is JSON only and refused from another site.
    next_step();
    let right = serde_json::json!({"user": "sam", "password": PASSWORD, "totp": code(&sam)});
    let r = web
        .call(
            "POST",
            "/api/v1/signin",
            &[
                "-H",
                "Content-Type: text/plain",
                "--data-binary",
                &right.to_string(),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = web
        .signin(&right, &["-H", "Origin: https://evil.example"])
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = web
        .signin(&right, &["-H", "Sec-Fetch-Site: cross-site"])
        .await;
    assert_eq!(r.status, 403, "{r:?}");

    // Right password and code: whoami and a cookie the page's scripts cannot read.
    let r = web
        .signin(&right, &["-H", &format!("Origin: {}", web.base)])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_security_headers(&r);
    let me = r.json();
    assert_eq!(me["principal"], "security sam", "{me}");
    assert_eq!(me["kind"], "security", "{me}");
    assert_eq!(me["via"], "password", "{me}");
    assert_eq!(me["roles"], serde_json::json!(["soc"]), "{me}");
    assert_eq!(me["idle_timeout_s"], 600, "{me}");
    assert!(me["serial"].as_str().unwrap().starts_with("web-"), "{me}");
    assert!(me["expires_at"].is_string(), "{me}");
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    assert!(csrf.len() >= 32, "{me}");
    let set = r.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|f| f == flag), "{flag} missing: {set}");
    }
    let cookie = cookie_of(&r);
    let with_cookie = ["-H", &format!("Cookie: {cookie}")];
    let r = web.get("/api/v1/whoami", &with_cookie).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["serial"], me["serial"], "{r:?}");
    assert_eq!(r.json()["csrf"], csrf.as_str(), "{r:?}");
    // The same code again is refused (replay), saying so since the password was right.
    let r = web.signin(&right, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.error().contains("used already"), "{r:?}");

    // A state-changing request without the CSRF token, or with a wrong one, or cross-site, is
    // refused and changes nothing.
    let r = web.call("POST", "/api/v1/signout", &with_cookie).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("X-Ward-CSRF"), "{r:?}");
    let wrong_csrf = [&with_cookie[..], &["-H", "X-Ward-CSRF: 0123456789abcdef"]].concat();
    let r = web.call("POST", "/api/v1/signout", &wrong_csrf).await;
    assert_eq!(r.status, 403, "{r:?}");
    let csrf_header = format!("X-Ward-CSRF: {csrf}");
    let cross = [
        &with_cookie[..],
        &["-H", &csrf_header, "-H", "Sec-Fetch-Site: cross-site"],
    ]
    .concat();
    let r = web.call("POST", "/api/v1/signout", &cross).await;
    assert_eq!(r.status, 403, "{r:?}");
    let foreign = [
        &with_cookie[..],
        &["-H", &csrf_header, "-H", "Origin: https://127.0.0.1:1"],
    ]
    .concat();
    let r = web.call("POST", "/api/v1/signout", &foreign).await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = web.get("/api/v1/whoami", &with_cookie).await;
    assert_eq!(r.status, 200, "still signed in: {r:?}");

    // With it, sign-out ends the session: the cookie is expired and no longer works.
    let signout = [&with_cookie[..], &["-H", &csrf_header]].concat();
    let r = web.call("POST", "/api/v1/signout", &signout).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_security_headers(&r);
    let expired = r.header("set-cookie").unwrap();
    assert!(expired.contains("Max-Age=0"), "{expired}");
    let r = web.get("/api/v1/whoami", &with_cookie).await;
    assert_eq!(r.status, 401, "{r:?}");

    // The idle timeout (10 minutes here) on the gateway's clock ends a session.
    next_step();
    let r = web
        .signin(
            &serde_json::json!({"user": "sam", "password": PASSWORD, "totp": code(&sam)}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let idle = ["-H".to_owned(), format!("Cookie: {}", cookie_of(&r))];
    let idle: Vec<&str> = idle.iter().map(String::as_str).collect();
    clock.advance(time::Duration::minutes(9));
    let r = web.get("/api/v1/whoami", &idle).await;
    assert_eq!(
        r.status, 200,
        "a request within the idle timeout keeps it: {r:?}"
    );
    clock.advance(time::Duration::minutes(9));
    let r = web.get("/api/v1/whoami", &idle).await;
    assert_eq!(r.status, 200, "{r:?}");
    clock.advance(time::Duration::minutes(10));
    let r = web.get("/api/v1/whoami", &idle).await;
    assert_eq!(r.status, 401, "idle for 10 minutes: {r:?}");

    // A disabled user's session stops working at once.
    next_step();
    let r = web
        .signin(
            &serde_json::json!({"user": "dana", "password": PASSWORD, "totp": code(&dana)}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let dana_cookie = ["-H".to_owned(), format!("Cookie: {}", cookie_of(&r))];
    let dana_cookie: Vec<&str> = dana_cookie.iter().map(String::as_str).collect();
    assert_eq!(web.get("/api/v1/whoami", &dana_cookie).await.status, 200);
    ward_store::store::SqliteStore::open(&state)
        .unwrap()
        .disable_user("dana", clock.now())
        .unwrap();
    let mut status = 0;
    for _ in 0..50 {
        status = web.get("/api/v1/whoami", &dana_cookie).await.status;
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401, "dana's session outlived her user");

    // Client certificates from Ward's CA: a security identity and a vendor both sign in (what
    // each may do is decided per endpoint); the CSRF token is bound to the certificate.
    let ttl = Some(time::Duration::hours(4));
    let sec = pki.person_at(Kind::Security, "lee", None, &["soc"], ttl, clock.now());
    let vendor = pki.person_at(Kind::Vendor, "tech", Some("acme"), &[], ttl, clock.now());
    let cert_args = |prefix: &Path| {
        vec![
            "--cert".to_owned(),
            format!("{}.crt", prefix.display()),
            "--key".to_owned(),
            format!("{}.key", prefix.display()),
        ]
    };
    let sec_args = cert_args(&sec);
    let sec_args: Vec<&str> = sec_args.iter().map(String::as_str).collect();
    let r = web.get("/api/v1/whoami", &sec_args).await;
    assert_eq!(r.status, 200, "{r:?}");
    let me = r.json();
    assert_eq!(me["via"], "certificate", "{me}");
    assert_eq!(me["principal"], "security lee", "{me}");
    assert!(me["idle_timeout_s"].is_null(), "{me}");
    assert_security_headers(&r);
    let cert_csrf = me["csrf"].as_str().unwrap().to_owned();
    let r = web.call("POST", "/api/v1/signout", &sec_args).await;
    assert_eq!(
        r.status, 403,
        "a certificate caller needs the CSRF token too: {r:?}"
    );
    let cert_csrf_header = format!("X-Ward-CSRF: {cert_csrf}");
    let with = [&sec_args[..], &["-H", &cert_csrf_header]].concat();
    let r = web.call("POST", "/api/v1/signout", &with).await;
    assert_eq!(r.status, 204, "{r:?}");
    let vendor_args = cert_args(&vendor);
    let vendor_args: Vec<&str> = vendor_args.iter().map(String::as_str).collect();
    let r = web.get("/api/v1/whoami", &vendor_args).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["kind"], "vendor", "{r:?}");
    assert_eq!(r.json()["via"], "certificate", "{r:?}");
    assert_ne!(r.json()["csrf"], cert_csrf.as_str(), "{r:?}");
    // A certificate from another CA fails the handshake.
    let other = Pki::new();
    let stranger = other.person(Kind::Security, "mallory", None, &[]);
    let r = web
        .get(
            "/api/v1/whoami",
            &cert_args(&stranger)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await;
    assert_eq!(r.status, 0, "{r:?}");
    assert_ne!(r.exit, Some(0), "{r:?}");

    // Plain HTTP instead of a handshake is dropped, a connection that never speaks holds only
    // its own slot, and the console answers meanwhile.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "a plain-HTTP peer was not dropped");
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "{got:?}"
    );
    let r = web.get("/api/v1/whoami", &vendor_args).await;
    assert_eq!(r.status, 200, "{r:?}");

    // TLS 1.3 only.
    let r = web.get("/api/v1/whoami", &["--tls-max", "1.2"]).await;
    assert_eq!(r.status, 0, "{r:?}");
    assert_ne!(r.exit, Some(0), "{r:?}");
    assert!(
        r.stderr.to_ascii_lowercase().contains("ssl") || r.stderr.contains("TLS"),
        "{r:?}"
    );

    // Every sign-in, failure and sign-out is in the audit log, with why.
    tg.shutdown(Duration::from_millis(50)).await;
    let events = audit_events(&state);
    let reasons = |event: &str, outcome: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["event"] == event && e["outcome"] == outcome)
            .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let denied = reasons("web_signin", "denied");
    for why in [
        "TOTP code missing",
        "wrong TOTP code",
        "MFA required but the user has no TOTP secret",
        "TOTP code reused",
        "sign-in without Content-Type: application/json",
    ] {
        assert!(denied.iter().any(|r| r == why), "{why} not in {denied:?}");
    }
    assert!(
        denied.iter().any(|r| r.starts_with("rate-limited")),
        "{denied:?}"
    );
    assert_eq!(reasons("web_signin", "success").len(), 3, "{events:#?}");
    let out = reasons("web_signout", "success");
    for why in ["signed out", "idle timeout", "the user is disabled"] {
        assert!(out.iter().any(|r| r == why), "{why} not in {out:?}");
    }
    let first = events
        .iter()
        .find(|e| e["event"] == "web_signin" && e["outcome"] == "success")
        .unwrap();
    assert_eq!(first["principal"]["kind"], "security", "{first}");
    assert_eq!(first["principal"]["name"], "sam", "{first}");
    assert!(first["detail"]["web_session"].is_string(), "{first}");
    assert_eq!(
        first["source"]
            .as_str()
            .map(|s| s.starts_with("127.0.0.1:")),
        Some(true),
        "{first}"
    );
}
