//! Issue 18 item 2: the store's secrets under a key-encryption key (KEK), against the real `ward`
//! binary. TOTP seeds (base32 and raw) are in no byte of the state dir; `ward keys rotate --kek`
//! runs while logins and credential injections go on, and both keep working after it; a value
//! whose KEK is gone names the fingerprint it needs; a crash mid-rotation (both key files on
//! disk) is finished by the next start; an older store's plaintext seeds are sealed at its first
//! start, audited.
//!
//! Everything talks to 127.0.0.1 only; every wait is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{Client, Transport};
use ward_core::totp::{self, TotpSecret};
use ward_store::keywrap::{Kek, KeyCount};
use ward_store::users::UserStore;
use ward_tests::process::{run_with, ward, Finished, Input, COMMAND_TIMEOUT};
use ward_tests::{ChildGateway, DeviceSpec, Pki};

const RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
inject = "service"

[[rule]]
name = "admins"
who = { kind = "admin" }
devices = { all = true }
"#;

const PUMP_PW: &str = "Pump4Kek7Rotation9";

/// The simulated pump, its `service` password `PUMP_PW`, on a runtime of its own.
fn pump() -> (std::net::SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let accounts = ward::sim::factory_accounts();
    accounts
        .lock()
        .unwrap()
        .insert("service".into(), PUMP_PW.to_string());
    let dev = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ward::sim::telnet_console_with(l, accounts).unwrap()
    });
    (dev.addr, rt)
}

/// `ward ARGS --gateway … --identity WHO --ca …`.
fn as_(gw: &ChildGateway, who: &Path, args: &[&str], input: Input) -> Finished {
    let mut cmd = ward(args);
    cmd.args(["--gateway", &gw.addr, "--identity"])
        .arg(who)
        .arg("--ca")
        .arg(gw.pki.root());
    run_with(&mut cmd, input, COMMAND_TIMEOUT)
}

/// A vendor `name` of acme with a password and TOTP, written to the gateway's store as `ward
/// user add` does (the store finds the gateway's key file).
fn add_vendor(state: &Path, name: &str) -> (String, TotpSecret) {
    let db = ward_store::store::SqliteStore::open(state).unwrap();
    let new = ward_server::jit::NewUser {
        org: Some("acme".into()),
        must_change: false,
        ..ward_server::jit::NewUser::new(name, "vendor")
    };
    let created = ward_server::jit::create_user(
        &db,
        &ward_core::config::LoginConfig::default(),
        new,
        SystemClock.now(),
    )
    .unwrap();
    let seed = db.user(name).unwrap().unwrap().totp_secret.unwrap();
    (created.password, TotpSecret::from_base32(&seed).unwrap())
}

/// A password + TOTP login as `name`: Ok, or the refusal's text.
async fn login(
    gw_addr: &str,
    root: &Path,
    name: &str,
    pw: &str,
    seed: &TotpSecret,
) -> Result<(), String> {
    let client = Client::anonymous(gw_addr, root, Transport::Auto).map_err(|e| e.to_string())?;
    let code = totp::code_at(seed, SystemClock.now().unix_timestamp());
    client
        .login(name, pw.to_owned(), Some(code), None, None)
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

/// `ward connect pump-12` as the vendor: reaches the pump's prompt without a password (the
/// gateway injects the vaulted one).
fn injected_session(gw: &ChildGateway, vendor: &Path) -> Finished {
    let mut cmd = ward(&["connect", "pump-12", "--gateway", &gw.addr, "--identity"]);
    cmd.arg(vendor).arg("--ca").arg(gw.pki.root());
    run_with(
        &mut cmd,
        Input::Bytes(b"status\r\nexit\r\n".to_vec()),
        COMMAND_TIMEOUT,
    )
}

fn assert_injected(out: &Finished) {
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("pump>"), "no pump prompt: {out:?}");
}

/// Every file under `dir`, recursively, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

/// Fails if any form of any seed is in any file under `state`.
fn assert_no_seed(state: &Path, seeds: &[&TotpSecret]) {
    for (path, bytes) in files_under(state) {
        for seed in seeds {
            let b32 = seed.to_base32();
            for needle in [b32.as_bytes(), seed.as_bytes()] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds a TOTP seed",
                    path.display()
                );
            }
        }
    }
}

