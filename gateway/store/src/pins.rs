//! Device certificate pins (`ward devices pin`): for a device that speaks TLS itself, the SHA-256
//! of the one certificate the gateway accepts from it, who confirmed it and when. A pin in the
//! config wins over the stored one; the store holds the pins confirmed at run time.

use crate::store::{SqliteStore, StoreError};

/// One device's stored pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPin {
    /// Device id.
    pub device: String,
    /// `sha256:` and 64 lowercase hex digits.
    pub pin: String,
    /// Who confirmed it (the principal's text form).
    pub set_by: String,
    /// When (Unix seconds).
    pub set_unix: i64,
}

/// The pin table.
pub trait PinStore: Send + Sync {
    /// The device's pin, if one was confirmed.
    fn device_pin(&self, device: &str) -> Result<Option<StoredPin>, StoreError>;
    /// Sets (or replaces) a device's pin; returns the one it replaced.
    fn set_device_pin(&self, pin: &StoredPin) -> Result<Option<StoredPin>, StoreError>;
    /// Removes a device's pin; returns it.
    fn remove_device_pin(&self, device: &str) -> Result<Option<StoredPin>, StoreError>;
}

fn read(conn: &rusqlite::Connection, device: &str) -> Result<Option<StoredPin>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT device, pin, set_by, set_unix FROM device_pins WHERE device = ?1")?;
    let mut rows = stmt.query_map([device], |row| {
        Ok(StoredPin {
            device: row.get(0)?,
            pin: row.get(1)?,
            set_by: row.get(2)?,
            set_unix: row.get(3)?,
        })
    })?;
    Ok(rows.next().transpose()?)
}

impl PinStore for SqliteStore {
    fn device_pin(&self, device: &str) -> Result<Option<StoredPin>, StoreError> {
        let conn = self.conn()?;
        read(&conn, device)
    }

    fn set_device_pin(&self, pin: &StoredPin) -> Result<Option<StoredPin>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let old = read(&tx, &pin.device)?;
        tx.execute(
            "INSERT OR REPLACE INTO device_pins (device, pin, set_by, set_unix) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![pin.device, pin.pin, pin.set_by, pin.set_unix],
        )?;
        tx.commit()?;
        Ok(old)
    }

    fn remove_device_pin(&self, device: &str) -> Result<Option<StoredPin>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let old = read(&tx, device)?;
        tx.execute("DELETE FROM device_pins WHERE device = ?1", [device])?;
        tx.commit()?;
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pins_are_set_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.device_pin("pacs").unwrap(), None);
        let pin = |p: &str| StoredPin {
            device: "pacs".into(),
            pin: p.into(),
            set_by: "security:sam".into(),
            set_unix: 10,
        };
        assert_eq!(store.set_device_pin(&pin("sha256:aa")).unwrap(), None);
        assert_eq!(
            store.set_device_pin(&pin("sha256:bb")).unwrap(),
            Some(pin("sha256:aa"))
        );
        assert_eq!(store.device_pin("pacs").unwrap(), Some(pin("sha256:bb")));
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.device_pin("pacs").unwrap(), Some(pin("sha256:bb")));
        assert_eq!(
            store.remove_device_pin("pacs").unwrap(),
            Some(pin("sha256:bb"))
        );
        assert_eq!(store.device_pin("pacs").unwrap(), None);
    }
}
