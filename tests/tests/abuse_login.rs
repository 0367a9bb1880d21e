//! Abuse resistance of login (issue 12, items 2 and 3): one login per anonymous connection,
//! password hashing behind a bounded gate, a back-off that parallel guesses cannot race, that one
//! address cannot turn against a user elsewhere or against its other users, that a second factor
//! gets through, a reused code named as such, and MFA for every kind that may break glass.
//!
//! Logins go over raw anonymous QUIC connections bound to chosen 127.x sources, so each test picks
//! where an attempt comes from.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ward_ca::{Clock, SystemClock};
use ward_client::Transport;
use ward_core::frame::{Login, Request, Response};
use ward_core::totp::{self, TotpSecret};
use ward_core::PrincipalKind;
use ward_tests::{echo_device, start_gateway, DeviceSpec, Pki, TestGateway, ACME_RULES};
use ward_transport::datapath::{FrameReader, FrameWriter, Inbound};

/// A wrong password that passes no check but the password's.
const WRONG: &str = "Not-the-password-7";

fn src(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An anonymous (no client certificate) QUIC connection from `source` to the gateway.
async fn anon_quic(
    gateway: SocketAddr,
    source: IpAddr,
    root: &Path,
) -> (quinn::Endpoint, quinn::Connection) {
    let root = ward_transport::tls::load_certs(root)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let tls = ward_transport::tls::anonymous_client_config(root).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(Arc::new(
        ward_server::gateway::transport_config(64, Duration::from_secs(30)).unwrap(),
    ));
    let mut ep = quinn::Endpoint::client(SocketAddr::new(source, 0)).unwrap();
    ep.set_default_client_config(cc);
    let conn = tokio::time::timeout(
        Duration::from_secs(20),
        ep.connect(gateway, "localhost").unwrap(),
    )
    .await
    .expect("QUIC handshake hung")
    .unwrap();
    (ep, conn)
}

fn login(user: &str, password: &str, code: Option<String>) -> Login {
    let (_key, csr_pem) = ward_client::key_and_csr(user).unwrap();
    Login {
        user: user.into(),
        password: password.into(),
        totp: code,
        csr_pem,
        grant: None,
        new_password: None,
    }
}

/// One Login on a new stream of `conn`; the gateway's answer.
async fn login_on(conn: &quinn::Connection, req: Login) -> Response {
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut w = FrameWriter::new(send);
    w.write_request(&Request::Login(req)).await.unwrap();
    let mut r = FrameReader::new(recv);
    let answer = tokio::time::timeout(Duration::from_secs(60), r.next())
        .await
        .expect("no answer to a login within 60 s");
    match answer {
        Ok(Some(Inbound::Control(bytes))) => {
            ward_core::frame::decode_response(&bytes)
                .unwrap()
                .unwrap()
                .0
        }
        other => panic!("not an answer: {other:?}"),
    }
}

/// One login from `source` on a connection of its own.
async fn login_from(tg: &TestGateway, source: IpAddr, req: Login) -> Response {
    let (_ep, conn) = anon_quic(addr(&tg.quic()), source, &tg.pki.root()).await;
    let r = login_on(&conn, req).await;
    conn.close(0u32.into(), b"done");
    r
}

fn text(r: &Response) -> String {
    match r {
        Response::Denied { reason } => reason.clone(),
        Response::Error { code, message } => format!("{code:?}: {message}"),
        Response::Issued { .. } => "issued".into(),
        other => format!("{other:?}"),
    }
}

/// A gateway with one device and a vendor `tech` (password + TOTP); returns the password and the
/// TOTP secret.
async fn gateway_with_tech() -> (TestGateway, String, TotpSecret) {
    use ward_store::users::UserStore;
    let pki = Arc::new(Pki::new());
    let device = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        device,
        "telnet",
        &[("vendor", "acme")],
    )];
    let tg = start_gateway(pki, &devices, ACME_RULES, "", Arc::new(SystemClock)).await;
    let db = ward_tests::open_store(tg.state_dir().as_ref());
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
    let secret = db.user("tech").unwrap().unwrap().totp_secret.unwrap();
    (
        tg,
        created.password,
        TotpSecret::from_base32(&secret).unwrap(),
    )
}

fn code_now(secret: &TotpSecret) -> String {
    totp::code_at(secret, SystemClock.now().unix_timestamp())
}

async fn audit_after(mut tg: TestGateway) -> Vec<serde_json::Value> {
    let state = tg.state_dir();
    tg.shutdown(Duration::from_millis(50)).await;
    ward_tests::audit_events(&state)
}

// ---- Item 2: one login per anonymous connection, hashing behind a bounded gate ----------------

