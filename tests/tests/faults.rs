//! Faults (issue 6 part 4; security cases 9, 19, 22, 26, 27): devices that close mid-stream or stop
//! reading, clients that vanish without closing, SIGTERM mid-session, hundreds of stalled
//! handshakes, garbled/truncated/oversized frames mid-session, and a recording disk that fills up.
//!
//! Already covered elsewhere and not repeated here: SIGTERM-free in-process shutdown with a reason,
//! recording write/fsync failure ending a session, unopenable recordings, kill -9 recovery,
//! refusing/stalling devices, garbled *request* frames over QUIC (tests/tests/gateway.rs and
//! tests/tests/recording.rs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{Client, SessionEnd, Transport};
use ward_core::frame::{Request, Response};
use ward_tests::*;
use ward_transport::datapath::{FrameReader, FrameWriter, Inbound};

const RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn acme(id: &str, addr: SocketAddr) -> DeviceSpec {
    DeviceSpec::new(id, addr, "raw", &[("vendor", "acme")])
}

/// A device that accepts, reads `then_close_after` bytes and closes its socket with data still
/// arriving (the kernel answers further data with a reset). Counts the connections it closed.
async fn closing_device(then_close_after: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    dying_device(then_close_after, false).await
}

/// Like [`closing_device`], but first shuts down its sending side (a FIN: the gateway's EOF to the
/// client) and waits a moment before the close that resets.
async fn half_closing_device(then_half_close_after: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    dying_device(then_half_close_after, true).await
}

