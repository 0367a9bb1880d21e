//! The audit trail never lies (issue 11 items 2 and 4; security cases 30 and 32): no audited
//! operation runs while the audit log cannot be written, the writer recovers when the disk does and
//! records the gap, a torn last line at start is reported, and a quiet gateway's audit tail and an
//! idle session's recording are signed within the documented interval.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::Transport;
use ward_core::frame::{LockTarget, Request, Response};
use ward_core::totp::{self, TotpSecret};
use ward_store::users::UserStore as _;
use ward_tests::*;

fn gateway_key(state_dir: &Path) -> [u8; 32] {
    let hex_key = std::fs::read_to_string(state_dir.join("audit.pub")).unwrap();
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut key).unwrap();
    key
}

/// Fill the file system holding `dir` until a write fails; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5au8; 64 * 1024];
    loop {
        if f.write_all(&block).and_then(|()| f.sync_all()).is_err() {
            break;
        }
    }
    // Top it up byte by byte so not even a short line fits.
    while f.write_all(&[0]).and_then(|()| f.sync_all()).is_ok() {}
    path
}

async fn lock(client: &ward_client::Client, device: &str) -> Response {
    client
        .request(&Request::Lock {
            target: LockTarget::Device(device.into()),
            for_secs: Some(60),
            reason: "incident 42".into(),
            force: false,
        })
        .await
        .unwrap()
}

