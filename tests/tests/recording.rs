//! Recording and audit end to end: byte-exact recordings, tamper evidence on real files, fail
//! closed, crash recovery after kill -9, log injection, and who may review.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{SessionEnd, Transport};
use ward_core::frame::{LockTarget, Request, Response, Review};
use ward_server::recorder::{Sink, SinkFile};
use ward_server::review::{self, ExportFormat, Filter};
use ward_tests::*;

const RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

async fn echo_gateway(extra: &str) -> (TestGateway, Arc<Pki>) {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let devices = [DeviceSpec::new(
        "pump-12",
        echo.addr,
        "raw",
        &[("vendor", "acme")],
    )];
    (
        start_gateway(pki.clone(), &devices, RULES, extra, clock()).await,
        pki,
    )
}

/// Run one session: send `data`, half-close, collect everything back.
async fn session(
    gw: &TestGateway,
    identity: &std::path::Path,
    transport: Transport,
    data: Vec<u8>,
) -> (Vec<u8>, SessionEnd, String) {
    let client = gw.client(identity, transport);
    let session = client.open("pump-12", false, None).await.unwrap();
    let id = session.session_id.clone();
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    let w = async {
        rw.write_all(&data).await.unwrap();
        rw.shutdown().await.unwrap();
    };
    let r = async {
        let mut out = Vec::new();
        rr.read_to_end(&mut out).await.unwrap();
        out
    };
    let ((), out) = tokio::join!(w, r);
    (out, run.await.unwrap(), id)
}

