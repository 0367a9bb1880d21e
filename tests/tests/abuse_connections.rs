//! Nobody holds the door shut without a certificate (issue 12, item 1).
//!
//! At the default limits, thousands of connections that never present a certificate (TCP
//! connections that never send a byte, QUIC connections that finish an anonymous handshake and
//! then only send keep-alives) must not keep a certificate holder out, on either transport; a
//! source over its share is told "gateway busy: too many connections from your address", and the
//! refusals reach the audit log in aggregate.
//!
//! Bounded: loopback only (sources are 127.x.y.z addresses), 2,000 TCP + 1,000 QUIC connections
//! opened once, every wait has a limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{Client, Transport};
use ward_core::frame::{Request, Response};
use ward_tests::*;

const STALLED_TCP: usize = 2_000;
const TCP_SOURCES: u8 = 100;
const IDLE_QUIC: usize = 1_000;
const QUIC_SOURCES: u8 = 16;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn src(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

async fn gateway() -> (TestGateway, Arc<Pki>) {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        echo,
        "raw",
        &[("vendor", "acme")],
    )];
    // No limits in the config: the defaults are what is tested.
    let gw = start_gateway(pki.clone(), &devices, ACME_RULES, "", clock()).await;
    (gw, pki)
}

/// One TCP connection from `from` that never sends a byte.
async fn stalled_tcp(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .ok()?
        .ok()
}

/// `n` stalled TCP connections spread over `sources` addresses `127.<a>.0.<i>`.
async fn stalled_flood(a: u8, sources: u8, n: usize, to: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    for i in 0..n {
        let from = src(a, 0, 1 + (i % usize::from(sources)) as u8);
        set.spawn(stalled_tcp(from, to));
        if set.len() >= 64 {
            if let Some(Ok(Some(s))) = set.join_next().await {
                held.push(s);
            }
        }
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Some(s)) = r {
            held.push(s);
        }
    }
    held
}

