//! Security case 24, shown rather than assumed: the device network is unreachable from the client
//! network except through `ward connect`.
//!
//! The test builds three network namespaces of its own with `ip netns` (iproute2), joined by two
//! veth pairs, and uses no address outside them:
//!
//! ```text
//!   ward-tPID-cli                 ward-tPID-gw                      ward-tPID-dev
//!   client host                   gateway host                      device network
//!   10.231.2.2/24  ── veth ──  10.231.2.1/24 | 10.231.1.1/24  ── veth ──  10.231.1.10/24 telnet :23
//!   telnet, curl,                 `ward gateway`                    10.231.1.11/24 http :80
//!   `ward connect`                (forwarding off)                  (`ward-sim-device`)
//! ```
//!
//! The client host has a route to the device network through the gateway host, and the device
//! network one back, as if the gateway host were a router: the only thing between the client and
//! the devices is that the gateway host does not forward packets (`net.ipv4.ip_forward = 0`; a new
//! namespace inherits the host's IPv4 setting, so the test sets it and asserts it; IPv6 forwarding
//! is asserted off too). Every route in the three namespaces stays inside 10.231.1.0/24 and
//! 10.231.2.0/24; there is no default route.
//!
//! From the client host the test shows that: a direct TCP connect (and curl) to the telnet and HTTP
//! consoles fails within a bounded time and the devices count no connection; through
//! `ward connect --listen` a permitted vendor logs in to the telnet console with the real `telnet`
//! client (admin/admin) and fetches the HTTP console with the real `curl` and Basic auth, over QUIC
//! and over TLS/TCP; a clinician with no rule is refused with the policy's reason on both
//! transports, the gateway audits each refusal, and the devices see no connection for it. Last, a
//! control: with forwarding switched on at the gateway host the same direct connect succeeds, so
//! the probe can see a reachable device and the failures above come from the gateway host, not
//! from a broken topology.
//!
//! Needs root and `ip`: under CI (`CI` set) their absence fails the test; elsewhere it skips with a
//! message. The namespaces (and every process left in them) are removed when the test ends, also
//! when it fails; namespaces left by an earlier run whose process is gone are removed first.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_ca::{IssueRequest, Kind};
use ward_tests::process::*;
use ward_tests::*;

/// Namespace names: `ward-t<pid of the test process>-<role>`.
const NS_PREFIX: &str = "ward-t";

const PUMP: &str = "10.231.1.10:23";
const MONITOR: &str = "10.231.1.11:80";
const GATEWAY: &str = "10.231.2.1:4433";

/// How long a direct connect from the client host may try before it counts as failed.
const PROBE_MS: u64 = 2000;

/// The HTTP console's page for admin/admin.
const MONITOR_PAGE: &str = "<html><head><title>VitalView 900 monitor</title></head><body>\n<h1>VitalView 900 bedside monitor</h1>\n<p>Bed ICU-3 &middot; HR 72 bpm &middot; SpO2 98% &middot; NIBP 118/76</p>\n</body></html>\n";

const RULES: &str = r#"
[[rule]]
name = "acme-services-its-devices"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------

/// The namespaces this test created; on drop, every process still inside them is killed and the
/// namespaces are deleted (their veth pairs go with them), also when the test panics.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    /// `ip netns add` one namespace named for this process and `role`, with `lo` up.
    fn add(&mut self, role: &str) -> String {
        let name = format!("{NS_PREFIX}{}-{role}", std::process::id());
        ip(&["netns", "add", &name]);
        self.names.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in self.names.drain(..).rev() {
            remove_namespace(&name);
        }
    }
}

/// Kill the processes inside `name` (all started by this test, or by an earlier run of it) by
/// their ids, then delete the namespace. Never panics: it runs in `Drop`.
fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid.bytes().all(|b| b.is_ascii_digit()) {
                let _ = Command::new("kill").args(["-KILL", pid]).output();
            }
        }
    }
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "removing namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("removing namespace {name}: {e}"),
    }
}

/// The pid in a namespace name this test makes (`ward-t<pid>-<role>`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid, role) = rest.split_once('-')?;
    if role.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Remove namespaces left by earlier runs of this test that died before cleaning up.
