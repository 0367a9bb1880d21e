//! HTTP operation policy end to end (issue 15, security case 48): real nginx as the device, real
//! curl (and a raw pipelining client) as the client, the `ward` binaries in between, under a rule
//! with `operations.http = { allow = ["GET /status*"] }`.
//!
//! - `curl /status` gets nginx's page byte for byte;
//! - `curl -X POST /config -d …` gets Ward's `403` with the reason, and nginx never sees it (its
//!   access log has no line for it);
//! - on one keep-alive connection (curl with several URLs; a raw client pipelining GET, POST,
//!   GET in one write) the allowed requests after a refused one still work, answered in order;
//! - the recording holds the `operation`, `operation_denied` and `operation_result` events
//!   (`ward export --format json`), and the audit log the `operation_denied`.
//!
//! Under CI a missing peer fails the test (`require_peer`); locally it is skipped with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_ca::Kind;
use ward_tests::process::{run, run_ok, ward, Input, Proc, COMMAND_TIMEOUT};
use ward_tests::*;

const STATUS_PAGE: &str =
    "{\"monitor\":\"bedside-3\",\"state\":\"ok\",\"marker\":\"ward-ops-http-7f3a\"}\n";

const RULES: &str = r#"
[[rule]]
name = "acme-reads-monitor-status"
who = { kind = "vendor", org = "acme" }
devices = { labels = { class = "monitor" } }
operations.http = { allow = ["GET /status*"] }
"#;

/// nginx in the foreground out of a temp dir, serving `/status` (a static file).
type Nginx = ward_tests::nginx::Nginx;

/// Starts nginx serving `/status` (see [`Nginx`]'s doc above).
fn start_nginx() -> Nginx {
    Nginx::start(
        |d| {
            std::fs::create_dir_all(d.join("html/status")).unwrap();
            std::fs::write(d.join("html/status/index.json"), STATUS_PAGE).unwrap();
            std::fs::write(d.join("html/config"), "device configuration\n").unwrap();
        },
        |d, port, temp_paths| {
            format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
      log_format req '"$request" $status';
      access_log {d}/access.log req;
      client_body_temp_path {d}/body;
      proxy_temp_path {d}/proxy;
      default_type application/octet-stream;
      keepalive_requests 1000;
{temp_paths}  server {{
listen 127.0.0.1:{port};
root {d}/html;
location = /status {{ try_files /status/index.json =404; }}
      }}
}}
"#,
                d = d.display()
            )
        },
    )
}

/// `ward connect DEVICE --listen 127.0.0.1:0` as a child; its local address.
fn ward_forwarder(gw: &ChildGateway, identity: &Path, device: &str) -> (Proc, SocketAddr) {
    let mut fwd = Proc::spawn(
        ward(&[
            "connect",
            device,
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

fn peers() -> bool {
    require_peer("curl") && require_peer("nginx")
}

/// One HTTP/1.1 response read off `stream` (status line and headers, then a `Content-Length`
/// body): (status, head, body).
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no Content-Length in {head}"));
            if buf.len() >= end + 4 + length {
                let body = buf[end + 4..end + 4 + length].to_vec();
                buf.drain(..end + 4 + length);
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, head, body);
            }
        }
        assert!(Instant::now() < deadline, "no whole response in {buf:?}");
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "connection closed; read so far: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Every event record of every recording in `state`, via `ward export --format json`.
fn recorded_events(state: &Path) -> Vec<serde_json::Value> {
    let state = state.display().to_string();
    let out = run_ok(&mut ward(&["sessions", "--json", "--state-dir", &state]));
    let mut events = Vec::new();
    for line in out.stdout.lines() {
        let s: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = s["id"].as_str().unwrap().to_string();
        let out = run(&mut ward(&[
            "export",
            &id,
            "--format",
            "json",
            "--out",
            "-",
            "--state-dir",
            &state,
        ]));
        assert!(out.status.success(), "{out:?}");
        for l in out.stdout.lines() {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            if r["type"] == "event" {
                events.push(r);
            }
        }
    }
    events
}

fn curl(args: &[&str]) -> ward_tests::process::Finished {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "15"]).args(args);
    run(&mut cmd)
}

