//! Security case 34: bytes are recorded before they are delivered, even at disk-full; and a recording
//! whose tail is torn still exports its verified records.
//!
//! A device streams output into a session whose recording disk (a 4 MiB tmpfs) fills up: every byte
//! the client received must be in the recording, which must still verify, sealed. Then a recording
//! cut mid-record is exported with `ward export --force`, on the gateway host and through the
//! gateway: the export holds exactly its verified prefix, says where it stops, and the gateway
//! audits the export as forced.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{Client, SessionEnd, Transport};
use ward_recording::{Direction, Record};
use ward_tests::process::{run, ward};
use ward_tests::*;

/// The streaming device's write size.
const DEVICE_CHUNK: usize = 64 * 1024;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn acme(id: &str, addr: SocketAddr) -> DeviceSpec {
    DeviceSpec::new(id, addr, "raw", &[("vendor", "acme")])
}

/// The bytes the streaming device sends, in order: `payload(DEVICE_CHUNK, 0)`, then seed 1, …
fn device_stream(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + DEVICE_CHUNK);
    let mut seed = 0;
    while out.len() < len {
        out.extend_from_slice(&payload(DEVICE_CHUNK, seed));
        seed += 1;
    }
    out.truncate(len);
    out
}

/// A device that writes [`device_stream`] to each connection until the connection breaks.
async fn streaming_device() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                for seed in 0.. {
                    if conn.write_all(&payload(DEVICE_CHUNK, seed)).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The payloads of the data records of `dir` that read, in order (a torn tail is ignored).
fn recorded(bytes: &[u8], dir: Direction) -> Vec<u8> {
    let (records, _) = ward_recording::read_prefix(bytes);
    let mut out = Vec::new();
    for r in records {
        if let Record::Data {
            dir: d, payload, ..
        } = r
        {
            if d == dir {
                out.extend_from_slice(&payload);
            }
        }
    }
    out
}

/// The bytes of `bytes` up to and including its last valid checkpoint.
fn verified_prefix<'a>(bytes: &'a [u8], key: &[u8; 32]) -> &'a [u8] {
    &bytes[..ward_recording::verify(bytes, key).valid_prefix_len as usize]
}

/// Wait until session `id`'s recording verifies (sealed); returns its bytes.
async fn sealed(state_dir: &Path, id: &str, key: &[u8; 32]) -> Vec<u8> {
    let mut last = None;
    let ok = eventually(Duration::from_secs(10), || {
        let bytes = ward_server::review::read_recording(state_dir, id).unwrap();
        let report = ward_recording::verify(&bytes, key);
        let ok = report.ok;
        last = Some((bytes, report));
        ok
    })
    .await;
    let (bytes, report) = last.unwrap();
    assert!(
        ok,
        "recording {id} does not verify: {:?} ({:?}, {} records)",
        report.first_error, report.status, report.records
    );
    bytes
}

