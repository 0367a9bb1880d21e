//! `ward sessions`, `ward replay`, `ward export`, `ward audit`: the security team's commands, on the
//! gateway host (`--config`/`--state-dir`) or through the gateway (`--gateway`, security and admin
//! identities only, every access audited by the gateway).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ward_ca::{Clock, SystemClock};
use ward_client::{Client, Transport};
use ward_core::frame::Review;
use ward_recording::trail::Level;
use ward_recording::{Keyring, VerifyReport};
use ward_server::review::{self, ExportFormat, Filter, ReplayOptions, SessionSummary};

use crate::show;

/// Where recordings and the audit log are read from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// On the gateway host: read the state dir named in this gateway config.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// On the gateway host: read this state dir directly.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Through a gateway, HOST:PORT (security and admin identities only; every access is audited).
    #[arg(long, env = "WARD_GATEWAY", value_name = "HOST:PORT")]
    gateway: Option<String>,
    /// With --gateway: your identity (PREFIX.crt, PREFIX.key; default ~/.ward/identity).
    #[arg(long, env = "WARD_IDENTITY", value_name = "PREFIX")]
    identity: Option<PathBuf>,
    /// With --gateway: Ward's root certificate (default: beside the identity, then ~/.ward/root.crt).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// With --gateway: how to reach it.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
    /// Verify against this public key (hex, from `ward audit pubkey`) instead of the one the
    /// source reports — pin it when you do not trust the host holding the recordings.
    #[arg(long, value_name = "HEX")]
    pubkey: Option<String>,
}

/// The reviewer's key for encrypted recordings.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// An age identity file (AGE-SECRET-KEY-1…, as `age-keygen -o FILE` writes it; mode 0600):
    /// the private key of one of the gateway's `[recording] recipients`. Encrypted recordings are
    /// decrypted on this machine with it, also through --gateway (which sends them as stored).
    /// Not needed for recordings stored in plaintext, nor by `ward audit verify`.
    #[arg(long, env = "WARD_IDENTITY_KEY", value_name = "FILE")]
    identity_key: Option<PathBuf>,
}

impl KeyArgs {
    fn load(&self) -> anyhow::Result<Option<review::IdentityKey>> {
        self.identity_key
            .as_deref()
            .map(review::IdentityKey::read)
            .transpose()
    }
}

/// A listing's error as the command line says it: an encrypted recording a search could not
/// open names `--identity-key`.
fn cli_list_error(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<review::Unsearched>() {
        Some(u) => anyhow::anyhow!("{}", u.for_cli()),
        None => e,
    }
}

enum Source {
    Local { state_dir: PathBuf },
    Remote { client: Box<Client> },
}

impl SourceArgs {
    fn open(&self) -> anyhow::Result<Source> {
        match (&self.config, &self.state_dir, &self.gateway) {
            (Some(cfg), None, None) => {
                let config = ward_server::gateway::load_config(cfg)?;
                Ok(Source::Local { state_dir: config.gateway.state_dir })
            }
            (None, Some(dir), None) => Ok(Source::Local { state_dir: dir.clone() }),
            (None, None, Some(gw)) => Ok(Source::Remote { client: Box::new(crate::make_client(gw, self.identity.as_ref(), self.ca.as_ref(), self.transport)?) }),
            (None, None, None) => bail!("say where the recordings are: --config FILE or --state-dir DIR on the gateway host, or --gateway HOST:PORT"),
            _ => bail!("give only one of --config, --state-dir, --gateway"),
        }
    }
}

impl Source {
    /// Every key recordings and the log may be signed with: the pinned one, or the source's
    /// keyring (all keys across rotations).
    async fn key(&self, pinned: Option<&String>) -> anyhow::Result<Keyring> {
        if let Some(hex) = pinned {
            return Ok(Keyring::single(review::parse_public_key(hex)?, ""));
        }
        match self {
            Source::Local { state_dir } => review::keyring(state_dir),
            Source::Remote { client } => crate::audit_cmd::remote_keyring(client).await,
        }
    }

