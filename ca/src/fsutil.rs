//! Writing files atomically with the right mode from the start.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::CaError;

/// Mode for private keys.
pub(crate) const PRIVATE: u32 = 0o600;
/// Mode for certificates and metadata.
pub(crate) const PUBLIC: u32 = 0o644;

fn open_new(path: &Path, mode: u32) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    opts.open(path)
}

/// Write `data` to `path` by creating a sibling temporary file with `mode` (so a key is never
/// readable by others, not even for an instant), syncing it, and renaming it over `path`.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| CaError::bad_file(path, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", hex::encode(rand::random::<[u8; 6]>())));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = open_new(&tmp, mode)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(CaError::io(path, e));
    }
    Ok(())
}

/// Append one line to `path`, creating it with `mode` if needed, and sync it.
pub(crate) fn append_line(path: &Path, line: &str, mode: u32) -> Result<(), CaError> {
    let mut opts = OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = opts.open(path)?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        f.write_all(&buf)?;
        f.sync_data()
    })();
    result.map_err(|e| CaError::io(path, e))
}

/// Read a file as UTF-8, turning "not found" into [`CaError::Missing`].
pub(crate) fn read_ca_file(dir: &Path, name: &str) -> Result<String, CaError> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CaError::Missing {
            dir: dir.to_path_buf(),
            path,
        }),
        Err(e) => Err(CaError::io(path, e)),
    }
}

/// Refuse a private key file that group or others can read or write.
pub(crate) fn check_private(path: &Path) -> Result<(), CaError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|e| CaError::io(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Create `dir` (mode 0700 if it is new) and its parents.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| CaError::io(dir, e))
}

/// Create `path` empty with `mode` if it does not exist; leave it alone if it does.
pub(crate) fn append_line_if_missing(path: &Path, mode: u32) -> Result<(), CaError> {
    match open_new(path, mode) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CaError::io(path, e)),
    }
}
