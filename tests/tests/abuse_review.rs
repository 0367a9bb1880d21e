//! Issue 12 item 4: reviews cannot stall live sessions (security case TBD).
//!
//! Recording fetches and listings used to read and verify whole files on the gateway's async
//! workers: fetches of a large recording stalled unrelated live sessions, a fetch the reviewer never
//! read held the whole recording in gateway memory, and every listing re-read every recording.
//! Against the real `ward gateway` binary, with recordings generated in its state dir, signed with
//! its key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::Kind;
use ward_client::Transport;
use ward_core::frame::{Request, Review};
use ward_recording::{CheckpointPolicy, Direction, Encoder, EndInfo, SessionMeta, Signer};
use ward_tests::*;
use ward_transport::datapath::FrameWriter;

fn acme(id: &str, addr: SocketAddr) -> DeviceSpec {
    DeviceSpec::new(id, addr, "raw", &[("vendor", "acme")])
}

/// A state dir holding a gateway signing key made here (so recordings can be generated for it).
fn state_dir_with_key(pki: &Pki) -> (std::path::PathBuf, Arc<Signer>) {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = pki
        .dir
        .path()
        .join(format!("state-{}", rand::random::<u32>()));
    std::fs::create_dir_all(dir.join(ward_server::RECORDINGS_DIR)).unwrap();
    let (signer, pkcs8) = Signer::generate().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(ward_server::AUDIT_KEY))
        .unwrap()
        .write_all(&pkcs8)
        .unwrap();
    (dir, Arc::new(signer))
}

/// Write a sealed recording of `down` bytes device → client (and 1/16 of that up) in 64 KiB
/// records, streamed to the file. Returns (bytes up, bytes down).
fn write_recording(state_dir: &Path, signer: &Arc<Signer>, id: &str, down: usize) -> (u64, u64) {
    let started = now().unix_timestamp() * 1000 - 3_600_000;
    let meta = SessionMeta {
        session_id: id.into(),
        principal_kind: "vendor".into(),
        principal_name: "jdoe".into(),
        principal_org: Some("acme".into()),
        cert_serial: "01".into(),
        source: "127.0.0.1:40000".into(),
        device: "pump-12".into(),
        device_addr: "127.0.0.1:4000".into(),
        protocol: "raw".into(),
        rule: "acme-maintains-its-pumps".into(),
        transport: "tcp".into(),
        break_glass: false,
        started_unix_ms: started,
        recipients: Vec::new(),
        age_header: None,
    };
    let path = state_dir
        .join(ward_server::RECORDINGS_DIR)
        .join(format!("{id}.wrec"));
    let mut file = std::fs::File::create(&path).unwrap();
    let mut out = Vec::new();
    let mut enc =
        Encoder::start(&meta, signer.clone(), CheckpointPolicy::default(), &mut out).unwrap();
    let chunk = payload(64 * 1024, 7);
    let (mut up, mut sent, mut t) = (0u64, 0usize, 0u64);
    while sent < down {
        let n = chunk.len().min(down - sent);
        t += 1_000_000;
        enc.data(Direction::Down, t, &chunk[..n], &mut out);
        sent += n;
        if sent % (16 * 64 * 1024) == 0 {
            enc.data(Direction::Up, t, &chunk[..4096], &mut out);
            up += 4096;
        }
        if enc.checkpoint_due(t) {
            enc.checkpoint(t, &mut out);
        }
        file.write_all(&out).unwrap();
        out.clear();
    }
    let end = EndInfo {
        ended_unix_ms: started + 60_000,
        reason: "client closed".into(),
        bytes_up: up,
        bytes_down: down as u64,
    };
    enc.finish(t + 1, &end, &mut out);
    file.write_all(&out).unwrap();
    file.sync_all().unwrap();
    (up, down as u64)
}

/// `rchar` of `/proc/<pid>/io`: bytes the process read through read(2) and friends.
fn rchar(pid: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Round trip of one byte through a live session (echo device behind the forwarder).
async fn round_trip(conn: &mut tokio::net::TcpStream) -> Duration {
    let start = Instant::now();
    conn.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).await.unwrap();
    start.elapsed()
}

const BIG: usize = 192 << 20;

/// The real gateway with one sealed recording of [`BIG`] bytes, a security reviewer and a live
/// echo session (its forwarded connection).
struct Setup {
    gw: ChildGateway,
    sam: std::path::PathBuf,
    live: tokio::net::TcpStream,
}

const BIG_ID: &str = "b16b16b16b16b16b";

async fn setup() -> Setup {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (state, signer) = state_dir_with_key(&pki);
    write_recording(&state, &signer, BIG_ID, BIG);
    let echo = echo_device().await;
    let gw = ChildGateway::start(
        pki.clone(),
        &[acme("pump-12", echo)],
        ACME_RULES,
        "",
        Some(&state),
    );
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let sam = pki.person(Kind::Security, "sam", None, &[]);
    let fwd = forwarder(gw.client(&vendor, Transport::Quic), "pump-12").await;
    let live = tokio::net::TcpStream::connect(fwd).await.unwrap();
    live.set_nodelay(true).unwrap();
    Setup { gw, sam, live }
}