    async fn recording(&self, id: &str, purpose: &str, force: bool) -> anyhow::Result<Vec<u8>> {
        match self {
            Source::Local { state_dir } => review::read_recording(state_dir, id),
            Source::Remote { client } => {
                // Large recordings take a while through the gateway: bytes so far, on a terminal.
                let bar =
                    show::downloading(&format!("fetching recording {id}"), purpose == "verify");
                let got = client
                    .review_with(
                        Review::Recording {
                            session_id: id.to_string(),
                            purpose: purpose.into(),
                            force,
                        },
                        &|n| bar.set_position(n),
                    )
                    .await;
                bar.finish_and_clear();
                got
            }
        }
    }

    /// A session's operations: from the gateway (which reads, masks and audits), or on the host
    /// from the recording (verified first; masked: unmasked patient data only through a gateway,
    /// where asking is audited). With an identity key through a gateway, the recording is
    /// fetched (audited as `operations_viewed` or `phi_viewed`), verified and read here: the
    /// gateway may not be able to open it.
    async fn operations(
        &self,
        pinned: Option<&String>,
        id: &str,
        show_phi: bool,
        force: bool,
        identity: Option<&review::IdentityKey>,
    ) -> anyhow::Result<(Vec<review::OpRow>, Option<String>)> {
        match (self, identity) {
            (Source::Local { state_dir }, _) => {
                if show_phi {
                    bail!("--show-phi is for a security or admin identity through the gateway, which audits it (phi_viewed): use --gateway HOST:PORT; on the host, `ward ops` shows operations with patient data masked");
                }
                let key = self.key(pinned).await?;
                let bytes = review::read_recording(state_dir, id)?;
                let (verified, note) = readable(&bytes, &key, id, force, "list the operations of")?;
                let rows = review::operations(verified, false, identity)
                    .map_err(|e| anyhow::anyhow!("{}", e.for_cli()))?;
                Ok((rows, note))
            }
            (Source::Remote { .. }, Some(identity)) => {
                let key = self.key(pinned).await?;
                let purpose = if show_phi {
                    "operations-phi"
                } else {
                    "operations"
                };
                let bytes = self.recording(id, purpose, force).await?;
                let (verified, note) = readable(&bytes, &key, id, force, "list the operations of")?;
                let rows = review::operations(verified, show_phi, Some(identity))
                    .map_err(|e| anyhow::anyhow!("{}", e.for_cli()))?;
                Ok((rows, note))
            }
            (Source::Remote { client }, None) => {
                let body = client
                    .review(Review::Operations {
                        session_id: id.to_string(),
                        show_phi,
                        force,
                    })
                    .await?;
                let note = force.then(|| format!("ward: --force: if recording {id} fails verification, only its verified records were read (audited by the gateway)"));
                Ok((review::ops_of_json_lines(&body)?, note))
            }
        }
    }

    async fn audit_log(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Source::Local { state_dir } => {
                let p = state_dir.join(ward_server::audit::AUDIT_LOG);
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
            }
            Source::Remote { client } => client.review(Review::AuditLog).await,
        }
    }

    async fn list(&self, key: &Keyring, filter: Filter) -> anyhow::Result<Vec<SessionSummary>> {
        self.list_with(key, filter, None).await
    }

    /// [`Source::list`], encrypted recordings searched with `identity`: on the host, opened
    /// here; through a gateway, with a search (`grep`, `op`), the sessions matching the other
    /// filters are listed by the gateway and each recording fetched (audited as
    /// `recording_searched`), verified and searched here.
    async fn list_with(
        &self,
        key: &Keyring,
        filter: Filter,
        identity: Option<&review::IdentityKey>,
    ) -> anyhow::Result<Vec<SessionSummary>> {
        match (self, identity) {
            (Source::Local { state_dir }, _) => {
                review::list_with(state_dir, key, &filter, identity, &mut |_, _| {})
                    .map_err(cli_list_error)
            }
            (Source::Remote { client }, Some(identity))
                if filter.grep.is_some() || filter.op.is_some() =>
            {
                let candidates = Filter {
                    grep: None,
                    op: None,
                    ..filter.clone()
                };
                let all = remote_list(client, candidates).await?;
                let bar = show::progress(all.len() as u64, "searching recordings", false);
                let mut out = Vec::new();
                for s in all {
                    let bytes = self.recording(&s.id, "search", false).await?;
                    let found = review::summarise_with(&bytes, key, &filter, &s.id, Some(identity))
                        .map_err(|e| anyhow::anyhow!("{}", e.for_cli()))?;
                    out.extend(found);
                    bar.inc(1);
                }
                bar.finish_and_clear();
                Ok(out)
            }
            (Source::Remote { client }, _) => remote_list(client, filter).await,
        }
    }
}

