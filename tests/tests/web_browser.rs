//! The web console in a real browser (issue 16, "Show"): Debian's `chromium` driven by
//! `playwright-core` (tests/web/, `npm ci` there; .ci/run does both), against the real `ward
//! gateway` binary with `[web] listen` on.
//!
//! This test holds everything the browser scripts need: a CA and identities, web users with
//! password + TOTP (security `sam`, admin approver `ada`, vendor `tech`), a line console that
//! answers `status` with `rate=…`, a hostile device that prints markup and escape sequences,
//! recorded sessions to both run by the vendor `jdoe` through `ward connect`, pending access
//! requests and a lock with markup in their reasons. Then it runs tests/web/xss.mjs and
//! tests/web/console.mjs and answers their requests on a line protocol (`@ask NAME JSON` on
//! node's stdout, `@answer NAME JSON` on its stdin): start a live session, write into it, check
//! that the CLI client saw its session end with the reason the browser gave, check a lock and an
//! approval through the CLI. Screenshots land in target/web-screenshots/ (or
//! `$WARD_WEB_SCREENSHOTS`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ward_ca::Kind;
use ward_core::config::LoginConfig;
use ward_core::PrincipalKind;
use ward_tests::hostile::{
    console_device, hostile_device, CONSOLE_PROMPT, HOSTILE_PROMPT, HOSTILE_VISIBLE, STATUS_REPLY,
};
use ward_tests::process::{free_port, run, ward, Input, Proc, COMMAND_TIMEOUT};
use ward_tests::web::{add_user, browser_ready, run_node, workspace};
use ward_tests::{ChildGateway, DeviceSpec, Pki, ACME_RULES};

/// The gateway, the identities and what the tests made on it.
struct World {
    gw: ChildGateway,
    jdoe: PathBuf,
    soc: PathBuf,
    web_url: String,
    /// Session ids already seen in the audit log.
    seen_sessions: BTreeSet<String>,
    /// Live `ward connect` clients by session id.
    live: BTreeMap<String, Proc>,
    /// What went wrong on this side while node ran.
    failures: Vec<String>,
}

impl World {
    /// `ward ARGS --gateway G --identity ID`.
    fn ward_as(&self, identity: &Path, args: &[&str]) -> Command {
        let mut cmd = ward(args);
        cmd.args(["--gateway", &self.gw.addr, "--identity"])
            .arg(identity)
            .arg("--ca")
            .arg(self.gw.pki.root());
        cmd
    }

