//! Telnet command lines through Ward with an operation list (issue 15), against a real telnet
//! daemon: `busybox telnetd` (Debian's busybox-static; .ci/run installs it) running a shell on a
//! pty. The rule denies `rm*` and `touch *forbidden*`:
//!
//! - an allowed command runs and its output comes back;
//! - a denied one never runs (the file it would touch stays absent, the one it would remove stays)
//!   and the user sees why; the line typed after it runs as typed (the refused text was erased
//!   on the device);
//! - keys typed one by one are echoed before Enter (forwarded as typed), and a refused line's
//!   Enter never reaches the device; a line edited with cursor keys is refused (fail closed);
//! - the recording holds the operations and the refusals; `ward sessions --op` finds the session.
//!
//! Loopback only; bounded in time. Under CI a missing busybox telnetd fails the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::Transport;
use ward_server::review::{self, ExportFormat};
use ward_tests::*;

const LIMIT: Duration = Duration::from_secs(60);

const RULES: &str = r#"
[[rule]]
name = "acme-services-consoles"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
operations.telnet = { deny = ["rm*", "touch *forbidden*"] }
"#;

/// What telnetd runs on its pty: an interactive shell with a prompt of its own.
const LOGIN_SCRIPT: &str =
    "#!/bin/sh\ncd \"$(dirname \"$0\")\"\nexec env PS1='console> ' /bin/sh -i\n";

fn busybox_telnetd() -> bool {
    if !require_peer("busybox") {
        return false;
    }
    let ok = std::process::Command::new("busybox")
        .args(["telnetd", "--help"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("busybox has no telnetd applet: install Debian's busybox-static (.ci/run does)");
        }
        eprintln!("SKIPPED: busybox has no telnetd applet (install busybox-static)");
    }
    ok
}

