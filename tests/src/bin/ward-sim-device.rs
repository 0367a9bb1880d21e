//! `ward-sim-device`: one of Ward's simulated legacy devices (`ward::sim`) in its own process, so a
//! test can run it where it likes (e.g. inside a network namespace with `ip netns exec`), plus a
//! bounded TCP connect probe for showing what a host can and cannot reach.
//!
//! ```text
//! ward-sim-device telnet|http|echo --listen ADDR
//!     prints "listening ADDR" once bound; then, for each line "count" read on stdin, prints
//!     "count N": how many TCP connections it has accepted so far. Runs until killed.
//! ward-sim-device probe ADDR [--timeout-ms N]
//!     one TCP connect to ADDR within N ms (default 2000): prints "connected LOCAL -> ADDR" and
//!     exits 0, or "failed: REASON" and exits 1.
//! ```
//!
//! A test helper: it only listens on and connects to the addresses it is given.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};

const USAGE: &str = "usage: ward-sim-device telnet|http|echo --listen ADDR\n       ward-sim-device probe ADDR [--timeout-ms N]";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ward-sim-device: {e:#}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [kind @ ("telnet" | "http" | "echo"), "--listen", addr] => {
            let addr: SocketAddr = addr.parse().with_context(|| format!("bad ADDR {addr:?}"))?;
            rt.block_on(serve(kind, addr))?;
            Ok(ExitCode::SUCCESS)
        }
        ["probe", addr] => rt.block_on(probe(addr, 2000)),
        ["probe", addr, "--timeout-ms", ms] => {
            let ms: u64 = ms
                .parse()
                .with_context(|| format!("bad --timeout-ms {ms:?}"))?;
            rt.block_on(probe(addr, ms))
        }
        _ => bail!("bad arguments {args:?}"),
    }
}

async fn serve(kind: &str, addr: SocketAddr) -> Result<()> {
    let dev = match kind {
        "telnet" => ward::sim::telnet_console(addr).await,
        "http" => ward::sim::http_console(addr).await,
        _ => ward::sim::echo(addr).await,
    }
    .with_context(|| format!("listening on {addr}"))?;
    println!("listening {}", dev.addr);
    // The count is taken when asked, so an answer read after a client saw the device's first
    // bytes includes that client's connection (the device counts a connection when it accepts it).
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        match line.trim() {
            "count" => println!("count {}", dev.connections.load(Ordering::SeqCst)),
            other => eprintln!("ward-sim-device: unknown command {other:?} (try \"count\")"),
        }
    }
    // stdin closed (e.g. /dev/null): keep serving until killed.
    std::future::pending::<()>().await;
    Ok(())
}

async fn probe(addr: &str, timeout_ms: u64) -> Result<ExitCode> {
    let addr: SocketAddr = addr.parse().with_context(|| format!("bad ADDR {addr:?}"))?;
    let limit = Duration::from_millis(timeout_ms);
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(sock)) => {
            let local = sock.local_addr().context("local address")?;
            println!("connected {local} -> {addr}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => {
            println!("failed: {e}");
            Ok(ExitCode::from(1))
        }
        Err(_) => {
            println!("failed: no connection within {limit:?}");
            Ok(ExitCode::from(1))
        }
    }
}
