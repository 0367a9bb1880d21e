//! Operational integrity of one gateway: one gateway per state dir (issue 11 item 5, security
//! case 33) and SIGHUP reloading the config instead of killing the gateway (issue 11 item 7,
//! security case 35).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{Client, SessionEnd, Transport};
use ward_core::frame::{Request, Response};
use ward_server::gateway::Gateway;
use ward_server::reload::ReloadError;
use ward_tests::process::{free_port, run, run_ok, ward};
use ward_tests::*;

const ACME_RULE: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

const ICU_RULE: &str = r#"
[[rule]]
name = "icu-sees-monitors"
who = { kind = "clinician", roles = ["icu"] }
devices = { labels = { class = "monitor" } }
"#;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Two echo devices: `pump-12` (acme's) and `monitor-3` (an ICU monitor).
async fn devices() -> Vec<DeviceSpec> {
    let pump = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let monitor = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    vec![
        DeviceSpec::new("pump-12", pump.addr, "raw", &[("vendor", "acme")]),
        DeviceSpec::new("monitor-3", monitor.addr, "raw", &[("class", "monitor")]),
    ]
}

/// A live session on a duplex pipe: the test writes and reads the device's echo.
struct Live {
    run: JoinHandle<SessionEnd>,
    r: ReadHalf<DuplexStream>,
    w: WriteHalf<DuplexStream>,
}

impl Live {
    async fn open(client: &Client, device: &str, break_glass: Option<&str>) -> Live {
        let session = client
            .open(
                device,
                break_glass.is_some(),
                break_glass.map(str::to_owned),
            )
            .await
            .unwrap();
        let (local, remote) = tokio::io::duplex(64 * 1024);
        let (lr, lw) = tokio::io::split(local);
        let run = tokio::spawn(session.run(lr, lw));
        let (r, w) = tokio::io::split(remote);
        let mut live = Live { run, r, w };
        live.echo(b"hello").await;
        live
    }

    /// Send `data` and read it back from the echo device.
    async fn echo(&mut self, data: &[u8]) {
        self.w.write_all(data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(10), self.r.read_exact(&mut back))
            .await
            .expect("the echo came back")
            .unwrap();
        assert_eq!(back, data);
    }

    /// How the session ended (bounded wait).
    async fn end(self) -> SessionEnd {
        tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("the session ended")
            .unwrap()
    }
}

fn events_named(state_dir: &Path, name: &str) -> Vec<serde_json::Value> {
    audit_events(state_dir)
        .into_iter()
        .filter(|e| e["event"] == name)
        .collect()
}

/// Wait (bounded) until the audit log holds an event `name`; the writer is asynchronous.
async fn audited(state_dir: &Path, name: &str) -> serde_json::Value {
    audited_where(state_dir, name, |_| true).await
}

/// Wait (bounded) until the audit log holds an event `name` for which `pred` holds.
async fn audited_where(
    state_dir: &Path,
    name: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let find = || events_named(state_dir, name).into_iter().find(|e| pred(e));
    let found = eventually(Duration::from_secs(10), || find().is_some()).await;
    assert!(
        found,
        "no matching {name} event in the audit log:\n{:#?}",
        audit_events(state_dir)
    );
    find().unwrap()
}

/// Whether the clinician is now let onto monitor-3.
async fn clinician_may_open_monitor(client: &Client) -> bool {
    match client.open("monitor-3", false, None).await {
        Ok(_) => true,
        Err(e) => {
            assert!(e.to_string().contains("no rule lets"), "{e:#}");
            false
        }
    }
}

fn audit_log_verifies(state_dir: &Path) {
    let key = ward_server::review::public_key(state_dir).unwrap();
    let log = std::fs::read(state_dir.join("audit.log")).unwrap();
    let report = ward_recording::audit::verify_audit(&log, &key);
    assert!(report.first_error.is_none(), "{:?}", report.first_error);
}

// ---- Issue 11 item 5: one gateway per state dir (security case 33) ----

