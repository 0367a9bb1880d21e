//! Issue 19 item 1: `ward store migrate --from sqlite:PATH --to postgres://…` (the built binary)
//! moves a gateway's state into PostgreSQL (Debian's server on loopback, the test harness's):
//! every table in one transaction, the counts printed and checked; the copy reads back through
//! the PostgreSQL store's traits as it was on SQLite (sealed secrets opening with the source's
//! key, session rows naming the source gateway); a non-empty target is refused; a copy that fails
//! half-way commits nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;
use ward_core::access::{
    approve, grant_for, AccessRequest, ApprovalPolicy, PrincipalRef, RequestState,
};
use ward_core::frame::LockTarget;
use ward_core::policy::{DeviceSelector, Lock, Who};
use ward_core::secret::Secret;
use ward_core::{Principal, PrincipalKind};
use ward_store::access_store::AccessStore;
use ward_store::keywrap::{Kek, KeySource, DEFAULT_KEY_FILE};
use ward_store::pg::{PgOptions, PgStore};
use ward_store::pins::{PinStore, StoredPin};
use ward_store::session_index::{opened, FileStamp, SessionIndex, SessionOps};
use ward_store::session_query::SessionSearch;
use ward_store::store::{LockStore, SqliteStore};
use ward_store::users::{User, UserStore};
use ward_store::vault::VaultStore;
use ward_tests::pg::Postgres;
use ward_tests::process::{run_with, ward, Finished, Input, COMMAND_TIMEOUT};

const GATEWAY_ID: &str = "gw-source-5e1f";
const SEED: &str = "JBSWY3DPEHPK3PXP";
const PIN: &str = "sha256:00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff";

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn person(kind: PrincipalKind, name: &str) -> Principal {
    Principal {
        kind,
        name: name.into(),
        org: None,
        roles: vec![],
        serial: "01".into(),
        not_after: now() + time::Duration::hours(1),
    }
}

fn policy() -> ApprovalPolicy {
    ApprovalPolicy {
        name: "p".into(),
        devices: DeviceSelector::All,
        who: Who {
            kind: Some(PrincipalKind::Vendor),
            ..Who::default()
        },
        approvers: vec![Who {
            kind: Some(PrincipalKind::Clinician),
            ..Who::default()
        }],
        required: 1,
        max_duration: Duration::from_secs(3600),
        pending_expiry: Duration::from_secs(3600),
    }
}

fn request(id: &str) -> AccessRequest {
    AccessRequest {
        id: id.into(),
        requester: PrincipalRef::of(&person(PrincipalKind::Vendor, "tech")),
        device: "pump-12".into(),
        reason: "fix".into(),
        start: now(),
        end: now() + time::Duration::hours(1),
        created: now(),
        expires: now() + time::Duration::hours(1),
        policy: "p".into(),
        state: RequestState::Pending,
    }
}

fn user(name: &str, totp: Option<&str>) -> User {
    User {
        name: name.into(),
        kind: ward_ca::Kind::Vendor,
        org: Some("acme".into()),
        roles: vec![],
        password_phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        totp_secret: totp.map(str::to_owned),
        totp_last_step: None,
        disabled: false,
        created_unix: 1_700_000_000,
        disabled_unix: None,
        must_change_password: false,
    }
}

