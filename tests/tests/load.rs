//! Load (security case 25): 1000 concurrent sessions over 100 QUIC connections, each echoing 1 MiB
//! both ways byte-exact through a recording gateway; afterwards the gateway's file descriptors are
//! back to their baseline exactly, its threads to no more than before, its resident memory to its
//! baseline (within [`RSS_TOLERANCE_KIB`], once jemalloc's purging has returned the freed pages),
//! this process's descriptors and tokio tasks (the clients and the device) exactly, and every
//! session is opened, closed and recorded in the audit log — counted from /proc, tokio's runtime
//! metrics and the audit log, not assumed. Two identical rounds, each checked against the baseline.
//!
//! The gateway is the real `ward gateway` binary in a child process, so what is counted is its own.
//! Bounded: loopback only, 100 connections × 10 streams × 1 MiB each way, every wait has a limit.
//! Runtime in a debug build on two cores: about 1.5 minutes per round, under 4 minutes in all.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_ca::Kind;
use ward_client::{SessionEnd, Transport};
use ward_tests::*;

const CONNECTIONS: usize = 100;
const STREAMS_PER_CONNECTION: usize = 10;
const BYTES_EACH_WAY: usize = 1 << 20;
/// Resident memory the gateway may keep above its baseline once a round's sessions are closed and
/// its allocator has purged, in KiB. `ward` runs on jemalloc with background purging (dirty pages
/// go back to the system within about 10 s, then muzzy ones), so the freed heap of a round
/// (≈ 200 MiB at the peak) returns; what stays is allocator metadata and the runtime's grown
/// tables. Measured: +8 and +11 MiB after each of two rounds. A session leaking 16 KiB or more
/// (16 MiB per round of 1000, on top of that residual) fails this.
const RSS_TOLERANCE_KIB: u64 = 24 * 1024;

/// How long the gateway's memory may take to come back after a round (jemalloc's decay is 10 s
/// for dirty pages and 10 s more for muzzy ones; measured 15–20 s).
const RSS_SETTLE: Duration = Duration::from_secs(60);

const RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

/// What is counted, for the gateway (a child process) and for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    gw_fds: usize,
    gw_threads: u64,
    gw_rss_kib: u64,
    my_fds: usize,
    my_tasks: usize,
}

impl Counts {
    fn now(gw: u32) -> Counts {
        Counts {
            gw_fds: proc_fds(gw),
            gw_threads: proc_status(gw, "Threads"),
            gw_rss_kib: proc_status(gw, "VmRSS"),
            my_fds: proc_fds(std::process::id()),
            my_tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        }
    }

    /// Back to `base` in everything but memory (compared with a tolerance): the same
    /// descriptors and tasks, and no more threads (tokio's blocking pool is a cache whose idle
    /// threads retire after 10 s, so there may be fewer).
    fn back_to(&self, base: &Counts) -> bool {
        (self.gw_fds, self.my_fds, self.my_tasks) == (base.gw_fds, base.my_fds, base.my_tasks)
            && self.gw_threads <= base.gw_threads
    }
}

