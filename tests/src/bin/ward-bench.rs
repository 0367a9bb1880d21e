//! `ward-bench`: Ward's data-path benchmark (issues #3 and #7).
//!
//! Everything runs on 127.0.0.1, bounded in time, and prints figures only (no assertions):
//!
//! 1. one bulk session's throughput through a sink device: direct TCP, Ward over QUIC, Ward over the
//!    TLS/TCP fallback, and — when the programs are installed — a `socat` relay, a `stunnel4` TLS 1.3
//!    mutual-TLS pair and `ssh -L -c aes128-gcm@openssh.com`;
//! 2. 64-byte request/response round trips against an echo device (p50/p99, and what Ward adds);
//! 3. session open time on an existing QUIC connection and with a new connection each time, plus how
//!    many new mutual-TLS QUIC connections (each carrying one session) complete per second;
//! 4. 100 concurrent bulk sessions, aggregate;
//! 5. many idle sessions held open: the gateway process's RSS and file descriptors;
//! 6. with `perf` installed, a profile of the gateway and client processes during QUIC bulk;
//! 7. HTTP credential injection (issue 14): the pure stage, and HTTP through the gateway (large
//!    POSTs and small keep-alive GETs to an HTTP device in this process) with and without a rule
//!    that injects a vaulted credential, interleaved in one run (`--http-inject-only` runs just
//!    those).
//! 8. DICOM through the gateway (issue 15): 256 MiB of C-STORE data sets to a sink, through a
//!    `dicom` device whose rule has an operation list (the decoder reads every PDU and command and
//!    enforces the list) and through a `raw` device (no decoder) on the same sink, interleaved in
//!    one run (`--dicom-only` runs just those).
//!
//! Layout: the gateway is the release `ward gateway --config FILE` binary in its own process; the
//! recording-off gateway is this binary re-executed as `ward-bench --serve-norec FILE` (the library
//! gateway with the benchmark-only `Options { no_recording: true }`, built on the same runtime as
//! `ward gateway`). Each client is a `ward connect DEVICE --listen 127.0.0.1:0` process. CPU and RSS
//! are read from /proc/PID of those processes. The devices and the load generator (blocking sockets on
//! OS threads, like iperf3 or telnet) are in this process.
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
use ward_ca::{Ca, Clock, IssueRequest, Kind, SystemClock};
use ward_client::{Client, IdentityFiles, Transport};

const USAGE: &str =
    "usage: ward-bench [--quick] [--out FILE] [--no-peers] [--no-profile] [--ward PATH]

  --quick      about 1 s per bulk figure and fewer samples (a smoke run, ~30 s in all)
  --ward PATH  the `ward` binary (default: beside this one, built first when run by cargo)
  --no-profile skip the perf profile of the gateway and client processes
  --out FILE   also write the report (markdown) to FILE, e.g. docs/benchmarks.md
  --no-peers   skip the socat / stunnel4 / ssh baselines even when installed
  --only TEXT  profiling aid: bulk-test only the paths whose name contains TEXT, print, stop
  --bulk-secs S  length of one bulk run (default 2.5, or 1 with --quick)
  --inject-only  only the HTTP credential injection figures (the pure stage, a few seconds), then stop
  --http-inject-only  only HTTP through the gateway with and without credential injection (issue 14:
               release `ward gateway`, QUIC, recording on; interleaved runs), then stop
  --dicom-only  only DICOM C-STORE through the gateway with the decoder and an operation list, and
               the same with decoding off (issue 15; interleaved runs), then stop
  --web-list   only the web console's session listing over an index of 100,000 sessions: one page,
               from the index and through the API (issue 16), then stop
  --web-rtt    only the web terminal's keystroke-to-echo round trip in Chromium against `ward
               connect --listen` and a TCP client on the same echoing device (issue 17), then stop
  --store-open only session open with the PostgreSQL store vs the SQLite store, the same `ward gateway`
               in the same run (issue 19; a PostgreSQL on loopback started by the test harness), then stop";

/// Generator write size (64–256 KiB, as the data path's chunks).
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
    /// Parallel clients for the connection-rate figure (each level is measured).
    conn_rate_parallel: Vec<usize>,
    /// Idle sessions to hold open, as (connections, sessions per connection).
    idle: (usize, usize),
    profile: bool,
    ward: Option<PathBuf>,
    /// Only the HTTP credential injection figures, then stop.
    inject_only: bool,
    /// Only HTTP through the gateway with and without injection, then stop.
    http_inject_only: bool,
    /// Only DICOM through the gateway with and without the decoder (issue 15).
    dicom_only: bool,
    /// Only the web console's session listing over 100,000 indexed sessions (issue 16).
    web_list: bool,
    /// Only the web terminal's keystroke-to-echo round trip vs `ward connect` (issue 17).
    web_rtt: bool,
    /// Only session open on the PostgreSQL store vs SQLite (issue 19).
    store_open: bool,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut quick = false;
        let mut out = None;
        let mut peers = true;
        let mut only = None;
        let mut bulk_secs: Option<f64> = None;
        let mut profile = true;
        let mut ward = None;
        let mut inject_only = false;
        let mut http_inject_only = false;
        let mut dicom_only = false;
        let mut web_list = false;
        let mut web_rtt = false;
        let mut store_open = false;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--no-peers" => peers = false,
                "--no-profile" => profile = false,
                "--inject-only" => inject_only = true,
                "--http-inject-only" => http_inject_only = true,
                "--dicom-only" => dicom_only = true,
                "--web-list" => web_list = true,
                "--web-rtt" => web_rtt = true,
                "--store-open" => store_open = true,
                "--ward" => {
                    ward = Some(PathBuf::from(
                        args.next()
                            .ok_or_else(|| anyhow!("--ward needs a path\n{USAGE}"))?,
                    ))
                }
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
                conn_rate_parallel: vec![16, 64],
                idle: (8, 250),
                profile,
                ward,
                inject_only,
                http_inject_only,
                dicom_only,
                web_list,
                web_rtt,
                store_open,
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
                conn_rate_parallel: vec![16, 64],
                idle: (40, 250),
                profile,
                ward,
                inject_only,
                http_inject_only,
                dicom_only,
                web_list,
                web_rtt,
                store_open,
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

/// utime + stime of one process (all its threads), in clock ticks.
fn proc_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_ticks(&s))
        .map_or(0, |(_, t)| t)
}

/// A `Kb` field of /proc/PID/status (VmRSS, VmHWM…), in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l.get(field.len()..field.len() + 1) == Some(":"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// (busy, all) CPU ticks of the whole machine, from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (all.saturating_sub(idle), all)
}

/// Open file descriptors of a process.
fn proc_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Soft limit on open files of a process.
fn proc_nofile(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    text.lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

/// CPU ticks of this process's thread groups, of Ward's gateway and client processes, and of the
/// external peers' process trees.
#[derive(Debug, Default, Clone)]
struct CpuSnap {
    gateway: u64,
    client: u64,
    total: u64,
    /// pid → ticks, for every process descending from one of the roots.
    procs: HashMap<u32, u64>,
}

/// `gw` / `cl`: Ward's gateway and client processes (their whole CPU counts as gateway / client);
/// without them, this process's `ward-gw` / `ward-cl` threads do.
fn cpu_snap(roots: &[u32], gw: Option<u32>, cl: Option<u32>) -> CpuSnap {
    let mut snap = cpu_snap_threads(roots);
    if let Some(pid) = gw {
        snap.gateway = proc_ticks(pid);
    }
    if let Some(pid) = cl {
        snap.client = proc_ticks(pid);
    }
    snap
}

fn cpu_snap_threads(roots: &[u32]) -> CpuSnap {
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
    let (gw, cl) = (route.gw_pid, route.cl_pid);
    if let Some(dir) = &route.recordings {
        // Earlier runs' recordings (their sessions are long closed): bound disk use.
        clear_dir(dir);
    }
    let before_sink = sink.received.load(Ordering::Relaxed);
    let cpu0 = cpu_snap(roots, gw, cl);
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
    let cpu1 = cpu_snap(roots, gw, cl);
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

/// The gateway's config: fixed ports (the `ward` binary does not print what it bound), limits that let
/// one source open 10,000 sessions, and the sink, echo and idle devices.
fn ward_config(
    quic: SocketAddr,
    tcp: SocketAddr,
    devices: (SocketAddr, SocketAddr, SocketAddr),
    state_dir: &str,
) -> String {
    let (sink, echo, idle) = devices;
    format!(
        r#"{}
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

[[device]]
id = "idle"
address = "{idle}"
protocol = "raw"
labels = {{ bench = "yes" }}

[[rule]]
name = "bench-vendor"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ labels = {{ bench = "yes" }} }}
"#,
        gateway_section(quic, tcp, state_dir)
    )
}

/// The `[gateway]` section every bench config starts with.
fn gateway_section(quic: SocketAddr, tcp: SocketAddr, state_dir: &str) -> String {
    format!(
        r#"# Written by ward-bench.
[gateway]
listen = "{quic}"
listen_tcp = "{tcp}"
ca = "."
cert = "gateway.crt"
key = "gateway.key"
state_dir = "{state_dir}"
max_connections = 2048
max_connections_per_source = 1024
max_sessions = 20000
max_sessions_per_connection = 256
idle_timeout = "15m"
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

// ---------------------------------------------------------------------------------------------
// Ward's processes: `ward gateway`, `ward-bench --serve-norec`, `ward connect --listen`.

/// A child process this run started; killed (by its handle) and reaped when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Fails with the log when the process has exited.
    fn check_alive(&mut self, what: &str) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{what} exited ({status}): {}",
                tail_lines(&self.log_text(), 8)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .skip(lines.len().saturating_sub(n))
        .copied()
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The release `ward` binary: `--ward PATH`, or the one beside this binary, built first when this
/// runs under cargo (a no-op when it is up to date).
fn ward_binary(opts: &Opts) -> Result<PathBuf> {
    if let Some(p) = &opts.ward {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", me.display()))?;
    let bin = dir.join("ward");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // Built (again) when missing or older than this binary (which links the same gateway code).
    let stale = match (mtime(&bin), mtime(&me)) {
        (Some(w), Some(m)) => w < m,
        _ => true,
    };
    if let (true, Some(cargo)) = (stale, std::env::var_os("CARGO")) {
        eprintln!("ward-bench: cargo build --release -p ward --bin ward");
        let st = Command::new(cargo)
            .args(["build", "--release", "-p", "ward", "--bin", "ward"])
            .stdin(Stdio::null())
            .status()
            .context("running cargo build for the ward binary")?;
        if !st.success() {
            bail!("cargo build --release -p ward --bin ward failed");
        }
    }
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p ward --bin ward` or pass --ward PATH",
            bin.display()
        );
    }
    Ok(bin)
}

/// Start `program args…` under `sh -c 'ulimit -n <hard limit>; exec …'` (the soft open-files limit
/// raised to the hard one), output to `log`, stdin a pipe held by the handle (a child that reads it
/// sees EOF when this process goes away).
fn spawn_raised(program: &Path, args: &[&std::ffi::OsStr], log: &Path) -> Result<Proc> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@""#)
        .arg("sh")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Proc {
        child,
        log: log.to_path_buf(),
    })
}

/// A free UDP port on 127.0.0.1 (for the gateway's QUIC listener).
fn free_udp_port() -> Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// A gateway process and where it listens.
struct GatewayProc {
    proc: Proc,
    quic: SocketAddr,
    tcp: SocketAddr,
    state: PathBuf,
}

/// Start a gateway process with its own config and state dir: the `ward` binary when `recording`,
/// else this binary as `--serve-norec`. Ready once its TCP listener accepts.
fn start_gateway(
    ward: &Path,
    w: &WardSetup,
    devices: (SocketAddr, SocketAddr, SocketAddr),
    state: &str,
    recording: bool,
) -> Result<GatewayProc> {
    let (quic, tcp) = (free_udp_port()?, free_port()?);
    let config = w.dir.path().join(format!("{state}.toml"));
    std::fs::write(&config, ward_config(quic, tcp, devices, state))?;
    launch_gateway(ward, w, &config, (quic, tcp), state, recording)
}

/// Start `ward gateway` with recordings encrypted to a fresh age recipient (`[recording]
/// recipients`), its own config and state dir.
fn start_encrypting_gateway(
    ward: &Path,
    w: &WardSetup,
    devices: (SocketAddr, SocketAddr, SocketAddr),
    state: &str,
) -> Result<GatewayProc> {
    let (quic, tcp) = (free_udp_port()?, free_port()?);
    let config = w.dir.path().join(format!("{state}.toml"));
    let reviewer = ward_recording::sealed::NewIdentity::generate();
    let text = format!(
        "{}\n[recording]\nrecipients = [\"{}\"]\n",
        ward_config(quic, tcp, devices, state),
        reviewer.recipient()
    );
    std::fs::write(&config, text)?;
    launch_gateway(ward, w, &config, (quic, tcp), state, true)
}

/// Start the gateway process for a config already written (listening on `quic` / `tcp`, state in
/// `state`): the `ward` binary when `recording`, else this binary as `--serve-norec`.
fn launch_gateway(
    ward: &Path,
    w: &WardSetup,
    config: &Path,
    (quic, tcp): (SocketAddr, SocketAddr),
    state: &str,
    recording: bool,
) -> Result<GatewayProc> {
    let log = w.dir.path().join(format!("{state}.log"));
    let mut proc = if recording {
        spawn_raised(
            ward,
            &["gateway".as_ref(), "--config".as_ref(), config.as_os_str()],
            &log,
        )?
    } else {
        let me = std::env::current_exe()?;
        spawn_raised(&me, &["--serve-norec".as_ref(), config.as_os_str()], &log)?
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        proc.check_alive(&format!("gateway {state}"))?;
        if TcpStream::connect_timeout(&tcp, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "gateway {state} not listening within 15 s: {}",
                tail_lines(&proc.log_text(), 8)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(GatewayProc {
        proc,
        quic,
        tcp,
        state: w.dir.path().join(state),
    })
}

/// `ward-bench --serve-norec CONFIG`: the library gateway with recording off, on the runtime `ward
/// gateway` builds (multi-thread, one worker per CPU), until stdin closes or the process is killed.
fn serve_norec(config: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = ward_server::gateway::load_config(config)?;
        let options = ward_server::gateway::Options {
            no_recording: true,
            ..Default::default()
        };
        let gateway =
            ward_server::gateway::Gateway::start_with(config, Arc::new(SystemClock), options)
                .await?;
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut tokio::io::sink()).await;
        gateway.shutdown(Duration::from_millis(200)).await;
        anyhow::Ok(())
    })
}