/// Reproduction: start a gateway, then, in the same process, start a second one on the same
/// config (both listen on port 0, so binding cannot be what stops it). Before the fix the
/// second started without a word and both appended to one audit log. Now the second is refused
/// naming the holder's pid and what to do; the first keeps serving; once the first has shut
/// down, a new gateway starts on the state dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_gateway_on_a_state_dir_in_use_is_refused_in_process() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let devices = devices().await;
    let mut tg = start_gateway(pki.clone(), &devices, ACME_RULE, "", clock()).await;
    let state_dir = tg.state_dir();
    let config = ward_server::gateway::load_config(&tg.config).unwrap();

    let err = match Gateway::start(config.clone(), clock()).await {
        Ok(second) => {
            second.shutdown(Duration::from_millis(10)).await;
            panic!(
                "a second gateway started on state dir {} while the first ran",
                state_dir.display()
            );
        }
        Err(e) => format!("{e:#}"),
    };
    let want = format!(
        "state dir {} is in use by ward gateway pid {}; stop it first, or give this gateway its own state_dir",
        state_dir.display(),
        std::process::id()
    );
    assert!(err.contains(&want), "{err}");
    let lock = state_dir.join("gateway.lock");
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        std::process::id().to_string()
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "gateway.lock mode {mode:o}");
    }

    // The first still serves.
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let vendor_client = tg.client(&vendor, Transport::Quic);
    let mut live = Live::open(&vendor_client, "pump-12", None).await;
    live.echo(b"still here").await;
    // Let it end and be audited, so nothing of the first gateway is still being written.
    live.w.shutdown().await.unwrap();
    assert_eq!(live.end().await, SessionEnd::Completed);
    audited(&state_dir, "session_close").await;

    // Released at shutdown: a new gateway starts, and the log the two wrote in turn verifies.
    tg.shutdown(Duration::from_millis(100)).await;
    let again = Gateway::start(config, clock()).await.unwrap();
    again.shutdown(Duration::from_millis(10)).await;
    audit_log_verifies(&state_dir);
    assert_eq!(events_named(&state_dir, "gateway_start").len(), 2);
}

/// Reproduction: `ward gateway --config a.toml`, then `ward gateway --config b.toml` where b.toml
/// has another port but the same state_dir. Before the fix the second ran alongside the first
/// (this test then timed out waiting for it to exit). Now it exits non-zero at once naming the
/// first one's pid, the first keeps serving, and the host-side tools that read the state dir
/// (`ward sessions --state-dir`, `ward user add --config`) work while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_gateway_process_on_a_state_dir_in_use_exits_naming_the_pid() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let devices = devices().await;
    let first = ChildGateway::start(pki.clone(), &devices, ACME_RULE, "", None);
    let second_config =
        write_gateway_config(&pki, &devices, ACME_RULE, "", free_port(), &first.state_dir);
    let out = run(ward(&["gateway", "--config"]).arg(&second_config));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "is in use by ward gateway pid {}; stop it first",
            first.pid()
        )),
        "{out:?}"
    );

    // The first keeps serving.
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let vendor_client = first.client(&vendor, Transport::Quic);
    let mut live = Live::open(&vendor_client, "pump-12", None).await;
    live.echo(b"first gateway still serving").await;

    // Host-side tools on the state dir still work while the gateway runs.
    let state = first.state_dir.display().to_string();
    run_ok(&mut ward(&["sessions", "--state-dir", &state]));
    let config = first.config.display().to_string();
    let added = run_ok(&mut ward(&[
        "user",
        "add",
        "rita",
        "--kind",
        "clinician",
        "--config",
        &config,
    ]));
    assert!(added.stdout.contains("user rita created."), "{added:?}");
    live.echo(b"and after the tools").await;
}

// ---- Issue 11 item 7: SIGHUP reloads the config (security case 35) ----

/// Rewrite the gateway's config file with `edit` applied to its text.
fn edit_config(path: &Path, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, edit(text)).unwrap();
}

