//! Issue 19 item 5: clients that fail over. `--gateway` takes several addresses; `ward connect`
//! tries them in order with the QUIC→TCP fallback per address, skips a dead or silent one within
//! a bounded time, lands a new session on a live gateway when one dies (kill -9 or a clean stop),
//! lists every address tried when none answers, and never takes a denial to another gateway.
//! Real `ward gateway` processes (SQLite each) and the real `ward connect` binary on loopback.
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
use ward_ca::{Kind, SystemClock};
use ward_client::client_error::ClientError;
use ward_client::{Client, IdentityFiles, Transport};
use ward_core::frame::{Request, Response};
use ward_tests::process::{run_with, ward, Finished, Input, COMMAND_TIMEOUT};
use ward_tests::*;

const RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

/// Three things a test needs: the CA, the echo device behind every gateway, a vendor identity.
struct Fleet {
    pki: Arc<Pki>,
    devices: Vec<DeviceSpec>,
    vendor: PathBuf,
}

impl Fleet {
    async fn new() -> Fleet {
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
        Fleet {
            pki,
            devices,
            vendor,
        }
    }

    /// A `ward gateway` process with its own SQLite state, allowing acme's vendor (or, with
    /// `rules` empty, nobody).
    async fn gateway(&self, rules: &str) -> ChildGateway {
        let (pki, devices, rules) = (self.pki.clone(), self.devices.clone(), rules.to_owned());
        tokio::task::spawn_blocking(move || ChildGateway::start(pki, &devices, &rules, "", None))
            .await
            .unwrap()
    }

    /// `ward connect pump-12 --gateway ...` on stdio: `input` up, the echo back.
    async fn connect(&self, gateway_args: &[&str], input: &[u8]) -> Finished {
        let mut args = vec!["connect", "pump-12"];
        for g in gateway_args {
            args.extend(["--gateway", g]);
        }
        let vendor = self.vendor.display().to_string();
        let root = self.pki.root().display().to_string();
        args.extend(["--identity", &vendor, "--ca", &root]);
        let mut cmd = ward(&args);
        let input = input.to_vec();
        tokio::task::spawn_blocking(move || {
            run_with(&mut cmd, Input::Bytes(input), COMMAND_TIMEOUT)
        })
        .await
        .unwrap()
    }

    fn files(&self) -> IdentityFiles {
        IdentityFiles::resolve(&self.vendor, Some(&self.pki.root())).unwrap()
    }
}

/// The session id `ward connect` printed (`ward: session ID to DEVICE opened ...`).
fn session_id(out: &Finished) -> String {
    out.stderr
        .split("ward: session ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no session line in {out:?}"))
        .to_owned()
}

/// Successful `session_open` events in a gateway's audit log.
fn opened(state_dir: &Path) -> Vec<String> {
    audit_events(state_dir)
        .into_iter()
        .filter(|e| e["event"] == "session_open" && e["outcome"] == "success")
        .map(|e| e.to_string())
        .collect()
}

/// Every session event (opened, refused, denied) in a gateway's audit log.
fn session_events(state_dir: &Path) -> usize {
    audit_events(state_dir)
        .into_iter()
        .filter(|e| {
            e["event"]
                .as_str()
                .is_some_and(|n| n.starts_with("session_"))
        })
        .count()
}

/// Wait (bounded) until `state_dir`'s audit log shows the session `id` opened there.
async fn opened_on(state_dir: &Path, id: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        opened(state_dir).iter().any(|e| e.contains(id))
    })
    .await
}

fn kill9(gw: &mut ChildGateway) {
    gw.proc.child.kill().unwrap();
    gw.proc.child.wait().unwrap();
}