/// `ward connect DEVICE --gateway G --transport T --listen 127.0.0.1:0` as a process; returns it and
/// the local address it printed.
fn start_client(
    ward: &Path,
    w: &WardSetup,
    gateway: SocketAddr,
    transport: &str,
    device: &str,
    tag: &str,
) -> Result<(Proc, SocketAddr)> {
    let d = w.dir.path();
    let log = d.join(format!("client-{tag}.log"));
    let gw = gateway.to_string();
    let prefix = d.join("vendor");
    let root = d.join(ward_ca::ROOT_CRT);
    let args: [&std::ffi::OsStr; 11] = [
        "connect".as_ref(),
        device.as_ref(),
        "--gateway".as_ref(),
        gw.as_ref(),
        "--identity".as_ref(),
        prefix.as_os_str(),
        "--ca".as_ref(),
        root.as_os_str(),
        "--transport".as_ref(),
        transport.as_ref(),
        "--listen=127.0.0.1:0".as_ref(),
    ];
    let mut proc = spawn_raised(ward, &args, &log)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        proc.check_alive(&format!("ward connect ({tag})"))?;
        let text = proc.log_text();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.split_once("forwarding ").map(|(_, rest)| rest))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
        {
            return Ok((proc, addr));
        }
        if Instant::now() > deadline {
            bail!(
                "ward connect ({tag}) printed no address within 10 s: {}",
                tail_lines(&text, 8)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
// Idle sessions: a device that accepts and holds connections, and many sessions held open to it.

/// Accepts connections and holds them (never reads or writes) until `release`.
struct IdleDevice {
    addr: SocketAddr,
    held: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl IdleDevice {
    fn start() -> Result<IdleDevice> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::Builder::new()
            .name("bench-dev-idle".into())
            .spawn(move || {
                for sock in listener.incoming().flatten() {
                    if let Ok(mut v) = keep.lock() {
                        v.push(sock);
                    }
                }
            })?;
        Ok(IdleDevice { addr, held })
    }
    fn release(&self) {
        if let Ok(mut v) = self.held.lock() {
            v.clear();
        }
    }
}

#[derive(Debug, Clone)]
struct Idle {
    label: String,
    wanted: usize,
    opened: usize,
    connections: usize,
    secs: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    fds_before: usize,
    fds_after: usize,
    nofile: Option<u64>,
    /// Why fewer than `wanted` sessions were opened.
    stopped: Option<String>,
}

impl Idle {
    fn per_session_kib(&self) -> f64 {
        if self.opened == 0 {
            return f64::NAN;
        }
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.opened as f64
    }
    fn fds_per_session(&self) -> f64 {
        if self.opened == 0 {
            return f64::NAN;
        }
        self.fds_after.saturating_sub(self.fds_before) as f64 / self.opened as f64
    }
    /// RSS at `n` sessions: measured when `n` were open, else the fresh process plus `n` × the
    /// measured per-session growth.
    fn rss_at_kib(&self, n: usize) -> f64 {
        if self.opened >= n {
            return self.rss_after_kib as f64;
        }
        self.rss_before_kib as f64 + self.per_session_kib() * n as f64
    }
}

/// Hold `conns` × `per_conn` idle sessions (to the `idle` device) open on a fresh gateway process,
/// from clients in this process's `ward-cl` runtime, and read the gateway's VmRSS and fd count.
/// Opens no more than the gateway's open-files limit allows (measured fds per session after a
/// first batch), so the gateway is never pushed into refusing for lack of descriptors.
fn idle_sessions(
    rt: &tokio::runtime::Runtime,
    gw: &GatewayProc,
    files: &IdentityFiles,
    conns: usize,
    per_conn: usize,
    label: &str,
) -> Result<Idle> {
    let pid = gw.proc.pid();
    let wanted = conns * per_conn;
    let rss_before_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    let fds_before = proc_fds(pid);
    let nofile = proc_nofile(pid);
    let target = gw.quic.to_string();
    type Held = (Arc<Client>, Vec<ward_client::Session>);
    let open_batch = |n: usize, clients: usize| -> (Vec<Held>, Option<String>) {
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..clients {
                let mine = n / clients + usize::from(i < n % clients);
                let target = target.clone();
                let files = files.clone();
                tasks.spawn(async move {
                    let client = match Client::new(&target, &files, Transport::Quic) {
                        Ok(c) => Arc::new(c),
                        Err(e) => return (None, Vec::new(), Some(format!("{e:#}"))),
                    };
                    let mut held = Vec::with_capacity(mine);
                    for _ in 0..mine {
                        match client.open("idle", false, None).await {
                            Ok(s) => held.push(s),
                            Err(e) => return (Some(client), held, Some(format!("{e:#}"))),
                        }
                    }
                    (Some(client), held, None)
                });
            }
            let mut out = Vec::new();
            let mut err = None;
            while let Some(r) = tasks.join_next().await {
                match r {
                    Ok((c, held, e)) => {
                        if let Some(c) = c {
                            out.push((c, held));
                        }
                        err = err.or(e);
                    }
                    Err(e) => err = err.or(Some(format!("open task: {e}"))),
                }
            }
            (out, err)
        })
    };
    let start = Instant::now();
    // A first connection's worth, to learn what one session costs in descriptors.
    let first = per_conn.min(wanted);
    let (mut held, mut stopped) = open_batch(first, 1);
    let opened_first: usize = held.iter().map(|h| h.1.len()).sum();
    let mut allowed = wanted;
    if stopped.is_none() && opened_first > 0 {
        let per = (proc_fds(pid).saturating_sub(fds_before) as f64 / opened_first as f64).ceil();
        if let Some(limit) = nofile {
            let room = limit.saturating_sub(proc_fds(pid) as u64 + 64) as f64;
            let more = if per > 0.0 {
                (room / per) as usize
            } else {
                wanted
            };
            allowed = wanted.min(opened_first + more);
        }
        if allowed > opened_first {
            let rest = allowed - opened_first;
            let clients = rest.div_ceil(per_conn).max(1);
            let (more, err) = open_batch(rest, clients);
            held.extend(more);
            stopped = err;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let opened: usize = held.iter().map(|h| h.1.len()).sum();
    if stopped.is_none() && opened < wanted {
        stopped = Some(format!(
            "stopped at {opened}: the gateway's open-files limit is {} and each session holds {:.0} descriptors",
            nofile.unwrap_or(0),
            (proc_fds(pid).saturating_sub(fds_before) as f64 / opened.max(1) as f64).ceil()
        ));
    }
    // Let the gateway settle (recorders' first fsync, buffers returned), then measure.
    std::thread::sleep(Duration::from_millis(1500));
    let rss_after_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    let fds_after = proc_fds(pid);
    let connections = held.len();
    rt.block_on(async move { drop(held) });
    Ok(Idle {
        label: label.to_string(),
        wanted,
        opened,
        connections,
        secs,
        rss_before_kib,
        rss_after_kib,
        fds_before,
        fds_after,
        nofile,
        stopped,
    })
}

// ---------------------------------------------------------------------------------------------
// Profiles: `perf record -g` of Ward's gateway and client processes during a bulk run.

/// Top symbols by self time.
#[derive(Debug, Clone)]
struct Profile {
    what: String,
    top: Vec<(f64, String)>,
}

fn perf_record(pid: u32, secs: f64, out: &Path, log: &Path) -> Result<Child> {
    let perf =
        have("perf").ok_or_else(|| anyhow!("perf not installed (apt-get install linux-perf)"))?;
    let log = std::fs::File::create(log)?;
    Command::new(perf)
        .args(["record", "-g", "-F", "999", "-o"])
        .arg(out)
        .arg("-p")
        .arg(pid.to_string())
        .args(["--", "sleep", &format!("{secs:.2}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting perf record")
}

/// `perf report --no-children --sort symbol`: (self %, symbol), top `n`.
fn perf_top(data: &Path, n: usize) -> Result<Vec<(f64, String)>> {
    let perf = have("perf").ok_or_else(|| anyhow!("perf not installed"))?;
    let out = Command::new(perf)
        .args([
            "report",
            "--no-children",
            "--sort",
            "symbol",
            "--stdio",
            "-q",
            "-g",
            "none",
            "-i",
        ])
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .context("running perf report")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut top = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        let Some((pct, rest)) = t.split_once('%') else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else {
            continue;
        };
        let mut words: Vec<&str> = rest.split_whitespace().collect();
        while words.last() == Some(&"-") {
            words.pop();
        }
        let mut sym = words.join(" ");
        if sym.chars().count() > 110 {
            sym = sym.chars().take(107).collect::<String>() + "...";
        }
        top.push((pct, sym));
        if top.len() >= n {
            break;
        }
    }
    if top.is_empty() {
        bail!(
            "perf report gave no symbols: {}",
            tail_lines(&String::from_utf8_lossy(&out.stderr), 4)
        );
    }
    Ok(top)
}

/// Profile the route's gateway and client processes over one bulk run.
/// Run `work` while `perf record` samples each of `procs` ((label, pid)) for `secs`; the work starts
/// once perf has attached.
fn profile_during<T>(
    procs: &[(String, u32)],
    secs: f64,
    dir: &Path,
    tag: &str,
    work: impl FnOnce() -> Result<T>,
) -> Result<(Vec<Profile>, T)> {
    let mut runs = Vec::new();
    for (i, (label, pid)) in procs.iter().enumerate() {
        let data = dir.join(format!("perf-{tag}-{i}.data"));
        let child = perf_record(
            *pid,
            secs + 0.3,
            &data,
            &dir.join(format!("perf-{tag}-{i}.log")),
        )?;
        runs.push((label.clone(), data, child));
    }
    std::thread::sleep(Duration::from_millis(300));
    let result = work();
    let mut out = Vec::new();
    for (what, data, mut child) in runs {
        let _ = child.wait();
        out.push(Profile {
            what,
            top: perf_top(&data, 14)?,
        });
    }
    Ok((out, result?))
}

/// Profile the route's gateway and client processes over one bulk run.
fn profile_bulk(
    route: &Route,
    opts: &Opts,
    sink: &Sink,
    hz: f64,
    dir: &Path,
) -> Result<Vec<Profile>> {
    let (Some(gw), Some(cl)) = (route.gw_pid, route.cl_pid) else {
        bail!("{} has no gateway / client process", route.name);
    };
    let procs = [
        (
            format!(
                "{}, bulk — gateway process (`ward gateway`, pid {gw})",
                route.name
            ),
            gw,
        ),
        (
            format!(
                "{}, bulk — client process (`ward connect --listen`, pid {cl})",
                route.name
            ),
            cl,
        ),
    ];
    let (out, b) = profile_during(
        &procs,
        opts.bulk.as_secs_f64(),
        dir,
        route.kind.tag(),
        || bulk(route, 1, opts.bulk, sink, hz),
    )?;
    eprintln!(
        "  profiled {}: {:.2} Gbit/s under perf",
        route.name,
        b.gbps()
    );
    Ok(out)
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
    /// Ward's gateway and client processes on this route.
    gw_pid: Option<u32>,
    cl_pid: Option<u32>,
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
    /// `ward gateway` with `[recording] recipients`: recordings encrypted at rest.
    WardQuicEnc,
    Peer,
}

impl PathKind {
    fn tag(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::WardQuic => "quic",
            PathKind::WardTcp => "tcp",
            PathKind::WardQuicNoRec => "quic-norec",
            PathKind::WardQuicEnc => "quic-enc",
            PathKind::Peer => "peer",
        }
    }
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
    conn_rate: Vec<ConnRate>,
    held: Option<HeldRate>,
    idle: Vec<Idle>,
    profiles: Vec<Profile>,
    inject: Vec<InjectRun>,
    http: Vec<HttpE2e>,
    skipped: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct ConnRate {
    parallel: usize,
    rate: f64,
    /// CPU cores busy over the measurement: the gateway process, and the clients (this process's
    /// `ward-cl` runtime, which does the clients' handshakes).
    gw_cores: f64,
    cl_cores: f64,
    /// Share of the whole machine's CPU time that was busy (all processes, kernel included).
    machine_busy: f64,
}

impl ConnRate {
    /// Gateway CPU milliseconds per new connection.
    fn gw_ms(&self) -> f64 {
        self.gw_cores / self.rate.max(1e-9) * 1e3
    }
    fn cl_ms(&self) -> f64 {
        self.cl_cores / self.rate.max(1e-9) * 1e3
    }
}

/// Certificate holders' new-connection rate without, then with, anonymous connections held.
#[derive(Debug, Clone, Copy)]
struct HeldRate {
    parallel: usize,
    without: f64,
    with: f64,
    /// Anonymous connections attempted, handshakes finished, and still open after the run.
    attempted: usize,
    finished: usize,
    open_after: usize,
}

/// Anonymous connections the "held" figure tries to hold, and the sources they come from.
const HELD_ANONYMOUS: usize = 1_000;
const HELD_SOURCES: u8 = 16;

/// The certificate holders' connection rate (`parallel` clients, one session per connection)
/// without anonymous connections, then while up to [`HELD_ANONYMOUS`] anonymous QUIC connections
/// (no certificate, no stream, keep-alives only, from 127.77.0.x) are held, in one run.
async fn rate_with_anonymous_held(
    gateway: SocketAddr,
    files: &IdentityFiles,
    parallel: usize,
    dur: Duration,
) -> Result<HeldRate> {
    let without = connection_rate(gateway, files, parallel, dur).await?;
    let sources: Vec<std::net::IpAddr> = (1..=HELD_SOURCES)
        .map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 77, 0, i)))
        .collect();
    let (endpoints, held) =
        ward_tests::idle_anonymous_quic(&files.root, &sources, HELD_ANONYMOUS, gateway).await;
    let finished = held.len();
    let with = connection_rate(gateway, files, parallel, dur).await?;
    let open_after = held.iter().filter(|c| c.close_reason().is_none()).count();
    drop(held);
    for e in &endpoints {
        e.close(0u32.into(), b"bench done");
    }
    Ok(HeldRate {
        parallel,
        without,
        with,
        attempted: HELD_ANONYMOUS,
        finished,
        open_after,
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP credential injection (issue 14): the pure stage, in this process.

/// One HTTP workload through a session's stage chain without, then with, the credential injector.
#[derive(Debug, Clone)]
struct InjectRun {
    workload: &'static str,
    /// Client → device bytes offered per run, and requests in them.
    bytes: u64,
    requests: u64,
    /// Best of the repetitions, seconds per run.
    without: f64,
    with: f64,
}

impl InjectRun {
    fn gbps(&self, secs: f64) -> f64 {
        self.bytes as f64 * 8.0 / secs / 1e9
    }
    fn ratio(&self) -> f64 {
        self.without / self.with
    }
    fn ns_per_request(&self, secs: f64) -> f64 {
        secs * 1e9 / self.requests as f64
    }
}

/// Run `chunks` through a chain (the pump's decide step) and "forward" each result the way the
/// pump does, by copying it into a send buffer: client → device, and after a chunk marked `true`
/// the device's response (which the injector watches for a 401); returns the seconds taken and
/// the client → device bytes forwarded.
fn inject_pass(
    chain: &mut ward_core::stage::Chain,
    chunks: &[(&[u8], bool)],
    response: &[u8],
    send: &mut Vec<u8>,
) -> Result<(f64, u64)> {
    use ward_core::stage::{Direction, Forward};
    let now = time::OffsetDateTime::UNIX_EPOCH;
    let mut out = Vec::new();
    let mut forwarded = 0u64;
    let t0 = Instant::now();
    for &(c, answered) in chunks {
        let mut step = |dir: Direction, c: &[u8]| -> Result<u64> {
            let fwd = match chain.process(dir, c, now, &mut out) {
                Ok(Forward::AsIs) => c,
                Ok(Forward::Replaced) => out.as_slice(),
                Err(e) => bail!("the injector refused the benchmark's traffic: {e}"),
            };
            send.clear();
            send.extend_from_slice(fwd);
            let _ = chain.take_notes();
            Ok(send.len() as u64)
        };
        forwarded += step(Direction::Up, c)?;
        if answered {
            step(Direction::Down, response)?;
        }
    }
    Ok((t0.elapsed().as_secs_f64(), forwarded))
}

/// The HTTP injection figures: a large POST body with `Content-Length` and many small keep-alive
/// requests (one per read, each with the client's own `Authorization`), through a chain without
/// and with `HttpInjector`, interleaved, best of several runs. Bounded to a few seconds.
fn inject_bench(quick: bool) -> Result<Vec<InjectRun>> {
    use ward_core::inject::http::HttpInjector;
    use ward_core::inject::{Credential, HttpAuth};
    use ward_core::stage::{Chain, Stage};
    let injector = || -> Box<dyn Stage> {
        Box::new(HttpInjector::new(
            "bench-device",
            Credential {
                account: "service".into(),
                username: "admin".into(),
                secret: ward_core::secret::Secret::new("a-long-vaulted-password-0123456789".into()),
            },
            HttpAuth::Basic,
        ))
    };
    // 1. Bulk: POSTs of 64 MiB each, read in 256 KiB chunks, the next head in the last chunk.
    let body_len = 64 * 1024 * 1024;
    let posts = if quick { 4 } else { 16 };
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: device\r\nAuthorization: Basic Y2xpZW50OnB3\r\nContent-Length: {body_len}\r\n\r\n"
    );
    let mut stream = Vec::with_capacity(posts * (body_len + head.len()));
    for _ in 0..posts {
        stream.extend_from_slice(head.as_bytes());
        stream.resize(stream.len() + body_len, b'x');
    }
    // The device answers each POST once its body is in (the chunk holding its last byte).
    let per_post = head.len() + body_len;
    let bulk_chunks: Vec<(&[u8], bool)> = stream
        .chunks(WRITE_CHUNK)
        .enumerate()
        .map(|(i, c)| {
            let (start, end) = (i * WRITE_CHUNK, i * WRITE_CHUNK + c.len());
            (c, start / per_post != end / per_post || end == stream.len())
        })
        .collect();
    // 2. Small requests: keep-alive GETs, one per read.
    let n_small = if quick { 50_000 } else { 200_000 };
    let small: Vec<String> = (0..n_small)
        .map(|i| format!("GET /api/v1/status/{i} HTTP/1.1\r\nHost: device\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nAuthorization: Basic d3Jvbmc6Y3JlZHM=\r\n\r\n"))
        .collect();
    let small_chunks: Vec<(&[u8], bool)> = small.iter().map(|s| (s.as_bytes(), true)).collect();
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
    let reps = if quick { 3 } else { 5 };
    let mut send = Vec::with_capacity(WRITE_CHUNK * 2);
    let mut runs = Vec::new();
    for (workload, chunks, requests) in [
        (
            "large POST bodies (Content-Length, 256 KiB reads)",
            &bulk_chunks,
            posts as u64,
        ),
        (
            "small keep-alive GETs (one per read, each answered)",
            &small_chunks,
            n_small as u64,
        ),
    ] {
        let bytes: u64 = chunks.iter().map(|c| c.0.len() as u64).sum();
        let (mut without, mut with) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..reps {
            let (t, plain) = inject_pass(&mut Chain::new(Vec::new()), chunks, response, &mut send)?;
            without = without.min(t);
            let (t, fwd) = inject_pass(
                &mut Chain::new(vec![injector()]),
                chunks,
                response,
                &mut send,
            )?;
            with = with.min(t);
            // The vaulted header is longer than the client's: every request was rewritten.
            if fwd <= plain {
                bail!("the injector did not rewrite the benchmark's requests");
            }
        }
        eprintln!(
            "  {workload:<52} without {:.2} Gbit/s, with injection {:.2} Gbit/s ({:.0} ns/request), ratio {:.3}",
            bytes as f64 * 8.0 / without / 1e9,
            bytes as f64 * 8.0 / with / 1e9,
            with * 1e9 / requests as f64,
            without / with
        );
        runs.push(InjectRun {
            workload,
            bytes,
            requests,
            without,
            with,
        });
    }
    Ok(runs)
}

fn render_inject(s: &mut String, runs: &[InjectRun]) {
    let _ = writeln!(
        s,
        "\n### HTTP credential injection, the pure stage (issue 14; `Chain` in this process, each forwarded chunk copied once as the pump's send; no network)\n"
    );
    let _ = writeln!(
        s,
        "| workload | without Gbit/s | with injection Gbit/s | with ÷ without | ns per request, with |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.3} | {:.0} |",
            r.workload,
            r.gbps(r.without),
            r.gbps(r.with),
            r.ratio(),
            r.ns_per_request(r.with)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP through the gateway with and without credential injection (issue 14): the release `ward
// gateway` (QUIC, recording on) with two http devices in one config, one whose rule injects a
// vaulted Basic credential and one whose rule does not, each an HTTP/1.1 sink in this process.

/// Request body of one bulk POST (`Content-Length`, keep-alive, one request after another).
const HTTP_BODY: usize = 1024 * 1024;
/// The vault account, the device's user name and the password the bench vaults.
const HTTP_ACCOUNT: &str = "console";
const HTTP_USER: &str = "svc";
const HTTP_SECRET: &str = "bench-vaulted-password-0123456789";
/// What the small-request device answers (a status document, as a device's API would).
const HTTP_SMALL_BODY: &[u8] = b"{\"ok\":true}";

/// An HTTP/1.1 device: reads requests (head, then a `Content-Length` body), checks their
/// `Authorization` header against what it expects, and answers each with a small response (204
/// to a request with a body, 200 with a short JSON document otherwise). Keep-alive: many requests
/// per connection; closes when the client does.
struct HttpSink {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
    /// The first request whose `Authorization` was not the expected one (or a framing error).
    wrong: Arc<std::sync::Mutex<Option<String>>>,
}

impl HttpSink {
    /// `expect`: the one `Authorization` value every request must carry, or `None`: no
    /// `Authorization` header at all.
    fn start(expect: Option<String>) -> Result<HttpSink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let sink = HttpSink {
            addr,
            requests: Arc::new(AtomicU64::new(0)),
            body_bytes: Arc::new(AtomicU64::new(0)),
            wrong: Arc::new(std::sync::Mutex::new(None)),
        };
        let (requests, body_bytes, wrong) = (
            sink.requests.clone(),
            sink.body_bytes.clone(),
            sink.wrong.clone(),
        );
        std::thread::Builder::new()
            .name("bench-dev-http".into())
            .spawn(move || {
                for sock in listener.incoming() {
                    let Ok(sock) = sock else { continue };
                    let (requests, body_bytes, wrong) =
                        (requests.clone(), body_bytes.clone(), wrong.clone());
                    let expect = expect.clone();
                    let _ = std::thread::Builder::new()
                        .name("bench-dev".into())
                        .spawn(move || {
                            if let Err(e) =
                                serve_http(sock, expect.as_deref(), &requests, &body_bytes)
                            {
                                if let Ok(mut w) = wrong.lock() {
                                    w.get_or_insert_with(|| format!("{e:#}"));
                                }
                            }
                        });
                }
            })?;
        Ok(sink)
    }

    fn wrong(&self) -> Option<String> {
        self.wrong.lock().ok().and_then(|w| w.clone())
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The values of header `name` (case-insensitive) in a request or response head.
fn header_values<'a>(head: &'a [u8], name: &str) -> Vec<&'a [u8]> {
    head.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            let (n, v) = line.split_at(colon);
            n.eq_ignore_ascii_case(name.as_bytes())
                .then(|| v.get(1..).unwrap_or_default().trim_ascii())
        })
        .collect()
}

fn content_length_of(head: &[u8]) -> Result<u64> {
    match header_values(head, "content-length").as_slice() {
        [] => Ok(0),
        [v] => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("bad Content-Length {:?}", String::from_utf8_lossy(v))),
        _ => bail!("more than one Content-Length"),
    }
}