// ---------------------------------------------------------------------------------------------
// The disk fills during a session: nothing reaches the client that is not in the recording.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_the_client_got_is_recorded_when_the_disk_fills() {
    init_logs();
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let dev = streaming_device().await;
    let state_dir = tmpfs.path().join("state");
    // An in-process gateway whose state dir is on the small tmpfs. The disk watch only refuses new
    // sessions; this one is open before the disk fills.
    let port = ward_tests::process::free_port();
    let config = write_gateway_config(
        &pki,
        &[acme("pump-12", dev)],
        ACME_RULES,
        "",
        port,
        &state_dir,
    );
    let cfg = ward_server::gateway::load_config(&config).unwrap();
    let gw = ward_server::gateway::Gateway::start(cfg, clock())
        .await
        .unwrap();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let files = ward_client::IdentityFiles::resolve(&vendor, Some(&pki.root())).unwrap();
    let client = Client::new(&format!("127.0.0.1:{port}"), &files, Transport::Quic).unwrap();

    // The client sends nothing and reads what the device streams until the gateway ends it.
    let session = client.open("pump-12", false, None).await.unwrap();
    let id = session.session_id.clone();
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (mut rr, _rw) = tokio::io::split(remote);
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), rr.read_to_end(&mut got))
        .await
        .expect("the session did not end on a full disk")
        .unwrap();
    let end = run.await.unwrap();
    match &end {
        SessionEnd::ClosedByGateway(reason) => assert!(
            reason.contains("recording failed") && reason.contains("fail closed"),
            "{reason}"
        ),
        other => panic!("expected the gateway to end the session on a full disk, got {other:?}"),
    }
    assert!(got.len() > 1 << 20, "only {} bytes streamed", got.len());
    assert!(
        got == device_stream(got.len()),
        "the client got bytes the device never sent"
    );

    let key = ward_server::review::public_key(&state_dir).unwrap();
    let path = ward_server::review::recordings_dir(&state_dir).join(format!("{id}.wrec"));
    // Every byte the client received is in the recording, in order.
    let on_disk = std::fs::read(&path).unwrap();
    let down = recorded(&on_disk, Direction::Down);
    let missing = got.len().saturating_sub(down.len());
    eprintln!(
        "disk full: client got {} bytes, the recording holds {} down bytes ({missing} missing)",
        got.len(),
        down.len()
    );
    assert!(
        missing == 0 && down.starts_with(&got),
        "{missing} bytes reached the client but not the recording (client {} bytes, recording {} down bytes)",
        got.len(),
        down.len()
    );
    // And the recording is sealed: it verifies, ending with the reason the session ended.
    let bytes = sealed(&state_dir, &id, &key).await;
    let report = ward_recording::verify(&bytes, &key);
    assert_eq!(report.status, ward_recording::SealStatus::Sealed);
    let reason = report.end.unwrap().reason;
    assert!(reason.contains("recording failed"), "{reason}");
    // Space reserved ahead of the writes was given back when the recording was sealed.
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
    let len = bytes.len() as u64;
    assert!(
        blocks * 512 <= len.next_multiple_of(4096),
        "{len} bytes hold {} bytes of blocks",
        blocks * 512
    );
    gw.shutdown(Duration::from_millis(200)).await;
}

// ---------------------------------------------------------------------------------------------
// A torn tail: `ward export --force` exports the verified prefix and says where it stops.

/// A running session: its id, its task, and the vendor's ends (what they read, what they write).
type Running = (
    String,
    tokio::task::JoinHandle<SessionEnd>,
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
);

/// Open a session on `gw`'s echo device as `vendor`.
async fn open_echo(gw: &TestGateway, vendor: &Path) -> Running {
    let session = gw
        .client(vendor, Transport::Quic)
        .open("pump-12", false, None)
        .await
        .unwrap();
    let id = session.session_id.clone();
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (rr, rw) = tokio::io::split(remote);
    (id, run, rr, rw)
}

/// One session: `keystrokes` (each echoed before the next, so each is a record both ways and
/// 1024 records bring a signed checkpoint), then `bulk`, echoed. Returns its id.
async fn typed_then_bulk(
    gw: &TestGateway,
    vendor: &Path,
    keystrokes: &[u8],
    bulk: &[u8],
) -> String {
    let (id, run, mut rr, mut rw) = open_echo(gw, vendor).await;
    for key in keystrokes.chunks(1) {
        let mut echo = [0u8; 1];
        rw.write_all(key).await.unwrap();
        rr.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo[..], key);
    }
    rw.write_all(bulk).await.unwrap();
    rw.shutdown().await.unwrap();
    let mut rest = Vec::new();
    rr.read_to_end(&mut rest).await.unwrap();
    assert!(rest == bulk);
    assert_eq!(run.await.unwrap(), SessionEnd::Completed);
    id
}