#[test]
fn http_operations_are_decided_request_by_request_and_the_connection_stays_usable() {
    if !peers() {
        return;
    }
    let nginx = start_nginx();
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "monitor-3",
        nginx.addr,
        "http",
        &[("vendor", "acme"), ("class", "monitor")],
    )];
    let gw = ChildGateway::start(pki.clone(), &devices, RULES, "", None);
    let vendor = pki.person(Kind::Vendor, "victor", Some("acme"), &[]);
    let (_fwd, local) = ward_forwarder(&gw, &vendor, "monitor-3");
    let url = |p: &str| format!("http://{local}{p}");

    // 1. An allowed request: nginx's page, byte for byte.
    let out = curl(&[&url("/status")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, STATUS_PAGE);

    // 2. A refused one: Ward's 403 with the reason; nginx never sees it.
    let out = curl(&[
        "-X",
        "POST",
        "-d",
        "rate=999&alarm=off",
        "-w",
        "\n%{http_code}",
        &url("/config"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let (body, code) = out.stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "{out:?}");
    assert!(
        body.contains("Ward refused POST /config")
            && body.contains("rule acme-reads-monitor-status allows only")
            && body.contains("GET /status*"),
        "{body}"
    );

    // 3. One keep-alive connection, several URLs: curl reuses it after the 403.
    let out = curl(&[
        "-w",
        "|%{http_code} %{num_connects}\n",
        &url("/status"),
        &url("/config"),
        &url("/status?again=1"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let codes: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.rsplit_once('|').map(|(_, c)| c))
        .collect();
    assert_eq!(codes, ["200 1", "403 0", "200 0"], "{out:?}");

    // 4. Pipelined in one write: GET allowed, POST refused (with a body), GET allowed.
    let mut stream = TcpStream::connect(local).unwrap();
    stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    let pipelined = "GET /status?n=1 HTTP/1.1\r\nHost: monitor-3\r\n\r\n\
         POST /config HTTP/1.1\r\nHost: monitor-3\r\nContent-Length: 11\r\n\r\nalarm=off&x\
         GET /status?n=3 HTTP/1.1\r\nHost: monitor-3\r\n\r\n";
    stream.write_all(pipelined.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let (s1, _, b1) = read_response(&mut stream, &mut buf);
    let (s2, h2, b2) = read_response(&mut stream, &mut buf);
    let (s3, _, b3) = read_response(&mut stream, &mut buf);
    assert_eq!((s1, s2, s3), (200, 403, 200));
    assert_eq!(b1, STATUS_PAGE.as_bytes());
    assert_eq!(b3, STATUS_PAGE.as_bytes());
    assert!(h2.contains("Connection: keep-alive"), "{h2}");
    assert!(String::from_utf8_lossy(&b2).contains("Ward refused POST /config"));
    // Still the same connection: a refused chunked upload (dropped as it streams, sent in
    // pieces), then an allowed request.
    for piece in [
        &b"PUT /config/firmware HTTP/1.1\r\nHost: monitor-3\r\nTransfer-Encoding: chunked\r\n\r\n"
            [..],
        b"8\r\nfirmware\r\n",
        b"3\r\nbin\r\n0\r\n\r\nGET /status?n=5 HTTP/1.1\r\nHost: monitor-3\r\n\r\n",
    ] {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s4, _, b4) = read_response(&mut stream, &mut buf);
    let (s5, _, b5) = read_response(&mut stream, &mut buf);
    assert_eq!((s4, s5), (403, 200));
    assert!(String::from_utf8_lossy(&b4).contains("Ward refused PUT /config/firmware"));
    assert_eq!(b5, STATUS_PAGE.as_bytes());
    drop(stream);

    // 5. A refused upload that asks `Expect: 100-continue`: the 403 instead of a 100.
    let upload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(upload.path(), vec![b'x'; 256 * 1024]).unwrap();
    let out = curl(&[
        "-X",
        "POST",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", upload.path().display()),
        "-w",
        "\n%{http_code}",
        &url("/config/upload"),
    ]);
    let (_, code) = out.stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "{out:?}");

    // nginx saw every allowed request and none of the refused ones.
    let log = nginx.access_log();
    assert!(
        !log.iter().any(|l| l.contains("/config")),
        "a refused request reached nginx: {log:#?}"
    );
    let allowed = log.iter().filter(|l| l.contains("GET /status")).count();
    assert_eq!(allowed, 6, "{log:#?}");

    // The audit log has the refusals; the recordings the operations, refusals and results.
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let denied = loop {
        let denied: Vec<_> = gw
            .audit_events()
            .into_iter()
            .filter(|e| e["event"] == "operation_denied")
            .collect();
        if denied.len() >= 5 || Instant::now() > deadline {
            break denied;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(denied.len(), 5, "{denied:#?}");
    let text = serde_json::to_string(&denied).unwrap();
    assert!(
        text.contains("POST /config") && text.contains("GET /config"),
        "{text}"
    );

    // Sessions end when their connections close; their recordings are then complete.
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let events = loop {
        let events = recorded_events(&gw.state_dir);
        let count = |k: &str| events.iter().filter(|e| e["kind"] == k).count();
        if (count("operation") >= 6
            && count("operation_result") >= 6
            && count("operation_denied") >= 5)
            || Instant::now() > deadline
        {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let of = |k: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["kind"] == k)
            .map(|e| e["fields"]["op"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(of("operation"), vec!["GET /status"; 6], "{events:#?}");
    assert_eq!(
        of("operation_result"),
        vec!["GET /status"; 6],
        "{events:#?}"
    );
    let mut refused = of("operation_denied");
    refused.sort();
    assert_eq!(
        refused,
        [
            "GET /config",
            "POST /config",
            "POST /config",
            "POST /config/upload",
            "PUT /config/firmware"
        ],
        "{events:#?}"
    );
    let result = events
        .iter()
        .find(|e| e["kind"] == "operation_result")
        .unwrap();
    assert_eq!(result["fields"]["status"], "200");
    // curl's requests name the local listener; the raw client's name the device. Sessions are
    // listed in start order, which two sessions opened in the same millisecond do not fix.
    let hosts: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "operation")
        .filter_map(|e| e["fields"]["host"].as_str())
        .collect();
    assert!(hosts.contains(&local.to_string().as_str()), "{hosts:?}");
    assert!(hosts.contains(&"monitor-3"), "{hosts:?}");
    let op = events.iter().find(|e| e["kind"] == "operation").unwrap();
    assert_eq!(op["fields"]["method"], "GET");
    assert_eq!(op["fields"]["path"], "/status");
    // The name leaves the query out (what policy matches); the target keeps it.
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "operation" && e["fields"]["target"] == "/status?n=3"),
        "{events:#?}"
    );
    let denied = events
        .iter()
        .find(|e| e["kind"] == "operation_denied")
        .unwrap();
    assert_eq!(denied["fields"]["rule"], "acme-reads-monitor-status");
}
