//! The README's first command, for real: the built `ward` binary runs `ward quickstart`, and the
//! commands it prints are run as a user would run them (`ward devices`, `ward connect` on stdio and
//! with `--listen`, curl through the forwarder), then the quickstart is stopped with SIGTERM.
//!
//! The binary is (re)built with `cargo build -p ward --bin ward` on first use, because
//! `cargo test` only builds a package's binaries for that package's own integration tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ward_tests::require_peer;

/// Upper bound for one short command (`ward devices`, `ward connect` on stdio, curl).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for building the binary (normally a no-op or a link; a cold build of the binary's
/// own features can take a few minutes on two cores).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The `ward` binary of this workspace, built for the profile these tests were built with.
fn ward_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_ward)
}

fn build_ward() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // This test runs as <target>/<profile>/deps/quickstart-HASH.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let profile = profile_dir.file_name().unwrap().to_str().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace).args([
        "build",
        "-p",
        "ward",
        "--bin",
        "ward",
        "--message-format=json-render-diagnostics",
    ]);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = run(&mut cmd, None, BUILD_TIMEOUT);
    assert!(
        out.status.success(),
        "cargo build -p ward --bin ward failed: {}",
        out.stderr
    );
    // The artifact message names the executable exactly, wherever the target dir is.
    let bin = out
        .stdout
        .lines()
        .filter(|l| {
            l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"name\":\"ward\"")
        })
        .find_map(|l| {
            let (_, rest) = l.split_once("\"executable\":\"")?;
            let (path, _) = rest.split_once('"')?;
            Some(PathBuf::from(path))
        })
        .unwrap_or_else(|| profile_dir.join("ward"));
    assert!(bin.is_file(), "no ward binary at {}", bin.display());
    bin
}

/// A child process that is killed (and reaped) when dropped, with its output collected by threads.
struct Proc {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl Proc {
    /// Spawn `cmd`; `stdin` is written then closed (None: /dev/null).
    fn spawn(cmd: &mut Command, stdin: Option<Vec<u8>>) -> Proc {
        let name = format!("{cmd:?}");
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            readers.push(std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            }));
        }
        Proc {
            name,
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Wait until `ready(stdout, stderr)` holds; fails if the process exits first or time runs out.
    fn wait_for(&mut self, what: &str, limit: Duration, ready: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if ready(&self.stdout(), &self.stderr()) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the readers drain what is left before reporting.
                std::thread::sleep(Duration::from_millis(100));
                if ready(&self.stdout(), &self.stderr()) {
                    return;
                }
                panic!(
                    "{} exited ({status}) before {what}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not show {what} within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the process to exit on its own within `limit` (killed and failed otherwise).
    fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished process left.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Run `cmd` to completion within `limit`.
fn run(cmd: &mut Command, stdin: Option<Vec<u8>>, limit: Duration) -> Finished {
    Proc::spawn(cmd, stdin).finish(limit)
}

fn ward(args: &[&str]) -> Command {
    let mut cmd = Command::new(ward_bin());
    cmd.args(args)
        .env_remove("WARD_GATEWAY")
        .env_remove("WARD_IDENTITY")
        .env_remove("RUST_LOG");
    cmd
}

/// A loopback port free on both TCP and UDP a moment ago (the gateway listens on both).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `ward quickstart --dir DIR --port PORT`, running until dropped or stopped.
fn start_quickstart(dir: &Path) -> (Proc, u16) {
    for _attempt in 0..5 {
        let port = free_port();
        let mut qs = Proc::spawn(
            ward(&["quickstart", "--port", &port.to_string(), "--dir"]).arg(dir),
            None,
        );
        let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            qs.wait_for("Press Ctrl-C", COMMAND_TIMEOUT, |out, _| {
                out.contains("Press Ctrl-C to stop.")
            })
        }));
        match ready {
            Ok(()) => return (qs, port),
            // Lost the port to another process between probing and binding: try another.
            Err(_) if qs.stderr().contains("is another quickstart running?") => continue,
            Err(e) => std::panic::resume_unwind(e),
        }
    }
    panic!("ward quickstart could not get a free port in 5 attempts");
}

