//! `ward store migrate`: move an existing gateway's state (its SQLite `ward.db`) into the
//! PostgreSQL several gateways share (docs/deployment.md). Runs on the gateway host, with the
//! gateway stopped; copies every table in one transaction into an empty database, prints the
//! counts and checks them after the commit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a gateway's SQLite store (locks, users and their login back-off, access requests,
    /// approvals and grants, the session index, the vault, device pins) into an empty PostgreSQL
    /// database, in one transaction; the counts are printed and checked after the commit. Stop
    /// the gateway first. Vault values and TOTP seeds are copied sealed: every gateway on the
    /// database needs the source gateway's key file (its vault.key).
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The source: `sqlite:PATH`, PATH the gateway's state dir or its ward.db.
    #[arg(long, value_name = "sqlite:PATH")]
    from: String,
    /// The target: `postgres://USER@HOST:PORT/DATABASE` (no password in it: see
    /// --password-file). Its schema is created (or brought up to date) first; its tables must be
    /// empty.
    #[arg(long, value_name = "postgres://…")]
    to: String,
    /// A file holding the database password (mode 0600). Without it, PGPASSWORD.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Require TLS to the database, verified against this CA certificate (PEM). Without it (and
    /// without --tls-require), the connection is not encrypted: loopback or a trusted network
    /// only.
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Require TLS to the database, verified against the system's roots.
    #[arg(long)]
    tls_require: bool,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: StoreCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StoreCommand::Migrate(args) => migrate(args),
    }
}

fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let Some(source) = args.from.strip_prefix("sqlite:") else {
        bail!(
            "--from {:?}: give the source as sqlite:PATH (the gateway's state dir or its ward.db)",
            args.from
        );
    };
    let source = PathBuf::from(source);
    if !(args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")) {
        bail!("--to: give the target as postgres://USER@HOST:PORT/DATABASE");
    }
    let tls = match (args.tls_ca_file, args.tls_require) {
        (Some(ca), _) => ward_store::pg::PgTls::Require { ca_file: Some(ca) },
        (None, true) => ward_store::pg::PgTls::Require { ca_file: None },
        (None, false) => ward_store::pg::PgTls::Disable,
    };
    // The key is not used (secrets are copied sealed); the source's, should anything ask.
    let state_dir = if source.is_dir() {
        source.clone()
    } else {
        source.parent().map(PathBuf::from).unwrap_or_default()
    };
    let mut options = ward_store::pg::PgOptions::new(
        args.to.clone(),
        ward_store::keywrap::KeySource::File(state_dir.join(ward_store::keywrap::DEFAULT_KEY_FILE)),
    );
    options.password_file = args.password_file;
    options.tls = tls;
    options.pool_size = 2;
    let target = ward_store::pg::PgStore::connect(&options)
        .with_context(|| format!("connecting to {}", args.to))?;
    let done = ward_store::pg::import::import_sqlite(&source, &target)
        .with_context(|| format!("migrating {} to {}", source.display(), args.to))?;
    if args.json {
        println!("{}", serde_json::to_string(&done)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("copied {} into {}", done.source.display(), args.to);
    println!("{:<20} {:>10} {:>10}", "TABLE", "SOURCE", "TARGET");
    for t in &done.tables {
        println!("{:<20} {:>10} {:>10}", t.table, t.source, t.target);
    }
    let rows: u64 = done.tables.iter().map(|t| t.target).sum();
    println!(
        "verified: {rows} row(s) in {} table(s), the same counts as the source",
        done.tables.len()
    );
    if let Some(g) = &done.gateway {
        println!("session index rows recorded by gateway {g}");
    }
    if !done.key_fingerprints.is_empty() {
        println!(
            "secrets are copied sealed under key(s) {}: every gateway on this database needs that key file (the source's vault.key, mode 0600)",
            done.key_fingerprints.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
