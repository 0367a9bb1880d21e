//! Devices that speak TLS themselves (issue 15, security case 50), end to end: real nginx serving
//! HTTPS with a self-signed certificate made by openssl, real curl speaking plain HTTP to
//! `ward connect --listen`, the `ward` binaries in between.
//!
//! - An unpinned TLS device is refused, with the fingerprint it presented and the command that
//!   pins it.
//! - `ward devices pin` (security/admin) shows the fingerprint the gateway sees; `--confirm` pins
//!   it; then curl gets the page byte-exact and the recording holds the plaintext exchange.
//! - The device restarted with a new certificate is refused with both fingerprints until it is
//!   re-pinned; confirming the stale fingerprint is refused.
//! - A vendor identity cannot pin (refused, audited); `device_pinned` events hold the old and new
//!   fingerprints.
//!
//! Fingerprints are computed independently with `openssl x509 -fingerprint -sha256`.
//! Under CI a missing peer fails the test (`require_peer`); locally it is skipped with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_ca::Kind;
use ward_tests::process::{run, run_ok, ward, Finished, Input, Proc, COMMAND_TIMEOUT};
use ward_tests::*;

const PAGE: &str =
    "<html><body><h1>PACS web console</h1><p>ward-device-tls-7e41, served over TLS</p></body></html>\n";

const DEVICE: &str = "pacs-web";

fn peers() -> bool {
    require_peer("curl") && require_peer("nginx") && require_peer("openssl")
}

/// A self-signed certificate and key made by openssl in `dir` (`NAME.crt`, `NAME.key`); its
/// fingerprint as Ward writes it (`sha256:` and lowercase hex).
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "30",
                "-subj",
            ])
            .arg(format!("/CN={name}.pacs.local/O=Radiology"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt),
    );
    let fp = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&crt),
    );
    // `sha256 Fingerprint=AB:CD:…` (the label's case varies by version).
    let hex = fp
        .stdout
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(hex.len(), 64, "{fp:?}");
    (crt, key, format!("sha256:{hex}"))
}

/// nginx serving [`PAGE`] over HTTPS on 127.0.0.1:`port` with `crt`/`key`.
struct Nginx {
    dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl Nginx {
    fn start(port: u16, crt: &Path, key: &Path) -> Option<Nginx> {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("html")).unwrap();
        std::fs::write(d.join("html/index.html"), PAGE).unwrap();
        let version = run(Command::new("nginx").arg("-V"));
        let build = version.stderr + &version.stdout;
        let mut temp_paths = String::new();
        for m in ["fastcgi", "uwsgi", "scgi"] {
            if !build.contains(&format!("--without-http_{m}_module")) {
                temp_paths.push_str(&format!("  {m}_temp_path {}/{m};\n", d.display()));
            }
        }
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  log_format req '"$request" $status $ssl_protocol';
  access_log {d}/access.log req;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
{temp_paths}  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    root {d}/html;
  }}
}}
"#,
            d = d.display(),
            crt = crt.display(),
            key = key.display(),
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let mut proc = Proc::spawn(
            Command::new("nginx")
                .arg("-p")
                .arg(d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .arg("-e")
                .arg(d.join("error.log")),
            Input::Null,
        );
        let pid = proc.child.id().to_string();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(status) = proc.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                if log.contains("Address already in use") {
                    return None;
                }
                panic!("nginx exited ({status}):\n{log}");
            }
            let written = std::fs::read_to_string(d.join("nginx.pid")).unwrap_or_default();
            if written.trim() == pid {
                return Some(Nginx {
                    dir,
                    proc: Some(proc),
                });
            }
            assert!(Instant::now() < deadline, "nginx did not start in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// The device's config: a TLS device (pin from the store) and a rule for acme's vendors.
fn device_and_rule(addr: SocketAddr) -> String {
    format!(
        r#"
[[device]]
id = "{DEVICE}"
address = "{addr}"
protocol = "http"
labels = {{ vendor = "acme", class = "pacs" }}
tls = {{ server_name = "pacs-web.pacs.local" }}

[[rule]]
name = "acme-reads-pacs-web"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ ids = ["{DEVICE}"] }}
"#
    )
}

