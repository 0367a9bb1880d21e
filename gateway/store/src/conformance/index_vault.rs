//! Conformance checks for the session index and its search, the vault and the store's secrets:
//! the same functions run against SQLite (this crate's tests) and PostgreSQL
//! (tests/tests/store_conformance.rs). Each takes the backend's trait objects over an empty store
//! and panics, naming what differs, when the backend does not behave as the traits say.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use ward_core::secret::Secret;
use ward_recording::{EndInfo, SessionMeta};

use crate::keywrap::{Kek, KeyHandle, KeyRing, SecretStore};
use crate::session_index::{opened, FileStamp, IndexedSession, SessionIndex, SessionOps};
use crate::session_query::{self, SessionQuery, SessionSearch, Verification};
use crate::users::{User, UserStore};
use crate::vault::{PutOutcome, VaultError, VaultStore};

const DAY_MS: i64 = 86_400_000;
const T0_MS: i64 = 1_700_000_000_000;

fn meta(n: u32, who: (&str, &str, Option<&str>), device: &str, start_ms: i64) -> SessionMeta {
    SessionMeta {
        session_id: format!("{n:016x}"),
        principal_kind: who.0.into(),
        principal_name: who.1.into(),
        principal_org: who.2.map(str::to_owned),
        cert_serial: "02".into(),
        source: "127.0.0.1:5000".into(),
        device: device.into(),
        device_addr: "127.0.0.1:104".into(),
        protocol: "telnet".into(),
        rule: "r".into(),
        transport: "quic".into(),
        break_glass: n % 7 == 0,
        started_unix_ms: start_ms,
        recipients: Vec::new(),
        age_header: None,
    }
}

/// 100 sessions over 4 days: even ones by vendor acme/jdoe on pump-1, odd by security sam on
/// pacs; every tenth ended `terminated by sam: x`, every 25th failed verification.
fn fixture() -> Vec<IndexedSession> {
    let mut rows = Vec::new();
    for n in 0..100u32 {
        let (who, dev) = if n % 2 == 0 {
            (("vendor", "jdoe", Some("acme")), "pump-1")
        } else {
            (("security", "sam", None), "pacs")
        };
        let mut row = opened(&meta(n, who, dev, T0_MS + i64::from(n) * DAY_MS / 25));
        row.summary.end_reason = if n % 10 == 0 {
            "terminated by sam: x".into()
        } else {
            "client closed".into()
        };
        row.summary.verification = if n % 25 == 0 {
            "FAILED: record 3: bad".into()
        } else {
            "ok".into()
        };
        row.stamp = Some(FileStamp {
            len: 1,
            mtime_ns: 1,
        });
        rows.push(row);
    }
    rows
}

fn id(n: u32) -> String {
    format!("{n:016x}")
}

