//! Security case 29: a sealed recording can never be laundered by a restart.
//!
//! The red team's reproduction, against the real `ward` binary:
//!
//! 1. Finish a session cleanly: `ward audit verify <id>` says `ok (N records, Sealed)`.
//! 2. Stop the gateway and cut the end off its recording: `truncate -s -300 recordings/<id>.wrec`.
//! 3. Start the gateway again. Crash recovery took the cut file for one a crash had left open and
//!    sealed it as interrupted with the gateway's key; `ward audit verify --all` then exited 0
//!    (`ok (16 records, Interrupted)`): the cut was laundered into a legitimate-looking crash.
//!
//! Now recovery seals only a recording whose session the audit log opened and never closed; a cut
//! recording is left byte for byte as it is, a `recording_tampered` event of severity high is
//! logged, and `ward audit verify --all` cross-checks every recording against the audit log and
//! fails naming the session. The kill -9 case (opened, never closed) is still sealed as
//! interrupted and verifies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::Kind;
use ward_client::Transport;
use ward_recording::SealStatus;
use ward_tests::process::{run, Finished, COMMAND_TIMEOUT};
use ward_tests::*;

/// An echo pump and the PKI, for gateways started and restarted on one state dir.
struct Bench {
    pki: Arc<Pki>,
    devices: Vec<DeviceSpec>,
    vendor: PathBuf,
    state: PathBuf,
}

impl Bench {
    async fn new() -> Bench {
        init_logs();
        let pki = Arc::new(Pki::new());
        let echo = ward::sim::echo("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let devices = vec![DeviceSpec::new(
            "pump-12",
            echo.addr,
            "raw",
            &[("vendor", "acme")],
        )];
        let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
        let state = pki
            .dir
            .path()
            .join(format!("state-{}", rand::random::<u32>()));
        Bench {
            pki,
            devices,
            vendor,
            state,
        }
    }

    /// `ward gateway` on this state dir (listening when this returns: recovery has run).
    fn start(&self) -> ChildGateway {
        ChildGateway::start(
            self.pki.clone(),
            &self.devices,
            ACME_RULES,
            "",
            Some(&self.state),
        )
    }

    fn recording(&self, id: &str) -> PathBuf {
        self.state.join("recordings").join(format!("{id}.wrec"))
    }

    fn key(&self) -> [u8; 32] {
        ward_server::review::public_key(&self.state).unwrap()
    }

    fn verify(&self, id: &str) -> ward_recording::VerifyReport {
        ward_recording::verify(&std::fs::read(self.recording(id)).unwrap(), &self.key())
    }

    /// One complete session: 200 KB up and back, half-closed by the client; returns its id once
    /// its recording is sealed and its `session_close` is in the audit log.
    async fn clean_session(&self, gw: &ChildGateway) -> String {
        let client = gw.client(&self.vendor, Transport::Quic);
        let session = client.open("pump-12", false, None).await.unwrap();
        let id = session.session_id.clone();
        let sent = payload(200_000, 29);
        let (back, _end) = echo_session(session, &sent).await;
        assert_eq!(sha256(&back), sha256(&sent));
        let closed = eventually(COMMAND_TIMEOUT, || {
            self.recording(&id).exists()
                && self.verify(&id).status == SealStatus::Sealed
                && audit_events(&self.state)
                    .iter()
                    .any(|e| e["event"] == "session_close" && e["session_id"] == id.as_str())
        })
        .await;
        assert!(closed, "session {id} never closed cleanly");
        id
    }

    fn verify_all(&self) -> Finished {
        run(&mut process::ward(&[
            "audit",
            "verify",
            "--all",
            "--state-dir",
            self.state.to_str().unwrap(),
        ]))
    }

    /// Events naming `id` whose type is `event`.
    fn events(&self, event: &str, id: &str) -> Vec<serde_json::Value> {
        audit_events(&self.state)
            .into_iter()
            .filter(|e| e["event"] == event && e["session_id"] == id)
            .collect()
    }
}

/// SIGTERM, and wait (bounded) for the gateway to exit: it drains, logs `gateway_stop` and
/// checkpoints its audit log.
fn stop(mut gw: ChildGateway) -> String {
    gw.sigterm();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while gw.proc.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ward gateway did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the output readers drain.
    std::thread::sleep(Duration::from_millis(100));
    gw.proc.stderr()
}

/// Cut `n` bytes off the end of `path` (`truncate -s -N`).
fn cut(path: &Path, n: u64) -> Vec<u8> {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - n).unwrap();
    f.sync_all().unwrap();
    std::fs::read(path).unwrap()
}

