//! `ward-bench`: Ward's data-path benchmark (issue #3).
//!
//! Everything runs on 127.0.0.1, bounded in time, and prints figures only (no assertions):
//!
//! 1. one bulk session's throughput through a sink device: direct TCP, Ward over QUIC, Ward over the
//!    TLS/TCP fallback, and — when the programs are installed — a `socat` relay, a `stunnel4` TLS 1.3
//!    mutual-TLS pair and `ssh -L -c aes128-gcm@openssh.com`;
//! 2. 64-byte request/response round trips against an echo device (p50/p99, and what Ward adds);
//! 3. session open time on an existing QUIC connection and with a new connection each time, plus how
//!    many new mutual-TLS QUIC connections (each carrying one session) complete per second;
//! 4. 100 concurrent bulk sessions, aggregate.
//!
//! Layout: the gateway runs in its own tokio runtime (threads `ward-gw`, 2 workers, as `ward gateway`
//! builds it), the client in another (`ward-cl`, 2 workers, as `ward connect` builds it) driven
//! exactly as `ward connect --listen` (`ward::client::listen`), the devices in a third (`bench-dev`),
//! and the load generator is plain blocking sockets on OS threads (`bench-gen`) talking TCP to the
//! local port, as telnet or curl would. All of them share the machine's cores, as the baselines'
//! processes do. CPU is read per thread group from /proc.
//!
//! Run: `cargo run --release -p ward-tests --bin ward-bench -- [--quick] [--out docs/benchmarks.md]`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ward::client::{Client, IdentityFiles, Transport};
use ward_ca::{Ca, Clock, IssueRequest, Kind, SystemClock};

const USAGE: &str = "usage: ward-bench [--quick] [--out FILE] [--no-peers]

  --quick      about 1 s per bulk figure and fewer samples (a smoke run, ~20 s in all)
  --out FILE   also write the report (markdown) to FILE, e.g. docs/benchmarks.md
  --no-peers   skip the socat / stunnel4 / ssh baselines even when installed
  --only TEXT  profiling aid: bulk-test only the paths whose name contains TEXT, print, stop
  --bulk-secs S  length of one bulk run (default 2.5, or 1 with --quick)";

/// Generator write size (performance.md: 64–256 KiB).
const WRITE_CHUNK: usize = 256 * 1024;
/// Request/response size for the round-trip figure.
const RR_SIZE: usize = 64;

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    out: Option<PathBuf>,
    peers: bool,
    /// Profiling aid: only bulk-test the paths whose name contains this, then stop.
    only: Option<String>,
    /// One bulk measurement lasts this long…
    bulk: Duration,
    /// …and is repeated this many times per path (the median is reported).
    reps: usize,
    concurrent: usize,
    rr_samples: usize,
    opens: usize,
    conn_rate_for: Duration,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut quick = false;
        let mut out = None;
        let mut peers = true;
        let mut only = None;
        let mut bulk_secs: Option<f64> = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--no-peers" => peers = false,
                "--out" => {
                    out = Some(PathBuf::from(
                        args.next()
                            .ok_or_else(|| anyhow!("--out needs a file\n{USAGE}"))?,
                    ))
                }
                "--only" => {
                    only = Some(
                        args.next()
                            .ok_or_else(|| anyhow!("--only needs text\n{USAGE}"))?,
                    )
                }
                "--bulk-secs" => {
                    bulk_secs = Some(
                        args.next()
                            .and_then(|v| v.parse::<f64>().ok())
                            .filter(|v| *v > 0.0 && *v < 600.0)
                            .ok_or_else(|| anyhow!("--bulk-secs needs seconds\n{USAGE}"))?,
                    )
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        let mut o = if quick {
            Opts {
                quick,
                out,
                peers,
                only,
                bulk: Duration::from_secs(1),
                reps: 1,
                concurrent: 100,
                rr_samples: 2_000,
                opens: 100,
                conn_rate_for: Duration::from_secs(1),
            }
        } else {
            Opts {
                quick,
                out,
                peers,
                only,
                bulk: Duration::from_millis(2_500),
                reps: 3,
                concurrent: 100,
                rr_samples: 20_000,
                opens: 300,
                conn_rate_for: Duration::from_secs(3),
            }
        };
        if let Some(secs) = bulk_secs {
            o.bulk = Duration::from_secs_f64(secs);
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc (Linux only; figures are omitted elsewhere).

/// Parent pid and utime + stime (+ cutime + cstime when `reaped`: CPU of children already waited
/// for, e.g. socat's per-connection forks), in clock ticks, from a /proc `stat` line.
fn stat_ticks_with(stat: &str, reaped: bool) -> Option<(u32, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the ')' the fields are: state(3) ppid(4) … utime(14) stime(15).
    let ppid = f.get(1)?.parse().ok()?;
    let mut ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    if reaped {
        ticks += f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?;
    }
    Some((ppid, ticks))
}

fn stat_ticks(stat: &str) -> Option<(u32, u64)> {
    stat_ticks_with(stat, false)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// CPU ticks of this process's thread groups and of the external peers' process trees.
#[derive(Debug, Default, Clone)]
struct CpuSnap {
    gateway: u64,
    client: u64,
    total: u64,
    /// pid → ticks, for every process descending from one of the roots.
    procs: HashMap<u32, u64>,
}

fn cpu_snap(roots: &[u32]) -> CpuSnap {
    let mut snap = CpuSnap::default();
    if let Ok(s) = std::fs::read_to_string("/proc/self/stat") {
        snap.total = stat_ticks(&s).map_or(0, |(_, t)| t);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let path = e.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let ticks = std::fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|s| stat_ticks(&s))
                .map_or(0, |(_, t)| t);
            if comm.starts_with("ward-gw") {
                snap.gateway += ticks;
            } else if comm.starts_with("ward-cl") {
                snap.client += ticks;
            }
        }
    }
    if !roots.is_empty() {
        let mut all: HashMap<u32, (u32, u64)> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(v) = std::fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .and_then(|s| stat_ticks_with(&s, true))
                {
                    all.insert(pid, v);
                }
            }
        }
        for (&pid, &(_, ticks)) in &all {
            // Walk up the parent chain to see whether `pid` descends from a root.
            let mut cur = pid;
            for _ in 0..64 {
                if roots.contains(&cur) {
                    snap.procs.insert(pid, ticks);
                    break;
                }
                match all.get(&cur) {
                    Some(&(ppid, _)) if ppid > 1 => cur = ppid,
                    _ => break,
                }
            }
        }
    }
    snap
}