/// Security case 63 (the client's part): gateways die one after the other, by kill -9 and by a
/// clean stop, and each new `ward connect` given all of them lands on a live one, byte-exact,
/// recorded by the gateway it says it went through; with none left, the error names every
/// address and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ward_connect_lands_on_a_live_gateway_as_gateways_die() {
    let fleet = Fleet::new().await;
    let mut gw1 = fleet.gateway(RULES).await;
    let mut gw2 = fleet.gateway(RULES).await;
    let mut gw3 = fleet.gateway(RULES).await;
    // Comma-separated and repeated, mixed.
    let (list, third) = (format!("{},{}", gw1.addr, gw2.addr), gw3.addr.clone());
    let args = [list.as_str(), third.as_str()];
    let data = payload(64 * 1024, 19);

    // All up: the first in the list.
    let out = fleet.connect(&args, &data).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.raw_stdout == data, "echo differs: {out:?}");
    assert!(out.stderr.contains(&format!("via {}", gw1.addr)), "{out:?}");
    assert!(opened_on(&gw1.state_dir, &session_id(&out)).await);

    // gw1 killed: no close, no answer on its port; the next connect lands on gw2.
    kill9(&mut gw1);
    let started = Instant::now();
    let out = fleet.connect(&args, &data).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.raw_stdout == data, "echo differs: {out:?}");
    assert!(out.stderr.contains(&format!("via {}", gw2.addr)), "{out:?}");
    let id = session_id(&out);
    assert!(opened_on(&gw2.state_dir, &id).await, "{id} not on gw2");
    assert!(!opened(&gw3.state_dir).iter().any(|e| e.contains(&id)));
    eprintln!("figure: connect with the first of three gateways killed: {took:?}");

    // gw2 stopped cleanly (SIGTERM): the next connect lands on gw3.
    gw2.sigterm();
    assert!(
        eventually(Duration::from_secs(20), || gw2
            .proc
            .child
            .try_wait()
            .unwrap()
            .is_some())
        .await,
        "gw2 did not stop on SIGTERM"
    );
    let out = fleet.connect(&args, &data).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.raw_stdout == data, "echo differs: {out:?}");
    assert!(out.stderr.contains(&format!("via {}", gw3.addr)), "{out:?}");
    assert!(opened_on(&gw3.state_dir, &session_id(&out)).await);

    // None left: one error naming every address, in order, each with QUIC's and TCP's reason.
    kill9(&mut gw3);
    let out = fleet.connect(&args, &data).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr.contains("no gateway could be reached; tried"),
        "{out:?}"
    );
    let mut at = 0;
    for gw in [&gw1, &gw2, &gw3] {
        let mention = format!("{} (QUIC: no answer within 1s; then TCP: ", gw.addr);
        let found = out.stderr[at..]
            .find(&mention)
            .unwrap_or_else(|| panic!("{mention:?} not after byte {at} in {out:?}"));
        at += found + mention.len();
    }
}

/// A denial is a decision: it is shown, never taken to the next gateway. gw1 has no rule for
/// the vendor, gw2 would allow: `ward connect` given both is denied by gw1, and gw2 never sees
/// the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_not_taken_to_the_next_gateway() {
    let fleet = Fleet::new().await;
    let deny = fleet.gateway("").await;
    let allow = fleet.gateway(RULES).await;
    let list = format!("{},{}", deny.addr, allow.addr);
    let out = fleet.connect(&[&list], b"hello\n").await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("denied"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // The denial is on gw1's record; gw2 saw nothing.
    assert!(
        eventually(Duration::from_secs(10), || audit_events(&deny.state_dir)
            .iter()
            .any(|e| e["event"] == "session_deny"))
        .await,
        "no session_deny on the denying gateway"
    );
    assert_eq!(session_events(&allow.state_dir), 0);
    // The control: the same command with the allowing gateway first opens.
    let list = format!("{},{}", allow.addr, deny.addr);
    let out = fleet.connect(&[&list], b"hello\n").await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, "hello\n", "{out:?}");
    // ... and is on the allowing gateway's record, so "saw nothing" above was read the same way.
    assert!(opened_on(&allow.state_dir, &session_id(&out)).await);
}

