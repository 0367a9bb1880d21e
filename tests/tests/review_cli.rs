//! Issue #4's "done when", with the real `ward` binary and real reviewers' tools: a session made
//! through `ward quickstart` shows up in `ward sessions`, replays with its timing, verifies, exports
//! to asciicast and pcap that `asciinema` and `tshark` read, and fails verification after one byte of
//! its file is changed; a clinician identity is refused listing or replaying recordings. And DICOM
//! carried through Ward exports to a pcap that tshark decodes as DICOM.
//!
//! Everything stays on loopback; every child process runs under a timeout and is killed when its
//! guard drops. Under CI a missing peer (tshark, asciinema, dcmtk) fails the test; locally it skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_ca::{Clock, Kind, SystemClock};
use ward_client::Transport;
use ward_tests::process::*;
use ward_tests::*;

/// What the vendor types on the pump's console, a pause after the gateway logged in for them (the
/// quickstart injects the pump's vaulted `service` account).
const COMMANDS: &[u8] = b"status\r\nexit\r\n";
/// The telnet options the pump turns on (WILL ECHO, WILL SUPPRESS-GO-AHEAD), as the client hears
/// them after the gateway's login.
const OPTIONS: &[u8] = &[0xFF, 0xFB, 0x01, 0xFF, 0xFB, 0x03];
/// The pause between the two, so the recording has timing worth replaying.
const PAUSE: Duration = Duration::from_millis(1200);
/// The pump's answer to `status`.
const STATUS_LINE: &str = "pump> status: RUNNING  channel A 12.5 mL/h  battery 87%  occlusion none";
/// The same without the prompt (sent before the pause, so in its own packet).
const STATUS_ANSWER: &str = "status: RUNNING  channel A 12.5 mL/h  battery 87%  occlusion none";

// ---------------------------------------------------------------------------------------------
// Helpers (child processes: ward_tests::process)
// ---------------------------------------------------------------------------------------------

/// `ward sessions … --json`, parsed.
fn sessions_json(source: &[&str], filter: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["sessions", "--json"];
    args.extend_from_slice(source);
    args.extend_from_slice(filter);
    let out = run_ok(&mut ward(&args));
    out.stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: bad JSON line {l:?}: {e}"))
        })
        .collect()
}

/// The address a device has in a quickstart's `ward.toml`.
fn device_address(config: &str, device: &str) -> SocketAddr {
    let (_, after) = config
        .split_once(&format!("id = \"{device}\"\n"))
        .unwrap_or_else(|| panic!("{device} not in\n{config}"));
    let (_, rest) = after.split_once("address = \"").unwrap();
    let (addr, _) = rest.split_once('"').unwrap();
    addr.parse().unwrap()
}

/// Flip the low bit of one byte of `path`.
fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// quickstart → sessions, replay, export, verify, tamper, who may review
// ---------------------------------------------------------------------------------------------