/// Read one message head (request or response) into `buf` (which holds `*have` unconsumed bytes
/// at its start); returns its length, or `None` when the peer closed cleanly before one began.
fn read_head(sock: &mut TcpStream, buf: &mut [u8], have: &mut usize) -> Result<Option<usize>> {
    loop {
        if let Some(end) = find_head_end(buf.get(..*have).unwrap_or_default()) {
            return Ok(Some(end));
        }
        let size = buf.len();
        let room = buf
            .get_mut(*have..)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| anyhow!("message head over {size} bytes"))?;
        let n = sock.read(room)?;
        if n == 0 {
            if *have == 0 {
                return Ok(None);
            }
            bail!("the peer closed in the middle of a message head");
        }
        *have += n;
    }
}

/// Consume `len` body bytes: first what `buf` holds after the head (`from..*have`), then from the
/// socket. Leaves any following bytes at the start of `buf`.
fn skip_body(
    sock: &mut TcpStream,
    buf: &mut [u8],
    have: &mut usize,
    from: usize,
    len: u64,
) -> Result<()> {
    let buffered = (*have - from) as u64;
    let take = buffered.min(len) as usize;
    buf.copy_within(from + take..*have, 0);
    *have -= from + take;
    let mut left = len - take as u64;
    while left > 0 {
        let cap = left.min(buf.len() as u64) as usize;
        let dst = buf.get_mut(..cap).unwrap_or_default();
        let n = sock.read(dst)?;
        if n == 0 {
            bail!("the peer closed with {left} body bytes still to come");
        }
        left -= n as u64;
    }
    Ok(())
}

/// One keep-alive connection of [`HttpSink`].
fn serve_http(
    mut sock: TcpStream,
    expect: Option<&str>,
    requests: &AtomicU64,
    body_bytes: &AtomicU64,
) -> Result<()> {
    let _ = sock.set_nodelay(true);
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut have = 0usize;
    let mut small = Vec::new();
    small.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            HTTP_SMALL_BODY.len()
        )
        .as_bytes(),
    );
    small.extend_from_slice(HTTP_SMALL_BODY);
    while let Some(end) = read_head(&mut sock, &mut buf, &mut have)? {
        let head = buf.get(..end).unwrap_or_default();
        let auth = header_values(head, "authorization");
        let ok = match expect {
            Some(v) => auth.as_slice() == [v.as_bytes()],
            None => auth.is_empty(),
        };
        if !ok {
            bail!(
                "request with Authorization {:?}, expected {}",
                auth.iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>(),
                if expect.is_some() {
                    "the vaulted credential"
                } else {
                    "none"
                }
            );
        }
        let len = content_length_of(head)?;
        skip_body(&mut sock, &mut buf, &mut have, end, len)?;
        requests.fetch_add(1, Ordering::Relaxed);
        body_bytes.fetch_add(len, Ordering::Relaxed);
        if len > 0 {
            sock.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
        } else {
            sock.write_all(&small)?;
        }
    }
    let _ = sock.shutdown(Shutdown::Both);
    Ok(())
}

/// One HTTP run: requests sent one after another on one keep-alive connection.
#[derive(Debug, Clone, Copy)]
struct HttpRun {
    requests: u64,
    /// Client → device bytes (heads and bodies).
    bytes: u64,
    secs: f64,
    cpu: CpuUse,
}

impl HttpRun {
    fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs.max(1e-9) / 1e9
    }
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs.max(1e-9)
    }
    /// Gateway + client CPU seconds per GB moved.
    fn cpu_per_gb(&self) -> f64 {
        (self.cpu.gateway + self.cpu.client) / (self.bytes as f64 / 1e9).max(1e-12)
    }
    /// CPU cores the gateway process kept busy over the run.
    fn gw_cores(&self) -> f64 {
        self.cpu.gateway / self.secs.max(1e-9)
    }
    fn gw_cpu_per_gb(&self) -> f64 {
        self.cpu.gateway / (self.bytes as f64 / 1e9).max(1e-12)
    }
    /// Gateway CPU microseconds per request.
    fn gw_us_per_request(&self) -> f64 {
        self.cpu.gateway * 1e6 / (self.requests.max(1)) as f64
    }
}

/// One connection to `addr` (a `ward connect --listen` port), requests for `dur` (a POST with a
/// `body`-byte body, or a small GET when `body` is 0), each answered before the next is sent;
/// then a half-close and the device's close. Checks the device got every request with the
/// `Authorization` it expects.
fn http_load(
    addr: SocketAddr,
    dur: Duration,
    body: usize,
    sink: &HttpSink,
    pids: (u32, u32),
    hz: f64,
) -> Result<HttpRun> {
    let request = if body > 0 {
        let mut r = format!(
            "POST /upload HTTP/1.1\r\nHost: device\r\nContent-Type: application/octet-stream\r\nContent-Length: {body}\r\n\r\n"
        )
        .into_bytes();
        r.resize(r.len() + body, b'x');
        r
    } else {
        b"GET /api/v1/status HTTP/1.1\r\nHost: device\r\nUser-Agent: ward-bench\r\nAccept: */*\r\n\r\n"
            .to_vec()
    };
    let before = sink.requests.load(Ordering::Relaxed);
    let before_body = sink.body_bytes.load(Ordering::Relaxed);
    let cpu0 = cpu_snap(&[], Some(pids.0), Some(pids.1));
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0u8; 4096];
    let mut have = 0usize;
    let mut sent = 0u64;
    let mut requests = 0u64;
    while start.elapsed() < dur {
        s.write_all(&request).context("writing a request")?;
        sent += request.len() as u64;
        requests += 1;
        let end = read_head(&mut s, &mut buf, &mut have)?
            .ok_or_else(|| anyhow!("the device closed instead of answering"))?;
        let head = buf.get(..end).unwrap_or_default();
        let want: &[u8] = if body > 0 {
            b"HTTP/1.1 204 "
        } else {
            b"HTTP/1.1 200 "
        };
        if !head.starts_with(want) {
            bail!(
                "answer {:?}; {}",
                String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or_default()),
                sink.wrong().unwrap_or_default()
            );
        }
        let len = content_length_of(head)?;
        skip_body(&mut s, &mut buf, &mut have, end, len)?;
    }
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .context("waiting for the device to close")?;
    let secs = start.elapsed().as_secs_f64();
    let cpu1 = cpu_snap(&[], Some(pids.0), Some(pids.1));
    if let Some(e) = sink.wrong() {
        bail!("the HTTP device refused a request: {e}");
    }
    let got = sink.requests.load(Ordering::Relaxed) - before;
    let got_body = sink.body_bytes.load(Ordering::Relaxed) - before_body;
    if got != requests || got_body != requests * body as u64 || !rest.is_empty() || have != 0 {
        bail!("the device got {got} requests ({got_body} body bytes) of the {requests} sent");
    }
    Ok(HttpRun {
        requests,
        bytes: sent,
        secs,
        cpu: cpu_use(&cpu0, &cpu1, hz),
    })
}