/// The gateway's listing (`Review::ListSessions`).
async fn remote_list(client: &Client, filter: Filter) -> anyhow::Result<Vec<SessionSummary>> {
    let body = client
        .review(Review::ListSessions {
            principal: filter.principal,
            device: filter.device,
            since_unix: filter.since,
            until_unix: filter.until,
            grep: filter.grep,
            operation: filter.op,
        })
        .await?;
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).context("gateway sent a malformed session line"))
        .collect()
}

/// `ward sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// Only this principal (name, org/name, or "kind org/name").
    #[arg(long)]
    principal: Option<String>,
    /// Only this device.
    #[arg(long)]
    device: Option<String>,
    /// Started at or after: RFC 3339, a date, or a duration ago (2h or -2h, 7d).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    since: Option<String>,
    /// Started before: RFC 3339, a date, or a duration ago.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    until: Option<String>,
    /// Only sessions whose recorded bytes (either direction) contain this text.
    #[arg(long, value_name = "TEXT")]
    grep: Option<String>,
    /// Only sessions that did a matching operation: PROTOCOL:OPERATION, `*` matching anything,
    /// e.g. dicom:C-STORE, hl7:ORM^O01, http:POST (also finds "POST /config"), 'telnet:rate *'.
    #[arg(long, value_name = "PATTERN", value_parser = parse_op_pattern)]
    op: Option<String>,
    /// Print JSON lines (with every operation of each session).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    source: SourceArgs,
}

/// `ward replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Session id (from `ward sessions`).
    session: String,
    /// Playback speed (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Shorten any pause to at most this many seconds.
    #[arg(long, value_name = "SECS")]
    skip_idle: Option<f64>,
    /// Start this many seconds into the session.
    #[arg(long, value_name = "OFFSET", default_value_t = 0.0)]
    from: f64,
    /// Also show what the client typed (shown in reverse video), including input the device never echoed.
    #[arg(long)]
    input: bool,
    /// Print everything at once, without the original timing.
    #[arg(long)]
    no_timing: bool,
    /// Replay even if the recording fails verification (audited by the gateway).
    #[arg(long)]
    force: bool,
    /// Pass the device's output to your terminal unfiltered. By default escape sequences that
    /// could query or reconfigure your terminal (titles, clipboard, status reports, DCS) are
    /// dropped, since a compromised device controls them.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    source: SourceArgs,
}

/// `ward export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Session id (from `ward sessions`).
    session: String,
    /// Output format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Output path (raw writes PATH.up and PATH.down); `-` for standard output.
    #[arg(long, value_name = "PATH", allow_hyphen_values = true)]
    out: PathBuf,
    /// Export a recording that fails verification (a torn tail, a live session): only its
    /// verified records, up to the last valid checkpoint (audited by the gateway as forced).
    #[arg(long)]
    force: bool,
    /// asciicast: keep every escape sequence the device sent (by default the ones `ward replay`
    /// drops are dropped from the export too).
    #[arg(long)]
    raw: bool,
    /// ops: patient data unmasked (security and admin identities through the gateway only;
    /// audited as `phi_viewed`).
    #[arg(long)]
    show_phi: bool,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    source: SourceArgs,
}

