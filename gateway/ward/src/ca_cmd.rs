//! `ward ca …`: create a CA, issue certificates, inspect them.
//!
//! The lead's `main.rs` declares `mod ca_cmd;` and calls [`run`] with the parsed subcommand and
//! the clock; everything time-dependent takes `now` from that clock.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use time::Duration;
use ward_ca::{inspect, Ca, Clock, IssueRequest, Issued, Kind, Validator, Verdict};

/// Manage Ward's certificate authority: every person and gateway is identified by a short-lived
/// certificate whose URI SAN is spiffe://<trust-domain>/<kind>/<name> (see docs/identity.md).
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a CA: a root CA (10 years) and an issuing CA (5 years), P-256 keys.
    ///
    /// Writes root.crt, root.key, issuing.crt, issuing.key (keys mode 0600), ca.json (trust
    /// domain and lifetime caps) and issued.jsonl into DIR. Refuses to replace an existing CA
    /// unless --force. Only issuing.key is needed afterwards to issue; root.key can be moved
    /// offline.
    ///
    /// Example: ward ca init --dir certs-dev --trust-domain ward.dev
    Init(InitArgs),

    /// Issue a certificate for a person or a gateway
    ///
    /// Writes PREFIX.crt (the certificate followed by the issuing CA) and, unless --csr is given,
    /// PREFIX.key (a new P-256 key, mode 0600). Appends a line to DIR/issued.jsonl. Lifetimes
    /// default per kind (vendor 1h, clinician 8h, security 8h, admin 1h, gateway 90d) and may not
    /// exceed the caps in ca.json (by default 12h, 12h, 12h, 4h, 397d; never above 24h for people).
    ///
    /// Examples:
    ///   ward ca issue --dir certs-dev --kind vendor --name jdoe --org acme --ttl 2h --out jdoe
    ///   ward ca issue --dir certs-dev --kind gateway --name gw1 --dns localhost --out gw1
    #[command(verbatim_doc_comment)]
    Issue(IssueArgs),

    /// Show what a certificate says and, with --ca-dir, whether that CA accepts it.
    ///
    /// Prints the principal, kind, org, roles, serial, issuer, validity and remaining lifetime.
    /// With --ca-dir it also validates the certificate (for server use if its kind is gateway,
    /// for client use otherwise) and exits non-zero if any check fails, naming the check.
    Inspect(InspectArgs),
}

/// Arguments of `ward ca init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to create the CA in (created with mode 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// SPIFFE trust domain: lowercase DNS-style name, e.g. ward.dev or hospital.example.
    #[arg(long, value_name = "NAME")]
    pub trust_domain: String,

    /// Replace an existing CA in DIR (new keys; certificates from the old CA stop validating).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `ward ca issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// CA directory (made by `ward ca init`).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// What the certificate identifies.
    #[arg(long, value_name = "KIND", value_parser = kind_parser())]
    pub kind: Kind,

    /// Name of the person or gateway: 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -).
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// Organisation, e.g. the vendor's company (same character rules as --name).
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,

    /// Comma-separated roles, e.g. biomed,oncall (each like --name; 64 characters in all).
    #[arg(long, value_name = "ROLES", value_delimiter = ',')]
    pub roles: Vec<String>,

    /// Lifetime, e.g. 30m, 8h, 1h30m, 90d (default and maximum depend on --kind).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl_arg)]
    pub ttl: Option<Duration>,

    /// Certify the public key of this PEM CSR instead of generating a key. Only the key is
    /// used: names, SANs and extensions in the CSR are ignored. No PREFIX.key is written.
    #[arg(long, value_name = "FILE")]
    pub csr: Option<PathBuf>,

    /// DNS name to add as a SAN (gateways only; repeatable).
    #[arg(long = "dns", value_name = "HOST")]
    pub dns: Vec<String>,

    /// IP address to add as a SAN (gateways only; repeatable).
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<IpAddr>,

    /// Output prefix: writes PREFIX.crt and PREFIX.key (e.g. --out certs-dev/jdoe).
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
}

/// Arguments of `ward ca inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// PEM file holding the certificate (leaf first; a following issuing CA is used as the
    /// intermediate).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Also validate against the CA in this directory (needs only root.crt, issuing.crt and
    /// ca.json); exit non-zero if validation fails.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
}

fn kind_parser() -> impl TypedValueParser<Value = Kind> {
    PossibleValuesParser::new(Kind::ALL.map(Kind::as_str)).try_map(|s| s.parse::<Kind>())
}

fn parse_ttl_arg(s: &str) -> Result<Duration, String> {
    ward_ca::parse_ttl(s).map_err(|e| e.to_string())
}

/// Run one `ward ca` subcommand.
pub fn run(args: CaCommand, clock: &dyn Clock) -> anyhow::Result<()> {
    match args {
        CaCommand::Init(a) => init(a, clock),
        CaCommand::Issue(a) => issue(a, clock),
        CaCommand::Inspect(a) => inspect_cmd(a, clock),
    }
}

