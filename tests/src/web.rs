//! What the web tests share: the workspace root, whether a real browser can run, web users with
//! password + TOTP, in-process identities, and the runner for a node script in tests/web/ that
//! asks the Rust side for things on a line protocol (`@ask NAME JSON` on node's stdout,
//! `@answer NAME JSON` on its stdin).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ward_ca::{Clock, Identity, Kind, SystemClock};
use ward_core::config::LoginConfig;

use crate::process::{Input, Proc};
use crate::require_peer;

/// How long one node script may run, all steps included.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(300);

/// The workspace root (where tests/web/ and target/ are).
pub fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The browser, node and playwright-core are all there (under CI their absence is a failure).
pub fn browser_ready() -> bool {
    if !require_peer("node") || !require_peer("chromium") {
        return false;
    }
    node_module_ready("playwright-core")
}

/// `tests/web/node_modules/NAME` is installed (`npm ci` in tests/web; .ci/run does). Under CI
/// its absence is a failure.
pub fn node_module_ready(name: &str) -> bool {
    let module = workspace().join(format!("tests/web/node_modules/{name}/package.json"));
    if module.is_file() {
        return true;
    }
    let why =
        format!("tests/web/node_modules has no {name}: run `npm ci` in tests/web (.ci/run does)");
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    false
}

/// A web user with password + TOTP (base32 secret), as the browser scripts take it.
#[derive(Debug, Clone)]
pub struct WebUser {
    /// The user name.
    pub user: String,
    /// The generated password.
    pub password: String,
    /// The TOTP secret, base32.
    pub totp: String,
}

impl WebUser {
    /// `{"user", "password", "totp"}` for a script.
    pub fn json(&self) -> Value {
        json!({"user": self.user, "password": self.password, "totp": self.totp})
    }
}

/// Create `name` (kind, org) in the user store under `state_dir` with a generated password and
/// a TOTP secret, as `ward user add` would, without the must-change flag.
///
/// # Panics
/// When the store cannot be opened or the user made (a test's set-up failed).
pub fn add_user(
    state_dir: &Path,
    login: &LoginConfig,
    name: &str,
    kind: &str,
    org: Option<&str>,
) -> WebUser {
    use ward_store::users::UserStore;
    std::fs::create_dir_all(state_dir).expect("state dir");
    let db = crate::open_store(state_dir);
    let new = ward_server::jit::NewUser {
        org: org.map(Into::into),
        must_change: false,
        ..ward_server::jit::NewUser::new(name, kind)
    };
    let created = ward_server::jit::create_user(&db, login, new, crate::now())
        .unwrap_or_else(|e| panic!("creating web user {name}: {e:#}"));
    let totp = db
        .user(name)
        .expect("reading the user back")
        .and_then(|u| u.totp_secret)
        .unwrap_or_else(|| panic!("web user {name} has no TOTP secret"));
    WebUser {
        user: name.into(),
        password: created.password,
        totp,
    }
}

/// An identity as the gateway's validator would produce it (trust domain `ward.test`), for
/// in-process requests through `Gateway::web_router` with a [`ward_server::web::ConnInfo`].
pub fn identity(kind: Kind, name: &str, org: Option<&str>, roles: &[&str]) -> Identity {
    let now = SystemClock.now();
    Identity {
        trust_domain: "ward.test".into(),
        kind,
        name: name.into(),
        org: org.map(Into::into),
        roles: roles.iter().map(|r| (*r).to_string()).collect(),
        serial: format!("{:016x}", rand::random::<u64>()),
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::hours(8),
        uri: format!("spiffe://ward.test/{kind}/{name}"),
    }
}

/// Run `node tests/web/SCRIPT` with `env` (plus nothing else of the test's), answering each
/// `@ask NAME JSON` line it prints with `answer(NAME, JSON)`; an answer with `"ok": false` is
/// pushed onto `failures` too. Returns whether node exited 0 and everything it printed.
///
/// # Panics
/// When node runs over [`NODE_TIMEOUT`].
pub fn run_node(
    script: &str,
    env: &[(&str, String)],
    failures: &mut Vec<String>,
    mut answer: impl FnMut(&str, &Value) -> Value,
) -> (bool, String) {
    let mut cmd = Command::new("node");
    cmd.current_dir(workspace().join("tests/web"))
        .arg(script)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut p = Proc::spawn(&mut cmd, Input::Pipe);
    let started = Instant::now();
    let mut handled = 0usize;
    loop {
        let exited = p.child.try_wait().ok().flatten().is_some();
        let out = p.stdout();
        // Only whole lines: an ask is answered once node has written all of it.
        let complete = out
            .get(..out.rfind('\n').map_or(0, |i| i + 1))
            .unwrap_or("");
        let asks: Vec<&str> = complete
            .lines()
            .filter(|l| l.starts_with("@ask "))
            .collect();
        for ask in asks.iter().skip(handled) {
            let rest = ask.get("@ask ".len()..).unwrap_or("");
            let (name, data) = rest.split_once(' ').unwrap_or((rest, "{}"));
            let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            eprintln!("[{script}] asks {name} {data}");
            let reply = answer(name, &data);
            if reply["ok"] == false {
                failures.push(format!("{script}: {name}: {}", reply["why"]));
            }
            eprintln!("[{script}] answer {name} {reply}");
            if !exited {
                p.send(format!("@answer {name} {reply}\n").as_bytes());
            }
        }
        handled = asks.len();
        if exited {
            break;
        }
        if started.elapsed() > NODE_TIMEOUT {
            let (out, err) = (p.stdout(), p.stderr());
            drop(p);
            panic!("node {script} ran over {NODE_TIMEOUT:?}\nstdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = p.finish(Duration::from_secs(10));
    let output = format!(
        "--- node {script}: {}\n{}\n--- stderr:\n{}",
        done.status, done.stdout, done.stderr
    );
    if done.status.success() {
        // Shown with --nocapture (a failure prints it in the assertion).
        println!("{output}");
    }
    (done.status.success(), output)
}