/// Wait (bounded) until the gateway has sealed the session's recording.
async fn wait_sealed(gw: &TestGateway, id: &str) -> Vec<u8> {
    let state = gw.state_dir();
    let key = review::public_key(&state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(bytes) = review::read_recording(&state, id) {
            if ward_recording::verify(&bytes, &key).status != ward_recording::SealStatus::Unsealed {
                return bytes;
            }
        }
        assert!(Instant::now() < deadline, "recording {id} was never sealed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn recording_path(gw: &TestGateway, id: &str) -> std::path::PathBuf {
    review::recordings_dir(&gw.state_dir()).join(format!("{id}.wrec"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_is_byte_exact_both_ways_and_verifies() {
    let (gw, pki) = echo_gateway("").await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let data = payload(3 * 1024 * 1024 + 5, 11);
    let (out, end, id) = session(&gw, &vendor, Transport::Quic, data.clone()).await;
    assert_eq!(end, SessionEnd::Completed);
    assert_eq!(sha256(&out), sha256(&data));
    // The recording is sealed once the gateway has closed the session.
    let bytes = wait_sealed(&gw, &id).await;
    let state = gw.state_dir();
    let key = review::public_key(&state).unwrap();
    let report = ward_recording::verify(&bytes, &key);
    assert!(report.ok, "{:?}", report.first_error);
    let dir = tempfile::tempdir().unwrap();
    let files = review::export(&bytes, ExportFormat::Raw, &dir.path().join("s")).unwrap();
    // Exports carry everything typed: owner-only, and never written over an existing file.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(review::export(&bytes, ExportFormat::Raw, &dir.path().join("s")).is_err());
    let up = std::fs::read(&files[0]).unwrap();
    let down = std::fs::read(&files[1]).unwrap();
    assert_eq!(sha256(&up), sha256(&data), "client → device bytes");
    assert_eq!(sha256(&down), sha256(&out), "device → client bytes");
    // Size: recording ≤ 1.05 × payload on a bulk transfer.
    let payload_bytes = (up.len() + down.len()) as f64;
    assert!(
        (bytes.len() as f64) <= 1.05 * payload_bytes,
        "{} vs {payload_bytes}",
        bytes.len()
    );
    // Listed with the right facts.
    let list = review::list(&state, &key, &Filter::default()).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].principal, "vendor acme/jdoe");
    assert_eq!(list[0].bytes_up, data.len() as u64);
    assert_eq!(list[0].verification, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_echoed_input_is_recorded_and_grep_finds_it() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (dev, mut got) = banner_then_read_device(b"login: ").await;
    let devices = [DeviceSpec::new(
        "pump-12",
        dev,
        "telnet",
        &[("vendor", "acme")],
    )];
    let gw = start_gateway(pki.clone(), &devices, RULES, "", clock()).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let secret_typed = b"admin\r\nsuper-secret-never-echoed\r\n".to_vec();
    let (out, _end, id) = session(&gw, &vendor, Transport::Tcp, secret_typed.clone()).await;
    assert_eq!(out, b"login: ");
    assert_eq!(got.recv().await.unwrap(), secret_typed);
    wait_sealed(&gw, &id).await;
    let state = gw.state_dir();
    let key = review::public_key(&state).unwrap();
    let found = review::list(
        &state,
        &key,
        &Filter {
            grep: Some("super-secret-never".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        found.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    let none = review::list(
        &state,
        &key,
        &Filter {
            grep: Some("not-there".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(none.is_empty());
    // Replay with --input shows the keystrokes the device never echoed.
    let bytes = review::read_recording(&state, &id).unwrap();
    let mut shown = Vec::new();
    let opts = review::ReplayOptions {
        speed: 1.0,
        skip_idle: None,
        from: 0.0,
        input: true,
        no_timing: true,
        raw: false,
    };
    review::replay(&bytes, &opts, &mut shown).await.unwrap();
    let shown = String::from_utf8_lossy(&shown);
    assert!(
        shown.contains("login: ") && shown.contains("super-secret-never-echoed"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flipped_byte_fails_verification_and_replay_refuses() {
    let (gw, pki) = echo_gateway("").await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let (_, _, id) = session(&gw, &vendor, Transport::Quic, payload(200_000, 2)).await;
    wait_sealed(&gw, &id).await;
    let path = recording_path(&gw, &id);
    let mut bytes = std::fs::read(&path).unwrap();
    let key = review::public_key(&gw.state_dir()).unwrap();
    assert!(ward_recording::verify(&bytes, &key).ok);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let report = ward_recording::verify(&bytes, &key);
    assert!(!report.ok);
    let err = report
        .first_error
        .expect("the first bad record must be named")
        .to_string();
    assert!(err.contains("record"), "{err}");
    // Through the gateway, a security reviewer is refused a replay without --force.
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let sec = gw.client(&security, Transport::Quic);
    let r = sec
        .review(Review::Recording {
            session_id: id.clone(),
            purpose: "replay".into(),
            force: false,
        })
        .await;
    assert!(r.unwrap_err().to_string().contains("fails verification"));
    let forced = sec
        .review(Review::Recording {
            session_id: id.clone(),
            purpose: "replay".into(),
            force: true,
        })
        .await
        .unwrap();
    assert_eq!(forced, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_security_and_admin_may_review_and_every_access_is_audited() {
    let (gw, pki) = echo_gateway("").await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let (_, _, id) = session(&gw, &vendor, Transport::Quic, b"hello".to_vec()).await;
    let clinician = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let c = gw.client(&clinician, Transport::Quic);
    for review in [
        Review::ListSessions {
            principal: None,
            device: None,
            since_unix: None,
            until_unix: None,
            grep: None,
            operation: None,
        },
        Review::Recording {
            session_id: id.clone(),
            purpose: "replay".into(),
            force: false,
        },
        Review::AuditLog,
    ] {
        let err = c.review(review).await.unwrap_err().to_string();
        assert!(err.contains("Forbidden"), "{err}");
    }
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let s = gw.client(&security, Transport::Tcp);
    let listing = s
        .review(Review::ListSessions {
            principal: Some("jdoe".into()),
            device: None,
            since_unix: None,
            until_unix: None,
            grep: None,
            operation: None,
        })
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&listing).contains(&id));
    let _ = s
        .review(Review::Recording {
            session_id: id.clone(),
            purpose: "export".into(),
            force: false,
        })
        .await
        .unwrap();
    let pubkey = String::from_utf8(s.review(Review::PublicKey).await.unwrap()).unwrap();
    // Through the gateway the log comes flushed: every line covered by a signed checkpoint.
    let log = s.review(Review::AuditLog).await.unwrap();
    let key = review::parse_public_key(&pubkey).unwrap();
    let report = ward_recording::audit::verify_audit(&log, &key);
    assert!(report.first_error.is_none(), "{:?}", report.first_error);
    let text = String::from_utf8_lossy(&log);
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |event: &str, outcome: &str, who: &str| {
        events.iter().any(|e| {
            e["event"] == event && e["outcome"] == outcome && e["principal"]["name"] == who
        })
    };
    assert!(has("recording_listed", "denied", "alice"));
    assert!(has("recording_replayed", "denied", "alice"));
    assert!(has("recording_listed", "success", "sam"));
    assert!(has("recording_exported", "success", "sam"));
    assert!(has("session_open", "success", "jdoe"));
    assert!(has("session_close", "success", "jdoe"));
    // Audit events carry the fields HIPAA 164.312(b) reviewers expect.
    let open = events
        .iter()
        .find(|e| e["event"] == "session_open")
        .unwrap();
    for field in [
        "time",
        "event",
        "outcome",
        "principal",
        "source",
        "device",
        "session_id",
        "reason",
    ] {
        assert!(!open[field].is_null(), "session_open lacks {field}: {open}");
    }
    assert_eq!(open["principal"]["kind"], "vendor");
    assert_eq!(open["principal"]["org"], "acme");
    assert!(open["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_peers_cannot_forge_audit_lines() {
    let (gw, pki) = echo_gateway("").await;
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let s = gw.client(&security, Transport::Quic);
    let evil = "x\n{\"event\":\"forged\",\"outcome\":\"success\"}\r\n\x1b[2J\"quoted\"";
    let r = s
        .request(&Request::Lock {
            target: LockTarget::Device("pump-12".into()),
            for_secs: Some(60),
            reason: evil.into(),
            force: false,
        })
        .await
        .unwrap();
    assert!(matches!(r, Response::Ok { .. }));
    // A denied attempt with a hostile device name is audited too.
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let _ = gw
        .client(&vendor, Transport::Quic)
        .open("pump\n{\"event\":\"forged\"}\x1b[31m", false, None)
        .await;
    // Wait (bounded) for the writer's next signed checkpoint to cover both events.
    let key = review::public_key(&gw.state_dir()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read(gw.state_dir().join("audit.log")).unwrap();
        let text = String::from_utf8_lossy(&log);
        let covered = ward_recording::audit::verify_audit(&log, &key)
            .first_error
            .is_none();
        if covered && text.contains("\"event\":\"lock\"") && text.contains("\"session_deny\"") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "audit log never covered the events: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = String::from_utf8(log.clone()).unwrap();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_ne!(v["event"], "forged", "{line}");
        assert!(!line.contains('\x1b'), "raw escape in {line}");
    }
    assert!(text
        .lines()
        .any(|l| l.contains("\"event\":\"lock\"") && l.contains("\\u001b[2J")));
    let key = review::public_key(&gw.state_dir()).unwrap();
    assert!(ward_recording::audit::verify_audit(&log, &key)
        .first_error
        .is_none());
}

/// A sink whose files fail: on the Nth write, or on every fsync.
struct FailingSink {
    fail_write_at: Option<usize>,
    fail_sync: bool,
    dir: tempfile::TempDir,
    writes: Arc<AtomicUsize>,
}

struct FailingFile {
    inner: std::fs::File,
    fail_write_at: Option<usize>,
    fail_sync: bool,
    writes: Arc<AtomicUsize>,
    syncs: usize,
}

impl SinkFile for FailingFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_write_at.is_some_and(|at| n >= at) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        io::Write::write_all(&mut self.inner, bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.syncs += 1;
        if self.fail_sync {
            return Err(io::Error::from_raw_os_error(5)); // EIO from fsync
        }
        self.inner.sync_data()
    }
    fn syncer(&self) -> io::Result<ward_server::recorder::Syncer> {
        // The fsync-failure case exercises the gateway's concurrent fsync path; the write-failure
        // case keeps the in-line one.
        if !self.fail_sync {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        Ok(Box::new(|| Err(io::Error::from_raw_os_error(5))))
    }
}

impl Sink for FailingSink {
    fn create(&self, session_id: &str) -> io::Result<Box<dyn SinkFile>> {
        let inner = std::fs::File::create(self.dir.path().join(session_id))?;
        Ok(Box::new(FailingFile {
            inner,
            fail_write_at: self.fail_write_at,
            fail_sync: self.fail_sync,
            writes: self.writes.clone(),
            syncs: 0,
        }))
    }
}

async fn gateway_with_sink(sink: FailingSink) -> (TestGateway, Arc<Pki>, std::path::PathBuf) {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let devices = [DeviceSpec::new(
        "pump-12",
        echo.addr,
        "raw",
        &[("vendor", "acme")],
    )];
    let options = ward_server::gateway::Options {
        no_recording: false,
        sink: Some(Arc::new(sink)),
        ..Default::default()
    };
    let gw = start_gateway_with(pki.clone(), &devices, RULES, "", clock(), options).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    (gw, pki, vendor)
}

/// Keep sending until the gateway cuts the session; returns how long after the first failure.
async fn expect_cut_within_a_second(gw: &TestGateway, vendor: &std::path::Path) -> String {
    let client = gw.client(vendor, Transport::Quic);
    let session = client.open("pump-12", false, None).await.unwrap();
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(rr.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let chunk = payload(16 * 1024, 5);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..10_000 {
            if rw.write_all(&chunk).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let end = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("session must end")
        .unwrap();
    writer.abort();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    match end {
        SessionEnd::ClosedByGateway(reason) => reason,
        other => panic!("expected the gateway to cut the session, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failure_mid_session_ends_it() {
    let sink = FailingSink {
        fail_write_at: Some(4),
        fail_sync: false,
        dir: tempfile::tempdir().unwrap(),
        writes: Arc::default(),
    };
    let (gw, _pki, vendor) = gateway_with_sink(sink).await;
    let reason = expect_cut_within_a_second(&gw, &vendor).await;
    assert!(reason.contains("recording failed"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failure_is_fatal_for_the_session() {
    let sink = FailingSink {
        fail_write_at: None,
        fail_sync: true,
        dir: tempfile::tempdir().unwrap(),
        writes: Arc::default(),
    };
    let (gw, _pki, vendor) = gateway_with_sink(sink).await;
    let reason = expect_cut_within_a_second(&gw, &vendor).await;
    assert!(reason.contains("recording failed"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unopenable_recording_refuses_the_session_before_the_device_sees_anything() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (dev, count) = counting_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        dev,
        "raw",
        &[("vendor", "acme")],
    )];
    let gw = start_gateway(pki.clone(), &devices, RULES, "", clock()).await;
    // Make the recordings directory read-only (and unwritable even for root: replace it by a file).
    let rec_dir = review::recordings_dir(&gw.state_dir());
    std::fs::remove_dir_all(&rec_dir).unwrap();
    std::fs::write(&rec_dir, b"not a directory").unwrap();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let err = gw
        .client(&vendor, Transport::Quic)
        .open("pump-12", false, None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("recording could not be opened"), "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "the device must see no connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_session_then_restart_seals_the_recording_as_interrupted() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let devices = [DeviceSpec::new(
        "pump-12",
        echo.addr,
        "raw",
        &[("vendor", "acme")],
    )];
    // The real binary as a child process (it listens before this returns).
    let mut child = ChildGateway::start(pki.clone(), &devices, RULES, "", None);
    let config = child.config.clone();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let files = ward_client::IdentityFiles::resolve(&vendor, Some(&pki.root())).unwrap();
    let client = ward_client::Client::new(&child.addr, &files, Transport::Quic).unwrap();
    // ChildGateway::start returned once the child listened: no retry needed.
    let session = client
        .open("pump-12", false, None)
        .await
        .expect("open on the gateway child");
    let id = session.session_id.clone();
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    let sent = payload(500_000, 8);
    rw.write_all(&sent).await.unwrap();
    let mut back = vec![0u8; sent.len()];
    rr.read_exact(&mut back).await.unwrap();
    // Let the recorder's batched fsync happen, then kill -9.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    child.proc.child.kill().unwrap();
    child.proc.child.wait().unwrap();
    run.abort();

    let state = ward_server::gateway::load_config(&config)
        .unwrap()
        .gateway
        .state_dir;
    let key = review::public_key(&state).unwrap();
    let before = review::read_recording(&state, &id).unwrap();
    assert_eq!(
        ward_recording::verify(&before, &key).status,
        ward_recording::SealStatus::Unsealed
    );
    // Restart (in-process) on the same state dir: the recording is sealed as interrupted and audited.
    let cfg = ward_server::gateway::load_config(&config).unwrap();
    let gw = ward_server::gateway::Gateway::start(cfg, clock())
        .await
        .unwrap();
    let after = review::read_recording(&state, &id).unwrap();
    let report = ward_recording::verify(&after, &key);
    assert!(report.ok, "{:?}", report.first_error);
    assert_eq!(report.status, ward_recording::SealStatus::Interrupted);
    let (up, _) = ward_recording::export::raw(
        &ward_recording::Reader::new(&after)
            .map(|r| r.unwrap().1)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        sha256(&up),
        sha256(&sent),
        "every flushed byte survives the crash"
    );
    gw.shutdown(Duration::from_millis(10)).await;
    let log = std::fs::read_to_string(state.join("audit.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"recording_interrupted\"") && l.contains(&id)),
        "{log}"
    );
}