fn transport(i: usize) -> Transport {
    if i % 2 == 0 {
        Transport::Quic
    } else {
        Transport::Tcp
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetches_of_a_large_recording_do_not_stall_live_sessions() {
    let Setup { gw, sam, mut live } = setup().await;
    let id = BIG_ID;
    let quiet = round_trip(&mut live).await;
    // Four reviewers fetch the recording at once; the live session keeps answering.
    let fetches: Vec<_> = (0..4)
        .map(|i| {
            let client = gw.client(&sam, transport(i));
            tokio::spawn(async move {
                client
                    .review(Review::Recording {
                        session_id: id.into(),
                        purpose: "export".into(),
                        force: false,
                    })
                    .await
                    .map(|b| b.len())
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    while !fetches.iter().all(|f| f.is_finished()) {
        worst = worst.max(round_trip(&mut live).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "fetches did not finish"
        );
    }
    let took = started.elapsed();
    for f in fetches {
        let len = f.await.unwrap().unwrap();
        assert!(len > BIG, "fetch returned {len} bytes");
    }
    eprintln!(
        "4 fetches of a {} MiB recording took {took:?}; live round trip {quiet:?} quiet, worst {worst:?} meanwhile",
        BIG >> 20
    );
    assert!(
        worst < Duration::from_millis(500),
        "a live session's round trip reached {worst:?} while recordings were fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unread_fetches_do_not_hold_the_recording_in_gateway_memory() {
    let Setup { gw, sam, mut live } = setup().await;
    let id = BIG_ID;
    // Four reviewers ask for it and never read: the gateway holds chunks, not recordings.
    let pid = gw.pid();
    // Start from the gateway's resting memory: the start-up scan read the recording too.
    let rested = eventually(Duration::from_secs(30), || {
        proc_status(pid, "VmRSS") < 96 * 1024
    })
    .await;
    let rss_before = proc_status(pid, "VmRSS");
    eprintln!("gateway at rest: {rss_before} KiB (under 96 MiB: {rested})");
    let audited = |n: usize| {
        gw.audit_events()
            .iter()
            .filter(|e| e["event"] == "recording_exported")
            .count()
            >= n
    };
    let quiet = round_trip(&mut live).await;
    assert!(quiet < Duration::from_millis(500));
    let mut stalled = Vec::new();
    for i in 0..4 {
        let client = gw.client(
            &sam,
            if i % 2 == 0 {
                Transport::Quic
            } else {
                Transport::Tcp
            },
        );
        let (r, w) = client.stream().await.unwrap();
        let mut writer = FrameWriter::new(w);
        writer
            .write_request(&Request::Review(Review::Recording {
                session_id: id.into(),
                purpose: "export".into(),
                force: false,
            }))
            .await
            .unwrap();
        stalled.push((client, r, writer));
    }
    assert!(
        eventually(Duration::from_secs(60), || audited(4)).await,
        "the stalled fetches were not answered"
    );
    // Let the gateway fill whatever it would buffer for them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_stalled = proc_status(pid, "VmRSS");
    let grew_mib = rss_stalled.saturating_sub(rss_before) / 1024;
    eprintln!(
        "4 unread fetches of {} MiB: gateway RSS {rss_before} → {rss_stalled} KiB (+{grew_mib} MiB)",
        BIG >> 20
    );
    assert!(
        grew_mib < 64,
        "gateway RSS grew {grew_mib} MiB for 4 fetches that were never read"
    );
    // And live sessions still answer.
    assert!(round_trip(&mut live).await < Duration::from_millis(500));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_reads_the_session_index_not_the_recordings() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (state, signer) = state_dir_with_key(&pki);
    const N: usize = 10;
    const EACH: usize = 4 << 20;
    let mut ids = Vec::new();
    for i in 0..N {
        let id = format!("a0000000000000{i:02x}");
        write_recording(&state, &signer, &id, EACH);
        ids.push(id);
    }
    // One altered after sealing: the index never vouches for it.
    let bad = "badbadbadbadbad0";
    write_recording(&state, &signer, bad, 256 * 1024);
    let bad_path = state
        .join(ward_server::RECORDINGS_DIR)
        .join(format!("{bad}.wrec"));
    let mut bytes = std::fs::read(&bad_path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&bad_path, &bytes).unwrap();

    let echo = echo_device().await;
    let gw = ChildGateway::start(
        pki.clone(),
        &[acme("pump-12", echo)],
        ACME_RULES,
        "",
        Some(&state),
    );
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let sam = pki.person(Kind::Security, "sam", None, &[]);
    let reviewer = gw.client(&sam, Transport::Tcp);
    let list = || async {
        let body = reviewer
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
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<ward_server::review::SessionSummary>(l).unwrap())
            .collect::<Vec<_>>()
    };

    // A real session through the gateway: indexed open, then closed by the recorder.
    let fwd = forwarder(gw.client(&vendor, Transport::Tcp), "pump-12").await;
    let mut conn = tokio::net::TcpStream::connect(fwd).await.unwrap();
    round_trip(&mut conn).await;
    let open = list().await;
    assert_eq!(open.len(), N + 2, "{open:#?}");
    let live = open
        .iter()
        .find(|s| !ids.contains(&s.id) && s.id != bad)
        .unwrap()
        .clone();
    assert!(live.verification.starts_with("open"), "{live:#?}");
    drop(conn);
    let mut closed = Vec::new();
    for _ in 0..250 {
        closed = list().await;
        if closed
            .iter()
            .any(|s| s.id == live.id && s.verification == "ok")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Listing through the gateway: what it reads, counted by the kernel.
    let pid = gw.pid().to_string();
    let before = rchar(&pid);
    let listed = list().await;
    let read = rchar(&pid) - before;
    // And on the host, from the state dir.
    let key = ward_server::review::public_key(&state).unwrap();
    let before_local = rchar("self");
    let local =
        ward_server::review::list(&state, &key, &ward_server::review::Filter::default()).unwrap();
    let read_local = rchar("self") - before_local;
    eprintln!(
        "listing {} sessions ({} MiB of recordings): the gateway read {read} bytes, the host-side listing {read_local} bytes",
        listed.len(),
        (N * EACH) >> 20
    );
    assert!(
        read < 2 << 20,
        "a listing through the gateway read {read} bytes (the recordings hold {} MiB)",
        (N * EACH) >> 20
    );
    assert!(
        read_local < 2 << 20,
        "a host-side listing read {read_local} bytes (the recordings hold {} MiB)",
        (N * EACH) >> 20
    );
    assert_eq!(listed, local);

    // Each session with its state and its facts.
    assert_eq!(listed.len(), N + 2, "{listed:#?}");
    for s in &listed {
        if s.id == bad {
            assert!(s.verification.starts_with("FAILED"), "{s:#?}");
        } else if s.id == live.id {
            assert_eq!(s.verification, "ok", "{s:#?}");
            assert_eq!((s.bytes_up, s.bytes_down), (1, 1), "{s:#?}");
            assert_eq!(
                s.end_reason,
                closed.iter().find(|c| c.id == s.id).unwrap().end_reason
            );
        } else {
            assert!(ids.contains(&s.id));
            assert_eq!(s.verification, "ok", "{s:#?}");
            assert_eq!(s.bytes_down, EACH as u64, "{s:#?}");
            assert_eq!(s.bytes_up, 4 * 4096, "{s:#?}");
            assert_eq!(s.principal, "vendor acme/jdoe");
            assert_eq!(s.device, "pump-12");
            assert_eq!(s.end_reason, "client closed");
            assert!((s.duration_s - 60.0).abs() < 0.01, "{s:#?}");
        }
    }
    // A recording altered after it was indexed is read and verified again, not vouched for.
    let victim = state
        .join(ward_server::RECORDINGS_DIR)
        .join(format!("{}.wrec", ids[0]));
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    let after = list().await;
    let s = after.iter().find(|s| s.id == ids[0]).unwrap();
    assert!(s.verification.starts_with("FAILED"), "{s:#?}");
}

/// Listing time for 10,000 recordings: every file read and verified (no index: what the gateway
/// did before issue 12) against the session index. `cargo test -p ward-tests --test abuse_review
/// -- --ignored --nocapture listing_10k`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand, figures go to docs/benchmarks.md"]
async fn listing_10k_recordings_with_and_without_the_index() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (state, signer) = state_dir_with_key(&pki);
    for i in 0..10_000u32 {
        write_recording(&state, &signer, &format!("c000000000{i:06x}"), 4096);
    }
    std::fs::write(
        state.join(ward_server::AUDIT_PUB),
        format!("{}\n", hex::encode(signer.public_key())),
    )
    .unwrap();
    let key = signer.public_key();
    let filter = ward_server::review::Filter::default();
    let t = Instant::now();
    let without = ward_server::review::list(&state, &key, &filter).unwrap();
    let without_took = t.elapsed();
    // The gateway's first start indexes them (from recovery's scan).
    let echo = echo_device().await;
    let started = Instant::now();
    let gw = ChildGateway::start(
        pki.clone(),
        &[acme("pump-12", echo)],
        ACME_RULES,
        "",
        Some(&state),
    );
    let start_took = started.elapsed();
    let sam = pki.person(Kind::Security, "sam", None, &[]);
    let reviewer = gw.client(&sam, Transport::Tcp);
    let t = Instant::now();
    let with = ward_server::review::list(&state, &key, &filter).unwrap();
    let with_took = t.elapsed();
    let t = Instant::now();
    let body = reviewer
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
    let remote_took = t.elapsed();
    assert_eq!(without.len(), 10_000);
    assert_eq!(with, without);
    assert_eq!(
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        10_000
    );
    eprintln!(
        "10,000 recordings: listing without the index (verify every file) {without_took:?}; \
         with the index {with_took:?} host-side, {remote_took:?} through the gateway; \
         first gateway start (recovery scan + backfill) {start_took:?}"
    );
}
