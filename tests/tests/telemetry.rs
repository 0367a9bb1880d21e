//! `--otlp-endpoint`: session spans and audit events reach an OTLP/HTTP collector.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use ward_tests::process::start_quickstart_with;
use ward_tests::ward_binary;

#[test]
fn otlp_endpoint_receives_session_spans_and_audit_events() {
    let (url, got) = ward_tests::otlp_collector();
    let dir = tempfile::tempdir().unwrap();
    let (mut qs, port) = start_quickstart_with(dir.path(), &["--otlp-endpoint", &url]);
    let bin = ward_binary();
    let gateway = format!("127.0.0.1:{port}");
    let identity = dir.path().join("vendor");
    let mut connect = Command::new(&bin)
        .args(["connect", "pump-12", "--gateway", &gateway, "--identity"])
        .arg(&identity)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    connect
        .stdin
        .take()
        .unwrap()
        .write_all(b"admin\r\nadmin\r\nstatus\r\nexit\r\n")
        .unwrap();
    let status = connect.wait().unwrap();
    assert!(status.success());
    // SIGTERM: the gateway shuts down and the exporter flushes.
    let term = Command::new("kill")
        .args(["-TERM", &qs.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = qs.child.try_wait().unwrap() {
            assert!(
                st.success(),
                "quickstart exited with {st}\nstderr:\n{}",
                qs.stderr()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "quickstart did not stop after SIGTERM\nstderr:\n{}",
            qs.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let posts = got.lock().unwrap().clone();
    assert!(!posts.is_empty(), "the collector received nothing");
    assert!(
        posts
            .iter()
            .all(|(line, _)| line.starts_with("POST /v1/traces")),
        "{:?}",
        posts.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    let all: Vec<u8> = posts.iter().flat_map(|(_, b)| b.clone()).collect();
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("ward"), "service name missing");
    assert!(has("session"), "no session span");
    assert!(has("pump-12"), "session span lacks the device");
    assert!(has("audit_event"), "no audit event span");
    assert!(has("session_open"), "no session_open audit event");
}