fn remove_stale_namespaces() {
    let out = run_ok(Command::new("ip").args(["netns", "list"]));
    for line in out.stdout.lines() {
        // "NAME" or "NAME (id: N)".
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(pid) = owner_pid(name) {
            // Our own pid too: only this test makes namespaces in this process, and it has made
            // none yet, so such a name was left by a dead process that had the same pid.
            if pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing stale namespace {name} (its test process {pid} is gone)");
                remove_namespace(name);
            }
        }
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) -> Finished {
    run_ok(Command::new("ip").args(args))
}

/// `program` run inside namespace `ns`.
fn in_ns(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// The `ward` binary with `args` inside `ns`, without the environment that would point it elsewhere.
fn ward_in(ns: &str, args: &[&str]) -> Command {
    let mut cmd = in_ns(ns, ward_binary());
    cmd.args(args)
        .env_remove("WARD_GATEWAY")
        .env_remove("WARD_IDENTITY")
        .env_remove("RUST_LOG");
    cmd
}

fn sim_device() -> &'static str {
    env!("CARGO_BIN_EXE_ward-sim-device")
}

/// Is this process root? (`Uid:` in /proc/self/status: real, effective, ...)
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Root and `ip` are needed. Under CI their absence is a failure, never a skip.
fn namespaces_available() -> bool {
    if !is_root() {
        if std::env::var_os("CI").is_some() {
            panic!("the isolation test must run as root under CI (it creates network namespaces)");
        }
        eprintln!("SKIPPED: the isolation test needs root to create network namespaces");
        return false;
    }
    require_peer("ip")
}

/// The three hosts, wired and addressed.
struct Topology {
    /// Dropped last: kills what is left inside and deletes the namespaces.
    _ns: Netns,
    dev: String,
    gw: String,
    cli: String,
}