/// One round: `CONNECTIONS` clients connect, then `STREAMS_PER_CONNECTION` sessions each run at
/// once; every echo is checked byte for byte. Returns the gateway's peak descriptors and memory.
async fn round(gw: &ChildGateway, vendor: &std::path::Path, round: u64) -> (usize, u64) {
    let pid = gw.pid();
    let clients: Vec<Arc<ward_client::Client>> = (0..CONNECTIONS)
        .map(|_| Arc::new(gw.client(vendor, Transport::Quic)))
        .collect();
    // Connections first (a `devices` request each), so handshakes do not queue behind bulk data.
    let mut connects = tokio::task::JoinSet::new();
    for client in &clients {
        let client = client.clone();
        connects.spawn(async move {
            client
                .request(&ward_core::frame::Request::ListDevices)
                .await
                .unwrap()
        });
    }
    while let Some(r) = connects.join_next().await {
        r.unwrap();
    }
    let peak = Arc::new((AtomicUsize::new(0), AtomicU64::new(0)));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.0.fetch_max(proc_fds(pid), Ordering::Relaxed);
                peak.1
                    .fetch_max(proc_status(pid, "VmRSS"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Each session sends its own 1 MiB window of one random buffer (generating and hashing 2 GiB
    // in a debug build would cost more than the sessions), and compares what comes back byte for
    // byte.
    let base = Arc::new(payload(BYTES_EACH_WAY + 64 * 1024, round));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for s in 0..STREAMS_PER_CONNECTION {
            let client = client.clone();
            let base = base.clone();
            let n = c * STREAMS_PER_CONNECTION + s;
            tasks.spawn(async move {
                let data = &base[n * 61..n * 61 + BYTES_EACH_WAY];
                let session = client.open("pump-12", false, None).await.unwrap();
                let (out, end) = echo_session(session, data).await;
                assert_eq!(end, SessionEnd::Completed, "session {n}");
                assert_eq!(out.len(), data.len(), "session {n}");
                if out != data {
                    panic!(
                        "session {n}: echo differs: sha256 {} sent, {} back",
                        sha256(data),
                        sha256(&out)
                    );
                }
            });
        }
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
        done += 1;
    }
    assert_eq!(done, CONNECTIONS * STREAMS_PER_CONNECTION);
    sampler.abort();
    drop(clients);
    (
        peak.0.load(Ordering::Relaxed),
        peak.1.load(Ordering::Relaxed),
    )
}

/// Names of the threads of `pid`, for a failure message.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// CPU seconds (user + system) used by `pid` so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / 100.0
}

/// UDP datagrams dropped for a full receive buffer, machine-wide (`/proc/net/snmp`).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Wait (bounded) until descriptors, threads and tasks are back to `base`.
async fn back_to(base: Counts, pid: u32, what: &str) -> Counts {
    // Idle tokio blocking threads (recording writes) exit after 10 s; allow for that.
    let settled = eventually(Duration::from_secs(30), || Counts::now(pid).back_to(&base)).await;
    let now = Counts::now(pid);
    assert!(
        settled,
        "{what}: not back to baseline within 30 s:\n  now      {now:?}\n  baseline {base:?}\n  \
         gateway threads: {:?}",
        thread_names(pid)
    );
    now
}

/// Session opens and closes in the audit log (it is written as events happen).
fn opens_and_closes(state_dir: &std::path::Path) -> (usize, usize) {
    let events = audit_events(state_dir);
    let count = |name: &str| {
        events
            .iter()
            .filter(|e| e["event"] == name && e["outcome"] == "success")
            .count()
    };
    (count("session_open"), count("session_close"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_sessions_are_byte_exact_and_leave_nothing_behind() {
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
    // All clients share 127.0.0.1: lift the per-source connection limit (default 64) above 100.
    let gw = ChildGateway::start_env(
        pki.clone(),
        &devices,
        RULES,
        "max_connections_per_source = 128",
        None,
        &[],
    );
    let pid = gw.pid();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    // One session first, so one-time setup (recordings dir, store, TLS caches) is in the baseline.
    {
        let client = gw.client(&vendor, Transport::Quic);
        let data = payload(1000, 1);
        let (out, end) =
            echo_session(client.open("pump-12", false, None).await.unwrap(), &data).await;
        assert_eq!((out, end), (data, SessionEnd::Completed));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = back_to(Counts::now(pid), pid, "after the first session").await;

    let sessions = CONNECTIONS * STREAMS_PER_CONNECTION;
    for r in 1..=2u64 {
        let started = Instant::now();
        let drops = udp_rcvbuf_errors();
        let (gw_cpu, my_cpu) = (cpu_secs(pid), cpu_secs(std::process::id()));
        let (peak_fds, peak_rss) = round(&gw, &vendor, r).await;
        let took = started.elapsed();
        let drops = udp_rcvbuf_errors() - drops;
        let (gw_cpu, my_cpu) = (
            cpu_secs(pid) - gw_cpu,
            cpu_secs(std::process::id()) - my_cpu,
        );
        let after = back_to(base, pid, &format!("after round {r}")).await;
        // Memory: back to the baseline once the allocator has returned the round's heap.
        let settle = Instant::now();
        let rss_back = eventually(RSS_SETTLE, || {
            proc_status(pid, "VmRSS") <= base.gw_rss_kib + RSS_TOLERANCE_KIB
        })
        .await;
        let rss = proc_status(pid, "VmRSS");
        assert!(
            rss_back,
            "round {r}: gateway resident memory {rss} KiB did not come back within {RSS_SETTLE:?} \
             to its baseline {} KiB + {RSS_TOLERANCE_KIB} KiB",
            base.gw_rss_kib
        );
        let settle = settle.elapsed();
        let expected = 1 + r as usize * sessions;
        assert!(
            eventually(Duration::from_secs(10), || opens_and_closes(&gw.state_dir)
                == (expected, expected))
            .await,
            "audit log: (opens, closes) = {:?}, expected {expected} each",
            opens_and_closes(&gw.state_dir)
        );
        // Concurrency, counted: every session held a device socket and a recording at the peak.
        assert!(
            peak_fds >= base.gw_fds + sessions,
            "round {r}: sessions were not concurrent (peak gateway descriptors {peak_fds}, baseline {})",
            base.gw_fds
        );
        eprintln!(
            "load round {r}: {sessions} sessions over {CONNECTIONS} connections, {} MiB each way \
             each, in {:.1} s; gateway descriptors {} → peak {peak_fds} → {}, threads {} → {}, \
             RSS {} KiB → peak {peak_rss} → {} KiB ({rss} KiB {:.0} s later); test process descriptors {} → {}, tasks {} → {}; \
             UDP receive-buffer drops (machine-wide) {drops}; CPU: gateway {gw_cpu:.1} s, \
             clients and device {my_cpu:.1} s",
            BYTES_EACH_WAY >> 20,
            took.as_secs_f64(),
            base.gw_fds,
            after.gw_fds,
            base.gw_threads,
            after.gw_threads,
            base.gw_rss_kib,
            after.gw_rss_kib,
            settle.as_secs_f64(),
            base.my_fds,
            after.my_fds,
            base.my_tasks,
            after.my_tasks
        );
    }
    // Every session was recorded.
    let files = std::fs::read_dir(ward_server::review::recordings_dir(&gw.state_dir))
        .unwrap()
        .count();
    assert_eq!(files, 1 + 2 * sessions, "one recording per session");
}
