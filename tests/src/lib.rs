//! Ward's shared test harness: an ephemeral CA, a gateway on 127.0.0.1 port 0, simulated devices,
//! clients and local forwarders. Everything stays on loopback and cleans up with its temp dir.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use ward_ca::{Ca, Clock, IssueRequest, Kind, SystemClock};
use ward_client::{Client, IdentityFiles, Transport};
use ward_server::gateway::Gateway;

pub mod hostile;
pub mod nginx;
pub mod pg;
pub mod process;
pub mod s3;
pub mod web;

/// Install a test log subscriber once (RUST_LOG=debug to see the gateway's logs).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The real clock's `now`, for tests that talk to a gateway on the real clock.
pub fn now() -> OffsetDateTime {
    SystemClock.now()
}

/// An ephemeral CA in a temp dir, with a gateway certificate already issued.
pub struct Pki {
    /// Holds every file; removed on drop.
    pub dir: tempfile::TempDir,
    /// The CA.
    pub ca: Ca,
}

impl Pki {
    /// A new CA (trust domain `ward.test`) with `gateway.crt`/`gateway.key`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Created a day ago, so tests can issue identities "in the past" (e.g. already expired ones).
        let ca = Ca::init(
            dir.path(),
            "ward.test",
            false,
            now() - time::Duration::days(1),
        )
        .unwrap();
        let mut gw = IssueRequest::new(Kind::Gateway, "gw");
        gw.dns = vec!["localhost".into()];
        gw.ips = vec!["127.0.0.1".parse().unwrap()];
        ca.issue(&gw, now())
            .unwrap()
            .write(&dir.path().join("gateway"))
            .unwrap();
        Pki { dir, ca }
    }

    /// Issue a person identity at the real `now`; returns the file prefix.
    pub fn person(&self, kind: Kind, name: &str, org: Option<&str>, roles: &[&str]) -> PathBuf {
        self.person_at(kind, name, org, roles, None, now())
    }

    /// Issue a person identity as of `at`, with an optional TTL.
    pub fn person_at(
        &self,
        kind: Kind,
        name: &str,
        org: Option<&str>,
        roles: &[&str],
        ttl: Option<time::Duration>,
        at: OffsetDateTime,
    ) -> PathBuf {
        let mut req = IssueRequest::new(kind, name);
        req.org = org.map(Into::into);
        req.roles = roles.iter().map(|r| r.to_string()).collect();
        req.ttl = ttl;
        let prefix = self
            .dir
            .path()
            .join(format!("{kind}-{name}-{}", rand::random::<u32>()));
        self.ca.issue(&req, at).unwrap().write(&prefix).unwrap();
        prefix
    }

    /// The root certificate path.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root.crt")
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A device entry for a test config.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Device id.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// telnet | http | dicom | hl7 | raw.
    pub protocol: &'static str,
    /// `k = "v"` pairs.
    pub labels: Vec<(&'static str, &'static str)>,
}

impl DeviceSpec {
    /// A device with labels.
    pub fn new(
        id: &str,
        addr: SocketAddr,
        protocol: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Self {
        DeviceSpec {
            id: id.into(),
            addr,
            protocol,
            labels: labels.to_vec(),
        }
    }
}

/// A gateway running in-process on 127.0.0.1 port 0 (QUIC and TCP).
pub struct TestGateway {
    /// The gateway (None once shut down).
    pub gw: Option<Gateway>,
    /// The PKI it trusts.
    pub pki: Arc<Pki>,
    /// The config file written.
    pub config: PathBuf,
}

/// Write a config for `devices` and `rules_toml` (raw `[[rule]]` tables) and start a gateway.
pub async fn start_gateway(
    pki: Arc<Pki>,
    devices: &[DeviceSpec],
    rules_toml: &str,
    extra_gateway_toml: &str,
    clock: Arc<dyn Clock>,
) -> TestGateway {
    let dir = pki.dir.path();
    let mut text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nlisten_tcp = \"127.0.0.1:0\"\nca = \".\"\ncert = \"gateway.crt\"\nkey = \"gateway.key\"\nstate_dir = \"state-{}\"\n{extra_gateway_toml}\n",
        rand::random::<u32>()
    );
    for d in devices {
        let labels: Vec<String> = d
            .labels
            .iter()
            .map(|(k, v)| format!("{k} = \"{v}\""))
            .collect();
        text.push_str(&format!(
            "\n[[device]]\nid = \"{}\"\naddress = \"{}\"\nprotocol = \"{}\"\nlabels = {{ {} }}\n",
            d.id,
            d.addr,
            d.protocol,
            labels.join(", ")
        ));
    }
    text.push('\n');
    text.push_str(rules_toml);
    let config = dir.join(format!("ward-{}.toml", rand::random::<u32>()));
    std::fs::write(&config, &text).unwrap();
    let cfg =
        ward_server::gateway::load_config(&config).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    let gw = Gateway::start(cfg, clock).await.unwrap();
    TestGateway {
        gw: Some(gw),
        pki,
        config,
    }
}

