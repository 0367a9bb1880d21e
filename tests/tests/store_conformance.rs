//! The store's conformance suite (`ward_store::conformance`) against both backends, unchanged:
//! the embedded SQLite store and PostgreSQL (Debian's, started on loopback by
//! `ward_tests::pg`). Then what only the shared database has: migrations raced by gateways
//! starting together, a database newer than the binary, the change feed (within 1 s, and again
//! after the database restarts), the runtime bridge from every kind of caller, and the password
//! never showing in errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::type_complexity
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use ward_core::frame::LockTarget;
use ward_core::policy::Lock;
use ward_store::conformance::{self, Stores, TestBackend};
use ward_store::keywrap::{Kek, KeySource};
use ward_store::pg::{PgOptions, PgStore, PgTls};
use ward_store::store::{LockStore, SqliteStore};
use ward_store::users::UserStore;
use ward_tests::pg::Postgres;

/// A key file in `dir` (as a gateway's first start makes it) and its source.
fn key_source(dir: &std::path::Path) -> KeySource {
    let path = dir.join("vault.key");
    Kek::from_file(&path, true).unwrap();
    KeySource::File(path)
}

fn options(pg: &Postgres, url: String, keys: KeySource) -> PgOptions {
    let mut o = PgOptions::new(url, keys);
    o.password_file = Some(pg.password_file());
    o.pool_size = 4;
    o.connect_timeout = Duration::from_secs(5);
    o
}

fn connect(pg: &Postgres, url: &str, keys: &KeySource) -> Arc<PgStore> {
    PgStore::connect(&options(pg, url.to_owned(), keys.clone())).unwrap()
}

#[test]
fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_source(dir.path());
    let open = || {
        let s = Arc::new(SqliteStore::open(dir.path()).unwrap());
        ward_store::keywrap::open_store_keys(&*s, &keys).unwrap();
        s
    };
    conformance::run_all(&TestBackend {
        name: "sqlite",
        a: Stores::of(open()),
        b: Stores::of(open()),
    });
}

#[test]
fn postgres_conforms() {
    let Some(pg) = Postgres::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = key_source(dir.path());
    let url = pg.create_database("conformance");
    // Two gateways' stores on the one database.
    let a = connect(&pg, &url, &keys);
    let b = connect(&pg, &url, &keys);
    conformance::run_all(&TestBackend {
        name: "postgres",
        a: Stores::of(a.clone()),
        b: Stores::of(b),
    });
    // The TOTP seeds are sealed in the database, not in clear.
    let stored = pg.psql(
        "conformance",
        "SELECT coalesce(totp_secret, '-') || ' ' || totp_kek || ' ' || encode(totp_ct, 'hex') \
         FROM users WHERE name = 'conf-alice'",
    );
    assert!(!stored.contains("GEZDGNBVGY3TQOJQ"), "{stored}");
    assert!(
        stored.starts_with("- ") && stored.contains(&a.keys().fingerprint().unwrap()),
        "{stored}"
    );
}

#[test]
fn gateways_starting_together_migrate_once_and_a_newer_database_is_refused() {
    let Some(pg) = Postgres::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = key_source(dir.path());
    let url = pg.create_database("migrations");
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (barrier, opts) = (barrier.clone(), options(&pg, url.clone(), keys.clone()));
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&opts).map(|s| s.schema_version())
            })
        })
        .collect();
    let latest = ward_store::pg::schema::latest();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap().unwrap(), latest);
    }
    let rows = pg.psql(
        "migrations",
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM ward_schema",
    );
    let expected: Vec<String> = (1..=latest).map(|v| v.to_string()).collect();
    assert_eq!(rows.trim(), expected.join(","));
    // Connecting again changes nothing.
    let again = connect(&pg, &url, &keys);
    assert_eq!(again.schema_version().unwrap(), latest);
    drop(again);

    // A newer ward migrated this database: this one refuses it, naming both versions.
    pg.psql(
        "migrations",
        &format!("INSERT INTO ward_schema (version) VALUES ({})", latest + 1),
    );
    let err = PgStore::connect(&options(&pg, url.clone(), keys.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("version {}", latest + 1))
            && err.contains(&format!("up to version {latest}"))
            && err.contains("upgrade ward"),
        "{err}"
    );
}

