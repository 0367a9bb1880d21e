//! nginx as a device's web console in tests: in the foreground (one process) out of a temp dir,
//! on a free loopback port, retried when another process takes the port first.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{free_port, run, Input, Proc, COMMAND_TIMEOUT};

/// A running nginx.
pub struct Nginx {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    /// Its directory: the config, logs, and whatever the test put there.
    pub dir: tempfile::TempDir,
    _proc: Proc,
}

impl Nginx {
    /// The access log's lines, in the format the test's config gave it.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Start nginx: `prepare(dir)` writes the site's files, then `conf(dir, port, temp_paths)`
    /// is the whole `nginx.conf` for a free loopback `port` (`temp_paths`: the `*_temp_path`
    /// lines this nginx build needs inside `http {}`, so nothing is written outside `dir`).
    ///
    /// # Panics
    /// When nginx cannot start (a test's set-up failed).
    pub fn start(prepare: impl FnOnce(&Path), conf: impl Fn(&Path, u16, &str) -> String) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        prepare(d);
        let version = run(Command::new("nginx").arg("-V"));
        let build = version.stderr + &version.stdout;
        let mut temp_paths = String::new();
        for m in ["fastcgi", "uwsgi", "scgi"] {
            if !build.contains(&format!("--without-http_{m}_module")) {
                temp_paths.push_str(&format!("  {m}_temp_path {}/{m};\n", d.display()));
            }
        }
        for _attempt in 0..5 {
            let port = free_port();
            let _ = std::fs::remove_file(d.join("nginx.pid"));
            std::fs::write(d.join("nginx.conf"), conf(d, port, &temp_paths)).expect("nginx.conf");
            let mut proc = Proc::spawn(
                Command::new("nginx")
                    .arg("-p")
                    .arg(d)
                    .arg("-c")
                    .arg(d.join("nginx.conf"))
                    .arg("-e")
                    .arg(d.join("error.log")),
                Input::Null,
            );
            let pid = proc.child.id().to_string();
            let deadline = Instant::now() + COMMAND_TIMEOUT;
            loop {
                if let Some(status) = proc.child.try_wait().ok().flatten() {
                    let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                    if log.contains("Address already in use") {
                        break;
                    }
                    panic!("nginx exited ({status}):\n{log}");
                }
                let written = std::fs::read_to_string(d.join("nginx.pid")).unwrap_or_default();
                if written.trim() == pid {
                    return Nginx {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        dir,
                        _proc: proc,
                    };
                }
                assert!(Instant::now() < deadline, "nginx did not start in time");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx could not bind a free loopback port in 5 attempts");
    }
}
