//! Users in the embedded store: who may log in, with which password hash and TOTP secret.
//!
//! A separate trait from [`crate::store::Store`] so the tables can move to another database with
//! it. The SQLite implementation shares `SqliteStore`'s connection; its table is created by
//! [`crate::schema`] when the store opens. [`UserStore::record_totp_step`] is a single
//! conditional `UPDATE`, so two logins racing with the same code cannot both consume it.
//!
//! TOTP seeds are never stored in clear: the SQLite implementation seals them under the store's
//! key-encryption key ([`crate::keywrap`]) with the user's name and the purpose (`totp`) as
//! additional authenticated data, so a seed copied to another user's row does not open there.
//! [`User::totp_secret`] is the opened seed; a seed under a key the gateway does not hold fails
//! the read, naming the key's fingerprint.

use std::fmt;
use std::str::FromStr;

use rusqlite::OptionalExtension;
use time::OffsetDateTime;
use ward_ca::Kind;

use crate::keywrap::{KeyError, KeyRing, Wrapped};
use crate::store::{SqliteStore, StoreError};

/// Longest user name.
pub const MAX_NAME_LEN: usize = 63;

/// A user account. `Debug` never shows the password hash or the TOTP secret.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Login name: `^[a-z0-9][a-z0-9._-]{0,62}$` (see [`check_user_name`]).
    pub name: String,
    /// The certificate kind the user's logins get (never `gateway`).
    pub kind: Kind,
    /// Organisation (a vendor's company), put in the certificate's O.
    pub org: Option<String>,
    /// Roles, put in the certificate's OU.
    pub roles: Vec<String>,
    /// argon2id PHC string (`ward_core::password::hash_password`).
    pub password_phc: String,
    /// TOTP secret, base32 (`ward_core::totp::TotpSecret::to_base32`); `None` if not enrolled.
    /// Stored sealed under the store's key-encryption key, never in clear.
    pub totp_secret: Option<String>,
    /// The last TOTP step consumed; codes at or before it are refused.
    pub totp_last_step: Option<i64>,
    /// A disabled user cannot log in.
    pub disabled: bool,
    /// When the user was added (Unix seconds).
    pub created_unix: i64,
    /// When the user was disabled (Unix seconds).
    pub disabled_unix: Option<i64>,
    /// The password is an initial one somebody else chose or saw (`ward user add`): the next
    /// login must set a new one (`ward login --change-password`) before a certificate is issued.
    pub must_change_password: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("org", &self.org)
            .field("roles", &self.roles)
            .field("password_phc", &"[redacted]")
            .field(
                "totp_secret",
                &self.totp_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("totp_last_step", &self.totp_last_step)
            .field("disabled", &self.disabled)
            .field("created_unix", &self.created_unix)
            .field("disabled_unix", &self.disabled_unix)
            .field("must_change_password", &self.must_change_password)
            .finish()
    }
}

/// Whether `name` is a valid user name: 1–63 characters, lowercase ASCII letters, digits, `.`,
/// `_` and `-`, starting with a letter or digit.
pub fn check_user_name(name: &str) -> Result<(), StoreError> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "user name {name:?}: 1-63 of a-z 0-9 . _ -, starting with a letter or digit"
        )))
    }
}