/// `ward connect --listen` semantics, in process: a forwarder given two gateways opens its
/// sessions on the first; after a kill -9 of it (its QUIC connection goes silent, nothing closes
/// it), the next local connection still gets a session, on the second, once the connection is
/// found dead (the failover idle timeout) — no restart of the forwarder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_moves_new_sessions_to_a_live_gateway_after_a_kill() {
    let fleet = Fleet::new().await;
    let mut gw1 = fleet.gateway(RULES).await;
    let gw2 = fleet.gateway(RULES).await;
    let client = Client::new(
        &format!("{},{}", gw1.addr, gw2.addr),
        &fleet.files(),
        Transport::Auto,
    )
    .unwrap();
    let local = forwarder(client, "pump-12").await;

    async fn echo_through(local: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
        let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
        s.write_all(data).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        back
    }

    let data = payload(10_000, 5);
    let back = tokio::time::timeout(COMMAND_TIMEOUT, echo_through(local, &data))
        .await
        .expect("first session through the forwarder");
    assert!(back == data, "first session's echo differs");
    assert!(
        eventually(Duration::from_secs(10), || opened(&gw1.state_dir).len()
            == 1)
        .await
    );
    assert!(opened(&gw2.state_dir).is_empty());

    kill9(&mut gw1);
    let started = Instant::now();
    // Bounded: the silent connection is given up after the failover idle timeout (15 s), then
    // gw1 is tried afresh (QUIC 1 s, TCP refused) and gw2 opens the session.
    let back = tokio::time::timeout(Duration::from_secs(45), echo_through(local, &data))
        .await
        .expect("no session through the forwarder after gw1 was killed");
    eprintln!(
        "figure: forwarder's next session after a kill -9: {:?}",
        started.elapsed()
    );
    assert!(back == data, "second session's echo differs");
    assert!(
        eventually(Duration::from_secs(10), || opened(&gw2.state_dir).len()
            == 1)
        .await
    );
    // And the one after goes straight to gw2 (it answered last).
    let back = tokio::time::timeout(COMMAND_TIMEOUT, echo_through(local, &data))
        .await
        .expect("third session");
    assert!(back == data);
    assert!(
        eventually(Duration::from_secs(10), || opened(&gw2.state_dir).len()
            == 2)
        .await
    );
}

/// A silent address (it accepts TCP but never speaks TLS; it swallows UDP) is skipped after the
/// bounded connect, over TCP and over QUIC, and the request is answered by the next gateway. The
/// single-address client keeps its old behaviour: its own typed error, not a list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_address_is_skipped_after_the_connect_timeout() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let gw = start_gateway(pki.clone(), &[], RULES, "", Arc::new(SystemClock)).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let files = IdentityFiles::resolve(&vendor, Some(&pki.root())).unwrap();

    // TCP: a listener that accepts and holds every connection without a byte.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_tcp = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(ward::sim::accept_next(&silent).await);
        }
    });
    // UDP: a bound socket nobody reads.
    let swallow = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_udp = swallow.local_addr().unwrap();

    for (transport, silent, live) in [
        (Transport::Tcp, silent_tcp, gw.tcp()),
        (Transport::Quic, silent_udp, gw.quic()),
    ] {
        let client = Client::new(&format!("{silent},{live}"), &files, transport).unwrap();
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, client.request(&Request::ListDevices))
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: no answer within {COMMAND_TIMEOUT:?}"))
            .unwrap();
        assert!(matches!(answer, Response::Devices { .. }), "{answer:?}");
        assert_eq!(client.gateway_in_use(), Some(live.clone()));
    }
    drop(swallow);

    // One address alone keeps the single-address error, typed as before (not a list).
    let dead = refusing_address().await;
    let alone = Client::new(&dead.to_string(), &files, Transport::Tcp).unwrap();
    let err = alone.request(&Request::ListDevices).await.unwrap_err();
    match err.downcast_ref::<ClientError>() {
        Some(ClientError::Unreachable {
            transport: "TCP", ..
        }) => {}
        other => panic!("{other:?}: {err:#}"),
    }

    // A silent and a dead address: the error lists both, with each transport's reason.
    let client = Client::new(&format!("{silent_tcp},{dead}"), &files, Transport::Tcp).unwrap();
    let err = tokio::time::timeout(COMMAND_TIMEOUT, client.request(&Request::ListDevices))
        .await
        .unwrap()
        .unwrap_err();
    match err.downcast_ref::<ClientError>() {
        Some(ClientError::NoGateway { tried }) => {
            assert_eq!(tried.len(), 2, "{tried:?}");
            assert_eq!(tried[0].gateway, silent_tcp.to_string());
            assert_eq!(tried[0].why, vec!["TCP: no answer within 5s".to_string()]);
            assert_eq!(tried[1].gateway, dead.to_string());
            assert!(tried[1].why[0].starts_with("TCP: "), "{tried:?}");
        }
        other => panic!("{other:?}: {err:#}"),
    }
}