/// `ward ARGS --gateway … --identity ID --ca …`.
fn ward_as(gw: &ChildGateway, identity: &Path, args: &[&str]) -> Finished {
    run(ward(args)
        .args(["--gateway", &gw.addr])
        .arg("--identity")
        .arg(identity)
        .arg("--ca")
        .arg(gw.pki.root()))
}

/// `ward connect DEVICE --listen 127.0.0.1:0` as a child; its local address.
fn forwarder(gw: &ChildGateway, identity: &Path) -> (Proc, SocketAddr) {
    let mut fwd = Proc::spawn(
        ward(&[
            "connect",
            DEVICE,
            "--gateway",
            &gw.addr,
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--identity")
        .arg(identity)
        .arg("--ca")
        .arg(gw.pki.root()),
        Input::Null,
    );
    fwd.wait_for("the forwarding line", COMMAND_TIMEOUT, |_, err| {
        err.contains("ward: forwarding ")
    });
    let err = fwd.stderr();
    let local: SocketAddr = err
        .split("ward: forwarding ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {err:?}"));
    (fwd, local)
}

/// `curl -sS --max-time 15 -w '\n%{http_code}' http://ADDR/`: (status, body, all).
fn curl(addr: SocketAddr) -> (String, String, Finished) {
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}/")));
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .map(|(b, c)| (b.to_string(), c.to_string()))
        .unwrap_or_default();
    (code, body, out)
}

/// Audit events named `name`, as JSON text (one string per event).
fn events(gw: &ChildGateway, name: &str) -> Vec<String> {
    gw.audit_events()
        .into_iter()
        .filter(|e| e["event"] == name)
        .map(|e| e.to_string())
        .collect()
}