/// Reproduction: a vendor is proxying to pump-12 under acme's rule; an operator edits the
/// config (the acme rule goes, an ICU rule comes, ventilator-1 no longer allows break-glass) and
/// reloads. Before the fix there was no reload: the gateway had to be restarted (SIGHUP killed
/// it). Now the new rule applies at once, the vendor's session is cut with "policy changed on
/// reload: <why>", a break-glass session is kept (an emergency override), and `config_reloaded`
/// carries the file's SHA-256 and counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_new_rule_and_cuts_a_session_it_no_longer_permits() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let devices = devices().await;
    let vent = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ventilator = format!(
        "\n[[device]]\nid = \"ventilator-1\"\naddress = \"{}\"\nprotocol = \"raw\"\nbreak_glass = true\n",
        vent.addr
    );
    let tg = start_gateway(
        pki.clone(),
        &devices,
        &format!("{ventilator}{ACME_RULE}"),
        "",
        clock(),
    )
    .await;
    let gw = tg.gw.as_ref().unwrap();
    let state_dir = tg.state_dir();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let nurse = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let nurse_client = tg.client(&nurse, Transport::Quic);
    let vendor_client = tg.client(&vendor, Transport::Tcp);
    let vendor_live = Live::open(&vendor_client, "pump-12", None).await;
    let mut emergency = Live::open(&nurse_client, "ventilator-1", Some("code blue, bed 4")).await;
    assert!(!clinician_may_open_monitor(&nurse_client).await);

    edit_config(&tg.config, |text| {
        text.replace(ACME_RULE, ICU_RULE)
            .replace("break_glass = true\n", "")
    });
    let report = gw.reload(&tg.config).unwrap();
    assert_eq!(report.sha256, sha256(&std::fs::read(&tg.config).unwrap()));
    assert_eq!((report.devices, report.rules, report.approvals), (3, 1, 0));
    assert_eq!((report.sessions_cut, report.break_glass_kept), (1, 1));

    // The vendor's session is cut with the new policy's reason.
    match vendor_live.end().await {
        SessionEnd::ClosedByGateway(reason) => assert_eq!(
            reason,
            "policy changed on reload: no rule lets vendor acme/jdoe reach pump-12"
        ),
        other => panic!("expected the reload to cut the vendor's session, got {other:?}"),
    }
    // New decisions use the new config: the ICU rule applies, the acme rule is gone.
    assert!(clinician_may_open_monitor(&nurse_client).await);
    let err = tg
        .client(&vendor, Transport::Quic)
        .open("pump-12", false, None)
        .await
        .err()
        .expect("the acme rule is gone");
    assert!(err.to_string().contains("no rule lets"), "{err:#}");
    // Break-glass is kept as it is.
    emergency.echo(b"still ventilating").await;

    let ev = audited(&state_dir, "config_reloaded").await;
    assert_eq!(ev["outcome"], "success");
    assert_eq!(ev["detail"]["sha256"], report.sha256.as_str());
    assert_eq!(ev["detail"]["rules"], 1);
    assert_eq!(ev["detail"]["sessions_cut"], 1);
    assert_eq!(ev["detail"]["break_glass_kept"], 1);
    let closed = audited_where(&state_dir, "session_close", |e| e["device"] == "pump-12").await;
    assert_eq!(
        closed["reason"],
        "policy changed on reload: no rule lets vendor acme/jdoe reach pump-12"
    );
}

/// Reproduction: reload a config with a TOML syntax error, then one that fails validation (a
/// rule naming a device that does not exist). Each is refused with the parse error (file, line,
/// field), audited as `config_reload_failed`, and the gateway keeps serving on the old config:
/// the live session continues, the old rule still permits, the new rule does not apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_bad_config_and_keeps_serving_the_old_one() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let devices = devices().await;
    let tg = start_gateway(pki.clone(), &devices, ACME_RULE, "", clock()).await;
    let gw = tg.gw.as_ref().unwrap();
    let state_dir = tg.state_dir();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let nurse = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let vendor_client = tg.client(&vendor, Transport::Quic);
    let nurse_client = tg.client(&nurse, Transport::Quic);
    let mut live = Live::open(&vendor_client, "pump-12", None).await;
    let good = std::fs::read_to_string(&tg.config).unwrap();
    let file = tg.config.file_name().unwrap().to_str().unwrap().to_owned();

    let cases = [
        (
            "syntax",
            format!("{good}{ICU_RULE}\n[[rule]\nname = \"broken\"\n"),
            "unclosed array table",
        ),
        (
            "validation",
            format!("{good}{ICU_RULE}\n[[rule]]\nname = \"ghost\"\nwho = {{ kind = \"admin\" }}\ndevices = {{ ids = [\"pump-99\"] }}\n"),
            "rule[2].devices.ids: no device with id \"pump-99\"",
        ),
    ];
    for (name, text, want) in cases {
        std::fs::write(&tg.config, &text).unwrap();
        let err = gw
            .reload(&tg.config)
            .err()
            .unwrap_or_else(|| panic!("{name}: a bad config was applied"));
        assert!(matches!(err, ReloadError::Invalid(_)), "{name}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&file) && msg.contains(want), "{name}: {msg}");
        let failed = audited_where(&state_dir, "config_reload_failed", |e| {
            e["reason"].as_str().is_some_and(|r| r.contains(want))
        })
        .await;
        assert_eq!(failed["outcome"], "failure", "{name}");
        // Still on the old config: the live session runs, the old rule permits, the new does not.
        live.echo(name.as_bytes()).await;
        Live::open(&vendor_client, "pump-12", None).await;
        assert!(!clinician_may_open_monitor(&nurse_client).await, "{name}");
    }
    assert_eq!(events_named(&state_dir, "config_reload_failed").len(), 2);
    assert!(events_named(&state_dir, "config_reloaded").is_empty());
}

