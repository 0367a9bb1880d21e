//! Issue 14 item 1: `ward vault` against a real gateway (the built binary, as a child process):
//! an admin sets a value with `--stdin` through the gateway and lists it; a vendor is refused;
//! the value appears in none of the commands' output, the audit log, the gateway's log at trace
//! level, or `ward.db`'s raw bytes (nor does its base64).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use ward_ca::Kind;
use ward_tests::process::{run_with, ward, Finished, Input, COMMAND_TIMEOUT};
use ward_tests::*;

const SECRET: &str = "Vault-Needle-5b1e-Factory!";

#[test]
fn a_value_set_through_the_gateway_is_listed_and_never_shown() {
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "pump-12",
        "127.0.0.1:9".parse().unwrap(),
        "raw",
        &[("vendor", "acme")],
    )];
    let gw = ChildGateway::start_env(
        pki.clone(),
        &devices,
        "",
        "",
        None,
        &[("RUST_LOG", "trace")],
    );
    let admin = pki.person(Kind::Admin, "alice", None, &[]);
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let root = pki.root();
    let as_ = |who: &std::path::Path, args: &[&str], input: Input| -> Finished {
        let mut all = args.to_vec();
        let id = who.display().to_string();
        let ca = root.display().to_string();
        all.extend(["--gateway", &gw.addr, "--identity", &id, "--ca", &ca]);
        run_with(&mut ward(&all), input, COMMAND_TIMEOUT)
    };
    let mut outputs = Vec::new();

    // Set, from one line of standard input.
    let line = format!("{SECRET}\n").into_bytes();
    let out = as_(
        &admin,
        &[
            "vault", "set", "pump-12", "service", "--user", "admin", "--stdin",
        ],
        Input::Bytes(line.clone()),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains("vaulted pump-12/service (user admin, key "),
        "{out:?}"
    );
    outputs.push(out);

    // Without --stdin and without a terminal, nothing is read or sent.
    let out = as_(
        &admin,
        &["vault", "set", "pump-12", "nurse"],
        Input::Bytes(line.clone()),
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("pass --stdin"), "{out:?}");
    outputs.push(out);

    // A device the gateway does not know is refused.
    let out = as_(
        &admin,
        &["vault", "set", "pump-99", "service", "--stdin"],
        Input::Bytes(line.clone()),
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("no device pump-99"), "{out:?}");
    outputs.push(out);

    // List: a table, and JSON lines.
    let out = as_(&admin, &["vault", "list"], Input::Null);
    assert!(out.status.success(), "{out:?}");
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("pump-12"))
        .unwrap_or_else(|| panic!("no pump-12 row:\n{}", out.stdout));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], ["pump-12", "service", "admin"], "{row}");
    assert!(row.contains("never"), "{row}");
    assert!(out.stdout.starts_with("DEVICE"), "{}", out.stdout);
    outputs.push(out);
    let out = as_(&admin, &["vault", "list", "--json"], Input::Null);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["device"], "pump-12");
    assert_eq!(v["account"], "service");
    assert_eq!(v["username"], "admin");
    assert_eq!(v["pending"], false);
    let fp = v["key_fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fp.len(), 16);
    outputs.push(out);

    // A vendor may not list or set.
    let out = as_(&vendor, &["vault", "list"], Input::Null);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("admin identities"), "{out:?}");
    outputs.push(out);
    let out = as_(
        &vendor,
        &["vault", "set", "pump-12", "service", "--stdin"],
        Input::Bytes(line.clone()),
    );
    assert!(!out.status.success(), "{out:?}");
    outputs.push(out);

    // On the host, through the config: the same entry, under the same key.
    let out = run_with(
        &mut ward(&[
            "vault",
            "list",
            "--json",
            "--config",
            &gw.config.display().to_string(),
        ]),
        Input::Null,
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains(&fp), "{out:?}");
    outputs.push(out);

    // The audit log: the change, who made it, the fingerprint; the vendor's refusal.
    let events = gw.audit_events();
    let sets: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "vault_set")
        .collect();
    let outcomes: Vec<&str> = sets
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["success", "failure", "denied"], "{sets:?}");
    let ok = sets[0].to_string();
    for want in ["pump-12", "service", "alice", &fp] {
        assert!(ok.contains(want), "{want} not in {ok}");
    }

    // The value (and its base64) is nowhere.
    let b64 = base64(SECRET.as_bytes());
    let needles = [SECRET.as_bytes(), b64.as_bytes()];
    let found = |what: &str, hay: &[u8]| {
        for n in needles {
            assert!(
                !hay.windows(n.len()).any(|w| w == n),
                "the value is in {what}"
            );
        }
    };
    for out in &outputs {
        found("a command's stdout", out.stdout.as_bytes());
        found("a command's stderr", out.stderr.as_bytes());
    }
    let audit = std::fs::read(gw.state_dir.join("audit.log")).unwrap();
    assert!(!audit.is_empty());
    found("the audit log", &audit);
    let log = gw.proc.stderr();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the gateway did not log at trace level:\n{log}"
    );
    found("the gateway's log", log.as_bytes());
    for f in ["ward.db", "ward.db-wal"] {
        if let Ok(bytes) = std::fs::read(gw.state_dir.join(f)) {
            found(f, &bytes);
        }
    }
    // The key file is owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(gw.state_dir.join("vault.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Standard base64 with padding (the form a leak would most likely take).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn base64_is_standard() {
    assert_eq!(base64(b"admin:admin"), "YWRtaW46YWRtaW4=");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"abc"), "YWJj");
}

