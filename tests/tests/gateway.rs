//! End-to-end tests of the gateway on 127.0.0.1: real QUIC and TLS-over-TCP, real TCP devices.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{SessionEnd, Transport};
use ward_core::frame::{LockTarget, Request, Response};
use ward_tests::*;

const RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
max_session = "2h"

[[rule]]
name = "icu-nurses-see-icu-monitors"
who = { kind = "clinician", roles = ["icu"] }
devices = { labels = { unit = "icu", class = "monitor" } }
"#;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A gateway with an echo pump (acme) and a counting monitor (icu).
async fn setup() -> (
    TestGateway,
    Arc<Pki>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    setup_with("").await
}

async fn setup_with(
    extra_gateway_toml: &str,
) -> (
    TestGateway,
    Arc<Pki>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (mon, mon_count) = counting_device().await;
    let devices = [
        DeviceSpec::new(
            "pump-12",
            echo.addr,
            "raw",
            &[("vendor", "acme"), ("unit", "icu")],
        ),
        DeviceSpec::new(
            "monitor-3",
            mon,
            "http",
            &[("unit", "icu"), ("class", "monitor")],
        ),
    ];
    let gw = start_gateway(pki.clone(), &devices, RULES, extra_gateway_toml, clock()).await;
    (gw, pki, mon_count)
}

