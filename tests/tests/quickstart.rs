//! The README's first command, for real: the built `ward` binary runs `ward quickstart`, and the
//! commands it prints are run as a user would run them (`ward devices`, `ward connect` on stdio and
//! with `--listen`, curl through the forwarder), then the quickstart is stopped with SIGTERM.
//!
//! The binary is (re)built with `cargo build -p ward --bin ward` on first use, because
//! `cargo test` only builds a package's binaries for that package's own integration tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use ward_core::totp::{self, TotpSecret};
use ward_tests::process::{
    run, run_with, start_quickstart, ward, ward_binary, Input, Proc, COMMAND_TIMEOUT,
};
use ward_tests::require_peer;

#[test]
fn quickstart_then_the_printed_commands_work_and_sigterm_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs-dev");
    let d = dir.display().to_string();
    let (qs, port) = start_quickstart(&dir);
    let gateway = format!("127.0.0.1:{port}");
    let exe = ward_binary().display().to_string();

    // The instructions name this gateway and these identities.
    let printed = qs.stdout();
    for line in [
        format!("{exe} connect pump-12 --gateway {gateway} --identity {d}/vendor --listen 127.0.0.1:2323"),
        format!("{exe} connect monitor-3 --gateway {gateway} --identity {d}/clinician --listen 127.0.0.1:8080"),
        format!("{exe} connect pump-12 --gateway {gateway} --identity {d}/clinician < /dev/null"),
        format!("{exe} devices --gateway {gateway} --identity {d}/vendor"),
        format!("{exe} vault rotate pump-12 service --gateway {gateway} --identity {d}/admin"),
    ] {
        assert!(printed.contains(&line), "missing {line:?} in:\n{printed}");
    }
    for f in [
        "root.crt",
        "vendor.crt",
        "vendor.key",
        "clinician.crt",
        "ward.toml",
    ] {
        assert!(dir.join(f).is_file(), "{f} was not written");
    }

    let vendor = format!("{d}/vendor");
    let clinician = format!("{d}/clinician");

    // What the vendor may reach: the pump, not the monitor.
    let out = run(&mut ward(&[
        "devices",
        "--gateway",
        &gateway,
        "--identity",
        &vendor,
    ]));
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<&str> = out.stdout.lines().collect();
    // pump-12 now; pump-14 by request (issue 13: the listing says what one could request too);
    // the operations legend and the request hint.
    assert_eq!(rows.len(), 5, "{}", out.stdout);
    assert!(rows[1].contains(" not passwd* "), "{}", out.stdout);
    assert!(rows[3].starts_with("operations: "), "{}", out.stdout);
    assert!(rows[0].starts_with("DEVICE"), "{}", out.stdout);
    assert!(
        rows[2].starts_with("pump-14") && rows[2].contains(" request "),
        "{}",
        out.stdout
    );
    let pump: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(
        pump,
        [
            "pump-12",
            "telnet",
            "open",
            "acme-maintains-its-pumps",
            "not",
            "passwd*",
            "class=infusion-pump,unit=icu,vendor=acme"
        ],
        "{}",
        out.stdout
    );

    // The clinician sees the monitor only.
    let out = run(&mut ward(&[
        "devices",
        "--gateway",
        &gateway,
        "--identity",
        &clinician,
    ]));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("monitor-3"), "{}", out.stdout);
    assert!(!out.stdout.contains("pump-12"), "{}", out.stdout);

    // The vendor on the pump's console, over stdin/stdout.
    let out = run_with(
        &mut ward(&[
            "connect",
            "pump-12",
            "--gateway",
            &gateway,
            "--identity",
            &vendor,
        ]),
        Input::Bytes(b"status\r\nexit\r\n".to_vec()),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The gateway logged in with the vaulted password: the vendor starts at the greeting and the
    // prompt, and never sees a login or password prompt.
    assert!(out.stdout.contains("Welcome, service."), "{out:?}");
    assert!(!out.stdout.contains("login:"), "{out:?}");
    assert!(!out.stdout.contains("assword"), "{out:?}");
    assert!(
        out.stdout
            .contains("status: RUNNING  channel A 12.5 mL/h  battery 87%  occlusion none\r\n"),
        "{out:?}"
    );
    assert!(out.stdout.ends_with("pump> bye\r\n"), "{out:?}");

    // As printed: `passwd` is refused by Ward (the vault owns the password) and never reaches the
    // pump, which answers the next command as typed; `rate` answers.
    let out = run_with(
        &mut ward(&[
            "connect",
            "pump-12",
            "--gateway",
            &gateway,
            "--identity",
            &vendor,
        ]),
        Input::Bytes(b"passwd\r\nrate\r\nexit\r\n".to_vec()),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("passwd"), "{out:?}");
    assert!(
        out.stdout.contains("acme-maintains-its-pumps"),
        "the refusal names the rule: {out:?}"
    );
    assert!(
        !out.stdout.contains("old password"),
        "the pump never ran passwd: {out:?}"
    );
    assert!(out.stdout.contains("rate: 12.5 mL/h"), "{out:?}");
    assert!(!out.stdout.contains("unknown command"), "{out:?}");
    assert!(out.stdout.ends_with("pump> bye\r\n"), "{out:?}");
    let state = format!("{d}/state");
    let out = run(&mut ward(&[
        "sessions",
        "--op",
        "telnet:passwd*",
        "--json",
        "--state-dir",
        &state,
    ]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "one session tried passwd: {out:?}"
    );

    // The pump's password is rotated on the device to a value nobody is shown; the vendor still
    // lands at the prompt.
    let admin = format!("{d}/admin");
    let out = run(&mut ward(&[
        "vault",
        "rotate",
        "pump-12",
        "service",
        "--gateway",
        &gateway,
        "--identity",
        &admin,
    ]));
    assert!(out.status.success(), "{out:?}");
    let out = run_with(
        &mut ward(&[
            "connect",
            "pump-12",
            "--gateway",
            &gateway,
            "--identity",
            &vendor,
        ]),
        Input::Bytes(b"status\r\nexit\r\n".to_vec()),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("Welcome, service."), "{out:?}");
    assert!(out.stdout.contains("pump> status: RUNNING"), "{out:?}");
    assert!(
        out.stderr
            .contains("to pump-12 opened (rule acme-maintains-its-pumps)"),
        "{out:?}"
    );

    // The clinician is refused the pump, with the reason, and exit code 2.
    let out = run(&mut ward(&[
        "connect",
        "pump-12",
        "--gateway",
        &gateway,
        "--identity",
        &clinician,
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("denied: no rule lets clinician alice reach pump-12"),
        "{out:?}"
    );
    assert_eq!(out.stdout, "", "{out:?}");

    // The clinician's forwarder to the monitor, and curl through it.
    if require_peer("curl") {
        let mut fwd = Proc::spawn(
            &mut ward(&[
                "connect",
                "monitor-3",
                "--gateway",
                &gateway,
                "--identity",
                &clinician,
                "--listen",
                "127.0.0.1:0",
            ]),
            Input::Null,
        );
        fwd.wait_for("the forwarding line", COMMAND_TIMEOUT, |_, err| {
            err.contains(" → monitor-3 through ")
        });
        let err = fwd.stderr();
        let local: SocketAddr = err
            .split("ward: forwarding ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {err:?}"));
        let url = format!("http://{local}/");
        // curl -sS --max-time 20 -w '\n%{http_code}' [EXTRA...] URL
        let curl = |extra: &[&str]| {
            run(Command::new("curl")
                .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
                .args(extra)
                .arg(&url))
        };
        // The gateway injects the monitor's vaulted Basic credential: with none of its own, or
        // with a wrong one, curl gets the page.
        let page = "<html><head><title>VitalView 900 monitor</title></head><body>\n<h1>VitalView 900 bedside monitor</h1>\n<p>Bed ICU-3 &middot; HR 72 bpm &middot; SpO2 98% &middot; NIBP 118/76</p>\n</body></html>\n\n200";
        let out = curl(&[]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, page);
        let out = curl(&["-u", "nurse:guess"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, page);
        // As printed: the rule lets nurses read the monitor, not reconfigure it.
        let out = run(Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "-X",
                "POST",
                "-d",
                "alarm=off",
            ])
            .arg(format!("http://{local}/config")));
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.ends_with("\n403"), "{out:?}");
        assert!(
            out.stdout.contains("icu-nurses-see-icu-monitors"),
            "{out:?}"
        );
        fwd.wait_for("three sessions", COMMAND_TIMEOUT, |_, err| {
            err.matches("opened (rule icu-nurses-see-icu-monitors)")
                .count()
                == 3
        });
        drop(fwd);
    }

    // The web console is on, at the printed address: the security identity's certificate signs
    // in, and so do sam's password and TOTP code from web-login.txt.
    let url = printed
        .lines()
        .find_map(|l| l.strip_prefix("The web console, for the security team and approvers: "))
        .unwrap_or_else(|| panic!("no web console line in:\n{printed}"))
        .trim()
        .to_owned();
    assert!(
        url.starts_with("https://127.0.0.1:") && url.ends_with('/'),
        "{url}"
    );
    assert!(
        printed.contains(&format!("{d}/web-login.txt")),
        "the sign-in is not explained:\n{printed}"
    );
    if require_peer("curl") {
        let root = format!("{d}/root.crt");
        let curl = |args: &[&str], path: &str| {
            run(Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "20",
                    "--cacert",
                    &root,
                    "-w",
                    "\n%{http_code}",
                ])
                .args(args)
                .arg(format!("{url}{path}")))
        };
        let cert = [
            "--cert",
            &format!("{d}/security.crt"),
            "--key",
            &format!("{d}/security.key"),
        ]
        .map(str::to_owned);
        let cert: Vec<&str> = cert.iter().map(String::as_str).collect();
        let out = curl(&cert, "api/v1/whoami");
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.ends_with("\n200"), "{out:?}");
        assert!(out.stdout.contains("\"via\":\"certificate\""), "{out:?}");
        assert!(
            out.stdout.contains("\"principal\":\"security sam\""),
            "{out:?}"
        );

        let login = std::fs::read_to_string(dir.join("web-login.txt")).unwrap();
        let field = |name: &str| {
            login
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix('='))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in web-login.txt:\n{login}"))
        };
        let secret = TotpSecret::from_base32(&field("totp_secret")).unwrap();
        let code = totp::code_at(&secret, ward_tests::now().unix_timestamp());
        let body =
            serde_json::json!({"user": field("user"), "password": field("password"), "totp": code});
        let out = curl(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body.to_string(),
            ],
            "api/v1/signin",
        );
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.ends_with("\n200"), "{out:?}");
        assert!(out.stdout.contains("\"via\":\"password\""), "{out:?}");
        assert!(out.stdout.contains("\"kind\":\"security\""), "{out:?}");
    }

    // SIGTERM stops the quickstart cleanly.
    let pid = qs.child.id().to_string();
    let kill = run(Command::new("kill").args(["-TERM", &pid]));
    assert!(kill.status.success(), "{kill:?}");
    let out = qs.finish(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn help_texts_exit_zero_and_name_their_flags() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "quickstart",
                "gateway",
                "connect",
                "devices",
                "lock",
                "unlock",
                "ca",
                "--log-format",
                "--otlp-endpoint",
            ],
        ),
        (
            &["connect", "--help"],
            &[
                "<DEVICE>",
                "--gateway",
                "--identity",
                "--ca",
                "--transport",
                "--listen",
            ],
        ),
        (
            &["ca", "issue", "--help"],
            &[
                "--dir", "--kind", "--name", "--org", "--roles", "--ttl", "--csr", "--dns", "--ip",
                "--out",
            ],
        ),
    ];
    for (args, flags) in cases {
        let out = run(&mut ward(args));
        assert_eq!(out.status.code(), Some(0), "ward {args:?}: {out:?}");
        assert!(
            out.stdout.starts_with("Usage: ward") || out.stdout.contains("\nUsage: ward"),
            "ward {args:?}: {}",
            out.stdout
        );
        for flag in *flags {
            assert!(
                out.stdout.contains(flag),
                "ward {args:?} does not mention {flag}:\n{}",
                out.stdout
            );
        }
    }
    // An unknown flag is an error (exit 2), so the checks above do mean something.
    let out = run(&mut ward(&["connect", "--no-such-flag"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