/// `ward ops`.
#[derive(Debug, Args)]
pub struct OpsArgs {
    /// Session id (from `ward sessions`).
    session: String,
    /// Print JSON lines, one operation per line.
    #[arg(long)]
    json: bool,
    /// Show patient data (DICOM PatientName/PatientID, HL7 PID, …) instead of `***`. Security
    /// and admin identities, through the gateway only; audited as `phi_viewed`.
    #[arg(long)]
    show_phi: bool,
    /// Read a recording that fails verification: its verified records only (audited by the
    /// gateway as forced).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    source: SourceArgs,
}

/// `ward audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify hash chains and signatures offline: one recording, every recording and the audit log
    /// cross-checked against each other (--all), or by default the audit log. Names the first bad
    /// record and what is wrong.
    Verify(VerifyArgs),
    /// Print the gateway's current public key (hex) that signs recordings and the audit log;
    /// with --all, every key it ever had (id, created, current or retired).
    Pubkey(PubkeyArgs),
    /// Make a new signing key (admin): the old private key is deleted, its public key kept in the
    /// keyring so everything it signed still verifies. Through a running gateway (--gateway,
    /// audited `signing_key_rotated`), or on the host with the gateway stopped (--state-dir or
    /// --config).
    RotateKey(crate::audit_cmd::RotateArgs),
}

/// `ward audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A session id; without it the audit log is verified.
    session: Option<String>,
    /// Verify every recording and the audit log, and cross-check them: every session the log
    /// opened with a recording has one, every recording was opened in the log, a session the log
    /// closed has a sealed recording whose byte counts match the close.
    #[arg(long, conflicts_with = "session")]
    all: bool,
    /// Also check the audit log (and, with --all or on the host, the recordings) against the
    /// anchors published off the host (`[audit] anchors`): a FILE of anchor lines, or an
    /// http(s):// URL to GET them from. Catches a log cut after a checkpoint, a rewritten
    /// history, a deleted or rewritten recording, and forged anchors.
    #[arg(long, value_name = "FILE|URL", conflicts_with = "session")]
    anchors: Option<String>,
    /// With --anchors URL: a PEM file of the CAs the collector's certificate chains to (default:
    /// the public web roots).
    #[arg(long, value_name = "FILE", requires = "anchors")]
    anchor_ca_file: Option<PathBuf>,
    /// With --anchors: only this gateway's anchors (default: the gateway id of the state dir, or
    /// the id of the gateway's first key).
    #[arg(long, value_name = "ID", requires = "anchors")]
    gateway_id: Option<String>,
    /// Verify with the public keys in this keyring file (JSON lines as in `audit.keys`, or as
    /// `ward audit pubkey --all --json` prints) instead of the ones the source reports: pin them
    /// when you do not trust the host holding the recordings.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    #[command(flatten)]
    source: SourceArgs,
}

/// `ward audit pubkey`.
#[derive(Debug, Args)]
pub struct PubkeyArgs {
    /// Every key the gateway ever had, oldest first: id, created, current or retired (retired
    /// keys' private keys are deleted; their public keys verify what they signed).
    #[arg(long)]
    all: bool,
    /// With --all: the keyring's JSON lines (what `ward audit verify --keys FILE` reads).
    #[arg(long, requires = "all")]
    json: bool,
    #[command(flatten)]
    source: SourceArgs,
}

fn filter(args: &SessionsArgs) -> anyhow::Result<Filter> {
    let now = SystemClock.now();
    Ok(Filter {
        principal: args.principal.clone(),
        device: args.device.clone(),
        since: args
            .since
            .as_deref()
            .map(|t| parse_ago(t, now))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| parse_ago(t, now))
            .transpose()?,
        grep: args.grep.clone(),
        op: args.op.clone(),
    })
}

/// `--op`: checked before anything is read or asked.
fn parse_op_pattern(text: &str) -> Result<String, String> {
    review::OpPattern::parse(text).map(|_| text.to_string())
}

/// `--since`/`--until`: as [`review::parse_time`], and `-2h` reads as `2h` (ago).
fn parse_ago(text: &str, now: time::OffsetDateTime) -> anyhow::Result<i64> {
    let ago = text
        .strip_prefix('-')
        .filter(|d| ward_core::parse_duration(d).is_ok());
    review::parse_time(ago.unwrap_or(text), now)
}