/// One HTTP workload, with and without injection, every repetition of each.
#[derive(Debug, Clone)]
struct HttpE2e {
    workload: &'static str,
    bulk: bool,
    with: Vec<HttpRun>,
    without: Vec<HttpRun>,
}

fn median_http(runs: &[HttpRun], key: impl Fn(&HttpRun) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(key).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl HttpE2e {
    /// Median throughput: Gbit/s for bulk, requests/s for small requests.
    fn with(&self) -> f64 {
        median_http(&self.with, |r| if self.bulk { r.gbps() } else { r.rps() })
    }
    fn without(&self) -> f64 {
        median_http(
            &self.without,
            |r| {
                if self.bulk {
                    r.gbps()
                } else {
                    r.rps()
                }
            },
        )
    }
    fn ratio(&self) -> f64 {
        self.with() / self.without()
    }
    /// A throughput in this workload's unit.
    fn show(&self, v: f64) -> String {
        if self.bulk {
            format!("{v:.2} Gbit/s")
        } else {
            format!("{v:.0} requests/s")
        }
    }
    /// With ÷ without, run by run (each with-run and the without-run after it).
    fn paired(&self) -> Vec<f64> {
        self.with
            .iter()
            .zip(&self.without)
            .map(|(a, b)| {
                if self.bulk {
                    a.gbps() / b.gbps()
                } else {
                    a.rps() / b.rps()
                }
            })
            .collect()
    }
    fn unit(&self) -> &'static str {
        if self.bulk {
            "Gbit/s"
        } else {
            "requests/s"
        }
    }
}

/// The config of the HTTP injection gateway: two http devices, one rule injecting the vaulted
/// `HTTP_ACCOUNT` into `http-inject`, one rule without injection for `http-plain`.
fn http_config(
    quic: SocketAddr,
    tcp: SocketAddr,
    (inject, plain): (SocketAddr, SocketAddr),
    state: &str,
) -> String {
    format!(
        r#"{}
[[device]]
id = "http-inject"
address = "{inject}"
protocol = "http"
http_auth = {{ scheme = "basic" }}

[[device]]
id = "http-plain"
address = "{plain}"
protocol = "http"

[[rule]]
name = "bench-http-inject"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ ids = ["http-inject"] }}
inject = "{HTTP_ACCOUNT}"

[[rule]]
name = "bench-http-plain"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ ids = ["http-plain"] }}
"#,
        gateway_section(quic, tcp, state)
    )
}

/// HTTP through the gateway with and without injection: the config written, the credential
/// vaulted host-side (`ward vault set … --stdin --config FILE`, before the gateway starts), the
/// release gateway (QUIC, recording on) and one `ward connect --listen` per device; then large
/// POSTs and small GETs, with and without injection interleaved. With `opts.profile`, one more
/// bulk run of each under perf (gateway process).
fn http_inject_e2e(
    ward: &Path,
    w: &WardSetup,
    opts: &Opts,
    hz: f64,
    profiles: &mut Vec<Profile>,
) -> Result<Vec<HttpE2e>> {
    use base64::Engine as _;
    let vaulted = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{HTTP_USER}:{HTTP_SECRET}"))
    );
    let sink_inject = HttpSink::start(Some(vaulted))?;
    let sink_plain = HttpSink::start(None)?;
    let state = "state-http";
    let (quic, tcp) = (free_udp_port()?, free_port()?);
    let config = w.dir.path().join(format!("{state}.toml"));
    std::fs::write(
        &config,
        http_config(quic, tcp, (sink_inject.addr, sink_plain.addr), state),
    )?;
    let mut vault = Command::new(ward)
        .args([
            "vault",
            "set",
            "http-inject",
            HTTP_ACCOUNT,
            "--user",
            HTTP_USER,
        ])
        .arg("--stdin")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ward vault set")?;
    if let Some(mut stdin) = vault.stdin.take() {
        stdin.write_all(format!("{HTTP_SECRET}\n").as_bytes())?;
    }
    let out = vault.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ward vault set failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let gw = launch_gateway(ward, w, &config, (quic, tcp), state, true)?;
    let (cl_inject, addr_inject) =
        start_client(ward, w, gw.quic, "quic", "http-inject", "http-inject")?;
    let (cl_plain, addr_plain) =
        start_client(ward, w, gw.quic, "quic", "http-plain", "http-plain")?;
    let recordings = gw.state.join(ward_server::RECORDINGS_DIR);
    let gw_pid = gw.proc.pid();
    let with = (addr_inject, &sink_inject, (gw_pid, cl_inject.pid()));
    let without = (addr_plain, &sink_plain, (gw_pid, cl_plain.pid()));
    // Warm up both paths (the client's QUIC connection, the gateway's first sessions, a short
    // bulk run), checking that the vaulted credential arrives.
    for (addr, sink, pids) in [with, without] {
        for body in [0, HTTP_BODY] {
            http_load(addr, Duration::from_millis(250), body, sink, pids, hz)
                .with_context(|| format!("warm-up through ward connect on {addr}"))?;
        }
    }
    // Five of each in every mode: on a shared 2-core machine three pairs left the median ratio
    // anywhere between 0.80 and 1.03.
    let reps = 5;
    let mut out = Vec::new();
    for (workload, body) in [
        (
            "large POST bodies (1 MiB, Content-Length, keep-alive)",
            HTTP_BODY,
        ),
        ("small keep-alive GETs (200 with 11-byte JSON)", 0),
    ] {
        let mut e = HttpE2e {
            workload,
            bulk: body > 0,
            with: Vec::new(),
            without: Vec::new(),
        };
        for _ in 0..reps {
            for (injecting, (addr, sink, pids)) in [(true, with), (false, without)] {
                clear_dir(&recordings);
                let r = http_load(addr, opts.bulk, body, sink, pids, hz).with_context(|| {
                    format!(
                        "HTTP {workload} {} injection",
                        if injecting { "with" } else { "without" }
                    )
                })?;
                eprintln!(
                    "  {workload:<54} {:<17} {:>7.2} Gbit/s {:>6.0} requests/s; gateway CPU {:.2} cores, {:.1} µs/request",
                    if injecting { "with injection" } else { "without injection" },
                    r.gbps(),
                    r.rps(),
                    r.gw_cores(),
                    r.gw_us_per_request()
                );
                if injecting {
                    e.with.push(r);
                } else {
                    e.without.push(r);
                }
            }
        }
        eprintln!(
            "  {workload:<54} medians: with {}, without {}; ratio {:.3}",
            e.show(e.with()),
            e.show(e.without()),
            e.ratio()
        );
        out.push(e);
    }
    clear_dir(&recordings);
    if opts.profile {
        for (injecting, (addr, sink, pids)) in [(true, with), (false, without)] {
            let what = format!(
                "HTTP bulk (1 MiB POSTs), {} injection — gateway process (`ward gateway`, pid {gw_pid})",
                if injecting { "with" } else { "without" }
            );
            let tag = if injecting {
                "http-inject"
            } else {
                "http-plain"
            };
            match profile_during(
                &[(what, gw_pid)],
                opts.bulk.as_secs_f64(),
                w.dir.path(),
                tag,
                || http_load(addr, opts.bulk, HTTP_BODY, sink, pids, hz),
            ) {
                Ok((mut v, r)) => {
                    eprintln!("  profiled: {:.2} Gbit/s under perf", r.gbps());
                    profiles.append(&mut v);
                }
                Err(e) => {
                    eprintln!("ward-bench: no HTTP profile: {e:#}");
                    break;
                }
            }
            clear_dir(&recordings);
        }
    }
    drop((cl_inject, cl_plain));
    drop(gw);
    Ok(out)
}