    /// `ward connect DEVICE` on stdio as jdoe, once the device's prompt is there; returns the
    /// client and the new session's id (from the audit log's `session_open`).
    fn connect(&mut self, device: &str, prompt: &str) -> (Proc, String) {
        let mut p = Proc::spawn(
            &mut self.ward_as(&self.jdoe.clone(), &["connect", device]),
            Input::Pipe,
        );
        p.wait_for_stdout(prompt, COMMAND_TIMEOUT);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let opened: Vec<String> = self
                .gw
                .audit_events()
                .iter()
                .filter(|e| {
                    e["event"] == "session_open"
                        && e["outcome"] == "success"
                        && e["device"] == device
                })
                .filter_map(|e| e["session_id"].as_str().map(str::to_owned))
                .filter(|id| !self.seen_sessions.contains(id))
                .collect();
            if let [id] = opened.as_slice() {
                self.seen_sessions.insert(id.clone());
                return (p, id.clone());
            }
            assert!(
                opened.len() <= 1,
                "more than one new session on {device}: {opened:?}"
            );
            assert!(
                Instant::now() < deadline,
                "no new session_open for {device} in the audit log: {:#?}",
                self.gw
                    .audit_events()
                    .iter()
                    .filter(|e| e["event"] == "session_open")
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (within `limit`) until the client `p` says the gateway ended its session, or exits;
    /// then close its stdin (a client on stdio is blocked reading it, as `ward connect` is under
    /// ssh) and return its stderr once it has exited.
    fn ended(mut p: Proc, limit: Duration) -> Result<String, String> {
        let started = Instant::now();
        while !p.stderr().contains("session ended by the gateway")
            && p.child.try_wait().unwrap().is_none()
        {
            if started.elapsed() > limit {
                return Err(format!(
                    "the CLI client did not see its session end within {limit:?}; stderr so far: {}",
                    p.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = p.finish(Duration::from_secs(10));
        Ok(out.stderr)
    }

    /// Answer one `@ask` of a node script.
    fn answer(&mut self, name: &str, data: &Value) -> Value {
        let s = |k: &str| data[k].as_str().unwrap_or_default().to_owned();
        match name {
            "live-start" => {
                let device = s("device");
                let (p, id) = self.connect(&device, CONSOLE_PROMPT);
                self.live.insert(id.clone(), p);
                json!({"ok": true, "id": id})
            }
            "live-write" => {
                let id = s("id");
                let Some(p) = self.live.get_mut(&id) else {
                    return json!({"ok": false, "why": format!("no live client for {id}")});
                };
                p.send(format!("say {}\n", s("text")).as_bytes());
                // Node compares its own clock with this (same machine).
                let now = ward_tests::now();
                let written_ms = now.unix_timestamp() * 1000 + i64::from(now.millisecond());
                json!({"ok": true, "written_ms": written_ms})
            }
            "live-ended" => {
                let (id, reason) = (s("id"), s("reason"));
                let Some(p) = self.live.remove(&id) else {
                    return json!({"ok": false, "why": format!("no live client for {id}")});
                };
                match Self::ended(p, Duration::from_secs(10)) {
                    Ok(stderr)
                        if stderr.contains("session ended by the gateway")
                            && stderr.contains(&reason) =>
                    {
                        json!({"ok": true, "stderr": stderr})
                    }
                    Ok(stderr) => json!({"ok": false, "why": format!(
                        "the CLI client's session {id} ended without the reason {reason:?}: its stderr was {stderr:?}"
                    )}),
                    Err(why) => json!({"ok": false, "why": why}),
                }
            }
            "locked" => {
                let (principal, reason) = (s("principal"), s("reason"));
                let locks = run(&mut self.ward_as(&self.soc, &["locks"]));
                if !(locks.stdout.contains(&principal) && locks.stdout.contains(&reason)) {
                    return json!({"ok": false, "why": format!("`ward locks` does not show {principal} locked for {reason:?}: {locks:?}")});
                }
                // A new session of the locked principal is refused, with the reason.
                let out = run(&mut self.ward_as(&self.jdoe, &["connect", "pump-7"]));
                if out.status.success() || !out.stderr.contains(&reason) {
                    return json!({"ok": false, "why": format!("jdoe's new session while locked was not refused with the reason: {out:?}")});
                }
                json!({"ok": true})
            }
            "unlocked" => {
                let locks = run(&mut self.ward_as(&self.soc, &["locks"]));
                if locks.stdout.lines().any(|l| l.contains(&s("principal"))) {
                    return json!({"ok": false, "why": format!("`ward locks` still shows the principal: {locks:?}")});
                }
                let (mut p, id) = self.connect("pump-7", CONSOLE_PROMPT);
                p.send(b"exit\n");
                p.wait_for_stdout("bye", COMMAND_TIMEOUT);
                let out = p.finish(COMMAND_TIMEOUT);
                if out.status.success() {
                    json!({"ok": true, "session": id})
                } else {
                    json!({"ok": false, "why": format!("jdoe's session after unlock: {out:?}")})
                }
            }
            "approved" => {
                let request = s("request");
                let out = run(&mut self.ward_as(&self.soc, &["grants", "--json", "--all"]));
                let grant = out
                    .stdout
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|g| g["request"] == request.as_str());
                match grant {
                    Some(g) if g["approvers"].to_string().contains(&s("by")) => {
                        json!({"ok": true, "grant": g})
                    }
                    _ => {
                        json!({"ok": false, "why": format!("`ward grants` shows no grant approved by {} for {request}: {out:?}", s("by"))})
                    }
                }
            }
            other => json!({"ok": false, "why": format!("the Rust test knows no {other:?}")}),
        }
    }

    /// Run `node tests/web/SCRIPT` with `env`, answering its asks; returns its output.
    fn node(&mut self, script: &str, env: &[(&str, String)]) -> (bool, String) {
        let mut env = env.to_vec();
        env.push(("WARD_WEB_URL", self.web_url.clone()));
        let mut failures = Vec::new();
        let out = run_node(script, &env, &mut failures, |name, data| {
            self.answer(name, data)
        });
        self.failures.extend(failures);
        out
    }
}

#[test]
fn web_console_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let console = rt.block_on(console_device());
    let hostile = rt.block_on(hostile_device());

    let pki = Arc::new(Pki::new());
    let jdoe = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let soc = pki.person(Kind::Security, "soc", None, &["soc"]);
    let devices = [
        DeviceSpec::new(
            "pump-7",
            console,
            "telnet",
            &[("vendor", "acme"), ("class", "infusion-pump")],
        ),
        DeviceSpec::new(
            "evil-1",
            hostile,
            "telnet",
            &[("vendor", "acme"), ("class", "hostile-box")],
        ),
        DeviceSpec::new("pump-jit", console, "telnet", &[("class", "infusion-pump")]),
        DeviceSpec::new(
            "pump-jit2",
            console,
            "telnet",
            &[("class", "infusion-pump")],
        ),
    ];
    let web_port = free_port();
    let rules = format!(
        r#"{ACME_RULES}
[[approval]]
name = "pump-jit-maintenance"
who = {{ kind = "vendor" }}
devices = {{ ids = ["pump-jit", "pump-jit2"] }}
approvers = [ {{ kind = "admin" }} ]
max_duration = "8h"
pending_expiry = "1h"

[login]
mfa = ["security"]

[web]
listen = "127.0.0.1:{web_port}"
"#
    );
    let state_dir = pki.dir.path().join("state");
    let login = LoginConfig {
        mfa: vec![PrincipalKind::Security],
        ..LoginConfig::default()
    };
    let sam = add_user(&state_dir, &login, "sam", "security", None);
    let ada = add_user(&state_dir, &login, "ada", "admin", None);
    let tech = add_user(&state_dir, &login, "tech", "vendor", Some("acme"));
    let gw = ChildGateway::start(pki.clone(), &devices, &rules, "", Some(&state_dir));
    let web_url = format!("https://127.0.0.1:{web_port}");
    let mut world = World {
        gw,
        jdoe,
        soc,
        web_url,
        seen_sessions: BTreeSet::new(),
        live: BTreeMap::new(),
        failures: Vec::new(),
    };
    // The console listens once the gateway does (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", web_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the web console does not listen on 127.0.0.1:{web_port}\nstderr:\n{}",
            world.gw.proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A recorded session on the console: nothing for 1.5 s, then `status` (so the screen at 0
    // lacks the reading), then a word found only in this recording.
    let needle = format!("needle-{:08x}", rand::random::<u32>());
    let (mut p, status_session) = world.connect("pump-7", CONSOLE_PROMPT);
    std::thread::sleep(Duration::from_millis(1500));
    p.send(b"status\n");
    p.wait_for_stdout("rate=", COMMAND_TIMEOUT);
    p.send(format!("say {needle}\n").as_bytes());
    p.wait_for_stdout(&needle, COMMAND_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    p.send(b"exit\n");
    let out = p.finish(COMMAND_TIMEOUT);
    assert!(out.status.success(), "the status session: {out:?}");
    assert!(out.stdout.contains(STATUS_REPLY), "{out:?}");

    // A recorded session on the hostile device.
    let (mut p, hostile_session) = world.connect("evil-1", HOSTILE_PROMPT);
    p.wait_for_stdout("HOSTILE-DONE", COMMAND_TIMEOUT);
    p.send(b"again\n");
    std::thread::sleep(Duration::from_millis(300));
    p.send(b"exit\n");
    let out = p.finish(COMMAND_TIMEOUT);
    assert!(out.status.success(), "the hostile session: {out:?}");

    // Markup in a lock's and a request's reason.
    let hostile_reason =
        r#"<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>"#;
    let out = run(&mut world.ward_as(
        &world.soc,
        &[
            "lock",
            "--principal",
            "ghost",
            "--force",
            "--reason",
            hostile_reason,
        ],
    ));
    assert!(
        out.status.success(),
        "ward lock with a hostile reason: {out:?}"
    );
    let request_id = |out: &ward_tests::process::Finished| {
        out.stdout
            .split_whitespace()
            .find(|w| w.starts_with("req-"))
            .unwrap_or_else(|| panic!("no request id in {out:?}"))
            .to_owned()
    };
    let out = run(&mut world.ward_as(
        &world.jdoe,
        &[
            "request",
            "pump-jit",
            "--reason",
            "firmware 2.1",
            "--duration",
            "1h",
        ],
    ));
    assert!(out.status.success(), "ward request: {out:?}");
    let request = request_id(&out);
    let out = run(&mut world.ward_as(
        &world.jdoe,
        &[
            "request",
            "pump-jit2",
            "--reason",
            hostile_reason,
            "--duration",
            "1h",
        ],
    ));
    assert!(
        out.status.success(),
        "ward request with a hostile reason: {out:?}"
    );
    let hostile_request = request_id(&out);

    // The recordings are indexed (the session listing through the gateway shows both).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = run(&mut world.ward_as(&world.soc, &["sessions", "--json"]));
        if out.stdout.contains(&status_session) && out.stdout.contains(&hostile_session) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`ward sessions` does not list both recordings: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let screenshots = std::env::var_os("WARD_WEB_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/web-screenshots"));
    let _ = std::fs::remove_dir_all(&screenshots);
    std::fs::create_dir_all(&screenshots).unwrap();
    let node_state = tempfile::tempdir().unwrap();
    let users = json!({"security": sam.json(), "approver": ada.json(), "vendor": tech.json()});
    let common = |case: Value| {
        vec![
            ("WARD_WEB_USERS", users.to_string()),
            ("WARD_WEB_CASE", case.to_string()),
            ("WARD_WEB_SCREENSHOTS", screenshots.display().to_string()),
            ("WARD_WEB_STATE", node_state.path().display().to_string()),
        ]
    };

    // XSS: with a live session on the hostile device too.
    let (live_hostile_proc, hostile_live) = world.connect("evil-1", HOSTILE_PROMPT);
    world.live.insert(hostile_live.clone(), live_hostile_proc);
    let xss_case = json!({
        "hostile_session": hostile_session,
        "hostile_live": hostile_live,
        "hostile_device": "evil-1",
        "visible": HOSTILE_VISIBLE,
        "hostile_reason": hostile_reason,
        "hostile_request": hostile_request,
    });
    let (xss_ok, xss_out) = world.node("xss.mjs", &common(xss_case));
    // The browser ended it (with markup in the reason); if it did not, the client leaves.
    if let Some(mut p) = world.live.remove(&hostile_live) {
        if p.child.try_wait().unwrap().is_none() {
            p.send(b"exit\n");
        }
    }

    let jdoe_crt = ward_ca::Issued::cert_path(&world.jdoe);
    let jdoe_key = ward_ca::Issued::key_path(&world.jdoe);
    let case = json!({
        "status_session": status_session,
        "needle": needle,
        "expect": "rate=12.5",
        "console_device": "pump-7",
        "request_id": request,
        "other_request": hostile_request,
        "lock_principal": "jdoe",
        "vendor_cert": jdoe_crt,
        "vendor_key": jdoe_key,
    });
    let (console_ok, console_out) = world.node("console.mjs", &common(case));

    assert!(
        xss_ok && console_ok && world.failures.is_empty(),
        "the browser tests failed (screenshots in {}):\n{}\n{}\nRust-side failures: {:#?}",
        screenshots.display(),
        xss_out,
        console_out,
        world.failures
    );
}
