//! The store's schema: every table and every migration, in one place, applied in order by
//! [`migrate`] when `SqliteStore::open` opens `ward.db`. Each step is idempotent (a store created
//! by any earlier version is brought up to date; a current one is left as it is).

use crate::store::StoreError;

/// Brings a database to the current schema.
pub(crate) fn migrate(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         PRAGMA secure_delete=ON;",
    )?;
    locks(conn)?;
    access(conn)?;
    users(conn)?;
    sessions(conn)?;
    vault(conn)?;
    device_pins(conn)?;
    gateways(conn)?;
    login_failures(conn)?;
    Ok(())
}

/// Locks on principals, devices and orgs (`LockStore`).
fn locks(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS locks (
             kind TEXT NOT NULL,
             value TEXT NOT NULL,
             until INTEGER,
             reason TEXT NOT NULL,
             by TEXT NOT NULL,
             PRIMARY KEY (kind, value)
         );",
    )?;
    Ok(())
}

/// Access requests, approvals and grants (`AccessStore`): one approval per person per request,
/// one grant per request.
fn access(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS access_requests (
             id TEXT PRIMARY KEY,
             state TEXT NOT NULL,
             created INTEGER NOT NULL,
             body TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS approvals (
             request TEXT NOT NULL,
             approver TEXT NOT NULL,
             body TEXT NOT NULL,
             PRIMARY KEY (request, approver)
         );
         CREATE TABLE IF NOT EXISTS grants (
             id TEXT PRIMARY KEY,
             request TEXT NOT NULL UNIQUE,
             principal TEXT NOT NULL,
             device TEXT NOT NULL,
             end_unix INTEGER NOT NULL,
             body TEXT NOT NULL
         );",
    )?;
    Ok(())
}

/// Users (`UserStore`); `must_change_password` was added after the table.
fn users(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS users (
             name TEXT PRIMARY KEY NOT NULL,
             kind TEXT NOT NULL,
             org TEXT,
             roles TEXT NOT NULL,
             password_phc TEXT NOT NULL,
             totp_secret TEXT,
             totp_last_step INTEGER,
             disabled INTEGER NOT NULL DEFAULT 0,
             created_unix INTEGER NOT NULL,
             disabled_unix INTEGER,
             must_change_password INTEGER NOT NULL DEFAULT 0
         );",
    )?;
    // Stores created before the column existed.
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'must_change_password'")?
        .exists([])?;
    if !has_column {
        conn.execute_batch(
            "ALTER TABLE users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    users_sealed_totp(conn)?;
    Ok(())
}

/// TOTP seeds sealed under the store's key-encryption key (issue 18): `totp_ct` (ciphertext and
/// tag), `totp_nonce` and `totp_kek` (the key's fingerprint). `totp_secret` held the base32 seed
/// in clear before; it stays only so an older database opens, and is emptied by the first start
/// with a key (`keywrap::open_store_keys` seals every such seed and audits how many). Deleted
/// content is overwritten (`secure_delete`, set above), so the old bytes do not linger in free
/// pages.
fn users_sealed_totp(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    for (column, ddl) in [
        ("totp_ct", "totp_ct BLOB"),
        ("totp_nonce", "totp_nonce BLOB"),
        ("totp_kek", "totp_kek TEXT"),
    ] {
        let has_column = conn
            .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = ?1")?
            .exists([column])?;
        if !has_column {
            conn.execute_batch(&format!("ALTER TABLE users ADD COLUMN {ddl};"))?;
        }
    }
    Ok(())
}

/// The session index (`SessionIndex`).
fn sessions(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sessions (
             id TEXT PRIMARY KEY NOT NULL,
             principal TEXT NOT NULL,
             serial TEXT NOT NULL,
             device TEXT NOT NULL,
             protocol TEXT NOT NULL,
             source TEXT NOT NULL,
             rule TEXT NOT NULL,
             start_unix_ms INTEGER NOT NULL,
             end_unix_ms INTEGER,
             end_reason TEXT NOT NULL,
             bytes_up INTEGER NOT NULL,
             bytes_down INTEGER NOT NULL,
             sealed INTEGER NOT NULL,
             verification TEXT NOT NULL,
             break_glass INTEGER NOT NULL,
             duration_s REAL NOT NULL,
             file_len INTEGER,
             file_mtime_ns INTEGER
         );
         CREATE INDEX IF NOT EXISTS sessions_start ON sessions (start_unix_ms);",
    )?;
    session_ops(conn)?;
    session_search(conn)?;
    Ok(())
}