/// What the gateway needs to know about users.
pub trait UserStore: Send + Sync {
    /// Add a user; [`StoreError::Exists`] if the name is taken, [`StoreError::Invalid`] for a bad
    /// name or a `gateway` kind.
    fn add_user(&self, user: &User) -> Result<(), StoreError>;
    /// One user by name.
    fn user(&self, name: &str) -> Result<Option<User>, StoreError>;
    /// All users, by name.
    fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Disable a user at `now`. True if the user existed and was enabled; false if unknown or
    /// already disabled (the first disable time is kept).
    fn disable_user(&self, name: &str, now: OffsetDateTime) -> Result<bool, StoreError>;
    /// Replace a user's password hash (the user's own choice: clears `must_change_password`).
    /// False if there is no such user.
    fn set_password(&self, name: &str, phc: &str) -> Result<bool, StoreError>;
    /// Enrol (or remove, with `None`) a TOTP secret; resets the last used step. False if there
    /// is no such user.
    fn set_totp(&self, name: &str, secret_base32: Option<&str>) -> Result<bool, StoreError>;
    /// Consume TOTP step `step`: set it as the last used step only if it is newer than the
    /// stored one, atomically. True if it was consumed; false if a step at or after it was
    /// already used (or the user does not exist): the login must then be refused.
    fn record_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError>;
    /// Names of disabled users (the gateway ends their live sessions).
    fn disabled_users(&self) -> Result<Vec<String>, StoreError>;
    /// Counts a failed login for `name` (a user or not: an attacker guesses names) at `now`,
    /// atomically; returns the consecutive failures including this one. On a shared database
    /// every gateway counts into the same row, so the back-off holds whichever gateway a guess
    /// reaches.
    fn note_login_failure(&self, name: &str, now: OffsetDateTime) -> Result<u32, StoreError>;
    /// The consecutive failed logins for `name` and when the last one was (to the millisecond);
    /// `(0, None)` when there are none.
    fn login_failures(&self, name: &str) -> Result<(u32, Option<OffsetDateTime>), StoreError>;
    /// Forgets `name`'s failed logins (after a successful one).
    fn clear_login_failures(&self, name: &str) -> Result<(), StoreError>;
}

/// A failure count as stored (never negative; saturates).
pub(crate) fn failures_of(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

pub(crate) const COLUMNS: &str =
    "name, kind, org, roles, password_phc, totp_secret, totp_last_step, \
                       disabled, created_unix, disabled_unix, must_change_password, \
                       totp_ct, totp_nonce, totp_kek";

/// The additional authenticated data of a user's TOTP seed: its row and purpose.
pub(crate) fn totp_aad(name: &str) -> Vec<u8> {
    crate::keywrap::aad("ward-user-secret-v1", &[name, "totp"])
}

pub(crate) fn totp_what(name: &str) -> String {
    format!("the TOTP seed of user {name}")
}

/// Seals a base32 seed for `name`.
pub(crate) fn seal_totp(ring: &KeyRing, name: &str, base32: &str) -> Result<Wrapped, KeyError> {
    ring.wrap(base32.as_bytes(), &totp_aad(name))
}

/// Opens a sealed seed of `name` (base32).
pub(crate) fn open_totp(ring: &KeyRing, name: &str, w: &Wrapped) -> Result<String, KeyError> {
    let plain = ring.unwrap(w, &totp_aad(name), &totp_what(name))?;
    String::from_utf8(plain.expose().clone()).map_err(|e| {
        let mut b = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut b);
        KeyError::Tampered {
            what: totp_what(name),
        }
    })
}

