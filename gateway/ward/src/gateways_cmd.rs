//! `ward gateways`: the gateways sharing this gateway's store, with their health (on a gateway
//! host: read from the store `[store]` names; docs/deployment.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use ward_ca::{Clock, SystemClock};
use ward_core::Escaped;
use ward_server::fleet::{health, Health};

use crate::show;

#[derive(Debug, Args)]
pub struct GatewaysArgs {
    /// The gateway's config file: its `[store]` (the shared PostgreSQL, or the state dir's
    /// SQLite) is read.
    #[arg(long)]
    config: PathBuf,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists the gateways registered in the store. Exits 1 when one is down (for monitoring).
pub fn run(args: GatewaysArgs) -> anyhow::Result<ExitCode> {
    let config = ward_server::gateway::load_config(&args.config)?;
    let backend = ward_store::backend::Backend::open(&config, None)
        .context("opening the store ([store] in the config)")?;
    let rows = backend
        .gateways
        .gateways()
        .context("reading the gateway registry")?;
    let now = SystemClock.now();
    let mut down = 0;
    if args.json {
        for r in &rows {
            let h = health(r, now);
            if h != Health::Up {
                down += 1;
            }
            let line = serde_json::json!({
                "id": r.id,
                "quic": r.quic,
                "tcp": r.tcp,
                "web": r.web,
                "version": r.version,
                "started": ward_recording::audit::rfc3339_ms(r.started),
                "last_seen": ward_recording::audit::rfc3339_ms(r.last_seen),
                "up": h == Health::Up,
                "health": h.to_string(),
            });
            println!("{line}");
        }
    } else {
        println!("store: {}", backend.describe);
        if rows.is_empty() {
            println!("no gateway has registered yet");
        }
        let mut table = show::Table::new(&[
            "GATEWAY",
            "QUIC",
            "TCP",
            "WEB",
            "VERSION",
            "STARTED",
            "LAST SEEN",
            "HEALTH",
        ]);
        for r in &rows {
            let h = health(r, now);
            if h != Health::Up {
                down += 1;
            }
            table.row(vec![
                Escaped(&r.id).to_string(),
                Escaped(&r.quic).to_string(),
                Escaped(r.tcp.as_deref().unwrap_or("-")).to_string(),
                Escaped(r.web.as_deref().unwrap_or("-")).to_string(),
                Escaped(&r.version).to_string(),
                show::when(r.started),
                show::when(r.last_seen),
                h.to_string(),
            ]);
        }
        if !rows.is_empty() {
            table.print()?;
        }
    }
    Ok(if down == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