/// Wait (bounded) until the audit log holds `n` events named `name`.
fn wait_events(gw: &ChildGateway, name: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        let found = events(gw, name);
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{n} {name} events expected, found {found:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `ward connect DEVICE` (stdin/stdout) attempt's output: refused sessions exit non-zero.
fn try_connect(gw: &ChildGateway, identity: &Path) -> Finished {
    ward_as(gw, identity, &["connect", DEVICE])
}

/// The plaintext of a recorded session (`ward export --format json`): (up, down, events).
fn recorded_plaintext(state: &Path, session: &str) -> (Vec<u8>, Vec<u8>, Vec<serde_json::Value>) {
    use base64::Engine as _;
    let out = run_ok(&mut ward(&[
        "export",
        session,
        "--format",
        "json",
        "--out",
        "-",
        "--state-dir",
        &state.display().to_string(),
    ]));
    let (mut up, mut down, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for line in out.stdout.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if r["type"] == "event" {
            events.push(r);
            continue;
        }
        if r["type"] != "data" {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(r["payload_b64"].as_str().unwrap())
            .unwrap();
        match r["dir"].as_str().unwrap() {
            "up" | "Up" => up.extend(bytes),
            _ => down.extend(bytes),
        }
    }
    (up, down, events)
}

#[test]
fn a_tls_device_is_reached_only_with_its_pinned_certificate() {
    if !peers() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (crt_a, key_a, fp_a) = self_signed(certs.path(), "pacs-a");
    let (crt_b, key_b, fp_b) = self_signed(certs.path(), "pacs-b");
    assert_ne!(fp_a, fp_b);
    let (port, mut nginx) = (0..5)
        .find_map(|_| {
            let port = ward_tests::process::free_port();
            Nginx::start(port, &crt_a, &key_a).map(|n| (port, n))
        })
        .expect("nginx could not bind a free loopback port in 5 attempts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let pki = Arc::new(Pki::new());
    let gw = ChildGateway::start(pki.clone(), &[], &device_and_rule(addr), "", None);
    let vendor = pki.person(Kind::Vendor, "victor", Some("acme"), &[]);
    let security = pki.person(Kind::Security, "sam", None, &[]);

    // (a) Unpinned: refused, with the fingerprint the device presented and the command to pin.
    let out = try_connect(&gw, &vendor);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains(&fp_a), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("ward devices pin {DEVICE} --confirm {fp_a}")),
        "{out:?}"
    );
    let refused = wait_events(&gw, "device_certificate_refused", 1);
    assert!(refused[0].contains(&fp_a), "{refused:#?}");
    // Nothing of a session reached nginx's HTTP layer.
    assert!(nginx.access_log().is_empty(), "{:?}", nginx.access_log());

    // The vendor's device listing says the device is reached over TLS.
    let out = ward_as(&gw, &vendor, &["devices"]);
    assert!(out.status.success(), "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(DEVICE))
        .unwrap_or_default();
    assert!(line.contains("http (TLS)"), "{out:?}");

    // (d) A vendor cannot pin: not even look (refused), nor confirm (refused, audited).
    let out = ward_as(&gw, &vendor, &["devices", "pin", DEVICE]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("security and admin"), "{out:?}");
    let out = ward_as(
        &gw,
        &vendor,
        &["devices", "pin", DEVICE, "--confirm", &fp_a],
    );
    assert!(!out.status.success(), "{out:?}");
    let denied = wait_events(&gw, "device_pinned", 1);
    assert!(
        denied[0].contains("\"denied\"") && denied[0].contains("victor"),
        "{denied:#?}"
    );

    // (b) Security looks: the fingerprint the gateway sees, the certificate's subject, and the
    // exact command to confirm.
    let out = ward_as(&gw, &security, &["devices", "pin", DEVICE]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("presented:   {fp_a}")),
        "{out:?}"
    );
    assert!(out.stdout.contains("pacs-a.pacs.local"), "{out:?}");
    assert!(out.stdout.contains("pinned:      none"), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("ward devices pin {DEVICE} --confirm {fp_a}")),
        "{out:?}"
    );
    // Looking pins nothing.
    assert!(!try_connect(&gw, &vendor).status.success());
    // A fingerprint that is not the device's is refused.
    let wrong = format!("sha256:{}", "00".repeat(32));
    let out = ward_as(
        &gw,
        &security,
        &["devices", "pin", DEVICE, "--confirm", &wrong],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains(&fp_a), "{out:?}");
    // Confirm: pinned.
    let out = ward_as(
        &gw,
        &security,
        &["devices", "pin", DEVICE, "--confirm", &fp_a],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("pinned:      {fp_a} (store)")),
        "{out:?}"
    );

    // curl through `ward connect --listen`: plain HTTP on the client side, the page byte-exact.
    let (mut fwd, local) = forwarder(&gw, &vendor);
    let (code, body, out) = curl(local);
    assert_eq!(code, "200", "{out:?}\nforwarder: {}", fwd.stderr());
    assert_eq!(body, PAGE);
    let log = nginx.access_log();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert!(log[0].starts_with("\"GET / HTTP/1.1\" 200 TLS"), "{log:#?}");
    // The recording holds the plaintext request and response.
    let closed = wait_events(&gw, "session_close", 1);
    let opened: Vec<serde_json::Value> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "session_open" && e["outcome"] == "success")
        .collect();
    assert_eq!(opened.len(), 1, "{opened:#?}\n{closed:#?}");
    let session = opened[0]["session"]
        .as_str()
        .or_else(|| opened[0]["session_id"].as_str())
        .unwrap_or_else(|| panic!("no session id in {}", opened[0]))
        .to_owned();
    let (up, down, recorded) = recorded_plaintext(&gw.state_dir, &session);
    // In the recording: the certificate the device presented, over which TLS.
    let tls = recorded.iter().find(|e| e["kind"] == "device_tls");
    let tls = tls.unwrap_or_else(|| panic!("no device_tls event in {recorded:#?}"));
    assert_eq!(tls["fields"]["certificate"], fp_a.as_str(), "{tls}");
    let version = tls["fields"]["version"].as_str().unwrap();
    assert!(["TLSv1_2", "TLSv1_3"].contains(&version), "{tls}");
    let up = String::from_utf8_lossy(&up);
    let down = String::from_utf8_lossy(&down);
    assert!(up.starts_with("GET / HTTP/1.1\r\n"), "{up}");
    assert!(down.starts_with("HTTP/1.1 200 OK\r\n"), "{down}");
    assert!(down.ends_with(PAGE), "{down}");
    drop(fwd.child.kill());

    // (c) The device comes back with a new certificate: refused with both fingerprints.
    nginx.stop();
    let mut nginx = Nginx::start(port, &crt_b, &key_b).expect("nginx on the same port again");
    let out = try_connect(&gw, &vendor);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "device {DEVICE} presented {fp_b}, pinned is {fp_a}"
        )),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains(&format!("ward devices pin {DEVICE} --confirm {fp_b}")),
        "{out:?}"
    );
    // Two unpinned attempts before (the first, and one after only looking), then this one.
    let refused = wait_events(&gw, "device_certificate_refused", 3);
    let last = refused.last().unwrap();
    assert!(
        last.contains(&format!("\"pinned\":\"{fp_a}\""))
            && last.contains(&format!("\"presented\":\"{fp_b}\""))
            && last.contains("\"severity\":\"high\""),
        "{refused:#?}"
    );
    // Confirming the old fingerprint again does not bring it back.
    let out = ward_as(
        &gw,
        &security,
        &["devices", "pin", DEVICE, "--confirm", &fp_a],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains(&fp_b), "{out:?}");
    assert!(!try_connect(&gw, &vendor).status.success());
    // Re-pinned: sessions work again.
    let out = ward_as(&gw, &security, &["devices", "pin", DEVICE]);
    assert!(
        out.stdout.contains(&format!("presented:   {fp_b}")),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(&format!("pinned:      {fp_a}")),
        "{out:?}"
    );
    let out = ward_as(
        &gw,
        &security,
        &["devices", "pin", DEVICE, "--confirm", &fp_b],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("re-pinned"), "{out:?}");
    let (_fwd, local) = forwarder(&gw, &vendor);
    let (code, body, out) = curl(local);
    assert_eq!(code, "200", "{out:?}");
    assert_eq!(body, PAGE);

    // (e) The audit trail: who pinned what, old and new.
    let pinned: Vec<String> = events(&gw, "device_pinned")
        .into_iter()
        .filter(|e| e.contains("\"success\""))
        .collect();
    assert_eq!(pinned.len(), 2, "{pinned:#?}");
    assert!(
        pinned[0].contains("sam") && pinned[0].contains(&format!("\"new\":\"{fp_a}\"")),
        "{pinned:#?}"
    );
    assert!(pinned[0].contains("\"old\":\"none\""), "{pinned:#?}");
    assert!(
        pinned[1].contains(&format!("\"old\":\"{fp_a}\""))
            && pinned[1].contains(&format!("\"new\":\"{fp_b}\"")),
        "{pinned:#?}"
    );

    // Removing the pin (security only, audited): refused again until pinned.
    let out = ward_as(&gw, &vendor, &["devices", "pin", DEVICE, "--remove"]);
    assert!(!out.status.success(), "{out:?}");
    let out = ward_as(&gw, &security, &["devices", "pin", DEVICE, "--remove"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("removed the stored pin {fp_b}")),
        "{out:?}"
    );
    let out = try_connect(&gw, &vendor);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("not pinned yet"), "{out:?}");
    let removed = events(&gw, "device_pinned");
    assert!(
        removed
            .iter()
            .any(|e| e.contains("\"change\":\"removed\"")
                && e.contains(&format!("\"old\":\"{fp_b}\""))),
        "{removed:#?}"
    );
    nginx.stop();
}