/// Seeds (sealed and legacy plaintext) re-sealed under `ring`'s current key, inside the caller's
/// transaction: (re-encrypted, plaintext sealed).
pub(crate) fn rewrap(
    tx: &rusqlite::Transaction<'_>,
    ring: &KeyRing,
) -> Result<(usize, usize), KeyError> {
    let db = |e: rusqlite::Error| KeyError::Key(format!("ward.db: {e}"));
    type Seed = (
        String,
        Option<String>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<String>,
    );
    let rows: Vec<Seed> = {
        let mut stmt = tx
            .prepare(
                "SELECT name, totp_secret, totp_ct, totp_nonce, totp_kek FROM users
                 WHERE totp_secret IS NOT NULL OR (totp_kek IS NOT NULL AND totp_kek != ?1)
                 ORDER BY name",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([ring.fingerprint()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    let (mut moved, mut sealed) = (0, 0);
    for (name, plain, ct, nonce, kek) in rows {
        let w = match (ct, nonce, kek) {
            (Some(ct), Some(nonce), Some(kek)) => {
                let old = Wrapped { kek, nonce, ct };
                match ring.rewrap(&old, &totp_aad(&name), &totp_what(&name))? {
                    Some(w) => {
                        moved += 1;
                        w
                    }
                    None => old,
                }
            }
            _ => match plain {
                Some(p) => {
                    let p = zeroize::Zeroizing::new(p);
                    sealed += 1;
                    seal_totp(ring, &name, &p)?
                }
                None => continue,
            },
        };
        tx.execute(
            "UPDATE users SET totp_secret = NULL, totp_ct = ?2, totp_nonce = ?3, totp_kek = ?4 WHERE name = ?1",
            rusqlite::params![name, w.ct, w.nonce, w.kek],
        )
        .map_err(db)?;
    }
    Ok((moved, sealed))
}

/// TOTP seeds per key fingerprint; legacy plaintext seeds count under `plaintext`.
pub(crate) fn counts(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<(String, usize)>> {
    let mut stmt = conn.prepare(
        "SELECT CASE WHEN totp_kek IS NOT NULL THEN totp_kek ELSE 'plaintext' END AS fp, COUNT(*)
         FROM users WHERE totp_kek IS NOT NULL OR totp_secret IS NOT NULL GROUP BY fp ORDER BY fp",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    rows.map(|r| r.map(|(f, n)| (f, usize::try_from(n).unwrap_or(0))))
        .collect()
}

pub(crate) type Row = (
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<i64>,
    bool,
    i64,
    Option<i64>,
    bool,
    Option<Wrapped>,
);

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        match (row.get(11)?, row.get(12)?, row.get(13)?) {
            (Some(ct), Some(nonce), Some(kek)) => Some(Wrapped { kek, nonce, ct }),
            _ => None,
        },
    ))
}

pub(crate) fn to_user(r: Row, keys: &crate::keywrap::KeyHandle) -> Result<User, StoreError> {
    // A sealed seed wins over a legacy plaintext one (which the first start with a key empties).
    let totp_secret = match &r.11 {
        Some(w) => Some(open_totp(&*keys.get()?, &r.0, w)?),
        None => r.5.clone(),
    };
    let kind =
        Kind::from_str(&r.1).map_err(|e| StoreError::Corrupt(format!("user {:?}: {e}", r.0)))?;
    let roles: Vec<String> = serde_json::from_str(&r.3)
        .map_err(|e| StoreError::Corrupt(format!("user {:?} roles: {e}", r.0)))?;
    Ok(User {
        name: r.0,
        kind,
        org: r.2,
        roles,
        password_phc: r.4,
        totp_secret,
        totp_last_step: r.6,
        disabled: r.7,
        created_unix: r.8,
        disabled_unix: r.9,
        must_change_password: r.10,
    })
}

impl UserStore for SqliteStore {
    fn add_user(&self, user: &User) -> Result<(), StoreError> {
        check_user_name(&user.name)?;
        if !user.kind.is_person() {
            return Err(StoreError::Invalid(format!(
                "user {:?}: kind {} is not a person",
                user.name, user.kind
            )));
        }
        let roles = serde_json::to_string(&user.roles)
            .map_err(|e| StoreError::Invalid(format!("roles: {e}")))?;
        let conn = self.conn()?;
        // The ring is read with the connection held (see `keywrap::rotate_file_kek`).
        let sealed = match &user.totp_secret {
            Some(seed) => Some(seal_totp(&*self.keys().get()?, &user.name, seed)?),
            None => None,
        };
        let n = conn.execute(
            &format!(
                "INSERT INTO users ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                 ON CONFLICT(name) DO NOTHING"
            ),
            rusqlite::params![
                user.name,
                user.kind.as_str(),
                user.org,
                roles,
                user.password_phc,
                user.totp_last_step,
                user.disabled,
                user.created_unix,
                user.disabled_unix,
                user.must_change_password,
                sealed.as_ref().map(|w| &w.ct),
                sealed.as_ref().map(|w| &w.nonce),
                sealed.as_ref().map(|w| &w.kek),
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Exists(format!("user {:?}", user.name)));
        }
        Ok(())
    }

    fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM users WHERE name = ?1"),
                [name],
                read_row,
            )
            .optional()?;
        row.map(|r| to_user(r, self.keys())).transpose()
    }

    fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM users ORDER BY name"))?;
        let rows = stmt.query_map([], read_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(to_user(row?, self.keys())?);
        }
        Ok(out)
    }

    fn disable_user(&self, name: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE users SET disabled = 1, disabled_unix = ?2 WHERE name = ?1 AND disabled = 0",
            rusqlite::params![name, now.unix_timestamp()],
        )?;
        Ok(n > 0)
    }

    fn set_password(&self, name: &str, phc: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE users SET password_phc = ?2, must_change_password = 0 WHERE name = ?1",
            rusqlite::params![name, phc],
        )?;
        Ok(n > 0)
    }

    fn set_totp(&self, name: &str, secret_base32: Option<&str>) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let sealed = match secret_base32 {
            Some(seed) => Some(seal_totp(&*self.keys().get()?, name, seed)?),
            None => None,
        };
        let n = conn.execute(
            "UPDATE users SET totp_secret = NULL, totp_ct = ?2, totp_nonce = ?3, totp_kek = ?4, \
             totp_last_step = NULL WHERE name = ?1",
            rusqlite::params![
                name,
                sealed.as_ref().map(|w| &w.ct),
                sealed.as_ref().map(|w| &w.nonce),
                sealed.as_ref().map(|w| &w.kek),
            ],
        )?;
        Ok(n > 0)
    }

    fn record_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE users SET totp_last_step = ?2 \
             WHERE name = ?1 AND (totp_last_step IS NULL OR totp_last_step < ?2)",
            rusqlite::params![name, step],
        )?;
        Ok(n > 0)
    }

    fn disabled_users(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT name FROM users WHERE disabled != 0 ORDER BY name")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    fn note_login_failure(&self, name: &str, now: OffsetDateTime) -> Result<u32, StoreError> {
        let conn = self.conn()?;
        let n: i64 = conn.query_row(
            "INSERT INTO login_failures (name, failures, last_unix_ms) VALUES (?1, 1, ?2)
             ON CONFLICT (name) DO UPDATE
             SET failures = failures + 1, last_unix_ms = MAX(last_unix_ms, excluded.last_unix_ms)
             RETURNING failures",
            rusqlite::params![name, crate::gateways::unix_ms(now)],
            |r| r.get(0),
        )?;
        Ok(failures_of(n))
    }

    fn login_failures(&self, name: &str) -> Result<(u32, Option<OffsetDateTime>), StoreError> {
        let conn = self.conn()?;
        let row: Option<(i64, i64)> = conn
            .query_row(
                "SELECT failures, last_unix_ms FROM login_failures WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            Some((n, last)) => Ok((failures_of(n), Some(crate::gateways::from_unix_ms(last)?))),
            None => Ok((0, None)),
        }
    }

    fn clear_login_failures(&self, name: &str) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.execute("DELETE FROM login_failures WHERE name = ?1", [name])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    /// The store in `dir`, with its default key file (created as the gateway's first start does).
    fn open(dir: &std::path::Path) -> SqliteStore {
        crate::keywrap::Kek::from_file(&dir.join(crate::keywrap::DEFAULT_KEY_FILE), true).unwrap();
        SqliteStore::open(dir).unwrap()
    }

    fn alice(now: i64) -> User {
        User {
            name: "alice".into(),
            kind: Kind::Vendor,
            org: Some("acme".into()),
            roles: vec!["infusion".into(), "field-service".into()],
            password_phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            totp_secret: Some("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into()),
            totp_last_step: None,
            disabled: false,
            created_unix: now,
            disabled_unix: None,
            must_change_password: false,
        }
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn names() {
        for good in ["a", "alice", "0", "bob.smith", "b_2-x", &"a".repeat(63)] {
            assert!(check_user_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "Alice",
            ".alice",
            "-alice",
            "_a",
            "al ice",
            "al/ice",
            "alice\n",
            "élise",
            "a:b",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(check_user_name(bad), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn add_get_list_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        {
            let s = open(dir.path());
            s.add_user(&alice(now)).unwrap();
            let bob = User {
                name: "bob".into(),
                kind: Kind::Clinician,
                org: None,
                roles: vec![],
                totp_secret: None,
                ..alice(now + 5)
            };
            s.add_user(&bob).unwrap();
            // Same name again: Exists, and the first record is untouched.
            let again = User {
                kind: Kind::Admin,
                ..alice(now + 9)
            };
            assert!(matches!(s.add_user(&again), Err(StoreError::Exists(_))));
            assert_eq!(s.user("alice").unwrap().unwrap().kind, Kind::Vendor);
        }
        let s = open(dir.path());
        assert_eq!(s.user("alice").unwrap(), Some(alice(now)));
        assert_eq!(s.user("nobody").unwrap(), None);
        let names: Vec<String> = s
            .list_users()
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["alice", "bob"]);
        let bob = s.user("bob").unwrap().unwrap();
        assert_eq!(bob.kind, Kind::Clinician);
        assert_eq!(bob.org, None);
        assert!(bob.roles.is_empty());
        assert_eq!(bob.totp_secret, None);
    }

    #[test]
    fn invalid_users_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let bad_name = User {
            name: "Alice".into(),
            ..alice(1)
        };
        assert!(matches!(s.add_user(&bad_name), Err(StoreError::Invalid(_))));
        let gateway = User {
            kind: Kind::Gateway,
            ..alice(1)
        };
        assert!(matches!(s.add_user(&gateway), Err(StoreError::Invalid(_))));
        assert!(s.list_users().unwrap().is_empty());
    }

    #[test]
    fn disable_password_and_totp_updates() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.add_user(&alice(100)).unwrap();
        assert!(s.disabled_users().unwrap().is_empty());
        assert!(s.disable_user("alice", at(200)).unwrap());
        // A second disable changes nothing and keeps the first time.
        assert!(!s.disable_user("alice", at(300)).unwrap());
        assert!(!s.disable_user("nobody", at(300)).unwrap());
        let a = s.user("alice").unwrap().unwrap();
        assert!(a.disabled);
        assert_eq!(a.disabled_unix, Some(200));
        assert_eq!(s.disabled_users().unwrap(), ["alice"]);

        assert!(s.set_password("alice", "$argon2id$new").unwrap());
        assert!(!s.set_password("nobody", "$argon2id$new").unwrap());
        assert_eq!(
            s.user("alice").unwrap().unwrap().password_phc,
            "$argon2id$new"
        );

        assert!(s.record_totp_step("alice", 10).unwrap());
        assert!(s.set_totp("alice", Some("MZXW6YTBOI")).unwrap());
        let a = s.user("alice").unwrap().unwrap();
        assert_eq!(a.totp_secret.as_deref(), Some("MZXW6YTBOI"));
        assert_eq!(a.totp_last_step, None);
        assert!(s.set_totp("alice", None).unwrap());
        assert_eq!(s.user("alice").unwrap().unwrap().totp_secret, None);
        assert!(!s.set_totp("nobody", None).unwrap());
    }

    #[test]
    fn initial_password_flag_round_trips_and_a_new_password_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let fresh = User {
            must_change_password: true,
            ..alice(1)
        };
        s.add_user(&fresh).unwrap();
        assert!(s.user("alice").unwrap().unwrap().must_change_password);
        assert!(s.set_password("alice", "$argon2id$mine").unwrap());
        assert!(!s.user("alice").unwrap().unwrap().must_change_password);
    }

    #[test]
    fn a_store_from_before_the_flag_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The users table as it was created before `must_change_password` existed.
            let conn = rusqlite::Connection::open(dir.path().join("ward.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE users (
                     name TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL, org TEXT,
                     roles TEXT NOT NULL, password_phc TEXT NOT NULL, totp_secret TEXT,
                     totp_last_step INTEGER, disabled INTEGER NOT NULL DEFAULT 0,
                     created_unix INTEGER NOT NULL, disabled_unix INTEGER);
                 INSERT INTO users (name, kind, org, roles, password_phc, created_unix)
                     VALUES ('old', 'vendor', 'acme', '[]', '$argon2id$x', 5);",
            )
            .unwrap();
        }
        let s = open(dir.path());
        let old = s.user("old").unwrap().unwrap();
        assert!(!old.must_change_password);
        assert_eq!(old.created_unix, 5);
        s.add_user(&User {
            must_change_password: true,
            ..alice(9)
        })
        .unwrap();
        drop(s);
        // Opening again does not try to add the column twice.
        let s = open(dir.path());
        assert!(s.user("alice").unwrap().unwrap().must_change_password);
    }

    #[test]
    fn totp_steps_are_consumed_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.add_user(&alice(1)).unwrap();
        assert!(s.record_totp_step("alice", 1000).unwrap());
        assert!(!s.record_totp_step("alice", 1000).unwrap());
        assert!(!s.record_totp_step("alice", 999).unwrap());
        assert!(s.record_totp_step("alice", 1001).unwrap());
        assert_eq!(s.user("alice").unwrap().unwrap().totp_last_step, Some(1001));
        assert!(!s.record_totp_step("nobody", 5000).unwrap());
        // It survives a restart: the used code stays used.
        drop(s);
        let s = open(dir.path());
        assert!(!s.record_totp_step("alice", 1001).unwrap());
    }

    /// Two logins racing with the same code: exactly one consumes the step, both through one
    /// store (the gateway's case) and through two connections to the same file.
    #[test]
    fn racing_totp_steps_consume_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(open(dir.path()));
        s.add_user(&alice(1)).unwrap();
        let other = Arc::new(open(dir.path()));
        for round in 0..50i64 {
            let step = 10_000 + round;
            let barrier = Arc::new(Barrier::new(2));
            let stores = [
                Arc::clone(&s),
                if round % 2 == 0 {
                    Arc::clone(&s)
                } else {
                    Arc::clone(&other)
                },
            ];
            let handles: Vec<_> = stores
                .into_iter()
                .map(|st| {
                    let b = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        b.wait();
                        st.record_totp_step("alice", step).unwrap()
                    })
                })
                .collect();
            let won: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert_eq!(
                won.iter().filter(|w| **w).count(),
                1,
                "round {round}: {won:?}"
            );
        }
        assert_eq!(
            s.user("alice").unwrap().unwrap().totp_last_step,
            Some(10_049)
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!("{:?}", alice(1));
        assert!(shown.contains("alice") && shown.contains("acme"), "{shown}");
        assert!(!shown.contains("argon2id"), "{shown}");
        assert!(!shown.contains("GEZD"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn corrupt_rows_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.add_user(&alice(1)).unwrap();
        s.conn()
            .unwrap()
            .execute("UPDATE users SET kind = 'wizard' WHERE name = 'alice'", [])
            .unwrap();
        assert!(matches!(s.user("alice"), Err(StoreError::Corrupt(_))));
        assert!(matches!(s.list_users(), Err(StoreError::Corrupt(_))));
    }

    /// Whether `needle` occurs in ward.db or its WAL.
    fn in_db_files(dir: &std::path::Path, needle: &[u8]) -> Option<&'static str> {
        ["ward.db", "ward.db-wal", "ward.db-journal"]
            .into_iter()
            .find(|f| {
                std::fs::read(dir.join(f))
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            })
    }

    #[test]
    fn totp_seeds_are_sealed_and_bound_to_their_row() {
        use crate::keywrap::{Kek, KeyRing, SecretStore};
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let seed = ward_core::totp::TotpSecret::generate([0x5a; 20]);
        let b32 = seed.to_base32();
        s.add_user(&User {
            totp_secret: Some(b32.clone()),
            ..alice(1)
        })
        .unwrap();
        let mut bob = alice(1);
        bob.name = "bob".into();
        s.add_user(&bob).unwrap();
        assert!(s.set_totp("bob", Some("JBSWY3DPEHPK3PXP")).unwrap());
        assert_eq!(
            s.user("alice").unwrap().unwrap().totp_secret,
            Some(b32.clone())
        );
        let (plain, kek): (Option<String>, String) = s
            .conn()
            .unwrap()
            .query_row(
                "SELECT totp_secret, totp_kek FROM users WHERE name = 'alice'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(plain, None);
        assert_eq!(kek, s.keys().fingerprint().unwrap());
        // Checkpointed or not, neither form of the seed is in the files.
        for needle in [b32.as_bytes(), seed.as_bytes(), b"JBSWY3DPEHPK3PXP"] {
            assert_eq!(in_db_files(dir.path(), needle), None);
        }
        s.conn()
            .unwrap()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        for needle in [b32.as_bytes(), seed.as_bytes()] {
            assert_eq!(in_db_files(dir.path(), needle), None);
        }
        // Alice's sealed seed copied onto bob's row does not open there.
        s.conn()
            .unwrap()
            .execute(
                "UPDATE users SET (totp_ct, totp_nonce, totp_kek) = \
                 (SELECT totp_ct, totp_nonce, totp_kek FROM users WHERE name = 'alice') WHERE name = 'bob'",
                [],
            )
            .unwrap();
        let err = s.user("bob").unwrap_err().to_string();
        assert!(
            err.contains("TOTP seed of user bob") && err.contains("integrity"),
            "{err}"
        );
        // Under a key the store does not hold: the error names the fingerprint it needs.
        let other = Kek::generate().unwrap();
        s.keys().set(KeyRing::of(other.clone()));
        let err = s.user("alice").unwrap_err().to_string();
        assert!(
            err.contains(&kek) && err.contains(other.fingerprint()),
            "{err}"
        );
        assert!(!err.contains(&b32));
        // Counts per key.
        let counts = s.key_counts().unwrap();
        let under = counts.iter().find(|c| c.fingerprint == kek).unwrap();
        assert_eq!((under.totp_seeds, under.held), (2, false));
        // Removing the seed clears every column.
        s.keys().set(KeyRing::of(
            Kek::from_file(&dir.path().join("vault.key"), false)
                .unwrap()
                .unwrap(),
        ));
        assert!(s.set_totp("alice", None).unwrap());
        assert_eq!(s.user("alice").unwrap().unwrap().totp_secret, None);
    }

    #[test]
    fn plaintext_seeds_of_an_older_store_are_sealed_at_first_start() {
        use crate::keywrap::{KeySource, SecretStore};
        let dir = tempfile::tempdir().unwrap();
        let seed = ward_core::totp::TotpSecret::generate([0x3c; 20]);
        let b32 = seed.to_base32();
        {
            // The users table as issue 17 left it: the seed in base32, in clear.
            let conn = rusqlite::Connection::open(dir.path().join("ward.db")).unwrap();
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
                 VALUES ('old', 'vendor', 'acme', '[]', '$argon2id$x', ?1, 5)",
                [&b32],
            )
            .unwrap();
        }
        assert!(in_db_files(dir.path(), b32.as_bytes()).is_some());
        let s = SqliteStore::open(dir.path()).unwrap();
        // Readable before (a legacy seed needs no key), counted as plaintext.
        assert_eq!(
            s.user("old").unwrap().unwrap().totp_secret,
            Some(b32.clone())
        );
        assert!(s
            .key_counts()
            .unwrap()
            .iter()
            .any(|c| c.fingerprint == "plaintext" && c.totp_seeds == 1));
        let src = KeySource::File(dir.path().join("vault.key"));
        let (ring, done) = crate::keywrap::open_store_keys(&s, &src).unwrap();
        assert_eq!(done.plaintext_seeds_sealed, 1);
        assert_eq!(
            s.user("old").unwrap().unwrap().totp_secret,
            Some(b32.clone())
        );
        let counts = s.key_counts().unwrap();
        assert!(
            counts.iter().all(|c| c.fingerprint != "plaintext"),
            "{counts:?}"
        );
        assert!(counts
            .iter()
            .any(|c| c.fingerprint == ring.fingerprint() && c.totp_seeds == 1));
        drop(s);
        assert_eq!(in_db_files(dir.path(), b32.as_bytes()), None);
        // A second start has nothing to do.
        let s = SqliteStore::open(dir.path()).unwrap();
        let (_, again) = crate::keywrap::open_store_keys(&s, &src).unwrap();
        assert_eq!(again.total(), 0);
    }
}
