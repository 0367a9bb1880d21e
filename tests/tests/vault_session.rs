//! Credential injection through a real gateway (issue 14; security cases 43 and 44): a vendor
//! reaches the simulated pump's prompt and a clinician's curl reaches an HTTP console without
//! either knowing the password, and afterwards the secret (and its base64 forms) is in no artifact:
//! recordings, the audit log, every export format, `ward replay`, the gateway's trace-level log,
//! the clients' output, an OTLP collector's capture, `ward.db`. A device login that fails refuses
//! the session before any byte of the user's reaches the device; a device's 401 is audited.
//!
//! Everything talks to 127.0.0.1 only; every wait is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ward_ca::Kind;
use ward_tests::process::{free_port, ward, Input, Proc, COMMAND_TIMEOUT};
use ward_tests::{audit_events, ChildGateway, DeviceSpec, Pki};

/// A random password a device accepts (letters and digits: nothing a prompt pattern matches).
fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..24)
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

/// An HTTP console behind Basic auth for `user:password`: 200 and a page, else 401. Keeps the
/// `Authorization` values it saw.
fn http_console(user: &str, password: &str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let want = want.clone();
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut auth = String::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("authorization") {
                                auth = v.trim().to_string();
                            }
                        }
                    }
                    seen.lock().unwrap().push(auth.clone());
                    let (status, body) = if auth == want {
                        ("200 OK", "monitor-3: HR 72 SpO2 98\n")
                    } else {
                        ("401 Unauthorized", "login required\n")
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nwww-authenticate: Basic realm=\"monitor\"\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// The simulated pump (its `service` account's password set to `password`) on a runtime of its
/// own, so the test can drive blocking commands.
fn pump(password: &str) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let accounts = ward::sim::factory_accounts();
    accounts
        .lock()
        .unwrap()
        .insert("service".into(), password.to_string());
    let dev = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ward::sim::telnet_console_with(l, accounts).unwrap()
    });
    (dev.addr, rt)
}

/// `ward vault set DEVICE ACCOUNT --user USER --stdin` through the gateway as `admin`.
fn vault_set(gw: &ChildGateway, admin: &Path, device: &str, account: &str, user: &str, pw: &str) {
    let mut cmd = ward(&["vault", "set", device, account, "--user", user, "--stdin"]);
    cmd.args(["--gateway", &gw.addr, "--identity"])
        .arg(admin)
        .arg("--ca")
        .arg(gw.pki.root());
    let out = ward_tests::process::run_with(
        &mut cmd,
        Input::Bytes(format!("{pw}\n").into_bytes()),
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "vault set failed:\n{}", out.stderr);
}

/// `ward connect DEVICE` (stdin/stdout are the session) as `identity`, with `input`.
fn connect(
    gw: &ChildGateway,
    identity: &Path,
    device: &str,
    input: &[u8],
) -> ward_tests::process::Finished {
    let mut cmd = ward(&["connect", device, "--gateway", &gw.addr, "--identity"]);
    cmd.arg(identity).arg("--ca").arg(gw.pki.root());
    ward_tests::process::run_with(&mut cmd, Input::Bytes(input.to_vec()), COMMAND_TIMEOUT)
}

/// Every file under `dir`, recursively, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

const RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
inject = "service"

[[rule]]
name = "icu-sees-monitors"
who = { kind = "clinician" }
devices = { labels = { class = "monitor" } }
inject = "console"

[[rule]]
name = "admins"
who = { kind = "admin" }
devices = { all = true }
"#;