fn key_status(gw: &ChildGateway, admin: &Path) -> Vec<KeyCount> {
    let out = as_(gw, admin, &["keys", "status", "--json"], Input::Null);
    assert!(out.status.success(), "{out:?}");
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn key_fp(state: &Path) -> String {
    Kek::from_file(&state.join("vault.key"), false)
        .unwrap()
        .unwrap()
        .fingerprint()
        .to_owned()
}

fn side_files(state: &Path) -> Vec<String> {
    std::fs::read_dir(state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vault.key."))
        .collect()
}

fn stop(gw: &mut ChildGateway) {
    gw.sigterm();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gw.proc.child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "gateway did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rotation_is_online_and_logins_and_injection_work_across_it() {
    let (pump_addr, _pump_rt) = pump();
    let pki = Arc::new(Pki::new());
    let admin = pki.person(Kind::Admin, "root", None, &[]);
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let devices = [DeviceSpec::new(
        "pump-12",
        pump_addr,
        "telnet",
        &[("vendor", "acme")],
    )];
    let gw = ChildGateway::start(pki.clone(), &devices, RULES, "", None);
    let state = gw.state_dir.clone();
    // Zero set-up: the gateway made its key file at its first start, owner-only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("vault.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let old_fp = key_fp(&state);

    let out = as_(
        &gw,
        &admin,
        &[
            "vault", "set", "pump-12", "service", "--user", "service", "--stdin",
        ],
        Input::Bytes(format!("{PUMP_PW}\n").into_bytes()),
    );
    assert!(out.status.success(), "{out:?}");
    // Eight vendors with TOTP: one login each (a TOTP step is consumed once).
    let users: Vec<(String, String, TotpSecret)> = (0..8)
        .map(|i| {
            let name = format!("tech{i}");
            let (pw, seed) = add_vendor(&state, &name);
            (name, pw, seed)
        })
        .collect();
    let seeds: Vec<&TotpSecret> = users.iter().map(|u| &u.2).collect();
    assert_no_seed(&state, &seeds);

    let status = key_status(&gw, &admin);
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0].fingerprint, old_fp);
    assert!(status[0].current && status[0].held);
    assert_eq!((status[0].vault_values, status[0].totp_seeds), (1, 8));

    // The rotation, with logins (tech0..tech3) and injected sessions running at the same time.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = pki.root();
    let logins: Vec<_> = users[..4]
        .iter()
        .map(|(name, pw, seed)| {
            let (addr, root, name, pw, seed) = (
                gw.addr.clone(),
                root.clone(),
                name.clone(),
                pw.clone(),
                TotpSecret::from_base32(&seed.to_base32()).unwrap(),
            );
            rt.spawn(async move { login(&addr, &root, &name, &pw, &seed).await })
        })
        .collect();
    let sessions: Vec<_> = (0..2)
        .map(|_| {
            let (addr, root, vendor) = (gw.addr.clone(), root.clone(), vendor.clone());
            std::thread::spawn(move || {
                let mut cmd = ward(&["connect", "pump-12", "--gateway", &addr, "--identity"]);
                cmd.arg(&vendor).arg("--ca").arg(&root);
                run_with(
                    &mut cmd,
                    Input::Bytes(b"status\r\nexit\r\n".to_vec()),
                    COMMAND_TIMEOUT,
                )
            })
        })
        .collect();
    let rotated = as_(
        &gw,
        &admin,
        &["keys", "rotate", "--kek", "--json"],
        Input::Null,
    );
    assert!(rotated.status.success(), "{rotated:?}");
    for l in logins {
        rt.block_on(l).unwrap().unwrap();
    }
    for s in sessions {
        assert_injected(&s.join().unwrap());
    }
    let r: serde_json::Value = serde_json::from_str(rotated.stdout.trim()).unwrap();
    let new_fp = key_fp(&state);
    assert_eq!(r["old"], old_fp.as_str());
    assert_eq!(r["new"], new_fp.as_str());
    assert_ne!(old_fp, new_fp);
    assert_eq!(r["rewrapped"]["vault_values"], 1);
    assert_eq!(r["rewrapped"]["totp_seeds"], 8);
    // The old key file is gone; only the new key is held, and it seals everything.
    assert_eq!(side_files(&state), Vec::<String>::new());
    let status = key_status(&gw, &admin);
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0].fingerprint, new_fp);
    assert_eq!((status[0].vault_values, status[0].totp_seeds), (1, 8));

    // After it: a TOTP login of a user who has not logged in yet, and an injected session.
    let (name, pw, seed) = &users[4];
    rt.block_on(login(&gw.addr, &root, name, pw, seed)).unwrap();
    assert_injected(&injected_session(&gw, &vendor));
    assert_no_seed(&state, &seeds);

    // Audited, with both fingerprints and the counts (never a key).
    let ev = gw
        .audit_events()
        .into_iter()
        .find(|e| e["event"] == "kek_rotated")
        .expect("no kek_rotated event");
    assert_eq!(ev["outcome"], "success");
    assert_eq!(ev["detail"]["old_kek"], old_fp.as_str());
    assert_eq!(ev["detail"]["new_kek"], new_fp.as_str());
    assert_eq!(ev["detail"]["totp_seeds"], 8);
    assert_eq!(ev["detail"]["vault_values"], 1);
    assert_eq!(ev["principal"]["name"], "root");

    // A vendor may not rotate or look.
    let out = as_(&gw, &vendor, &["keys", "rotate", "--kek"], Input::Null);
    assert!(!out.status.success());
    assert!(out.stderr.contains("admin identities"), "{out:?}");
    let out = as_(&gw, &vendor, &["keys", "status"], Input::Null);
    assert!(!out.status.success());

    // And it survives a restart: the next start holds only the new key and opens everything.
    let mut gw = gw;
    stop(&mut gw);
    let gw = ChildGateway::start(pki.clone(), &devices, RULES, "", Some(&state));
    let (name, pw, seed) = &users[5];
    rt.block_on(login(&gw.addr, &root, name, pw, seed)).unwrap();
    assert_injected(&injected_session(&gw, &vendor));
}

