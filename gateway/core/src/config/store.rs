//! `[store]`: where the gateway keeps its state (docs/deployment.md).
//!
//! Absent (the default): the embedded SQLite file `<state_dir>/ward.db`, one gateway, nothing to
//! set up. With `url = "postgres://ward@db.example:5432/ward"` the gateway keeps users and their
//! login back-off, access requests and grants, locks, the session index, the vault and device pins
//! in that PostgreSQL, shared with every other gateway configured with the same `url`. The
//! password is never in the URL (refused there: config files are read by more people than the
//! database's password should be): it is read from `password_file` (0600) or `PGPASSWORD`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, ConfigErrorKind, Cx};

/// The `[store]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// The shared PostgreSQL (`postgres://user@host:port/db`, no password in it); `None`: the
    /// embedded SQLite store in the state dir.
    pub postgres: Option<PostgresConfig>,
}

/// A PostgreSQL store (`[store] url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/dbname` (or `postgresql://`), without a password.
    pub url: String,
    /// A file holding the role's password (one line; mode 0600). `None`: `PGPASSWORD`, or no
    /// password (peer/cert auth).
    pub password_file: Option<PathBuf>,
    /// TLS to the database: off (`tls = "disable"`, the default: a loopback or private network)
    /// or required, verified against `tls_ca_file` (or the system's roots when absent).
    pub tls: StoreTls,
    /// Connections in the pool. Default 8.
    pub pool: usize,
    /// How long connecting (and the first migration wait) may take. Default 10s.
    pub connect_timeout: Duration,
}

/// TLS to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTls {
    /// Plain TCP.
    Disable,
    /// TLS required, the server's certificate verified against `ca_file` (or the system roots).
    Require {
        /// A PEM file of the CA(s) the database's certificate chains to.
        ca_file: Option<PathBuf>,
    },
}

/// The pool size when `[store] pool` is absent.
pub const DEFAULT_POOL: usize = 8;
/// The largest pool accepted (beyond it a typo, and PostgreSQL's `max_connections` is 100).
pub const MAX_POOL: usize = 64;
/// The connect timeout when `[store] connect_timeout` is absent.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    url: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    tls: Option<Spanned<String>>,
    tls_ca_file: Option<Spanned<PathBuf>>,
    pool: Option<Spanned<u32>>,
    connect_timeout: Option<Spanned<String>>,
}

/// Why a store URL is refused (the text never repeats the URL: it may hold a password).
pub fn check_store_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| {
            "only PostgreSQL is supported: postgres://USER@HOST:PORT/DBNAME (leave [store] out for the embedded SQLite store)".to_string()
        })?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err(
                "the URL holds a password: put it in password_file (mode 0600) instead, the config file is read by more people than the database's password should be"
                    .into(),
            );
        }
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err("no host: postgres://USER@HOST:PORT/DBNAME".into());
    }
    if url.contains("password=") {
        return Err(
            "the URL holds a password parameter: put the password in password_file (mode 0600)"
                .into(),
        );
    }
    Ok(())
}

impl StoreConfig {
    /// Joins the relative file paths (`password_file`, `tls_ca_file`) onto `base`.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let Some(pg) = self.postgres.as_mut() else {
            return;
        };
        let ca = match &mut pg.tls {
            StoreTls::Require { ca_file } => ca_file.as_mut(),
            StoreTls::Disable => None,
        };
        for path in [pg.password_file.as_mut(), ca].into_iter().flatten() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}