#[test]
fn injected_credentials_appear_in_no_artifact() {
    let pump_pw = random_secret();
    let http_pw = random_secret();
    let (pump_addr, _pump_rt) = pump(&pump_pw);
    let (http_addr, seen) = http_console("svc", &http_pw);
    let (otlp, posts) = ward_tests::otlp_collector();
    let pki = Arc::new(Pki::new());
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let clinician = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let admin = pki.person(Kind::Admin, "root", None, &[]);
    let devices = [
        DeviceSpec::new("pump-12", pump_addr, "telnet", &[("vendor", "acme")]),
        DeviceSpec::new("monitor-3", http_addr, "http", &[("class", "monitor")]),
    ];
    let mut gw = ChildGateway::start_env(
        pki.clone(),
        &devices,
        RULES,
        "",
        None,
        &[("RUST_LOG", "trace"), ("WARD_OTLP_ENDPOINT", otlp.as_str())],
    );
    vault_set(&gw, &admin, "pump-12", "service", "service", &pump_pw);
    vault_set(&gw, &admin, "monitor-3", "console", "svc", &http_pw);

    // The vendor lands at the pump's prompt without typing a password.
    let telnet = connect(&gw, &vendor, "pump-12", b"status\r\nexit\r\n");
    assert!(telnet.status.success(), "{}", telnet.stderr);
    assert!(
        telnet.stdout.contains("pump>"),
        "no pump prompt:\n{}",
        telnet.stdout
    );
    assert!(
        telnet.stdout.contains("RUNNING") || telnet.stdout.to_lowercase().contains("status"),
        "the status command did not reach the console:\n{}",
        telnet.stdout
    );

    // The clinician's curl, with its own wrong credentials, gets the page: the gateway replaced them.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut fwd_cmd = ward(&[
        "connect",
        "monitor-3",
        "--listen",
        &listen,
        "--gateway",
        &gw.addr,
        "--identity",
    ]);
    fwd_cmd.arg(&clinician).arg("--ca").arg(pki.root());
    let fwd = Proc::spawn(&mut fwd_cmd, Input::Null);
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "ward connect --listen did not listen:\n{}",
            fwd.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let curl = ward_tests::process::run_with(
        std::process::Command::new("curl")
            .args(["-sS", "-u", "nurse:guess", "--max-time", "20"])
            .arg(format!("http://{listen}/"))
            .arg(format!("http://{listen}/again")),
        Input::Null,
        COMMAND_TIMEOUT,
    );
    assert!(curl.status.success(), "curl failed: {}", curl.stderr);
    assert_eq!(
        curl.stdout.matches("monitor-3: HR 72").count(),
        2,
        "{}",
        curl.stdout
    );
    let auths = seen.lock().unwrap().clone();
    assert!(!auths.is_empty());
    let guessed = base64::engine::general_purpose::STANDARD.encode("nurse:guess");
    assert!(
        auths.iter().all(|a| !a.contains(&guessed)),
        "the client's own Authorization reached the device: {auths:?}"
    );
    // `ward connect --listen` serves until stopped: take what it printed, then stop it.
    let fwd_out = [fwd.stdout().into_bytes(), fwd.stderr().into_bytes()].concat();
    drop(fwd);

    // Stop the gateway: the exporter flushes, the recordings are sealed.
    gw.sigterm();
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.proc.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "gateway did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let gateway_log = gw.proc.stderr();

    // Every export format, and replay, of every session.
    let state = gw.state_dir.clone();
    let exports = tempfile::tempdir().unwrap();
    let list =
        ward_tests::process::run_ok(ward(&["sessions", "--json", "--state-dir"]).arg(&state));
    let ids: Vec<String> = list
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
        .collect();
    // The telnet session, the HTTP one, and the empty one the readiness probe opened.
    assert!(
        ids.len() >= 2,
        "one telnet and one HTTP session at least:\n{}",
        list.stdout
    );
    let mut replays = Vec::new();
    for id in &ids {
        for format in ["asciicast", "pcap", "raw", "json"] {
            let out = exports.path().join(format!("{id}.{format}"));
            ward_tests::process::run_ok(
                ward(&["export", id, "--format", format, "--out"])
                    .arg(&out)
                    .arg("--state-dir")
                    .arg(&state),
            );
        }
        let replay = ward_tests::process::run_ok(
            ward(&["replay", id, "--no-timing", "--input", "--state-dir"]).arg(&state),
        );
        replays.push(replay.raw_stdout);
        replays.push(replay.stderr.into_bytes());
    }

    // Positive controls: what is searched does hold the sessions.
    let recordings = files_under(&state.join("recordings"));
    assert_eq!(recordings.len(), ids.len());
    assert!(
        recordings
            .iter()
            .any(|(_, b)| contains(b, b"credential_injected")),
        "no credential_injected event in the recordings"
    );
    let json_exports: Vec<u8> = files_under(exports.path())
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "json"))
        .flat_map(|(_, b)| b)
        .collect();
    assert!(contains(&json_exports, b"credential_injected"));
    let otlp_bodies: Vec<u8> = posts
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, body)| body.clone())
        .collect();
    assert!(
        contains(&otlp_bodies, b"pump-12"),
        "the collector saw no session"
    );
    assert!(
        contains(gateway_log.as_bytes(), b"TRACE") || contains(gateway_log.as_bytes(), b"DEBUG"),
        "the gateway log is not at trace level"
    );
    let audit = audit_events(&state);
    assert!(
        audit.iter().any(|e| e["event"] == "vault_set"),
        "no vault_set event"
    );
    assert!(
        audit
            .iter()
            .any(|e| e["event"] == "session_open" && e["detail"]["injected_account"] == "service"),
        "session_open does not name the injected account"
    );

    // The search.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let needles: Vec<(String, String)> = vec![
        ("pump password".into(), pump_pw.clone()),
        ("HTTP password".into(), http_pw.clone()),
        ("pump password, base64".into(), b64(&pump_pw)),
        ("HTTP password, base64".into(), b64(&http_pw)),
        (
            "service:pump password, base64".into(),
            b64(&format!("service:{pump_pw}")),
        ),
        (
            "svc:HTTP password, base64".into(),
            b64(&format!("svc:{http_pw}")),
        ),
    ];
    let mut artifacts: Vec<(String, Vec<u8>)> = Vec::new();
    for (p, b) in files_under(&state) {
        artifacts.push((p.display().to_string(), b));
    }
    for (p, b) in files_under(exports.path()) {
        artifacts.push((p.display().to_string(), b));
    }
    artifacts.push(("gateway log (trace)".into(), gateway_log.into_bytes()));
    artifacts.push((
        "ward connect pump-12 stdout".into(),
        telnet.raw_stdout.clone(),
    ));
    artifacts.push((
        "ward connect pump-12 stderr".into(),
        telnet.stderr.into_bytes(),
    ));
    artifacts.push(("ward connect monitor-3 output".into(), fwd_out));
    artifacts.push((
        "curl output".into(),
        [curl.raw_stdout, curl.stderr.into_bytes()].concat(),
    ));
    artifacts.push(("OTLP capture".into(), otlp_bodies));
    for (i, r) in replays.into_iter().enumerate() {
        artifacts.push((format!("ward replay output {i}"), r));
    }
    assert!(
        artifacts.iter().any(|(p, _)| p.ends_with("ward.db")),
        "ward.db not searched"
    );
    let mut hits = Vec::new();
    for (what, needle) in &needles {
        for (name, bytes) in &artifacts {
            if contains(bytes, needle.as_bytes()) {
                hits.push(format!("{what} in {name}"));
            }
        }
    }
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
}