/// A gateway's state dir with something in every table; returns its key.
fn populate(state: &Path) -> Kek {
    let kek = Kek::generate().unwrap();
    kek.write_new(&state.join(DEFAULT_KEY_FILE)).unwrap();
    std::fs::write(state.join("gateway.id"), format!("{GATEWAY_ID}\n")).unwrap();
    let db = SqliteStore::open(state).unwrap();
    db.put_lock(&Lock {
        target: LockTarget::Org("acme".into()),
        until: None,
        reason: "incident 42".into(),
        by: "security sam".into(),
    })
    .unwrap();
    db.put_lock(&Lock {
        target: LockTarget::Device("pump-12".into()),
        until: Some(now() + time::Duration::days(3650)),
        reason: "recall".into(),
        by: "security sam".into(),
    })
    .unwrap();
    db.add_user(&user("alice", Some(SEED))).unwrap();
    db.add_user(&user("bob", None)).unwrap();
    db.disable_user("bob", now()).unwrap();
    db.note_login_failure("mallory-guess", now()).unwrap();
    db.note_login_failure("mallory-guess", now()).unwrap();
    db.put_request(&request("req-1")).unwrap();
    db.put_request(&request("req-2")).unwrap();
    let policies = [policy()];
    let approver = person(PrincipalKind::Clinician, "carol");
    db.approve(
        "req-1",
        &|r, a| approve(r, a, &policies, &approver, None, now()),
        &|r, a| grant_for(r, a, "grant-1".into()),
    )
    .unwrap();
    let mut rows = Vec::new();
    for n in 0..40u32 {
        let meta = ward_recording::SessionMeta {
            session_id: format!("{n:016x}"),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: Some("acme".into()),
            cert_serial: "02".into(),
            source: "127.0.0.1:5000".into(),
            device: if n % 2 == 0 { "pump-12" } else { "pacs" }.into(),
            device_addr: "127.0.0.1:104".into(),
            protocol: "telnet".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: n == 7,
            started_unix_ms: 1_700_000_000_000 + i64::from(n) * 60_000,
            recipients: Vec::new(),
            age_header: None,
        };
        let mut row = opened(&meta);
        row.summary.verification = "ok".into();
        row.summary.end_reason = "client closed".into();
        row.summary.ops = vec!["telnet:login".into(), format!("telnet:cmd-{n}")];
        row.summary.bytes_up = u64::from(n) * 1000;
        row.stamp = Some(FileStamp {
            len: u64::from(n) + 10,
            mtime_ns: 1_700_000_000_000_000_000 + i64::from(n),
        });
        rows.push(row);
    }
    db.put_all(&rows).unwrap();
    db.close(
        &format!("{:016x}", 3),
        &ward_recording::EndInfo {
            ended_unix_ms: 1_700_000_500_000,
            reason: "terminated by sam: x".into(),
            bytes_up: 5,
            bytes_down: 6,
        },
        "ok",
        None,
        &SessionOps {
            ops: vec!["telnet:reboot".into()],
            undecodable: Some("telnet up at byte 3: x".into()),
            denied_ops: 2,
            truncated: true,
        },
    )
    .unwrap();
    db.keys().set(ward_store::keywrap::KeyRing::of(kek.clone()));
    db.put_credential(
        "pump-12",
        "service",
        "admin",
        &Secret::new("Vault-pw-1".to_owned()),
        1_700_000_000,
    )
    .unwrap();
    db.put_credential(
        "pacs",
        "service",
        "svc",
        &Secret::new("Vault-pw-2".to_owned()),
        1_700_000_000,
    )
    .unwrap();
    db.begin_rotation(
        "pacs",
        "service",
        &Secret::new("Vault-pw-2-new".to_owned()),
        1_700_000_100,
    )
    .unwrap();
    db.set_device_pin(&StoredPin {
        device: "pacs".into(),
        pin: PIN.into(),
        set_by: "admin alice".into(),
        set_unix: 1_700_000_000,
    })
    .unwrap();
    kek
}

fn migrate(state: &Path, url: &str, password_file: &Path, extra: &[&str]) -> Finished {
    let from = format!("sqlite:{}", state.display());
    let pw = password_file.display().to_string();
    let mut args = vec![
        "store",
        "migrate",
        "--from",
        &from,
        "--to",
        url,
        "--password-file",
        &pw,
    ];
    args.extend(extra);
    run_with(&mut ward(&args), Input::Null, COMMAND_TIMEOUT)
}

fn connect(url: &str, pg: &Postgres, state: &Path) -> std::sync::Arc<PgStore> {
    let mut opts = PgOptions::new(url, KeySource::File(state.join(DEFAULT_KEY_FILE)));
    opts.password_file = Some(pg.password_file());
    PgStore::connect(&opts).unwrap()
}