async fn telnetd(dir: &Path) -> (SocketAddr, tokio::process::Child) {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("shell-login");
    std::fs::write(&script, LOGIN_SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let issue = dir.join("issue");
    std::fs::write(&issue, "").unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new("busybox")
        .arg("telnetd")
        .arg("-F")
        .arg("-K")
        .args(["-p", &port.to_string()])
        .args(["-b", "127.0.0.1"])
        .arg("-l")
        .arg(&script)
        .arg("-f")
        .arg(&issue)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start busybox telnetd");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "busybox telnetd did not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (addr, child)
}

/// The user's side of the session: everything the console sent so far.
struct Screen {
    rx: ReadHalf<tokio::io::DuplexStream>,
    seen: Vec<u8>,
}

impl Screen {
    /// Read until `needle` has appeared `n` times (bounded).
    async fn wait_for(&mut self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 4096];
        loop {
            let count = self
                .seen
                .windows(needle.len())
                .filter(|w| *w == needle.as_bytes())
                .count();
            if count >= n {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.read(&mut buf)).await {
                Ok(Ok(k)) if k > 0 => self.seen.extend_from_slice(&buf[..k]),
                other => panic!(
                    "waiting for {needle:?} ×{n}: {other:?}; the console showed:\n{}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_console_allowed_commands_run_denied_ones_never_do() {
    if !busybox_telnetd() {
        return;
    }
    init_logs();
    tokio::time::timeout(LIMIT, async {
        let work = tempfile::tempdir().unwrap();
        let d = work.path();
        std::fs::write(d.join("keep"), "precious").unwrap();
        let (addr, _telnetd) = telnetd(d).await;
        let pki = Arc::new(Pki::new());
        let devices = [DeviceSpec::new("console-1", addr, "telnet", &[("vendor", "acme")])];
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let gw = start_gateway(pki.clone(), &devices, RULES, "", clock).await;
        let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
        let session = gw
            .client(&vendor, Transport::Quic)
            .open("console-1", false, None)
            .await
            .unwrap();
        let id = session.session_id.clone();
        let (local, remote) = tokio::io::duplex(64 * 1024);
        let (lr, lw) = tokio::io::split(local);
        let run = tokio::spawn(session.run(lr, lw));
        let (rx, mut tx) = tokio::io::split(remote);
        let mut screen = Screen {
            rx,
            seen: Vec::new(),
        };
        screen.wait_for("console> ", 1).await;

        // Allowed: runs, its output comes back (the echo shows the text typed, not "ward-42").
        tx.write_all(b"echo ward-$((6*7))\r\n").await.unwrap();
        screen.wait_for("ward-42", 1).await;

        // Denied: refused with the reason, never run.
        let forbidden = d.join("forbidden");
        tx.write_all(format!("touch {}\r\n", forbidden.display()).as_bytes())
            .await
            .unwrap();
        screen.wait_for("ward: refused", 1).await;
        tx.write_all(format!("rm -f {}\r\n", d.join("keep").display()).as_bytes())
            .await
            .unwrap();
        screen.wait_for("ward: refused", 2).await;
        let text = String::from_utf8_lossy(&screen.seen).into_owned();
        assert!(
            text.contains("rule acme-services-consoles denies telnet operations matching \"touch *forbidden*\""),
            "{text}"
        );
        assert!(
            text.contains("rule acme-services-consoles denies telnet operations matching \"rm*\""),
            "{text}"
        );

        // Typed key by key, a line is echoed as it is typed (the keys reach the device before
        // the decision); its Enter never does.
        let typed = format!("touch {}", d.join("forbidden-typed").display());
        for b in typed.bytes() {
            tx.write_all(&[b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        screen.wait_for(&typed, 1).await;
        tx.write_all(b"\r\n").await.unwrap();
        screen.wait_for("ward: refused", 3).await;
        // A line edited with cursor keys is refused whatever its text (fail closed).
        tx.write_all(b"echo edited\x1b[D\x1b[C\r\n").await.unwrap();
        screen.wait_for("ward: refused", 4).await;
        let text = String::from_utf8_lossy(&screen.seen).into_owned();
        assert!(text.contains("escape sequences"), "{text}");
        assert!(!text.contains("\nedited"), "the edited line ran: {text}");

        // The next line runs exactly as typed: nothing of the refused text was left in front of it.
        tx.write_all(b"echo after-$((1+1))\r\n").await.unwrap();
        screen.wait_for("\nafter-2", 1).await;
        let allowed = d.join("allowed");
        tx.write_all(format!("touch {}\r\necho done-$((2+2))\r\n", allowed.display()).as_bytes())
            .await
            .unwrap();
        screen.wait_for("done-4", 1).await;
        assert!(allowed.exists(), "the allowed touch ran");
        assert!(!forbidden.exists(), "the denied touch never ran");
        assert_eq!(std::fs::read_to_string(d.join("keep")).unwrap(), "precious");
        let stray: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !["keep", "allowed", "shell-login", "issue"].contains(&n.as_str()))
            .collect();
        assert!(stray.is_empty(), "files the console should not have made: {stray:?}");

        tx.write_all(b"exit\r\n").await.unwrap();
        // (telnetd -K may hang up before the echo of `exit` is out: not waited for.)
        tx.shutdown().await.unwrap();
        tokio::time::timeout(Duration::from_secs(15), run)
            .await
            .expect("the session ends when the shell exits")
            .unwrap();

        // The recording: the typed commands as operations, the refusals.
        let state = gw.state_dir();
        let key = review::public_key(&state).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let bytes = loop {
            if let Ok(bytes) = review::read_recording(&state, &id) {
                if ward_recording::verify(&bytes, &key).status
                    != ward_recording::SealStatus::Unsealed
                {
                    break bytes;
                }
            }
            assert!(Instant::now() < deadline, "recording {id} was never sealed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let out = tempfile::tempdir().unwrap();
        let files = review::export(&bytes, ExportFormat::Json, &out.path().join("s")).unwrap();
        let json = std::fs::read_to_string(&files[0]).unwrap();
        let events: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["type"] == "event")
            .collect();
        let ops = |kind: &str| -> Vec<String> {
            events
                .iter()
                .filter(|e| e["kind"] == kind)
                .map(|e| e["fields"]["op"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            ops("operation"),
            [
                "echo ward-$((6*7))".to_string(),
                "echo after-$((1+1))".to_string(),
                format!("touch {}", allowed.display()),
                "echo done-$((2+2))".to_string(),
                "exit".to_string(),
            ],
            "{json}"
        );
        assert_eq!(
            ops("operation_denied"),
            [
                format!("touch {}", forbidden.display()),
                format!("rm -f {}", d.join("keep").display()),
                typed.clone(),
                "echo edited".to_string(),
            ],
            "{json}"
        );
        let denied = events.iter().find(|e| e["kind"] == "operation_denied").unwrap();
        assert_eq!(denied["fields"]["protocol"], "telnet");
        assert_eq!(denied["fields"]["rule"], "acme-services-consoles");

        // `ward sessions --op` finds the session by what was typed, refused lines included.
        let found = |op: &str| -> usize {
            let filter = review::Filter {
                op: Some(op.into()),
                ..Default::default()
            };
            review::list(&state, &key, &filter).unwrap().len()
        };
        assert_eq!(found("telnet:rm *"), 1);
        assert_eq!(found("telnet:echo after*"), 1);
        assert_eq!(found("telnet:reboot*"), 0);
    })
    .await
    .unwrap();
}