async fn dying_device(after: usize, half_close_first: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let c = closed.clone();
    tokio::spawn(async move {
        loop {
            let mut s = ward::sim::accept_next(&l).await;
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; after];
                let _ = s.read_exact(&mut buf).await;
                if half_close_first {
                    let _ = s.shutdown().await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                drop(s);
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

/// A device that accepts and never reads; it keeps the sockets open until the test ends and
/// reports when the gateway closes them (a read returning 0 or an error).
async fn deaf_device() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let gone = Arc::new(AtomicUsize::new(0));
    let (a, g) = (accepted.clone(), gone.clone());
    tokio::spawn(async move {
        loop {
            let s = ward::sim::accept_next(&l).await;
            a.fetch_add(1, Ordering::SeqCst);
            let g = g.clone();
            tokio::spawn(async move {
                // Never read: the receive buffer fills and the window closes. Watch for the gateway
                // hanging up through readiness alone (nothing is consumed).
                let s = s;
                loop {
                    let ready = s
                        .ready(tokio::io::Interest::READABLE)
                        .await
                        .map(|r| r.is_error() || r.is_read_closed())
                        .unwrap_or(true);
                    if ready {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                g.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, gone)
}

/// Open a session on a raw stream of `client` and return its framed halves after `Opened`.
async fn raw_session(
    client: &Client,
    device: &str,
) -> (
    FrameReader<ward_client::BoxRead>,
    FrameWriter<ward_client::BoxWrite>,
    String,
) {
    let (r, w) = client.stream().await.unwrap();
    let mut writer = FrameWriter::new(w);
    writer
        .write_request(&Request::Open {
            device: device.into(),
            break_glass: false,
            reason: None,
        })
        .await
        .unwrap();
    let mut reader = FrameReader::new(r);
    match reader.next().await.unwrap() {
        Some(Inbound::Control(bytes)) => match ward_core::frame::decode_response(&bytes) {
            Ok(Some((Response::Opened { session_id, .. }, _))) => (reader, writer, session_id),
            other => panic!("expected Opened, got {other:?}"),
        },
        other => panic!("expected a control frame, got {other:?}"),
    }
}

/// What the gateway sent until the stream ended: data bytes and the control frames, decoded.
#[derive(Debug, Default)]
struct Seen {
    data: usize,
    eof: bool,
    controls: Vec<Response>,
    /// How the stream ended: `None` at a frame boundary, or the read error.
    end: Option<String>,
}

async fn read_until_end<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Seen {
    let mut seen = Seen::default();
    loop {
        match reader.next().await {
            Ok(None) => return seen,
            Ok(Some(Inbound::Data(b))) => seen.data += b.len(),
            Ok(Some(Inbound::Eof)) => seen.eof = true,
            Ok(Some(Inbound::Control(bytes))) => match ward_core::frame::decode_response(&bytes) {
                Ok(Some((r, _))) => seen.controls.push(r),
                other => panic!("gateway sent an undecodable control frame: {other:?}"),
            },
            Err(e) => {
                seen.end = Some(e.to_string());
                return seen;
            }
        }
    }
}

/// Wait (bounded) until the session's recording is sealed and verifies; returns its end reason.
async fn sealed_reason(state_dir: &Path, id: &str) -> String {
    let key = ward_server::review::public_key(state_dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(bytes) = ward_server::review::read_recording(state_dir, id) {
            let report = ward_recording::verify(&bytes, &key);
            if report.status != ward_recording::SealStatus::Unsealed {
                assert!(report.ok, "recording {id}: {:?}", report.first_error);
                let end = ward_recording::Reader::new(&bytes)
                    .filter_map(|r| r.ok())
                    .find_map(|(_, rec)| match rec {
                        ward_recording::Record::End { info, .. } => Some(info.reason),
                        _ => None,
                    });
                return end.unwrap_or_else(|| format!("{:?}", report.status));
            }
        }
        assert!(Instant::now() < deadline, "recording {id} was never sealed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One echo session on `client` to `device` that must complete byte-exact.
async fn echo_ok(client: &Client, device: &str, len: usize, seed: u64) {
    let session = client.open(device, false, None).await.unwrap();
    let data = payload(len, seed);
    let (out, end) = echo_session(session, &data).await;
    assert_eq!(end, SessionEnd::Completed);
    assert_eq!(sha256(&out), sha256(&data));
}

// ---------------------------------------------------------------------------------------------
// A device that closes mid-stream.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_closing_mid_stream_ends_only_that_session_and_says_so() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (closing, closed) = closing_device(64 * 1024).await;
    let echo = echo_device().await;
    let gw = start_gateway(
        pki.clone(),
        &[acme("pump-dies", closing), acme("pump-12", echo)],
        RULES,
        "",
        clock(),
    )
    .await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    for transport in [Transport::Quic, Transport::Tcp] {
        let client = gw.client(&vendor, transport);
        // A healthy session on the same client runs alongside and must not notice.
        let healthy = echo_ok(&client, "pump-12", 4 << 20, 3);
        let dying = async {
            let (mut reader, mut writer, id) = raw_session(&client, "pump-dies").await;
            let chunk = payload(16 * 1024, 1);
            // Keep sending well past what the device reads; the gateway must end the session.
            let send = async {
                for _ in 0..1024 {
                    let mut frame = vec![ward_transport::datapath::DATA, 0, 0, 0x40, 0];
                    frame.extend_from_slice(&chunk);
                    if writer.write_frame(&frame).await.is_err() {
                        break;
                    }
                }
            };
            let (seen, ()) = tokio::join!(
                tokio::time::timeout(Duration::from_secs(10), read_until_end(&mut reader)),
                send
            );
            (seen.expect("the gateway never ended the session"), id)
        };
        let (((seen, id), ()), ()) = tokio::join!(async { (dying.await, ()) }, healthy);
        let reason = match seen.controls.as_slice() {
            [Response::Closed { reason }] => reason.clone(),
            other => panic!("{transport:?}: expected one Closed frame, got {other:?} ({seen:?})"),
        };
        assert!(reason.contains("device"), "{transport:?}: {reason}");
        assert!(
            eventually(Duration::from_secs(5), || gw.live_sessions() == 0).await,
            "{transport:?}: session still live"
        );
        let recorded = sealed_reason(&gw.state_dir(), &id).await;
        assert!(recorded.contains("device"), "{transport:?}: {recorded}");
    }
    assert_eq!(closed.load(Ordering::SeqCst), 2);
}

/// The `ward connect` side of the same fault: the device half-closes (its FIN becomes the gateway's
/// EOF) and then resets on the data still arriving. The client is still sending, so it must keep
/// listening after the EOF and report the gateway's `Closed` reason, not a broken stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_still_sending_after_device_eof_reports_the_gateways_reason() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (closing, closed) = half_closing_device(64 * 1024).await;
    let gw = start_gateway(
        pki.clone(),
        &[acme("pump-dies", closing)],
        RULES,
        "",
        clock(),
    )
    .await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    for transport in [Transport::Quic, Transport::Tcp] {
        let client = gw.client(&vendor, transport);
        let session = client.open("pump-dies", false, None).await.unwrap();
        let (local, remote) = tokio::io::duplex(64 * 1024);
        let (lr, lw) = tokio::io::split(local);
        let run = tokio::spawn(session.run(lr, lw));
        let (mut rr, mut rw) = tokio::io::split(remote);
        // Keep sending (bounded) well past what the device reads; drain what comes back.
        let chunk = payload(16 * 1024, 2);
        let send = tokio::spawn(async move {
            for _ in 0..4096 {
                if rw.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            rw
        });
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = rr.read_to_end(&mut sink).await;
        });
        let end = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the client never saw the session end")
            .unwrap();
        match &end {
            SessionEnd::ClosedByGateway(reason) => {
                assert!(reason.contains("device"), "{transport:?}: {reason}")
            }
            other => panic!("{transport:?}: expected the gateway's reason, got {other:?}"),
        }
        send.abort();
        drain.abort();
        assert!(
            eventually(Duration::from_secs(5), || gw.live_sessions() == 0).await,
            "{transport:?}: session still live"
        );
    }
    assert_eq!(closed.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// A device that stops reading: backpressure, bounded memory, other sessions unaffected.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_that_stops_reading_bounds_gateway_memory_and_spares_other_sessions() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (deaf, accepted, _gone) = deaf_device().await;
    let echo = echo_device().await;
    // The real binary, so its memory is its own.
    let gw = ChildGateway::start(
        pki.clone(),
        &[acme("pump-deaf", deaf), acme("pump-12", echo)],
        RULES,
        "",
        None,
    );
    let pid = gw.pid();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let client = gw.client(&vendor, Transport::Quic);
    // Warm up (first session, first recording, TLS) before the baseline.
    echo_ok(&client, "pump-12", 1 << 20, 1).await;
    let rss_before = proc_status(pid, "VmRSS");

    // Four stuck sessions: two on the connection the healthy session below shares, one on a
    // connection of its own, one over TLS/TCP. (Two, not more, share the connection: each stuck
    // QUIC stream may hold its 16 MiB stream window, and the connection window is 64 MiB, so a
    // client that wedges four streams of one connection wedges that connection — its own.)
    let own = Arc::new(gw.client(&vendor, Transport::Quic));
    let tcp = Arc::new(gw.client(&vendor, Transport::Tcp));
    let client = Arc::new(client);
    let stuck_on = [client.clone(), client.clone(), own, tcp];
    const STUCK: usize = 4;
    const OFFER: u64 = 256 << 20;
    let pushed: Vec<Arc<AtomicU64>> = (0..STUCK).map(|_| Arc::default()).collect();
    let mut writers = Vec::new();
    for (counter, on) in pushed.iter().zip(&stuck_on) {
        let (_reader, mut writer, _id) = raw_session(on, "pump-deaf").await;
        let counter = counter.clone();
        writers.push(tokio::spawn(async move {
            let _reader = _reader;
            let mut frame = vec![ward_transport::datapath::DATA, 0, 1, 0, 0];
            frame.extend_from_slice(&payload(64 * 1024, 9));
            while counter.load(Ordering::Relaxed) < OFFER {
                if writer.write_frame(&frame).await.is_err() {
                    return;
                }
                counter.fetch_add(64 * 1024, Ordering::Relaxed);
            }
        }));
    }
    // Wait until every stuck session has stopped making progress for a second.
    let mut last: Vec<u64> = vec![0; STUCK];
    let mut still_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while still_since.elapsed() < Duration::from_secs(1) {
        assert!(Instant::now() < deadline, "senders never stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now: Vec<u64> = pushed.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        if now != last {
            still_since = Instant::now();
            last = now;
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), STUCK);
    let stuck_total: u64 = last.iter().sum();
    // While they are stuck, other sessions (same connection and a new one) are unaffected.
    let other = gw.client(&vendor, Transport::Tcp);
    let started = Instant::now();
    tokio::join!(
        echo_ok(&client, "pump-12", 4 << 20, 2),
        echo_ok(&other, "pump-12", 4 << 20, 3)
    );
    let others_took = started.elapsed();
    let rss_stuck = proc_status(pid, "VmRSS");
    let grew_kib = rss_stuck.saturating_sub(rss_before);
    eprintln!(
        "deaf device: {STUCK} sessions accepted {} MiB in total of {} MiB offered each, then \
         stalled; gateway RSS {rss_before} → {rss_stuck} KiB (+{grew_kib} KiB); two 4 MiB echo \
         sessions meanwhile took {others_took:?}",
        stuck_total >> 20,
        OFFER >> 20
    );
    for (i, n) in last.iter().enumerate() {
        assert!(
            *n < OFFER,
            "stuck session {i} took all {n} bytes: no backpressure"
        );
        // Per stream: quinn's 16 MiB stream window, two socket buffers and one copy buffer.
        assert!(
            *n <= 40 << 20,
            "stuck session {i} accepted {} MiB before backpressure",
            n >> 20
        );
    }
    // Gateway memory holds at most what the windows allow per stuck stream, not what was offered.
    assert!(
        grew_kib <= (STUCK as u64) * 24 * 1024 + 32 * 1024,
        "gateway RSS grew {grew_kib} KiB with {STUCK} stuck sessions"
    );
    for w in writers {
        w.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// A client that vanishes without closing (its packets just stop).

/// A UDP relay between one client and the gateway that can go silent in both directions.
async fn udp_blackhole(gateway: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(gateway).await.unwrap();
    let addr = front.local_addr().unwrap();
    let dead = Arc::new(AtomicBool::new(false));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    {
        let (front, back, dead, client) =
            (front.clone(), back.clone(), dead.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                if !dead.load(Ordering::SeqCst) {
                    let _ = back.send(&buf[..n]).await;
                }
            }
        });
    }
    {
        let dead = dead.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *client.lock().unwrap();
                if let (Some(to), false) = (to, dead.load(Ordering::SeqCst)) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    (addr, dead)
}

/// A TCP relay to the gateway that can stop forwarding while keeping both sockets open.
async fn tcp_blackhole(gateway: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let dead = Arc::new(AtomicBool::new(false));
    let d = dead.clone();
    tokio::spawn(async move {
        loop {
            let front = ward::sim::accept_next(&l).await;
            let back = TcpStream::connect(gateway).await.unwrap();
            let d = d.clone();
            tokio::spawn(async move {
                let (fr, fw) = front.into_split();
                let (br, bw) = back.into_split();
                async fn pump(
                    mut r: impl AsyncRead + Unpin,
                    mut w: impl AsyncWrite + Unpin,
                    dead: Arc<AtomicBool>,
                ) {
                    let mut buf = vec![0u8; 65_536];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) if !dead.load(Ordering::SeqCst) => {
                                if w.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                    // Vanished: never close, never reset; hold the socket until the test ends.
                    std::future::pending::<()>().await;
                    drop(w);
                }
                tokio::join!(pump(fr, bw, d.clone()), pump(br, fw, d));
            });
        }
    });
    (addr, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_client_is_freed_by_the_idle_timeout() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (deaf, accepted, gone) = deaf_device().await;
    let gw = start_gateway(
        pki.clone(),
        &[acme("pump-12", deaf)],
        RULES,
        "idle_timeout = \"1s\"",
        clock(),
    )
    .await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let files = ward_client::IdentityFiles::resolve(&vendor, Some(&pki.root())).unwrap();
    let (udp, udp_dead) = udp_blackhole(gw.quic().parse().unwrap()).await;
    let (tcp, tcp_dead) = tcp_blackhole(gw.tcp().parse().unwrap()).await;
    let quic_client = Client::new(&udp.to_string(), &files, Transport::Quic).unwrap();
    let tcp_client = Client::new(&tcp.to_string(), &files, Transport::Tcp).unwrap();
    let (_qr, _qw, quic_id) = raw_session(&quic_client, "pump-12").await;
    let (_tr, _tw, tcp_id) = raw_session(&tcp_client, "pump-12").await;
    assert!(
        eventually(Duration::from_secs(5), || accepted.load(Ordering::SeqCst)
            == 2)
        .await
    );
    assert_eq!(gw.live_sessions(), 2);
    assert_eq!(gw.gw.as_ref().unwrap().connections(), 2);
    // Both clients vanish: no FIN, no reset, no CONNECTION_CLOSE; the process keeps its sockets.
    udp_dead.store(true, Ordering::SeqCst);
    tcp_dead.store(true, Ordering::SeqCst);
    let vanished = Instant::now();
    // The sessions are cut by the idle timeout (1 s), their device sockets closed and recordings
    // sealed; the TLS connection goes with its session.
    assert!(
        eventually(Duration::from_secs(10), || gw.live_sessions() == 0).await,
        "sessions still live {:?} after the clients vanished",
        vanished.elapsed()
    );
    assert!(eventually(Duration::from_secs(5), || gone.load(Ordering::SeqCst) == 2).await);
    for id in [&quic_id, &tcp_id] {
        let reason = sealed_reason(&gw.state_dir(), id).await;
        assert!(reason.contains("idle"), "{reason}");
    }
    assert!(
        eventually(Duration::from_secs(5), || gw
            .gw
            .as_ref()
            .unwrap()
            .connections()
            <= 1)
        .await,
        "the vanished TLS connection was not freed"
    );
    // The QUIC connection itself is freed by the connection liveness timeout (30 s).
    assert!(
        eventually(Duration::from_secs(40), || gw
            .gw
            .as_ref()
            .unwrap()
            .connections()
            == 0)
        .await,
        "the vanished QUIC connection was not freed within 40 s"
    );
    eprintln!(
        "vanished clients: sessions freed by the idle timeout, connections freed {:?} after",
        vanished.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// SIGTERM mid-session.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_session_tells_clients_why_and_seals_recordings() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = echo_device().await;
    let mut gw = ChildGateway::start(
        pki.clone(),
        &[acme("pump-12", echo)],
        RULES,
        "shutdown_grace = \"1s\"",
        None,
    );
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let mut runs = Vec::new();
    let mut ids = Vec::new();
    let moved = Arc::new(AtomicU64::new(0));
    for transport in [Transport::Quic, Transport::Quic, Transport::Tcp] {
        let client = gw.client(&vendor, transport);
        let session = client.open("pump-12", false, None).await.unwrap();
        ids.push(session.session_id.clone());
        let (local, remote) = tokio::io::duplex(64 * 1024);
        let (lr, lw) = tokio::io::split(local);
        runs.push(tokio::spawn(async move {
            let _client = client;
            session.run(lr, lw).await
        }));
        // Keep data flowing both ways until the gateway cuts the session.
        let (mut rr, mut rw) = tokio::io::split(remote);
        let moved = moved.clone();
        tokio::spawn(async move {
            let chunk = payload(4096, 4);
            let echo_back = async {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = rr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                }
            };
            let send = async {
                loop {
                    if rw.write_all(&chunk).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::join!(echo_back, send);
        });
    }
    assert!(
        eventually(Duration::from_secs(5), || moved.load(Ordering::Relaxed)
            > 64 * 1024)
        .await
    );
    gw.sigterm();
    for (i, run) in runs.into_iter().enumerate() {
        let end = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("session {i} did not end after SIGTERM"))
            .unwrap();
        assert_eq!(
            end,
            SessionEnd::ClosedByGateway("gateway shutting down".into()),
            "session {i}"
        );
    }
    let status = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = gw.proc.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(status.success(), "{status}: {}", gw.proc.stderr());
    // Every recording is sealed (not left for crash recovery), verifies, and says why it ended.
    for id in &ids {
        let reason = sealed_reason(&gw.state_dir, id).await;
        assert!(reason.contains("shutting down"), "{id}: {reason}");
        let bytes = ward_server::review::read_recording(&gw.state_dir, id).unwrap();
        let key = ward_server::review::public_key(&gw.state_dir).unwrap();
        assert_eq!(
            ward_recording::verify(&bytes, &key).status,
            ward_recording::SealStatus::Sealed,
            "{id}"
        );
    }
    let events = gw.audit_events();
    let closes = events
        .iter()
        .filter(|e| e["event"] == "session_close")
        .filter(|e| ids.iter().any(|id| e["session_id"] == id.as_str()))
        .count();
    assert_eq!(closes, ids.len());
    assert!(events.iter().any(|e| e["event"] == "gateway_stop"));
    let _ = &mut gw;
}

// ---------------------------------------------------------------------------------------------
// 500 stalled handshakes on each transport.

/// The first datagram a real Ward client sends to `trap`: a QUIC Initial carrying a ClientHello,
/// with connection IDs of its own (the gateway routes Initials by connection ID, so a replayed
/// one would only reach the first handshake again).
async fn captured_initial(trap: &UdpSocket, files: &ward_client::IdentityFiles) -> Vec<u8> {
    let client = Client::new(
        &trap.local_addr().unwrap().to_string(),
        files,
        Transport::Quic,
    )
    .unwrap();
    let attempt = tokio::spawn(async move {
        let _ = client.stream().await;
    });
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), trap.recv_from(&mut buf))
        .await
        .expect("the client sent no Initial")
        .unwrap();
    attempt.abort();
    buf.truncate(n);
    buf
}

fn bound_tcp(src: std::net::IpAddr) -> socket2::Socket {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(src, 0).into()).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_stalled_handshakes_do_not_stop_a_legitimate_client() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = echo_device().await;
    let gw = start_gateway(
        pki.clone(),
        &[acme("pump-12", echo)],
        RULES,
        "handshake_timeout = \"5s\"",
        clock(),
    )
    .await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    const STALLED: usize = 500;
    // Spread over 20 loopback sources (25 TCP + 25 QUIC each, under the per-source limit of 64),
    // as a distributed attacker would; the legitimate client comes from 127.0.0.1.
    let src = |i: usize| std::net::IpAddr::from([127, 0, 0, 10 + (i % 20) as u8]);

    // Captured first (it takes a few seconds), so all 1000 stalls are live at once.
    let files = ward_client::IdentityFiles::resolve(&vendor, Some(&pki.root())).unwrap();
    let mut initials = Vec::new();
    for i in 0..STALLED {
        let s = UdpSocket::bind(SocketAddr::new(src(i), 0)).await.unwrap();
        let initial = captured_initial(&s, &files).await;
        initials.push((s, initial));
    }
    // TLS over TCP: half of them send nothing, half send the start of a TLS record and stop.
    let tcp_addr: SocketAddr = gw.tcp().parse().unwrap();
    let mut stalled_tcp = Vec::new();
    for i in 0..STALLED {
        let s = bound_tcp(src(i));
        s.connect(&tcp_addr.into()).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut s = TcpStream::from_std(std::net::TcpStream::from(s)).unwrap();
        if i % 2 == 1 {
            // A handshake record header promising 512 bytes, and 3 of them.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
                .await
                .unwrap();
        }
        stalled_tcp.push(s);
    }
    // QUIC: 500 real Initials (each a ClientHello from a client that then goes silent), each
    // sent from its own socket, never followed up.
    let quic_addr: SocketAddr = gw.quic().parse().unwrap();
    for (s, initial) in &initials {
        s.send_to(initial, quic_addr).await.unwrap();
    }
    let stalled_udp: Vec<(UdpSocket, usize)> =
        initials.into_iter().map(|(s, i)| (s, i.len())).collect();
    // Every stalled handshake reaches the gateway; they fill the anonymous budget
    // (`max_anonymous_connections`, 256 at these limits) and no more: each newer one evicts the
    // oldest anonymous connection of the source holding the most.
    assert!(
        eventually(Duration::from_secs(10), || gw
            .gw
            .as_ref()
            .unwrap()
            .connections_admitted()
            >= 2 * STALLED as u64 - 10)
        .await,
        "the stalled handshakes did not all reach the gateway: {} admitted",
        gw.gw.as_ref().unwrap().connections_admitted()
    );
    let held = gw.gw.as_ref().unwrap().connections();
    assert!((250..=256).contains(&held), "{held} connections held");

    // A legitimate client connects and opens a session within a second, on each transport.
    for transport in [Transport::Quic, Transport::Tcp] {
        let client = gw.client(&vendor, transport);
        let started = Instant::now();
        let session =
            tokio::time::timeout(Duration::from_secs(5), client.open("pump-12", false, None))
                .await
                .unwrap_or_else(|_| panic!("{transport:?}: no session within 5 s"))
                .unwrap();
        let took = started.elapsed();
        eprintln!("{transport:?}: session opened in {took:?} beside {STALLED} stalled handshakes per transport");
        assert!(
            took < Duration::from_secs(1),
            "{transport:?}: took {took:?}"
        );
        let data = payload(64 * 1024, 5);
        let (out, end) = echo_session(session, &data).await;
        assert_eq!(end, SessionEnd::Completed);
        assert_eq!(out, data);
    }

    // Before address validation the gateway sends at most 3× what each stalled source sent
    // (RFC 9000 §8.1). Count everything that came back to each socket.
    let mut worst = 0.0f64;
    let mut answered = 0;
    for (s, sent) in &stalled_udp {
        let mut got = 0usize;
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = s.try_recv(&mut buf) {
            got += n;
        }
        assert!(
            got <= 3 * sent,
            "gateway sent {got} bytes to an unvalidated address that sent {sent}"
        );
        answered += usize::from(got > 0);
        worst = worst.max(got as f64 / *sent as f64);
    }
    assert_eq!(
        answered, STALLED,
        "every stalled QUIC handshake got the server's first flight"
    );
    // The handshake timeout (5 s) frees every stalled handshake.
    assert!(
        eventually(Duration::from_secs(10), || gw
            .gw
            .as_ref()
            .unwrap()
            .connections()
            == 0)
        .await,
        "stalled handshakes still hold {} connection slots",
        gw.gw.as_ref().unwrap().connections()
    );
    let mut buf = [0u8; 64];
    for (i, s) in stalled_tcp.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "stalled TCP handshake {i} was not closed: {r:?}"
        );
    }
    eprintln!("stalled QUIC handshakes: worst amplification {worst:.2}× (limit 3×)");
}

// ---------------------------------------------------------------------------------------------
// Garbled, truncated and oversized frames in the data phase, on both transports.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_mid_session_get_a_clear_close_and_the_gateway_keeps_serving() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = echo_device().await;
    let gw = start_gateway(pki.clone(), &[acme("pump-12", echo)], RULES, "", clock()).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let too_big = (ward_transport::datapath::MAX_DATA as u32 + 1).to_be_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "oversized data frame",
            vec![0x10, too_big[0], too_big[1], too_big[2], too_big[3]],
            "exceeds",
        ),
        (
            "truncated data frame",
            vec![0x10, 0, 0, 0, 100, 1, 2, 3],
            "inside a data frame",
        ),
        (
            "truncated header",
            vec![0x10, 0, 0],
            "inside a frame header",
        ),
        (
            "unknown frame type",
            vec![0x7e, 0, 0, 0, 2, b'{', b'}'],
            "unexpected control frame",
        ),
        (
            "garbage text",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            "too large",
        ),
        (
            "request frame after open",
            ward_core::frame::encode_request(&Request::ListDevices).unwrap(),
            "unexpected control frame",
        ),
    ];
    for transport in [Transport::Quic, Transport::Tcp] {
        let client = gw.client(&vendor, transport);
        for (name, bytes, expect) in &cases {
            let (mut reader, mut writer, id) = raw_session(&client, "pump-12").await;
            // Some good data first, then the bad bytes, then the end of the stream.
            let mut good = vec![ward_transport::datapath::DATA, 0, 0, 0, 5];
            good.extend_from_slice(b"hello");
            writer.write_frame(&good).await.unwrap();
            writer.write_frame(bytes).await.unwrap();
            let _ = writer.finish().await;
            let seen = tokio::time::timeout(Duration::from_secs(5), read_until_end(&mut reader))
                .await
                .unwrap_or_else(|_| panic!("{transport:?} {name}: stream never closed"));
            let reason = match seen.controls.as_slice() {
                [Response::Closed { reason }] => reason.clone(),
                other => panic!(
                    "{transport:?} {name}: expected a Closed frame, got {other:?} ({seen:?})"
                ),
            };
            assert!(
                reason.contains(expect),
                "{transport:?} {name}: reason {reason:?} does not say {expect:?}"
            );
            let recorded = sealed_reason(&gw.state_dir(), &id).await;
            assert!(
                recorded.contains(expect),
                "{transport:?} {name}: {recorded}"
            );
        }
        // A garbled request (before any open) over this transport too.
        let (r, w) = client.stream().await.unwrap();
        let mut writer = FrameWriter::new(w);
        writer
            .write_frame(&[0x01, 0, 0, 0, 5, b'{', b'x', b'"', 0xff, b'}'])
            .await
            .unwrap();
        let _ = writer.finish().await;
        let mut reader = FrameReader::new(r);
        let seen = tokio::time::timeout(Duration::from_secs(5), read_until_end(&mut reader))
            .await
            .unwrap();
        assert!(
            matches!(seen.controls.as_slice(), [Response::Error { .. }]),
            "{transport:?}: {seen:?}"
        );
        // The gateway still serves on this transport.
        echo_ok(&client, "pump-12", 256 * 1024, 7).await;
    }
    assert!(eventually(Duration::from_secs(5), || gw.live_sessions() == 0).await);
}

// ---------------------------------------------------------------------------------------------
// The recording disk fills up: alert first, then fail closed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_recording_disk_alerts_first_then_refuses_new_sessions() {
    init_logs();
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        return;
    };
    let pki = Arc::new(Pki::new());
    let (dev, device_connections) = {
        let sim = ward::sim::echo("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        (sim.addr, sim.connections.clone())
    };
    let state_dir = tmpfs.path().join("state");
    // An in-process gateway whose state dir is on the small tmpfs.
    let port = ward_tests::process::free_port();
    let config = write_gateway_config(
        &pki,
        &[acme("pump-12", dev)],
        RULES,
        "disk_alert_percent = 60\ndisk_refuse_percent = 85",
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

    // Fill the disk with session traffic, 256 KiB (each way) per session, one after another,
    // until the gateway refuses one.
    let mut opened = Vec::new();
    let mut refusal = None;
    for i in 0..64u64 {
        match client.open("pump-12", false, None).await {
            Ok(session) => {
                let id = session.session_id.clone();
                let data = payload(256 * 1024, i);
                let (out, end) = echo_session(session, &data).await;
                opened.push((id, end, sha256(&data), out.len()));
            }
            Err(e) => {
                refusal = Some(e.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("the gateway never refused a session on a full disk");
    assert!(
        refusal.contains("RecordingUnavailable") && refusal.contains("recording disk is full"),
        "{refusal}"
    );
    // Still refused on the next try, and the device never sees it.
    let before = device_connections.load(Ordering::SeqCst);
    let again = client.open("pump-12", false, None).await.err().unwrap();
    assert!(
        again.to_string().contains("recording disk is full"),
        "{again}"
    );
    assert_eq!(device_connections.load(Ordering::SeqCst), before);
    gw.shutdown(Duration::from_millis(200)).await;

    let events = audit_events(&state_dir);
    let pos = |pred: &dyn Fn(&serde_json::Value) -> bool| events.iter().position(pred);
    let alert = pos(&|e| e["event"] == "disk_usage_alert").expect("no disk_usage_alert event");
    assert_eq!(events[alert]["severity"], "high");
    let alerts = events
        .iter()
        .filter(|e| e["event"] == "disk_usage_alert")
        .count();
    assert_eq!(alerts, 1, "one alert per crossing");
    // Nothing was refused or cut for lack of space before the alert.
    let first_trouble = pos(&|e| {
        (e["event"] == "session_deny" && e["outcome"] == "failure")
            || e["event"] == "recording_failed"
            || (e["event"] == "session_close"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("recording failed")))
    })
    .expect("no refusal in the audit log");
    assert!(
        alert < first_trouble,
        "the alert must come before any refusal: {events:#?}"
    );
    let full = pos(&|e| e["event"] == "disk_full").expect("no disk_full event");
    assert!(alert < full && full <= first_trouble);
    // No session ran unrecorded: every session the gateway opened has a recording; every one that
    // completed holds exactly the bytes sent.
    let key = ward_server::review::public_key(&state_dir).unwrap();
    let opens: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "session_open" && e["outcome"] == "success")
        .map(|e| e["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(opens.len(), opened.len());
    for (id, end, sent_hash, _) in &opened {
        assert!(opens.contains(&id.as_str()));
        let bytes = ward_server::review::read_recording(&state_dir, id).unwrap();
        let report = ward_recording::verify(&bytes, &key);
        if *end == SessionEnd::Completed {
            assert!(report.ok, "{id}: {:?}", report.first_error);
            let (up, _) = ward_recording::export::raw(
                &ward_recording::Reader::new(&bytes)
                    .map(|r| r.unwrap().1)
                    .collect::<Vec<_>>(),
            );
            assert_eq!(&sha256(&up), sent_hash, "{id}");
        }
    }
    eprintln!(
        "disk fill: {} sessions ran before the refusal; alert at event {alert}, disk_full at {full}, first refusal at {first_trouble}",
        opened.len()
    );
}