#[test]
fn a_crash_mid_rotation_is_finished_at_start_and_a_missing_key_is_named() {
    let (pump_addr, _pump_rt) = pump();
    let pki = Arc::new(Pki::new());
    let admin = pki.person(Kind::Admin, "root", None, &[]);
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let devices = [DeviceSpec::new(
        "pump-12",
        pump_addr,
        "telnet",
        &[("vendor", "acme")],
    )];
    let mut gw = ChildGateway::start(pki.clone(), &devices, RULES, "", None);
    let state = gw.state_dir.clone();
    let out = as_(
        &gw,
        &admin,
        &[
            "vault", "set", "pump-12", "service", "--user", "service", "--stdin",
        ],
        Input::Bytes(format!("{PUMP_PW}\n").into_bytes()),
    );
    assert!(out.status.success(), "{out:?}");
    let users: Vec<(String, String, TotpSecret)> = (0..3)
        .map(|i| {
            let name = format!("tech{i}");
            let (pw, seed) = add_vendor(&state, &name);
            (name, pw, seed)
        })
        .collect();
    stop(&mut gw);
    let old_fp = key_fp(&state);

    // A crash after step 3 of a rotation: the old key kept as vault.key.retired-<fp>, a new key
    // in vault.key, nothing re-encrypted yet.
    std::fs::hard_link(
        state.join("vault.key"),
        state.join(format!("vault.key.retired-{old_fp}")),
    )
    .unwrap();
    std::fs::remove_file(state.join("vault.key")).unwrap();
    let new = Kek::generate().unwrap();
    new.write_new(&state.join("vault.key")).unwrap();
    let gw = ChildGateway::start(pki.clone(), &devices, RULES, "", Some(&state));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = pki.root();
    let (name, pw, seed) = &users[0];
    rt.block_on(login(&gw.addr, &root, name, pw, seed)).unwrap();
    assert_injected(&injected_session(&gw, &vendor));
    assert_eq!(side_files(&state), Vec::<String>::new());
    let status = key_status(&gw, &admin);
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0].fingerprint, new.fingerprint());
    assert_eq!((status[0].vault_values, status[0].totp_seeds), (1, 3));
    let ev = gw
        .audit_events()
        .into_iter()
        .find(|e| e["event"] == "kek_rotation_finished")
        .expect("no kek_rotation_finished event");
    assert_eq!(ev["outcome"], "success");
    assert_eq!(ev["detail"]["totp_seeds"], 3);

    // Now the key is lost. A start without it refuses to make a new key over the sealed values,
    // naming the key they need.
    let mut gw = gw;
    stop(&mut gw);
    let lost_fp = new.fingerprint().to_owned();
    std::fs::remove_file(state.join("vault.key")).unwrap();
    let mut cmd = ward(&["gateway", "--config"]);
    cmd.arg(&gw.config);
    let out = run_with(&mut cmd, Input::Null, COMMAND_TIMEOUT);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains(&lost_fp) && out.stderr.contains("restore that key file"),
        "{out:?}"
    );
    assert!(!state.join("vault.key").exists());
    // Another key put in its place (the operator gives the values up): the gateway starts, and
    // everything under the lost key is refused by name.
    Kek::generate()
        .unwrap()
        .write_new(&state.join("vault.key"))
        .unwrap();
    let gw = ChildGateway::start(pki.clone(), &devices, RULES, "", Some(&state));
    let other_fp = key_fp(&state);
    // The status names the missing key and what it seals.
    let status = key_status(&gw, &admin);
    let missing = status
        .iter()
        .find(|c| c.fingerprint == lost_fp)
        .expect("the lost key is not listed");
    assert!(!missing.held && !missing.current);
    assert_eq!((missing.vault_values, missing.totp_seeds), (1, 3));
    let table = as_(&gw, &admin, &["keys", "status"], Input::Null);
    assert!(table.stdout.contains("MISSING"), "{table:?}");
    // A session that needs the vaulted password is refused, naming the key it needs.
    let out = injected_session(&gw, &vendor);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains(&lost_fp), "{out:?}");
    // A login that needs a seed under it fails; the audit names the key.
    let (name, pw, seed) = &users[1];
    let err = rt
        .block_on(login(&gw.addr, &root, name, pw, seed))
        .unwrap_err();
    assert!(err.contains("unavailable"), "{err}");
    let events = gw.audit_events();
    assert!(
        events.iter().any(|e| e["event"] == "login"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&lost_fp) && r.contains(&other_fp))),
        "no login event naming the missing key"
    );
    // A rotation refuses to leave those values behind: nothing changes, the key file stays.
    let out = as_(&gw, &admin, &["keys", "rotate", "--kek"], Input::Null);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains(&lost_fp), "{out:?}");
    assert_eq!(key_fp(&state), other_fp);
    assert_eq!(side_files(&state), Vec::<String>::new());
}

