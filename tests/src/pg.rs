//! A PostgreSQL server for tests: Debian's PostgreSQL 15, started unprivileged on loopback in a
//! temporary directory.
//!
//! [`Postgres::start`] finds `/usr/lib/postgresql/*/bin/{initdb,postgres,pg_ctl,psql}` (or
//! `$WARD_PG_BIN`), runs `initdb` and the server as the current user, or, when that is root, as
//! the `postgres` system user (`setpriv`, which execs, so the child is the postmaster itself) in
//! a temp dir it owns. The server listens on 127.0.0.1 on a free port with its socket in the temp
//! dir, and takes password (SCRAM) logins only. A `ward` role (not a superuser: it owns its
//! databases, which is all a gateway needs) has its password in [`Postgres::password_file`].
//! Durability is off (`fsync`, `synchronous_commit`): it is a test server. Dropping it stops the
//! server and removes everything.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{free_port, run, Input, Proc, COMMAND_TIMEOUT};

/// A running (or stopped, for outage tests) PostgreSQL.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `Some((uid, gid))` of `postgres` when the harness runs as root.
    run_as: Option<(u32, u32)>,
    port: u16,
    super_password: String,
    proc: Option<Proc>,
}

/// The directory holding `initdb` and `postgres`: `$WARD_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WARD_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether PostgreSQL is installed. Under `CI` a missing server is a failure (the test panics
/// naming the package); otherwise the test prints `SKIPPED:` and should return.
pub fn available() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    let why = "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does)";
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    false
}

fn random_password() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

/// The uid and gid of a system user (`id`).
fn ids_of(user: &str) -> (u32, u32) {
    let get = |flag: &str| {
        let out = run(Command::new("id").arg(flag).arg(user));
        assert!(out.status.success(), "id {flag} {user}: {out:?}");
        out.stdout.trim().parse::<u32>().unwrap()
    };
    (get("-u"), get("-g"))
}

impl Postgres {
    /// [`Postgres::start`] if PostgreSQL is installed; `None` (after printing `SKIPPED:`) when it
    /// is not, outside CI.
    pub fn require() -> Option<Postgres> {
        available().then(Postgres::start)
    }

    /// Initialises and starts a server (panics if PostgreSQL is missing or does not start).
    pub fn start() -> Postgres {
        let bin = bin_dir().expect("PostgreSQL is not installed (apt-get install postgresql)");
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::metadata(dir.path()).unwrap().uid() == 0;
        let run_as = root.then(|| ids_of("postgres"));
        let own = |path: &Path| {
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        };
        own(dir.path());
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).unwrap();
        own(&sock);
        let super_password = random_password();
        let super_file = dir.path().join("super.pw");
        std::fs::write(&super_file, format!("{super_password}\n")).unwrap();
        std::fs::set_permissions(&super_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        own(&super_file);
        let mut pg = Postgres {
            dir,
            bin,
            run_as,
            port: 0,
            super_password,
            proc: None,
        };
        let data = pg.data_dir();
        let out = run(pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", super_file.display())));
        assert!(out.status.success(), "initdb: {out:?}");
        pg.start_on_free_port();
        let ward_password = random_password();
        pg.psql(
            "postgres",
            &format!("CREATE ROLE ward LOGIN PASSWORD '{ward_password}'"),
        );
        pg.psql("postgres", "CREATE DATABASE ward OWNER ward");
        let pw = pg.password_file();
        std::fs::write(&pw, format!("{ward_password}\n")).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL program, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .env_remove("PGPASSWORD")
            .env_remove("PGDATA");
        cmd
    }

    /// Starts the server on a free port (retried when another process takes it first).
    fn start_on_free_port(&mut self) {
        for _attempt in 0..5 {
            self.port = free_port();
            if self.spawn() {
                return;
            }
        }
        panic!("PostgreSQL could not bind a free loopback port in 5 attempts");
    }

    /// Starts the server on `self.port`; false if the port was taken.
    fn spawn(&mut self) -> bool {
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path().join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .args(["-c", "shared_buffers=32MB"]);
        let mut proc = Proc::spawn(&mut cmd, Input::Null);
        let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            let log = proc.stderr();
            if log.contains("database system is ready to accept connections") {
                self.proc = Some(proc);
                return true;
            }
            if let Some(status) = proc.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let log = proc.stderr();
                if log.contains("Address already in use") {
                    return false;
                }
                panic!("postgres exited ({status}):\n{log}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not start within {COMMAND_TIMEOUT:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `sql` as the superuser in `database` (panics on failure).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = run(Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", &self.super_password)
            .env("PGCONNECT_TIMEOUT", "10"));
        assert!(out.status.success(), "psql {sql:?}: {out:?}");
        out.stdout
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://ward@127.0.0.1:PORT/ward` (no password: see [`Postgres::password_file`]).
    pub fn url(&self) -> String {
        self.url_of("ward")
    }

    fn url_of(&self, database: &str) -> String {
        format!("postgres://ward@127.0.0.1:{}/{database}", self.port)
    }

    /// The file holding the `ward` role's password (0600).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("ward.pw")
    }

    /// A new empty database owned by `ward`; its URL. Names: `[a-z0-9_]`.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database name {name:?}"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER ward"));
        self.url_of(name)
    }

    /// Stops the server (fast shutdown: connections are closed), for outage tests.
    pub fn stop(&mut self) {
        let Some(proc) = self.proc.take() else {
            return;
        };
        let out = run(self
            .command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "20"]));
        if !out.status.success() {
            eprintln!("pg_ctl stop: {out:?}");
        }
        // The postmaster exits once stopped; killed (by the guard) if it did not.
        let _ = proc.finish(Duration::from_secs(20));
    }

    /// Starts the stopped server again on the same port.
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "PostgreSQL is running");
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            // The port is busy for a moment after the stop (or someone took it).
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("PostgreSQL could not listen on port {} again", self.port);
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// The server's log so far (its stderr).
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::stderr).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.proc.is_some() {
            // Not `stop()`: a panic here while unwinding would abort.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
        }
    }
}