fn build_topology() -> Topology {
    remove_stale_namespaces();
    let mut ns = Netns { names: Vec::new() };
    let dev = ns.add("dev");
    let gw = ns.add("gw");
    let cli = ns.add("cli");

    // The gateway host must not route between its two networks. A new namespace inherits the
    // host's IPv4 forwarding setting, so set it as a gateway host is deployed, then check it.
    run_ok(in_ns(&gw, "sh").args(["-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]));
    assert_eq!(forwarding(&gw), "0");
    // IPv6 (when the kernel has it) starts from its defaults in a new namespace: off as well.
    let v6 = run_ok(in_ns(&gw, "sh").args([
        "-c",
        "f=/proc/sys/net/ipv6/conf/all/forwarding; if [ -e $f ]; then cat $f; else echo 0; fi",
    ]));
    assert_eq!(v6.stdout.trim(), "0", "IPv6 forwarding on the gateway host");

    // Two veth pairs, created straight into the namespaces (nothing in the host's namespace).
    ip(&[
        "-n", &gw, "link", "add", "to-dev", "type", "veth", "peer", "name", "eth0", "netns", &dev,
    ]);
    ip(&[
        "-n", &gw, "link", "add", "to-cli", "type", "veth", "peer", "name", "eth0", "netns", &cli,
    ]);

    // Device network 10.231.1.0/24: the gateway host's leg and the two consoles.
    ip(&["-n", &gw, "addr", "add", "10.231.1.1/24", "dev", "to-dev"]);
    ip(&["-n", &dev, "addr", "add", "10.231.1.10/24", "dev", "eth0"]);
    ip(&["-n", &dev, "addr", "add", "10.231.1.11/24", "dev", "eth0"]);
    // Client network 10.231.2.0/24.
    ip(&["-n", &gw, "addr", "add", "10.231.2.1/24", "dev", "to-cli"]);
    ip(&["-n", &cli, "addr", "add", "10.231.2.2/24", "dev", "eth0"]);
    for (n, link) in [
        (&gw, "to-dev"),
        (&gw, "to-cli"),
        (&dev, "eth0"),
        (&cli, "eth0"),
    ] {
        ip(&["-n", n, "link", "set", link, "up"]);
    }
    // The most a client could do: route the device network through the gateway host (and the
    // devices answer the same way).
    ip(&[
        "-n",
        &cli,
        "route",
        "add",
        "10.231.1.0/24",
        "via",
        "10.231.2.1",
    ]);
    ip(&[
        "-n",
        &dev,
        "route",
        "add",
        "10.231.2.0/24",
        "via",
        "10.231.1.1",
    ]);

    // Nothing routes anywhere but the two test networks.
    for n in [&dev, &gw, &cli] {
        for family in ["-4", "-6"] {
            let routes = ip(&[family, "-n", n, "route", "show"]).stdout;
            for route in routes.lines() {
                assert!(
                    route.starts_with("10.231.1.0/24 ")
                        || route.starts_with("10.231.2.0/24 ")
                        || route.starts_with("fe80::/64 "),
                    "{n}: unexpected route {route:?}"
                );
            }
        }
    }
    Topology {
        _ns: ns,
        dev,
        gw,
        cli,
    }
}

/// `net.ipv4.ip_forward` inside `ns`.
fn forwarding(ns: &str) -> String {
    run_ok(in_ns(ns, "cat").arg("/proc/sys/net/ipv4/ip_forward"))
        .stdout
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Devices, gateway, clients
// ---------------------------------------------------------------------------------------------

/// A simulated console inside the device namespace; asked for its connection count on stdin.
struct Device {
    proc: Proc,
}

impl Device {
    fn start(ns: &str, kind: &str, addr: &str) -> Device {
        let mut proc = Proc::spawn(
            in_ns(ns, sim_device()).args([kind, "--listen", addr]),
            Input::Pipe,
        );
        proc.wait_for_stdout(&format!("listening {addr}\n"), COMMAND_TIMEOUT);
        Device { proc }
    }

    /// How many TCP connections the device has accepted, as of now.
    fn connections(&mut self) -> usize {
        let answers = |out: &str| out.lines().filter(|l| l.starts_with("count ")).count();
        let before = answers(&self.proc.stdout());
        self.proc.send(b"count\n");
        self.proc
            .wait_for("its connection count", COMMAND_TIMEOUT, |out, _| {
                answers(out) > before && out.ends_with('\n')
            });
        let out = self.proc.stdout();
        let last = out.lines().rev().find(|l| l.starts_with("count ")).unwrap();
        last["count ".len()..].parse().unwrap()
    }
}

/// From the client host: one TCP connect to `addr` within [`PROBE_MS`]. `Ok(line)` if it
/// connected, `Err(line)` with the reason if not.
fn probe(cli: &str, addr: &str) -> Result<String, String> {
    let started = Instant::now();
    let out =
        run(in_ns(cli, sim_device()).args(["probe", addr, "--timeout-ms", &PROBE_MS.to_string()]));
    assert!(
        started.elapsed() < Duration::from_millis(PROBE_MS) + COMMAND_TIMEOUT,
        "the probe was not bounded"
    );
    let line = out.stdout.trim().to_string();
    match out.status.code() {
        Some(0) if line.starts_with("connected ") => Ok(line),
        Some(1) if line.starts_with("failed: ") => Err(line),
        _ => panic!("probe {addr}: {out:?}"),
    }
}

/// `ward connect DEVICE --listen 127.0.0.1:0` in the client namespace; returns it and the local
/// address it forwards (on the client host's own loopback).
fn forwarder(
    cli: &str,
    device: &str,
    identity: &Path,
    root: &Path,
    transport: &str,
) -> (Proc, SocketAddr) {
    let mut fwd = Proc::spawn(
        ward_in(
            cli,
            &[
                "connect",
                device,
                "--gateway",
                GATEWAY,
                "--transport",
                transport,
                "--listen",
                "127.0.0.1:0",
            ],
        )
        .arg("--identity")
        .arg(identity)
        .arg("--ca")
        .arg(root),
        Input::Null,
    );
    fwd.wait_for("the forwarding line", COMMAND_TIMEOUT, |_, err| {
        err.contains(&format!(" → {device} through {GATEWAY}"))
    });
    let err = fwd.stderr();
    let local: SocketAddr = err
        .split("ward: forwarding ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {err:?}"));
    (fwd, local)
}

/// The real `telnet` client in the client namespace: log in with admin/admin, ask for status,
/// exit. Returns what it printed.
fn telnet_login(cli: &str, to: SocketAddr) -> String {
    let mut telnet = Proc::spawn(
        in_ns(cli, "telnet").args([to.ip().to_string(), to.port().to_string()]),
        Input::Pipe,
    );
    for (prompt, line) in [
        ("login: ", "admin\r\n"),
        ("Password: ", "admin\r\n"),
        ("pump> ", "status\r\n"),
        ("status: RUNNING", "exit\r\n"),
    ] {
        telnet.wait_for_stdout(prompt, COMMAND_TIMEOUT);
        telnet.send(line.as_bytes());
    }
    telnet.wait_for_stdout("bye", COMMAND_TIMEOUT);
    // The console hung up after "bye"; telnet exits on that (or on its stdin closing).
    let out = telnet.finish(COMMAND_TIMEOUT);
    assert!(out.status.success(), "telnet: {out:?}");
    out.stdout
}

/// The real `curl` in the client namespace: `curl -sS --max-time 10 -w '\n%{http_code}' EXTRA URL`.
fn curl(cli: &str, extra: &[&str], url: &str) -> Finished {
    run(in_ns(cli, "curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url))
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn device_network_is_reachable_from_clients_only_through_ward_connect() {
    if !namespaces_available() || !require_peer("telnet") || !require_peer("curl") {
        return;
    }
    let started = Instant::now();
    // Declared first, so dropped last: every process below is killed before its namespace goes.
    let topo = build_topology();
    let (dev, gw, cli) = (topo.dev.as_str(), topo.gw.as_str(), topo.cli.as_str());

    // ---- the device network: two consoles --------------------------------------------------
    let mut pump = Device::start(dev, "telnet", PUMP);
    let mut monitor = Device::start(dev, "http", MONITOR);

    // ---- the gateway host: `ward gateway`, listening on the client network only ----------------
    let pki = Arc::new(Pki::new());
    let mut req = IssueRequest::new(Kind::Gateway, "gw-isolation");
    req.ips = vec!["10.231.2.1".parse().unwrap()];
    pki.ca
        .issue(&req, now())
        .unwrap()
        .write(&pki.dir.path().join("gateway-ns"))
        .unwrap();
    let config = pki.dir.path().join("ward.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
listen = "{GATEWAY}"
listen_tcp = "{GATEWAY}"
ca = "."
cert = "gateway-ns.crt"
key = "gateway-ns.key"
state_dir = "state"

[[device]]
id = "pump-12"
address = "{PUMP}"
protocol = "telnet"
labels = {{ vendor = "acme", class = "infusion-pump" }}

[[device]]
id = "monitor-3"
address = "{MONITOR}"
protocol = "http"
labels = {{ vendor = "acme", class = "patient-monitor" }}
{RULES}"#
        ),
    )
    .unwrap();
    let mut gateway = Proc::spawn(
        ward_in(gw, &["gateway", "--log-format", "json", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info"),
        Input::Null,
    );
    gateway.wait_for("the gateway to listen", COMMAND_TIMEOUT, |out, err| {
        out.contains("gateway listening") || err.contains("gateway listening")
    });
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let clinician = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let root = pki.root();

    // ---- 1. direct connections from the client host fail -------------------------------------
    for addr in [PUMP, MONITOR] {
        let failed = probe(cli, addr).expect_err(&format!(
            "the client host reached {addr} directly, without Ward"
        ));
        eprintln!("direct connect to {addr} from the client host: {failed}");
    }
    let out = curl(
        cli,
        &["--connect-timeout", "2", "-u", "admin:admin"],
        &format!("http://{MONITOR}/"),
    );
    // 7: could not connect; 28: timed out.
    assert!(
        matches!(out.status.code(), Some(7) | Some(28)),
        "curl reached the monitor directly: {out:?}"
    );
    assert!(!out.stdout.contains("VitalView"), "{out:?}");
    assert_eq!(pump.connections(), 0);
    assert_eq!(monitor.connections(), 0);

    // ---- 2 and 4. through `ward connect`, over QUIC and over TLS/TCP ---------------------------
    let transports = ["quic", "tcp"];
    for (i, transport) in transports.into_iter().enumerate() {
        // The pump's telnet console, with the real telnet client.
        let (fwd, local) = forwarder(cli, "pump-12", &vendor, &root, transport);
        let out = telnet_login(cli, local);
        for want in [
            "Acme InfuPump 3000 service console (fw 2.1.4)",
            "Welcome, admin. Type 'help' for commands.",
            "status: RUNNING  channel A 12.5 mL/h  battery 87%  occlusion none",
            "pump> bye",
        ] {
            assert!(out.contains(want), "{transport}: no {want:?} in {out}");
        }
        drop(fwd);
        assert_eq!(pump.connections(), i + 1, "{transport}");

        // The monitor's HTTP console, with the real curl and Basic auth.
        let (fwd, local) = forwarder(cli, "monitor-3", &vendor, &root, transport);
        let url = format!("http://{local}/");
        let out = curl(cli, &["-u", "admin:admin"], &url);
        assert!(out.status.success(), "{transport}: {out:?}");
        assert_eq!(out.stdout, format!("{MONITOR_PAGE}\n200"), "{transport}");
        let out = curl(cli, &[], &url);
        assert!(out.status.success(), "{transport}: {out:?}");
        assert_eq!(out.stdout, "401 login required\n\n401", "{transport}");
        let mut fwd = fwd;
        fwd.wait_for("two sessions", COMMAND_TIMEOUT, |_, err| {
            err.matches("opened (rule acme-services-its-devices)")
                .count()
                == 2
        });
        drop(fwd);
        assert_eq!(monitor.connections(), 2 * (i + 1), "{transport}");
    }
    // The gateway opened sessions on both transports, from the client host's address.
    let log = gateway.stderr() + &gateway.stdout();
    for transport in transports {
        assert!(
            log.lines().any(|l| l.contains("session_open")
                && l.contains(&format!("\"transport\":\"{transport}\""))
                && l.contains("\"source\":\"10.231.2.2:")),
            "no {transport} session from 10.231.2.2 in the gateway's log:\n{log}"
        );
    }

    // ---- 3. a denied identity is refused with the policy's reason; the devices see nothing -----
    for transport in transports {
        for device in ["pump-12", "monitor-3"] {
            let out = run(ward_in(
                cli,
                &[
                    "connect",
                    device,
                    "--gateway",
                    GATEWAY,
                    "--transport",
                    transport,
                ],
            )
            .arg("--identity")
            .arg(&clinician)
            .arg("--ca")
            .arg(&root));
            assert_eq!(out.status.code(), Some(2), "{transport} {device}: {out:?}");
            assert!(
                out.stderr.contains(&format!(
                    "denied: no rule lets clinician alice reach {device}"
                )),
                "{transport} {device}: {out:?}"
            );
            assert_eq!(out.stdout, "", "{transport} {device}: {out:?}");
        }
    }
    // The gateway audited each refusal with the same reason.
    gateway.wait_for("four audited refusals", COMMAND_TIMEOUT, |_, err| {
        err.lines()
            .filter(|l| {
                l.contains("session_deny")
                    && l.contains("no rule lets clinician alice reach")
                    && l.contains("\"source\":\"10.231.2.2:")
            })
            .count()
            == 4
    });
    // One more permitted session after the refusals: the pump counts exactly it, so no refused
    // attempt reached the pump, even late.
    assert_eq!(pump.connections(), 2);
    assert_eq!(monitor.connections(), 4);
    let out = run_with(
        ward_in(cli, &["connect", "pump-12", "--gateway", GATEWAY])
            .arg("--identity")
            .arg(&vendor)
            .arg("--ca")
            .arg(&root),
        Input::Bytes(b"admin\r\nadmin\r\nstatus\r\nexit\r\n".to_vec()),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.ends_with("pump> bye\r\n"), "{out:?}");
    assert_eq!(pump.connections(), 3);
    assert_eq!(monitor.connections(), 4);

    // ---- control: the same direct connect works once the gateway host forwards ---------------
    // Shows the probe sees a reachable device and the routes are right, so the failures in 1.
    // come from the gateway host not forwarding and from nothing else.
    run_ok(in_ns(gw, "sh").args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]));
    assert_eq!(forwarding(gw), "1");
    let connected = probe(cli, PUMP).expect("with forwarding on, the probe must connect");
    assert!(
        connected.starts_with("connected 10.231.2.2:"),
        "{connected}"
    );
    assert_eq!(pump.connections(), 4);

    drop(gateway);
    drop(pump);
    drop(monitor);
    drop(topo);
    let elapsed = started.elapsed();
    eprintln!("isolation test took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}

#[test]
fn namespace_names_carry_the_test_pid() {
    assert_eq!(owner_pid("ward-t1234-dev"), Some(1234));
    assert_eq!(owner_pid("ward-t1234-"), None);
    assert_eq!(owner_pid("ward-tx-dev"), None);
    assert_eq!(owner_pid("ward-t-dev"), None);
    assert_eq!(owner_pid("other-t1234-dev"), None);
}