/// CPU seconds spent between two snapshots by (the gateway, the client, the external peer's processes,
/// this whole process).
#[derive(Debug, Default, Clone, Copy)]
struct CpuUse {
    gateway: f64,
    client: f64,
    peer: f64,
    total: f64,
}

fn cpu_use(a: &CpuSnap, b: &CpuSnap, hz: f64) -> CpuUse {
    let peer: u64 = b
        .procs
        .iter()
        .map(|(pid, t)| t.saturating_sub(a.procs.get(pid).copied().unwrap_or(0)))
        .sum();
    CpuUse {
        gateway: b.gateway.saturating_sub(a.gateway) as f64 / hz,
        client: b.client.saturating_sub(a.client) as f64 / hz,
        peer: peer as f64 / hz,
        total: b.total.saturating_sub(a.total) as f64 / hz,
    }
}

// ---------------------------------------------------------------------------------------------
// Devices: a sink (reads and discards until EOF, then closes) on OS threads.

struct Sink {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
}

fn start_sink() -> Result<Sink> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    std::thread::Builder::new()
        .name("bench-dev-sink".into())
        .spawn(move || {
            for sock in listener.incoming() {
                let Ok(mut sock) = sock else { continue };
                let counter = counter.clone();
                let _ = std::thread::Builder::new()
                    .name("bench-dev".into())
                    .spawn(move || {
                        let _ = sock.set_nodelay(true);
                        let mut buf = vec![0u8; WRITE_CHUNK];
                        loop {
                            match sock.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    counter.fetch_add(n as u64, Ordering::Relaxed);
                                }
                            }
                        }
                        let _ = sock.shutdown(Shutdown::Both);
                    });
            }
        })?;
    Ok(Sink { addr, received })
}

// ---------------------------------------------------------------------------------------------
// Load generator: blocking sockets on OS threads, the same for every path.

#[derive(Debug, Clone, Copy)]
struct Bulk {
    bytes: u64,
    secs: f64,
    cpu: CpuUse,
    /// Bytes the gateway's recordings grew by (Ward with recording on only).
    recorded: Option<u64>,
}

impl Bulk {
    fn gbps(&self) -> f64 {
        if self.secs <= 0.0 {
            return 0.0;
        }
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }
    /// CPU seconds per GB moved for the tunnel's own processes (Ward: client + gateway; a peer: its
    /// processes).
    fn tunnel_cpu_per_gb(&self) -> f64 {
        let gb = self.bytes as f64 / 1e9;
        if gb <= 0.0 {
            return 0.0;
        }
        (self.cpu.gateway + self.cpu.client + self.cpu.peer) / gb
    }
}

/// `streams` connections to `addr`, each writing for `dur`, then half-closing and waiting for the
/// device's close to come back (so every byte has reached the sink). Checks the sink got them all.
fn bulk(route: &Route, streams: usize, dur: Duration, sink: &Sink, hz: f64) -> Result<Bulk> {
    let (addr, roots) = (route.sink, route.roots.as_slice());
    if let Some(dir) = &route.recordings {
        // Earlier runs' recordings (their sessions are long closed): bound disk use.
        clear_dir(dir);
    }
    let before_sink = sink.received.load(Ordering::Relaxed);
    let cpu0 = cpu_snap(roots);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(streams);
    for _ in 0..streams {
        handles.push(std::thread::Builder::new().name("bench-gen".into()).spawn(
            move || -> Result<u64> {
                let mut s =
                    TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
                let buf = vec![0x5au8; WRITE_CHUNK];
                let t0 = Instant::now();
                let mut sent = 0u64;
                while t0.elapsed() < dur {
                    s.write_all(&buf).context("writing")?;
                    sent += buf.len() as u64;
                }
                s.shutdown(Shutdown::Write)?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest)
                    .context("waiting for the device to close")?;
                Ok(sent)
            },
        )?);
    }
    let mut sent = 0u64;
    for h in handles {
        sent += h
            .join()
            .map_err(|_| anyhow!("generator thread panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu1 = cpu_snap(roots);
    // The sink counts on its own threads; give the last read a moment to be counted.
    let deadline = Instant::now() + Duration::from_secs(2);
    while sink
        .received
        .load(Ordering::Relaxed)
        .wrapping_sub(before_sink)
        < sent
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = sink
        .received
        .load(Ordering::Relaxed)
        .wrapping_sub(before_sink);
    if got != sent {
        bail!("sink received {got} bytes of the {sent} sent to {addr}");
    }
    let recorded = match &route.recordings {
        Some(dir) => {
            // The recorder finishes and syncs off the data path; let it catch up, then measure and
            // delete (keeps disk use bounded; the sessions are closed).
            let mut last = dir_size(dir);
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(50));
                let now = dir_size(dir);
                if now == last && now > 0 {
                    break;
                }
                last = now;
            }
            Some(last)
        }
        None => None,
    };
    Ok(Bulk {
        bytes: sent,
        secs,
        cpu: cpu_use(&cpu0, &cpu1, hz),
        recorded,
    })
}