impl Cx<'_> {
    pub(super) fn store(&self, raw: RawStore) -> Result<StoreConfig, ConfigError> {
        let Some(url) = raw.url else {
            // Every other key configures the PostgreSQL store: without a url they would be
            // silently ignored.
            let stray = [
                raw.password_file
                    .as_ref()
                    .map(|s| ("store.password_file", s.span())),
                raw.tls.as_ref().map(|s| ("store.tls", s.span())),
                raw.tls_ca_file
                    .as_ref()
                    .map(|s| ("store.tls_ca_file", s.span())),
                raw.pool.as_ref().map(|s| ("store.pool", s.span())),
                raw.connect_timeout
                    .as_ref()
                    .map(|s| ("store.connect_timeout", s.span())),
            ];
            if let Some((field, span)) = stray.into_iter().flatten().next() {
                return Err(self.err(
                    span,
                    field,
                    ConfigErrorKind::Syntax(
                        "set [store] url too (this key configures the PostgreSQL store; without a url the gateway uses its embedded SQLite store)"
                            .into(),
                    ),
                ));
            }
            return Ok(StoreConfig::default());
        };
        if let Err(why) = check_store_url(url.get_ref()) {
            return Err(self.err(url.span(), "store.url", ConfigErrorKind::Syntax(why)));
        }
        let ca_file = raw.tls_ca_file.map(Spanned::into_inner);
        let tls = match raw.tls.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None if ca_file.is_some() => StoreTls::Require { ca_file },
            None | Some(("disable", _)) => {
                if ca_file.is_some() {
                    return Err(self.err(
                        raw.tls.as_ref().map(|s| s.span()).unwrap_or_default(),
                        "store.tls",
                        ConfigErrorKind::Syntax(
                            "tls = \"disable\" with a tls_ca_file: say tls = \"require\" (or drop the CA file)"
                                .into(),
                        ),
                    ));
                }
                StoreTls::Disable
            }
            Some(("require", _)) => StoreTls::Require { ca_file },
            Some((other, span)) => {
                return Err(self.err(
                    span,
                    "store.tls",
                    ConfigErrorKind::Syntax(format!(
                        "{other:?}: say \"require\" (TLS to the database, verified) or \"disable\""
                    )),
                ))
            }
        };
        let pool = match raw.pool {
            None => DEFAULT_POOL,
            Some(p) => {
                let n = *p.get_ref() as usize;
                if n == 0 || n > MAX_POOL {
                    return Err(self.err(
                        p.span(),
                        "store.pool",
                        ConfigErrorKind::Limit(format!("must be 1 to {MAX_POOL}")),
                    ));
                }
                n
            }
        };
        let connect_timeout = self.duration(
            raw.connect_timeout,
            "store.connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        Ok(StoreConfig {
            postgres: Some(PostgresConfig {
                url: url.into_inner(),
                password_file: raw.password_file.map(Spanned::into_inner),
                tls,
                pool,
                connect_timeout,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{Config, SAMPLE_CONFIG};

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{SAMPLE_CONFIG}\n[store]\n{extra}\n"), "ward.toml")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_is_sqlite() {
        let c = Config::parse(SAMPLE_CONFIG, "ward.toml").unwrap();
        assert_eq!(c.store, StoreConfig::default());
        assert_eq!(parse("").unwrap().store, StoreConfig::default());
    }

    #[test]
    fn a_postgres_url_with_its_keys() {
        let c = parse(
            "url = \"postgres://ward@db.example:5432/ward\"\npassword_file = \"/etc/ward/db.pw\"\ntls = \"require\"\ntls_ca_file = \"/etc/ward/db-ca.pem\"\npool = 4\nconnect_timeout = \"3s\"",
        )
        .unwrap();
        let pg = c.store.postgres.unwrap();
        assert_eq!(pg.url, "postgres://ward@db.example:5432/ward");
        assert_eq!(pg.password_file, Some(PathBuf::from("/etc/ward/db.pw")));
        assert_eq!(
            pg.tls,
            StoreTls::Require {
                ca_file: Some(PathBuf::from("/etc/ward/db-ca.pem"))
            }
        );
        assert_eq!(pg.pool, 4);
        assert_eq!(pg.connect_timeout, Duration::from_secs(3));
        let d = parse("url = \"postgresql://ward@127.0.0.1/ward\"")
            .unwrap()
            .store
            .postgres
            .unwrap();
        assert_eq!(d.tls, StoreTls::Disable);
        assert_eq!(d.pool, DEFAULT_POOL);
    }

    /// Every refusal names the field and says what to do.
    #[test]
    fn refusals_name_the_field() {
        for (extra, field, says) in [
            (
                "url = \"postgres://ward:hunter2@db/ward\"",
                "store.url",
                "password_file",
            ),
            (
                "url = \"postgres://ward@db/ward?password=x\"",
                "store.url",
                "password_file",
            ),
            (
                "url = \"mysql://ward@db/ward\"",
                "store.url",
                "only PostgreSQL",
            ),
            ("url = \"postgres:///ward\"", "store.url", "no host"),
            (
                "url = \"postgres://ward@db/ward\"\ntls = \"maybe\"",
                "store.tls",
                "require",
            ),
            (
                "url = \"postgres://ward@db/ward\"\npool = 0",
                "store.pool",
                "1 to",
            ),
            (
                "url = \"postgres://ward@db/ward\"\npool = 1000",
                "store.pool",
                "1 to",
            ),
            ("password_file = \"/x\"", "store.password_file", "url"),
            (
                "url = \"postgres://ward@db/ward\"\nuser = \"x\"",
                "user",
                "unknown",
            ),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(field) && e.contains(says), "{extra}: {e}");
        }
        // The refused password never appears in the error.
        let e = parse("url = \"postgres://ward:hunter2@db/ward\"").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
