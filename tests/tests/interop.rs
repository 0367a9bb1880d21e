//! Interop with real peers (issue #3): real clients talk to real servers through Ward's local
//! forwarder (`ward connect DEVICE --listen 127.0.0.1:0`), all on loopback.
//!
//! - curl ↔ nginx behind HTTP Basic auth,
//! - dcmtk's echoscu/storescu ↔ storescp,
//! - the telnet client ↔ the simulated pump console.
//!
//! Every child process runs under a timeout and is killed when its guard drops. Under CI a missing
//! peer fails the test (`require_peer`); locally it is skipped with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::Transport;
use ward_tests::*;

/// Upper bound for any one peer command (curl, echoscu, telnet...).
const PEER_TIMEOUT: Duration = Duration::from_secs(20);

const RULES: &str = r#"
[[rule]]
name = "icu-clinicians-use-icu-consoles"
who = { kind = "clinician", roles = ["icu"] }
devices = { labels = { unit = "icu" } }

[[rule]]
name = "acme-services-its-devices"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A long-running peer (nginx, storescp, telnet); killed when dropped.
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    fn spawn(name: &'static str, cmd: &mut Command) -> Self {
        let child = cmd
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        ChildGuard { name, child }
    }

    /// `Some(status)` if it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.child.start_kill() {
            // Already reaped is fine; anything else is worth a note.
            if e.kind() != std::io::ErrorKind::InvalidInput {
                eprintln!("killing {}: {e}", self.name);
            }
        }
    }
}

