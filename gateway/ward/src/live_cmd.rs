//! `ward live` and `ward end`: the sessions in progress and ending one (security and admin),
//! through the same live service as the web console's "Live now" page.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use ward_client::AccessAnswer;
use ward_core::frame::LiveOp;
use ward_core::Escaped;

use crate::GatewayClientArgs;

/// `ward live`.
#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gw: GatewayClientArgs,
}

/// `ward end`.
#[derive(Debug, Args)]
pub struct EndArgs {
    /// The session id (from `ward live`).
    session: String,
    /// Why (told to the user whose session ends, audited).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    gw: GatewayClientArgs,
}

/// Lists the live sessions.
pub async fn live(args: LiveArgs) -> anyhow::Result<ExitCode> {
    match args.gw.client()?.live(LiveOp::List).await? {
        AccessAnswer::Lines(l) if !args.json => crate::access_cmd::table_or(
            &l,
            &[
                ("SESSION", "id"),
                ("PRINCIPAL", "principal"),
                ("DEVICE", "device"),
                ("SINCE", "since"),
                ("SOURCE", "source"),
                ("UP", "bytes_up"),
                ("DOWN", "bytes_down"),
                ("BREAK-GLASS", "break_glass"),
                ("RULE", "rule"),
            ],
            "no live sessions",
        )?,
        other => return done(other),
    }
    Ok(ExitCode::SUCCESS)
}

/// Ends one live session.
pub async fn end(args: EndArgs) -> anyhow::Result<ExitCode> {
    let op = LiveOp::End {
        session: args.session.clone(),
        reason: args.reason.clone(),
    };
    done(args.gw.client()?.live(op).await?)
}

fn done(answer: AccessAnswer) -> anyhow::Result<ExitCode> {
    match answer {
        AccessAnswer::Message(m) => println!("{}", Escaped(&m)),
        AccessAnswer::Lines(l) => std::io::stdout().write_all(&l)?,
        AccessAnswer::Reply(r) => println!("{}", Escaped(&format!("{r:?}"))),
    }
    Ok(ExitCode::SUCCESS)
}