/// The session index and its search: rows round-trip whole, close records the end and the
/// operations, filters match as `ward sessions` does (hostile text is a parameter), pages are
/// newest first with the id breaking ties, the operation filter pages and counts, the
/// aggregates group by UTC day, org and device.
pub fn session_index(index: &dyn SessionIndex, search: &dyn SessionSearch) {
    assert!(index.all().unwrap().is_empty(), "start from an empty index");
    assert_eq!(search.count(&SessionQuery::default()).unwrap(), 0);
    assert!(search.one(&id(1)).unwrap().is_none());

    // One row, open then closed, round-trips whole.
    let mut m = meta(1000, ("vendor", "jdoe", Some("acme")), "pacs", 5_000_123);
    m.session_id = "00000000000000dd".into();
    let row = opened(&m);
    index.put(&row).unwrap();
    assert_eq!(search.one(&m.session_id).unwrap().as_ref(), Some(&row));
    let end = EndInfo {
        ended_unix_ms: 7_500_123,
        reason: "client closed".into(),
        bytes_up: 1,
        bytes_down: u64::MAX,
    };
    let ops = SessionOps {
        ops: vec!["dicom:C-ECHO".into(), "dicom:C-STORE".into()],
        undecodable: Some("dicom up at byte 7: bad PDU".into()),
        denied_ops: 3,
        truncated: true,
    };
    let stamp = FileStamp {
        len: 10,
        mtime_ns: -5,
    };
    index
        .close(&m.session_id, &end, "ok", Some(stamp), &ops)
        .unwrap();
    let closed = search.one(&m.session_id).unwrap().unwrap();
    let s = &closed.summary;
    assert_eq!(s.end_reason, "client closed");
    assert_eq!(s.verification, "ok");
    assert!((s.duration_s - 2500.0).abs() < 1e-9, "{}", s.duration_s);
    assert_eq!((s.bytes_up, s.bytes_down), (1, i64::MAX as u64));
    assert_eq!(s.ops, ops.ops);
    assert_eq!(s.undecodable, ops.undecodable);
    assert_eq!(s.denied_ops, 3);
    assert!(s.ops_truncated && !s.ops_unknown);
    assert_eq!(closed.stamp, Some(stamp));
    assert_eq!(closed.start_ms, 5_000_123);
    assert_eq!(s.start_unix, 5_000);
    // A row put without its operations read (recovery's) says so.
    let mut again = closed.clone();
    again.summary.ops_unknown = true;
    again.summary.ops.clear();
    index.put(&again).unwrap();
    assert!(
        search
            .one(&m.session_id)
            .unwrap()
            .unwrap()
            .summary
            .ops_unknown
    );
    assert_eq!(index.all().unwrap().len(), 1);
    assert_eq!(search.all().unwrap().len(), 1);

    // The search's fixture, put in one go (the backfill's path).
    let rows = fixture();
    index.put_all(&rows).unwrap();
    // The extra row starts in 1970: outside every window below but in the counts.
    let q = SessionQuery::default();
    assert_eq!(search.count(&q).unwrap(), 101);
    let one = search.rows(&q, 0, 30).unwrap();
    let two = search.rows(&q, 30, 30).unwrap();
    assert_eq!(one.len(), 30);
    assert_eq!(one[0].summary.id, id(99));
    assert_eq!(one[0], rows[99], "a row reads back as it was put");
    assert_eq!(two[0].summary.id, id(69));
    let starts: Vec<i64> = one.iter().chain(&two).map(|r| r.start_ms).collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]));
    assert_eq!(search.rows(&q, 100, 30).unwrap().len(), 1);
    assert!(search.rows(&q, 101, 30).unwrap().is_empty());

    // Ties on the start: the id, descending, byte order.
    let mut tie = Vec::new();
    for name in ["00000000000000aa", "00000000000000AB", "00000000000000a9"] {
        let mut m = meta(0, ("vendor", "tie", Some("t")), "tie", 1);
        m.session_id = name.into();
        tie.push(opened(&m));
    }
    index.put_all(&tie).unwrap();
    let tq = SessionQuery {
        device: Some("tie".into()),
        ..Default::default()
    };
    let order: Vec<String> = search
        .rows(&tq, 0, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.summary.id)
        .collect();
    assert_eq!(
        order,
        ["00000000000000aa", "00000000000000a9", "00000000000000AB"]
    );

    let n = |q: SessionQuery| search.count(&q).unwrap();
    for p in ["jdoe", "acme/jdoe", "vendor acme/jdoe"] {
        let got = n(SessionQuery {
            principal: Some(p.into()),
            ..Default::default()
        });
        assert_eq!(got, 51, "principal {p}");
    }
    for p in ["acme", "doe", "vendor", "cme/jdoe", "x/jdoe"] {
        let got = n(SessionQuery {
            principal: Some(p.into()),
            ..Default::default()
        });
        assert_eq!(got, 0, "principal {p}");
    }
    assert_eq!(
        n(SessionQuery {
            principal: Some("sam".into()),
            ..Default::default()
        }),
        50
    );
    assert_eq!(
        n(SessionQuery {
            org: Some("acme".into()),
            ..Default::default()
        }),
        51
    );
    assert_eq!(
        n(SessionQuery {
            org: Some("acm".into()),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        n(SessionQuery {
            device: Some("pump-1".into()),
            end_reason: Some("terminated".into()),
            ..Default::default()
        }),
        10
    );
    assert_eq!(
        n(SessionQuery {
            device: Some("pacs".into()),
            end_reason: Some("terminated".into()),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        n(SessionQuery {
            verification: Some(Verification::Failed),
            ..Default::default()
        }),
        4
    );
    assert_eq!(
        n(SessionQuery {
            verification: Some(Verification::Open),
            ..Default::default()
        }),
        3,
        "the three tie rows are open"
    );
    assert_eq!(
        n(SessionQuery {
            verification: Some(Verification::Ok),
            ..Default::default()
        }),
        97
    );
    let t0 = T0_MS / 1000;
    assert_eq!(
        n(SessionQuery {
            since: Some(t0 + 86_400),
            until: Some(t0 + 2 * 86_400),
            ..Default::default()
        }),
        25
    );
    // Hostile text is a parameter, never SQL (and matches nothing).
    for hostile in [
        "' OR 1=1 --",
        "x' OR '1'='1",
        "%",
        "_",
        "\\",
        "jdoe'); DROP TABLE sessions; --",
    ] {
        assert_eq!(
            n(SessionQuery {
                principal: Some(hostile.into()),
                ..Default::default()
            }),
            0,
            "{hostile}"
        );
        assert_eq!(
            n(SessionQuery {
                device: Some(hostile.into()),
                end_reason: Some(hostile.into()),
                ..Default::default()
            }),
            0,
            "{hostile}"
        );
    }
    assert_eq!(n(SessionQuery::default()), 104, "the table is still there");

    // The operation filter: pages and counts among the rows `q` matches.
    let end = EndInfo {
        ended_unix_ms: 1_800_000_000_000,
        reason: "client closed".into(),
        bytes_up: 1,
        bytes_down: 1,
    };
    for k in [3u32, 5, 7] {
        let ops = SessionOps {
            ops: vec!["telnet:reboot".into()],
            ..Default::default()
        };
        index.close(&id(k), &end, "ok", None, &ops).unwrap();
    }
    let keep = |ops: &[String]| ops.iter().any(|o| o == "telnet:reboot");
    let (page, total) = search
        .rows_where_ops(&SessionQuery::default(), &keep, 1, 1)
        .unwrap();
    assert_eq!(total, 3);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].summary.id, id(5));
    let (page, total) = search
        .rows_where_ops(&SessionQuery::default(), &keep, 0, 10)
        .unwrap();
    assert_eq!(total, 3);
    let ids: Vec<&str> = page.iter().map(|r| r.summary.id.as_str()).collect();
    assert_eq!(ids, [id(7), id(5), id(3)]);
    // `page` over the search (the console's path) agrees.
    let store = crate::recording_store::RecordingStore::local(std::path::Path::new(
        "/nonexistent-ward-conformance",
    ));
    let mut reread = |_: &str| -> Result<crate::session_index::SessionSummary, String> {
        Err("not read".into())
    };
    let p = session_query::page(search, &store, &q, None, (2, 10), &mut reread).unwrap();
    assert_eq!((p.total, p.has_more, p.sessions.len()), (104, true, 10));
    assert_eq!(p.sessions[0].id, id(89));

    // Aggregates over the fixture's days (the 1970 and tie rows are outside).
    let since = T0_MS / 1000 - 86_400;
    let a = search.aggregates(since, since + 10 * 86_400).unwrap();
    let orgs: u64 = a.by_org.iter().filter(|x| x.1 == "acme").map(|x| x.2).sum();
    let kinds: u64 = a
        .by_org
        .iter()
        .filter(|x| x.1 == "security")
        .map(|x| x.2)
        .sum();
    assert_eq!((orgs, kinds), (50, 50), "{:?}", a.by_org);
    let days: Vec<&str> = a.by_org.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(days.first(), Some(&"2023-11-14"), "{days:?}");
    assert!(days.windows(2).all(|w| w[0] <= w[1]), "{days:?}");
    let pacs: u64 = a
        .by_device
        .iter()
        .filter(|x| x.1 == "pacs" && x.2 == "telnet")
        .map(|x| x.3)
        .sum();
    assert_eq!(pacs, 50);
    assert_eq!(a.break_glass.iter().map(|x| x.1).sum::<u64>(), 15);
    assert_eq!(a.busiest.len(), 2);
    assert_eq!(a.busiest[0].1, 50);
    assert_eq!(a.failing.len(), 4);
    assert_eq!(a.failing[0].id, id(75));
    assert!(a.failing[0].verification.starts_with("FAILED"));
    let none = search.aggregates(10, 11).unwrap();
    assert!(none.by_org.is_empty() && none.busiest.is_empty());
    assert_eq!(none.failing.len(), 4, "failing rows are of any time");
}

fn secret(s: &str) -> Secret<String> {
    Secret::new(s.to_owned())
}

/// The vault: values round-trip and never list, a wrong key is named by fingerprint, a rotation
/// keeps the previous value until committed or aborted, names and values are checked.
pub fn vault(v: &dyn VaultStore, keys: &KeyHandle) {
    const T0: i64 = 1_795_514_400;
    let k = Kek::generate().unwrap();
    keys.set(KeyRing::of(k.clone()));
    assert!(
        v.list_credentials().unwrap().is_empty(),
        "start from an empty vault"
    );
    let put = v
        .put_credential("pump-12", "service", "admin", &secret("Factory-pw-1"), T0)
        .unwrap();
    assert_eq!(put, PutOutcome::Created);
    let c = v.credential("pump-12", "service", Some(T0 + 5)).unwrap();
    assert_eq!(
        (
            c.account.as_str(),
            c.username.as_str(),
            c.secret.expose().as_str()
        ),
        ("service", "admin", "Factory-pw-1")
    );
    let e = v.credential_entry("pump-12", "service").unwrap().unwrap();
    assert_eq!(e.last_used_unix, Some(T0 + 5));
    assert_eq!(e.key_fingerprint, k.fingerprint());
    assert!(!e.pending && !e.has_previous);
    let put = v
        .put_credential("pump-12", "service", "svc", &secret("second"), T0 + 9)
        .unwrap();
    assert_eq!(put, PutOutcome::Replaced);
    let e = v.credential_entry("pump-12", "service").unwrap().unwrap();
    assert_eq!((e.created_unix, e.updated_unix), (T0, T0 + 9));
    v.put_credential("ct-3", "nurse", "n", &secret("third"), T0)
        .unwrap();
    let listed: Vec<(String, String)> = v
        .list_credentials()
        .unwrap()
        .into_iter()
        .map(|e| (e.device, e.account))
        .collect();
    assert_eq!(
        listed,
        [
            ("ct-3".to_string(), "nurse".to_string()),
            ("pump-12".into(), "service".into())
        ]
    );
    // Refused before the database.
    assert!(matches!(
        v.put_credential("pump-12", "Bad Account", "u", &secret("x"), T0),
        Err(VaultError::Invalid(_))
    ));
    assert!(matches!(
        v.put_credential("pump-12", "service", "u", &secret("a\nb"), T0),
        Err(VaultError::Invalid(_))
    ));

    // Rotation: begin keeps the previous value, abort restores it, commit drops it.
    v.begin_rotation("pump-12", "service", &secret("rotated-1"), T0 + 20)
        .unwrap();
    assert!(matches!(
        v.begin_rotation("pump-12", "service", &secret("again"), T0 + 21),
        Err(VaultError::State(_))
    ));
    let e = v.credential_entry("pump-12", "service").unwrap().unwrap();
    assert!(e.pending && e.has_previous);
    let prev = v
        .previous_credential("pump-12", "service")
        .unwrap()
        .unwrap();
    assert_eq!(prev.secret.expose(), "second");
    assert_eq!(
        v.credential("pump-12", "service", None)
            .unwrap()
            .secret
            .expose(),
        "rotated-1"
    );
    v.abort_rotation("pump-12", "service", T0 + 22).unwrap();
    assert_eq!(
        v.credential("pump-12", "service", None)
            .unwrap()
            .secret
            .expose(),
        "second"
    );
    assert!(v
        .previous_credential("pump-12", "service")
        .unwrap()
        .is_none());
    assert!(matches!(
        v.commit_rotation("pump-12", "service", T0 + 23),
        Err(VaultError::State(_))
    ));
    v.begin_rotation("pump-12", "service", &secret("rotated-2"), T0 + 30)
        .unwrap();
    v.commit_rotation("pump-12", "service", T0 + 31).unwrap();
    let e = v.credential_entry("pump-12", "service").unwrap().unwrap();
    assert!(!e.pending && !e.has_previous);
    assert_eq!(e.last_rotated_unix, Some(T0 + 31));
    assert_eq!(
        v.credential("pump-12", "service", None)
            .unwrap()
            .secret
            .expose(),
        "rotated-2"
    );

    // Another key: named by fingerprint, the value never in the text.
    let other = Kek::generate().unwrap();
    keys.set(KeyRing::of(other.clone()));
    let err = v.credential("pump-12", "service", None).unwrap_err();
    assert!(matches!(err, VaultError::WrongKey { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(k.fingerprint()) && text.contains(other.fingerprint()),
        "{text}"
    );
    assert!(!text.contains("rotated-2"), "{text}");
    keys.set(KeyRing::of(k));

    assert!(v.remove_credential("pump-12", "service").unwrap());
    assert!(!v.remove_credential("pump-12", "service").unwrap());
    assert!(matches!(
        v.credential("pump-12", "service", None),
        Err(VaultError::NotFound { .. })
    ));
    assert!(v.remove_credential("ct-3", "nurse").unwrap());
}

/// The store's secrets: counts per key, and re-encryption of every vault value (current and
/// previous) and TOTP seed to a new key in one go; afterwards only the new key is needed. Leaves
/// a user `secrets-alice` behind (users are never deleted): run it after the user checks.
pub fn secrets(s: &dyn SecretStore, v: &dyn VaultStore, users: &dyn UserStore) {
    const T0: i64 = 1_795_514_400;
    let keys = s.key_handle();
    let old = Kek::generate().unwrap();
    keys.set(KeyRing::of(old.clone()));
    v.put_credential("pump-1", "service", "admin", &secret("pw-one"), T0)
        .unwrap();
    v.put_credential("pump-2", "service", "admin", &secret("pw-two"), T0)
        .unwrap();
    v.begin_rotation("pump-2", "service", &secret("pw-two-new"), T0 + 1)
        .unwrap();
    users
        .add_user(&User {
            name: "secrets-alice".into(),
            kind: ward_ca::Kind::Vendor,
            org: Some("acme".into()),
            roles: vec![],
            password_phc: "$argon2id$x".into(),
            totp_secret: Some("JBSWY3DPEHPK3PXP".into()),
            totp_last_step: None,
            disabled: false,
            created_unix: 1,
            disabled_unix: None,
            must_change_password: false,
        })
        .unwrap();
    let counts = s.key_counts().unwrap();
    let c = counts
        .iter()
        .find(|c| c.fingerprint == old.fingerprint())
        .unwrap();
    assert_eq!(
        (c.vault_values, c.totp_seeds, c.held, c.current),
        (3, 1, true, true)
    );

    // Rotation: the new key current, the old one still held; everything moves.
    let new = Kek::generate().unwrap();
    let both = KeyRing::new(Arc::new(new.clone()), vec![Arc::new(old.clone())]);
    keys.set(both.clone());
    let moved = s.rewrap_all(&both).unwrap();
    assert_eq!((moved.vault_values, moved.totp_seeds), (3, 1), "{moved:?}");
    assert_eq!(
        s.rewrap_all(&both).unwrap().total(),
        0,
        "nothing left to move"
    );
    let counts = s.key_counts().unwrap();
    assert!(
        counts
            .iter()
            .all(|c| c.fingerprint == new.fingerprint() || c.vault_values + c.totp_seeds == 0),
        "{counts:?}"
    );
    // Only the new key now: everything opens.
    keys.set(KeyRing::of(new.clone()));
    assert_eq!(
        v.credential("pump-1", "service", None)
            .unwrap()
            .secret
            .expose(),
        "pw-one"
    );
    assert_eq!(
        v.previous_credential("pump-2", "service")
            .unwrap()
            .unwrap()
            .secret
            .expose(),
        "pw-two"
    );
    let alice = users.user("secrets-alice").unwrap().unwrap();
    assert_eq!(alice.totp_secret.as_deref(), Some("JBSWY3DPEHPK3PXP"));

    // A value under a key the ring lacks stops a re-encryption, changing nothing.
    let stranger = Kek::generate().unwrap();
    keys.set(KeyRing::of(stranger.clone()));
    v.put_credential("pump-3", "service", "admin", &secret("pw-three"), T0)
        .unwrap();
    let newest = Kek::generate().unwrap();
    let ring = KeyRing::new(Arc::new(newest), vec![Arc::new(new.clone())]);
    let err = s.rewrap_all(&ring).unwrap_err().to_string();
    assert!(err.contains(stranger.fingerprint()), "{err}");
    keys.set(KeyRing::of(new.clone()));
    assert_eq!(
        v.credential("pump-1", "service", None)
            .unwrap()
            .secret
            .expose(),
        "pw-one",
        "the failed re-encryption changed nothing"
    );
    for d in ["pump-1", "pump-2", "pump-3"] {
        v.remove_credential(d, "service").unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn sqlite_session_index_and_search() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(dir.path()).unwrap();
        session_index(&db, &crate::session_query::SqliteSearch::new(dir.path()));
    }

    #[test]
    fn sqlite_index_reader_answers_alike() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(dir.path()).unwrap();
        let reader = crate::session_query::IndexReader::open(dir.path())
            .unwrap()
            .unwrap();
        session_index(&db, &reader);
    }

    #[test]
    fn sqlite_vault() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(dir.path()).unwrap();
        vault(&db, db.keys());
    }

    #[test]
    fn sqlite_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(dir.path()).unwrap();
        secrets(&db, &db, &db);
    }

    #[test]
    fn sqlite_search_before_the_first_start_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::session_query::SqliteSearch::new(dir.path());
        assert_eq!(s.count(&SessionQuery::default()).unwrap(), 0);
        assert!(s.all().unwrap().is_empty());
        assert!(s.one("00000000000000aa").unwrap().is_none());
        assert_eq!(s.aggregates(0, 100).unwrap(), Default::default());
        // Once the store exists, the same search object sees it.
        let db = SqliteStore::open(dir.path()).unwrap();
        db.put(&opened(&meta(1, ("vendor", "a", None), "d", 1_000)))
            .unwrap();
        assert_eq!(s.count(&SessionQuery::default()).unwrap(), 1);
    }
}