/// Eight Logins on eight streams of one anonymous QUIC connection: one is answered, the other
/// seven are refused without a password check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_quic_connection_gets_one_login() {
    ward_tests::init_logs();
    let (tg, _password, _secret) = gateway_with_tech().await;
    let (_ep, conn) = anon_quic(addr(&tg.quic()), src(1), &tg.pki.root()).await;
    let answers = futures_join(
        (0..8)
            .map(|i| {
                let conn = conn.clone();
                async move { login_on(&conn, login(&format!("nobody{i}"), WRONG, None)).await }
            })
            .collect(),
    )
    .await;
    let texts: Vec<String> = answers.iter().map(text).collect();
    let refused = texts
        .iter()
        .filter(|t| t.contains("one login per connection"))
        .count();
    let checked = texts.iter().filter(|t| t.contains("login failed")).count();
    assert_eq!((checked, refused), (1, 7), "{texts:#?}");
    let events = audit_after(tg).await;
    let verified = events
        .iter()
        .filter(|e| e["event"] == "login" && e["reason"] == "unknown user")
        .count();
    assert_eq!(verified, 1, "passwords checked on one connection");
}

/// Run futures concurrently on the runtime; results in order.
async fn futures_join<T: Send + 'static>(
    futs: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Many logins at once (at least 96, and 40 more than the gate admits on this machine), each from
/// its own source with a fresh user name so no back-off applies (an unknown user costs the same
/// argon2id as a known one), against the real `ward` binary: argon2id needs 19 MiB each, so
/// unbounded they take ~1.8 GB. Behind the gate (one worker per core) the peak resident memory
/// grows by at most about the workers' share, every login is answered, and those beyond the
/// gate's queue hear "gateway busy".
#[test]
fn parallel_logins_are_bounded_in_memory() {
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "pump-12",
        "127.0.0.1:9".parse().unwrap(),
        "telnet",
        &[("vendor", "acme")],
    )];
    let gw = ward_tests::ChildGateway::start(pki.clone(), &devices, ACME_RULES, "", None);
    let pid = gw.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gateway = addr(&gw.addr);
    let root = pki.root();
    // Warm up (one login) so the baseline includes the first argon2 arena.
    rt.block_on(async {
        let (_ep, conn) = anon_quic(gateway, src(2), &root).await;
        login_on(&conn, login("warmup", WRONG, None)).await;
    });
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // The gate admits 5 × cores (one running and four waiting per core).
    let n = 96.max(5 * cores + 40);
    let before = ward_tests::proc_status(pid, "VmHWM");
    let answers: Vec<Response> = rt.block_on(async {
        let mut conns = Vec::new();
        for i in 0..n {
            let source = IpAddr::V4(Ipv4Addr::new(127, 1, (i / 200) as u8, 10 + (i % 200) as u8));
            conns.push(anon_quic(gateway, source, &root).await);
        }
        futures_join(
            conns
                .into_iter()
                .enumerate()
                .map(|(i, (ep, conn))| async move {
                    let r = login_on(&conn, login(&format!("user{i}"), WRONG, None)).await;
                    drop(ep);
                    r
                })
                .collect(),
        )
        .await
    });
    let after = ward_tests::proc_status(pid, "VmHWM");
    let growth_mib = after.saturating_sub(before) / 1024;
    let texts: Vec<String> = answers.iter().map(text).collect();
    let busy = texts.iter().filter(|t| t.contains("gateway busy")).count();
    let failed = texts.iter().filter(|t| t.contains("login failed")).count();
    eprintln!(
        "{n} parallel logins ({cores} cores): peak RSS {before} kB → {after} kB \
         (+{growth_mib} MiB); {failed} checked, {busy} busy"
    );
    assert_eq!(busy + failed, n, "{texts:#?}");
    assert!(busy > 0, "no login was turned away: {texts:#?}");
    // 19 MiB per running argon2id, with room for allocator slack, TLS and QUIC state; unbounded,
    // n logins would take n × 19 MiB.
    let bound = 2 * 19 * cores as u64 + 150;
    assert!(
        growth_mib < bound,
        "{n} parallel logins grew the gateway's peak memory by {growth_mib} MiB (bound {bound})"
    );
}

// ---- Item 3: the back-off ----------------------------------------------------------------------

/// 40 wrong passwords for one user from one address, all at once: no more are checked than one
/// at a time would be (two free, a third, then back-off); the rest are refused unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_cannot_race_the_backoff() {
    let (tg, _password, _secret) = gateway_with_tech().await;
    let gateway = addr(&tg.quic());
    let root = tg.pki.root();
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(anon_quic(gateway, src(3), &root).await);
    }
    let answers = futures_join(
        conns
            .into_iter()
            .map(|(ep, conn)| async move {
                let r = login_on(&conn, login("tech", WRONG, None)).await;
                drop(ep);
                r
            })
            .collect(),
    )
    .await;
    let texts: Vec<String> = answers.iter().map(text).collect();
    let events = audit_after(tg).await;
    let verified = events
        .iter()
        .filter(|e| e["event"] == "login" && e["reason"] == "wrong password")
        .count();
    assert!(
        (1..=3).contains(&verified),
        "{verified} of 40 parallel guesses were checked: {texts:#?}"
    );
    assert!(
        texts.iter().all(|t| t.contains("login failed")
            || t.contains("too many failed logins")
            || t.contains("gateway busy")),
        "{texts:#?}"
    );
}