/// Total size of the regular files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Delete the regular files under `dir` (recordings of finished benchmark sessions).
fn clear_dir(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => clear_dir(&e.path()),
            Ok(_) => {
                let _ = std::fs::remove_file(e.path());
            }
            Err(_) => {}
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pcts {
    p50: f64,
    p99: f64,
}

/// Percentiles (µs) of samples in nanoseconds.
fn pcts(mut ns: Vec<u64>) -> Pcts {
    ns.sort_unstable();
    let at = |q: f64| -> f64 {
        if ns.is_empty() {
            return f64::NAN;
        }
        let i = ((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1;
        ns.get(i).copied().map_or(f64::NAN, |v| v as f64 / 1e3)
    };
    Pcts {
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// 64-byte request, 64-byte response, one at a time, over one connection.
fn round_trips(addr: SocketAddr, samples: usize) -> Result<Pcts> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = [0x42u8; RR_SIZE];
    let mut resp = [0u8; RR_SIZE];
    let warmup = 200;
    let mut ns = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let t = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp).context("reading the echo")?;
        if i >= warmup {
            ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    if resp != req {
        bail!("echo through {addr} returned different bytes");
    }
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(pcts(ns))
}

// ---------------------------------------------------------------------------------------------
// Ward: CA, identities, config, gateway and client runtimes.

struct WardSetup {
    dir: tempfile::TempDir,
    files: IdentityFiles,
}

fn ward_setup(clock: &dyn Clock) -> Result<WardSetup> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::init(dir.path(), "bench.test", false, clock.now())?;
    let mut gw = IssueRequest::new(Kind::Gateway, "gateway");
    gw.dns = vec!["localhost".into()];
    gw.ips = vec!["127.0.0.1".parse()?];
    ca.issue(&gw, clock.now())?
        .write(&dir.path().join("gateway"))?;
    let mut vendor = IssueRequest::new(Kind::Vendor, "bench");
    vendor.org = Some("acme".into());
    ca.issue(&vendor, clock.now())?
        .write(&dir.path().join("vendor"))?;
    let files = IdentityFiles::resolve(
        &dir.path().join("vendor"),
        Some(&dir.path().join(ward_ca::ROOT_CRT)),
    )?;
    Ok(WardSetup { dir, files })
}

fn ward_config(sink: SocketAddr, echo: SocketAddr, state_dir: &str) -> String {
    format!(
        r#"# Written by ward-bench.
[gateway]
listen = "127.0.0.1:0"
listen_tcp = "127.0.0.1:0"
ca = "."
cert = "gateway.crt"
key = "gateway.key"
state_dir = "{state_dir}"
max_connections = 8192
max_connections_per_source = 8192
max_sessions = 8192
max_sessions_per_connection = 1024

[[device]]
id = "sink"
address = "{sink}"
protocol = "raw"
labels = {{ bench = "yes" }}

[[device]]
id = "echo"
address = "{echo}"
protocol = "raw"
labels = {{ bench = "yes" }}

[[rule]]
name = "bench-vendor"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ labels = {{ bench = "yes" }} }}
"#
    )
}

fn runtime(name: &str, workers: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

/// `ward connect DEVICE --listen 127.0.0.1:0` inside the client runtime; returns the local port.
fn ward_listen(
    rt: &tokio::runtime::Runtime,
    client: Arc<Client>,
    device: &str,
) -> Result<SocketAddr> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let device = device.to_string();
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    rt.spawn(async move {
        if let Err(e) = ward::client::listen(client, device, any, Some(tx)).await {
            eprintln!("ward-bench: listener failed: {e:#}");
        }
    });
    rt.block_on(rx)
        .map_err(|_| anyhow!("the ward listener did not start"))
}

/// Session open times: on one existing QUIC connection, and with a new client (new connection) each
/// time. The session is closed cleanly (outside the timed part) before the next open.
async fn open_times(
    gateway: SocketAddr,
    files: &IdentityFiles,
    transport: Transport,
    n: usize,
    reuse: bool,
) -> Result<Pcts> {
    let target = gateway.to_string();
    let shared = Client::new(&target, files, transport)?;
    // Warm up (and, when reusing, establish the connection).
    for _ in 0..5 {
        let s = shared.open("echo", false, None).await?;
        s.run(tokio::io::empty(), tokio::io::sink()).await;
    }
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        let fresh;
        let client = if reuse {
            &shared
        } else {
            fresh = Client::new(&target, files, transport)?;
            &fresh
        };
        let t = Instant::now();
        let s = client.open("echo", false, None).await?;
        ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        s.run(tokio::io::empty(), tokio::io::sink()).await;
    }
    Ok(pcts(ns))
}