/// The red team's steps (see the module doc): clean session, cut its recording, restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_sealed_recording_is_not_resealed_at_restart() {
    let b = Bench::new().await;
    let gw = b.start();
    let id = b.clean_session(&gw).await;
    stop(gw);
    let ok = b.verify_all();
    assert!(ok.status.success(), "a clean state dir must verify: {ok:?}");
    assert!(
        ok.stdout.contains(&format!("recording {id}: ok (")),
        "{ok:?}"
    );
    assert!(ok.stdout.contains("recordings vs audit log: ok"), "{ok:?}");

    let cut_bytes = cut(&b.recording(&id), 300);
    assert_eq!(b.verify(&id).status, SealStatus::Unsealed);

    let gw = b.start();
    let stderr = stop(gw);
    let after = std::fs::read(b.recording(&id)).unwrap();
    let report = ward_recording::verify(&after, &b.key());
    assert!(
        after == cut_bytes,
        "the cut recording was changed at restart ({} bytes -> {}): verify now says ok={} {:?} {:?}\n{}",
        cut_bytes.len(),
        after.len(),
        report.ok,
        report.status,
        report.first_error,
        b.verify_all().stdout
    );
    assert_eq!(report.status, SealStatus::Unsealed);
    assert!(
        b.events("recording_interrupted", &id).is_empty(),
        "{:?}",
        b.events("recording_interrupted", &id)
    );
    let alerts = b.events("recording_tampered", &id);
    assert_eq!(alerts.len(), 1, "{:?}", audit_events(&b.state));
    assert_eq!(alerts[0]["severity"], "high", "{alerts:?}");
    assert_eq!(alerts[0]["outcome"], "failure", "{alerts:?}");
    let reason = alerts[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("the audit log closed session {id}"))
            && reason.contains("truncated or altered after sealing"),
        "{reason}"
    );
    assert!(
        stderr.contains("ERROR") && stderr.contains("NOT sealing it"),
        "the gateway logs an error: {stderr}"
    );

    let out = b.verify_all();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("recording {id}: FAILED")),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(&format!(
            "session {id}: FAILED: the recording is Unsealed although the audit log closed the session"
        )),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("recordings vs audit log: FAILED (1 problems"),
        "{out:?}"
    );
    // The log itself is intact: it is the disagreement that gives the cut away.
    assert!(out.stdout.contains("audit log: ok"), "{out:?}");

    // The same through the gateway (a security identity; the log and listing it hands out).
    let gw = b.start();
    let security = b.pki.person(Kind::Security, "sam", None, &[]);
    let out = run(&mut process::ward(&[
        "audit",
        "verify",
        "--all",
        "--gateway",
        &gw.addr,
        "--identity",
        security.to_str().unwrap(),
        "--ca",
        b.pki.root().to_str().unwrap(),
    ]));
    stop(gw);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "session {id}: FAILED: the recording is Unsealed although the audit log closed the session"
        )),
        "{out:?}"
    );
    assert!(out.stdout.contains("audit log: ok"), "{out:?}");
}

/// A recording the audit log never opened (here: the log rolled back to a copy taken before the
/// session, which still verifies on its own) is reported by `verify --all`, and when it is also
/// cut, recovery does not seal it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_the_audit_log_never_opened_is_reported_and_never_sealed() {
    let b = Bench::new().await;
    stop(b.start());
    let backup = std::fs::read(b.state.join("audit.log")).unwrap();
    let gw = b.start();
    let id = b.clean_session(&gw).await;
    stop(gw);
    assert!(b.verify_all().status.success());

    std::fs::write(b.state.join("audit.log"), &backup).unwrap();
    let out = b.verify_all();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("recording {id}: ok (")),
        "{out:?}"
    );
    assert!(out.stdout.contains("audit log: ok"), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "session {id}: FAILED: a recording exists for a session the audit log never opened"
        )),
        "{out:?}"
    );

    let cut_bytes = cut(&b.recording(&id), 300);
    stop(b.start());
    assert!(
        std::fs::read(b.recording(&id)).unwrap() == cut_bytes,
        "recovery sealed a recording the audit log never opened: {:?}",
        b.verify(&id)
    );
    let alerts = b.events("recording_tampered", &id);
    assert_eq!(alerts.len(), 1, "{:?}", audit_events(&b.state));
    assert_eq!(alerts[0]["severity"], "high");
    let reason = alerts[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("the audit log never opened session {id}")),
        "{reason}"
    );
}

/// A recording deleted after its session: the audit log's `session_open` (recorded) has no
/// recording, and `verify --all` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_recording_is_reported_by_verify_all() {
    let b = Bench::new().await;
    let gw = b.start();
    let kept = b.clean_session(&gw).await;
    let gone = b.clean_session(&gw).await;
    stop(gw);
    assert!(b.verify_all().status.success());
    std::fs::remove_file(b.recording(&gone)).unwrap();
    let out = b.verify_all();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("recording {kept}: ok (")),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(&format!(
            "session {gone}: FAILED: the audit log opened this session with a recording"
        )) && out.stdout.contains("but there is no recording for it"),
        "{out:?}"
    );
    assert!(!out.stdout.contains(&format!("session {kept}:")), "{out:?}");
}

/// The legitimate crash: kill -9 mid-session, restart. The log opened the session and never
/// closed it, so recovery seals the recording as interrupted, and `verify --all` (cross-check
/// included) passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_recording_is_still_sealed_as_interrupted_and_verify_all_passes() {
    let b = Bench::new().await;
    let mut gw = b.start();
    let client = gw.client(&b.vendor, Transport::Quic);
    let session = client.open("pump-12", false, None).await.unwrap();
    let id = session.session_id.clone();
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run_task = tokio::spawn(session.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    let sent = payload(100_000, 9);
    rw.write_all(&sent).await.unwrap();
    let mut back = vec![0u8; sent.len()];
    rr.read_exact(&mut back).await.unwrap();
    // Let the recorder's batched fsync and the audit writer's checkpoint happen, then kill -9.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gw.proc.child.kill().unwrap();
    gw.proc.child.wait().unwrap();
    run_task.abort();
    assert_eq!(b.verify(&id).status, SealStatus::Unsealed);
    assert_eq!(b.events("session_open", &id).len(), 1);
    assert!(b.events("session_close", &id).is_empty());

    stop(b.start());
    let report = b.verify(&id);
    assert!(report.ok, "{:?}", report.first_error);
    assert_eq!(report.status, SealStatus::Interrupted);
    assert_eq!(b.events("recording_interrupted", &id).len(), 1);
    assert!(b.events("recording_tampered", &id).is_empty());
    let out = b.verify_all();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("recording {id}: ok ("))
            && out.stdout.contains("Interrupted)"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("recordings vs audit log: ok"),
        "{out:?}"
    );
}