/// Wrong passwords for `tech` from one address do not keep `tech` out from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_one_address_do_not_lock_the_user_out_elsewhere() {
    let (tg, password, secret) = gateway_with_tech().await;
    for _ in 0..5 {
        let r = login_from(&tg, src(4), login("tech", WRONG, Some(code_now(&secret)))).await;
        assert!(!matches!(r, Response::Issued { .. }));
    }
    // The guessing address itself is held off.
    let r = login_from(&tg, src(4), login("tech", WRONG, None)).await;
    assert!(text(&r).contains("too many failed logins"), "{}", text(&r));
    let r = login_from(
        &tg,
        src(5),
        login("tech", &password, Some(code_now(&secret))),
    )
    .await;
    assert!(
        matches!(r, Response::Issued { .. }),
        "tech from another address: {}",
        text(&r)
    );
}

/// One address (a hospital NAT) failing for several users does not keep its other users out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_behind_one_address_do_not_lock_out_its_other_users() {
    let (tg, password, secret) = gateway_with_tech().await;
    for i in 0..6 {
        let r = login_from(&tg, src(6), login(&format!("nurse{i}"), WRONG, None)).await;
        assert!(text(&r).contains("login failed"), "{}", text(&r));
    }
    let r = login_from(
        &tg,
        src(6),
        login("tech", &password, Some(code_now(&secret))),
    )
    .await;
    assert!(
        matches!(r, Response::Issued { .. }),
        "tech behind the same address: {}",
        text(&r)
    );
}

/// Guesses from many addresses put `tech` under back-off; from a fresh address a wrong password
/// is still refused, a right password without a code is held off, and the right password with a
/// fresh TOTP code gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_fresh_code_pass_backoff_others_caused() {
    let (tg, password, secret) = gateway_with_tech().await;
    // Wrong passwords with made-up codes from 14 addresses (a code lets an attempt be checked
    // under back-off others caused, so each of these is counted).
    for i in 0..14 {
        let r = login_from(
            &tg,
            src(20 + i),
            login("tech", WRONG, Some("000000".into())),
        )
        .await;
        assert!(!matches!(r, Response::Issued { .. }));
    }
    let r = login_from(&tg, src(40), login("tech", WRONG, Some(code_now(&secret)))).await;
    assert!(!matches!(r, Response::Issued { .. }), "{}", text(&r));
    let r = login_from(&tg, src(41), login("tech", &password, None)).await;
    assert!(text(&r).contains("too many failed logins"), "{}", text(&r));
    let r = login_from(
        &tg,
        src(42),
        login("tech", &password, Some(code_now(&secret))),
    )
    .await;
    assert!(
        matches!(r, Response::Issued { .. }),
        "password and fresh code under others' back-off: {}",
        text(&r)
    );
}

/// A code that was already used is named as such (through `ward login`'s client code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_code_is_named() {
    let (tg, password, secret) = gateway_with_tech().await;
    let code = code_now(&secret);
    let first = ward_client::Client::anonymous(&tg.quic(), &tg.pki.root(), Transport::Quic)
        .unwrap()
        .login("tech", password.clone(), Some(code.clone()), None, None)
        .await;
    assert!(first.is_ok(), "{:#}", first.err().unwrap());
    let again = ward_client::Client::anonymous(&tg.quic(), &tg.pki.root(), Transport::Quic)
        .unwrap()
        .login("tech", password, Some(code), None, None)
        .await
        .err()
        .expect("a used code worked twice");
    assert!(
        format!("{again:#}").contains("this code was used already: wait for the next one"),
        "{again:#}"
    );
}

/// Every kind that may break glass must give a TOTP code at login, whatever `[login] mfa` says.
#[test]
fn break_glass_kinds_need_mfa() {
    let base = "[gateway]\nlisten = \"127.0.0.1:0\"\nca = \".\"\ncert = \"gateway.crt\"\nkey = \"gateway.key\"\nstate_dir = \"s\"\n";
    let text = format!(
        "{base}\n[login]\nmfa = [\"security\"]\n\n[[device]]\nid = \"pump-14\"\naddress = \"127.0.0.1:9\"\nprotocol = \"telnet\"\nbreak_glass = true\n"
    );
    let cfg = ward_core::config::Config::parse(&text, "t.toml").unwrap();
    assert!(
        cfg.login.needs_mfa(PrincipalKind::Clinician),
        "clinicians may break glass on pump-14 without a second factor"
    );
    // A break-glass `who` without a kind: anyone it matches may break glass, so every kind.
    let text = format!(
        "{base}\n[[device]]\nid = \"pump-14\"\naddress = \"127.0.0.1:9\"\nprotocol = \"telnet\"\nbreak_glass = {{ who = {{ roles = [\"icu\"] }} }}\n"
    );
    let cfg = ward_core::config::Config::parse(&text, "t.toml").unwrap();
    for k in [PrincipalKind::Clinician, PrincipalKind::Security] {
        assert!(cfg.login.needs_mfa(k), "{k:?}");
    }
}