/// New mutual-TLS QUIC connections per second, each opening (and closing) one session, from
/// `parallel` tasks for `dur`.
async fn connection_rate(
    gateway: SocketAddr,
    files: &IdentityFiles,
    parallel: usize,
    dur: Duration,
) -> Result<f64> {
    let target = gateway.to_string();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let target = target.clone();
        let files = files.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            while start.elapsed() < dur {
                let client = Client::new(&target, &files, Transport::Quic)?;
                let s = client.open("echo", false, None).await?;
                s.run(tokio::io::empty(), tokio::io::sink()).await;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0u64;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// External peers (Debian packages): socat relay, stunnel4 pair, ssh -L.

struct Peer {
    name: &'static str,
    sink: SocketAddr,
    echo: SocketAddr,
    children: Vec<Child>,
}

impl Peer {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Only the processes this run started, by their handles.
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn have(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().with_context(|| format!("starting {cmd:?}"))
}

/// Wait until `addr` accepts and carries an echo (the path is up end to end).
fn wait_ready(addr: SocketAddr, children: &mut [Child], log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("exited ({status}) before it was ready: {}", text.trim());
            }
        }
        let ok = (|| -> Result<()> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
            s.set_read_timeout(Some(Duration::from_millis(2000)))?;
            s.write_all(b"ping")?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b)?;
            Ok(())
        })();
        if ok.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!("not ready within 10s: {}", text.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn socat_peer(sink: SocketAddr, echo: SocketAddr, dir: &Path) -> Result<Peer> {
    let socat = have("socat").ok_or_else(|| anyhow!("socat not installed"))?;
    let (a, b) = (free_port()?, free_port()?);
    let log = dir.join("socat.log");
    let mut children = Vec::new();
    for (listen, to) in [(a, sink), (b, echo)] {
        children.push(spawn_logged(
            Command::new(&socat)
                .arg("-b262144")
                .arg(format!(
                    "TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,nodelay",
                    listen.port()
                ))
                .arg(format!("TCP:{to},nodelay")),
            &log,
        )?);
    }
    wait_ready(b, &mut children, &log)?;
    Ok(Peer {
        name: "socat plain relay",
        sink: a,
        echo: b,
        children,
    })
}

fn stunnel_peer(sink: SocketAddr, echo: SocketAddr, w: &WardSetup) -> Result<Peer> {
    let stunnel = have("stunnel4")
        .or_else(|| have("stunnel"))
        .ok_or_else(|| anyhow!("stunnel4 not installed"))?;
    let d = w.dir.path();
    let (sa, sb, ca, cb) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let root = d.join(ward_ca::ROOT_CRT);
    let common =
        "foreground = yes\npid =\ndebug = 3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n";
    let mut server = common.to_string();
    for (name, accept, to) in [("sink", sa, sink), ("echo", sb, echo)] {
        let _ = write!(
            server,
            "[{name}]\naccept = {accept}\nconnect = {to}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n",
            d.join("gateway.crt").display(),
            d.join("gateway.key").display(),
            root.display()
        );
    }
    let mut client = common.to_string();
    for (name, accept, to) in [("sink", ca, sa), ("echo", cb, sb)] {
        let _ = write!(
            client,
            "[{name}]\nclient = yes\naccept = {accept}\nconnect = {to}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\ncheckIP = 127.0.0.1\nsslVersionMin = TLSv1.3\n",
            d.join("vendor.crt").display(),
            d.join("vendor.key").display(),
            root.display()
        );
    }
    std::fs::write(d.join("stunnel-server.conf"), server)?;
    std::fs::write(d.join("stunnel-client.conf"), client)?;
    let log = d.join("stunnel.log");
    let mut children = vec![
        spawn_logged(
            Command::new(&stunnel).arg(d.join("stunnel-server.conf")),
            &log,
        )?,
        spawn_logged(
            Command::new(&stunnel).arg(d.join("stunnel-client.conf")),
            &log,
        )?,
    ];
    wait_ready(cb, &mut children, &log)?;
    Ok(Peer {
        name: "stunnel4 pair, TLS 1.3, client certs verified",
        sink: ca,
        echo: cb,
        children,
    })
}

fn ssh_peer(sink: SocketAddr, echo: SocketAddr, dir: &Path) -> Result<Peer> {
    let sshd = have("sshd").ok_or_else(|| anyhow!("sshd not installed (openssh-server)"))?;
    let ssh = have("ssh").ok_or_else(|| anyhow!("ssh not installed"))?;
    let keygen = have("ssh-keygen").ok_or_else(|| anyhow!("ssh-keygen not installed"))?;
    let d = dir.join("ssh");
    std::fs::create_dir_all(&d)?;
    // sshd insists on its privilege-separation directory.
    std::fs::create_dir_all("/run/sshd").context("sshd needs /run/sshd")?;
    for (file, ty) in [("host_key", "ed25519"), ("user_key", "ed25519")] {
        let st = Command::new(&keygen)
            .args(["-q", "-t", ty, "-N", "", "-f"])
            .arg(d.join(file))
            .stdin(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("ssh-keygen failed");
        }
    }
    std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys"))?;
    let user = Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let port = free_port()?;
    let cfg = format!(
        "Port {}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nUsePAM no\nStrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowTcpForwarding yes\nCiphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com\n",
        port.port(),
        d.join("host_key").display(),
        d.join("sshd.pid").display(),
        d.join("authorized_keys").display()
    );
    std::fs::write(d.join("sshd_config"), cfg)?;
    let log = d.join("ssh.log");
    let mut children = vec![spawn_logged(
        Command::new(&sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config")),
        &log,
    )?];
    // Let sshd bind before the client tries.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(port).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (a, b) = (free_port()?, free_port()?);
    children.push(spawn_logged(
        Command::new(&ssh)
            .args([
                "-N",
                "-T",
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ExitOnForwardFailure=yes",
                "-c",
                "aes128-gcm@openssh.com",
            ])
            .arg("-i")
            .arg(d.join("user_key"))
            .arg("-p")
            .arg(port.port().to_string())
            .arg("-L")
            .arg(format!("127.0.0.1:{}:{sink}", a.port()))
            .arg("-L")
            .arg(format!("127.0.0.1:{}:{echo}", b.port()))
            .arg(format!("{user}@127.0.0.1")),
        &log,
    )?);
    wait_ready(b, &mut children, &log)?;
    Ok(Peer {
        name: "ssh -L, aes128-gcm@openssh.com",
        sink: a,
        echo: b,
        children,
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

struct Route {
    name: String,
    sink: SocketAddr,
    echo: SocketAddr,
    roots: Vec<u32>,
    kind: PathKind,
    /// The gateway's recordings directory, when this route records.
    recordings: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Direct,
    WardQuic,
    WardTcp,
    WardQuicNoRec,
    Peer,
}

#[derive(Default)]
struct Results {
    bulk: Vec<(String, PathKind, Bulk)>,
    rr: Vec<(String, PathKind, Pcts)>,
    concurrent: Vec<(String, PathKind, Bulk)>,
    open_quic_existing: Option<Pcts>,
    open_quic_existing_norec: Option<Pcts>,
    open_quic_new: Option<Pcts>,
    open_tcp_new: Option<Pcts>,
    conn_rate: Option<(usize, f64)>,
    skipped: Vec<String>,
}

fn median_bulk(mut runs: Vec<Bulk>) -> Option<Bulk> {
    runs.sort_by(|a, b| a.gbps().total_cmp(&b.gbps()));
    let mid = runs.len() / 2;
    runs.get(mid).copied()
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

fn render(opts: &Opts, r: &Results, cmd: &str) -> String {
    let mut s = String::new();
    let direct_bulk = r.bulk.iter().find(|b| b.1 == PathKind::Direct).map(|b| b.2);
    let direct_rr = r.rr.iter().find(|b| b.1 == PathKind::Direct).map(|b| b.2);
    let best_peer = r
        .bulk
        .iter()
        .filter(|b| b.0.starts_with("stunnel") || b.0.starts_with("ssh"))
        .max_by(|a, b| a.2.gbps().total_cmp(&b.2.gbps()));
    let best_peer_cpu = r
        .bulk
        .iter()
        .filter(|b| b.0.starts_with("stunnel") || b.0.starts_with("ssh"))
        .map(|b| b.2.tunnel_cpu_per_gb())
        .min_by(f64::total_cmp);

    let _ = writeln!(
        s,
        "### One bulk session (sink device, {:.1} s per run, median of {})\n",
        opts.bulk.as_secs_f64(),
        opts.reps
    );
    let _ = writeln!(s, "| path | Gbit/s | × direct TCP | × best peer | tunnel CPU s/GB | bench-process CPU s/GB (generator + sink, + Ward when in the path) |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (name, kind, b) in &r.bulk {
        let vs_direct = direct_bulk.map_or(f64::NAN, |d| b.gbps() / d.gbps());
        let vs_peer = best_peer.map_or(String::from("–"), |p| {
            format!("{:.2}", b.gbps() / p.2.gbps())
        });
        let tunnel = if *kind == PathKind::Direct {
            "–".to_string()
        } else {
            format!("{:.2}", b.tunnel_cpu_per_gb())
        };
        let whole = b.cpu.total / (b.bytes as f64 / 1e9);
        let _ = writeln!(
            s,
            "| {name} | {:.2} | {vs_direct:.3} | {vs_peer} | {tunnel} | {whole:.2} |",
            b.gbps()
        );
    }
    let _ = writeln!(
        s,
        "\n### 64-byte request/response round trip (echo device, one connection, {} samples)\n",
        opts.rr_samples
    );
    let _ = writeln!(
        s,
        "| path | p50 µs | p99 µs | added p50 µs | added p99 µs |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for (name, _, p) in &r.rr {
        let (a50, a99) = direct_rr.map_or((f64::NAN, f64::NAN), |d| (p.p50 - d.p50, p.p99 - d.p99));
        let _ = writeln!(
            s,
            "| {name} | {:.1} | {:.1} | {a50:.1} | {a99:.1} |",
            p.p50, p.p99
        );
    }
    let _ = writeln!(s, "\n### Session open (echo device, {} opens each; the open is timed, the clean close is not)\n", opts.opens);
    let _ = writeln!(s, "| figure | median µs | p99 µs |");
    let _ = writeln!(s, "|---|---:|---:|");
    for (name, p) in [
        (
            "QUIC, new stream on an existing connection",
            r.open_quic_existing,
        ),
        (
            "QUIC, new stream on an existing connection, recording off",
            r.open_quic_existing_norec,
        ),
        (
            "QUIC, new connection (new client) each time",
            r.open_quic_new,
        ),
        ("TLS/TCP fallback, new connection each time", r.open_tcp_new),
    ] {
        if let Some(p) = p {
            let _ = writeln!(s, "| {name} | {:.0} | {:.0} |", p.p50, p.p99);
        }
    }
    if let Some((par, rate)) = r.conn_rate {
        let _ = writeln!(s, "| new mutual-TLS QUIC connections per second ({par} in parallel, each opens and closes one session) | {rate:.0}/s | |");
    }
    if !r.concurrent.is_empty() {
        let _ = writeln!(
            s,
            "\n### {} concurrent bulk sessions (aggregate, {:.1} s)\n",
            opts.concurrent,
            opts.bulk.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "| path | aggregate Gbit/s | × one session on the same path |"
        );
        let _ = writeln!(s, "|---|---:|---:|");
        for (name, _, b) in &r.concurrent {
            let one = r
                .bulk
                .iter()
                .find(|x| &x.0 == name)
                .map_or(f64::NAN, |x| b.gbps() / x.2.gbps());
            let _ = writeln!(s, "| {name} | {:.2} | {one:.2} |", b.gbps());
        }
    }

    // Targets from docs/../performance.md.
    let _ = writeln!(s, "\n### Against the targets (performance.md)\n");
    let _ = writeln!(s, "| target | figure this run | verdict |");
    let _ = writeln!(s, "|---|---|---|");
    for kind in [PathKind::WardQuic, PathKind::WardTcp] {
        let label = if kind == PathKind::WardQuic {
            "QUIC"
        } else {
            "TLS/TCP fallback"
        };
        if let (Some(w), Some(p)) = (r.bulk.iter().find(|b| b.1 == kind), best_peer) {
            let ratio = w.2.gbps() / p.2.gbps();
            let _ = writeln!(
                s,
                "| one bulk session over {label} ≥ 1.0× the faster of stunnel / ssh -L (recording on) | {:.2} Gbit/s = {ratio:.2}× {} ({:.2}); recording on | {} |",
                w.2.gbps(),
                p.0,
                p.2.gbps(),
                met(ratio >= 1.0)
            );
        }
        if let (Some(w), Some(best)) = (r.bulk.iter().find(|b| b.1 == kind), best_peer_cpu) {
            let c = w.2.tunnel_cpu_per_gb();
            let _ = writeln!(s, "| CPU s per GB (client + gateway) ≤ best peer's, {label} | {c:.2} vs {best:.2} | {} |", met(c <= best));
        }
        if let (Some(w), Some(d)) = (r.rr.iter().find(|b| b.1 == kind), direct_rr) {
            let (a50, a99) = (w.2.p50 - d.p50, w.2.p99 - d.p99);
            let _ = writeln!(
                s,
                "| added round trip vs direct TCP, {label}: p50 ≤ 100 µs, p99 ≤ 500 µs | +{a50:.1} µs p50, +{a99:.1} µs p99 | {} |",
                met(a50 <= 100.0 && a99 <= 500.0)
            );
        }
    }
    if let (Some(o), Some(d)) = (r.open_quic_existing, direct_rr) {
        let budget = d.p50 + 200.0;
        let _ = writeln!(
            s,
            "| new session on an open connection ≤ 1 round trip + 200 µs | median {:.0} µs vs {budget:.0} µs (direct TCP p50 {:.1} µs + 200) | {} |",
            o.p50,
            d.p50,
            met(o.p50 <= budget)
        );
    }
    if let Some((par, rate)) = r.conn_rate {
        let _ = writeln!(s, "| new mutual-TLS QUIC connections ≥ 1000 per second sustained | {rate:.0}/s ({par} parallel clients, same machine as the gateway) | {} |", met(rate >= 1000.0));
    }
    for kind in [PathKind::WardQuic, PathKind::WardTcp] {
        if let (Some(c), Some(one)) = (
            r.concurrent.iter().find(|b| b.1 == kind),
            r.bulk.iter().find(|b| b.1 == kind),
        ) {
            let ratio = c.2.gbps() / one.2.gbps();
            let _ = writeln!(
                s,
                "| {} concurrent bulk sessions ≥ 0.8× one session, {} | {ratio:.2}× | {} |",
                opts.concurrent,
                c.0,
                met(ratio >= 0.8)
            );
        }
    }
    let quic_on = r.bulk.iter().find(|b| b.1 == PathKind::WardQuic);
    let quic_off = r.bulk.iter().find(|b| b.1 == PathKind::WardQuicNoRec);
    if let (Some(on), Some(off)) = (quic_on, quic_off) {
        let ratio = on.2.gbps() / off.2.gbps();
        let _ = writeln!(
            s,
            "| recording on ÷ recording off ≥ 0.9 (QUIC bulk) | {:.2} ÷ {:.2} Gbit/s = {ratio:.2} | {} |",
            on.2.gbps(),
            off.2.gbps(),
            met(ratio >= 0.9)
        );
    }
    for (name, _, b) in r.bulk.iter().filter(|b| b.2.recorded.is_some()) {
        let rec = b.recorded.unwrap_or(0) as f64;
        let ratio = rec / b.bytes as f64;
        let _ = writeln!(
            s,
            "| recording size ÷ payload bytes (bulk) ≤ 1.05, {name} | {:.3} GB recorded for {:.3} GB moved = {ratio:.4} | {} |",
            rec / 1e9,
            b.bytes as f64 / 1e9,
            met(ratio <= 1.05 && rec > 0.0)
        );
    }
    let _ = writeln!(s, "| 10,000 concurrent idle sessions: gateway RSS ≤ 1 GiB | not measured by this run (issue #7) | – |");
    if !r.skipped.is_empty() {
        let _ = writeln!(s, "\nSkipped: {}", r.skipped.join("; "));
    }
    let _ = writeln!(s, "\nCommand: `{cmd}`");
    s
}

fn loadavg() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine(load_at_start: &str) -> String {
    let out = |c: &mut Command| {
        c.output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let date = out(Command::new("date").arg("-u"));
    let nproc = out(&mut Command::new("nproc"));
    let rustc = out(Command::new("rustc").arg("--version"));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let aes = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.contains(" aes "))
        .unwrap_or(false);
    let kernel = out(Command::new("uname").arg("-r"));
    let load_now = loadavg();
    format!(
        "- date: {date}\n- machine: {nproc} CPUs, {cpu}{}, Linux {kernel}, loopback only\n- rustc: {rustc}; release profile (thin LTO)\n- load average (1/5/15 min) before the run: {load_at_start}, after: {load_now} (a shared machine: other work inflates the spread)\n",
        if aes { " (AES-NI)" } else { "" }
    )
}

const DOC_HEAD: &str = r#"# Benchmarks

Ward's data-path benchmark (issue #3). It measures, in one run on 127.0.0.1, one bulk session's
throughput, the 64-byte round trip, session open times and 100 concurrent bulk sessions, for direct
TCP (the baseline), Ward over QUIC and Ward over the TLS/TCP fallback, and — when installed — the peers
a user would pick instead of Ward: a `socat` plain relay, a `stunnel4` TLS 1.3 pair with client
certificates required and verified (using Ward's own CA and identities) and `ssh -L -c
aes128-gcm@openssh.com` to a throwaway sshd. The targets are in the team's performance notes
(performance.md); figures are ratios against baselines measured in the same run, because absolute
figures drift on shared machines. It prints figures only; nothing asserts on time.

## Running it

```sh
# Debian peers for the baselines (optional; rows are skipped when missing)
apt-get install stunnel4 openssh-server socat
cargo run --release -p ward-tests --bin ward-bench -- --out docs/benchmarks.md   # ~1.5 min
cargo run --release -p ward-tests --bin ward-bench -- --quick                    # ~20 s smoke run
```

`scripts/bench.sh` does both steps. Always release mode: a debug build of quinn is about ten times slower.

## How it is measured

- **Layout.** One process, separate runtimes so the parts can use both cores as real deployments do:
  the gateway (`ward::gateway::Gateway`, a 2-worker tokio runtime, threads `ward-gw`), the client (a
  2-worker runtime, threads `ward-cl`) driven exactly as `ward connect --listen` (`ward::client::listen`:
  every local TCP connection becomes its own session), the devices (a sink on OS threads, and
  `ward::sim::echo` in its own runtime), and the load generator (blocking sockets on OS threads, like
  iperf3 or telnet) talking TCP to the listener's local port. The same generator talks directly to
  the device for the baseline, and to the peers' local ports. Every path goes through the same
  loopback TCP hops at the ends; the peers run as separate processes. Tracing has no subscriber
  installed (the gateway emits only per-session events, none per byte).
- **Bulk.** The generator writes 256 KiB chunks for a fixed time, half-closes, and waits until the
  device's close comes back through the tunnel, so every byte has reached the sink (the sink's count
  is checked). Gbit/s = bytes ÷ (connect → close seen). Runs of all paths are interleaved and the
  median of the repetitions is reported.
- **CPU.** utime + stime from /proc: Ward's client and gateway thread groups (`ward-cl`, `ward-gw`),
  or the peer's process tree (both ends), over the bulk run; "whole bench process" also includes the
  generator and the sink.
- **Round trip.** One connection, 64 bytes written, 64 bytes read back, one at a time, `TCP_NODELAY`
  on the generator's socket, 200 warm-up exchanges discarded.
- **Session open.** `Client::open` to the echo device until the gateway's `Opened` arrives (policy
  check and device dial included); the session is then closed cleanly, untimed. "New connection"
  builds a new `Client` (untimed: it reads the identity files) and times the handshake plus the open.
  The connection rate runs 16 such clients in parallel, each opening and closing one session.
- **Concurrent.** 100 generator threads at once, through one `ward connect --listen` (QUIC: 100
  streams on one connection; TLS/TCP: 100 connections); aggregate Gbit/s.
- **Recording.** Two gateways run side by side with the same config: one as deployed (every session
  recorded to `<state_dir>/recordings` on local disk), one started with the benchmark-only
  `Options { no_recording: true }`. Recording size is the growth of the recordings directory over a
  bulk run (measured once the recorder has caught up; the files are then deleted to bound disk use).
- **Not covered yet.** 10,000 idle sessions' RSS (issue #7); gateway and client in separate processes.

## Latest results

"#;

// ---------------------------------------------------------------------------------------------

fn main() -> Result<()> {
    let opts = Opts::parse()?;
    let cmd = format!(
        "cargo run --release -p ward-tests --bin ward-bench --{}{}",
        if opts.quick { " --quick" } else { "" },
        opts.out
            .as_ref()
            .map(|p| format!(" --out {}", p.display()))
            .unwrap_or_default()
    );
    if cfg!(debug_assertions) {
        eprintln!("ward-bench: this is a debug build; figures will be far too low. Use --release.");
    }
    let hz = clock_ticks_per_sec();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let wall = Instant::now();
    let load_at_start = loadavg();

    // Devices.
    let sink = start_sink()?;
    let dev_rt = runtime("bench-dev", 1)?;
    let echo = dev_rt
        .block_on(ward::sim::echo("127.0.0.1:0".parse()?))?
        .addr;

    // Ward: one gateway as deployed (recording on) and one with recording off (benchmark-only
    // option), same config otherwise, both in the gateway runtime.
    let w = ward_setup(clock.as_ref())?;
    let gw_rt = runtime("ward-gw", 2)?;
    let cl_rt = runtime("ward-cl", 2)?;
    let mut gateways = Vec::new();
    let mut routes_of = Vec::new();
    for (state, recording) in [("state", true), ("state-norec", false)] {
        let config_path = w.dir.path().join(format!("{state}.toml"));
        std::fs::write(&config_path, ward_config(sink.addr, echo, state))?;
        let config = ward::gateway::load_config(&config_path)?;
        let options = ward::gateway::Options {
            no_recording: !recording,
            ..Default::default()
        };
        let gateway = gw_rt.block_on(ward::gateway::Gateway::start_with(
            config,
            clock.clone(),
            options,
        ))?;
        let quic_addr = gateway.quic_addr();
        let tcp_addr = gateway
            .tcp_addr()
            .ok_or_else(|| anyhow!("the gateway has no TCP listener"))?;
        let quic = Arc::new(Client::new(
            &quic_addr.to_string(),
            &w.files,
            Transport::Quic,
        )?);
        let tcp = Arc::new(Client::new(
            &tcp_addr.to_string(),
            &w.files,
            Transport::Tcp,
        )?);
        let recordings = recording.then(|| w.dir.path().join(state).join(ward::RECORDINGS_DIR));
        routes_of.push((
            quic_addr,
            tcp_addr,
            ward_listen(&cl_rt, quic.clone(), "sink")?,
            ward_listen(&cl_rt, quic, "echo")?,
            ward_listen(&cl_rt, tcp.clone(), "sink")?,
            ward_listen(&cl_rt, tcp, "echo")?,
            recordings,
        ));
        gateways.push(gateway);
    }
    let [(quic_addr, tcp_addr, quic_sink, quic_echo, tcp_sink, tcp_echo, rec_dir), (nr_quic_addr, _, nr_sink, nr_echo, _, _, _)] =
        <[_; 2]>::try_from(routes_of).map_err(|_| anyhow!("expected two gateways"))?;

    let mut results = Results::default();
    let mut paths = vec![
        Route {
            name: "direct TCP".into(),
            sink: sink.addr,
            echo,
            roots: vec![],
            kind: PathKind::Direct,
            recordings: None,
        },
        Route {
            name: "Ward, QUIC".into(),
            sink: quic_sink,
            echo: quic_echo,
            roots: vec![],
            kind: PathKind::WardQuic,
            recordings: rec_dir.clone(),
        },
        Route {
            name: "Ward, TLS/TCP fallback".into(),
            sink: tcp_sink,
            echo: tcp_echo,
            roots: vec![],
            kind: PathKind::WardTcp,
            recordings: rec_dir,
        },
        Route {
            name: "Ward, QUIC, recording off".into(),
            sink: nr_sink,
            echo: nr_echo,
            roots: vec![],
            kind: PathKind::WardQuicNoRec,
            recordings: None,
        },
    ];
    let mut peers = Vec::new();
    if opts.peers {
        for name in ["socat", "stunnel4", "ssh -L"] {
            let started = match name {
                "socat" => socat_peer(sink.addr, echo, w.dir.path()),
                "stunnel4" => stunnel_peer(sink.addr, echo, &w),
                _ => ssh_peer(sink.addr, echo, w.dir.path()),
            };
            match started {
                Ok(p) => {
                    paths.push(Route {
                        name: p.name.into(),
                        sink: p.sink,
                        echo: p.echo,
                        roots: p.pids(),
                        kind: PathKind::Peer,
                        recordings: None,
                    });
                    peers.push(p);
                }
                Err(e) => {
                    eprintln!("ward-bench: skipping {name}: {e:#}");
                    results.skipped.push(format!("{name} ({e:#})"));
                }
            }
        }
    } else {
        results.skipped.push("peers (--no-peers)".into());
    }

    if let Some(only) = &opts.only {
        paths.retain(|p| p.name.contains(only.as_str()));
        eprintln!("ward-bench: --only {only:?}: {} path(s)", paths.len());
    }

    // 1. Bulk, interleaved repetitions.
    eprintln!(
        "ward-bench: bulk, {} path(s) × {} run(s) × {:?}",
        paths.len(),
        opts.reps,
        opts.bulk
    );
    let mut runs: Vec<Vec<Bulk>> = paths.iter().map(|_| Vec::new()).collect();
    for _ in 0..opts.reps {
        for (p, out) in paths.iter().zip(runs.iter_mut()) {
            let b = bulk(p, 1, opts.bulk, &sink, hz)
                .with_context(|| format!("bulk through {}", p.name))?;
            eprintln!("  {:<48} {:>7.2} Gbit/s", p.name, b.gbps());
            out.push(b);
        }
    }
    for (p, r) in paths.iter().zip(runs) {
        if let Some(b) = median_bulk(r) {
            results.bulk.push((p.name.clone(), p.kind, b));
        }
    }

    if opts.only.is_some() {
        for (name, _, b) in &results.bulk {
            let c = b.cpu;
            println!(
                "{name}: {:.2} Gbit/s; CPU s: gateway {:.2}, client {:.2}, peer {:.2}, process {:.2}",
                b.gbps(),
                c.gateway,
                c.client,
                c.peer,
                c.total
            );
        }
        cl_rt.shutdown_background();
        gw_rt.shutdown_background();
        dev_rt.shutdown_background();
        return Ok(());
    }

    // 2. Round trips.
    eprintln!("ward-bench: 64-byte round trips");
    for p in &paths {
        let r = round_trips(p.echo, opts.rr_samples)
            .with_context(|| format!("round trips through {}", p.name))?;
        eprintln!(
            "  {:<48} p50 {:>7.1} µs  p99 {:>7.1} µs",
            p.name, r.p50, r.p99
        );
        results.rr.push((p.name.clone(), p.kind, r));
    }

    // 3. Session opens.
    eprintln!("ward-bench: session opens");
    results.open_quic_existing = Some(cl_rt.block_on(open_times(
        quic_addr,
        &w.files,
        Transport::Quic,
        opts.opens,
        true,
    ))?);
    results.open_quic_existing_norec = Some(cl_rt.block_on(open_times(
        nr_quic_addr,
        &w.files,
        Transport::Quic,
        opts.opens,
        true,
    ))?);
    results.open_quic_new = Some(cl_rt.block_on(open_times(
        quic_addr,
        &w.files,
        Transport::Quic,
        opts.opens,
        false,
    ))?);
    results.open_tcp_new = Some(cl_rt.block_on(open_times(
        tcp_addr,
        &w.files,
        Transport::Tcp,
        opts.opens,
        false,
    ))?);
    let parallel = 16;
    let rate = cl_rt.block_on(connection_rate(
        quic_addr,
        &w.files,
        parallel,
        opts.conn_rate_for,
    ))?;
    results.conn_rate = Some((parallel, rate));
    eprintln!("  opens done; {rate:.0} new QUIC connections/s");

    // 4. Concurrent bulk sessions.
    eprintln!("ward-bench: {} concurrent bulk sessions", opts.concurrent);
    for p in paths.iter().filter(|p| {
        matches!(
            p.kind,
            PathKind::Direct | PathKind::WardQuic | PathKind::WardTcp
        )
    }) {
        let b = bulk(p, opts.concurrent, opts.bulk, &sink, hz)
            .with_context(|| format!("concurrent bulk through {}", p.name))?;
        eprintln!("  {:<48} {:>7.2} Gbit/s aggregate", p.name, b.gbps());
        results.concurrent.push((p.name.clone(), p.kind, b));
    }

    drop(peers);
    for gateway in gateways {
        gw_rt.block_on(gateway.shutdown(Duration::from_millis(500)));
    }
    let report = render(&opts, &results, &cmd);
    let full = format!("{DOC_HEAD}{}\n{report}", machine(&load_at_start));
    println!("\n{}\n{report}", machine(&load_at_start));
    eprintln!("ward-bench: done in {:.0} s", wall.elapsed().as_secs_f64());
    if let Some(out) = &opts.out {
        std::fs::write(out, full).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("ward-bench: wrote {}", out.display());
    }
    // The runtimes hold listener tasks that never end; drop them without waiting.
    cl_rt.shutdown_background();
    gw_rt.shutdown_background();
    dev_rt.shutdown_background();
    Ok(())
}