/// A telnet console that refuses every login and keeps every byte it receives.
fn refusing_console() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let got = got2.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = [0u8; 1024];
                for prompt in [
                    &b"login: "[..],
                    b"Password: ",
                    b"\r\nLogin incorrect\r\nlogin: ",
                ] {
                    if stream.write_all(prompt).is_err() {
                        return;
                    }
                    // Read one line (or whatever arrives within the timeout).
                    let mut line = Vec::new();
                    while !line.contains(&b'\n') && !line.contains(&b'\r') {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                got.lock().unwrap().extend_from_slice(&line);
                                return;
                            }
                            Ok(n) => line.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.lock().unwrap().extend_from_slice(&line);
                }
                // Keep reading until the gateway hangs up.
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, got)
}

#[test]
fn a_failed_device_login_refuses_the_session_before_any_user_byte() {
    let (addr, received) = refusing_console();
    let pki = Arc::new(Pki::new());
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let admin = pki.person(Kind::Admin, "root", None, &[]);
    let devices = [DeviceSpec::new(
        "pump-12",
        addr,
        "telnet",
        &[("vendor", "acme")],
    )];
    let gw = ChildGateway::start(pki.clone(), &devices, RULES, "", None);
    let secret = random_secret();
    vault_set(&gw, &admin, "pump-12", "service", "service", &secret);
    let out = connect(&gw, &vendor, "pump-12", b"USER-TYPED-7f3a\r\nrm -rf /\r\n");
    assert!(
        !out.status.success(),
        "the session was not refused:\n{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("device login failed"),
        "the refusal does not say why:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&secret));
    let got = received.lock().unwrap().clone();
    assert!(
        contains(&got, b"service"),
        "the gateway did not log in: {got:?}"
    );
    assert!(
        !contains(&got, b"USER-TYPED-7f3a") && !contains(&got, b"rm -rf"),
        "a byte of the user's reached the device: {:?}",
        String::from_utf8_lossy(&got)
    );
    let audit = gw.audit_events();
    let failed = audit
        .iter()
        .find(|e| e["event"] == "device_login_failed")
        .expect("no device_login_failed event");
    assert_eq!(failed["severity"], "high");
    assert!(!failed.to_string().contains(&secret));
}

#[test]
fn sessions_are_refused_when_the_credential_cannot_be_given() {
    let (pump_addr, _rt) = pump("unused-password-1");
    let pki = Arc::new(Pki::new());
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let devices = [
        DeviceSpec::new("pump-12", pump_addr, "telnet", &[("vendor", "acme")]),
        DeviceSpec::new("pacs-1", pump_addr, "dicom", &[("vendor", "acme")]),
    ];
    let gw = ChildGateway::start(pki.clone(), &devices, RULES, "", None);
    // Nothing vaulted yet: refused, and told what an admin does.
    let out = connect(&gw, &vendor, "pump-12", b"");
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("ward vault set pump-12 service"),
        "{}",
        out.stderr
    );
    // A rule injecting into a DICOM device: refused with the rule named.
    let out = connect(&gw, &vendor, "pacs-1", b"");
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("acme-maintains-its-pumps") && out.stderr.contains("dicom"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_device_rejecting_the_vaulted_credential_is_audited() {
    let (http_addr, _) = http_console("svc", "the-real-one-42");
    let pki = Arc::new(Pki::new());
    let clinician = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let admin = pki.person(Kind::Admin, "root", None, &[]);
    let devices = [DeviceSpec::new(
        "monitor-3",
        http_addr,
        "http",
        &[("class", "monitor")],
    )];
    let gw = ChildGateway::start(pki.clone(), &devices, RULES, "", None);
    vault_set(
        &gw,
        &admin,
        "monitor-3",
        "console",
        "svc",
        "an-outdated-value-7",
    );
    let out = connect(
        &gw,
        &clinician,
        "monitor-3",
        b"GET / HTTP/1.1\r\nHost: monitor\r\nConnection: close\r\n\r\n",
    );
    assert!(out.stdout.contains("401"), "{}\n{}", out.stdout, out.stderr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = gw.audit_events();
        if let Some(e) = audit.iter().find(|e| e["event"] == "credential_rejected") {
            assert_eq!(e["severity"], "high");
            assert!(
                e.to_string()
                    .contains("device rejected the vaulted credential"),
                "{e}"
            );
            assert!(!e.to_string().contains("an-outdated-value-7"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no credential_rejected event: {audit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
