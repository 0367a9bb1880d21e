//! Recordings in S3-compatible object storage through a local spool (issue 19 item 3; security
//! case 62), against moto's server on loopback ([`ward_tests::s3`]).
//!
//! The backend alone: a sealed recording is uploaded, verified by reading it back and only then
//! freed from the spool; reads see the spool and the bucket as one; an unsealed recording is never
//! uploaded; a different object under the same key is never overwritten; multipart above 16 MiB;
//! object lock passed through. End to end: sessions byte-exact through an S3-backed gateway and
//! reviewed from the bucket; the object store cut mid-run (sessions continue into the spool, the
//! spool's limit refuses new sessions with a reason, audited; restored: the spool drains and every
//! recording verifies); kill -9 of a gateway: its spool is recovered and uploaded at restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{SessionEnd, Transport};
use ward_core::frame::Review;
use ward_recording::SealStatus;
use ward_server::review::{self, ExportFormat};
use ward_store::recording_store::RecordingStore;
use ward_store::s3::{BucketSettings, Credentials};
use ward_tests::s3::{CutProxy, S3Server, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
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

fn settings(endpoint: &str, bucket: &str, prefix: &str) -> BucketSettings {
    BucketSettings {
        bucket: bucket.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint.into()),
        region: "us-east-1".into(),
        credentials: Credentials::parse(
            &format!(
                "AWS_ACCESS_KEY_ID={ACCESS_KEY_ID}\nAWS_SECRET_ACCESS_KEY={SECRET_ACCESS_KEY}\n"
            ),
            "test",
        )
        .unwrap(),
        allow_http: true,
        retention: None,
        request_timeout: Duration::from_secs(10),
    }
}

