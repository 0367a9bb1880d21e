//! `ward connect` and the other client commands: reach the gateway over QUIC (or the TLS-over-TCP
//! fallback), open sessions, and carry them to a local port or to stdio.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use ward_core::frame::{self, Request, Response};
use ward_core::Escaped;

use crate::client_error::{
    ClientError, Tried, AUTO_QUIC_WAIT, FAILOVER_CONNECT, FAILOVER_IDLE, FAILOVER_KEEPALIVE,
    QUIC_IDLE, TCP_CONNECT,
};
use ward_transport::datapath::{self, Activity, FrameReader, FrameWriter, FramedEnd, Inbound};
use ward_transport::{refusal, tls};

pub mod client_error;
pub mod sso;
pub mod targets;

/// Which transport to reach the gateway over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP, for networks that block UDP.
    Tcp,
    /// Try QUIC; fall back to TCP within about a second.
    Auto,
}

/// A boxed read half of a session stream.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed write half of a session stream.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// With several gateways: how long a gateway that failed is tried only after the others (a dead
/// gateway then costs its detection once per client, not once per session).
const DOWN_FOR: Duration = Duration::from_secs(30);

/// How long a new QUIC stream may wait for the gateway's stream credit before the caller is told.
const STREAM_WAIT_NOTICE: Duration = Duration::from_millis(500);

/// Where to find the identity (certificate chain + key) and the root to trust.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    /// `PREFIX.crt`.
    pub cert: PathBuf,
    /// `PREFIX.key`.
    pub key: PathBuf,
    /// Ward's root certificate.
    pub root: PathBuf,
}

impl IdentityFiles {
    /// Resolve `--identity PREFIX` and `--ca FILE` (default: `root.crt` beside the identity, then
    /// `~/.ward/root.crt`).
    pub fn resolve(prefix: &Path, ca: Option<&Path>) -> anyhow::Result<Self> {
        let cert = with_ext(prefix, "crt");
        let key = with_ext(prefix, "key");
        for f in [&cert, &key] {
            if !f.exists() {
                bail!("identity file {} not found; get an identity with `ward ca issue ... --out {}` (or `ward login`)", f.display(), prefix.display());
            }
        }
        let root = match ca {
            Some(p) => p.to_path_buf(),
            None => {
                let beside = prefix.parent().unwrap_or(Path::new(".")).join("root.crt");
                let home = home_dir().map(|h| h.join(".ward").join("root.crt"));
                if beside.exists() {
                    beside
                } else if let Some(h) = home.filter(|h| h.exists()) {
                    h
                } else {
                    bail!(
                        "no Ward root certificate beside {} or in ~/.ward/; pass --ca FILE",
                        prefix.display()
                    );
                }
            }
        };
        Ok(Self { cert, key, root })
    }
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// The user's home directory, from `$HOME`.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// A connection (or connection factory) to a gateway: one, or several tried in order.
///
/// With several addresses (`--gateway a,b`, or a name with several records), each new connection
/// starts at the address that answered last (the first at start) and moves on to the next when
/// one cannot be used ([`ClientError::fails_over`]), each address with its own QUIC→TCP fallback
/// and a bounded connect ([`FAILOVER_CONNECT`]). Requests already sent are never sent again
/// elsewhere; only a session that had not been opened when its connection died is retried.
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    /// Never empty (the constructor refuses otherwise).
    targets: Vec<Target>,
    /// Entries that did not resolve (named in the error if no other address answers).
    unresolved: Vec<targets::Unresolved>,
    transport: Transport,
    /// The target that answered last: new connections start there.
    current: AtomicUsize,
    quic: Mutex<Option<CachedQuic>>,
    /// Our certificate (PEM) and the root file: to explain a refused handshake.
    identity: Option<Box<(String, PathBuf)>>,
    /// The local address to connect from (default: the system's choice).
    local: Option<IpAddr>,
}

/// One address to try.
struct Target {
    at: targets::Candidate,
    /// `--transport auto` gave up on QUIC for this address.
    fell_back: AtomicBool,
    /// When this address last failed (connect, or a connection that died under a request):
    /// for [`DOWN_FOR`] it is tried after the others.
    down_since: std::sync::Mutex<Option<Instant>>,
}

impl Target {
    fn mark_down(&self) {
        if let Ok(mut d) = self.down_since.lock() {
            *d = Some(Instant::now());
        }
    }

    fn mark_up(&self) {
        if let Ok(mut d) = self.down_since.lock() {
            *d = None;
        }
    }

    /// When it failed, if within [`DOWN_FOR`].
    fn down(&self) -> Option<Instant> {
        let d = *self.down_since.lock().ok()?;
        d.filter(|at| at.elapsed() < DOWN_FOR)
    }
}