/// `ward sessions` for people: one row per session, aligned to its content.
fn print_sessions(list: &[SessionSummary]) -> anyhow::Result<()> {
    if list.is_empty() {
        println!("no recorded sessions match");
        return Ok(());
    }
    let mut table = show::Table::new(&[
        "SESSION", "WHO", "DEVICE", "START", "SECONDS", "UP", "DOWN", "END", "OPS", "VERIFY",
    ])
    .right(&[4, 5, 6]);
    for s in list {
        let flag = review::flags(s);
        table.row(vec![
            review::printable(&s.id),
            review::printable(&s.principal),
            review::printable(&s.device),
            show::when_unix(s.start_unix),
            format!("{:.1}", s.duration_s),
            s.bytes_up.to_string(),
            s.bytes_down.to_string(),
            review::printable(&s.end_reason),
            review::ops_cell(s),
            format!("{}{flag}", review::printable(&s.verification)),
        ]);
    }
    table.print()?;
    Ok(())
}

/// Run `ward sessions`.
pub async fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let identity = args.key.load()?;
    let source = args.source.open()?;
    let key = source.key(args.source.pubkey.as_ref()).await?;
    let list = source
        .list_with(&key, filter(&args)?, identity.as_ref())
        .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &list {
            serde_json::to_writer(&mut out, s)?;
            std::io::Write::write_all(&mut out, b"\n")?;
        }
    } else {
        drop(out);
        print_sessions(&list)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn why(report: &VerifyReport) -> String {
    report
        .first_error
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_else(|| format!("{:?}", report.status))
}

fn check(bytes: &[u8], key: &Keyring, id: &str, force: bool, what: &str) -> anyhow::Result<()> {
    let report = ward_recording::verify(bytes, key);
    if report.ok {
        return Ok(());
    }
    let why = why(&report);
    if force {
        eprintln!("ward: WARNING: recording {id} fails verification ({why}); {what} anyway because of --force");
        Ok(())
    } else {
        bail!("recording {id} fails verification ({why}); {what} refused — use --force to {what} anyway")
    }
}

/// What an export may hold: the whole recording when it verifies; otherwise, only with --force,
/// its verified prefix, with a warning saying where it stops (printed once the export is written).
fn exportable<'a>(
    bytes: &'a [u8],
    key: &Keyring,
    id: &str,
    force: bool,
) -> anyhow::Result<(&'a [u8], Option<String>)> {
    readable(bytes, key, id, force, "export")
}

/// [`exportable`], for `verb` (`export`, `list the operations of`).
fn readable<'a>(
    bytes: &'a [u8],
    key: &Keyring,
    id: &str,
    force: bool,
    verb: &str,
) -> anyhow::Result<(&'a [u8], Option<String>)> {
    let report = ward_recording::verify(bytes, key);
    if report.ok {
        return Ok((bytes, None));
    }
    let why = why(&report);
    if !force {
        let refused = if verb == "export" {
            "export refused"
        } else {
            "refused"
        };
        bail!("recording {id} fails verification ({why}); {refused} — use --force to {verb} its verified records");
    }
    let prefix = review::verified_prefix(bytes, &report);
    if prefix.is_empty() {
        bail!("recording {id} fails verification ({why}) and has no verified records to {verb}");
    }
    let done = if verb == "export" {
        "exported"
    } else {
        "read only"
    };
    let note = format!(
        "ward: WARNING: recording {id} fails verification ({why}); because of --force, {done} the first {} verified records (up to byte {} of {}); the rest is torn or unverified and was left out",
        report.verified_records,
        prefix.len(),
        bytes.len()
    );
    Ok((prefix, Some(note)))
}