fn render_http_e2e(s: &mut String, runs: &[HttpE2e], opts: &Opts) {
    if runs.is_empty() {
        return;
    }
    let n = runs.first().map_or(0, |r| r.with.len());
    let _ = writeln!(
        s,
        "\n### HTTP through the gateway, with and without credential injection (issue 14; `ward gateway`, QUIC, recording on; two http devices in one gateway process, one rule injecting a vaulted Basic credential and one not; one keep-alive connection per run, each request answered before the next; {:.1} s per run, with and without interleaved, median of {n})\n",
        opts.bulk.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| workload | without | with injection | with ÷ without | requests/s without → with | gateway CPU s/GB without → with | gateway CPU µs/request without → with | gateway + client CPU s/GB without → with | gateway CPU cores busy without → with |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        // Without → with, medians of `f` over the runs (CPU per GB only means something for bulk).
        let pair = |f: fn(&HttpRun) -> f64, digits: usize, bulk_only: bool| {
            if bulk_only && !r.bulk {
                return "–".to_string();
            }
            format!(
                "{:.digits$} → {:.digits$}",
                median_http(&r.without, f),
                median_http(&r.with, f)
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {} | {} | {} | {} | {} |",
            r.workload,
            r.show(r.without()),
            r.show(r.with()),
            r.ratio(),
            pair(HttpRun::rps, 0, false),
            pair(HttpRun::gw_cpu_per_gb, 2, true),
            pair(HttpRun::gw_us_per_request, 1, false),
            pair(HttpRun::cpu_per_gb, 2, true),
            pair(HttpRun::gw_cores, 2, false),
        );
    }
    let _ = writeln!(s, "\nEvery run, in order (with, without, …):\n");
    for r in runs {
        let fmt = |v: &[HttpRun]| {
            v.iter()
                .map(|x| {
                    if r.bulk {
                        format!("{:.2}", x.gbps())
                    } else {
                        format!("{:.0}", x.rps())
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let paired = r
            .paired()
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "- {}: with {} {u}; without {} {u}; with ÷ the without-run after it: {paired}",
            r.workload,
            fmt(&r.with),
            fmt(&r.without),
            u = r.unit()
        );
    }
}

/// A target-table row: (report, figure, measured, target, met, the gap when not met).
type TargetRow<'a> = &'a dyn Fn(&mut String, &str, String, &str, bool, String);

/// The issue-14 target, end to end: HTTP bulk through injection ≥ 0.9× without, same run.
fn http_target_rows(s: &mut String, runs: &[HttpE2e], row: TargetRow<'_>) {
    if let Some(b) = runs.iter().find(|r| r.bulk) {
        let ratio = b.ratio();
        row(
            s,
            "HTTP bulk through injection ÷ without (issue 14; end to end: `ward gateway`, QUIC, recording on, one gateway process, interleaved, same run)",
            format!(
                "{:.2} ÷ {:.2} Gbit/s = {ratio:.3} (medians of {} runs each)",
                b.with(),
                b.without(),
                b.with.len()
            ),
            "≥ 0.9× without",
            ratio >= 0.9,
            format!(
                "injection costs {:.0} % of the throughput",
                (1.0 - ratio) * 100.0
            ),
        );
    }
}

/// Everything from this line on in docs/benchmarks.md is hand-written and kept by `--out`.
const KEEP_MARKER: &str =
    "<!-- ward-bench keeps everything below this line when it rewrites the file -->";

fn median_bulk(mut runs: Vec<Bulk>) -> Option<Bulk> {
    runs.sort_by(|a, b| a.gbps().total_cmp(&b.gbps()));
    let mid = runs.len() / 2;
    runs.get(mid).copied()
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
    if !r.conn_rate.is_empty() {
        let _ = writeln!(s, "\n### New mutual-TLS QUIC connections per second ({:.0} s per level; each connection opens and closes one session; clients in the bench process's 2-worker `ward-cl` runtime)\n", opts.conn_rate_for.as_secs_f64());
        let _ = writeln!(s, "| parallel clients | connections/s | gateway process, CPU cores busy | clients, CPU cores busy | whole machine busy | gateway CPU ms per connection | client CPU ms per connection | gateway-only ceiling on 2 cores |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in &r.conn_rate {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.2} | {:.0} % | {:.2} | {:.2} | {:.0}/s |",
                c.parallel,
                c.rate,
                c.gw_cores,
                c.cl_cores,
                c.machine_busy * 100.0,
                c.gw_ms(),
                c.cl_ms(),
                2000.0 / c.gw_ms().max(1e-9)
            );
        }
    }
    if let Some(h) = &r.held {
        let _ = writeln!(s, "\n### Certificate holders' connection rate while {} anonymous connections are held ({} sources; no certificate, no stream, keep-alives only; {} parallel certificate holders, {:.0} s each, same run)\n", h.attempted, HELD_SOURCES, h.parallel, opts.conn_rate_for.as_secs_f64());
        let _ = writeln!(s, "| certificate-holder connections/s, alone | while anonymous held | ratio | anonymous handshakes finished | anonymous still open after |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            s,
            "| {:.0} | {:.0} | {:.2} | {} | {} |",
            h.without,
            h.with,
            h.with / h.without.max(1e-9),
            h.finished,
            h.open_after
        );
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

    if !r.idle.is_empty() {
        let _ = writeln!(s, "\n### Idle sessions held open (idle device that accepts and holds; QUIC, {} connections × {} sessions wanted; fresh gateway process each)\n", opts.idle.0, opts.idle.1);
        let _ = writeln!(s, "| gateway | sessions open | connections | time to open s | RSS fresh MiB | RSS with sessions MiB | KiB per session | fds fresh → with sessions (per session) | open-files limit | stopped because |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|---:|---|");
        for i in &r.idle {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} → {} ({:.2}) | {} | {} |",
                i.label,
                i.opened,
                i.connections,
                i.secs,
                i.rss_before_kib as f64 / 1024.0,
                i.rss_after_kib as f64 / 1024.0,
                i.per_session_kib(),
                i.fds_before,
                i.fds_after,
                i.fds_per_session(),
                i.nofile.map_or("?".into(), |n| n.to_string()),
                i.stopped.clone().unwrap_or_else(|| "–".into())
            );
        }
    }
    if !r.profiles.is_empty() {
        let _ = writeln!(
            s,
            "\n### Profiles: gateway and client processes, recording on (self time)\n"
        );
        let _ = writeln!(s, "Command, per process, during one extra run of the figure named (its own result is not used; bulk runs {:.1} s, the connection run {:.1} s): `perf record -g -F 999 -p PID -o FILE -- sleep T` (T = the run + 0.3 s), then `perf report --no-children --sort symbol --stdio -q -g none -i FILE`. Kernel symbols are marked `[k]`, user-space `[.]`.\n", opts.bulk.as_secs_f64(), opts.conn_rate_for.as_secs_f64());
        for p in &r.profiles {
            let _ = writeln!(s, "**{}**\n", p.what);
            let _ = writeln!(s, "| self % | symbol |");
            let _ = writeln!(s, "|---:|---|");
            for (pct, sym) in &p.top {
                let _ = writeln!(
                    s,
                    "| {pct:.2} | `{}` |",
                    sym.replace('|', "\\|").replace('`', "'")
                );
            }
            let _ = writeln!(s);
        }
    }

    render_inject(&mut s, &r.inject);
    render_http_e2e(&mut s, &r.http, opts);

    // The team's performance targets, printed with every run so docs/benchmarks.md carries them: every row, measured, target, verdict with the gap.
    let _ = writeln!(s, "\n### Against the targets, all from this run\n");
    let _ = writeln!(s, "| figure | measured | target | verdict |");
    let _ = writeln!(s, "|---|---|---|---|");
    let row = |s: &mut String, fig: &str, measured: String, target: &str, ok: bool, gap: String| {
        let v = if ok {
            "met".to_string()
        } else {
            format!("**not met** — {gap}")
        };
        let _ = writeln!(s, "| {fig} | {measured} | {target} | {v} |");
    };
    let label = |k: PathKind| {
        if k == PathKind::WardQuic {
            "QUIC"
        } else {
            "TLS/TCP fallback"
        }
    };
    for kind in [PathKind::WardQuic, PathKind::WardTcp] {
        if let (Some(w), Some(p)) = (r.bulk.iter().find(|b| b.1 == kind), best_peer) {
            let ratio = w.2.gbps() / p.2.gbps();
            row(
                &mut s,
                &format!("one bulk session over {}, recording on", label(kind)),
                format!(
                    "{:.2} Gbit/s = {ratio:.2}× {} ({:.2} Gbit/s)",
                    w.2.gbps(),
                    p.0,
                    p.2.gbps()
                ),
                "≥ 1.0× the faster of stunnel / ssh -L",
                ratio >= 1.0,
                format!(
                    "{:.2} Gbit/s short; needs {:.2}× the throughput",
                    p.2.gbps() - w.2.gbps(),
                    1.0 / ratio
                ),
            );
        }
    }
    for kind in [PathKind::WardQuic, PathKind::WardTcp] {
        if let (Some(w), Some(best)) = (r.bulk.iter().find(|b| b.1 == kind), best_peer_cpu) {
            let c = w.2.tunnel_cpu_per_gb();
            row(
                &mut s,
                &format!("CPU s per GB, client + gateway processes, {}", label(kind)),
                format!(
                    "{c:.2} (gateway {:.2} + client {:.2} CPU s for {:.2} GB)",
                    w.2.cpu.gateway,
                    w.2.cpu.client,
                    w.2.bytes as f64 / 1e9
                ),
                &format!("≤ best peer's two processes ({best:.2})"),
                c <= best,
                format!("{:.2}× the best peer's CPU per GB", c / best),
            );
        }
    }
    let quic_on = r.bulk.iter().find(|b| b.1 == PathKind::WardQuic);
    let quic_off = r.bulk.iter().find(|b| b.1 == PathKind::WardQuicNoRec);
    if let (Some(on), Some(off)) = (quic_on, quic_off) {
        let ratio = on.2.gbps() / off.2.gbps();
        row(
            &mut s,
            "recording on ÷ recording off (QUIC bulk; `ward gateway` vs `--serve-norec`, both own processes)",
            format!("{:.2} ÷ {:.2} Gbit/s = {ratio:.2}", on.2.gbps(), off.2.gbps()),
            "≥ 0.9",
            ratio >= 0.9,
            format!("recording costs {:.0} % of the throughput", (1.0 - ratio) * 100.0),
        );
    }
    let quic_enc = r.bulk.iter().find(|b| b.1 == PathKind::WardQuicEnc);
    if let (Some(enc), Some(on)) = (quic_enc, quic_on) {
        let ratio = enc.2.gbps() / on.2.gbps();
        row(
            &mut s,
            "recording encrypted ÷ recording plain (QUIC bulk; `ward gateway` with and without `[recording] recipients`, same run)",
            format!("{:.2} ÷ {:.2} Gbit/s = {ratio:.2}", enc.2.gbps(), on.2.gbps()),
            "≥ 0.85",
            ratio >= 0.85,
            format!("encryption costs {:.0} % of the throughput", (1.0 - ratio) * 100.0),
        );
    }
    for (name, _, b) in r.bulk.iter().filter(|b| b.2.recorded.is_some()) {
        let rec = b.recorded.unwrap_or(0) as f64;
        let ratio = rec / b.bytes as f64;
        row(
            &mut s,
            &format!("recording size ÷ payload bytes (bulk), {name}"),
            format!(
                "{:.3} GB recorded for {:.3} GB moved = {ratio:.4}",
                rec / 1e9,
                b.bytes as f64 / 1e9
            ),
            "≤ 1.05",
            ratio <= 1.05 && rec > 0.0,
            format!("{ratio:.4}"),
        );
    }
    for kind in [PathKind::WardQuic, PathKind::WardTcp] {
        if let (Some(w), Some(d)) = (r.rr.iter().find(|b| b.1 == kind), direct_rr) {
            let (a50, a99) = (w.2.p50 - d.p50, w.2.p99 - d.p99);
            row(
                &mut s,
                &format!("added round trip vs direct TCP, 64 B, {}", label(kind)),
                format!("+{a50:.1} µs p50, +{a99:.1} µs p99"),
                "p50 ≤ 100 µs, p99 ≤ 500 µs",
                a50 <= 100.0 && a99 <= 500.0,
                format!(
                    "{:.0} µs over at p50, {:.0} µs at p99",
                    (a50 - 100.0).max(0.0),
                    (a99 - 500.0).max(0.0)
                ),
            );
        }
    }
    if let (Some(o), Some(d)) = (r.open_quic_existing, direct_rr) {
        let budget = d.p50 + 200.0;
        row(
            &mut s,
            "new session on an open QUIC connection, recording on",
            format!(
                "median {:.0} µs (recording off: {})",
                o.p50,
                r.open_quic_existing_norec
                    .map_or("–".into(), |n| format!("{:.0} µs", n.p50))
            ),
            &format!(
                "≤ 1 round trip + 200 µs = {budget:.0} µs (direct TCP p50 {:.1} + 200)",
                d.p50
            ),
            o.p50 <= budget,
            format!("{:.0} µs over", o.p50 - budget),
        );
    }
    if let Some(best) = r.conn_rate.iter().max_by(|a, b| a.rate.total_cmp(&b.rate)) {
        let side = if best.gw_cores >= best.cl_cores {
            "gateway"
        } else {
            "clients"
        };
        row(
            &mut s,
            "new mutual-TLS QUIC connections per second",
            format!("{:.0}/s at {} parallel clients; machine {:.0} % busy: gateway {:.2} cores ({:.2} ms/connection), clients {:.2} cores ({:.2} ms/connection), the {side} use more", best.rate, best.parallel, best.machine_busy * 100.0, best.gw_cores, best.gw_ms(), best.cl_cores, best.cl_ms()),
            "≥ 1000/s sustained",
            best.rate >= 1000.0,
            format!("{:.0}/s short ({:.2}× needed)", 1000.0 - best.rate, 1000.0 / best.rate.max(1e-9)),
        );
    }
    for i in &r.idle {
        let at = i.rss_at_kib(10_000) / 1024.0;
        let all = i.opened >= 10_000;
        let measured = if all {
            format!(
                "{at:.0} MiB with {} sessions open ({:.1} KiB each; fresh process {:.0} MiB; {:.2} fds each)",
                i.opened,
                i.per_session_kib(),
                i.rss_before_kib as f64 / 1024.0,
                i.fds_per_session()
            )
        } else {
            format!(
                "{} sessions open: {:.0} MiB, {:.1} KiB and {:.2} fds each → {at:.0} MiB at 10,000 (projected){}",
                i.opened,
                i.rss_after_kib as f64 / 1024.0,
                i.per_session_kib(),
                i.fds_per_session(),
                i.stopped
                    .as_ref()
                    .map(|s| format!("; {s}"))
                    .unwrap_or_else(|| format!("; {} wanted by this run", i.wanted))
            )
        };
        let fits = at <= 1024.0;
        let (ok, gap) = match (fits, all, &i.stopped) {
            (false, _, _) => (false, format!("{:.0} MiB over", at - 1024.0)),
            (true, true, _) => (true, String::new()),
            (true, false, Some(_)) => (
                false,
                format!(
                    "memory fits (projected), but the gateway could hold only {} sessions: {:.0} fds per session against an open-files limit of {}",
                    i.opened,
                    i.fds_per_session().ceil(),
                    i.nofile.map_or("?".into(), |n| n.to_string())
                ),
            ),
            (true, false, None) => (true, String::new()),
        };
        row(
            &mut s,
            &format!("10,000 concurrent idle sessions, gateway RSS, {}", i.label),
            measured,
            "≤ 1 GiB",
            ok,
            gap,
        );
    }
    for kind in [PathKind::WardQuic, PathKind::WardTcp] {
        if let (Some(c), Some(one)) = (
            r.concurrent.iter().find(|b| b.1 == kind),
            r.bulk.iter().find(|b| b.1 == kind),
        ) {
            let ratio = c.2.gbps() / one.2.gbps();
            row(
                &mut s,
                &format!(
                    "{} concurrent bulk sessions, aggregate, {}",
                    opts.concurrent, c.0
                ),
                format!("{:.2} Gbit/s = {ratio:.2}× one session", c.2.gbps()),
                "≥ 0.8× one session",
                ratio >= 0.8,
                format!("{ratio:.2}×"),
            );
        }
    }
    if let Some(b) = r.inject.first() {
        let ratio = b.ratio();
        row(
            &mut s,
            "HTTP bulk through credential injection ÷ without (pure stage, same run)",
            format!(
                "{:.2} ÷ {:.2} Gbit/s = {ratio:.3}",
                b.gbps(b.with),
                b.gbps(b.without)
            ),
            "≥ 0.9",
            ratio >= 0.9,
            format!(
                "injection costs {:.0} % of the throughput",
                (1.0 - ratio) * 100.0
            ),
        );
    }
    http_target_rows(&mut s, &r.http, &row);
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

Ward's data-path benchmark (issues #3 and #7). It measures, in one run on 127.0.0.1, every figure in
the team's performance targets side by side (each listed with its verdict under "Against the targets"): one bulk session's throughput and CPU per
GB, recording on and off, recording size, the 64-byte round trip, session open times, new mutual-TLS
connections per second, 100 concurrent bulk sessions and the gateway's memory with many idle
sessions — for direct TCP (the baseline), Ward over QUIC and Ward over the TLS/TCP fallback, and, when
installed, the peers a user would pick instead of Ward: a `socat` plain relay, a `stunnel4` TLS 1.3 pair
with client certificates required and verified (using Ward's own CA and identities) and `ssh -L -c
aes128-gcm@openssh.com` to a throwaway sshd. With `perf` installed it also profiles the gateway and
client processes during bulk. Figures are ratios against baselines measured in the same run, because
absolute figures drift on shared machines. It prints figures only; nothing asserts on time.

## Running it

```sh
scripts/bench.sh            # installs the Debian peers and linux-perf if missing, builds, full run (~3 min), writes this file
scripts/bench.sh --quick    # smoke run (~40 s), prints only
# or by hand (the bench builds `target/release/ward` itself when run by cargo):
cargo run --release -p ward-tests --bin ward-bench -- --out docs/benchmarks.md
```

Always release mode: a debug build of quinn is about ten times slower.

To compare two builds' code paths, run the pair a second time with `TMPDIR=/dev/shm`: the bench's
state dirs then live in memory, and a recorded session open no longer waits on the disk's journal
(its figure on disk follows the machine's sync latency, which moves 2× between runs here).

## How it is measured

- **Processes.** The gateway is the release binary, `target/release/ward gateway --config FILE`, in its
  own process (tokio's default runtime: one worker per CPU). The recording-off gateway cannot be the
  `ward` binary (it has no such switch, by design); it is the bench binary re-executed as
  `ward-bench --serve-norec FILE`, which runs the same library gateway with the benchmark-only
  `Options { no_recording: true }` on the same runtime, also in its own process. Each client is a
  `target/release/ward connect DEVICE --gateway … --identity … --transport quic|tcp --listen
  127.0.0.1:0` process (every local TCP connection becomes its own session). Both are started under
  `sh -c 'ulimit -n <hard limit>; exec …'`. The devices (a sink on OS threads, `ward::sim::echo`, an
  idle device that accepts and holds) and the load generator (blocking sockets on OS threads, like
  iperf3 or telnet) are in the bench process; the generator talks TCP to the client's local port, to
  the device directly (baseline) and to the peers' local ports. Every path crosses the same loopback
  TCP hops at the ends. The gateway logs per-session events only (none per byte).
- **Bulk.** The generator writes 256 KiB chunks for a fixed time, half-closes, and waits until the
  device's close comes back through the tunnel, so every byte has reached the sink (the sink's count
  is checked). Gbit/s = bytes ÷ (connect → close seen). Runs of all paths are interleaved and the
  median of the repetitions is reported.
- **CPU.** utime + stime from /proc/PID/stat over the bulk run: Ward's gateway process plus the
  `ward connect` process carrying the run; for a peer, its process tree (both ends). CPU s/GB = that ÷
  GB moved. "Bench process" is the generator and the sink.
- **Round trip.** One connection, 64 bytes written, 64 bytes read back, one at a time, `TCP_NODELAY`
  on the generator's socket, 200 warm-up exchanges discarded.
- **Session open.** `Client::open` (in the bench's 2-worker `ward-cl` runtime) to the echo device until
  the gateway's `Opened` arrives (policy check, device dial and recording file creation included); the
  session is then closed cleanly, untimed. "New connection" builds a new `Client` (untimed: it reads
  the identity files) and times the handshake plus the open. The connection rate runs 16 and 64 such
  clients in parallel, each opening and closing one session per connection, and reads how many CPU
  cores the gateway process and the clients kept busy (which side saturates).
- **Concurrent.** 100 generator threads at once, through one `ward connect --listen` (QUIC: 100
  streams on one connection; TLS/TCP: 100 connections); aggregate Gbit/s.
- **Recording.** Recording size is the growth of the recordings directory over a bulk run (measured
  once the recorder has caught up; the files are then deleted to bound disk use).
- **Idle sessions.** A fresh gateway process (so RSS is not the bulk runs' high-water mark); 40 QUIC
  connections × 250 sessions (the default `max_sessions_per_connection` is 256) to a device that
  accepts and holds its connections; the config sets `max_sessions = 20000`,
  `max_connections_per_source = 1024`, `max_connections = 2048`, `idle_timeout = "15m"`. After
  everything is open and 1.5 s of settling, VmRSS and the number of open descriptors are read from
  /proc/PID. The bench never opens more sessions than the gateway's open-files limit allows (it
  measures descriptors per session after the first 250); when it stops short, the 10,000-session RSS
  is projected from the measured per-session growth and the row says so. Done for the `ward` binary
  (recording on) and for the recording-off gateway.
- **Profiles.** `perf record -g -F 999 -p PID -- sleep T` on the gateway and on the client process
  during one extra run each of: one bulk session over QUIC and over TLS/TCP (recording on), the
  new-connection rate at 64 parallel clients (the client side is the bench process), and 100
  concurrent QUIC bulk sessions; `perf report --no-children --sort symbol` gives self time per symbol.
  Those runs' own figures are not used.
- **HTTP credential injection, end to end (issue 14).** A separate `ward gateway` process (the
  release binary, QUIC, recording on) whose config has two `protocol = "http"` devices, each an
  HTTP/1.1 device in the bench process (it reads each request's head and `Content-Length` body,
  checks `Authorization` and answers `204` to a POST, `200` with an 11-byte JSON body to a GET):
  `http-inject`, whose rule has `inject = "console"` (a Basic credential vaulted before the gateway
  starts with `ward vault set http-inject console --user svc --stdin --config FILE`; the device
  refuses any request without exactly that header), and `http-plain`, whose rule injects nothing
  (the device refuses any request with an `Authorization`). One `ward connect --listen` process per
  device. The generator sends no `Authorization`; one keep-alive connection (one session) per run,
  each request answered before the next: 1 MiB POST bodies (Gbit/s = request bytes ÷ connect →
  device's close), and small GETs (requests/s). With and without injection alternate (with,
  without, with, …; 5 runs each) and the medians are compared; CPU is
  that of the gateway and the `ward connect` process over each run. With `perf`, one more bulk run
  of each is profiled (gateway process).

## Latest results

"#;

// ---------------------------------------------------------------------------------------------

fn main() -> Result<()> {
    // Re-executed as the recording-off gateway process (see `start_gateway`).
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--serve-norec") {
        let config = argv
            .next()
            .ok_or_else(|| anyhow!("--serve-norec needs a config file"))?;
        return serve_norec(Path::new(&config));
    }
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
    if opts.web_list {
        return web_list();
    }
    if opts.web_rtt {
        return web_rtt(&opts);
    }
    if opts.store_open {
        return store_open(&opts);
    }
    if opts.dicom_only {
        return dicom_only(&opts);
    }
    if opts.http_inject_only {
        // Only HTTP through the gateway with and without injection: print, stop.
        let hz = clock_ticks_per_sec();
        let load_at_start = loadavg();
        let ward_bin = ward_binary(&opts)?;
        let w = ward_setup(&SystemClock)?;
        eprintln!("ward-bench: HTTP through the gateway, with and without credential injection");
        let mut results = Results::default();
        results.http = http_inject_e2e(&ward_bin, &w, &opts, hz, &mut results.profiles)?;
        let mut s = String::new();
        render_http_e2e(&mut s, &results.http, &opts);
        let _ = writeln!(
            s,
            "\n| figure | measured | target | verdict |\n|---|---|---|---|"
        );
        http_target_rows(
            &mut s,
            &results.http,
            &|s, fig, measured, target, ok, gap| {
                let v = if ok {
                    "met".to_string()
                } else {
                    format!("**not met** — {gap}")
                };
                let _ = writeln!(s, "| {fig} | {measured} | {target} | {v} |");
            },
        );
        for p in &results.profiles {
            let _ = writeln!(s, "\n**{}**\n\n| self % | symbol |\n|---:|---|", p.what);
            for (pct, sym) in &p.top {
                let _ = writeln!(
                    s,
                    "| {pct:.2} | `{}` |",
                    sym.replace('|', "\\|").replace('`', "'")
                );
            }
        }
        println!("\n{}\n{s}", machine(&load_at_start));
        return Ok(());
    }
    eprintln!("ward-bench: HTTP credential injection (pure stage)");
    let inject = inject_bench(opts.quick)?;
    if opts.inject_only {
        let mut s = String::new();
        render_inject(&mut s, &inject);
        println!("{s}");
        return Ok(());
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

    // Ward: the gateway as deployed (the `ward` binary, recording on) and the recording-off gateway
    // (this binary as `--serve-norec`), each in its own process, each with its own state dir; a
    // `ward connect --listen` process per (gateway, transport, device).
    let ward_bin = ward_binary(&opts)?;
    let idle_dev = IdleDevice::start()?;
    let devices = (sink.addr, echo, idle_dev.addr);
    let w = ward_setup(clock.as_ref())?;
    let cl_rt = runtime("ward-cl", 2)?;
    let gw_on = start_gateway(&ward_bin, &w, devices, "state", true)?;
    let gw_off = start_gateway(&ward_bin, &w, devices, "state-norec", false)?;
    // The same `ward gateway`, recordings encrypted to an age recipient (issue 18).
    let gw_enc = start_encrypting_gateway(&ward_bin, &w, devices, "state-enc")?;
    let mut clients = Vec::new();
    let mut client =
        |gw: &GatewayProc, transport: &str, device: &str, tag: &str| -> Result<(u32, SocketAddr)> {
            let addr = if transport == "quic" { gw.quic } else { gw.tcp };
            let (p, local) = start_client(&ward_bin, &w, addr, transport, device, tag)?;
            let pid = p.pid();
            clients.push(p);
            Ok((pid, local))
        };
    let (quic_sink_pid, quic_sink) = client(&gw_on, "quic", "sink", "quic-sink")?;
    let (_, quic_echo) = client(&gw_on, "quic", "echo", "quic-echo")?;
    let (tcp_sink_pid, tcp_sink) = client(&gw_on, "tcp", "sink", "tcp-sink")?;
    let (_, tcp_echo) = client(&gw_on, "tcp", "echo", "tcp-echo")?;
    let (nr_sink_pid, nr_sink) = client(&gw_off, "quic", "sink", "norec-sink")?;
    let (_, nr_echo) = client(&gw_off, "quic", "echo", "norec-echo")?;
    let (enc_sink_pid, enc_sink) = client(&gw_enc, "quic", "sink", "enc-sink")?;
    let (_, enc_echo) = client(&gw_enc, "quic", "echo", "enc-echo")?;
    for addr in [quic_echo, tcp_echo, nr_echo, enc_echo] {
        wait_ready(addr, &mut [], &w.dir.path().join("client-quic-echo.log"))
            .with_context(|| format!("ward connect on {addr}"))?;
    }
    let rec_dir = Some(gw_on.state.join(ward_server::RECORDINGS_DIR));
    let (gw_pid, nr_gw_pid) = (gw_on.proc.pid(), gw_off.proc.pid());

    let mut results = Results {
        inject,
        ..Results::default()
    };
    let mut paths = vec![
        Route {
            name: "direct TCP".into(),
            sink: sink.addr,
            echo,
            roots: vec![],
            gw_pid: None,
            cl_pid: None,
            kind: PathKind::Direct,
            recordings: None,
        },
        Route {
            name: "Ward, QUIC".into(),
            sink: quic_sink,
            echo: quic_echo,
            roots: vec![],
            gw_pid: Some(gw_pid),
            cl_pid: Some(quic_sink_pid),
            kind: PathKind::WardQuic,
            recordings: rec_dir.clone(),
        },
        Route {
            name: "Ward, TLS/TCP fallback".into(),
            sink: tcp_sink,
            echo: tcp_echo,
            roots: vec![],
            gw_pid: Some(gw_pid),
            cl_pid: Some(tcp_sink_pid),
            kind: PathKind::WardTcp,
            recordings: rec_dir,
        },
        Route {
            name: "Ward, QUIC, recording off".into(),
            sink: nr_sink,
            echo: nr_echo,
            roots: vec![],
            gw_pid: Some(nr_gw_pid),
            cl_pid: Some(nr_sink_pid),
            kind: PathKind::WardQuicNoRec,
            recordings: None,
        },
        Route {
            name: "Ward, QUIC, recording encrypted".into(),
            sink: enc_sink,
            echo: enc_echo,
            roots: vec![],
            gw_pid: Some(gw_enc.proc.pid()),
            cl_pid: Some(enc_sink_pid),
            kind: PathKind::WardQuicEnc,
            recordings: Some(gw_enc.state.join(ward_server::RECORDINGS_DIR)),
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
                        gw_pid: None,
                        cl_pid: None,
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
                "{name}: {:.2} Gbit/s; CPU s: gateway {:.2}, client {:.2}, peer {:.2}, process {:.2}{}",
                b.gbps(),
                c.gateway,
                c.client,
                c.peer,
                c.total,
                b.recorded
                    .map(|r| format!(
                        "; recorded {r} bytes for {} moved = {:.4}",
                        b.bytes,
                        r as f64 / b.bytes as f64
                    ))
                    .unwrap_or_default()
            );
        }
        cl_rt.shutdown_background();
        dev_rt.shutdown_background();
        return Ok(());
    }

    // 1b. Profiles of the gateway and client processes, QUIC and TLS/TCP bulk with recording on.
    if opts.profile {
        eprintln!("ward-bench: perf profiles (bulk, recording on)");
        for p in paths
            .iter()
            .filter(|p| matches!(p.kind, PathKind::WardQuic | PathKind::WardTcp))
        {
            match profile_bulk(p, &opts, &sink, hz, w.dir.path()) {
                Ok(mut v) => results.profiles.append(&mut v),
                Err(e) => {
                    eprintln!("ward-bench: no profile of {}: {e:#}", p.name);
                    results
                        .skipped
                        .push(format!("profile of {} ({e:#})", p.name));
                    break;
                }
            }
        }
    } else {
        results.skipped.push("profiles (--no-profile)".into());
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

    // 3. Session opens (clients in this process's `ward-cl` runtime, gateways in their processes).
    eprintln!("ward-bench: session opens");
    results.open_quic_existing = Some(cl_rt.block_on(open_times(
        gw_on.quic,
        &w.files,
        Transport::Quic,
        opts.opens,
        true,
    ))?);
    results.open_quic_existing_norec = Some(cl_rt.block_on(open_times(
        gw_off.quic,
        &w.files,
        Transport::Quic,
        opts.opens,
        true,
    ))?);
    results.open_quic_new = Some(cl_rt.block_on(open_times(
        gw_on.quic,
        &w.files,
        Transport::Quic,
        opts.opens,
        false,
    ))?);
    results.open_tcp_new = Some(cl_rt.block_on(open_times(
        gw_on.tcp,
        &w.files,
        Transport::Tcp,
        opts.opens,
        false,
    ))?);
    for &parallel in &opts.conn_rate_parallel {
        let c0 = cpu_snap(&[], Some(gw_pid), None);
        let m0 = machine_ticks();
        let t0 = Instant::now();
        let rate = cl_rt.block_on(connection_rate(
            gw_on.quic,
            &w.files,
            parallel,
            opts.conn_rate_for,
        ))?;
        let wall = t0.elapsed().as_secs_f64();
        let c1 = cpu_snap(&[], Some(gw_pid), None);
        let m1 = machine_ticks();
        let machine_busy =
            m1.0.saturating_sub(m0.0) as f64 / (m1.1.saturating_sub(m0.1).max(1)) as f64;
        let cpu = cpu_use(&c0, &c1, hz);
        eprintln!(
            "  {parallel:>3} parallel: {rate:.0} new QUIC connections/s; gateway {:.2} cores, clients {:.2} cores, machine {:.0} % busy",
            cpu.gateway / wall,
            cpu.client / wall,
            machine_busy * 100.0
        );
        results.conn_rate.push(ConnRate {
            parallel,
            rate,
            gw_cores: cpu.gateway / wall,
            cl_cores: cpu.client / wall,
            machine_busy,
        });
    }
    let parallel = opts.conn_rate_parallel.first().copied().unwrap_or(16);
    match cl_rt.block_on(rate_with_anonymous_held(
        gw_on.quic,
        &w.files,
        parallel,
        opts.conn_rate_for,
    )) {
        Ok(h) => {
            eprintln!(
                "  certificate holders, {parallel} parallel: {:.0}/s alone, {:.0}/s while {} anonymous connections were tried ({} finished the handshake, {} still open after); ratio {:.2}",
                h.without, h.with, h.attempted, h.finished, h.open_after, h.with / h.without.max(1e-9)
            );
            results.held = Some(h);
        }
        Err(e) => results.skipped.push(format!(
            "connection rate with anonymous connections held ({e:#})"
        )),
    }
    if opts.profile && !results.profiles.is_empty() {
        // One more run at the highest level, under perf: the gateway, and this process (whose only
        // busy threads during it are the clients' `ward-cl` runtime).
        let parallel = opts.conn_rate_parallel.iter().copied().max().unwrap_or(16);
        let procs = [
            (
                format!("new QUIC connections, {parallel} parallel — gateway process (`ward gateway`, pid {gw_pid})"),
                gw_pid,
            ),
            (
                format!("new QUIC connections, {parallel} parallel — clients (bench process, `ward-cl` runtime)"),
                std::process::id(),
            ),
        ];
        match profile_during(
            &procs,
            opts.conn_rate_for.as_secs_f64(),
            w.dir.path(),
            "connrate",
            || {
                cl_rt.block_on(connection_rate(
                    gw_on.quic,
                    &w.files,
                    parallel,
                    opts.conn_rate_for,
                ))
            },
        ) {
            Ok((mut v, rate)) => {
                eprintln!("  profiled: {rate:.0} new QUIC connections/s under perf");
                results.profiles.append(&mut v);
            }
            Err(e) => results
                .skipped
                .push(format!("profile of new connections ({e:#})")),
        }
    }

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
    if opts.profile && !results.profiles.is_empty() {
        if let Some(p) = paths.iter().find(|p| p.kind == PathKind::WardQuic) {
            if let (Some(gw), Some(cl)) = (p.gw_pid, p.cl_pid) {
                let n = opts.concurrent;
                let procs = [
                    (format!("{}, {n} concurrent bulk sessions — gateway process (`ward gateway`, pid {gw})", p.name), gw),
                    (format!("{}, {n} concurrent bulk sessions — client process (`ward connect --listen`, pid {cl})", p.name), cl),
                ];
                match profile_during(
                    &procs,
                    opts.bulk.as_secs_f64(),
                    w.dir.path(),
                    "concurrent",
                    || bulk(p, n, opts.bulk, &sink, hz),
                ) {
                    Ok((mut v, b)) => {
                        eprintln!("  profiled: {:.2} Gbit/s aggregate under perf", b.gbps());
                        results.profiles.append(&mut v);
                    }
                    Err(e) => results
                        .skipped
                        .push(format!("profile of concurrent bulk ({e:#})")),
                }
            }
        }
    }
    drop(peers);
    drop(clients);
    drop(gw_on);
    drop(gw_off);

    // 4b. HTTP through the gateway with and without credential injection (its own gateway
    // process: two http devices, one rule injecting and one not).
    eprintln!("ward-bench: HTTP through the gateway, with and without credential injection");
    results.http = http_inject_e2e(&ward_bin, &w, &opts, hz, &mut results.profiles)?;

    // 5. Idle sessions, each on a fresh gateway process (so its RSS is not the bulk runs' high-water
    // mark): recording on (the `ward` binary), then recording off.
    let (conns, per_conn) = opts.idle;
    eprintln!(
        "ward-bench: {} idle sessions ({conns} QUIC connections × {per_conn})",
        conns * per_conn
    );
    for (state, recording, label) in [
        ("state-idle", true, "`ward gateway`, recording on"),
        ("state-idle-norec", false, "recording off (`--serve-norec`)"),
    ] {
        let gw = start_gateway(&ward_bin, &w, devices, state, recording)?;
        // A fresh process: let it finish starting before the baseline is read.
        std::thread::sleep(Duration::from_millis(300));
        let idle = idle_sessions(&cl_rt, &gw, &w.files, conns, per_conn, label)?;
        eprintln!(
            "  {label}: {} sessions in {:.1} s; RSS {:.1} → {:.1} MiB ({:.1} KiB/session); fds {} → {} (limit {}){}",
            idle.opened,
            idle.secs,
            idle.rss_before_kib as f64 / 1024.0,
            idle.rss_after_kib as f64 / 1024.0,
            idle.per_session_kib(),
            idle.fds_before,
            idle.fds_after,
            idle.nofile.map_or("?".into(), |n| n.to_string()),
            idle.stopped.as_ref().map(|s| format!("; {s}")).unwrap_or_default()
        );
        results.idle.push(idle);
        drop(gw);
        idle_dev.release();
    }

    let report = render(&opts, &results, &cmd);
    let machine_text = machine(&load_at_start);
    println!("\n{machine_text}\n{report}");
    eprintln!("ward-bench: done in {:.0} s", wall.elapsed().as_secs_f64());
    if let Some(out) = &opts.out {
        // Keep the hand-written analysis below the marker, if the file has one.
        let kept = std::fs::read_to_string(out)
            .ok()
            .and_then(|old| {
                old.find(KEEP_MARKER)
                    .map(|i| old.get(i..).unwrap_or("").to_string())
            })
            .unwrap_or_else(|| format!("{KEEP_MARKER}\n"));
        let full = format!("{DOC_HEAD}{machine_text}\n{report}\n{kept}");
        std::fs::write(out, full).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("ward-bench: wrote {}", out.display());
    }
    // The runtimes hold listener tasks that never end; drop them without waiting.
    cl_rt.shutdown_background();
    dev_rt.shutdown_background();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// DICOM through the gateway, with the decoder and an operation list, and with decoding off
// (issue 15).

/// One C-STORE's data set in the DICOM run.
const DICOM_IMAGE: usize = 4 << 20;
/// P-DATA-TF PDUs of the data sets (dcmtk's default maximum PDU).
const DICOM_PDU: usize = 16 << 10;

fn dicom_item(ty: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0];
    v.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn dicom_pdu(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, 0];
    v.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// An A-ASSOCIATE-RQ proposing CT Image Storage (context 1) and Verification (context 3).
fn dicom_associate_rq() -> Vec<u8> {
    let mut b = vec![0, 1, 0, 0];
    b.extend_from_slice(b"SINK            BENCHSCU        ");
    b.extend_from_slice(&[0u8; 32]);
    b.extend(dicom_item(0x10, b"1.2.840.10008.3.1.1.1"));
    for (id, sop) in [
        (1u8, &b"1.2.840.10008.5.1.4.1.1.2"[..]),
        (3, b"1.2.840.10008.1.1"),
    ] {
        let mut d = vec![id, 0, 0, 0];
        d.extend(dicom_item(0x30, sop));
        d.extend(dicom_item(0x40, b"1.2.840.10008.1.2.1"));
        b.extend(dicom_item(0x20, &d));
    }
    b.extend(dicom_item(0x50, &dicom_item(0x51, &16384u32.to_be_bytes())));
    dicom_pdu(0x01, &b)
}

/// One C-STORE request: its command set in a PDU, then `DICOM_IMAGE` bytes of data set in
/// P-DATA-TF PDUs of `DICOM_PDU` bytes.
fn dicom_store() -> Vec<u8> {
    let el = |out: &mut Vec<u8>, e: u16, v: &[u8]| {
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(v);
    };
    let mut els = Vec::new();
    el(&mut els, 0x0002, b"1.2.840.10008.5.1.4.1.1.2\0");
    el(&mut els, 0x0100, &1u16.to_le_bytes());
    el(&mut els, 0x0110, &1u16.to_le_bytes());
    el(&mut els, 0x0700, &0u16.to_le_bytes());
    el(&mut els, 0x0800, &0u16.to_le_bytes());
    el(&mut els, 0x1000, b"1.2.826.0.1.3680043.9.7433.99.1\0");
    let mut cmd = Vec::new();
    el(
        &mut cmd,
        0x0000,
        &u32::try_from(els.len()).unwrap_or(0).to_le_bytes(),
    );
    cmd.extend(els);
    let pdv = |pc: u8, mch: u8, frag: &[u8]| {
        let mut v = u32::try_from(frag.len() + 2)
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec();
        v.push(pc);
        v.push(mch);
        v.extend_from_slice(frag);
        v
    };
    let mut out = dicom_pdu(0x04, &pdv(1, 0x03, &cmd));
    let data: Vec<u8> = (0..DICOM_IMAGE).map(|i| (i * 31 % 251) as u8).collect();
    let frag = DICOM_PDU - 6;
    let n = data.chunks(frag).count();
    for (k, c) in data.chunks(frag).enumerate() {
        let last = if k + 1 == n { 0x02 } else { 0x00 };
        out.extend(dicom_pdu(0x04, &pdv(1, last, c)));
    }
    out
}

/// Send an association request and C-STOREs of `total` bytes of data sets through `addr` to
/// `sink`, half-close, and wait until the sink has every byte: the seconds it took.
fn dicom_store_run(addr: SocketAddr, sink: &Sink, store: &[u8], total: usize) -> Result<f64> {
    let before = sink.received.load(Ordering::SeqCst);
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let start = Instant::now();
    let rq = dicom_associate_rq();
    s.write_all(&rq)?;
    let mut sent = rq.len() as u64;
    for _ in 0..total.div_ceil(DICOM_IMAGE) {
        for c in store.chunks(WRITE_CHUNK) {
            s.write_all(c)?;
        }
        sent += store.len() as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while sink.received.load(Ordering::SeqCst) - before < sent {
        if Instant::now() > deadline {
            bail!(
                "the sink got {} of {sent} bytes",
                sink.received.load(Ordering::SeqCst) - before
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(start.elapsed().as_secs_f64())
}

fn dicom_config(quic: SocketAddr, tcp: SocketAddr, sink: SocketAddr, state: &str) -> String {
    format!(
        r#"{}
[[device]]
id = "dicom-on"
address = "{sink}"
protocol = "dicom"
labels = {{ bench = "dicom" }}

[[device]]
id = "dicom-off"
address = "{sink}"
protocol = "raw"
labels = {{ bench = "raw" }}

[[rule]]
name = "bench-dicom-stores"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ ids = ["dicom-on"] }}
operations.dicom = {{ allow = ["C-ECHO", "C-STORE"] }}

[[rule]]
name = "bench-dicom-raw"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ ids = ["dicom-off"] }}
"#,
        gateway_section(quic, tcp, state)
    )
}

/// `--dicom-only`: the release gateway (QUIC, recording on) with a `dicom` device under an
/// operation list and a `raw` device on the same sink; C-STORE streams through each, interleaved;
/// medians and their ratio printed.
fn dicom_only(opts: &Opts) -> Result<()> {
    let load_at_start = loadavg();
    let ward_bin = ward_binary(opts)?;
    let w = ward_setup(&SystemClock)?;
    let sink = start_sink()?;
    let state = "state-dicom";
    let (quic, tcp) = (free_udp_port()?, free_port()?);
    let config = w.dir.path().join(format!("{state}.toml"));
    std::fs::write(&config, dicom_config(quic, tcp, sink.addr, state))?;
    let gw = launch_gateway(&ward_bin, &w, &config, (quic, tcp), state, true)?;
    let (_on_proc, on) = start_client(&ward_bin, &w, gw.quic, "quic", "dicom-on", "dicom-on")?;
    let (_off_proc, off) = start_client(&ward_bin, &w, gw.quic, "quic", "dicom-off", "dicom-off")?;
    let recordings = gw.state.join(ward_server::RECORDINGS_DIR);
    let store = dicom_store();
    let total: usize = if opts.quick { 32 << 20 } else { 256 << 20 };
    eprintln!(
        "ward-bench: DICOM C-STORE through the gateway, {} MiB a run, with and without the decoder",
        total >> 20
    );
    for addr in [on, off] {
        dicom_store_run(addr, &sink, &store, 8 << 20).context("DICOM warm-up")?;
    }
    let reps = if opts.quick { 1 } else { 3 };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        for (decoding, addr) in [(true, on), (false, off)] {
            clear_dir(&recordings);
            let secs = dicom_store_run(addr, &sink, &store, total)?;
            let mbs = total as f64 / secs / 1e6;
            eprintln!(
                "  {:<46} {mbs:>8.1} MB/s ({secs:.2} s)",
                if decoding {
                    "dicom device, decoder + operation list"
                } else {
                    "raw device, decoding off"
                }
            );
            if decoding {
                with.push(mbs);
            } else {
                without.push(mbs);
            }
        }
    }
    clear_dir(&recordings);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (m_with, m_without) = (median(&mut with), median(&mut without));
    let ratio = if m_without > 0.0 {
        m_with / m_without
    } else {
        0.0
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### DICOM C-STORE through the gateway, with the decoder and an operation list, and with decoding off (issue 15; `ward gateway`, QUIC, recording on; {} MiB of data sets in 4 MiB C-STOREs and 16 KiB P-DATA-TF PDUs a run; median of {reps}, interleaved)\n",
        total >> 20
    );
    let _ = writeln!(
        s,
        "| workload | decoding off (raw device) | decoder + operation list (dicom device) | with ÷ without | target |\n|---|---:|---:|---:|---|"
    );
    let _ = writeln!(
        s,
        "| C-STORE stream | {m_without:.1} MB/s | {m_with:.1} MB/s | {ratio:.3} | ≥ 0.9 ({}) |",
        if ratio >= 0.9 { "met" } else { "**not met**" }
    );
    println!("\n{}\n{s}", machine(&load_at_start));
    drop(gw);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The web console's session listing over 100,000 indexed sessions (issue 16): one page answered
// from the session index (SQL), and the same through the API (the router in process, as a
// security caller: role check, the index query, the `stat` of each row on the page, JSON, and the
// audit event committed — fsynced — before the answer).

/// Indexed sessions.
const WEB_ROWS: u32 = 100_000;
/// Samples per figure (the median is reported).
const WEB_SAMPLES: usize = 41;

fn web_list() -> Result<()> {
    use ward_store::session_index::{opened, FileStamp, SessionIndex};
    use ward_store::session_query::{self, IndexReader, SessionQuery};
    let pki = ward_tests::Pki::new();
    let state = pki.dir.path().join("state-web");
    let recordings = state.join(ward_server::RECORDINGS_DIR);
    std::fs::create_dir_all(&recordings)?;
    let db = ward_store::store::SqliteStore::open(&state)?;
    let now_ms = SystemClock.now().unix_timestamp() * 1000;
    let devices = ["pump-1", "pump-2", "pacs", "ct-3", "lab-1"];
    let built = Instant::now();
    let mut rows = Vec::with_capacity(WEB_ROWS as usize);
    for n in 0..WEB_ROWS {
        let meta = ward_recording::SessionMeta {
            session_id: format!("{n:016x}"),
            principal_kind: "vendor".into(),
            principal_name: format!("tech{}", n % 40),
            principal_org: Some(
                match n % 3 {
                    0 => "acme",
                    1 => "globex",
                    _ => "initech",
                }
                .into(),
            ),
            cert_serial: "02".into(),
            source: "127.0.0.1:40000".into(),
            device: devices
                .get((n % 5) as usize)
                .copied()
                .unwrap_or("pump-1")
                .into(),
            device_addr: "127.0.0.1:4000".into(),
            protocol: "telnet".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: n % 97 == 0,
            // One a minute, the newest a minute ago (about 70 days).
            started_unix_ms: now_ms - i64::from(WEB_ROWS - n) * 60_000,
            recipients: Vec::new(),
            age_header: None,
        };
        let mut row = opened(&meta);
        row.summary.end_reason = "client closed".into();
        row.summary.verification = "ok".into();
        row.summary.duration_s = 42.0;
        row.stamp = Some(FileStamp {
            len: 1,
            mtime_ns: 1,
        });
        rows.push(row);
    }
    // The newest page's recordings exist and match their rows (each is `stat`ed per listing);
    // the others' files are absent (a deep page marks them missing: the same one `stat` each).
    for row in rows.iter_mut().rev().take(50) {
        let path = recordings.join(format!("{}.wrec", row.summary.id));
        std::fs::write(&path, b"x")?;
        row.stamp = Some(FileStamp::of(&path)?);
    }
    db.put_all(&rows)?;
    drop(db);
    eprintln!(
        "ward-bench: indexed {WEB_ROWS} sessions in {:.1} s",
        built.elapsed().as_secs_f64()
    );
    let store = ward_store::recording_store::RecordingStore::local(&state);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let store_figure = |q: &SessionQuery, page: u32| -> Result<(Duration, u64)> {
        let mut times = Vec::with_capacity(WEB_SAMPLES);
        let mut total = 0;
        for _ in 0..WEB_SAMPLES {
            let t = Instant::now();
            let reader =
                IndexReader::open(&state)?.ok_or_else(|| anyhow!("no index in {state:?}"))?;
            let mut reread =
                |id: &str| -> std::result::Result<_, String> { Err(format!("{id} changed")) };
            let p = session_query::page(&reader, &store, q, None, (page, 50), &mut reread)?;
            let json = serde_json::to_vec(&p)?;
            times.push(t.elapsed());
            total = p.total;
            std::hint::black_box(json);
        }
        Ok((median(times), total))
    };
    let all = SessionQuery::default();
    let pump = SessionQuery {
        device: Some("pump-2".into()),
        ..SessionQuery::default()
    };
    let who = SessionQuery {
        principal: Some("acme/tech3".into()),
        ..SessionQuery::default()
    };
    let (first, total) = store_figure(&all, 1)?;
    let (deep, _) = store_figure(&all, 1000)?;
    let (by_device, n_device) = store_figure(&pump, 1)?;
    let (by_principal, n_principal) = store_figure(&who, 1)?;

    // Through the API: a gateway over this state dir, the router in process.
    let rt = runtime("web-bench", 2)?;
    let api = rt.block_on(async {
        let config = pki.dir.path().join("ward-web.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nlisten = \"127.0.0.1:0\"\nca = \".\"\ncert = \"gateway.crt\"\nkey = \"gateway.key\"\nstate_dir = \"{}\"\n",
                state.display()
            ),
        )?;
        let cfg = ward_server::gateway::load_config(&config)?;
        let gw = ward_server::gateway::Gateway::start(cfg, Arc::new(SystemClock)).await?;
        let t = SystemClock.now();
        let identity = ward_ca::Identity {
            trust_domain: "ward.test".into(),
            kind: Kind::Security,
            name: "sam".into(),
            org: None,
            roles: Vec::new(),
            serial: "05".into(),
            not_before: t - time::Duration::hours(1),
            not_after: t + time::Duration::hours(1),
            uri: "spiffe://ward.test/security/sam".into(),
        };
        let peer: SocketAddr = "127.0.0.1:50000".parse()?;
        let web = gw.web_router();
        let mut figures = Vec::new();
        for uri in [
            "/api/v1/sessions",
            "/api/v1/sessions?page=1000",
            "/api/v1/sessions?device=pump-2",
            "/api/v1/sessions?principal=acme%2Ftech3",
        ] {
            let mut times = Vec::with_capacity(WEB_SAMPLES);
            for _ in 0..WEB_SAMPLES {
                use tower::ServiceExt;
                let req = http::Request::get(uri)
                    .extension(ward_server::web::ConnInfo {
                        peer,
                        certificate: Some(identity.clone()),
                    })
                    .body(axum::body::Body::empty())?;
                let t = Instant::now();
                let resp = web.clone().oneshot(req).await?;
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 16 << 20).await?;
                times.push(t.elapsed());
                if status != http::StatusCode::OK {
                    bail!("GET {uri}: {status} {}", String::from_utf8_lossy(&body));
                }
            }
            figures.push((uri, median(times)));
        }
        gw.shutdown(Duration::from_millis(50)).await;
        Ok::<_, anyhow::Error>(figures)
    })?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "web: list {WEB_ROWS} indexed sessions, one page of 50 (median of {WEB_SAMPLES})\n"
    );
    let _ = writeln!(
        s,
        "| listing | matches | from the index + JSON | through the API |\n|---|---|---|---|"
    );
    let api_times: Vec<Duration> = api.iter().map(|(_, t)| *t).collect();
    for ((what, matches, store_t), (_, api_t)) in [
        ("newest page", total, first),
        ("page 1000", total, deep),
        ("device = pump-2", n_device, by_device),
        ("principal = acme/tech3", n_principal, by_principal),
    ]
    .into_iter()
    .zip(api)
    {
        let _ = writeln!(
            s,
            "| {what} | {matches} | {:.1} ms | {:.1} ms |",
            ms(store_t),
            ms(api_t)
        );
    }
    // The verdict is the API's: what a browser or a script waits for.
    let worst = api_times.iter().copied().max().unwrap_or_default();
    let _ = writeln!(
        s,
        "\n| web: list 100,000 sessions, one page | {:.1} ms (slowest of the above, through the API) | < 100 ms | {} |",
        ms(worst),
        if ms(worst) < 100.0 { "met" } else { "**not met**" }
    );
    println!("{s}");
    Ok(())
}