/// Issue 14 item 6 through the CLI: `ward vault rotate` against the simulated pump behind a real
/// gateway. The pump ends with a new password that appears nowhere (outputs, audit log, gateway
/// log, ward.db) and that the vault holds; the factory one no longer works.
#[test]
fn rotate_replaces_the_pumps_password_with_one_nobody_sees() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let accounts = ward::sim::factory_accounts();
    let pump = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ward::sim::telnet_console_with(l, accounts.clone()).unwrap()
    });
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "pump-12",
        pump.addr,
        "telnet",
        &[("vendor", "acme")],
    )];
    let gw = ChildGateway::start_env(
        pki.clone(),
        &devices,
        "",
        "",
        None,
        &[("RUST_LOG", "trace")],
    );
    let admin = pki.person(Kind::Admin, "alice", None, &[]);
    let root = pki.root();
    let as_admin = |args: &[&str], input: Input| -> Finished {
        let mut all = args.to_vec();
        let id = admin.display().to_string();
        let ca = root.display().to_string();
        all.extend(["--gateway", &gw.addr, "--identity", &id, "--ca", &ca]);
        run_with(&mut ward(&all), input, COMMAND_TIMEOUT)
    };
    let factory = ward::sim::SERVICE_PASSWORD;
    let mut outputs = Vec::new();
    let out = as_admin(
        &["vault", "set", "pump-12", "service", "--stdin"],
        Input::Bytes(format!("{factory}\n").into_bytes()),
    );
    assert!(out.status.success(), "{out:?}");
    outputs.push(out);
    let out = as_admin(&["vault", "rotate", "pump-12", "service"], Input::Null);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("rotated pump-12/service"), "{out:?}");
    outputs.push(out);
    let new = accounts.lock().unwrap().get("service").cloned().unwrap();
    assert_ne!(new, factory, "the pump's password did not change");
    assert_eq!(new.len(), 24);
    let out = as_admin(&["vault", "list", "--json"], Input::Null);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(v["last_rotated_unix"].is_i64(), "{v}");
    assert_eq!(v["pending"], false);
    outputs.push(out);
    // A second rotation starts from the vaulted (random) one: the vault holds what the pump has.
    let out = as_admin(&["vault", "rotate", "pump-12", "service"], Input::Null);
    assert!(out.status.success(), "{out:?}");
    outputs.push(out);
    let newer = accounts.lock().unwrap().get("service").cloned().unwrap();
    assert_ne!(newer, new);

    let events = gw.audit_events();
    let rotations: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "vault_rotate")
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(rotations, ["success", "success"]);
    let audit = std::fs::read(gw.state_dir.join("audit.log")).unwrap();
    let log = gw.proc.stderr();
    for secret in [factory, new.as_str(), newer.as_str()] {
        let hit = |hay: &[u8]| hay.windows(secret.len()).any(|w| w == secret.as_bytes());
        for out in &outputs {
            assert!(!hit(out.stdout.as_bytes()) && !hit(out.stderr.as_bytes()));
        }
        assert!(!hit(&audit), "a password is in the audit log");
        assert!(!hit(log.as_bytes()), "a password is in the gateway's log");
        for f in ["ward.db", "ward.db-wal"] {
            if let Ok(bytes) = std::fs::read(gw.state_dir.join(f)) {
                assert!(!hit(&bytes), "a password is in {f}");
            }
        }
    }
}