/// Run a short peer command to completion, bounded by [`PEER_TIMEOUT`] (killed on timeout).
async fn run(name: &str, cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    match tokio::time::timeout(PEER_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => panic!("{name} did not finish within {PEER_TIMEOUT:?}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loopback port that was free a moment ago (peers that cannot listen on port 0 and report it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Does the line-oriented text file hold exactly `n` non-empty lines?
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// curl ↔ nginx
// ---------------------------------------------------------------------------------------------

/// nginx running in the foreground (single process) out of a temp dir.
struct Nginx {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _proc: ChildGuard,
}

impl Nginx {
    fn access_log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }
}

const CONSOLE_PAGE: &str =
    "<html><body><h1>CardioStation 5 service console</h1><p>ward-interop-7f3a</p></body></html>\n";

async fn start_nginx() -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("html")).unwrap();
    std::fs::write(d.join("html/index.html"), CONSOLE_PAGE).unwrap();
    let hash = run(
        "openssl passwd",
        Command::new("openssl").args(["passwd", "-apr1", "admin"]),
    )
    .await;
    assert!(hash.status.success(), "{}", text(&hash.stderr));
    let hash = text(&hash.stdout).trim().to_string();
    assert!(hash.starts_with("$apr1$"), "{hash}");
    std::fs::write(d.join("htpasswd"), format!("admin:{hash}\n")).unwrap();

    // Temp paths of modules nginx was built without would be config errors.
    let version = run("nginx -V", Command::new("nginx").arg("-V")).await;
    let build = text(&version.stderr) + &text(&version.stdout);
    let mut temp_paths = String::new();
    for m in ["fastcgi", "uwsgi", "scgi"] {
        if !build.contains(&format!("--without-http_{m}_module")) {
            temp_paths.push_str(&format!("  {m}_temp_path {}/{m};\n", d.display()));
        }
    }

    for _attempt in 0..5 {
        let port = free_port();
        let conf = format!(
            r#"# Foreground, single process, everything inside this directory; no `user` (runs as the caller).
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
{temp_paths}  server {{
    listen 127.0.0.1:{port};
    root {d}/html;
    location / {{
      auth_basic "CardioStation console";
      auth_basic_user_file {d}/htpasswd;
    }}
  }}
}}
"#,
            d = d.display()
        );
        let _ = std::fs::remove_file(d.join("nginx.pid"));
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let mut proc = ChildGuard::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-p")
                .arg(d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .arg("-e")
                .arg(d.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let pid = proc.child.id().unwrap().to_string();
        // nginx writes its pid file once its listening sockets are bound.
        let deadline = Instant::now() + PEER_TIMEOUT;
        loop {
            if let Some(status) = proc.exited() {
                let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                if log.contains("Address already in use") {
                    break; // lost the port to someone else: try another
                }
                panic!("nginx exited ({status}):\n{log}");
            }
            let written = std::fs::read_to_string(d.join("nginx.pid")).unwrap_or_default();
            if written.trim() == pid {
                return Nginx {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    dir,
                    _proc: proc,
                };
            }
            assert!(Instant::now() < deadline, "nginx did not start in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("nginx could not bind a free loopback port in 5 attempts");
}

/// `curl -sS [-u admin:admin] http://ADDR/`; returns (exit code, status code, body).
async fn curl(addr: SocketAddr, credentials: bool) -> (Option<i32>, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"]);
    if credentials {
        cmd.args(["-u", "admin:admin"]);
    }
    cmd.arg(format!("http://{addr}/"));
    let out = run("curl", &mut cmd).await;
    let stdout = text(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    (out.status.code(), code.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_nginx_behind_basic_auth_and_denied_identity_never_does() {
    if !require_peer("curl") || !require_peer("nginx") || !require_peer("openssl") {
        return;
    }
    init_logs();
    let nginx = start_nginx().await;
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "console-7",
        nginx.addr,
        "http",
        &[("unit", "icu"), ("class", "console"), ("vendor", "cardio")],
    )];
    let gw = start_gateway(pki.clone(), &devices, RULES, "", clock()).await;
    let alice = pki.person(Kind::Clinician, "alice", None, &["icu"]);

    let mut expected_requests = 0;
    for transport in [Transport::Quic, Transport::Tcp] {
        let fwd = forwarder(gw.client(&alice, transport), "console-7").await;

        let (exit, code, body) = curl(fwd, true).await;
        assert_eq!(exit, Some(0), "{transport:?}: curl failed");
        assert_eq!(code, "200", "{transport:?}: {body}");
        assert_eq!(body, CONSOLE_PAGE, "{transport:?}");

        let (exit, code, body) = curl(fwd, false).await;
        assert_eq!(exit, Some(0), "{transport:?}: curl failed");
        assert_eq!(code, "401", "{transport:?}: {body}");
        assert!(body.contains("401 Authorization Required"), "{body}");
        assert!(!body.contains("CardioStation"), "{body}");
        expected_requests += 2;
    }
    let log = lines(&nginx.access_log());
    assert_eq!(log.len(), expected_requests, "{log:#?}");
    assert!(
        log[0].contains(" admin ") && log[0].contains("\"GET / HTTP/1.1\" 200"),
        "{log:#?}"
    );
    assert!(log[1].contains("\"GET / HTTP/1.1\" 401"), "{log:#?}");

    // A vendor of another company has no rule for the console: its forwarder accepts the local
    // connection, the gateway refuses the session, curl gets nothing, nginx sees nothing.
    let globex = pki.person(Kind::Vendor, "eve", Some("globex"), &[]);
    for transport in [Transport::Quic, Transport::Tcp] {
        let fwd = forwarder(gw.client(&globex, transport), "console-7").await;
        let (exit, code, body) = curl(fwd, true).await;
        assert_ne!(exit, Some(0), "{transport:?}: denied curl must fail");
        // 52: empty reply from server; 56: connection reset.
        assert!(
            matches!(exit, Some(52) | Some(56)),
            "{transport:?}: curl exit {exit:?}"
        );
        assert_eq!(code, "000", "{transport:?}");
        assert_eq!(body, "", "{transport:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = lines(&nginx.access_log());
    assert_eq!(
        log.len(),
        expected_requests,
        "nginx saw a denied request: {log:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// dcmtk echoscu / storescu ↔ storescp
// ---------------------------------------------------------------------------------------------

/// A small Secondary Capture image as a dcmtk dump (explicit VR little endian once written).
const DICOM_DUMP: &str = r#"(0008,0016) UI =SecondaryCaptureImageStorage
(0008,0018) UI [1.2.826.0.1.3680043.9.7433.1.42]
(0008,0060) CS [OT]
(0010,0010) PN [Ward^Interop]
(0010,0020) LO [WARD-0042]
(0020,000d) UI [1.2.826.0.1.3680043.9.7433.1.1]
(0020,000e) UI [1.2.826.0.1.3680043.9.7433.1.2]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0010) US 2
(0028,0011) US 4
(0028,0100) US 8
(0028,0101) US 8
(0028,0102) US 7
(0028,0103) US 0
(7fe0,0010) OB 00\11\22\33\44\55\66\77
"#;

struct Storescp {
    addr: SocketAddr,
    out: tempfile::TempDir,
    _proc: ChildGuard,
}

async fn echoscu(addr: SocketAddr) -> Output {
    run(
        "echoscu",
        Command::new("echoscu")
            .args(["-aec", "STORESCP", "-to", "10", "-ta", "10", "-td", "10"])
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string()),
    )
    .await
}

async fn start_storescp() -> Storescp {
    let out = tempfile::tempdir().unwrap();
    for _attempt in 0..5 {
        let port = free_port();
        let mut proc = ChildGuard::spawn(
            "storescp",
            Command::new("storescp")
                // -B: write datasets exactly as received, so they can be compared byte for byte.
                .args(["-aet", "STORESCP", "-B", "-od"])
                .arg(out.path())
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Ready when a direct C-ECHO works (this also proves the peers work without Ward).
        let deadline = Instant::now() + PEER_TIMEOUT;
        loop {
            if let Some(status) = proc.exited() {
                let mut err = String::new();
                if let Some(mut e) = proc.child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                if err.contains("cannot listen") || err.contains("in use") {
                    break; // lost the port: try another
                }
                panic!("storescp exited ({status}): {err}");
            }
            if echoscu(addr).await.status.success() {
                return Storescp {
                    addr,
                    out,
                    _proc: proc,
                };
            }
            assert!(Instant::now() < deadline, "storescp did not start in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("storescp could not bind a free loopback port in 5 attempts");
}

/// The dataset bytes of a DICOM Part 10 file: what follows the 128-byte preamble, `DICM` and the
/// file meta group (whose length is in (0002,0000), the first element, explicit VR little endian).
fn dataset_of(file: &[u8]) -> &[u8] {
    assert_eq!(&file[128..132], b"DICM");
    assert_eq!(&file[132..138], &[0x02, 0x00, 0x00, 0x00, b'U', b'L']);
    let group_len = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    &file[144 + group_len..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcmtk_echo_and_store_through_ward() {
    if !require_peer("echoscu")
        || !require_peer("storescp")
        || !require_peer("storescu")
        || !require_peer("dump2dcm")
    {
        return;
    }
    init_logs();
    let scp = start_storescp().await;
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "pacs-1",
        scp.addr,
        "dicom",
        &[("vendor", "acme"), ("unit", "radiology")],
    )];
    let gw = start_gateway(pki.clone(), &devices, RULES, "", clock()).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);

    // C-ECHO through Ward over both transports.
    let mut quic_fwd = None;
    for transport in [Transport::Quic, Transport::Tcp] {
        let fwd = forwarder(gw.client(&vendor, transport), "pacs-1").await;
        let out = echoscu(fwd).await;
        assert!(
            out.status.success(),
            "{transport:?}: echoscu via Ward failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        if transport == Transport::Quic {
            quic_fwd = Some(fwd);
        }
    }

    // C-STORE a small image through Ward; storescp's copy holds the same dataset, byte for byte.
    let work = tempfile::tempdir().unwrap();
    let dump = work.path().join("image.dump");
    let dcm = work.path().join("image.dcm");
    std::fs::write(&dump, DICOM_DUMP).unwrap();
    let out = run(
        "dump2dcm",
        Command::new("dump2dcm").arg("+te").arg(&dump).arg(&dcm),
    )
    .await;
    assert!(out.status.success(), "dump2dcm: {}", text(&out.stderr));
    let fwd = quic_fwd.unwrap();
    let out = run(
        "storescu",
        Command::new("storescu")
            .args(["-aec", "STORESCP", "-to", "10", "-ta", "10", "-td", "10"])
            .arg(fwd.ip().to_string())
            .arg(fwd.port().to_string())
            .arg(&dcm),
    )
    .await;
    assert!(
        out.status.success(),
        "storescu via Ward failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let stored: Vec<PathBuf> = std::fs::read_dir(scp.out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        stored[0].file_name().unwrap(),
        "SC.1.2.826.0.1.3680043.9.7433.1.42"
    );
    let sent = std::fs::read(&dcm).unwrap();
    let got = std::fs::read(&stored[0]).unwrap();
    let sent = dataset_of(&sent);
    assert!(sent.len() > 100, "{}", sent.len());
    assert_eq!(sha256(dataset_of(&got)), sha256(sent));

    // A clinician (no rule for the radiology archive) cannot associate through their forwarder.
    let alice = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let fwd = forwarder(gw.client(&alice, Transport::Quic), "pacs-1").await;
    let out = echoscu(fwd).await;
    assert!(!out.status.success(), "denied echoscu must fail");
    assert_eq!(
        std::fs::read_dir(scp.out.path()).unwrap().count(),
        1,
        "nothing new was stored"
    );
}

// ---------------------------------------------------------------------------------------------
// telnet client ↔ simulated pump console
// ---------------------------------------------------------------------------------------------

/// Drive the real `telnet` client with piped stdin: log in, ask for status, exit.
async fn telnet_session(fwd: SocketAddr) -> String {
    let mut proc = ChildGuard::spawn(
        "telnet",
        Command::new("telnet")
            .arg(fwd.ip().to_string())
            .arg(fwd.port().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdin = proc.child.stdin.take().unwrap();
    let mut stdout = proc.child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PEER_TIMEOUT;
    // Wait for `want` in the output so far (or fail with what was seen).
    async fn wait_for(
        want: &str,
        seen: &mut Vec<u8>,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
        deadline: tokio::time::Instant,
    ) {
        while !text(seen).contains(want) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(chunk)) => seen.extend_from_slice(&chunk),
                Ok(None) => panic!("telnet closed before {want:?}: {}", text(seen)),
                Err(_) => panic!("timed out waiting for {want:?}: {}", text(seen)),
            }
        }
    }
    for (prompt, line) in [
        ("login: ", "admin\r\n"),
        ("Password: ", "admin\r\n"),
        ("pump> ", "status\r\n"),
    ] {
        wait_for(prompt, &mut seen, &mut rx, deadline).await;
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }
    wait_for("status: RUNNING", &mut seen, &mut rx, deadline).await;
    stdin.write_all(b"exit\r\n").await.unwrap();
    stdin.flush().await.unwrap();
    wait_for("bye", &mut seen, &mut rx, deadline).await;
    // The console hung up: telnet notices and exits on its own (stdin still open).
    let status = tokio::time::timeout_at(deadline, proc.child.wait())
        .await
        .expect("telnet did not exit after the console said bye")
        .unwrap();
    drop(stdin);
    reader.await.unwrap();
    while let Ok(chunk) = rx.try_recv() {
        seen.extend_from_slice(&chunk);
    }
    assert!(status.success(), "telnet exited with {status}");
    text(&seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnet_client_logs_into_pump_console_through_ward() {
    if !require_peer("telnet") {
        return;
    }
    init_logs();
    let pump = ward::sim::telnet_console("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "pump-12",
        pump.addr,
        "telnet",
        &[("vendor", "acme"), ("unit", "oncology")],
    )];
    let gw = start_gateway(pki.clone(), &devices, RULES, "", clock()).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    for transport in [Transport::Quic, Transport::Tcp] {
        let fwd = forwarder(gw.client(&vendor, transport), "pump-12").await;
        let out = telnet_session(fwd).await;
        assert!(
            out.contains("Acme InfuPump 3000 service console (fw 2.1.4)"),
            "{transport:?}: {out}"
        );
        assert!(
            out.contains("Welcome, admin. Type 'help' for commands."),
            "{transport:?}: {out}"
        );
        assert!(
            out.contains("status: RUNNING  channel A 12.5 mL/h  battery 87%  occlusion none"),
            "{transport:?}: {out}"
        );
        assert!(out.contains("pump> bye\r\n"), "{transport:?}: {out}");
    }
    assert_eq!(
        pump.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );

    // The clinician has no rule for the oncology pump: telnet connects to the local forwarder,
    // which hangs up once the gateway refuses; the console never sees a connection.
    let alice = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let fwd = forwarder(gw.client(&alice, Transport::Quic), "pump-12").await;
    // stdin stays open (telnet quits at once on stdin EOF), so only the far end can end it.
    let mut proc = ChildGuard::spawn(
        "telnet",
        Command::new("telnet")
            .arg(fwd.ip().to_string())
            .arg(fwd.port().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let stdin = proc.child.stdin.take().unwrap();
    let mut stdout = proc.child.stdout.take().unwrap();
    let mut output = Vec::new();
    tokio::time::timeout(PEER_TIMEOUT, stdout.read_to_end(&mut output))
        .await
        .expect("the denied telnet session must be hung up, not left open")
        .unwrap();
    let status = tokio::time::timeout(PEER_TIMEOUT, proc.child.wait())
        .await
        .expect("telnet did not exit after the hang-up")
        .unwrap();
    drop(stdin);
    let output = text(&output);
    assert!(output.contains("Connected to 127.0.0.1."), "{output}");
    assert!(!output.contains("login:"), "{output}");
    assert!(!output.contains("InfuPump"), "{output}");
    assert!(status.success(), "telnet exited with {status}");
    assert_eq!(
        pump.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}