/// Reproduction: change `[gateway] listen` (and, in the same file, add a rule) and reload. The
/// listener cannot move without a restart, so the whole file is refused naming
/// `gateway.listen`, and nothing is applied: the added rule does not take effect either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_listen_address_change_naming_the_field() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let devices = devices().await;
    let tg = start_gateway(pki.clone(), &devices, ACME_RULE, "", clock()).await;
    let gw = tg.gw.as_ref().unwrap();
    let state_dir = tg.state_dir();
    let nurse = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let nurse_client = tg.client(&nurse, Transport::Quic);

    edit_config(&tg.config, |text| {
        let moved = text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{}\"", free_port()),
            1,
        );
        assert_ne!(moved, text);
        format!("{moved}{ICU_RULE}")
    });
    let err = gw
        .reload(&tg.config)
        .expect_err("a listen change was applied");
    match &err {
        ReloadError::NeedsRestart { fields, .. } => assert_eq!(fields, &["gateway.listen"]),
        other => panic!("expected a refusal naming the field, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("gateway.listen cannot change without a restart"),
        "{err}"
    );
    let failed = audited(&state_dir, "config_reload_failed").await;
    assert_eq!(failed["detail"]["fields"], "gateway.listen");
    assert!(!clinician_may_open_monitor(&nurse_client).await);
    // The gateway still answers on its listener.
    let r = nurse_client.request(&Request::ListDevices).await.unwrap();
    assert!(matches!(r, Response::Devices { .. }), "{r:?}");
}

/// Reproduction: run `ward gateway`, open a session, add a rule to its config file and
/// `kill -HUP` it (what logrotate sends). Before the fix the gateway died on the spot: no
/// `Closed` frame, no `session_close`, the recording left unsealed. Now it reloads: the session
/// continues, the new rule applies, `config_reloaded` is audited, a broken config sent the same
/// way is refused and audited; SIGTERM still drains, closes the session with "gateway shutting
/// down" and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_the_gateway_keeps_serving() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let devices = devices().await;
    let mut child = ChildGateway::start(
        pki.clone(),
        &devices,
        ACME_RULE,
        "shutdown_grace = \"1s\"",
        None,
    );
    let hup = |child: &ChildGateway| {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &child.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP {} failed", child.pid());
    };
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let nurse = pki.person(Kind::Clinician, "alice", None, &["icu"]);
    let nurse_client = child.client(&nurse, Transport::Quic);
    let vendor_client = child.client(&vendor, Transport::Quic);
    let mut live = Live::open(&vendor_client, "pump-12", None).await;
    assert!(!clinician_may_open_monitor(&nurse_client).await);

    edit_config(&child.config, |text| format!("{text}{ICU_RULE}"));
    hup(&child);
    // Either it reloads, or (before the fix) SIGHUP's default action kills it.
    eventually(Duration::from_secs(10), || {
        !events_named(&child.state_dir, "config_reloaded").is_empty()
            || child.proc.child.try_wait().unwrap().is_some()
    })
    .await;
    if let Some(status) = child.proc.child.try_wait().unwrap() {
        panic!(
            "ward gateway died on SIGHUP ({status}); audit log: {:?}; session_close events: {}",
            audit_events(&child.state_dir)
                .iter()
                .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>(),
            events_named(&child.state_dir, "session_close").len()
        );
    }
    let ev = audited(&child.state_dir, "config_reloaded").await;
    assert_eq!(
        ev["detail"]["sha256"],
        sha256(&std::fs::read(&child.config).unwrap()).as_str()
    );
    assert_eq!(ev["detail"]["rules"], 2);
    live.echo(b"after SIGHUP").await;
    assert!(clinician_may_open_monitor(&nurse_client).await);

    // A broken file sent the same way: refused, audited, still serving.
    edit_config(&child.config, |text| format!("{text}\n[[rule]\n"));
    hup(&child);
    let failed = audited(&child.state_dir, "config_reload_failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("unclosed array table"),
        "{failed}"
    );
    live.echo(b"after a refused reload").await;
    assert!(clinician_may_open_monitor(&nurse_client).await);

    // SIGTERM is unchanged: drain, cut with a reason, audit, exit 0.
    child.sigterm();
    match live.end().await {
        SessionEnd::ClosedByGateway(reason) => assert_eq!(reason, "gateway shutting down"),
        other => panic!("expected a Closed frame on SIGTERM, got {other:?}"),
    }
    let state_dir = child.state_dir.clone();
    let done = child.proc.finish(Duration::from_secs(30));
    assert!(done.status.success(), "{done:?}");
    let closes = events_named(&state_dir, "session_close");
    assert!(
        closes
            .iter()
            .any(|e| e["reason"] == "gateway shutting down"),
        "{closes:#?}"
    );
    audited(&state_dir, "gateway_stop").await;
    audit_log_verifies(&state_dir);
}