/// Security case 30, SR 2.10. Reproduction (red team, against the release binary): put the audit
/// log on a small disk, fill it; after the first failed write the gateway refused device sessions
/// but `Login` still issued certificates, `Lock`/`Unlock` answered Ok and a security user exported
/// a recording, none of it audited; freeing the space did not reopen the log, and after a restart
/// the torn line was dropped and `ward audit verify` said ok: the gap was invisible.
///
/// Here only the audit log sits on the full disk (a symlink into a 1 MiB tmpfs), so the user
/// store, the CA and recordings keep working and only the audit gate can refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_audited_runs_while_the_audit_log_cannot_be_written_and_the_gap_is_recorded() {
    init_logs();
    let Some(tmpfs) = Tmpfs::mount("1m") else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let device = echo_device().await;
    let devices = [
        DeviceSpec::new("pump-12", device, "telnet", &[("vendor", "acme")]),
        DeviceSpec::new("pump-14", device, "telnet", &[("vendor", "acme")]),
    ];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut tg = start_gateway(pki.clone(), &devices, ACME_RULES, "", clock.clone()).await;
    let state = tg.state_dir();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let sam = pki.person(Kind::Security, "sam", None, &[]);
    // One recorded session to export later.
    {
        let client = tg.client(&vendor, Transport::Quic);
        let session = client.open("pump-12", false, None).await.unwrap();
        let (_, end) = echo_session(session, b"status\r\n").await;
        assert!(matches!(end, ward_client::SessionEnd::Completed), "{end:?}");
    }
    let db = ward_tests::open_store(state.as_ref());
    let tech = ward_server::jit::NewUser {
        org: Some("acme".into()),
        must_change: false,
        ..ward_server::jit::NewUser::new("tech", "vendor")
    };
    let created = ward_server::jit::create_user(
        &db,
        &ward_core::config::LoginConfig::default(),
        tech,
        SystemClock.now(),
    )
    .unwrap();
    let secret =
        TotpSecret::from_base32(&db.user("tech").unwrap().unwrap().totp_secret.unwrap()).unwrap();
    tg.shutdown(Duration::from_millis(50)).await;

    // Move the audit log onto the small disk and restart on the same state dir.
    let log = state.join("audit.log");
    let moved = tmpfs.path().join("audit.log");
    std::fs::copy(&log, &moved).unwrap();
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&moved, &log).unwrap();
    let cfg = ward_server::gateway::load_config(&tg.config).unwrap();
    tg.gw = Some(
        ward_server::gateway::Gateway::start(cfg, clock.clone())
            .await
            .unwrap(),
    );
    let security = tg.client(&sam, Transport::Quic);
    let recordings: Vec<_> = std::fs::read_dir(state.join("recordings"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let session_id = recordings[0]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        matches!(lock(&security, "pump-14").await, Response::Ok { .. }),
        "the gate lets operations through while the log is writable"
    );

    let filler = fill(&tmpfs.path());
    // The first operation whose event cannot be written is refused, and so is every one after.
    let refused = |r: &Response| matches!(r, Response::Error { message, .. } if message.contains("cannot write its audit log"));
    // The log file's last page may still hold a line or two; past it, a lock must be refused.
    let mut answers = Vec::new();
    for _ in 0..40 {
        let r = lock(&security, "pump-12").await;
        let done = refused(&r);
        answers.push(r);
        if done {
            break;
        }
    }
    assert!(
        answers.last().is_some_and(refused),
        "locks answered while their events could not be written: {answers:?}"
    );
    let unlock = security
        .request(&Request::Unlock {
            target: LockTarget::Device("pump-14".into()),
        })
        .await
        .unwrap();
    assert!(refused(&unlock), "{unlock:?}");
    let export = security
        .review(ward_core::frame::Review::Recording {
            session_id: session_id.clone(),
            purpose: "export".into(),
            force: false,
        })
        .await;
    let export = export.expect_err("a recording was handed out unaudited");
    assert!(
        format!("{export:#}").contains("cannot write its audit log"),
        "{export:#}"
    );
    let anon = ward_client::Client::anonymous(&tg.quic(), &pki.root(), Transport::Quic).unwrap();
    let login = anon
        .login(
            "tech",
            created.password.clone(),
            Some(totp::code_at(&secret, SystemClock.now().unix_timestamp())),
            None,
            None,
        )
        .await;
    let login = login.err().expect("a certificate was issued unaudited");
    assert!(
        format!("{login:#}").contains("cannot write its audit log"),
        "{login:#}"
    );
    let open = tg
        .client(&vendor, Transport::Quic)
        .open("pump-12", false, None)
        .await
        .err()
        .expect("a session opened unaudited");
    assert!(format!("{open:#}").contains("audit log"), "{open:#}");

    // Space comes back: the writer reopens by itself and operations pass again.
    std::fs::remove_file(&filler).unwrap();
    let mut back = None;
    for _ in 0..50 {
        let r = lock(&security, "pump-14").await;
        if matches!(r, Response::Ok { .. }) {
            back = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back.is_some(),
        "the audit log did not recover after space was freed"
    );
    tg.shutdown(Duration::from_millis(50)).await;

    let bytes = std::fs::read(&log).unwrap();
    let report = ward_recording::audit::verify_audit(&bytes, &gateway_key(&state));
    assert!(report.ok, "{:?}", report.first_error);
    let gaps: Vec<_> = ward_recording::audit::incidents(&bytes)
        .into_iter()
        .filter(|(_, e)| e.event == "audit_gap")
        .map(|(_, e)| e)
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let lost = &gaps[0].detail["lost_events"];
    assert!(lost["lock"].as_u64().unwrap() >= 1, "{lost}");
    assert!(lost["session_deny"].as_u64().unwrap() >= 1, "{lost}");
    assert!(gaps[0].detail.contains_key("from") && gaps[0].detail.contains_key("until"));
    // None of the refused operations left a success behind.
    let events = audit_events(&state);
    let issued = events
        .iter()
        .filter(|e| e["event"] == "login" && e["outcome"] == "success")
        .count();
    assert_eq!(issued, 0, "a login success was recorded");
    // `ward audit verify` shows the gap.
    let out = process::run_ok(
        process::ward(&["audit", "verify"])
            .arg("--state-dir")
            .arg(&state),
    );
    assert!(
        out.stdout.contains("WARNING") && out.stdout.contains("audit_gap"),
        "{}",
        out.stdout
    );
}

/// Security case 30 (start): a torn last line is reported, never silently dropped. Reproduction:
/// the gateway dies mid-write (or the disk filled mid-line); at the next start the torn line was
/// cut off without a word and the log verified.
#[tokio::test]
async fn a_torn_last_line_at_start_is_saved_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) = ward_recording::Signer::generate().unwrap();
    let signer = Arc::new(signer);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (log, writer) =
        ward_server::audit::AuditLog::open(dir.path(), signer.clone(), clock.clone()).unwrap();
    log.emit(ward_server::audit::Event::new(
        "gateway_start",
        "success",
        clock.now(),
    ));
    log.flush().await;
    drop(log);
    writer.finish().await.unwrap();
    let path = dir.path().join("audit.log");
    let torn = br#"{"seq":3,"time":"2026-11-27T16:00:00.000Z","event":"lock","outc"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(torn)
        .unwrap();

    let (log, writer) =
        ward_server::audit::AuditLog::open(dir.path(), signer.clone(), clock).unwrap();
    log.flush().await;
    drop(log);
    writer.finish().await.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(ward_recording::audit::verify_audit(&bytes, &signer.public_key()).ok);
    let incidents = ward_recording::audit::incidents(&bytes);
    let torn_event = incidents
        .iter()
        .find(|(_, e)| e.event == "audit_log_torn")
        .map(|(_, e)| e)
        .expect("no audit_log_torn event");
    assert_eq!(torn_event.severity, "high");
    assert_eq!(torn_event.detail["torn_bytes"], torn.len());
    let saved = torn_event.detail["saved_to"].as_str().unwrap();
    assert_eq!(std::fs::read(saved).unwrap(), torn);
}