/// Cut `bytes` in the middle of its last data record's payload.
fn tear(bytes: &[u8]) -> Vec<u8> {
    let (at, len) = ward_recording::Reader::new(bytes)
        .filter_map(|r| match r.unwrap() {
            (at, Record::Data { payload, .. }) => Some((at as usize, payload.len())),
            _ => None,
        })
        .last()
        .unwrap();
    bytes[..at + 13 + len / 2].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_force_of_a_torn_recording_exports_its_verified_prefix_and_is_audited() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gw = start_gateway(
        pki.clone(),
        &[acme("pump-12", echo.addr)],
        ACME_RULES,
        "",
        clock(),
    )
    .await;
    let state_dir = gw.state_dir();
    let key = ward_server::review::public_key(&state_dir).unwrap();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let (typed, bulk) = (payload(600, 1), payload(100_000, 2));
    let id = typed_then_bulk(&gw, &vendor, &typed, &bulk).await;
    let sent = [typed, bulk].concat();

    // The gateway sealed it; now its tail is torn, as a full disk or a crash leaves it.
    let whole = sealed(&state_dir, &id, &key).await;
    let torn = tear(&whole);
    let path = ward_server::review::recordings_dir(&state_dir).join(format!("{id}.wrec"));
    std::fs::write(&path, &torn).unwrap();
    let report = ward_recording::verify(&torn, &key);
    assert!(!report.ok);
    let prefix = verified_prefix(&torn, &key);
    let (want_up, want_down) = (
        recorded(prefix, Direction::Up),
        recorded(prefix, Direction::Down),
    );
    // The verified prefix holds some of what was sent and stops before the torn record.
    for want in [&want_up, &want_down] {
        assert!(!want.is_empty() && want.len() < sent.len() && sent.starts_with(want));
    }
    let stops = format!(
        "exported the first {} verified records (up to byte {} of {})",
        report.verified_records,
        prefix.len(),
        torn.len()
    );

    let out = tempfile::tempdir().unwrap();
    let state = state_dir.display().to_string();
    let local: &[&str] = &["--state-dir", &state];
    let (quic, root) = (gw.quic(), pki.root().display().to_string());
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let security = security.display().to_string();
    let remote: &[&str] = &[
        "--gateway",
        &quic,
        "--identity",
        &security,
        "--ca",
        &root,
        "--transport",
        "quic",
    ];
    for (name, source) in [("local", local), ("remote", remote)] {
        let base = out.path().join(name).display().to_string();
        let export = |force: &[&str]| {
            let args = [
                &["export", &id, "--format", "raw", "--out", &base],
                force,
                source,
            ]
            .concat();
            run(&mut ward(&args))
        };
        let refused = export(&[]);
        assert!(!refused.status.success(), "{name}: {refused:?}");
        assert!(
            refused.stderr.contains("fails verification"),
            "{name}: {refused:?}"
        );
        let forced = export(&["--force"]);
        assert!(forced.status.success(), "{name}: {forced:?}");
        eprintln!("{name}: {}", forced.stderr.trim());
        assert!(
            forced.stderr.contains(&stops),
            "{name}: want {stops:?} in {forced:?}"
        );
        assert!(
            forced.stderr.contains("torn or unverified"),
            "{name}: {forced:?}"
        );
        let up = std::fs::read(format!("{base}.up")).unwrap();
        let down = std::fs::read(format!("{base}.down")).unwrap();
        assert!(
            up == want_up && down == want_down,
            "{name}: not the verified prefix"
        );
    }

    // The gateway audited the remote export as forced, of a recording that does not verify.
    let audited = eventually(Duration::from_secs(5), || {
        audit_events(&state_dir).iter().any(|e| {
            e["event"] == "recording_exported"
                && e["session_id"] == id.as_str()
                && e["detail"]["forced"] == true
                && e["detail"]["verified"] == false
                && e["detail"]["verified_records"] == report.verified_records
                && e["detail"]["verified_bytes"] == prefix.len() as u64
                && e["severity"] == "high"
        })
    })
    .await;
    assert!(
        audited,
        "no forced recording_exported event: {:#?}",
        audit_events(&state_dir)
    );
}