impl TestGateway {
    fn gw(&self) -> &Gateway {
        self.gw.as_ref().expect("gateway already shut down")
    }

    /// `127.0.0.1:PORT` of the QUIC listener.
    pub fn quic(&self) -> String {
        self.gw().quic_addr().to_string()
    }

    /// `127.0.0.1:PORT` of the TLS-over-TCP listener.
    pub fn tcp(&self) -> String {
        self.gw().tcp_addr().unwrap().to_string()
    }

    /// A client for `identity` over `transport`.
    pub fn client(&self, identity: &Path, transport: Transport) -> Client {
        let files = IdentityFiles::resolve(identity, Some(&self.pki.root())).unwrap();
        let addr = match transport {
            Transport::Tcp => self.tcp(),
            _ => self.quic(),
        };
        Client::new(&addr, &files, transport).unwrap()
    }

    /// Live sessions on the gateway.
    pub fn live_sessions(&self) -> usize {
        self.gw().live_sessions()
    }

    /// Shut the gateway down with `grace`.
    pub async fn shutdown(&mut self, grace: Duration) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown(grace).await;
        }
    }
}

/// Start `ward connect --listen 127.0.0.1:0` semantics for `device`; returns the local address.
pub async fn forwarder(client: Client, device: &str) -> SocketAddr {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let device = device.to_string();
    tokio::spawn(async move {
        let _ = ward_client::listen(
            Arc::new(client),
            device,
            "127.0.0.1:0".parse().unwrap(),
            Some(tx),
        )
        .await;
    });
    rx.await.unwrap()
}

/// The rule most end-to-end tests run under: acme's vendors reach devices labelled `vendor = "acme"`.
pub const ACME_RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

/// A simulated device that echoes what it gets, on a loopback port.
pub async fn echo_device() -> SocketAddr {
    ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .addr
}

/// A device that counts connection attempts and answers nothing; for "the device never saw it".
pub async fn counting_device() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        loop {
            let s = ward::sim::accept_next(&l).await;
            n2.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, n)
}

/// A loopback address nothing listens on (connections are refused).
pub async fn refusing_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A listener that never accepts and whose backlog is full, so new connects stall (SYNs dropped).
/// The returned guard keeps the listener and the filler connections alive.
pub fn stalling_address() -> (SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    (addr, fillers, sock)
}

/// A device that sends `banner`, half-closes its write side, then reads until EOF and reports how
/// many bytes it got.
pub async fn banner_then_read_device(
    banner: &'static [u8],
) -> (SocketAddr, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let s = ward::sim::accept_next(&l).await;
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                w.write_all(banner).await.unwrap();
                w.shutdown().await.unwrap();
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                let _ = tx.send(got).await;
            });
        }
    });
    (addr, rx)
}

/// Deterministic pseudo-random bytes.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// SHA-256 hex of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Is `tool` on PATH? Under CI a missing peer is a failure, never a skip.
pub fn require_peer(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{tool} is required under CI (install it: .ci/run does)");
        }
        eprintln!("SKIPPED: {tool} is not installed (CI installs it; .ci/run)");
    }
    found
}

pub use process::ward_binary;

/// Start a gateway with [`ward_server::gateway::Options`] (e.g. an injected failing recording sink).
pub async fn start_gateway_with(
    pki: Arc<Pki>,
    devices: &[DeviceSpec],
    rules_toml: &str,
    extra_gateway_toml: &str,
    clock: Arc<dyn Clock>,
    options: ward_server::gateway::Options,
) -> TestGateway {
    let tg = start_gateway(
        pki.clone(),
        devices,
        rules_toml,
        extra_gateway_toml,
        clock.clone(),
    )
    .await;
    // Restart on the same config with the options (the first start created the state dir).
    let config_path = tg.config.clone();
    let mut tg = tg;
    tg.shutdown(Duration::from_millis(10)).await;
    let cfg = ward_server::gateway::load_config(&config_path).unwrap();
    let gw = Gateway::start_with(cfg, clock, options).await.unwrap();
    TestGateway {
        gw: Some(gw),
        pki,
        config: config_path,
    }
}