/// What the web console's session search filters and orders by (`crate::session_query`): newest
/// first with the id as the tie-break, and by device or principal within that order.
fn session_search(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS sessions_start_id ON sessions (start_unix_ms, id);
         CREATE INDEX IF NOT EXISTS sessions_device ON sessions (device, start_unix_ms);
         CREATE INDEX IF NOT EXISTS sessions_principal ON sessions (principal, start_unix_ms);",
    )?;
    Ok(())
}

/// What each session did, operation by operation (issue 15): `ops` the distinct `protocol:name`s
/// one per line (bounded by the recorder), `undecodable` where decoding gave up, `denied_ops` how
/// many the policy refused, `ops_truncated` whether some operation is not in `ops` as decoded
/// (beyond the bound, or a name cut; a search `ops` does not answer reads the recording), and
/// `ops_known` whether these were summarised from the recording's
/// events (a row indexed by recovery without reading the events is not: listings read its
/// recording). Rows from before these columns hold sessions recorded before any decoder: no
/// operations, which is what the defaults say.
fn session_ops(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    for (column, ddl) in [
        ("ops", "ops TEXT NOT NULL DEFAULT ''"),
        ("undecodable", "undecodable TEXT"),
        ("denied_ops", "denied_ops INTEGER NOT NULL DEFAULT 0"),
        ("ops_known", "ops_known INTEGER NOT NULL DEFAULT 1"),
        ("ops_truncated", "ops_truncated INTEGER NOT NULL DEFAULT 0"),
    ] {
        let has_column = conn
            .prepare("SELECT 1 FROM pragma_table_info('sessions') WHERE name = ?1")?
            .exists([column])?;
        if !has_column {
            conn.execute_batch(&format!("ALTER TABLE sessions ADD COLUMN {ddl};"))?;
        }
    }
    Ok(())
}

/// The credential vault (`VaultStore`): one encrypted value per device and account, the key
/// fingerprint it is sealed under, and during a rotation the previous value and `pending`.
fn vault(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS vault (
             device TEXT NOT NULL,
             account TEXT NOT NULL,
             username TEXT NOT NULL,
             ciphertext BLOB NOT NULL,
             nonce BLOB NOT NULL,
             key_fp TEXT NOT NULL,
             created_unix INTEGER NOT NULL,
             updated_unix INTEGER NOT NULL,
             last_used_unix INTEGER,
             last_rotated_unix INTEGER,
             prev_ciphertext BLOB,
             prev_nonce BLOB,
             prev_key_fp TEXT,
             pending INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (device, account)
         );",
    )?;
    Ok(())
}

/// Device certificate pins (`PinStore`): one per device that speaks TLS itself.
fn device_pins(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS device_pins (
             device TEXT PRIMARY KEY NOT NULL,
             pin TEXT NOT NULL,
             set_by TEXT NOT NULL,
             set_unix INTEGER NOT NULL
         );",
    )?;
    Ok(())
}

/// The gateways using this store (`GatewayRegistry`): on SQLite, the one gateway and its
/// heartbeat.
fn gateways(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS gateways (
             id TEXT PRIMARY KEY NOT NULL,
             quic TEXT NOT NULL,
             tcp TEXT,
             web TEXT,
             version TEXT NOT NULL,
             started_unix_ms INTEGER NOT NULL,
             last_seen_unix_ms INTEGER NOT NULL,
             keyring TEXT NOT NULL DEFAULT ''
         );",
    )?;
    Ok(())
}

/// Consecutive failed logins per name, user or not (`UserStore::note_login_failure`): the login
/// back-off survives a restart, and on a shared database holds across gateways.
fn login_failures(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS login_failures (
             name TEXT PRIMARY KEY NOT NULL,
             failures INTEGER NOT NULL,
             last_unix_ms INTEGER NOT NULL
         );",
    )?;
    Ok(())
}