/// A pin in the config wins: a device pinned there to another certificate is refused, and
/// `ward devices pin --confirm` cannot override it.
#[test]
fn a_pin_in_the_config_wins_over_the_store() {
    if !peers() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (crt, key, fp) = self_signed(certs.path(), "pacs-c");
    let (port, mut nginx) = (0..5)
        .find_map(|_| {
            let port = ward_tests::process::free_port();
            Nginx::start(port, &crt, &key).map(|n| (port, n))
        })
        .expect("nginx could not bind a free loopback port in 5 attempts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let other = format!("sha256:{}", "ab".repeat(32));
    let config = device_and_rule(addr).replace(
        "tls = { server_name = \"pacs-web.pacs.local\" }",
        &format!("tls = {{ pin = \"{other}\" }}"),
    );
    let pki = Arc::new(Pki::new());
    let gw = ChildGateway::start(pki.clone(), &[], &config, "", None);
    let vendor = pki.person(Kind::Vendor, "victor", Some("acme"), &[]);
    let admin = pki.person(Kind::Admin, "alice", None, &[]);
    let out = try_connect(&gw, &vendor);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("presented {fp}, pinned is {other}")),
        "{out:?}"
    );
    let out = ward_as(&gw, &admin, &["devices", "pin", DEVICE, "--confirm", &fp]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("config"), "{out:?}");
    // With the right pin in the config, the page comes through.
    drop(gw);
    let config = config.replace(&other, &fp);
    let gw = ChildGateway::start(pki.clone(), &[], &config, "", None);
    let (_fwd, local) = forwarder(&gw, &vendor);
    let (code, body, out) = curl(local);
    assert_eq!(code, "200", "{out:?}");
    assert_eq!(body, PAGE);
    nginx.stop();
}