/// Push `data` through a session and collect what comes back (echo device).
async fn echo_through(session: ward_client::Session, data: Vec<u8>) -> (Vec<u8>, SessionEnd) {
    let (local, mut remote) = tokio::io::duplex(256 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(&mut remote);
    let writer = async {
        rw.write_all(&data).await.unwrap();
        rw.shutdown().await.unwrap();
    };
    let reader = async {
        let mut out = Vec::new();
        rr.read_to_end(&mut out).await.unwrap();
        out
    };
    let ((), out) = tokio::join!(writer, reader);
    (out, run.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permitted_session_carries_large_payload_byte_exact_over_quic_and_tcp() {
    let (gw, pki, _) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    for transport in [Transport::Quic, Transport::Tcp] {
        let client = gw.client(&vendor, transport);
        let session = client.open("pump-12", false, None).await.unwrap();
        assert_eq!(session.rule, "acme-maintains-its-pumps");
        let data = payload(8 * 1024 * 1024 + 17, 7);
        let (out, end) = echo_through(session, data.clone()).await;
        assert_eq!(end, SessionEnd::Completed, "{transport:?}");
        assert_eq!(out.len(), data.len(), "{transport:?}");
        assert_eq!(sha256(&out), sha256(&data), "{transport:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_device_finishes_first_and_still_reads() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (dev, mut got) = banner_then_read_device(b"HELLO FROM DEVICE\r\n").await;
    let devices = [DeviceSpec::new(
        "pump-12",
        dev,
        "raw",
        &[("vendor", "acme")],
    )];
    let gw = start_gateway(pki.clone(), &devices, RULES, "", clock()).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    for transport in [Transport::Quic, Transport::Tcp] {
        let client = gw.client(&vendor, transport);
        let session = client.open("pump-12", false, None).await.unwrap();
        let (local, remote) = tokio::io::duplex(64 * 1024);
        let (lr, lw) = tokio::io::split(local);
        let run = tokio::spawn(session.run(lr, lw));
        let (mut rr, mut rw) = tokio::io::split(remote);
        // The device has finished sending: we see its banner and then EOF...
        let mut banner = Vec::new();
        rr.read_to_end(&mut banner).await.unwrap();
        assert_eq!(banner, b"HELLO FROM DEVICE\r\n");
        // ...and the other direction still works.
        let data = payload(300_000, 3);
        rw.write_all(&data).await.unwrap();
        rw.shutdown().await.unwrap();
        let received = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sha256(&received), sha256(&data), "{transport:?}");
        assert_eq!(run.await.unwrap(), SessionEnd::Completed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_session_gets_reason_and_device_sees_nothing() {
    let (gw, pki, monitor_connections) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let client = gw.client(&vendor, Transport::Quic);
    let err = client
        .open("monitor-3", false, None)
        .await
        .err()
        .expect("vendor must be denied the monitor");
    assert_eq!(
        err.to_string(),
        "denied: no rule lets vendor acme/jdoe reach monitor-3"
    );
    // Unknown devices read the same, so ids cannot be probed.
    let err = client.open("pump-99", false, None).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "denied: no rule lets vendor acme/jdoe reach pump-99"
    );
    // A different org is denied the pump.
    let other = pki.person(Kind::Vendor, "eve", Some("globex"), &[]);
    let err = gw
        .client(&other, Transport::Tcp)
        .open("pump-12", false, None)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("denied: no rule lets vendor globex/eve"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(monitor_connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_name_or_address_swaps_cannot_reach_unpermitted_device() {
    let (gw, pki, monitor_connections) = setup().await;
    let clinician = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let client = gw.client(&clinician, Transport::Quic);
    // The clinician may reach monitor-3; try every way of naming the pump instead.
    for name in [
        "pump-12",
        "PUMP-12",
        "pump-12 ",
        "monitor-3/../pump-12",
        "monitor-3\0pump-12",
        "127.0.0.1:1",
        "monitor-3:80",
    ] {
        let r = client.open(name, false, None).await;
        assert!(r.is_err(), "{name:?} must not open a session");
    }
    assert_eq!(monitor_connections.load(Ordering::SeqCst), 0);
    // And the permitted one works on the same connection.
    let s = client.open("monitor-3", false, None).await.unwrap();
    assert_eq!(s.rule, "icu-nurses-see-icu-monitors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_fails_at_handshake() {
    let (gw, _pki, monitor_connections) = setup().await;
    let rogue = Arc::new(Pki::new());
    let vendor = rogue.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    for transport in [Transport::Quic, Transport::Tcp] {
        // Trust the real gateway's root, present the rogue identity.
        let files = ward_client::IdentityFiles::resolve(&vendor, Some(&gw.pki.root())).unwrap();
        let addr = if transport == Transport::Tcp {
            gw.tcp()
        } else {
            gw.quic()
        };
        let client = ward_client::Client::new(&addr, &files, transport).unwrap();
        let r = client.request(&Request::ListDevices).await;
        assert!(
            r.is_err(),
            "{transport:?}: rogue identity must not be served"
        );
    }
    assert_eq!(monitor_connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    let (gw, pki, _) = setup().await;
    let two_hours_ago = now() - time::Duration::hours(2);
    let vendor = pki.person_at(
        Kind::Vendor,
        "jdoe",
        Some("acme"),
        &[],
        Some(time::Duration::hours(1)),
        two_hours_ago,
    );
    for transport in [Transport::Quic, Transport::Tcp] {
        let r = gw
            .client(&vendor, transport)
            .open("pump-12", false, None)
            .await;
        let err = r.err().expect("expired identity must be refused");
        assert!(
            err.to_string().to_lowercase().contains("expired"),
            "{transport:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_is_cut_at_certificate_expiry() {
    let (gw, pki, _) = setup().await;
    // Issued so that it expires 3 s from now.
    let at = now() - time::Duration::hours(1) + time::Duration::seconds(3);
    let vendor = pki.person_at(
        Kind::Vendor,
        "jdoe",
        Some("acme"),
        &[],
        Some(time::Duration::hours(1)),
        at,
    );
    let session = gw
        .client(&vendor, Transport::Quic)
        .open("pump-12", false, None)
        .await
        .unwrap();
    assert_eq!(session.end_reason, "certificate expiry");
    let (local, _remote) = tokio::io::duplex(1024);
    let (lr, lw) = tokio::io::split(local);
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), session.run(lr, lw))
        .await
        .unwrap();
    match end {
        SessionEnd::ClosedByGateway(reason) => {
            assert!(reason.contains("certificate expiry"), "{reason}")
        }
        other => panic!("expected the gateway to cut the session, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_ends_live_session_within_a_second_and_refuses_new_ones() {
    let (gw, pki, _) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let security = pki.person(Kind::Security, "sam", None, &["soc"]);
    let clinician = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let vclient = gw.client(&vendor, Transport::Quic);
    let session = vclient.open("pump-12", false, None).await.unwrap();
    let (local, _remote) = tokio::io::duplex(1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A clinician may not lock.
    let r = gw
        .client(&clinician, Transport::Quic)
        .request(&Request::Lock {
            target: LockTarget::Org("acme".into()),
            for_secs: None,
            reason: "x".into(),
            force: false,
        })
        .await
        .unwrap();
    assert!(matches!(r, Response::Error { .. }), "{r:?}");

    let sec = gw.client(&security, Transport::Tcp);
    let started = Instant::now();
    let r = sec
        .request(&Request::Lock {
            target: LockTarget::Org("acme".into()),
            for_secs: Some(3600),
            reason: "incident 42".into(),
            force: false,
        })
        .await
        .unwrap();
    assert!(
        matches!(&r, Response::Ok { message } if message.contains("1 live session")),
        "{r:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(1), run)
        .await
        .expect("session must end within a second")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    match end {
        SessionEnd::ClosedByGateway(reason) => assert!(reason.contains("incident 42"), "{reason}"),
        other => panic!("expected a close with the lock reason, got {other:?}"),
    }
    let err = vclient.open("pump-12", false, None).await.err().unwrap();
    assert!(err.to_string().contains("incident 42"), "{err}");
    let r = sec.request(&Request::ListLocks).await.unwrap();
    assert!(
        matches!(&r, Response::Locks { locks } if locks.len() == 1),
        "{r:?}"
    );
    let r = sec
        .request(&Request::Unlock {
            target: LockTarget::Org("acme".into()),
        })
        .await
        .unwrap();
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    vclient.open("pump-12", false, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_survive_a_gateway_restart() {
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
    // Same state dir across both runs.
    let extra = "";
    let mut gw = start_gateway(pki.clone(), &devices, RULES, extra, clock()).await;
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let r = gw
        .client(&security, Transport::Quic)
        .request(&Request::Lock {
            target: LockTarget::Device("pump-12".into()),
            for_secs: None,
            reason: "recall".into(),
            force: false,
        })
        .await
        .unwrap();
    assert!(matches!(r, Response::Ok { .. }));
    gw.shutdown(Duration::from_millis(100)).await;
    let config = ward_server::gateway::load_config(&gw.config).unwrap();
    let gw2 = TestGateway {
        gw: Some(
            ward_server::gateway::Gateway::start(config, clock())
                .await
                .unwrap(),
        ),
        pki: pki.clone(),
        config: gw.config.clone(),
    };
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let err = gw2
        .client(&vendor, Transport::Quic)
        .open("pump-12", false, None)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("recall"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_and_stalling_devices_give_clear_errors() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let refusing = refusing_address().await;
    let (stalling, _fillers, _listener) = stalling_address();
    let devices = [
        DeviceSpec::new("pump-off", refusing, "raw", &[("vendor", "acme")]),
        DeviceSpec::new("pump-stuck", stalling, "raw", &[("vendor", "acme")]),
    ];
    let gw = start_gateway(
        pki.clone(),
        &devices,
        RULES,
        "device_connect_timeout = \"1s\"",
        clock(),
    )
    .await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let client = gw.client(&vendor, Transport::Quic);
    let err = client.open("pump-off", false, None).await.err().unwrap();
    assert!(err.to_string().contains("refused the connection"), "{err}");
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        client.open("pump-stuck", false, None),
    )
    .await
    .unwrap()
    .err()
    .unwrap();
    assert!(err.to_string().contains("did not answer within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_transport_falls_back_to_tcp_when_udp_is_blocked() {
    let (gw, pki, _) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    // Point `auto` at the TCP port: nothing answers QUIC there, as on a network that drops UDP.
    let files = ward_client::IdentityFiles::resolve(&vendor, Some(&pki.root())).unwrap();
    let client = ward_client::Client::new(&gw.tcp(), &files, Transport::Auto).unwrap();
    let started = Instant::now();
    let session = client.open("pump-12", false, None).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let data = payload(100_000, 9);
    let (out, end) = echo_through(session, data.clone()).await;
    assert_eq!(end, SessionEnd::Completed);
    assert_eq!(out, data);
}

async fn many_sessions(
    gw: &TestGateway,
    vendor: &std::path::Path,
    transport: Transport,
    shared_connection: bool,
    n: usize,
) {
    let shared = Arc::new(gw.client(vendor, transport));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = if shared_connection {
            shared.clone()
        } else {
            Arc::new(gw.client(vendor, transport))
        };
        tasks.spawn(async move {
            let session = client.open("pump-12", false, None).await.unwrap();
            let data = payload(64 * 1024 + i, i as u64);
            let (out, end) = echo_through(session, data.clone()).await;
            assert_eq!(end, SessionEnd::Completed);
            assert_eq!(sha256(&out), sha256(&data));
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions_over_one_and_many_connections() {
    // All test clients share 127.0.0.1, so lift the per-source limit (default 64) for this test.
    let (gw, pki, _) = setup_with("max_connections_per_source = 512").await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    many_sessions(&gw, &vendor, Transport::Quic, true, 200).await;
    many_sessions(&gw, &vendor, Transport::Quic, false, 200).await;
    many_sessions(&gw, &vendor, Transport::Tcp, false, 200).await;
    // A session leaves the registry last, once its recording is sealed and its close audited:
    // none may stay behind, however long the fsyncs take on a busy machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gw.live_sessions() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.live_sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_and_oversized_requests_get_errors_not_panics() {
    let (gw, pki, _) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let client = gw.client(&vendor, Transport::Quic);
    let cases: Vec<Vec<u8>> = vec![
        vec![0x01, 0, 0, 0, 5, b'{', b'x', b'"', 0xff, b'}'],
        vec![0x01, 0xff, 0xff, 0xff, 0xff],
        vec![0x7e, 0, 0, 0, 2, b'{', b'}'],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        {
            let mut v = vec![0x01, 0, 0, 0x40, 0x01];
            v.extend(std::iter::repeat_n(b'a', 16 * 1024 + 1));
            v
        },
    ];
    for bytes in cases {
        let (mut r, mut w) = client.stream().await.unwrap();
        w.write_all(&bytes).await.unwrap();
        let _ = w.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut answer))
            .await
            .unwrap();
        let decoded = ward_core::frame::decode_response(&answer);
        assert!(
            matches!(decoded, Ok(Some((Response::Error { .. }, _)))),
            "{:?} → {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(20)]),
            decoded
        );
    }
    // The gateway still serves.
    client.open("pump-12", false, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_live_sessions_with_a_reason() {
    let (mut gw, pki, _) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let session = gw
        .client(&vendor, Transport::Tcp)
        .open("pump-12", false, None)
        .await
        .unwrap();
    let (local, _remote) = tokio::io::duplex(1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    gw.shutdown(Duration::from_millis(300)).await;
    let end = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        end,
        SessionEnd::ClosedByGateway("gateway shutting down".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_lists_what_the_gateway_permits() {
    let (gw, pki, _) = setup().await;
    let clinician = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let r = gw
        .client(&clinician, Transport::Quic)
        .request(&Request::ListDevices)
        .await
        .unwrap();
    match r {
        Response::Devices { devices } => {
            let ids: Vec<_> = devices.iter().map(|d| d.id.as_str()).collect();
            assert_eq!(ids, ["monitor-3"]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_is_cut() {
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
    let gw = start_gateway(
        pki.clone(),
        &devices,
        RULES,
        "idle_timeout = \"1s\"",
        clock(),
    )
    .await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let session = gw
        .client(&vendor, Transport::Quic)
        .open("pump-12", false, None)
        .await
        .unwrap();
    let (local, _remote) = tokio::io::duplex(1024);
    let (lr, lw) = tokio::io::split(local);
    let end = tokio::time::timeout(Duration::from_secs(10), session.run(lr, lw))
        .await
        .unwrap();
    assert!(
        matches!(&end, SessionEnd::ClosedByGateway(r) if r.contains("idle")),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_connection_limit_refuses_extra_connections() {
    let (gw, pki, _) = setup_with("max_connections_per_source = 2").await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let a = gw.client(&vendor, Transport::Quic);
    let b = gw.client(&vendor, Transport::Quic);
    let c = gw.client(&vendor, Transport::Quic);
    a.request(&Request::ListDevices).await.unwrap();
    b.request(&Request::ListDevices).await.unwrap();
    let err = c
        .request(&Request::ListDevices)
        .await
        .expect_err("third connection from one source must be refused");
    assert!(
        err.to_string()
            .contains("gateway busy: too many connections from your address"),
        "{err}"
    );
    drop(a);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_refused_where_the_device_does_not_allow_it() {
    let (gw, pki, _) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let err = gw
        .client(&vendor, Transport::Quic)
        .open("pump-12", true, Some("emergency".into()))
        .await
        .err()
        .expect("break-glass must not open an ordinary session");
    assert!(
        err.to_string()
            .contains("break-glass access to pump-12 is not allowed for vendor acme/jdoe"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_audit_log_and_user_store_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (gw, _pki, _) = setup().await;
    let state = gw.state_dir();
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(state.clone()), 0o700, "state dir");
    assert_eq!(mode(state.join("audit.log")), 0o600, "audit.log");
    assert_eq!(
        mode(state.join("ward.db")),
        0o600,
        "ward.db (password hashes, TOTP secrets)"
    );
    assert_eq!(mode(state.join("audit.key")), 0o600, "audit.key");
}

/// Security case 8: 0-RTT is off. A client that resumed a session and wants to send early data
/// gets no 0-RTT keys (the gateway's tickets allow no early data), so replayable early data can
/// never carry an `Open`; the full handshake still works and the device sees nothing until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_is_refused_so_early_data_can_never_open_a_session() {
    let (gw, pki, count) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let files = ward_client::IdentityFiles::resolve(&vendor, Some(&pki.root())).unwrap();
    let root = ward_transport::tls::load_certs(&files.root)
        .unwrap()
        .remove(0);
    let mut tls = ward_transport::tls::client_config(
        root,
        ward_transport::tls::load_certs(&files.cert).unwrap(),
        ward_transport::tls::load_key(&files.key).unwrap(),
    )
    .unwrap();
    // The client asks for early data; rustls keeps tickets in its default resumption store.
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let addr: std::net::SocketAddr = gw.quic().parse().unwrap();

    // First connection: full handshake, one request, so the gateway's tickets have arrived.
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&ward_core::encode_request(&Request::ListDevices).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    assert!(!answer.is_empty());
    conn.close(0u32.into(), b"done");

    // Second connection: 0-RTT must be impossible.
    let connecting = endpoint.connect(addr, "localhost").unwrap();
    let connecting = match connecting.into_0rtt() {
        Ok(_) => panic!("the gateway accepted a 0-RTT connection: early data could be replayed"),
        Err(connecting) => connecting,
    };
    let conn = connecting.await.expect("the full handshake still works");
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "the device saw a connection"
    );
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
}

/// Security case 21: a denied attempt's audit event carries UTC time, type, outcome, the
/// principal's name, kind, org and certificate serial, the source address, the device and the
/// reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_attempt_is_audited_with_every_field_including_the_serial() {
    let (gw, pki, _) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let pem = std::fs::read_to_string(vendor.with_extension("crt")).unwrap();
    let serial = ward_ca::inspect(&pem, None, now()).unwrap().serial;
    let client = gw.client(&vendor, Transport::Quic);
    client.open("monitor-3", false, None).await.err().unwrap();
    let log = gw.state_dir().join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    let event = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "session_deny" && e["device"] == "monitor-3");
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no session_deny in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["outcome"], "denied");
    assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
    assert_eq!(event["principal"]["name"], "jdoe");
    assert_eq!(event["principal"]["kind"], "vendor");
    assert_eq!(event["principal"]["org"], "acme");
    assert_eq!(event["principal"]["serial"], serial.as_str(), "{event}");
    assert!(
        event["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{event}"
    );
    assert_eq!(
        event["reason"],
        "no rule lets vendor acme/jdoe reach monitor-3"
    );
}

/// Only TLS 1.3: a real `openssl s_client` with a valid client certificate but limited to TLS 1.2
/// fails the handshake on the TLS-over-TCP listener; the same client with TLS 1.3 succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_refused_by_a_real_openssl_client() {
    if !require_peer("openssl") {
        return;
    }
    let (gw, pki, count) = setup().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let (crt, key) = (vendor.with_extension("crt"), vendor.with_extension("key"));
    let tcp = gw.tcp();
    let s_client = |version: &'static str| {
        let (tcp, crt, key, root) = (tcp.clone(), crt.clone(), key.clone(), pki.root());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args(["s_client", "-connect", &tcp, version, "-alpn", "ward/1"])
                .arg("-cert")
                .arg(&crt)
                .arg("-key")
                .arg(&key)
                .arg("-CAfile")
                .arg(&root)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
    };
    let old = s_client("-tls1_2").await.unwrap();
    let text =
        String::from_utf8_lossy(&old.stdout).to_string() + &String::from_utf8_lossy(&old.stderr);
    assert!(
        !old.status.success(),
        "TLS 1.2 handshake succeeded:\n{text}"
    );
    assert!(
        text.contains("alert protocol version")
            || text.contains("no protocols available")
            || text.contains("wrong version"),
        "{text}"
    );
    let new = s_client("-tls1_3").await.unwrap();
    let text = String::from_utf8_lossy(&new.stdout).to_string();
    assert!(
        text.contains("TLSv1.3"),
        "TLS 1.3 handshake failed:\n{text}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

/// Maintenance windows: a vendor outside the device's window is refused with the next window
/// named, and the device sees no connection; a clinician with a rule is not bound by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_outside_the_maintenance_window_is_refused_with_the_next_window_named() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let (pump, pump_count) = counting_device().await;
    // A window three days from now cannot be open now.
    let day = (now() + time::Duration::days(3)).weekday().to_string();
    let day = &day[..3];
    let rules = format!(
        r#"
[[device]]
id = "pump-77"
address = "{pump}"
protocol = "telnet"
labels = {{ vendor = "acme" }}
maintenance = ["{day} 02:00-04:00"]

[[rule]]
name = "acme-maintains-its-pumps"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ labels = {{ vendor = "acme" }} }}

[[rule]]
name = "biomed-anytime"
who = {{ kind = "clinician", roles = ["biomed"] }}
devices = {{ all = true }}
"#
    );
    let gw = start_gateway(pki.clone(), &[], &rules, "", clock()).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let err = gw
        .client(&vendor, Transport::Quic)
        .open("pump-77", false, None)
        .await
        .err()
        .expect("a vendor outside the maintenance window must be refused");
    let text = err.to_string();
    assert!(
        text.contains("takes vendor sessions only in its maintenance windows")
            && text.contains(&format!("next window opens {day} 02:00")),
        "{text}"
    );
    assert_eq!(
        pump_count.load(Ordering::SeqCst),
        0,
        "the device saw a connection"
    );
    // The listing agrees: the vendor has nothing to open now.
    let Response::Devices { devices } = gw
        .client(&vendor, Transport::Tcp)
        .request(&Request::ListDevices)
        .await
        .unwrap()
    else {
        panic!("expected a device list");
    };
    assert!(devices.is_empty(), "{devices:?}");
    // Maintenance windows bind vendors only.
    let biomed = pki.person(Kind::Clinician, "bob", None, &["biomed"]);
    let session = gw
        .client(&biomed, Transport::Quic)
        .open("pump-77", false, None)
        .await
        .expect("clinicians are not bound by maintenance windows");
    drop(session);
}