#[test]
fn quickstart_then_the_printed_commands_work_and_sigterm_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs-dev");
    let d = dir.display().to_string();
    let (qs, port) = start_quickstart(&dir);
    let gateway = format!("127.0.0.1:{port}");
    let exe = ward_bin().display().to_string();

    // The instructions name this gateway and these identities.
    let printed = qs.stdout();
    for line in [
        format!("{exe} connect pump-12 --gateway {gateway} --identity {d}/vendor --listen 127.0.0.1:2323"),
        format!("{exe} connect monitor-3 --gateway {gateway} --identity {d}/clinician --listen 127.0.0.1:8080"),
        format!("{exe} connect pump-12 --gateway {gateway} --identity {d}/clinician < /dev/null"),
        format!("{exe} devices --gateway {gateway} --identity {d}/vendor"),
    ] {
        assert!(printed.contains(&line), "missing {line:?} in:\n{printed}");
    }
    for f in [
        "root.crt",
        "vendor.crt",
        "vendor.key",
        "clinician.crt",
        "ward.toml",
    ] {
        assert!(dir.join(f).is_file(), "{f} was not written");
    }

    let vendor = format!("{d}/vendor");
    let clinician = format!("{d}/clinician");

    // What the vendor may reach: the pump, not the monitor.
    let out = run(
        &mut ward(&["devices", "--gateway", &gateway, "--identity", &vendor]),
        None,
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{}", out.stdout);
    assert!(rows[0].starts_with("DEVICE"), "{}", out.stdout);
    let pump: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(
        pump,
        [
            "pump-12",
            "telnet",
            "acme-maintains-its-pumps",
            "class=infusion-pump,unit=icu,vendor=acme"
        ],
        "{}",
        out.stdout
    );

    // The clinician sees the monitor only.
    let out = run(
        &mut ward(&["devices", "--gateway", &gateway, "--identity", &clinician]),
        None,
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("monitor-3"), "{}", out.stdout);
    assert!(!out.stdout.contains("pump-12"), "{}", out.stdout);

    // The vendor on the pump's console, over stdin/stdout.
    let out = run(
        &mut ward(&[
            "connect",
            "pump-12",
            "--gateway",
            &gateway,
            "--identity",
            &vendor,
        ]),
        Some(b"admin\r\nadmin\r\nstatus\r\nexit\r\n".to_vec()),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("status: RUNNING  channel A 12.5 mL/h  battery 87%  occlusion none\r\n"),
        "{out:?}"
    );
    assert!(out.stdout.ends_with("pump> bye\r\n"), "{out:?}");
    assert!(
        out.stderr
            .contains("to pump-12 opened (rule acme-maintains-its-pumps)"),
        "{out:?}"
    );

    // The clinician is refused the pump, with the reason, and exit code 2.
    let out = run(
        &mut ward(&[
            "connect",
            "pump-12",
            "--gateway",
            &gateway,
            "--identity",
            &clinician,
        ]),
        None,
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("denied: no rule lets clinician alice reach pump-12"),
        "{out:?}"
    );
    assert_eq!(out.stdout, "", "{out:?}");

    // The clinician's forwarder to the monitor, and curl through it.
    if require_peer("curl") {
        let mut fwd = Proc::spawn(
            &mut ward(&[
                "connect",
                "monitor-3",
                "--gateway",
                &gateway,
                "--identity",
                &clinician,
                "--listen",
                "127.0.0.1:0",
            ]),
            None,
        );
        fwd.wait_for("the forwarding line", COMMAND_TIMEOUT, |_, err| {
            err.contains(" → monitor-3 through ")
        });
        let err = fwd.stderr();
        let local: SocketAddr = err
            .split("ward: forwarding ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {err:?}"));
        let url = format!("http://{local}/");
        let out = run(
            Command::new("curl").args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "-u",
                "admin:admin",
                &url,
            ]),
            None,
            COMMAND_TIMEOUT,
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            out.stdout,
            "<html><head><title>VitalView 900 monitor</title></head><body>\n<h1>VitalView 900 bedside monitor</h1>\n<p>Bed ICU-3 &middot; HR 72 bpm &middot; SpO2 98% &middot; NIBP 118/76</p>\n</body></html>\n\n200"
        );
        let out = run(
            Command::new("curl").args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", &url]),
            None,
            COMMAND_TIMEOUT,
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, "401 login required\n\n401");
        fwd.wait_for("two sessions", COMMAND_TIMEOUT, |_, err| {
            err.matches("opened (rule icu-nurses-see-icu-monitors)")
                .count()
                == 2
        });
        drop(fwd);
    }

    // SIGTERM stops the quickstart cleanly.
    let pid = qs.child.id().to_string();
    let kill = run(
        Command::new("kill").args(["-TERM", &pid]),
        None,
        COMMAND_TIMEOUT,
    );
    assert!(kill.status.success(), "{kill:?}");
    let out = qs.finish(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn help_texts_exit_zero_and_name_their_flags() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "quickstart",
                "gateway",
                "connect",
                "devices",
                "lock",
                "unlock",
                "ca",
                "--log-format",
                "--otlp-endpoint",
            ],
        ),
        (
            &["connect", "--help"],
            &[
                "<DEVICE>",
                "--gateway",
                "--identity",
                "--ca",
                "--transport",
                "--listen",
            ],
        ),
        (
            &["ca", "issue", "--help"],
            &[
                "--dir", "--kind", "--name", "--org", "--roles", "--ttl", "--csr", "--dns", "--ip",
                "--out",
            ],
        ),
    ];
    for (args, flags) in cases {
        let out = run(&mut ward(args), None, COMMAND_TIMEOUT);
        assert_eq!(out.status.code(), Some(0), "ward {args:?}: {out:?}");
        assert!(
            out.stdout.starts_with("Usage: ward") || out.stdout.contains("\nUsage: ward"),
            "ward {args:?}: {}",
            out.stdout
        );
        for flag in *flags {
            assert!(
                out.stdout.contains(flag),
                "ward {args:?} does not mention {flag}:\n{}",
                out.stdout
            );
        }
    }
    // An unknown flag is an error (exit 2), so the checks above do mean something.
    let out = run(
        &mut ward(&["connect", "--no-such-flag"]),
        None,
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