#[test]
fn a_gateways_state_moves_to_postgres_whole_and_verified() {
    let Some(pg) = Postgres::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let kek = populate(&state);
    let url = pg.create_database("migrated");

    let out = migrate(&state, &url, &pg.password_file(), &["--json"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let count = |table: &str| -> (u64, u64) {
        let t = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap_or_else(|| panic!("no table {table} in {report}"));
        (t["source"].as_u64().unwrap(), t["target"].as_u64().unwrap())
    };
    for (table, n) in [
        ("locks", 2),
        ("users", 2),
        ("login_failures", 1),
        ("access_requests", 2),
        ("approvals", 1),
        ("grants", 1),
        ("sessions", 40),
        ("vault", 2),
        ("device_pins", 1),
    ] {
        assert_eq!(count(table), (n, n), "{table}");
    }
    assert_eq!(report["gateway"], GATEWAY_ID);
    assert_eq!(report["key_fingerprints"][0], kek.fingerprint());
    assert!(!out.stdout.contains("Vault-pw"), "{}", out.stdout);

    // What the gateways on the database read, through the same traits.
    let src = SqliteStore::open(&state).unwrap();
    src.keys()
        .set(ward_store::keywrap::KeyRing::of(kek.clone()));
    let dst = connect(&url, &pg, &state);
    let mut a = src.active_locks(now()).unwrap();
    let mut b = dst.active_locks(now()).unwrap();
    a.sort_by_key(|l| format!("{:?}", l.target));
    b.sort_by_key(|l| format!("{:?}", l.target));
    assert_eq!(a, b);
    let alice = dst.user("alice").unwrap().unwrap();
    assert_eq!(
        alice.totp_secret.as_deref(),
        Some(SEED),
        "the sealed seed opens with the key"
    );
    assert!(dst.user("bob").unwrap().unwrap().disabled);
    assert_eq!(dst.disabled_users().unwrap(), ["bob"]);
    assert_eq!(dst.login_failures("mallory-guess").unwrap().0, 2);
    assert_eq!(
        format!("{:?}", src.requests().unwrap()),
        format!("{:?}", dst.requests().unwrap())
    );
    assert_eq!(
        format!("{:?}", src.grants(now(), true).unwrap()),
        format!("{:?}", dst.grants(now(), true).unwrap())
    );
    let mut a = src.all().unwrap();
    let mut b = SessionSearch::all(&*dst).unwrap();
    a.sort_by(|x, y| x.summary.id.cmp(&y.summary.id));
    b.sort_by(|x, y| x.summary.id.cmp(&y.summary.id));
    assert_eq!(a, b, "the session index reads back row for row");
    let index = ward_store::pg::index::PgIndex::new(dst.clone(), None);
    let ids: Vec<String> = a.iter().map(|r| r.summary.id.clone()).collect();
    let by = index.gateways_of(&ids).unwrap();
    assert_eq!(by.len(), 40);
    assert!(by.iter().all(|(_, g)| g == GATEWAY_ID));
    let cred = dst.credential("pump-12", "service", None).unwrap();
    assert_eq!(cred.secret.expose(), "Vault-pw-1");
    let prev = dst.previous_credential("pacs", "service").unwrap().unwrap();
    assert_eq!(prev.secret.expose(), "Vault-pw-2");
    assert!(
        dst.credential_entry("pacs", "service")
            .unwrap()
            .unwrap()
            .pending
    );
    assert_eq!(
        dst.device_pin("pacs").unwrap(),
        src.device_pin("pacs").unwrap()
    );
    assert_eq!(dst.device_pin("pacs").unwrap().unwrap().pin, PIN);
    // The values are in the database sealed, never in clear.
    let dump = pg.psql(
        "migrated",
        "SELECT encode(ciphertext, 'escape') || coalesce(encode(prev_ciphertext, 'escape'), '') FROM vault",
    );
    assert!(!dump.contains("Vault-pw"), "{dump}");

    // Again: the target holds rows now, and the copy is refused, changing nothing.
    let again = migrate(&state, &url, &pg.password_file(), &[]);
    assert!(!again.status.success(), "{again:?}");
    assert!(
        again.stderr.contains("already holds rows"),
        "{}",
        again.stderr
    );
    assert_eq!(SessionSearch::all(&*dst).unwrap().len(), 40);
    assert_eq!(dst.active_locks(now()).unwrap().len(), 2);
}

#[test]
fn a_copy_that_fails_half_way_commits_nothing() {
    let Some(pg) = Postgres::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    populate(&state);
    // A value the target's column cannot hold, in a table copied after others (by name:
    // access_requests … locks, login_failures come before sessions).
    {
        let conn = rusqlite::Connection::open(state.join("ward.db")).unwrap();
        conn.execute(
            "UPDATE sessions SET bytes_up = 'lots' WHERE id = ?1",
            [format!("{:016x}", 9)],
        )
        .unwrap();
    }
    let url = pg.create_database("halfway");
    let out = migrate(&state, &url, &pg.password_file(), &[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("bytes_up"), "{}", out.stderr);
    for table in ["locks", "users", "access_requests", "sessions", "vault"] {
        let n = pg.psql("halfway", &format!("SELECT count(*) FROM {table}"));
        assert_eq!(n.trim(), "0", "{table}: nothing committed");
    }
    // A source that is not a store.
    let out = migrate(
        &dir.path().join("nothing-here"),
        &url,
        &pg.password_file(),
        &[],
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("no such SQLite store"),
        "{}",
        out.stderr
    );
    // A wrong password: refused, and the password file's text never printed.
    let wrong = dir.path().join("wrong.pw");
    std::fs::write(&wrong, "not-the-password-77\n").unwrap();
    let out = migrate(&state, &url, &wrong, &[]);
    assert!(!out.status.success());
    assert!(
        !out.stderr.contains("not-the-password-77"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("not-the-password-77"));
}