#[test]
fn plaintext_seeds_of_an_older_store_are_sealed_at_first_start() {
    let pki = Arc::new(Pki::new());
    let state = pki.dir.path().join("state-old");
    std::fs::create_dir_all(&state).unwrap();
    let seed = TotpSecret::generate(rand::random());
    let password = "Older-Store-Password-42";
    {
        // ward.db as issue 17 left it: the users table with the seed in base32, in clear.
        let conn = rusqlite::Connection::open(state.join("ward.db")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE users (
                 name TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL, org TEXT,
                 roles TEXT NOT NULL, password_phc TEXT NOT NULL, totp_secret TEXT,
                 totp_last_step INTEGER, disabled INTEGER NOT NULL DEFAULT 0,
                 created_unix INTEGER NOT NULL, disabled_unix INTEGER,
                 must_change_password INTEGER NOT NULL DEFAULT 0);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO users (name, kind, org, roles, password_phc, totp_secret, created_unix)
             VALUES ('old', 'vendor', 'acme', '[]', ?1, ?2, 5)",
            [
                ward_core::password::hash_password(password, rand::random()).unwrap(),
                seed.to_base32(),
            ],
        )
        .unwrap();
    }
    let b32 = seed.to_base32();
    let in_db = || {
        ["ward.db", "ward.db-wal"].iter().any(|f| {
            std::fs::read(state.join(f))
                .is_ok_and(|b| b.windows(b32.len()).any(|w| w == b32.as_bytes()))
        })
    };
    assert!(in_db(), "the fixture should hold the seed in clear");
    let gw = ChildGateway::start(pki.clone(), &[], "", "", Some(&state));
    let ev = gw
        .audit_events()
        .into_iter()
        .find(|e| e["event"] == "totp_seeds_sealed")
        .expect("no totp_seeds_sealed event");
    assert_eq!(ev["detail"]["seeds"], 1);
    assert_eq!(ev["detail"]["kek"], key_fp(&state).as_str());
    assert!(
        !in_db(),
        "the plaintext seed is still in ward.db or its WAL"
    );
    assert_no_seed(&state, &[&seed]);
    // The user still logs in with the same authenticator.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(login(&gw.addr, &pki.root(), "old", password, &seed))
        .unwrap();
}