/// The QUIC connection in use, and which target it goes to.
struct CachedQuic {
    target: usize,
    /// Kept with its connection (the endpoint drives it).
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

/// Why one target could not give a stream: the final error, and QUIC's before a fallback.
struct Failure {
    error: ClientError,
    quic_first: Option<ClientError>,
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure {
            error,
            quic_first: None,
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("gateway", &self.gateways())
            .field("transport", &self.transport)
            .finish()
    }
}

impl Client {
    /// Prepare a client for `gateway` (`HOST:PORT`, or several comma-separated) with the given
    /// identity.
    pub fn new(gateway: &str, files: &IdentityFiles, transport: Transport) -> anyhow::Result<Self> {
        let chain = tls::load_certs(&files.cert)?;
        let key = tls::load_key(&files.key)?;
        let root = tls::load_certs(&files.root)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("empty root file"))?;
        let cfg = tls::client_config(root, chain, key)?;
        let mut client = Self::with_config(gateway, cfg, transport)?;
        client.identity = std::fs::read_to_string(&files.cert)
            .ok()
            .map(|pem| Box::new((pem, files.root.clone())));
        Ok(client)
    }

    /// A QUIC connection error on the connection to `gateway`, typed: a refused handshake from
    /// its TLS alert, the gateway's own closes (busy, evicted, deadline) from their application
    /// code.
    fn quic_error(&self, gateway: SocketAddr, e: &quinn::ConnectionError) -> ClientError {
        let otherwise = || match ClientError::from_quic(e, gateway) {
            ClientError::TimedOut {
                gateway,
                transport,
                after: _,
            } if self.several() => ClientError::TimedOut {
                gateway,
                transport,
                after: FAILOVER_IDLE,
            },
            other => other,
        };
        match refusal::from_quic(e) {
            Some(r) => self.refusal_or(Some(r), otherwise),
            None => otherwise(),
        }
    }

    /// A refused handshake as its typed error (the alert or our own check), else `otherwise`.
    fn refusal_or(
        &self,
        refused: Option<refusal::Refused>,
        otherwise: impl FnOnce() -> ClientError,
    ) -> ClientError {
        use ward_ca::Clock as _;
        let (pem, root) = match self.identity.as_deref() {
            Some((pem, root)) => (Some(pem.as_str()), Some(root.as_path())),
            None => (None, None),
        };
        refused
            .and_then(|r| ClientError::from_refusal(&r, pem, root, ward_ca::SystemClock.now()))
            .unwrap_or_else(otherwise)
    }

