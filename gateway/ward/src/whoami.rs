//! `ward whoami`: who the local identity says you are, read from the certificate alone (no
//! gateway is asked), and which gateway the other commands would use.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use ward_ca::{Clock, SystemClock};
use ward_core::Escaped;

use crate::show;

/// `ward whoami`.
#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Your identity: PREFIX.crt (default ~/.ward/identity, written by `ward login`).
    #[arg(long, env = "WARD_IDENTITY", value_name = "PREFIX")]
    identity: Option<PathBuf>,
    /// The gateway the other commands would use (shown, not contacted).
    #[arg(long, env = "WARD_GATEWAY", value_name = "HOST:PORT")]
    gateway: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Run `ward whoami`.
pub fn run(args: WhoamiArgs) -> anyhow::Result<ExitCode> {
    let prefix = match &args.identity {
        Some(p) => p.clone(),
        None => ward_client::home_dir()
            .map(|h| h.join(".ward").join("identity"))
            .context("no --identity given and $HOME is not set")?,
    };
    let crt = ward_ca::Issued::cert_path(&prefix);
    let pem = std::fs::read_to_string(&crt).with_context(|| {
        format!(
            "no identity at {}: run `ward login` (or pass --identity PREFIX)",
            crt.display()
        )
    })?;
    let now = SystemClock.now();
    let me = ward_ca::inspect(&pem, None, now)
        .with_context(|| format!("{} is not a usable certificate", crt.display()))?;
    let expired = me.remaining_seconds <= 0;
    if args.json {
        let out = serde_json::json!({
            "identity": crt.display().to_string(),
            "principal": me.principal,
            "kind": me.kind.map(|k| k.to_string()),
            "name": me.name,
            "org": me.org,
            "roles": me.roles,
            "serial": me.serial,
            "not_before": me.not_before,
            "not_after": me.not_after,
            "expired": expired,
            "is_ca": me.is_ca,
            "gateway": args.gateway,
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    let or_dash = |v: Option<String>| v.map(|v| Escaped(&v).to_string()).unwrap_or("-".into());
    let roles = if me.roles.is_empty() {
        "-".to_owned()
    } else {
        Escaped(&me.roles.join(",")).to_string()
    };
    let validity = if expired {
        format!(
            "EXPIRED at {}: run `ward login` for a new certificate",
            show::when_text(&me.not_after)
        )
    } else {
        format!(
            "until {} ({} left)",
            show::when_text(&me.not_after),
            me.remaining
        )
    };
    let gateway = match &args.gateway {
        Some(g) => Escaped(g).to_string(),
        None => "none set: pass --gateway HOST:PORT or set WARD_GATEWAY".into(),
    };
    let mut t = show::Table::new(&["", ""]).without_head();
    for (k, v) in [
        ("identity", crt.display().to_string()),
        ("principal", or_dash(me.principal.clone())),
        ("kind", or_dash(me.kind.map(|k| k.to_string()))),
        ("name", or_dash(me.name.clone())),
        ("org", or_dash(me.org.clone())),
        ("roles", roles),
        ("serial", me.serial.clone()),
        ("valid", validity),
        ("gateway", gateway),
    ] {
        t.row(vec![format!("{k}:"), v]);
    }
    t.print()?;
    if me.is_ca {
        println!("warning: this is a CA certificate, not an identity: the gateway refuses it; use one from `ward login` or `ward ca issue`");
    }
    Ok(ExitCode::SUCCESS)
}