fn init(a: InitArgs, clock: &dyn Clock) -> anyhow::Result<()> {
    let ca = Ca::init(&a.dir, &a.trust_domain, a.force, clock.now())?;
    println!(
        "created CA for trust domain {} in {}",
        ca.trust_domain(),
        a.dir.display()
    );
    for f in [
        ward_ca::ROOT_CRT,
        ward_ca::ROOT_KEY,
        ward_ca::ISSUING_CRT,
        ward_ca::ISSUING_KEY,
        ward_ca::CA_JSON,
        ward_ca::ISSUED_LOG,
    ] {
        println!("  {}", a.dir.join(f).display());
    }
    Ok(())
}

fn issue(a: IssueArgs, clock: &dyn Clock) -> anyhow::Result<()> {
    let ca = Ca::load(&a.dir)?;
    let csr_pem = match &a.csr {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read CSR {}", path.display()))?,
        ),
        None => None,
    };
    let req = IssueRequest {
        kind: a.kind,
        name: a.name,
        org: a.org,
        roles: a.roles,
        ttl: a.ttl,
        csr_pem,
        dns: a.dns,
        ips: a.ips,
    };
    let issued = ca.issue(&req, clock.now())?;
    issued.write(&a.out)?;
    let id = &issued.identity;
    println!(
        "issued {} serial {} valid until {}",
        id.principal(),
        id.serial,
        crate::show::when(id.not_after)
    );
    println!("  {}", Issued::cert_path(&a.out).display());
    if issued.key_pem.is_some() {
        println!(
            "  {} (private key, mode 0600)",
            Issued::key_path(&a.out).display()
        );
    }
    Ok(())
}

fn inspect_cmd(a: InspectArgs, clock: &dyn Clock) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let validator = match &a.ca_dir {
        Some(dir) => Some(Validator::from_dir(dir)?),
        None => None,
    };
    let report = inspect(&pem, validator.as_ref(), clock.now())
        .with_context(|| format!("{}", a.file.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        // For people: the one time format (`--json` keeps RFC 3339).
        let mut shown = report.clone();
        shown.not_before = crate::show::when_text(&report.not_before);
        shown.not_after = crate::show::when_text(&report.not_after);
        print!("{shown}");
    }
    if let Some(Verdict::Invalid(e)) = &report.validation {
        bail!("{}: not valid: {e}", a.file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use ward_ca::FixedClock;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        ca: CaCommand,
    }

    fn parse(args: &[&str]) -> Result<CaCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("ca").chain(args.iter().copied())).map(|c| c.ca)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn init_issue_inspect_end_to_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let d = dir.to_str().unwrap();
        let clock = FixedClock::new(time::macros::datetime!(2026-03-01 12:00 UTC));
        run(
            parse(&["init", "--dir", d, "--trust-domain", "ward.dev"]).unwrap(),
            &clock,
        )
        .unwrap();
        let err = run(
            parse(&["init", "--dir", d, "--trust-domain", "ward.dev"]).unwrap(),
            &clock,
        )
        .unwrap_err();
        assert!(err.to_string().contains("use --force"), "{err}");

        let out = tmp.path().join("jdoe");
        let o = out.to_str().unwrap();
        let cmd = parse(&[
            "issue",
            "--dir",
            d,
            "--kind",
            "vendor",
            "--name",
            "jdoe",
            "--org",
            "acme",
            "--roles",
            "biomed,oncall",
            "--ttl",
            "30m",
            "--out",
            o,
        ])
        .unwrap();
        run(cmd, &clock).unwrap();
        let crt = tmp.path().join("jdoe.crt");
        assert!(crt.is_file() && tmp.path().join("jdoe.key").is_file());

        let c = crt.to_str().unwrap();
        run(parse(&["inspect", c, "--ca-dir", d]).unwrap(), &clock).unwrap();
        run(parse(&["inspect", c, "--json"]).unwrap(), &clock).unwrap();
        clock.advance(Duration::hours(1));
        let err = run(parse(&["inspect", c, "--ca-dir", d]).unwrap(), &clock).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");

        let err = parse(&[
            "issue", "--dir", d, "--kind", "robot", "--name", "x", "--out", o,
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("robot") && err.contains("vendor"), "{err}");
        let err = parse(&[
            "issue", "--dir", d, "--kind", "vendor", "--name", "x", "--ttl", "2x", "--out", o,
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown unit 'x'"), "{err}");
        let cmd = parse(&[
            "issue", "--dir", d, "--kind", "vendor", "--name", "x", "--ttl", "13h", "--out", o,
        ])
        .unwrap();
        let err = run(cmd, &clock).unwrap_err().to_string();
        assert!(
            err.contains("requested TTL 13h exceeds the vendor cap of 12h"),
            "{err}"
        );
    }
}