    /// A client without a certificate, trusting `root`: it can only log in.
    pub fn anonymous(gateway: &str, root: &Path, transport: Transport) -> anyhow::Result<Self> {
        let root = tls::load_certs(root)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("empty root file {}", root.display()))?;
        Self::with_config(gateway, tls::anonymous_client_config(root)?, transport)
    }

    fn with_config(
        gateway: &str,
        cfg: rustls::ClientConfig,
        transport: Transport,
    ) -> anyhow::Result<Self> {
        let entries = targets::parse(gateway).map_err(anyhow::Error::msg)?;
        let (found, unresolved) = targets::resolve(&entries);
        if found.is_empty() {
            match (entries.as_slice(), unresolved.as_slice()) {
                // One address, as before: the resolver's words.
                ([one], [failed]) => {
                    bail!("resolving gateway {}: {}", one.given, failed.why)
                }
                _ => {
                    let each: Vec<String> = unresolved
                        .iter()
                        .map(|u| format!("{} ({})", u.given, u.why))
                        .collect();
                    bail!("no --gateway address resolves: {}", each.join(", "))
                }
            }
        }
        let targets = found
            .into_iter()
            .map(|at| Target {
                at,
                fell_back: AtomicBool::new(false),
                down_since: std::sync::Mutex::new(None),
            })
            .collect();
        Ok(Self {
            tls: Arc::new(cfg),
            targets,
            unresolved,
            transport,
            current: AtomicUsize::new(0),
            quic: Mutex::new(None),
            identity: None,
            local: None,
        })
    }

    /// Connect from `ip` (a local address) instead of the system's choice.
    pub fn bind_local(mut self, ip: IpAddr) -> Self {
        self.local = Some(ip);
        self
    }

    /// Whether more than one address may be tried (then connects are bounded and failures move on).
    fn several(&self) -> bool {
        self.targets.len() + self.unresolved.len() > 1
    }

    /// The gateways, for people: the address for one; the list, in order, for several.
    pub fn gateways(&self) -> String {
        let all: Vec<String> = self.targets.iter().map(|t| t.at.describe()).collect();
        all.join(", ")
    }

    /// With several gateways, the one that answered last (the one a session just opened went
    /// through); `None` with one.
    pub fn gateway_in_use(&self) -> Option<String> {
        if !self.several() {
            return None;
        }
        self.targets
            .get(self.current.load(Ordering::Relaxed))
            .map(|t| t.at.describe())
    }

    fn server_name(t: &Target) -> anyhow::Result<ServerName<'static>> {
        ServerName::try_from(t.at.host.clone())
            .map_err(|_| anyhow!("{:?} is not a valid gateway host name", t.at.host))
    }

    async fn quic_connection(
        &self,
        i: usize,
        t: &Target,
        began: Instant,
    ) -> Result<quinn::Connection, ClientError> {
        let mut guard = self.quic.lock().await;
        if let Some(cached) = guard.as_ref() {
            if cached.target == i && cached.conn.close_reason().is_none() {
                return Ok(cached.conn.clone());
            }
        }
        // Another request found this gateway dead while we waited for the lock: do not wait for
        // it again (each waiter would otherwise spend the whole connect timeout on it in turn).
        if self.several() && t.down().is_some_and(|at| at > began) {
            return Err(ClientError::TimedOut {
                gateway: t.at.addr,
                transport: "QUIC",
                after: FAILOVER_CONNECT,
            });
        }
        let endpoint = self
            .quic_endpoint(t)
            .map_err(|e| ClientError::Unreachable {
                gateway: t.at.addr,
                transport: "QUIC",
                why: format!("{e:#}"),
            })?;
        let connecting = endpoint
            .connect(t.at.addr, &t.at.host)
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        let conn = if self.several() {
            // A dead address must not hold the others up for the whole idle timeout.
            match tokio::time::timeout(FAILOVER_CONNECT, connecting).await {
                Ok(r) => r.map_err(|e| self.quic_error(t.at.addr, &e))?,
                Err(_) => {
                    return Err(ClientError::TimedOut {
                        gateway: t.at.addr,
                        transport: "QUIC",
                        after: FAILOVER_CONNECT,
                    })
                }
            }
        } else {
            connecting
                .await
                .map_err(|e| self.quic_error(t.at.addr, &e))?
        };
        *guard = Some(CachedQuic {
            target: i,
            _endpoint: endpoint,
            conn: conn.clone(),
        });
        Ok(conn)
    }

    /// A client endpoint with the gateway's UDP tuning and our TLS config.
    fn quic_endpoint(&self, t: &Target) -> anyhow::Result<quinn::Endpoint> {
        let bind: SocketAddr = match self.local {
            Some(ip) => SocketAddr::new(ip, 0),
            None if t.at.addr.is_ipv6() => "[::]:0".parse()?,
            None => "0.0.0.0:0".parse()?,
        };
        // Large UDP buffers, as on the gateway: bursts of full-size packets are not dropped.
        let socket = ward_transport::quic::udp_socket(bind)?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from((*self.tls).clone())?;
        let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
        // With several gateways a vanished one is noticed sooner, so new sessions move on.
        let (idle, keep_alive) = if self.several() {
            (FAILOVER_IDLE, FAILOVER_KEEPALIVE)
        } else {
            (QUIC_IDLE, Duration::from_secs(10))
        };
        let mut transport = ward_transport::quic::transport_config(1024, idle)?;
        transport.keep_alive_interval(Some(keep_alive));
        cc.transport_config(Arc::new(transport));
        endpoint.set_default_client_config(cc);
        Ok(endpoint)
    }

    async fn tcp_stream(&self, t: &Target) -> Result<(BoxRead, BoxWrite), ClientError> {
        let gateway = t.at.addr;
        let connect = async {
            match self.local {
                None => TcpStream::connect(gateway).await,
                Some(ip) => {
                    let socket = match ip {
                        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                    };
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(gateway).await
                }
            }
        };
        let limit = if self.several() {
            FAILOVER_CONNECT
        } else {
            TCP_CONNECT
        };
        let tcp = tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| ClientError::TimedOut {
                gateway,
                transport: "TCP",
                after: limit,
            })?
            .map_err(|e| ClientError::from_tcp_connect(&e, gateway))?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = Self::server_name(t).map_err(|e| ClientError::Connection(e.to_string()))?;
        let handshake = connector.connect(name, tcp);
        let handshake = if self.several() {
            // A gateway that accepts but never answers (stopped, overloaded) is skipped too.
            tokio::time::timeout(FAILOVER_CONNECT, handshake)
                .await
                .map_err(|_| ClientError::TimedOut {
                    gateway,
                    transport: "TCP",
                    after: FAILOVER_CONNECT,
                })?
        } else {
            handshake.await
        };
        let tls = handshake.map_err(|e| {
            self.refusal_or(refusal::from_tcp(&e), || {
                ClientError::Connection(e.to_string())
            })
        })?;
        let (r, w) = tokio::io::split(tls);
        Ok((Box::new(r), Box::new(w)))
    }

    /// A fresh bidirectional stream: a new QUIC stream on the shared connection, or a new TLS
    /// connection on the fallback.
    pub async fn stream(&self) -> anyhow::Result<(BoxRead, BoxWrite)> {
        Ok(self.stream_with(&|| ()).await?)
    }

    /// [`Client::stream`], calling `waiting` once if the QUIC connection has no stream to spare
    /// (the gateway's `max_sessions_per_connection` is reached) and the stream waits for one.
    /// With several gateways: from the one that answered last, each in turn until one gives a
    /// stream; the error then lists every address tried and why.
    async fn stream_with(
        &self,
        waiting: &(dyn Fn() + Send + Sync),
    ) -> Result<(BoxRead, BoxWrite), ClientError> {
        self.stream_at(waiting).await.map(|(r, w, _, _)| (r, w))
    }

    /// [`Client::stream_with`], and which gateway gave the stream.
    async fn stream_at(
        &self,
        waiting: &(dyn Fn() + Send + Sync),
    ) -> Result<(BoxRead, BoxWrite, usize, Option<quinn::Connection>), ClientError> {
        let n = self.targets.len();
        let start = self.current.load(Ordering::Relaxed) % n.max(1);
        let began = Instant::now();
        // From the one that answered last, in order; those that failed lately last of all.
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        if self.several() {
            order.sort_by_key(|&i| self.targets.get(i).is_some_and(|t| t.down().is_some()));
        }
        let mut tried = Vec::new();
        for i in order {
            let Some(t) = self.targets.get(i) else {
                continue;
            };
            match self.stream_via(i, t, waiting, began).await {
                Ok((r, w, conn)) => {
                    t.mark_up();
                    if self.current.swap(i, Ordering::Relaxed) != i {
                        tracing::info!(gateway = %t.at.describe(), "using gateway");
                    }
                    return Ok((r, w, i, conn));
                }
                Err(f) if self.several() && f.error.fails_over() => {
                    tracing::warn!(gateway = %t.at.describe(), "{}; trying the next gateway", f.error);
                    t.mark_down();
                    let mut why: Vec<String> =
                        f.quic_first.iter().map(ClientError::short).collect();
                    why.push(f.error.short());
                    tried.push(Tried {
                        gateway: t.at.describe(),
                        why,
                    });
                }
                Err(f) => return Err(f.error),
            }
        }
        tried.extend(self.unresolved.iter().map(|u| Tried {
            gateway: u.given.clone(),
            why: vec![u.why.clone()],
        }));
        Err(ClientError::NoGateway { tried })
    }

    /// A stream to target `i`: QUIC, or TLS over TCP (as `--transport` says, with the fallback).
    async fn stream_via(
        &self,
        i: usize,
        t: &Target,
        waiting: &(dyn Fn() + Send + Sync),
        began: Instant,
    ) -> Result<(BoxRead, BoxWrite, Option<quinn::Connection>), Failure> {
        let quic = match self.quic_or_tcp(i, t, began).await? {
            (Some(quic), _) => quic,
            (None, quic_first) => {
                return self
                    .tcp_stream(t)
                    .await
                    .map(|(r, w)| (r, w, None))
                    .map_err(|error| Failure { error, quic_first })
            }
        };
        let open = quic.open_bi();
        tokio::pin!(open);
        let opened = match tokio::time::timeout(STREAM_WAIT_NOTICE, &mut open).await {
            Ok(r) => r,
            Err(_) => {
                waiting();
                open.await
            }
        };
        let (send, recv) = opened.map_err(|e| self.quic_error(t.at.addr, &e))?;
        Ok((
            Box::new(recv),
            Box::new(QuicSend {
                inner: send,
                stopped: None,
            }),
            Some(quic.clone()),
        ))
    }

    /// The QUIC connection to use, or `None` for TLS over TCP (with why QUIC was given up, when
    /// that happened now). With `--transport auto`, QUIC gets [`AUTO_QUIC_WAIT`]; the fallback is
    /// decided on the typed failure.
    async fn quic_or_tcp(
        &self,
        i: usize,
        t: &Target,
        began: Instant,
    ) -> Result<(Option<quinn::Connection>, Option<ClientError>), ClientError> {
        match self.transport {
            Transport::Tcp => Ok((None, None)),
            Transport::Quic => Ok((Some(self.quic_connection(i, t, began).await?), None)),
            Transport::Auto if t.fell_back.load(Ordering::Relaxed) => Ok((None, None)),
            Transport::Auto => {
                let why =
                    match tokio::time::timeout(AUTO_QUIC_WAIT, self.quic_connection(i, t, began))
                        .await
                    {
                        Ok(Ok(c)) => return Ok((Some(c), None)),
                        Ok(Err(e)) if !e.falls_back() => return Err(e),
                        Ok(Err(e)) => e,
                        Err(_elapsed) => ClientError::TimedOut {
                            gateway: t.at.addr,
                            transport: "QUIC",
                            after: AUTO_QUIC_WAIT,
                        },
                    };
                tracing::info!("{why}; falling back to TLS over TCP");
                t.fell_back.store(true, Ordering::Relaxed);
                Ok((None, Some(why)))
            }
        }
    }
    /// Why the QUIC connection closed, typed, if it has.
    async fn quic_close_reason(&self) -> Option<ClientError> {
        let guard = self.quic.lock().await;
        let cached = guard.as_ref()?;
        let gateway = self.targets.get(cached.target)?.at.addr;
        cached
            .conn
            .close_reason()
            .map(|e| self.quic_error(gateway, &e))
    }

    /// Read the answer; if the stream broke because the gateway closed the connection (for example
    /// after refusing the certificate at the end of the handshake), say why.
    async fn answer<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
    ) -> anyhow::Result<Response> {
        match read_response(reader).await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.why_failed(e).await),
        }
    }

    /// A request's write result; a failed write is explained like a failed read (the gateway may
    /// have refused the certificate and closed the connection before the request left).
    async fn sent(&self, written: std::io::Result<()>) -> anyhow::Result<()> {
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(self.why_failed(e.into()).await),
        }
    }

    /// Why a request's stream failed: the QUIC connection's close, explained, or on TLS over TCP
    /// the gateway's alert; else the error itself.
    async fn why_failed(&self, e: anyhow::Error) -> anyhow::Error {
        if let Some(why) = self.quic_close_reason().await {
            return why.into();
        }
        // On TLS over TCP the gateway's refusal arrives as an alert on the first read.
        let refused = e
            .chain()
            .find_map(|c| c.downcast_ref::<std::io::Error>())
            .and_then(refusal::from_tcp);
        match refused {
            Some(r) => self
                .refusal_or(Some(r), || ClientError::Connection(format!("{e:#}")))
                .into(),
            None => e,
        }
    }

    /// Send one request and read its single response (for devices, lock, unlock…).
    pub async fn request(&self, req: &Request) -> anyhow::Result<Response> {
        let (r, w) = self.stream().await?;
        let mut writer = FrameWriter::new(w);
        self.sent(writer.write_request(req).await).await?;
        let mut reader = FrameReader::new(r);
        let resp = self.answer(&mut reader).await?;
        let _ = writer.finish().await;
        Ok(resp)
    }

    /// Open a session to `device`. Denials and device errors are returned as errors with the
    /// gateway's message.
    pub async fn open(
        &self,
        device: &str,
        break_glass: bool,
        reason: Option<String>,
    ) -> anyhow::Result<Session> {
        self.open_with(device, break_glass, reason, &|| ()).await
    }

    /// [`Client::open`], calling `waiting` once if the session waits for a free QUIC stream (the
    /// gateway's limit of sessions on one connection is reached).
    pub async fn open_with(
        &self,
        device: &str,
        break_glass: bool,
        reason: Option<String>,
        waiting: &(dyn Fn() + Send + Sync),
    ) -> anyhow::Result<Session> {
        let mut at = None;
        match self
            .open_once(device, break_glass, reason.clone(), waiting, &mut at)
            .await
        {
            // With several gateways: the connection died before the gateway answered (killed,
            // cut off, shutting down), so no session was opened there; open it on another. Only
            // connection failures are retried, never an answer.
            Err(e)
                if self.several()
                    && e.downcast_ref::<ClientError>()
                        .is_some_and(ClientError::fails_over) =>
            {
                // The gateway it went to is tried last for a while, by every request of this
                // client (not only this one).
                if let Some(t) = at.and_then(|i| self.targets.get(i)) {
                    t.mark_down();
                }
                tracing::warn!("{e:#}; opening the session on the next gateway");
                self.open_once(device, break_glass, reason, waiting, &mut at)
                    .await
            }
            other => other,
        }
    }

    /// One attempt of [`Client::open_with`].
    async fn open_once(
        &self,
        device: &str,
        break_glass: bool,
        reason: Option<String>,
        waiting: &(dyn Fn() + Send + Sync),
        used: &mut Option<usize>,
    ) -> anyhow::Result<Session> {
        let (r, w, i, conn) = self.stream_at(waiting).await?;
        *used = Some(i);
        let addr = self.targets.get(i).map(|t| t.at.addr);
        let gateway = self
            .several()
            .then(|| self.targets.get(i).map(|t| t.at.describe()))
            .flatten();
        // A failure on this stream explained by its own connection's close (the cached one may
        // already be another gateway's).
        let explain = |e: anyhow::Error| match (conn.as_ref().and_then(|c| c.close_reason()), addr)
        {
            (Some(why), Some(addr)) => Err(anyhow::Error::from(self.quic_error(addr, &why))),
            _ => Ok(e),
        };
        let mut writer = FrameWriter::new(w);
        let written = writer
            .write_request(&Request::Open {
                device: device.to_string(),
                break_glass,
                reason,
            })
            .await;
        if let Err(e) = written {
            let e = explain(e.into())?;
            return Err(self.why_failed(e).await);
        }
        let mut reader = FrameReader::new(r);
        let answer = match read_response(&mut reader).await {
            Ok(a) => a,
            Err(e) => {
                let e = explain(e)?;
                return Err(self.why_failed(e).await);
            }
        };
        match answer {
            Response::Opened {
                session_id,
                rule,
                ends_at_unix,
                end_reason_if_uncut,
                ..
            } => Ok(Session {
                reader,
                writer,
                session_id,
                rule,
                ends_at_unix,
                end_reason: end_reason_if_uncut,
                gateway,
            }),
            other => Err(unexpected(other).into()),
        }
    }
}

