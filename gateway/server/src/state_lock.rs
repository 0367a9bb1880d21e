//! One gateway per state dir: an exclusive `flock` on `<state_dir>/gateway.lock`, taken before
//! anything in the dir is read or written and held for the gateway's life.
//!
//! Two gateways on one state dir would interleave their audit-log lines (the hash chain stops
//! verifying), each keep its own in-memory copy of locks and grants (a lock set through one
//! would not apply on the other), and race on crash recovery. `flock` locks belong to an open
//! file description, so two gateways in one process conflict as well as two processes; the
//! kernel drops the lock when the holder exits, however it exits (kill -9 included), so a stale
//! file never blocks a restart. Host-side tools (`ward sessions --state-dir`, `ward user add
//! --config`) do not take it: they read the dir, or go through SQLite's own locking.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the state dir.
pub const LOCK_FILE: &str = "gateway.lock";

/// Why the state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another gateway (this process or another) holds the lock.
    #[error("state dir {} is in use by ward gateway pid {}; stop it first, or give this gateway its own state_dir", dir.display(), pid.map(|p| p.to_string()).unwrap_or_else(|| "(unknown)".into()))]
    InUse {
        /// The state dir.
        dir: PathBuf,
        /// The holder's pid, as it wrote it in the lock file (`None` while it is still writing).
        pid: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("locking state dir {}: {what}: {source}", dir.display())]
    Io {
        /// The state dir.
        dir: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

impl StateLock {
    /// Take the exclusive lock on `state_dir` (which must exist) without waiting, and write this
    /// process's pid into the lock file (mode 0600).
    pub fn acquire(state_dir: &Path) -> Result<StateLock, StateLockError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = state_dir.join(LOCK_FILE);
        let io = |what: &'static str| {
            move |source: std::io::Error| StateLockError::Io {
                dir: state_dir.to_path_buf(),
                what,
                source,
            }
        };
        // Never truncated on open: the holder's pid stays readable for the refusal message.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("opening gateway.lock"))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(StateLockError::InUse {
                    dir: state_dir.to_path_buf(),
                    pid,
                });
            }
            Err(e) => return Err(io("flock")(e.into())),
        }
        file.set_len(0).map_err(io("writing gateway.lock"))?;
        file.rewind().map_err(io("writing gateway.lock"))?;
        writeln!(file, "{}", std::process::id()).map_err(io("writing gateway.lock"))?;
        Ok(StateLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Still holding the lock: clear the pid so it is not read as a holder's, then close the
        // file, which releases the lock. The file stays: removing it would let a gateway that
        // opened the old inode and one that creates a new file both "hold" the lock.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_in_one_process_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(first.path()).unwrap(),
            format!("{pid}\n")
        );
        match StateLock::acquire(dir.path()) {
            Err(e @ StateLockError::InUse { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!(
                        "is in use by ward gateway pid {pid}; stop it first"
                    )),
                    "{msg}"
                );
            }
            other => panic!("a second lock on one state dir: {other:?}"),
        }
        drop(first);
        // Released, and the pid cleared: nobody holds it.
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(),
            ""
        );
        let again = StateLock::acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn a_missing_state_dir_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = StateLock::acquire(&missing).unwrap_err();
        assert!(matches!(err, StateLockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