impl TestGateway {
    /// The gateway's state dir.
    pub fn state_dir(&self) -> PathBuf {
        ward_server::gateway::load_config(&self.config)
            .unwrap()
            .gateway
            .state_dir
    }
}

// ---- Load and fault harness (tests/tests/load.rs, tests/tests/faults.rs) ----

/// Push `data` through an open session (echo device behind it), half-close, and collect what comes
/// back, with how the session ended.
pub async fn echo_session(
    session: ward_client::Session,
    data: &[u8],
) -> (Vec<u8>, ward_client::SessionEnd) {
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    let writer = async {
        rw.write_all(data).await.unwrap();
        rw.shutdown().await.unwrap();
    };
    let reader = async {
        let mut out = Vec::with_capacity(data.len());
        rr.read_to_end(&mut out).await.unwrap();
        out
    };
    let ((), out) = tokio::join!(writer, reader);
    (out, run.await.unwrap())
}

/// Poll `check` every 20 ms until it returns true or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Open file descriptors of process `pid` (`/proc/<pid>/fd`).
pub fn proc_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), or a count field (`Threads`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Write a gateway config for `devices` and `rules_toml` listening on `port` (UDP and TCP); returns
/// its path. The state dir is a fresh directory next to the config unless `extra_gateway_toml`
/// names one.
pub fn write_gateway_config(
    pki: &Pki,
    devices: &[DeviceSpec],
    rules_toml: &str,
    extra_gateway_toml: &str,
    port: u16,
    state_dir: &Path,
) -> PathBuf {
    let mut text = format!(
        "[gateway]\nlisten = \"127.0.0.1:{port}\"\nlisten_tcp = \"127.0.0.1:{port}\"\nca = \".\"\ncert = \"gateway.crt\"\nkey = \"gateway.key\"\nstate_dir = \"{}\"\n{extra_gateway_toml}\n",
        state_dir.display()
    );
    for d in devices {
        let labels: Vec<String> = d
            .labels
            .iter()
            .map(|(k, v)| format!("{k} = \"{v}\""))
            .collect();
        text.push_str(&format!(
            "\n[[device]]\nid = \"{}\"\naddress = \"{}\"\nprotocol = \"{}\"\nlabels = {{ {} }}\n",
            d.id,
            d.addr,
            d.protocol,
            labels.join(", ")
        ));
    }
    text.push('\n');
    text.push_str(rules_toml);
    let config = pki
        .dir
        .path()
        .join(format!("ward-{}.toml", rand::random::<u32>()));
    std::fs::write(&config, &text).unwrap();
    config
}

/// The real `ward gateway` binary as a child process on 127.0.0.1 (killed when dropped).
pub struct ChildGateway {
    /// The process.
    pub proc: process::Proc,
    /// `127.0.0.1:PORT`, for QUIC and TCP alike.
    pub addr: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its state dir.
    pub state_dir: PathBuf,
    /// The PKI it trusts.
    pub pki: Arc<Pki>,
}

impl ChildGateway {
    /// Start `ward gateway` on a free port with `state_dir` (None: a fresh one in the PKI dir), and
    /// wait (bounded) until its TCP listener accepts.
    pub fn start(
        pki: Arc<Pki>,
        devices: &[DeviceSpec],
        rules_toml: &str,
        extra_gateway_toml: &str,
        state_dir: Option<&Path>,
    ) -> ChildGateway {
        Self::start_env(pki, devices, rules_toml, extra_gateway_toml, state_dir, &[])
    }

    /// [`ChildGateway::start`] with extra environment variables for the child.
    pub fn start_env(
        pki: Arc<Pki>,
        devices: &[DeviceSpec],
        rules_toml: &str,
        extra_gateway_toml: &str,
        state_dir: Option<&Path>,
        env: &[(&str, &str)],
    ) -> ChildGateway {
        let state_dir = state_dir.map(Path::to_path_buf).unwrap_or_else(|| {
            pki.dir
                .path()
                .join(format!("state-{}", rand::random::<u32>()))
        });
        let binary = ward_binary();
        for _attempt in 0..5 {
            let port = process::free_port();
            let config = write_gateway_config(
                &pki,
                devices,
                rules_toml,
                extra_gateway_toml,
                port,
                &state_dir,
            );
            let mut cmd = std::process::Command::new(&binary);
            cmd.args(["gateway", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .envs(env.iter().copied());
            let mut proc = process::Proc::spawn(&mut cmd, process::Input::Null);
            let addr = format!("127.0.0.1:{port}");
            let deadline = std::time::Instant::now() + process::COMMAND_TIMEOUT;
            loop {
                if std::net::TcpStream::connect(&addr).is_ok() {
                    return ChildGateway {
                        proc,
                        addr,
                        config,
                        state_dir,
                        pki,
                    };
                }
                if proc.child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "ward gateway did not listen on {addr}\nstderr:\n{}",
                    proc.stderr()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let err = proc.stderr();
            // Lost the port between probing and binding: try another; anything else is a failure.
            assert!(err.contains("binding"), "ward gateway exited early:\n{err}");
        }
        panic!("ward gateway could not get a free port in 5 attempts");
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// A client for `identity` over `transport`.
    pub fn client(&self, identity: &Path, transport: Transport) -> Client {
        let files = IdentityFiles::resolve(identity, Some(&self.pki.root())).unwrap();
        Client::new(&self.addr, &files, transport).unwrap()
    }

    /// Send SIGTERM (the `kill` tool: no unsafe code in tests).
    pub fn sigterm(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {} failed", self.pid());
    }

    /// The audit log as parsed JSON lines (events only).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        audit_events(&self.state_dir)
    }
}

/// `<state_dir>/audit.log` as parsed JSON objects that carry an `event` field, in order.
pub fn audit_events(state_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state_dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some())
        .collect()
}

/// A small tmpfs mounted on a temp dir (root only), unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount a `size` tmpfs, or `None` (skipped) when not root outside CI; under CI a failure is
    /// a test failure.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "ward-test",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = format!("mount -t tmpfs failed: {other:?}");
                assert!(std::env::var_os("CI").is_none(), "{why} (CI runs as root)");
                eprintln!("SKIPPED: {why} (needs root; CI runs it)");
                None
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// `n` QUIC connections that finish the handshake without a client certificate (trusting
/// `root`), open no stream and only send keep-alives, spread over one endpoint per local address
/// in `sources` (for abuse tests and the bench; at most 64 handshakes at once, each bounded).
/// Returns the endpoints (keep them) and the connections whose handshake finished.
pub async fn idle_anonymous_quic(
    root: &Path,
    sources: &[std::net::IpAddr],
    n: usize,
    to: SocketAddr,
) -> (Vec<quinn::Endpoint>, Vec<quinn::Connection>) {
    let root = ward_transport::tls::load_certs(root).unwrap().remove(0);
    let tls = ward_transport::tls::anonymous_client_config(root).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    cc.transport_config(Arc::new(transport));
    let endpoints: Vec<quinn::Endpoint> = sources
        .iter()
        .map(|ip| {
            let mut e = quinn::Endpoint::client(SocketAddr::new(*ip, 0)).unwrap();
            e.set_default_client_config(cc.clone());
            e
        })
        .collect();
    let mut conns = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let e = endpoints[i % endpoints.len()].clone();
        set.spawn(async move {
            let connecting = e.connect(to, "127.0.0.1").ok()?;
            tokio::time::timeout(Duration::from_secs(10), connecting)
                .await
                .ok()?
                .ok()
        });
        if set.len() >= 64 {
            if let Some(Ok(Some(c))) = set.join_next().await {
                conns.push(c);
            }
        }
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Some(c)) = r {
            conns.push(c);
        }
    }
    (endpoints, conns)
}

// ---- Telemetry (tests/tests/telemetry.rs, tests/tests/vault_session.rs) ----

/// What [`otlp_collector`] received: (request line, body) per request.
pub type OtlpReceived = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP collector on 127.0.0.1: records the request line and body of every POST and
/// answers 200. Returns its `/v1/traces` URL and what it received.
pub fn otlp_collector() -> (String, OtlpReceived) {
    use std::io::{BufRead, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let got = got2.clone();
            std::thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).unwrap();
                    got.lock()
                        .unwrap()
                        .push((request_line.trim().to_string(), body));
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n").unwrap();
                }
            });
        }
    });
    (url, got)
}

/// The store under `state_dir` as `ward user add` opens it: with its key-encryption key (the
/// default key file, made when no gateway ran yet), so users' TOTP seeds can be sealed and read.
///
/// # Panics
/// When the store or its key cannot be opened (a test's set-up failed).
pub fn open_store(state_dir: &std::path::Path) -> ward_store::store::SqliteStore {
    let db = ward_store::store::SqliteStore::open(state_dir).expect("opening the store");
    let source =
        ward_store::keywrap::KeySource::File(state_dir.join(ward_store::keywrap::DEFAULT_KEY_FILE));
    ward_store::keywrap::load_store_keys(&db, &source).expect("the store's key-encryption key");
    db
}