/// Waits until the feed moves past `from`; how long it took.
fn moved(rx: &tokio::sync::watch::Receiver<u64>, from: u64, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if *rx.borrow() != from {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Waits until the listener has connected once (the feed's first bump).
fn listening(rx: &tokio::sync::watch::Receiver<u64>) {
    assert!(
        moved(rx, 0, Duration::from_secs(10)).is_some(),
        "the change feed never connected"
    );
}

#[test]
fn the_change_feed_moves_within_a_second_and_after_the_database_restarts() {
    let Some(mut pg) = Postgres::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = key_source(dir.path());
    let url = pg.create_database("feed");
    let gw1 = connect(&pg, &url, &keys);
    let gw3 = connect(&pg, &url, &keys);
    let feed = gw3.changes();
    listening(&feed);
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();

    // A lock, a user disabled, a request and its grant revoked: each through gateway 1, each
    // seen by gateway 3's feed within a second.
    let lock = Lock {
        target: LockTarget::Device("pump-12".into()),
        until: None,
        reason: "recall".into(),
        by: "security sam".into(),
    };
    let mut user = ward_store::users::User {
        name: "nurse".into(),
        kind: ward_ca::Kind::Clinician,
        org: None,
        roles: vec![],
        password_phc: "$argon2id$x".into(),
        totp_secret: None,
        totp_last_step: None,
        disabled: false,
        created_unix: 1,
        disabled_unix: None,
        must_change_password: false,
    };
    gw1.add_user(&user).unwrap();
    let steps: Vec<(&str, Box<dyn Fn()>)> = vec![
        ("lock set", Box::new(|| gw1.put_lock(&lock).unwrap())),
        (
            "lock removed",
            Box::new(|| assert!(gw1.remove_lock(&lock.target).unwrap())),
        ),
        (
            "user disabled",
            Box::new(|| assert!(gw1.disable_user("nurse", now).unwrap())),
        ),
    ];
    for (what, step) in steps {
        let from = *feed.borrow();
        step();
        let took = moved(&feed, from, Duration::from_secs(1));
        assert!(
            took.is_some(),
            "{what}: gateway 3 did not hear of it within 1 s"
        );
        eprintln!("{what}: seen by the other gateway after {took:?}");
    }
    // The store on gateway 3 reads the change (the feed only says "look again").
    assert_eq!(gw3.disabled_users().unwrap(), ["nurse"]);

    // The database restarts: the listener reconnects and the feed moves (notifications may
    // have been lost meanwhile); statements fail cleanly while it is down, and work after.
    let from = *feed.borrow();
    pg.stop();
    let down = gw1.user("nurse").unwrap_err().to_string();
    assert!(down.contains("database"), "{down}");
    pg.start_again();
    assert!(
        moved(&feed, from, Duration::from_secs(15)).is_some(),
        "the feed did not move after the database came back"
    );
    // A change after the restart is heard again.
    let from = *feed.borrow();
    user.name = "porter".into();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The pool's connections died with the server: the first use may fail once.
        match gw1.add_user(&user) {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "store did not recover: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        moved(&feed, from, Duration::from_secs(1)).is_some(),
        "the feed missed a change after the restart"
    );
    assert!(gw3.user("porter").unwrap().is_some());
}

#[test]
fn the_store_works_from_every_kind_of_caller_and_drops_anywhere() {
    let Some(pg) = Postgres::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = key_source(dir.path());
    let url = pg.create_database("bridge");
    let store = connect(&pg, &url, &keys);
    let lock = |name: &str| Lock {
        target: LockTarget::Principal(name.into()),
        until: None,
        reason: "r".into(),
        by: "b".into(),
    };
    // (c) a plain thread.
    store.put_lock(&lock("plain")).unwrap();
    // (a) an async worker of a multi-thread runtime, (b) spawn_blocking, and a current-thread
    // runtime's only thread; then the store dropped inside the async context.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = store.clone();
    let opts = options(&pg, url.clone(), keys.clone());
    rt.block_on(async move {
        let s2 = s.clone();
        tokio::spawn(async move { s2.put_lock(&lock("worker")).unwrap() })
            .await
            .unwrap();
        let s3 = s.clone();
        tokio::task::spawn_blocking(move || s3.put_lock(&lock("blocking")).unwrap())
            .await
            .unwrap();
        // A store connected on a worker, used there, and dropped there.
        tokio::spawn(async move {
            let own = PgStore::connect(&opts).unwrap();
            own.put_lock(&lock("own")).unwrap();
            drop(own);
        })
        .await
        .unwrap();
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            store.put_lock(&lock("current-thread")).unwrap();
            let dropped_here = store.clone();
            drop(dropped_here);
        });
    let mut names: Vec<String> = store
        .active_locks(OffsetDateTime::from_unix_timestamp(0).unwrap())
        .unwrap()
        .into_iter()
        .map(|l| match l.target {
            LockTarget::Principal(p) => p,
            other => panic!("{other:?}"),
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["blocking", "current-thread", "own", "plain", "worker"]
    );
    // The last handle dropped inside an async context does not panic.
    rt.block_on(async move {
        tokio::spawn(async move { drop(store) }).await.unwrap();
    });
}

#[test]
fn a_wrong_password_is_refused_and_never_shown() {
    let Some(pg) = Postgres::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = key_source(dir.path());
    let wrong = dir.path().join("wrong.pw");
    std::fs::write(&wrong, "not-the-password-1234\n").unwrap();
    let mut o = options(&pg, pg.url(), keys);
    o.password_file = Some(wrong);
    let err = PgStore::connect(&o).unwrap_err().to_string();
    assert!(
        err.contains("password authentication failed") && err.contains(&pg.url()),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
    // The right one (from the harness's file) works.
    let ok = PgStore::connect(&options(&pg, pg.url(), key_source(dir.path()))).unwrap();
    assert!(ok.schema_version().unwrap() >= 1);
}

#[test]
fn tls_to_the_database_is_verified_and_required() {
    let Some(pg) = Postgres::require_tls() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = key_source(dir.path());
    // With the CA that signed the server's certificate: connected, over TLS.
    let mut o = options(&pg, pg.url(), keys.clone());
    o.tls = PgTls::Require {
        ca_file: Some(pg.ca_file()),
    };
    let store = PgStore::connect(&o).unwrap();
    let db = store.db();
    let ssl: bool = store
        .block(async move {
            let c = db.get().await?;
            let row = c
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(ward_store::pg::pg_err)?;
            Ok::<_, ward_store::store::StoreError>(row.get(0))
        })
        .unwrap();
    assert!(ssl, "the pooled connection is not encrypted");
    // Another CA: the server's certificate is refused.
    let other = dir.path().join("other-ca.pem");
    {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(&other, ca.pem()).unwrap();
    }
    o.tls = PgTls::Require {
        ca_file: Some(other),
    };
    let err = PgStore::connect(&o).unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Without TLS: the server (hostssl only) refuses.
    o.tls = PgTls::Disable;
    let err = PgStore::connect(&o).unwrap_err().to_string();
    assert!(
        err.contains("no pg_hba.conf entry") && err.contains("no encryption"),
        "{err}"
    );
}

/// The session index, its search, the vault and the secrets (pgindex's part of the suite), on a
/// database of their own: rows written through one gateway's index are searched through the
/// other's store and name the gateway that wrote them; `ward keys rotate --kek` re-encrypts the
/// shared rows, after which a gateway started with the new key file opens them.
#[test]
fn postgres_index_vault_and_secrets_conform() {
    use ward_store::session_index::SessionIndex;
    use ward_store::vault::VaultStore;
    let Some(pg) = Postgres::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = key_source(dir.path());
    let url = pg.create_database("conformance_index_vault");
    let a = connect(&pg, &url, &keys);
    let b = connect(&pg, &url, &keys);
    let index = ward_store::pg::index::PgIndex::new(a.clone(), Some("gw-a".into()));
    conformance::index_vault::session_index(&index, &*b);
    let all = index.all().unwrap();
    let ids: Vec<String> = all.iter().map(|r| r.summary.id.clone()).collect();
    let by = index.gateways_of(&ids).unwrap();
    assert_eq!(by.len(), all.len());
    assert!(by.iter().all(|(_, g)| g == "gw-a"), "{by:?}");
    // A row another gateway (or recovery without an id) puts again keeps the gateway it had.
    let anonymous = ward_store::pg::index::PgIndex::new(b.clone(), None);
    anonymous.put(&all[0]).unwrap();
    assert_eq!(
        anonymous.gateways_of(&ids[..1]).unwrap(),
        [(ids[0].clone(), "gw-a".to_string())]
    );

    conformance::index_vault::vault(&*a, a.keys());
    conformance::index_vault::secrets(&*a, &*a, &*a);

    // Online rotation of the key file, on a shared database of its own (the checks above left
    // values under keys no file holds, which a start rightly refuses).
    let path = dir.path().join("vault.key");
    let url = pg.create_database("conformance_kek");
    let a = connect(&pg, &url, &keys);
    ward_store::keywrap::open_store_keys(&*a, &keys).unwrap();
    a.put_credential(
        "pump-9",
        "service",
        "admin",
        &ward_core::secret::Secret::new("rotate-me-1".to_owned()),
        1,
    )
    .unwrap();
    let old = a.keys().fingerprint().unwrap();
    let rotated = ward_store::keywrap::rotate_file_kek(&*a, &path).unwrap();
    assert_eq!(rotated.old, old);
    assert!(rotated.rewrapped.vault_values >= 1, "{rotated:?}");
    assert_eq!(
        a.credential("pump-9", "service", None)
            .unwrap()
            .secret
            .expose(),
        "rotate-me-1"
    );
    let c = connect(&pg, &url, &keys);
    assert_eq!(c.keys().fingerprint().unwrap(), rotated.new);
    assert_eq!(
        c.credential("pump-9", "service", None)
            .unwrap()
            .secret
            .expose(),
        "rotate-me-1",
        "a gateway started with the new key file opens the re-encrypted value"
    );
    let counts = ward_store::keywrap::SecretStore::key_counts(&*c).unwrap();
    assert!(
        counts
            .iter()
            .all(|k| k.fingerprint == rotated.new || k.vault_values + k.totp_seeds == 0),
        "{counts:?}"
    );
}