/// Security case 32. Reproduction: on a live, idle gateway `ward audit verify` failed 80 s after
/// the last event with "not covered by a signature": the checkpoint was written only when the next
/// event arrived. Likewise an idle session's recording had unsigned records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_gateway_signs_its_audit_tail_and_idle_recordings_within_the_interval() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let device = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        device,
        "telnet",
        &[("vendor", "acme")],
    )];
    let mut tg = start_gateway(pki.clone(), &devices, ACME_RULES, "", Arc::new(SystemClock)).await;
    let state = tg.state_dir();
    let key = gateway_key(&state);
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let client = tg.client(&vendor, Transport::Quic);
    // The gateway has been quiet for a while when the session opens (on main, an event after a
    // quiet spell was fsynced at once without a checkpoint, and nothing signed it afterwards).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let session = client.open("pump-12", false, None).await.unwrap();
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    // One keystroke, then the session sits idle (on main the batched fsync came before a
    // checkpoint was due, and once synced the record was never signed).
    rw.write_all(b"a").await.unwrap();
    let mut echo = [0u8; 1];
    rr.read_exact(&mut echo).await.unwrap();
    // The documented interval is one second; allow a little scheduling slack.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let log = std::fs::read(state.join("audit.log")).unwrap();
    let report = ward_recording::audit::verify_audit(&log, &key);
    assert!(
        report.ok,
        "idle gateway's audit tail unsigned: {:?}",
        report.first_error
    );
    let rec_dir = state.join("recordings");
    let rec = std::fs::read_dir(&rec_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&rec).unwrap();
    let report = ward_recording::verify(&bytes, &key);
    assert_eq!(
        report.status,
        ward_recording::SealStatus::Unsealed,
        "still live"
    );
    assert_eq!(
        report.valid_prefix_len,
        bytes.len() as u64,
        "an idle session's recording has records no checkpoint covers ({} of {} bytes signed)",
        report.valid_prefix_len,
        bytes.len()
    );
    rw.shutdown().await.unwrap();
    let mut rest = Vec::new();
    rr.read_to_end(&mut rest).await.unwrap();
    run.await.unwrap();
    tg.shutdown(Duration::from_millis(50)).await;
}

/// Security case 31. Reproduction: every request without a client certificate wrote a ~300-byte
/// `unauthenticated_request` line with no limit (one slow client added 1.5 MB in 15 s; on a small
/// state disk that alone caused `disk_full`). Now the first event per source and interval is
/// written, the rest are counted into one summary, and a source past the cap is dropped early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_noise_is_aggregated_per_source_and_a_noisy_source_is_dropped() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let device = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        device,
        "telnet",
        &[("vendor", "acme")],
    )];
    let mut tg = start_gateway(pki.clone(), &devices, ACME_RULES, "", Arc::new(SystemClock)).await;
    let state = tg.state_dir();
    let log_before = std::fs::metadata(state.join("audit.log")).map_or(0, |m| m.len());
    let anon = ward_client::Client::anonymous(&tg.quic(), &pki.root(), Transport::Quic).unwrap();
    let (mut forbidden, mut dropped) = (0, 0);
    for _ in 0..2000 {
        match anon.request(&Request::ListDevices).await.unwrap() {
            Response::Error { message, .. } if message.contains("too many") => dropped += 1,
            Response::Error { .. } => forbidden += 1,
            other => panic!("an anonymous request was answered: {other:?}"),
        }
    }
    assert!(
        forbidden >= 1 && dropped >= 1000,
        "{forbidden} forbidden, {dropped} dropped"
    );
    // New connections from the dropped source are refused before any handshake work.
    for transport in [Transport::Quic, Transport::Tcp] {
        let addr = match transport {
            Transport::Tcp => tg.tcp(),
            _ => tg.quic(),
        };
        let again = ward_client::Client::anonymous(&addr, &pki.root(), transport).unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            again.request(&Request::ListDevices),
        )
        .await
        .expect("a dropped source's connection hung");
        assert!(
            r.is_err(),
            "{transport:?}: a dropped source got an answer: {r:?}"
        );
    }
    tg.shutdown(Duration::from_millis(50)).await;

    let events = audit_events(&state);
    let one_by_one = events
        .iter()
        .filter(|e| e["event"] == "unauthenticated_request")
        .count();
    assert_eq!(one_by_one, 1, "each unauthenticated request was written");
    let summary = events
        .iter()
        .find(|e| {
            e["event"] == "unauthenticated_summary"
                && e["detail"]["kind"] == "unauthenticated_request"
        })
        .expect("no summary of the counted requests");
    assert_eq!(summary["detail"]["count"], 2000, "{summary}");
    assert_eq!(summary["detail"]["dropped"], true, "{summary}");
    let grown = std::fs::metadata(state.join("audit.log")).unwrap().len() - log_before;
    assert!(
        grown < 16 * 1024,
        "2000 anonymous requests grew the audit log by {grown} bytes"
    );
}