/// The HTTP decoder and a rule's operation list see the plaintext of a TLS device: an allowed GET
/// gets the page, a POST gets Ward's 403 and nginx never sees it; the recording holds the
/// operations.
#[test]
fn http_operation_policy_applies_to_a_tls_device() {
    if !peers() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (crt, key, fp) = self_signed(certs.path(), "pacs-f");
    let (port, mut nginx) = (0..5)
        .find_map(|_| {
            let port = ward_tests::process::free_port();
            Nginx::start(port, &crt, &key).map(|n| (port, n))
        })
        .expect("nginx could not bind a free loopback port in 5 attempts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = device_and_rule(addr)
        .replace(
            "tls = { server_name = \"pacs-web.pacs.local\" }",
            &format!("tls = {{ pin = \"{fp}\" }}"),
        )
        .replace(
            "devices = { ids = [\"pacs-web\"] }",
            "devices = { ids = [\"pacs-web\"] }\noperations.http = { allow = [\"GET *\"] }",
        );
    let pki = Arc::new(Pki::new());
    let gw = ChildGateway::start(pki.clone(), &[], &config, "", None);
    let vendor = pki.person(Kind::Vendor, "victor", Some("acme"), &[]);
    let (_fwd, local) = forwarder(&gw, &vendor);

    let (code, body, out) = curl(local);
    assert_eq!(code, "200", "{out:?}");
    assert_eq!(body, PAGE);
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "15",
            "-X",
            "POST",
            "-d",
            "mode=service",
        ])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{local}/config")));
    let (body, code) = out.stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "{out:?}");
    assert!(
        body.contains("POST /config") && body.contains("acme-reads-pacs-web"),
        "{body}"
    );
    let log = nginx.access_log();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert!(log[0].starts_with("\"GET / HTTP/1.1\" 200 TLS"), "{log:#?}");
    let denied = wait_events(&gw, "operation_denied", 1);
    assert!(denied[0].contains("POST /config"), "{denied:#?}");

    // The recordings hold the decoded operations (plaintext, although the device spoke TLS).
    wait_events(&gw, "session_close", 2);
    let state = gw.state_dir.display().to_string();
    let out = run_ok(&mut ward(&["sessions", "--json", "--state-dir", &state]));
    let mut kinds = Vec::new();
    for line in out.stdout.lines() {
        let s: serde_json::Value = serde_json::from_str(line).unwrap();
        let out = run_ok(&mut ward(&[
            "export",
            s["id"].as_str().unwrap(),
            "--format",
            "json",
            "--out",
            "-",
            "--state-dir",
            &state,
        ]));
        for l in out.stdout.lines() {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            if r["type"] == "event" {
                kinds.push(format!("{} {}", r["kind"], r["fields"]["op"]));
            }
        }
    }
    assert!(
        kinds.contains(&"\"operation\" \"GET /\"".to_string())
            && kinds.contains(&"\"operation_denied\" \"POST /config\"".to_string()),
        "{kinds:#?}"
    );
    nginx.stop();
}