/// Keystrokes timed per path in `--web-rtt` (after the warm-up).
const RTT_SAMPLES: usize = 300;
/// Keystrokes before the timed ones.
const RTT_WARMUP: usize = 30;
/// The pause after each echo (a person types a key every 100–300 ms; the web terminal coalesces
/// screens to one per 16 ms, which a faster loop would measure instead).
const RTT_GAP_MS: u64 = 40;

/// `--web-rtt`: one keystroke to its echo, in the browser's terminal (Chromium, the page's own
/// keydown to the next screen drawn) and through `ward connect --listen` with a TCP client (one
/// byte written to its echo read), on the same gateway and the same echoing device, one key at a
/// time with the same pause between keys. Prints p50/p99 of both and their ratio.
fn web_rtt(opts: &Opts) -> Result<()> {
    use ward_tests::web::{add_user, browser_ready, run_node};
    if !browser_ready() {
        bail!("--web-rtt needs node, chromium and tests/web/node_modules (npm ci in tests/web)");
    }
    let ward_bin = ward_binary(opts)?;
    let rt = runtime("rtt-devices", 1)?;
    let echo = rt.block_on(ward::sim::echo("127.0.0.1:0".parse()?))?.addr;
    let pki = ward_tests::Pki::new();
    let carol = pki.person(Kind::Clinician, "carol", None, &[]);
    let state = pki.dir.path().join("state-rtt");
    let login = ward_core::config::LoginConfig {
        mfa: vec![ward_core::PrincipalKind::Clinician],
        ..ward_core::config::LoginConfig::default()
    };
    let nina = add_user(&state, &login, "nina", "clinician", None);
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let web_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let rules = format!(
        r#"
[[rule]]
name = "bench-nurses"
who = {{ kind = "clinician" }}
devices = {{ labels = {{ bench = "yes" }} }}

[login]
mfa = ["clinician"]

[web]
listen = "127.0.0.1:{web_port}"
"#
    );
    let devices = [ward_tests::DeviceSpec::new(
        "echo-1",
        echo,
        "raw",
        &[("bench", "yes")],
    )];
    let config = ward_tests::write_gateway_config(&pki, &devices, &rules, "", port, &state);
    let log = pki.dir.path().join("gateway.log");
    let mut gw = spawn_raised(
        &ward_bin,
        &["gateway".as_ref(), "--config".as_ref(), config.as_os_str()],
        &log,
    )?;
    let wait_tcp = |p: u16, what: &str, proc: &mut Proc| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", p)).is_err() {
            proc.check_alive(what)?;
            if Instant::now() > deadline {
                bail!("{what} does not listen on 127.0.0.1:{p}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    wait_tcp(port, "the gateway", &mut gw)?;
    wait_tcp(web_port, "the gateway's console", &mut gw)?;

    // The CLI: `ward connect echo-1 --listen`, a TCP client typing one byte at a time.
    let listen = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let gateway = format!("127.0.0.1:{port}");
    let root = pki.root();
    let mut fwd = spawn_raised(
        &ward_bin,
        &[
            "connect".as_ref(),
            "echo-1".as_ref(),
            "--listen".as_ref(),
            listen.to_string().as_ref(),
            "--gateway".as_ref(),
            gateway.as_ref(),
            "--identity".as_ref(),
            carol.as_os_str(),
            "--ca".as_ref(),
            root.as_os_str(),
        ],
        &pki.dir.path().join("connect.log"),
    )?;
    wait_tcp(listen.port(), "ward connect --listen", &mut fwd)?;
    let cli = {
        let mut s = TcpStream::connect(listen)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut ns = Vec::with_capacity(RTT_SAMPLES);
        let mut b = [0u8; 1];
        for i in 0..RTT_WARMUP + RTT_SAMPLES {
            let key = b'a' + (i % 26) as u8;
            let t = Instant::now();
            s.write_all(&[key])?;
            s.read_exact(&mut b)
                .context("reading the echo through ward connect")?;
            if i >= RTT_WARMUP {
                ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            if b[0] != key {
                bail!(
                    "the echo through ward connect returned {:?} for {:?}",
                    b[0],
                    key
                );
            }
            std::thread::sleep(Duration::from_millis(RTT_GAP_MS));
        }
        pcts(ns)
    };
    drop(fwd);

    // The browser: tests/web/rtt.mjs times each key inside the page.
    let node_state = tempfile::tempdir()?;
    let case = serde_json::json!({
        "device": "echo-1",
        "samples": RTT_SAMPLES,
        "warmup": RTT_WARMUP,
        "gap_ms": RTT_GAP_MS,
    });
    let env = vec![
        ("WARD_WEB_URL", format!("https://127.0.0.1:{web_port}")),
        (
            "WARD_WEB_USERS",
            serde_json::json!({ "clinician": nina.json() }).to_string(),
        ),
        ("WARD_WEB_CASE", case.to_string()),
        (
            "WARD_WEB_SCREENSHOTS",
            pki.dir.path().join("shots").display().to_string(),
        ),
        ("WARD_WEB_STATE", node_state.path().display().to_string()),
    ];
    let mut failures = Vec::new();
    let mut web_ms: Vec<f64> = Vec::new();
    let (ok, out) = run_node("rtt.mjs", &env, &mut failures, |name, data| {
        if name == "rtt" {
            web_ms = data["ms"]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default();
            serde_json::json!({"ok": true})
        } else {
            serde_json::json!({"ok": false, "why": format!("ward-bench knows no {name:?}")})
        }
    });
    drop(gw);
    if !ok || !failures.is_empty() || web_ms.len() != RTT_SAMPLES {
        bail!("the browser measurement failed: {failures:?}\n{out}");
    }
    let web = pcts(web_ms.iter().map(|ms| (ms * 1e6) as u64).collect());
    let ms = |us: f64| us / 1000.0;
    let ratio50 = web.p50 / cli.p50;
    let ratio99 = web.p99 / cli.p99;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "web terminal: keystroke to echo, {RTT_SAMPLES} keys one at a time ({RTT_GAP_MS} ms after each echo), same gateway and echoing raw device\n"
    );
    let _ = writeln!(s, "| path | p50 | p99 |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| `ward connect --listen` + TCP client (1 byte → echo) | {:.2} ms | {:.2} ms |",
        ms(cli.p50),
        ms(cli.p99)
    );
    let _ = writeln!(
        s,
        "| browser terminal (keydown → screen drawn, Chromium) | {:.2} ms | {:.2} ms |",
        ms(web.p50),
        ms(web.p99)
    );
    let _ = writeln!(
        s,
        "\n| web terminal round trip vs ward connect (p50) | {ratio50:.2}× (p99 {ratio99:.2}×) | ≤ 1.5× | {} |",
        if ratio50 <= 1.5 { "met" } else { "**not met**" }
    );
    println!("{s}");
    if let Some(path) = &opts.out {
        std::fs::write(path, &s).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Session open with the PostgreSQL store vs the SQLite store (issue 19): the same `ward gateway`
// binary and config, one gateway with `[store] url` on a PostgreSQL on loopback (the test
// harness's: Debian's server, its own data dir), one on its state dir's SQLite, measured in the
// same run, interleaved. A session open writes the session index's row and reads the policy's
// state (locks, grants) from the store the gateway runs on.

fn store_open(opts: &Opts) -> Result<()> {
    let load_at_start = loadavg();
    let ward_bin = ward_binary(opts)?;
    if ward_tests::pg::bin_dir().is_none() {
        bail!("PostgreSQL is not installed (Debian: apt-get install postgresql): no figure");
    }
    let pg = ward_tests::pg::Postgres::start();
    let url = pg.create_database("ward_bench");
    let w = ward_setup(&SystemClock)?;
    let sink = start_sink()?;
    let dev_rt = runtime("bench-dev", 1)?;
    let echo = dev_rt
        .block_on(ward::sim::echo("127.0.0.1:0".parse()?))?
        .addr;
    let idle_dev = IdleDevice::start()?;
    let devices = (sink.addr, echo, idle_dev.addr);
    let gw_sqlite = start_gateway(&ward_bin, &w, devices, "state-sqlite", true)?;
    let state = "state-pg";
    let (quic, tcp) = (free_udp_port()?, free_port()?);
    let config = w.dir.path().join(format!("{state}.toml"));
    std::fs::write(
        &config,
        format!(
            "{}\n[store]\nurl = \"{url}\"\npassword_file = \"{}\"\n",
            ward_config(quic, tcp, devices, state),
            pg.password_file().display()
        ),
    )?;
    let gw_pg = launch_gateway(&ward_bin, &w, &config, (quic, tcp), state, true)?;
    let cl_rt = runtime("ward-cl", 2)?;
    let rounds = if opts.quick { 2 } else { 5 };
    let per_round = opts.opens.max(50);
    eprintln!(
        "ward-bench: session open (QUIC, existing connection), PostgreSQL store vs SQLite, {rounds} rounds of {per_round}"
    );
    let (mut on_pg, mut on_sqlite) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (is_pg, gw) in [(false, &gw_sqlite), (true, &gw_pg)] {
            let p = cl_rt.block_on(open_times(
                gw.quic,
                &w.files,
                Transport::Quic,
                per_round,
                true,
            ))?;
            eprintln!(
                "  {:<12} p50 {:>8.1} µs  p99 {:>8.1} µs",
                if is_pg { "PostgreSQL" } else { "SQLite" },
                p.p50,
                p.p99
            );
            if is_pg {
                on_pg.push(p);
            } else {
                on_sqlite.push(p);
            }
        }
    }
    let median = |v: &[Pcts], f: fn(&Pcts) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x.get(x.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (pg50, pg99) = (median(&on_pg, |p| p.p50), median(&on_pg, |p| p.p99));
    let (sq50, sq99) = (median(&on_sqlite, |p| p.p50), median(&on_sqlite, |p| p.p99));
    let ratio = pg50 / sq50;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Session open, PostgreSQL store vs SQLite (same run; issue 19: `ward gateway`, recording on, QUIC on an existing connection, {rounds} interleaved rounds of {per_round} opens, median of the rounds' percentiles; PostgreSQL 15 from Debian on loopback, the test harness's)\n"
    );
    let _ = writeln!(
        s,
        "| store | p50 | p99 |\n|---|---:|---:|\n| SQLite (state dir) | {sq50:.1} µs | {sq99:.1} µs |\n| PostgreSQL (loopback) | {pg50:.1} µs | {pg99:.1} µs |"
    );
    let _ = writeln!(
        s,
        "\n| figure | measured | target | verdict |\n|---|---|---|---|\n| session open, PostgreSQL store vs SQLite (same run), p50 | {ratio:.2}× | ≤ 1.5× | {} |",
        if ratio <= 1.5 { "met" } else { "**not met**" }
    );
    println!("\n{}\n{s}", machine(&load_at_start));
    drop(gw_pg);
    drop(gw_sqlite);
    drop(pg);
    Ok(())
}