#[test]
fn quickstart_session_is_listed_replayed_exported_verified_and_tamper_evident() {
    if !require_peer("tshark") || !require_peer("asciinema") || !require_peer("script") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let d = dir.display().to_string();
    let (qs, port) = start_quickstart(&dir);
    let gateway = format!("127.0.0.1:{port}");
    let state = format!("{d}/state");
    let local: &[&str] = &["--state-dir", &state];
    let (vendor, security, clinician) = (
        format!("{d}/vendor"),
        format!("{d}/security"),
        format!("{d}/clinician"),
    );
    let as_security: &[&str] = &["--gateway", &gateway, "--identity", &security];
    let as_clinician: &[&str] = &["--gateway", &gateway, "--identity", &clinician];
    // Quickstart recordings are encrypted to the reviewer's age key it made: every review below
    // reads with it (`WARD_IDENTITY_KEY`, as `--identity-key`), except where it says otherwise.
    let reviewer_key = format!("{d}/reviewer-age-key.txt");
    let without_key = ward;
    let ward = |args: &[&str]| -> Command {
        let mut cmd = without_key(args);
        cmd.env("WARD_IDENTITY_KEY", &reviewer_key);
        cmd
    };
    let pump = device_address(
        &std::fs::read_to_string(dir.join("ward.toml")).unwrap(),
        "pump-12",
    );

    // The vendor's telnet session on the pump, over stdin/stdout, with a pause before `status`.
    // The pause starts once the pump has welcomed the vendor, so it is in the recording whatever
    // the time it took to connect.
    let mut connect = Proc::spawn(
        &mut ward(&[
            "connect",
            "pump-12",
            "--gateway",
            &gateway,
            "--identity",
            &vendor,
        ]),
        Input::Pipe,
    );
    connect.wait_for_stdout("Welcome, service.", COMMAND_TIMEOUT);
    std::thread::sleep(PAUSE);
    connect.send(COMMANDS);
    let connect = connect.finish(COMMAND_TIMEOUT);
    assert_eq!(connect.status.code(), Some(0), "{connect:?}");
    assert!(
        connect.stdout.contains(&format!("{STATUS_LINE}\r\n")),
        "{connect:?}"
    );
    assert!(connect.stdout.ends_with("pump> bye\r\n"), "{connect:?}");
    let console = connect.raw_stdout.clone();
    // The client hears the options the pump turned on during the gateway's login, then the
    // pump's greeting: no login prompt (replay removes the IAC bytes).
    assert!(console.starts_with(OPTIONS), "{connect:?}");
    assert!(!connect.stdout.contains("login:"), "{connect:?}");

    // ---- ward sessions, on the gateway host ---------------------------------------------------
    // The recording is sealed once the gateway has closed the session: wait for "ok".
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let listed = loop {
        let list = sessions_json(local, &[]);
        if list.len() == 1 && list[0]["verification"] == "ok" {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "the session was not listed as sealed and verified: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let s = &listed[0];
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16, "{s}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{s}");
    assert_eq!(s["principal"], "vendor acme/jdoe", "{s}");
    assert_eq!(s["device"], "pump-12", "{s}");
    assert_eq!(s["protocol"], "telnet", "{s}");
    assert_eq!(s["rule"], "acme-maintains-its-pumps", "{s}");
    assert_eq!(s["end_reason"], "completed", "{s}");
    assert_eq!(s["break_glass"], false, "{s}");
    // The counts are the session's: what the vendor sent and received (the login is recorded).
    assert_eq!(s["bytes_up"], COMMANDS.len() as u64, "{s}");
    assert_eq!(s["bytes_down"], console.len() as u64, "{s}");
    let duration = s["duration_s"].as_f64().unwrap();
    // (A little slack: the recorder timestamps records as it takes them from the data path.)
    assert!(duration >= PAUSE.as_secs_f64() * 0.9, "{s}");
    let wrec = dir.join("state/recordings").join(format!("{id}.wrec"));
    assert!(wrec.is_file(), "{} missing", wrec.display());
    // Encrypted at rest: nothing the pump said is in the file, and without the reviewer's key
    // the binary says which flag reads it.
    let stored = std::fs::read(&wrec).unwrap();
    assert!(
        find(&stored, b"RUNNING").is_none(),
        "plaintext in {}",
        wrec.display()
    );
    assert!(find(&stored, COMMANDS).is_none());
    let out = run(&mut without_key(
        &[&["replay", id.as_str(), "--no-timing"], local].concat(),
    ));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("--identity-key"), "{out:?}");
    assert!(!out.stdout.contains("RUNNING"), "{out:?}");

    // The table.
    let out = run_ok(&mut ward(&[&["sessions"], local].concat()));
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in\n{}", out.stdout));
    for want in ["vendor acme/jdoe", "pump-12", "completed"] {
        assert!(row.contains(want), "{want:?} not in {row:?}");
    }
    assert!(row.ends_with(" ok"), "{row:?}");

    // Filters: each one both ways.
    let ids = |filter: &[&str]| -> Vec<String> {
        sessions_json(
            local,
            &[filter, &["--identity-key", &reviewer_key]].concat(),
        )
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
    };
    let just = vec![id.clone()];
    assert_eq!(ids(&["--grep", "status: RUNNING"]), just);
    assert_eq!(ids(&["--grep", "nothing-like-this"]), Vec::<String>::new());
    // What the vendor typed is searchable too.
    assert_eq!(ids(&["--grep", "exit\r\n"]), just);
    assert_eq!(ids(&["--principal", "acme/jdoe"]), just);
    assert_eq!(ids(&["--principal", "jdoe"]), just);
    assert_eq!(ids(&["--principal", "alice"]), Vec::<String>::new());
    assert_eq!(ids(&["--device", "pump-12"]), just);
    assert_eq!(ids(&["--device", "monitor-3"]), Vec::<String>::new());
    assert_eq!(ids(&["--since", "1h"]), just);
    assert_eq!(ids(&["--until", "1h"]), Vec::<String>::new());
    let out = run_ok(&mut ward(
        &[&["sessions"], local, &["--principal", "alice"]].concat(),
    ));
    assert_eq!(out.stdout.trim(), "no recorded sessions match", "{out:?}");

    // ---- the same through the gateway: security may, a clinician may not --------------------
    let remote = sessions_json(as_security, &[]);
    assert_eq!(remote, listed, "remote and local listings differ");
    assert_eq!(
        sessions_json(
            as_security,
            &["--grep", "status: RUNNING", "--identity-key", &reviewer_key]
        )
        .len(),
        1
    );
    assert_eq!(
        sessions_json(as_security, &["--principal", "alice"]).len(),
        0
    );
    for args in [
        [&["sessions"], as_clinician].concat(),
        [&["sessions", "--json"], as_clinician].concat(),
        [&["replay", &id, "--no-timing"], as_clinician].concat(),
        [
            &["export", &id, "--format", "raw", "--out"],
            &[d.as_str()][..],
            as_clinician,
        ]
        .concat(),
        [&["audit", "verify", "--all"], as_clinician].concat(),
    ] {
        let out = run(&mut ward(&args));
        assert!(!out.status.success(), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("Forbidden") && out.stderr.contains("only security and admin"),
            "{args:?}: {out:?}"
        );
        assert!(!out.stdout.contains(&id), "{args:?}: {out:?}");
        assert!(!out.stdout.contains("RUNNING"), "{args:?}: {out:?}");
    }

    // ---- ward replay ---------------------------------------------------------------------------
    let replay = |extra: &[&str]| -> (Finished, Duration) {
        let started = Instant::now();
        let out = run_ok(&mut ward(
            &[&["replay", id.as_str()], local, extra].concat(),
        ));
        (out, started.elapsed())
    };
    let (text, _) = replay(&["--no-timing"]);
    assert!(text.stdout.contains(STATUS_LINE), "{text:?}");
    assert!(text.stdout.ends_with("pump> bye\r\n"), "{text:?}");
    assert!(!text.raw_stdout.contains(&0xFF), "IAC left in {text:?}");
    // Exactly the console without its telnet negotiation: the client's bytes minus IAC WILL x.
    let mut negotiation_free = console.clone();
    for option in [[0xFF, 0xFB, 0x01], [0xFF, 0xFB, 0x03]] {
        let at = find(&negotiation_free, &option).expect("the pump negotiates ECHO and SGA");
        negotiation_free.drain(at..at + 3);
    }
    // The replay is the device's side: the gateway's login to it (the pump's prompts; the
    // password is not in the recording), then exactly what the vendor saw, negotiation aside.
    assert!(
        text.stdout
            .ends_with(&*String::from_utf8_lossy(&negotiation_free)),
        "replay differs from what the vendor saw (negotiation aside): {text:?}"
    );
    assert!(text.stdout.contains("login: "), "{text:?}");
    assert!(text.stdout.contains("Password: "), "{text:?}");
    // Without --input nothing the vendor typed is shown.
    assert!(!text.stdout.contains("\x1b[7m"), "{text:?}");

    // With its timing: at speed 1 it takes the session's pause; at speed 100 the same text, sooner.
    let (timed, took) = replay(&[]);
    assert_eq!(timed.stdout, text.stdout);
    assert!(
        took >= PAUSE.mul_f64(0.9),
        "a replay with timing took {took:?}, the session paused {PAUSE:?}"
    );
    let (fast, _) = replay(&["--speed", "100"]);
    assert_eq!(fast.stdout, text.stdout);
    let (skipped, _) = replay(&["--skip-idle", "0.1"]);
    assert_eq!(skipped.stdout, text.stdout);

    // --input shows what the vendor typed, in reverse video, escaped.
    let (with_input, _) = replay(&["--no-timing", "--input"]);
    let typed: Vec<&str> = with_input
        .stdout
        .split("\x1b[7m")
        .skip(1)
        .map(|s| s.split("\x1b[27m").next().unwrap())
        .collect();
    assert!(!typed.is_empty(), "{with_input:?}");
    let typed = typed.concat();
    assert!(typed.contains("status"), "{typed:?}");
    assert!(typed.contains("exit"), "{typed:?}");
    // The input is interleaved where it was sent ("pump> " + typed + the answer).
    assert!(
        with_input
            .stdout
            .contains("pump> \x1b[7mstatus\\r\\nexit\\r\\n\x1b[27mstatus: RUNNING"),
        "{with_input:?}"
    );

    // ---- ward export ---------------------------------------------------------------------------
    let out_dir = tmp.path().join("exports");
    std::fs::create_dir(&out_dir).unwrap();
    let export = |format: &str, name: &str| -> PathBuf {
        let path = out_dir.join(name);
        let p = path.display().to_string();
        let out = run_ok(&mut ward(
            &[
                &["export", id.as_str(), "--format", format, "--out", &p],
                local,
            ]
            .concat(),
        ));
        assert!(out.stdout.contains("wrote "), "{out:?}");
        path
    };

    // raw: the two directions, byte for byte.
    let raw = export("raw", "session");
    let up = std::fs::read(out_dir.join("session.up")).unwrap();
    let down = std::fs::read(out_dir.join("session.down")).unwrap();
    // Up: the gateway's login (the user name; the password left out) and then the vendor's bytes.
    assert!(up.ends_with(COMMANDS), "{:?}", String::from_utf8_lossy(&up));
    assert!(
        find(&up, b"service\r\n").is_some(),
        "{:?}",
        String::from_utf8_lossy(&up)
    );
    // Down: the pump's own bytes from the first (its negotiation, its login dialogue), ending with
    // exactly what the vendor received after the options.
    assert!(
        down.starts_with(OPTIONS),
        "{:?}",
        String::from_utf8_lossy(&down)
    );
    assert!(
        down.ends_with(&console[OPTIONS.len()..]),
        "device → client bytes"
    );
    assert!(!raw.exists(), "raw writes PATH.up and PATH.down only");

    // json: lines that parse; meta first, data lengths add up.
    let json = std::fs::read_to_string(export("json", "session.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(records[0]["type"], "meta", "{json}");
    assert_eq!(records[0]["meta"]["session_id"], id.as_str(), "{json}");
    assert_eq!(
        records[0]["meta"]["device_addr"],
        pump.to_string(),
        "{json}"
    );
    let bytes_in = |dir: &str| -> u64 {
        records
            .iter()
            .filter(|r| r["type"] == "data" && r["dir"] == dir)
            .map(|r| r["len"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(bytes_in("up"), up.len() as u64, "{json}");
    assert_eq!(bytes_in("down"), down.len() as u64, "{json}");

    // replay --from: start half a pause before the commands were typed, i.e. after the welcome
    // (which the vendor saw a whole pause before typing) and before the status answer.
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "event" && r["kind"] == "credential_injected"),
        "{json}"
    );
    let up_times: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "data" && r["dir"] == "up")
        .map(|r| r["t_ns"].as_u64().unwrap())
        .collect();
    let pause_ns = PAUSE.as_nanos() as u64;
    let commands_t = *up_times
        .iter()
        .find(|t| **t >= up_times[0] + pause_ns * 9 / 10)
        .unwrap_or_else(|| panic!("no input a pause after the login: {json}"));
    let from = format!("{:.3}", (commands_t - pause_ns / 2) as f64 / 1e9);
    let (later, _) = replay(&["--no-timing", "--from", &from]);
    assert!(
        later.stdout.contains(STATUS_ANSWER),
        "--from {from}: {later:?}"
    );
    assert!(
        !later.stdout.contains("Welcome"),
        "--from {from}: {later:?}"
    );

    // asciicast: v2 that asciinema plays (`asciinema cat` needs a terminal: `script` lends one).
    let cast = export("asciicast", "session.cast");
    let cast_text = std::fs::read_to_string(&cast).unwrap();
    let header: serde_json::Value =
        serde_json::from_str(cast_text.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{cast_text}");
    let asciinema_cat = |path: &Path| -> Finished {
        run(Command::new("script")
            .args(["-q", "-e", "-c"])
            .arg(format!("asciinema cat '{}'", path.display()))
            .arg("/dev/null"))
    };
    let played = asciinema_cat(&cast);
    assert!(played.status.success(), "{played:?}");
    assert!(played.stdout.contains(STATUS_LINE), "{played:?}");
    // The check can fail: asciinema refuses a file that is not asciicast.
    let bogus = out_dir.join("bogus.cast");
    std::fs::write(&bogus, "{\"version\": 7}\n").unwrap();
    let refused = asciinema_cat(&bogus);
    assert!(!refused.status.success(), "{refused:?}");

    // pcap: tshark reads it, between the client and the pump's real address, as telnet.
    let pcap = export("pcap", "session.pcap");
    let p = pcap.display().to_string();
    let decode_as = format!("tcp.port=={},telnet", pump.port());
    let ports = run_ok(Command::new("tshark").args([
        "-r",
        &p,
        "-T",
        "fields",
        "-e",
        "ip.dst",
        "-e",
        "tcp.dstport",
        "-c",
        "1",
    ]));
    assert_eq!(
        ports.stdout.trim(),
        format!("{}\t{}", pump.ip(), pump.port()),
        "the first packet (SYN) goes to the pump: {ports:?}"
    );
    let telnet = run_ok(Command::new("tshark").args([
        "-r",
        &p,
        "-d",
        &decode_as,
        "-Y",
        "telnet",
        "-T",
        "fields",
        "-e",
        "telnet.data",
    ]));
    assert!(
        telnet.stdout.contains(&format!("{STATUS_ANSWER}\\r\\n")),
        "{telnet:?}"
    );
    assert!(telnet.stdout.contains("status\\r\\n"), "{telnet:?}");
    let verbose = run_ok(Command::new("tshark").args([
        "-r", &p, "-d", &decode_as, "-Y", "telnet", "-O", "telnet", "-V",
    ]));
    assert!(verbose.stdout.contains("Will Echo"), "{verbose:?}");
    let follow = run_ok(Command::new("tshark").args(["-r", &p, "-qz", "follow,tcp,ascii,0"]));
    assert!(follow.stdout.contains(STATUS_ANSWER), "{follow:?}");
    // The same pcap on standard output, piped into tshark (issue 13: `--out -` wrote a file named -).
    let piped = run_ok(Command::new("sh").current_dir(&out_dir).args([
        "-c",
        &format!(
            "'{}' export {} --format pcap --out - --state-dir '{state}' --identity-key '{reviewer_key}' | tshark -r - -qz follow,tcp,ascii,0",
            ward_tests::process::ward_binary().display(),
            id
        ),
    ]));
    assert!(piped.stdout.contains(STATUS_ANSWER), "{piped:?}");
    assert!(!out_dir.join("-").exists(), "a file named - was written");

    // ---- ward audit ----------------------------------------------------------------------------
    let out = run_ok(&mut ward(
        &[&["audit", "verify", id.as_str()], local].concat(),
    ));
    assert!(
        out.stdout.contains(&format!("recording {id}: ok")),
        "{out:?}"
    );
    // Through the gateway (which flushes its audit log first), then on the host once the gateway
    // has checkpointed the review accesses it just audited.
    let out = run_ok(&mut ward(
        &[&["audit", "verify", "--all"], as_security].concat(),
    ));
    assert!(
        out.stdout.contains(&format!("recording {id}: ok")) && out.stdout.contains("audit log: ok"),
        "{out:?}"
    );
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let out = run(&mut ward(&[&["audit", "verify", "--all"], local].concat()));
        if out.status.success() {
            assert!(
                out.stdout.contains(&format!("recording {id}: ok"))
                    && out.stdout.contains("audit log: ok"),
                "{out:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log never verified on the host: {out:?}"
        );
    }
    let audit_pub = std::fs::read_to_string(dir.join("state/audit.pub")).unwrap();
    let audit_pub = audit_pub.trim();
    for source in [local, as_security] {
        let out = run_ok(&mut ward(&[&["audit", "pubkey"], source].concat()));
        let key = out.stdout.trim();
        assert_eq!(key.len(), 64, "{out:?}");
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{out:?}");
        assert_eq!(key, audit_pub, "{source:?}");
    }

    // ---- one changed byte ----------------------------------------------------------------------
    let original = std::fs::read(&wrec).unwrap();
    let key = ward_server::review::parse_public_key(audit_pub).unwrap();
    assert!(ward_recording::verify(&original, &key).ok);
    // Every single-byte change anywhere in the file is caught (library check over the real file).
    for at in 0..original.len() {
        let mut bad = original.clone();
        bad[at] ^= 0x01;
        let report = ward_recording::verify(&bad, &key);
        assert!(
            !report.ok,
            "flipping byte {at} of {} went unnoticed",
            original.len()
        );
    }

    // The byte in the middle of the file, through the binary.
    flip(&wrec, original.len() / 2);
    let out = run(&mut ward(
        &[&["audit", "verify", id.as_str()], local].concat(),
    ));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("recording {id}: FAILED: record ")),
        "{out:?}"
    );
    let out = run(&mut ward(&[&["audit", "verify", "--all"], local].concat()));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.contains("FAILED: record "), "{out:?}");
    std::fs::write(&wrec, &original).unwrap();
    run_ok(&mut ward(
        &[&["audit", "verify", id.as_str()], local].concat(),
    ));

    // A byte of the encrypted record that holds what the pump said: it no longer verifies, and
    // it no longer decrypts.
    let identities =
        ward_recording::sealed::load_identities(&std::fs::read_to_string(&reviewer_key).unwrap())
            .unwrap();
    let mut records = ward_recording::Reader::new(&original);
    let meta = match records.next() {
        Some(Ok((_, ward_recording::Record::Meta(m)))) => m,
        other => panic!("{other:?}"),
    };
    let unsealer = ward_recording::sealed::Unsealer::new(&meta, &identities).unwrap();
    let at = records
        .find_map(|r| match r {
            Ok((at, ward_recording::Record::Sealed { body, .. }))
                if find(&unsealer.decrypt(&body).unwrap(), b"RUNNING").is_some() =>
            {
                Some(at as usize)
            }
            _ => None,
        })
        .expect("no encrypted record holds the pump's status");
    // Past the record header (5), its time (8) and nonce (16): ciphertext.
    flip(&wrec, at + 5 + 8 + 16 + 2);
    let out = run(&mut ward(
        &[&["audit", "verify", id.as_str()], local].concat(),
    ));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.contains("FAILED: record "), "{out:?}");
    let failed = sessions_json(local, &[]);
    assert!(
        failed[0]["verification"]
            .as_str()
            .unwrap()
            .starts_with("FAILED: record "),
        "{failed:#?}"
    );
    for source in [local, as_security] {
        let out = run(&mut ward(
            &[&["replay", id.as_str(), "--no-timing"], source].concat(),
        ));
        assert!(!out.status.success(), "{source:?}: {out:?}");
        assert!(out.stderr.contains("fails verification"), "{out:?}");
        assert!(!out.stdout.contains("UNNING"), "{out:?}");
    }
    let p = out_dir.join("tampered.pcap").display().to_string();
    let out = run(&mut ward(
        &[
            &["export", id.as_str(), "--format", "pcap", "--out", &p],
            local,
        ]
        .concat(),
    ));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("fails verification"), "{out:?}");
    assert!(!Path::new(&p).exists(), "a refused export wrote {p}");
    // --force plays what still decrypts, up to the altered record, with a warning saying where
    // it stopped; the altered record is never shown.
    for source in [local, as_security] {
        let out = run_ok(&mut ward(
            &[&["replay", id.as_str(), "--no-timing", "--force"], source].concat(),
        ));
        assert!(!out.stdout.contains("RUNNING"), "{out:?}");
        assert!(out.stderr.contains("fails verification"), "{out:?}");
    }

    // ---- SIGTERM stops the quickstart cleanly ----------------------------------------------
    let pid = qs.child.id().to_string();
    run_ok(Command::new("kill").args(["-TERM", &pid]));
    let out = qs.finish(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// DICOM through Ward → pcap → tshark decodes DICOM
// ---------------------------------------------------------------------------------------------

const RULES: &str = r#"
[[rule]]
name = "acme-services-its-devices"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

/// storescp on a free loopback port, killed when dropped.
struct Storescp {
    addr: SocketAddr,
    _out: tempfile::TempDir,
    _proc: Proc,
}

fn echoscu(addr: SocketAddr) -> Finished {
    run(Command::new("echoscu")
        .args(["-aec", "STORESCP", "-to", "10", "-ta", "10", "-td", "10"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string()))
}

fn start_storescp() -> Storescp {
    let out = tempfile::tempdir().unwrap();
    for _attempt in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut proc = Proc::spawn(
            Command::new("storescp")
                .args(["-aet", "STORESCP", "-od"])
                .arg(out.path())
                .arg(port.to_string()),
            Input::Null,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Ready when a direct C-ECHO works.
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(status) = proc.child.try_wait().unwrap() {
                let err = proc.stderr();
                if err.contains("cannot listen") || err.contains("in use") {
                    break; // lost the port: try another
                }
                panic!("storescp exited ({status}): {err}");
            }
            if echoscu(addr).status.success() {
                return Storescp {
                    addr,
                    _out: out,
                    _proc: proc,
                };
            }
            assert!(Instant::now() < deadline, "storescp did not start in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("storescp could not bind a free loopback port in 5 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicom_through_ward_exports_to_a_pcap_tshark_decodes_as_dicom() {
    if !require_peer("echoscu") || !require_peer("storescp") || !require_peer("tshark") {
        return;
    }
    init_logs();
    let scp = tokio::task::spawn_blocking(start_storescp).await.unwrap();
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "pacs-1",
        scp.addr,
        "dicom",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let gw = start_gateway(pki.clone(), &devices, RULES, "", clock).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let fwd = forwarder(gw.client(&vendor, Transport::Quic), "pacs-1").await;
    let out = tokio::task::spawn_blocking(move || echoscu(fwd))
        .await
        .unwrap();
    assert!(out.status.success(), "echoscu through Ward: {out:?}");

    // The session's recording, once sealed.
    let state = gw.state_dir();
    let key = ward_server::review::public_key(&state).unwrap();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let session = loop {
        let list = ward_server::review::list(&state, &key, &ward_server::review::Filter::default())
            .unwrap();
        if list.len() == 1 && list[0].verification == "ok" {
            break list[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no sealed DICOM recording: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(session.protocol, "dicom");
    assert_eq!(session.device, "pacs-1");
    assert!(
        session.bytes_up > 0 && session.bytes_down > 0,
        "{session:?}"
    );

    // Exported with the binary, on the gateway host.
    let work = tempfile::tempdir().unwrap();
    let pcap = work.path().join("echo.pcap");
    let (state_s, pcap_s, id) = (
        state.display().to_string(),
        pcap.display().to_string(),
        session.id.clone(),
    );
    let decode_as = format!("tcp.port=={},dicom", scp.addr.port());
    let (export, decoded, fields) = tokio::task::spawn_blocking(move || {
        let export = run(&mut ward(&[
            "export",
            &id,
            "--format",
            "pcap",
            "--out",
            &pcap_s,
            "--state-dir",
            &state_s,
        ]));
        let decoded =
            run(Command::new("tshark").args(["-r", &pcap_s, "-d", &decode_as, "-Y", "dicom"]));
        let fields = run(Command::new("tshark").args([
            "-r",
            &pcap_s,
            "-d",
            &decode_as,
            "-Y",
            "dicom",
            "-T",
            "fields",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.srcport",
            "-e",
            "_ws.col.Info",
        ]));
        (export, decoded, fields)
    })
    .await
    .unwrap();
    assert!(export.status.success(), "{export:?}");
    assert!(pcap.is_file());
    assert!(decoded.status.success(), "{decoded:?}");
    for want in [
        "DICOM",
        "A-ASSOCIATE request",
        "A-ASSOCIATE accept",
        "C-ECHO",
    ] {
        assert!(decoded.stdout.contains(want), "no {want:?} in {decoded:?}");
    }
    assert!(fields.status.success(), "{fields:?}");
    // The association request goes to storescp's configured address (from the recording's meta).
    let request = fields
        .stdout
        .lines()
        .find(|l| l.contains("A-ASSOCIATE request"))
        .unwrap_or_else(|| panic!("{fields:?}"));
    assert!(
        request.starts_with(&format!("{}\t", scp.addr.port())),
        "{request:?}"
    );
}