/// The `.wrec` files in a spool.
fn spooled(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".wrec"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn wait_spool_empty(dir: &Path, limit: Duration) {
    let ok = eventually(limit, || spooled(dir).is_empty()).await;
    assert!(
        ok,
        "the spool {} still holds {:?}",
        dir.display(),
        spooled(dir)
    );
}

/// Write a blob and seal it the way the recorder does (write, sync, release, close).
fn write_sealed(store: &RecordingStore, id: &str, bytes: &[u8]) {
    let mut w = store.create(id).unwrap();
    w.write_all(&bytes[..bytes.len() / 2]).unwrap();
    RecordingStore::seal(w.as_mut(), &bytes[bytes.len() / 2..]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_recording_is_uploaded_verified_then_freed_and_reads_see_both() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("rec", false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let store = RecordingStore::spooled(settings(&s3.endpoint(), "rec", "site-a"), &spool, 1 << 30)
        .unwrap();
    let bytes = payload(300_000, 1);
    write_sealed(&store, "00000000000000a1", &bytes);
    let stamp = store.stamp("00000000000000a1").unwrap();
    // Not before start_background (crash recovery runs first at a gateway's start).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(spooled(&spool), ["00000000000000a1.wrec"]);
    assert!(s3.get("rec", "site-a/00000000000000a1.wrec").is_none());
    // A recording still being written is never uploaded, nor one closed without its seal.
    let mut open = store.create("00000000000000a2").unwrap();
    open.write_all(b"still recording").unwrap();
    let mut cut = store.create("00000000000000a3").unwrap();
    cut.write_all(b"no end record").unwrap();
    drop(cut);
    store.start_background();
    wait_spool_empty_except(&spool, &["00000000000000a2.wrec", "00000000000000a3.wrec"]).await;
    assert_eq!(
        s3.get("rec", "site-a/00000000000000a1.wrec").unwrap(),
        bytes,
        "the object is the recording, byte for byte"
    );
    assert!(s3.get("rec", "site-a/00000000000000a2.wrec").is_none());
    assert!(s3.get("rec", "site-a/00000000000000a3.wrec").is_none());
    // Reads: the union, spool first; the stamp the index holds still matches after the upload.
    let s = store.clone();
    let (all, read, stamp_after, ids) = tokio::task::spawn_blocking(move || {
        (
            s.read_all("00000000000000a1").unwrap(),
            s.read_all("00000000000000a2").unwrap(),
            s.stamp("00000000000000a1").unwrap(),
            s.list().unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(all, bytes);
    assert_eq!(read, b"still recording");
    assert_eq!(
        stamp_after, stamp,
        "len and mtime carried as object metadata"
    );
    let mut ids = ids;
    ids.sort();
    assert_eq!(
        ids,
        ["00000000000000a1", "00000000000000a2", "00000000000000a3"]
    );
    // Once sealed, the open one goes too.
    RecordingStore::seal(open.as_mut(), b" and sealed").unwrap();
    drop(open);
    wait_spool_empty_except(&spool, &["00000000000000a3.wrec"]).await;
    assert_eq!(
        s3.get("rec", "site-a/00000000000000a2.wrec").unwrap(),
        b"still recording and sealed"
    );
    // Missing everywhere: NotFound.
    let s = store.clone();
    let err = tokio::task::spawn_blocking(move || s.open("00000000000000ff").unwrap_err())
        .await
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}

async fn wait_spool_empty_except(dir: &Path, left: &[&str]) {
    let want: Vec<String> = left.iter().map(|s| s.to_string()).collect();
    let ok = eventually(Duration::from_secs(30), || spooled(dir) == want).await;
    assert!(
        ok,
        "the spool {} holds {:?}, expected {want:?}",
        dir.display(),
        spooled(dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_object_under_the_key_is_never_overwritten() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("rec", false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let store =
        RecordingStore::spooled(settings(&s3.endpoint(), "rec", "p"), &spool, 1 << 30).unwrap();
    s3.put("rec", "p/00000000000000b1.wrec", b"someone else's object");
    write_sealed(&store, "00000000000000b1", b"our recording, sealed");
    write_sealed(&store, "00000000000000b2", b"another recording");
    let mut status = store.spool().unwrap().status;
    store.start_background();
    wait_spool_empty_except(&spool, &["00000000000000b1.wrec"]).await;
    let ok = eventually(Duration::from_secs(10), || {
        status.borrow_and_update().conflicts == ["00000000000000b1.wrec"]
    })
    .await;
    assert!(ok, "{:?}", status.borrow());
    assert_eq!(
        s3.get("rec", "p/00000000000000b1.wrec").unwrap(),
        b"someone else's object"
    );
    assert_eq!(
        s3.get("rec", "p/00000000000000b2.wrec").unwrap(),
        b"another recording"
    );
    // The spooled one is what a read sees.
    let s = store.clone();
    let got = tokio::task::spawn_blocking(move || s.read_all("00000000000000b1").unwrap())
        .await
        .unwrap();
    assert_eq!(got, b"our recording, sealed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_recordings_go_up_in_parts_and_object_lock_is_passed_through() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("locked", true);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut s = settings(&s3.endpoint(), "locked", "big");
    s.retention = Some(("COMPLIANCE".into(), 3));
    let store = RecordingStore::spooled(s, &spool, 1 << 30).unwrap();
    let big = payload(20 * 1024 * 1024 + 17, 7); // above MULTIPART_ABOVE: three parts
    write_sealed(&store, "00000000000000c1", &big);
    write_sealed(&store, "00000000000000c2", b"small, one PUT");
    store.start_background();
    wait_spool_empty(&spool, Duration::from_secs(60)).await;
    let got = s3.get("locked", "big/00000000000000c1.wrec").unwrap();
    assert_eq!(got.len(), big.len());
    assert_eq!(sha256(&got), sha256(&big));
    // Retention as moto can show it: on the single PUT. The multipart upload sends the same
    // headers (the upload client's default headers, CreateMultipartUpload included), but moto
    // 5.2's CreateMultipartUpload drops x-amz-object-lock-* (its handler does not read them), so
    // the completed object shows none there; that half is S3's to prove, not moto's.
    let key = "big/00000000000000c2.wrec";
    let r = s3.retention("locked", key).unwrap_or_default();
    assert!(r.contains("COMPLIANCE"), "{key}: retention {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_keeps_recordings_in_the_spool_until_it_is_back() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("rec", false);
    let proxy = CutProxy::start(s3.addr());
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let store =
        RecordingStore::spooled(settings(&proxy.endpoint(), "rec", "p"), &spool, 1 << 30).unwrap();
    let mut status = store.spool().unwrap().status;
    store.start_background();
    proxy.cut();
    write_sealed(&store, "00000000000000d1", b"made while the store is down");
    let ok = eventually(Duration::from_secs(20), || {
        !status.borrow_and_update().reachable
    })
    .await;
    assert!(ok, "the uploader never saw the store down");
    assert!(status.borrow().last_error.is_some());
    assert_eq!(
        spooled(&spool),
        ["00000000000000d1.wrec"],
        "kept: not verified"
    );
    // Listing fails with the store's error rather than answering half.
    let s = store.clone();
    assert!(tokio::task::spawn_blocking(move || s.list())
        .await
        .unwrap()
        .is_err());
    proxy.restore();
    wait_spool_empty(&spool, Duration::from_secs(30)).await;
    assert!(status.borrow_and_update().reachable);
    assert_eq!(
        s3.get("rec", "p/00000000000000d1.wrec").unwrap(),
        b"made while the store is down"
    );
}

// ---- End to end: a gateway recording to the bucket ----

async fn echo_devices() -> Vec<DeviceSpec> {
    let echo = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    vec![DeviceSpec::new(
        "pump-12",
        echo.addr,
        "raw",
        &[("vendor", "acme")],
    )]
}

/// Send `data` through a new session, half-close, collect the echo.
async fn session(
    client: &ward_client::Client,
    data: &[u8],
) -> anyhow::Result<(Vec<u8>, SessionEnd, String)> {
    let session = client.open("pump-12", false, None).await?;
    let id = session.session_id.clone();
    let (out, end) = echo_session(session, data).await;
    Ok((out, end, id))
}

fn events(state_dir: &Path, name: &str) -> Vec<serde_json::Value> {
    audit_events(state_dir)
        .into_iter()
        .filter(|e| e["event"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_byte_exact_in_the_bucket_and_reviewed_from_it() {
    init_logs();
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("ward-rec", false);
    let pki = Arc::new(Pki::new());
    let devices = echo_devices().await;
    let extra = s3.recording_toml(&s3.endpoint(), "ward-rec", "gw1", "64 MiB", None);
    let gw = start_gateway(pki.clone(), &devices, RULES, &extra, clock()).await;
    let state = gw.state_dir();
    let spool = state.join("spool");
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let mut sessions = Vec::new();
    for (i, len) in [1usize, 70_000, 2 * 1024 * 1024 + 3]
        .into_iter()
        .enumerate()
    {
        let data = payload(len, i as u64);
        let t = if i % 2 == 0 {
            Transport::Quic
        } else {
            Transport::Tcp
        };
        let (out, end, id) = session(&gw.client(&vendor, t), &data).await.unwrap();
        assert_eq!(end, SessionEnd::Completed);
        assert_eq!(sha256(&out), sha256(&data));
        sessions.push((id, data));
    }
    wait_spool_empty(&spool, Duration::from_secs(30)).await;
    let key = review::public_key(&state).unwrap();
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let sec = gw.client(&security, Transport::Quic);
    let listing = sec
        .review(Review::ListSessions {
            principal: None,
            device: None,
            since_unix: None,
            until_unix: None,
            grep: None,
            operation: None,
        })
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&listing).into_owned();
    for (id, data) in &sessions {
        // In the bucket, sealed, verifying, and holding exactly what was sent.
        let object = s3.get("ward-rec", &format!("gw1/{id}.wrec")).unwrap();
        let report = ward_recording::verify(&object, &key);
        assert!(report.ok, "{id}: {:?}", report.first_error);
        assert_eq!(report.status, SealStatus::Sealed);
        let out = tempfile::tempdir().unwrap();
        let files = review::export(&object, ExportFormat::Raw, &out.path().join("s")).unwrap();
        assert_eq!(
            sha256(&std::fs::read(&files[0]).unwrap()),
            sha256(data),
            "{id} up"
        );
        assert_eq!(
            sha256(&std::fs::read(&files[1]).unwrap()),
            sha256(data),
            "{id} down"
        );
        // Review through the gateway reads it from the bucket (the spool no longer has it).
        assert!(listing.contains(id.as_str()), "{id} not listed: {listing}");
        assert!(listing.contains("ok"), "{listing}");
        let replayed = sec
            .review(Review::Recording {
                session_id: id.clone(),
                purpose: "replay".into(),
                force: false,
            })
            .await
            .unwrap();
        assert_eq!(replayed, object, "{id}: the replay is the bucket's bytes");
    }
    assert!(events(&state, "object_store_down").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_sessions_spool_then_the_limit_refuses_then_it_drains_and_verifies() {
    init_logs();
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("ward-rec", false);
    let proxy = CutProxy::start(s3.addr());
    let pki = Arc::new(Pki::new());
    let devices = echo_devices().await;
    let extra = s3.recording_toml(&proxy.endpoint(), "ward-rec", "site", "2 MiB", None);
    let gw = start_gateway(pki.clone(), &devices, RULES, &extra, clock()).await;
    let state = gw.state_dir();
    let spool = state.join("spool");
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let client = gw.client(&vendor, Transport::Quic);

    // A session running when the store goes away continues into the spool.
    let live = client.open("pump-12", false, None).await.unwrap();
    let live_id = live.session_id.clone();
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(live.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    let first = payload(50_000, 90);
    rw.write_all(&first).await.unwrap();
    let mut echoed = vec![0u8; first.len()];
    rr.read_exact(&mut echoed).await.unwrap();
    proxy.cut();
    let second = payload(50_000, 91);
    rw.write_all(&second).await.unwrap();
    rw.shutdown().await.unwrap();
    let mut rest = Vec::new();
    rr.read_to_end(&mut rest).await.unwrap();
    assert_eq!(run.await.unwrap(), SessionEnd::Completed);
    echoed.extend_from_slice(&rest);
    assert_eq!(sha256(&echoed), sha256(&[first, second].concat()));
    let mut acknowledged = vec![live_id.clone()];

    // Sessions go on into the spool until its limit, then new ones are refused with the reason.
    let mut refusal = None;
    for i in 0..40u64 {
        match session(&client, &payload(200_000, i)).await {
            Ok((out, end, id)) => {
                assert_eq!(end, SessionEnd::Completed);
                assert_eq!(sha256(&out), sha256(&payload(200_000, i)));
                acknowledged.push(id);
            }
            Err(e) => {
                refusal = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let refusal = refusal.expect("the spool's limit never refused a session");
    assert!(refusal.contains("spool"), "{refusal}");
    assert!(acknowledged.len() >= 3, "{acknowledged:?}");
    let ids_in_spool: Vec<String> = spooled(&spool)
        .into_iter()
        .map(|n| n.trim_end_matches(".wrec").to_owned())
        .collect();
    for id in &acknowledged {
        assert!(ids_in_spool.contains(id), "{id} not in the spool");
    }
    assert!(
        s3.keys("ward-rec", "site").is_empty(),
        "nothing reached the bucket"
    );
    // Audited, in this order: the store down, the spool high, the spool full (with the reason).
    let ok = eventually(Duration::from_secs(10), || {
        !events(&state, "object_store_down").is_empty()
    })
    .await;
    assert!(ok, "no object_store_down event");
    let full = events(&state, "spool_full");
    assert_eq!(full.len(), 1, "{full:?}");
    assert_eq!(full[0]["severity"], "high");
    assert!(full[0]["reason"].as_str().unwrap().contains("spool_limit"));
    assert_eq!(events(&state, "spool_high").len(), 1);

    // The store is back: the spool drains, every recording verifies in the bucket, sessions resume.
    proxy.restore();
    wait_spool_empty(&spool, Duration::from_secs(60)).await;
    let key = review::public_key(&state).unwrap();
    let mut in_bucket = s3.keys("ward-rec", "site");
    in_bucket.sort();
    let mut want: Vec<String> = acknowledged
        .iter()
        .map(|id| format!("site/{id}.wrec"))
        .collect();
    want.sort();
    assert_eq!(in_bucket, want);
    for id in &acknowledged {
        let object = s3.get("ward-rec", &format!("site/{id}.wrec")).unwrap();
        let report = ward_recording::verify(&object, &key);
        assert!(report.ok, "{id}: {:?}", report.first_error);
        assert_eq!(report.status, SealStatus::Sealed, "{id}");
    }
    let ok = eventually(Duration::from_secs(10), || {
        !events(&state, "object_store_restored").is_empty()
            && !events(&state, "spool_cleared").is_empty()
    })
    .await;
    assert!(ok, "no object_store_restored / spool_cleared");
    let (out, end, _) = session(&client, b"after the store came back")
        .await
        .unwrap();
    assert_eq!(end, SessionEnd::Completed);
    assert_eq!(out, b"after the store came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_spool_is_recovered_and_uploaded_at_restart() {
    init_logs();
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("ward-rec", false);
    let proxy = CutProxy::start(s3.addr());
    let pki = Arc::new(Pki::new());
    let devices = echo_devices().await;
    let state = pki.dir.path().join("state-killed");
    let extra = s3.recording_toml(&proxy.endpoint(), "ward-rec", "gw2", "64 MiB", None);
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let mut gw = ChildGateway::start(pki.clone(), &devices, RULES, &extra, Some(&state));
    // The store is down: a finished session stays in the spool...
    proxy.cut();
    let done = payload(100_000, 5);
    let (out, end, done_id) = session(&gw.client(&vendor, Transport::Quic), &done)
        .await
        .unwrap();
    assert_eq!(end, SessionEnd::Completed);
    assert_eq!(out, done);
    // ...and one is cut by kill -9 after the client saw its bytes echoed (acknowledged).
    let client = gw.client(&vendor, Transport::Quic);
    let live = client.open("pump-12", false, None).await.unwrap();
    let live_id = live.session_id.clone();
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let _run = tokio::spawn(live.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    let typed = payload(30_000, 6);
    rw.write_all(&typed).await.unwrap();
    let mut echoed = vec![0u8; typed.len()];
    rr.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, typed);
    // Let the batched fsync run (SYNC_EVERY), then kill -9.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gw.proc.child.kill().unwrap();
    let _ = gw.proc.child.wait();
    let spool = state.join("spool");
    assert_eq!(spooled(&spool).len(), 2, "both recordings are in the spool");
    drop(gw);

    // Restart with the store back: recovery seals the interrupted one, then both are uploaded.
    proxy.restore();
    let gw = ChildGateway::start(pki.clone(), &devices, RULES, &extra, Some(&state));
    let started = Instant::now();
    wait_spool_empty(&spool, Duration::from_secs(60)).await;
    eprintln!("spool drained {:?} after restart", started.elapsed());
    let key = review::public_key(&state).unwrap();
    let object = s3.get("ward-rec", &format!("gw2/{done_id}.wrec")).unwrap();
    let report = ward_recording::verify(&object, &key);
    assert!(report.ok, "{:?}", report.first_error);
    assert_eq!(report.status, SealStatus::Sealed);
    let object = s3.get("ward-rec", &format!("gw2/{live_id}.wrec")).unwrap();
    let report = ward_recording::verify(&object, &key);
    assert_eq!(
        report.status,
        SealStatus::Interrupted,
        "{:?}",
        report.first_error
    );
    // Everything the client saw echoed is in the recording.
    let out = tempfile::tempdir().unwrap();
    let files = review::export(&object, ExportFormat::Raw, &out.path().join("s")).unwrap();
    let down = std::fs::read(&files[1]).unwrap();
    assert!(
        down.len() >= typed.len() && down[..typed.len()] == typed[..],
        "{} bytes recorded of {} acknowledged",
        down.len(),
        typed.len()
    );
    assert_eq!(events(&state, "recording_interrupted").len(), 1);
    drop(gw);
}