/// A certificate holder from `from` lists its devices over `transport`; returns how long it took.
async fn certificate_holder_connects(
    gw: &TestGateway,
    vendor: &std::path::Path,
    from: IpAddr,
    transport: Transport,
) -> Duration {
    let client: Client = gw.client(vendor, transport).bind_local(from);
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        client.request(&Request::ListDevices),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer within 1 s"))
    .and_then(|r| r);
    assert!(
        matches!(&answer, Ok(Response::Devices { devices }) if devices.len() == 1),
        "{transport:?}: {answer:?}"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_idle_anonymous_connections_do_not_keep_certificate_holders_out() {
    let (gw, pki) = gateway().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let tcp: SocketAddr = gw.tcp().parse().unwrap();
    let quic: SocketAddr = gw.quic().parse().unwrap();

    let stalled = stalled_flood(1, TCP_SOURCES, STALLED_TCP, tcp).await;
    assert_eq!(
        stalled.len(),
        STALLED_TCP,
        "the stalled connections were made"
    );
    let sources: Vec<IpAddr> = (1..=QUIC_SOURCES).map(|i| src(2, 0, i)).collect();
    let (_endpoints, idle) = idle_anonymous_quic(&pki.root(), &sources, IDLE_QUIC, quic).await;
    eprintln!(
        "held: {} stalled TCP, {} anonymous QUIC handshakes finished; gateway counts {} connections",
        stalled.len(),
        idle.len(),
        gw.gw.as_ref().unwrap().connections()
    );

    for (i, transport) in [Transport::Quic, Transport::Tcp].into_iter().enumerate() {
        let took =
            certificate_holder_connects(&gw, &vendor, src(3, 0, 1 + i as u8), transport).await;
        eprintln!("{transport:?}: certificate holder answered in {took:?}");
    }
    assert!(
        gw.gw.as_ref().unwrap().connections() <= 1024,
        "never more than max_connections"
    );
    drop(stalled);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_share_is_told_the_gateway_is_busy_and_refusals_are_audited_in_aggregate()
{
    let (mut gw, pki) = gateway().await;
    let state = gw.state_dir();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let tcp: SocketAddr = gw.tcp().parse().unwrap();
    let flooder = src(9, 0, 1);

    // The default per-source share (64), held by stalled TCP connections, then ten more.
    let held = stalled_flood(9, 1, 64, tcp).await;
    assert_eq!(held.len(), 64);
    // Connected in the kernel is not yet admitted by the gateway: wait for that.
    assert!(
        eventually(Duration::from_secs(10), || gw
            .gw
            .as_ref()
            .unwrap()
            .connections()
            >= 64)
        .await,
        "the gateway did not admit the 64 connections"
    );
    let mut extra = Vec::new();
    for _ in 0..10 {
        extra.extend(stalled_tcp(flooder, tcp).await);
    }

    // The share holds across transports: a certificate from the same address is refused on QUIC
    // too, with the reason.
    let busy = "gateway busy: too many connections from your address";
    let err = gw
        .client(&vendor, Transport::Quic)
        .bind_local(flooder)
        .request(&Request::ListDevices)
        .await
        .expect_err("QUIC from a source over its share must be refused");
    assert!(err.to_string().contains(busy), "QUIC: {err:#}");
    match gw
        .client(&vendor, Transport::Tcp)
        .bind_local(flooder)
        .request(&Request::ListDevices)
        .await
    {
        Ok(Response::Error { message, .. }) => assert!(message.contains(busy), "TCP: {message}"),
        other => panic!("TCP from a source over its share: {other:?}"),
    }
    // Another address is not affected.
    certificate_holder_connects(&gw, &vendor, src(9, 0, 2), Transport::Quic).await;

    drop(held);
    drop(extra);
    gw.shutdown(Duration::from_millis(50)).await;
    let events = audit_events(&state);
    let one_by_one = events
        .iter()
        .filter(|e| e["event"] == "connection_refused")
        .count();
    assert_eq!(one_by_one, 1, "the first refusal is written as it is");
    let summary = events
        .iter()
        .find(|e| {
            e["event"] == "unauthenticated_summary"
                && e["detail"]["kind"] == "connection_refused"
                && e["source"] == "127.9.0.1"
        })
        .expect("no summary of the refusals");
    assert_eq!(summary["detail"]["count"], 12, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_that_only_keep_alive_or_never_log_in_are_closed_at_their_deadline() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        echo,
        "raw",
        &[("vendor", "acme")],
    )];
    let gw = start_gateway(
        pki.clone(),
        &devices,
        ACME_RULES,
        "first_request_timeout = \"1s\"\nanonymous_timeout = \"3s\"",
        clock(),
    )
    .await;
    let quic: SocketAddr = gw.quic().parse().unwrap();
    let sources = [src(5, 0, 1)];
    let (_endpoints, conns) = idle_anonymous_quic(&pki.root(), &sources, 2, quic).await;
    assert_eq!(conns.len(), 2);
    // One never opens a stream (keep-alives only); the other opens streams that never finish a
    // login (each sends nothing), one per second.
    let idle = conns[0].clone();
    let busy = conns[1].clone();
    let keep_opening = tokio::spawn(async move {
        let mut streams = Vec::new();
        for _ in 0..10 {
            match busy.open_bi().await {
                Ok((mut send, recv)) => {
                    // The first byte of a frame header, and nothing more.
                    let _ = send.write_all(&[0]).await;
                    streams.push((send, recv));
                }
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        busy.close_reason()
    });
    let started = Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(10), idle.closed())
        .await
        .expect("an anonymous connection with no stream was never closed");
    let after = started.elapsed();
    assert!(
        matches!(&why, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(ward_core::admission::CLOSE_DEADLINE)),
        "{why:?}"
    );
    assert!(after < Duration::from_secs(3), "closed after {after:?}");
    let why = tokio::time::timeout(Duration::from_secs(10), conns[1].closed())
        .await
        .expect("an anonymous connection that never logged in was never closed");
    assert!(
        matches!(&why, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(ward_core::admission::CLOSE_DEADLINE)
                && String::from_utf8_lossy(&c.reason).contains("anonymous_timeout")),
        "{why:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after {:?}",
        started.elapsed()
    );
    let _ = keep_opening.await;
}