/// Any answer but the one wanted: a denial or typed error as such, anything else as unexpected.
pub fn unexpected(answer: Response) -> ClientError {
    match answer {
        Response::Denied { reason } => ClientError::Denied(reason),
        Response::Error { code, message } => ClientError::from_gateway(code, message),
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

/// A QUIC send stream whose shutdown waits (bounded) until the gateway has taken everything:
/// quinn's own `poll_shutdown` only queues the FIN, so a client that exits right after finishing
/// could drop its last bytes — e.g. the `EOF` frame that ends the session at the gateway.
struct QuicSend {
    inner: quinn::SendStream,
    stopped: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>>,
}

impl AsyncWrite for QuicSend {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(std::pin::Pin::new(&mut self.inner), cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.inner), cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stopped.is_none() {
            let _ = self.inner.finish();
            let stopped = self.inner.stopped();
            self.stopped = Some(Box::pin(async move {
                // The gateway read everything (or stopped the stream); either way we may go.
                let _ = tokio::time::timeout(Duration::from_secs(5), stopped).await;
            }));
        }
        match self.stopped.as_mut() {
            Some(f) => f.as_mut().poll(cx).map(Ok),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

async fn read_response<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> anyhow::Result<Response> {
    match reader
        .next()
        .await
        .context("reading the gateway's answer")?
    {
        Some(Inbound::Control(bytes)) => match frame::decode_response(&bytes)? {
            Some((resp, _)) => Ok(resp),
            None => bail!("truncated answer from the gateway"),
        },
        Some(_) => bail!("gateway sent data before answering"),
        None => bail!("gateway closed the stream without answering"),
    }
}

/// An open, authorized session.
pub struct Session {
    reader: FrameReader<BoxRead>,
    writer: FrameWriter<BoxWrite>,
    /// Gateway-assigned id (find it in the audit log and recordings).
    pub session_id: String,
    /// The rule that permitted it.
    pub rule: String,
    /// When the gateway will end it at the latest (Unix seconds).
    pub ends_at_unix: i64,
    /// What that end will be (certificate expiry, maximum duration…).
    pub end_reason: String,
    /// With several gateways given, the one it opened on (`None` with one).
    pub gateway: Option<String>,
}

/// How a session ended, as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Both sides finished normally.
    Completed,
    /// The gateway ended it and said why.
    ClosedByGateway(String),
    /// The stream broke.
    Broken(String),
}

impl Session {
    /// Carry the session between a local reader/writer pair until both directions finish.
    pub async fn run<R, W>(mut self, mut local_r: R, mut local_w: W) -> SessionEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let activity = Activity::new();
        // Set once the gateway's EOF has arrived: the device finished its direction. The gateway
        // may still end the session with a `Closed` frame after that (the device then reset, a
        // lock, the permit ran out), so the down side keeps reading for that trailer while the
        // local side is still sending.
        let down_eof = std::sync::atomic::AtomicBool::new(false);
        let early = {
            let up = datapath::raw_to_framed(
                &mut local_r,
                &mut self.writer,
                &activity,
                &activity.up,
                datapath::NO_TAP,
            );
            let reader = &mut self.reader;
            let down_eof = &down_eof;
            let activity = &activity;
            let down = async move {
                let end = datapath::framed_to_raw(
                    reader,
                    &mut local_w,
                    activity,
                    &activity.down,
                    datapath::NO_TAP,
                )
                .await;
                match end {
                    Ok(FramedEnd::Eof) => {
                        down_eof.store(true, std::sync::atomic::Ordering::Relaxed);
                        match reader.next().await {
                            // The gateway finished the stream: the session is over.
                            Ok(None) => None,
                            Ok(Some(Inbound::Control(bytes))) => Some(closed_or_broken(&bytes)),
                            Ok(Some(_)) => Some(SessionEnd::Broken(
                                "the gateway sent data after its end of stream".into(),
                            )),
                            Err(e) => Some(SessionEnd::Broken(format!("receiving: {e}"))),
                        }
                    }
                    Ok(FramedEnd::Control(bytes)) => Some(closed_or_broken(&bytes)),
                    Ok(FramedEnd::Abrupt) => {
                        Some(SessionEnd::Broken("gateway closed the stream".into()))
                    }
                    Err(e) => Some(SessionEnd::Broken(format!("receiving: {e}"))),
                }
            };
            tokio::pin!(up, down);
            let (mut up_done, mut down_done) = (false, false);
            let mut early = None;
            // Done when both directions finished: ours sent, and the gateway's EOF received (its
            // trailer is not waited for once there is nothing left to send).
            while early.is_none()
                && !(up_done && (down_done || down_eof.load(std::sync::atomic::Ordering::Relaxed)))
            {
                tokio::select! {
                    r = &mut up, if !up_done => {
                        up_done = true;
                        if let Err(e) = r {
                            early = Some(SessionEnd::Broken(format!("sending: {e}")));
                        }
                    }
                    r = &mut down, if !down_done => {
                        down_done = true;
                        early = r;
                    }
                }
            }
            early
        };
        let _ = self.writer.finish().await;
        if let Some(end) = early {
            return end;
        }
        SessionEnd::Completed
    }
}

/// A control frame in the data phase: the gateway's `Closed` and its reason, or a protocol error.
fn closed_or_broken(bytes: &[u8]) -> SessionEnd {
    match frame::decode_response(bytes) {
        Ok(Some((Response::Closed { reason }, _))) => SessionEnd::ClosedByGateway(reason),
        _ => SessionEnd::Broken("unexpected control frame from the gateway".into()),
    }
}

/// `ward connect --listen`: every local connection becomes its own authorized session.
pub async fn listen(
    client: Arc<Client>,
    device: String,
    addr: SocketAddr,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding local port {addr}"))?;
    let local = listener.local_addr()?;
    eprintln!(
        "ward: forwarding {local} → {device} through {}; Ctrl-C to stop",
        client.gateways()
    );
    if let Some(tx) = ready {
        let _ = tx.send(local);
    }
    loop {
        let (sock, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // E.g. out of descriptors: keep forwarding once some are free again.
                eprintln!("ward: accepting a local connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let client = client.clone();
        let device = device.clone();
        tokio::spawn(async move {
            let waiting = || {
                eprintln!(
                    "ward: {from} → {device}: waiting: the gateway's limit of sessions at once on one connection is reached; this one opens when another session ends (close one, or ask the gateway's administrator about max_sessions_per_connection)"
                )
            };
            match client.open_with(&device, false, None, &waiting).await {
                Ok(session) => {
                    let id = session.session_id.clone();
                    let via = session
                        .gateway
                        .as_ref()
                        .map(|g| format!(" via {g}"))
                        .unwrap_or_default();
                    eprintln!(
                        "ward: {from} → {device}: session {id} opened (rule {}){via}",
                        session.rule
                    );
                    let (r, w) = sock.into_split();
                    match session.run(r, w).await {
                        SessionEnd::Completed => eprintln!("ward: session {id} closed"),
                        SessionEnd::ClosedByGateway(reason) => {
                            eprintln!(
                                "ward: session {id} ended by the gateway: {}",
                                Escaped(&reason)
                            )
                        }
                        SessionEnd::Broken(why) => eprintln!("ward: session {id} broke: {why}"),
                    }
                }
                Err(e) => eprintln!("ward: {from} → {device}: {}", Escaped(&format!("{e:#}"))),
            }
        });
    }
}

/// Largest review answer a client accepts (a recording or the audit log).
pub const MAX_REVIEW_BYTES: usize = 1 << 30;

/// A fresh key pair and its CSR (PEM), made on the client for `ward login`: the private key never
/// leaves this machine.
pub fn key_and_csr(name: &str) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// What `login` returns: the chain (PEM), the private key (PEM), not-after and the bound grant.
pub struct LoggedIn {
    /// Certificate chain.
    pub chain_pem: String,
    /// Private key (write it 0600).
    pub key_pem: ward_ca::Secret<String>,
    /// Not-after, Unix seconds.
    pub not_after_unix: i64,
    /// The grant the certificate is bound to.
    pub grant: Option<String>,
}

impl Client {
    /// Log in: make a key here, send the CSR with the password and TOTP code, get a certificate.
    pub async fn login(
        &self,
        user: &str,
        password: String,
        totp: Option<String>,
        grant: Option<String>,
        new_password: Option<String>,
    ) -> anyhow::Result<LoggedIn> {
        let (key_pem, csr_pem) = key_and_csr(user)?;
        let req = Request::Login(ward_core::frame::Login {
            user: user.to_owned(),
            password,
            totp,
            csr_pem,
            grant,
            new_password,
        });
        match self.request(&req).await? {
            Response::Issued {
                chain_pem,
                not_after_unix,
                grant,
            } => Ok(LoggedIn {
                chain_pem,
                key_pem: ward_ca::Secret::new(key_pem),
                not_after_unix,
                grant,
            }),
            Response::Denied { reason } => bail!("{reason}"),
            // Typed refusals get their sentence whatever the gateway's wording.
            other => Err(unexpected(other).into()),
        }
    }

    /// An access operation: `Ok(Left(response))` for single answers, `Ok(Right(bytes))` for
    /// streamed listings (JSON lines).
    pub async fn access(&self, op: ward_core::frame::AccessOp) -> anyhow::Result<AccessAnswer> {
        self.listing_or_reply(Request::Access(op)).await
    }

    /// Sends `request` and reads an answer that is a streamed listing (JSON lines), an access
    /// reply or a message.
    async fn listing_or_reply(&self, request: Request) -> anyhow::Result<AccessAnswer> {
        let (r, w) = self.stream().await?;
        let mut writer = FrameWriter::new(w);
        self.sent(writer.write_request(&request).await).await?;
        let mut reader = FrameReader::new(r);
        let answer = self.answer(&mut reader).await?;
        let out = match answer {
            Response::Stream { .. } => {
                AccessAnswer::Lines(datapath::read_stream(&mut reader, MAX_REVIEW_BYTES).await?)
            }
            Response::Access(reply) => AccessAnswer::Reply(reply),
            Response::Ok { message } => AccessAnswer::Message(message),
            Response::Denied { reason } => bail!("refused: {reason}"),
            other => return Err(unexpected(other).into()),
        };
        let _ = writer.finish().await;
        Ok(out)
    }
}

impl Client {
    /// A live-session operation (security and admin): `Lines` (JSON lines, one per session) for
    /// the listing, `Message` after ending one.
    pub async fn live(&self, op: ward_core::frame::LiveOp) -> anyhow::Result<AccessAnswer> {
        self.listing_or_reply(Request::Live(op)).await
    }
}

impl Client {
    /// A credential-vault operation (admins): `Entry` after a set or rotation, `Message` after a
    /// removal, `Lines` (JSON lines of `VaultEntryInfo`) for the listing.
    pub async fn vault(&self, op: ward_core::frame::VaultOp) -> anyhow::Result<VaultAnswer> {
        let (r, w) = self.stream().await?;
        let mut writer = FrameWriter::new(w);
        self.sent(writer.write_request(&Request::Vault(op)).await)
            .await?;
        let mut reader = FrameReader::new(r);
        let answer = self.answer(&mut reader).await?;
        let out = match answer {
            Response::Stream { .. } => {
                VaultAnswer::Lines(datapath::read_stream(&mut reader, MAX_REVIEW_BYTES).await?)
            }
            Response::Vault(reply) => match *reply {
                ward_core::frame::VaultReply::Entry { entry, message } => {
                    VaultAnswer::Entry { entry, message }
                }
            },
            Response::Ok { message } => VaultAnswer::Message(message),
            Response::Denied { reason } => bail!("refused: {reason}"),
            other => return Err(unexpected(other).into()),
        };
        let _ = writer.finish().await;
        Ok(out)
    }
}

impl Client {
    /// `ward keys`: the JSON lines the gateway streams back (admin identities only).
    pub async fn keys(&self, op: ward_core::frame::KeysOp) -> anyhow::Result<Vec<u8>> {
        let (r, w) = self.stream().await?;
        let mut writer = FrameWriter::new(w);
        self.sent(writer.write_request(&Request::Keys(op)).await)
            .await?;
        let mut reader = FrameReader::new(r);
        let answer = self.answer(&mut reader).await?;
        let out = match answer {
            Response::Stream { .. } => datapath::read_stream(&mut reader, MAX_REVIEW_BYTES).await?,
            Response::Ok { message } => message.into_bytes(),
            Response::Denied { reason } => bail!("refused: {reason}"),
            other => return Err(unexpected(other).into()),
        };
        let _ = writer.finish().await;
        Ok(out)
    }
}

/// The answer to [`Client::vault`].
#[derive(Debug)]
pub enum VaultAnswer {
    /// An entry after a change, and what was done.
    Entry {
        /// The entry.
        entry: ward_core::frame::VaultEntryInfo,
        /// What was done.
        message: String,
    },
    /// A message.
    Message(String),
    /// JSON lines.
    Lines(Vec<u8>),
}

/// The answer to [`Client::access`].
#[derive(Debug)]
pub enum AccessAnswer {
    /// One object.
    Reply(Box<ward_core::frame::AccessReply>),
    /// A message.
    Message(String),
    /// JSON lines.
    Lines(Vec<u8>),
}

impl Client {
    /// Ask the gateway for a review operation; returns the streamed body, or an `Ok` message's
    /// text as bytes.
    pub async fn review(&self, review: ward_core::frame::Review) -> anyhow::Result<Vec<u8>> {
        self.review_with(review, &|_| ()).await
    }

    /// A review request followed by `body` as data frames and `EOF` (`Review::SignEvidence`
    /// sends the `SHA256SUMS` to sign this way); the answer as [`Client::review`] returns it.
    pub async fn review_upload(
        &self,
        review: ward_core::frame::Review,
        body: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let (r, w) = self.stream().await?;
        let mut writer = FrameWriter::new(w);
        self.sent(writer.write_request(&Request::Review(review)).await)
            .await?;
        self.sent(datapath::write_stream(&mut writer, body).await)
            .await?;
        let mut reader = FrameReader::new(r);
        let body = match self.answer(&mut reader).await? {
            Response::Ok { message } => message.into_bytes(),
            other => return Err(unexpected(other).into()),
        };
        let _ = writer.finish().await;
        Ok(body)
    }

    /// [`Client::review`], telling `progress` the bytes received so far (for a progress bar).
    pub async fn review_with(
        &self,
        review: ward_core::frame::Review,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> anyhow::Result<Vec<u8>> {
        let (r, w) = self.stream().await?;
        let mut writer = FrameWriter::new(w);
        self.sent(writer.write_request(&Request::Review(review)).await)
            .await?;
        let mut reader = FrameReader::new(r);
        let answer = self.answer(&mut reader).await?;
        let body = match answer {
            Response::Stream { .. } => {
                datapath::read_stream_with(&mut reader, MAX_REVIEW_BYTES, progress).await?
            }
            Response::Ok { message } => message.into_bytes(),
            other => return Err(unexpected(other).into()),
        };
        let _ = writer.finish().await;
        Ok(body)
    }
}