/// Run `ward replay`.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    review::check_session_id(&args.session)?;
    let identity = args.key.load()?;
    let source = args.source.open()?;
    let key = source.key(args.source.pubkey.as_ref()).await?;
    let bytes = source
        .recording(&args.session, "replay", args.force)
        .await?;
    check(&bytes, &key, &args.session, args.force, "replay")?;
    // Opened (decrypted) before anything is played: a key that does not fit is said at once.
    let records = review::records_of(&bytes, identity.as_ref())?;
    let opts = ReplayOptions {
        speed: args.speed,
        skip_idle: args.skip_idle,
        from: args.from,
        input: args.input,
        no_timing: args.no_timing,
        raw: args.raw,
    };
    let mut out = std::io::stdout();
    let dropped = review::replay_records(&records, &opts, &mut out).await?;
    if dropped > 0 {
        eprintln!("ward: {dropped} terminal control sequence(s) from the device were not passed to your terminal (--raw shows them)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `ward ops`.
pub async fn ops(args: OpsArgs) -> anyhow::Result<ExitCode> {
    review::check_session_id(&args.session)?;
    let identity = args.key.load()?;
    let source = args.source.open()?;
    // Through a gateway, the gateway verifies the recording and asks for nothing before the
    // request itself (which it audits, refused or not).
    let (rows, note) = source
        .operations(
            args.source.pubkey.as_ref(),
            &args.session,
            args.show_phi,
            args.force,
            identity.as_ref(),
        )
        .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        std::io::Write::write_all(&mut out, &review::ops_json_lines(&rows))?;
    } else {
        review::print_ops(&rows, &mut out)?;
    }
    std::io::Write::flush(&mut out)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `ward export`.
pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    review::check_session_id(&args.session)?;
    if args.show_phi && args.format != ExportFormat::Ops {
        bail!("--show-phi applies to --format ops (the other formats hold the recording as it is)");
    }
    let identity = args.key.load()?;
    let source = args.source.open()?;
    if args.format == ExportFormat::Ops {
        let (rows, note) = source
            .operations(
                args.source.pubkey.as_ref(),
                &args.session,
                args.show_phi,
                args.force,
                identity.as_ref(),
            )
            .await?;
        review::write_export(&args.out, &review::ops_json_lines(&rows))?;
        if args.out.as_os_str() == "-" {
            eprintln!(
                "ward: exported the operations of {} to standard output",
                args.session
            );
        } else {
            println!("wrote {}", args.out.display());
        }
        if let Some(note) = note {
            eprintln!("{note}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let key = source.key(args.source.pubkey.as_ref()).await?;
    let bytes = source
        .recording(&args.session, "export", args.force)
        .await?;
    let (verified, note) = exportable(&bytes, &key, &args.session, args.force)?;
    let to_stdout = args.out.as_os_str() == "-";
    for path in review::export_opts_with(
        verified,
        args.format,
        &args.out,
        args.raw,
        identity.as_ref(),
    )? {
        // On standard output the export is the output: the note goes to stderr.
        if to_stdout {
            eprintln!("ward: exported {} to standard output", args.session);
        } else {
            println!("wrote {}", path.display());
        }
    }
    if let Some(note) = note {
        eprintln!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Show the audit log's own incidents (lost events, a torn line at start): the log verifies, but
/// a reviewer must see what it says it could not record.
fn print_incidents(log: &[u8]) {
    for (line, ev) in ward_recording::audit::incidents(log) {
        println!(
            "audit log: WARNING line {line} {} {}: {}",
            show::when_text(&ev.time.to_string()),
            ev.event,
            // Reasons can carry peer text: no terminal escapes reach the reviewer's screen.
            ev.reason.as_deref().unwrap_or_default().escape_debug()
        );
    }
}

/// Run `ward audit …`.
pub async fn audit(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Pubkey(args) => {
            let source = args.source.open()?;
            let keys = source.key(args.source.pubkey.as_ref()).await?;
            if args.all {
                crate::audit_cmd::print_keys(&keys, args.json)?;
            } else {
                let current = keys.current().context("the keyring names no current key")?;
                println!("{}", hex::encode(current.public));
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::RotateKey(args) => crate::audit_cmd::rotate(args).await,
        AuditCommand::Verify(args) => {
            let source = args.source.open()?;
            let key = match &args.keys {
                Some(file) => crate::audit_cmd::keys_file(file)?,
                None => source.key(args.source.pubkey.as_ref()).await?,
            };
            let anchors = match &args.anchors {
                Some(from) => Some(
                    crate::audit_cmd::read_anchors(from, args.anchor_ca_file.as_deref()).await?,
                ),
                None => None,
            };
            let gateway_id = match &source {
                Source::Local { state_dir } => ward_server::signing::gateway_id(state_dir),
                Source::Remote { .. } => None,
            };
            let gateway_id = args
                .gateway_id
                .clone()
                .or(gateway_id)
                .or_else(|| key.entries().first().map(|e| e.key_id.clone()));
            let mut finals = std::collections::BTreeMap::new();
            let mut failed = 0;
            let mut report =
                |name: &str, r: &ward_recording::VerifyReport| match (&r.first_error, r.ok) {
                    (None, true) => println!("{name}: ok ({} records, {:?})", r.records, r.status),
                    (Some(e), _) => {
                        failed += 1;
                        println!("{name}: FAILED: {e}");
                    }
                    (None, false) => {
                        failed += 1;
                        println!("{name}: FAILED: {:?} ({} records)", r.status, r.records);
                    }
                };
            if let Some(id) = &args.session {
                review::check_session_id(id)?;
                let bytes = source.recording(id, "verify", false).await?;
                report(
                    &format!("recording {id}"),
                    &ward_recording::verify(&bytes, &key),
                );
            } else if args.all {
                // The log is read before the listing and again after the recordings (see
                // `review::cross_check`): sessions opening meanwhile are not reported.
                let log_before = source.audit_log().await?;
                let all = source.list(&key, Filter::default()).await?;
                let mut recordings = Vec::with_capacity(all.len());
                let bar = show::progress(all.len() as u64, "verifying recordings", false);
                for s in all {
                    let bytes = source.recording(&s.id, "verify", false).await?;
                    let r = ward_recording::verify(&bytes, &key);
                    if anchors.is_some() {
                        finals.insert(
                            s.id.clone(),
                            ward_recording::anchor::final_checkpoint(&bytes),
                        );
                    }
                    bar.suspend(|| report(&format!("recording {}", s.id), &r));
                    bar.inc(1);
                    recordings.push((s.id, r));
                }
                bar.finish_and_clear();
                let log = source.audit_log().await?;
                report(
                    "audit log",
                    &ward_recording::audit::verify_audit(&log, &key),
                );
                let findings = review::cross_check(&log_before, &log, &recordings);
                let (mut problems, mut warnings) = (0, 0);
                for f in &findings {
                    let id = review::printable(&f.session_id);
                    let what = review::printable(&f.what);
                    match f.level {
                        Level::Problem => {
                            problems += 1;
                            println!("session {id}: FAILED: {what}");
                        }
                        Level::Warning => {
                            warnings += 1;
                            println!("session {id}: WARNING: {what}");
                        }
                    }
                }
                let sessions = ward_recording::audit::session_trails(&log).len();
                let n = recordings.len();
                if problems == 0 {
                    println!("recordings vs audit log: ok ({n} recordings, {sessions} sessions in the log, {warnings} warnings)");
                } else {
                    failed += problems;
                    println!("recordings vs audit log: FAILED ({problems} problems, {warnings} warnings; {n} recordings, {sessions} sessions in the log)");
                }
                if let Some(anchors) = &anchors {
                    failed += crate::audit_cmd::check_anchors(
                        &log,
                        anchors,
                        Some(&finals),
                        &key,
                        gateway_id.as_deref(),
                    );
                }
            } else {
                let log = source.audit_log().await?;
                report(
                    "audit log",
                    &ward_recording::audit::verify_audit(&log, &key),
                );
                print_incidents(&log);
                if let Some(anchors) = &anchors {
                    // On the host the recordings' ends are read too (cheap); through a gateway
                    // that takes --all.
                    let finals = match &source {
                        Source::Local { state_dir } => {
                            Some(crate::audit_cmd::local_finals(state_dir)?)
                        }
                        Source::Remote { .. } => None,
                    };
                    failed += crate::audit_cmd::check_anchors(
                        &log,
                        anchors,
                        finals.as_ref(),
                        &key,
                        gateway_id.as_deref(),
                    );
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
