//! Child processes for the end-to-end tests that run the real `ward` binary (and reviewers' tools):
//! every child runs under a timeout, its output is collected by threads, and it is killed (and
//! reaped) when its guard drops.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Upper bound for one short command (`ward devices`, `ward connect` on stdio, curl, tshark...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for building the binary (normally a no-op or a link; a cold build of the binary's
/// own features can take a few minutes on two cores).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The `ward` binary of this workspace, built for the profile these tests were built with, on first
/// use (`cargo test` only builds a package's binaries for that package's own integration tests).
pub fn ward_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_ward).clone()
}

fn build_ward() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // A test runs as <target>/<profile>/deps/NAME-HASH.
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
    let out = run_with(&mut cmd, Input::Null, BUILD_TIMEOUT);
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
        .expect("cargo did not report the ward executable");
    assert!(bin.is_file(), "no ward binary at {}", bin.display());
    bin
}

/// The built `ward` with `args`, without the environment that would point it elsewhere.
pub fn ward(args: &[&str]) -> Command {
    let mut cmd = Command::new(ward_binary());
    cmd.args(args)
        .env_remove("WARD_GATEWAY")
        .env_remove("WARD_IDENTITY")
        .env_remove("WARD_IDENTITY_KEY")
        .env_remove("RUST_LOG");
    cmd
}

/// What a child reads on stdin.
pub enum Input {
    /// /dev/null.
    Null,
    /// A pipe the test writes with [`Proc::send`]; closed by [`Proc::finish`] (or on drop).
    Pipe,
    /// These bytes, written by a thread, then EOF.
    Bytes(Vec<u8>),
}

/// A child process that is killed (and reaped) when dropped, with its output collected by threads.
pub struct Proc {
    name: String,
    /// The child itself (for its pid, or to see whether it exited).
    pub child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The output readers and the [`Input::Bytes`] writer.
    threads: Vec<JoinHandle<()>>,
    /// The write end of the child's stdin, for [`Input::Pipe`]; dropping it sends EOF.
    stdin: Option<ChildStdin>,
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
    /// Spawn `cmd` with `input` on its stdin.
    pub fn spawn(cmd: &mut Command, input: Input) -> Proc {
        let name = format!("{cmd:?}");
        cmd.stdin(match input {
            Input::Null => Stdio::null(),
            Input::Pipe | Input::Bytes(_) => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut threads = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let pipe = child.stdin.take();
        let stdin = match (input, pipe) {
            (Input::Bytes(bytes), Some(mut pipe)) => {
                threads.push(std::thread::spawn(move || {
                    let _ = pipe.write_all(&bytes);
                }));
                None
            }
            (_, pipe) => pipe,
        };
        Proc {
            name,
            child,
            stdout,
            stderr,
            threads,
            stdin,
        }
    }

    /// Write to the child's stdin (a small write to a pipe: it does not block).
    pub fn send(&mut self, bytes: &[u8]) {
        let pipe = self.stdin.as_mut().expect("spawned with Input::Pipe");
        pipe.write_all(bytes).unwrap();
        pipe.flush().unwrap();
    }

    /// What the child printed on stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// What the child printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Wait until `ready(stdout, stderr)` holds; fails if the process exits first or time runs out.
    pub fn wait_for(&mut self, what: &str, limit: Duration, ready: impl Fn(&str, &str) -> bool) {
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

    /// Wait until stdout contains `what`; fails if the process exits first or time runs out.
    pub fn wait_for_stdout(&mut self, what: &str, limit: Duration) {
        self.wait_for(&format!("printing {what:?}"), limit, |out, _| {
            out.contains(what)
        });
    }

    /// Close stdin and wait for the process to exit on its own within `limit` (killed and failed
    /// otherwise).
    pub fn finish(mut self, limit: Duration) -> Finished {
        drop(self.stdin.take());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() >= limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let raw = self.stdout.lock().unwrap().clone();
        Finished {
            status,
            stdout: String::from_utf8_lossy(&raw).into_owned(),
            raw_stdout: raw,
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
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its stdout, lossily decoded.
    pub stdout: String,
    /// Its stdout, byte for byte.
    pub raw_stdout: Vec<u8>,
    /// Its stderr, lossily decoded.
    pub stderr: String,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Run `cmd` with `input` on its stdin to completion within `limit`.
pub fn run_with(cmd: &mut Command, input: Input, limit: Duration) -> Finished {
    Proc::spawn(cmd, input).finish(limit)
}

/// Run `cmd` (stdin from /dev/null) to completion within [`COMMAND_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Finished {
    run_with(cmd, Input::Null, COMMAND_TIMEOUT)
}

/// Run `cmd` and require exit 0.
pub fn run_ok(cmd: &mut Command) -> Finished {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    out
}

/// A loopback port free on both TCP and UDP a moment ago (the gateway listens on both).
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `ward quickstart --dir DIR --port PORT`, running until dropped or stopped.
pub fn start_quickstart(dir: &Path) -> (Proc, u16) {
    start_quickstart_with(dir, &[])
}

/// [`start_quickstart`] with global options (`ward OPTIONS quickstart ...`), e.g. `--otlp-endpoint`.
pub fn start_quickstart_with(dir: &Path, global: &[&str]) -> (Proc, u16) {
    start_quickstart_args(dir, global, &[])
}

/// [`start_quickstart_with`] with quickstart's own options too (`ward GLOBAL quickstart OWN ...`),
/// e.g. `--isolated`.
pub fn start_quickstart_args(dir: &Path, global: &[&str], own: &[&str]) -> (Proc, u16) {
    for _attempt in 0..5 {
        let port = free_port();
        let port_arg = port.to_string();
        let mut args = global.to_vec();
        args.push("quickstart");
        args.extend(own);
        args.extend(["--port", &port_arg, "--dir"]);
        let mut qs = Proc::spawn(ward(&args).arg(dir), Input::Null);
        let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            qs.wait_for_stdout("Press Ctrl-C to stop.", COMMAND_TIMEOUT)
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
