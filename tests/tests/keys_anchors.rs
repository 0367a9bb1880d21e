//! Signing keys that rotate, and an audit trail anchored off the host (issue 18; security cases 58
//! second half and 59), against the real `ward` binary:
//!
//! * a key rotated mid-run (sessions and audit lines on both sides, one session open across the
//!   rotation) verifies with `ward audit verify --all`; `ward audit pubkey --all` lists both keys;
//!   the gateway restarts on the rotated state dir; the retired private key is gone from
//!   `audit.key`;
//! * a recording re-signed with a key that was never the gateway's fails, naming that;
//! * an audit log cut exactly after a checkpoint verifies alone but fails with `--anchors`; so does
//!   a history rewritten and re-signed with the host's own key; a deleted recording is named;
//! * anchors reach an HTTP collector (a tiny server on 127.0.0.1) and `--anchors URL` reads them
//!   back; a collector that is down is audited `anchor_failed` once, and the gateway keeps serving.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::Kind;
use ward_client::Transport;
use ward_recording::{Record, SealStatus};
use ward_tests::process::{run, Finished, COMMAND_TIMEOUT};
use ward_tests::*;

// ---------------------------------------------------------------------------------------------
// A tiny anchor collector: POST appends the body, GET returns everything received.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Collector {
    lines: Arc<Mutex<Vec<u8>>>,
    posts: Arc<Mutex<usize>>,
}

impl Collector {
    fn start() -> (String, Collector) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/anchors", listener.local_addr().unwrap());
        let c = Collector::default();
        let me = c.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let me = me.clone();
                std::thread::spawn(move || me.serve(&mut conn));
            }
        });
        (url, c)
    }

    fn serve(&self, conn: &mut std::net::TcpStream) {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let answer = if head.starts_with("POST /anchors ") {
            self.lines
                .lock()
                .unwrap()
                .extend_from_slice(&buf[head_end..head_end + len]);
            *self.posts.lock().unwrap() += 1;
            Vec::new()
        } else {
            self.lines.lock().unwrap().clone()
        };
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                answer.len()
            )
            .as_bytes(),
        );
        let _ = conn.write_all(&answer);
    }

    fn text(&self) -> String {
        String::from_utf8(self.lines.lock().unwrap().clone()).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// The bench: an echo pump, a PKI, one state dir, anchors in a file (and optionally HTTP).
// ---------------------------------------------------------------------------------------------

struct Bench {
    pki: Arc<Pki>,
    devices: Vec<DeviceSpec>,
    vendor: PathBuf,
    admin: PathBuf,
    security: PathBuf,
    state: PathBuf,
    anchors: PathBuf,
    extra: String,
}

impl Bench {
    async fn new(http: Option<&str>) -> Bench {
        init_logs();
        let pki = Arc::new(Pki::new());
        let echo = ward::sim::echo("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let devices = vec![DeviceSpec::new(
            "pump-12",
            echo.addr,
            "raw",
            &[("vendor", "acme")],
        )];
        let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
        let admin = pki.person(Kind::Admin, "ada", None, &[]);
        let security = pki.person(Kind::Security, "sam", None, &[]);
        let state = pki
            .dir
            .path()
            .join(format!("state-{}", rand::random::<u32>()));
        // Off the host in real life (a separate append-only mount); here a file beside it.
        let anchors = pki.dir.path().join("anchors.jsonl");
        let mut sinks = vec![format!("\"file:{}\"", anchors.display())];
        if let Some(url) = http {
            sinks.push(format!("\"{url}\""));
        }
        let extra = format!("\n[audit]\nanchors = [{}]\n", sinks.join(", "));
        Bench {
            pki,
            devices,
            vendor,
            admin,
            security,
            state,
            anchors,
            extra,
        }
    }

    fn start(&self) -> ChildGateway {
        ChildGateway::start(
            self.pki.clone(),
            &self.devices,
            ACME_RULES,
            &self.extra,
            Some(&self.state),
        )
    }

    fn recording(&self, id: &str) -> PathBuf {
        self.state.join("recordings").join(format!("{id}.wrec"))
    }

    fn keyring(&self) -> ward_recording::Keyring {
        ward_server::review::keyring(&self.state).unwrap()
    }

    fn sealed(&self, id: &str) -> bool {
        std::fs::read(self.recording(id))
            .map(|b| ward_recording::verify(&b, &self.keyring()).status == SealStatus::Sealed)
            .unwrap_or(false)
    }

    /// One complete session; returns its id once sealed, closed in the log, and anchored.
    async fn session(&self, gw: &ChildGateway, seed: u64) -> String {
        let client = gw.client(&self.vendor, Transport::Quic);
        let session = client.open("pump-12", false, None).await.unwrap();
        let id = session.session_id.clone();
        let sent = payload(50_000, seed);
        let (back, _end) = echo_session(session, &sent).await;
        assert_eq!(sha256(&back), sha256(&sent));
        self.wait_closed(&id).await;
        id
    }

    async fn wait_closed(&self, id: &str) {
        let done = eventually(COMMAND_TIMEOUT, || {
            self.sealed(id)
                && audit_events(&self.state)
                    .iter()
                    .any(|e| e["event"] == "session_close" && e["session_id"] == id)
                && std::fs::read_to_string(&self.anchors)
                    .unwrap_or_default()
                    .contains(&format!("\"session_id\":\"{id}\""))
        })
        .await;
        assert!(done, "session {id} was not sealed, closed and anchored");
    }

    /// Wait until the live log ends with a checkpoint (the writer signs within 500 ms of quiet).
    async fn quiet(&self) {
        let signed = eventually(COMMAND_TIMEOUT, || {
            let log = std::fs::read(self.state.join("audit.log")).unwrap_or_default();
            ward_recording::audit::verify_audit(&log, &self.keyring()).ok
        })
        .await;
        assert!(signed, "the audit log's tail was never signed");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    fn ward(&self, args: &[&str]) -> Finished {
        run(&mut process::ward(args))
    }

    fn local(&self, args: &[&str]) -> Finished {
        let mut all = args.to_vec();
        let state = self.state.display().to_string();
        all.extend(["--state-dir", &state]);
        self.ward(&all)
    }

    fn remote(&self, gw: &ChildGateway, who: &Path, args: &[&str]) -> Finished {
        let mut all = args.to_vec();
        let (who, ca) = (
            who.display().to_string(),
            self.pki.root().display().to_string(),
        );
        all.extend(["--gateway", &gw.addr, "--identity", &who, "--ca", &ca]);
        self.ward(&all)
    }
}

/// SIGTERM, and wait (bounded) for the gateway to exit (it checkpoints its audit log).
fn stop(mut gw: ChildGateway) -> String {
    gw.sigterm();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while gw.proc.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ward gateway did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    gw.proc.stderr()
}

/// The key ids of a recording's checkpoints, in order.
fn checkpoint_keys(bytes: &[u8]) -> Vec<String> {
    ward_recording::read_all(bytes)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Record::Checkpoint { key_id, .. } => Some(key_id),
            _ => None,
        })
        .collect()
}

/// The key ids of the audit log's checkpoint lines, in order.
fn log_keys(state: &Path) -> Vec<String> {
    std::fs::read_to_string(state.join("audit.log"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "checkpoint")
        .map(|v| v["key_id"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_ok(out: &Finished, what: &str) {
    assert!(out.status.success(), "{what}: {out:?}");
}

// ---------------------------------------------------------------------------------------------
// Rotation mid-run
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_mid_run_verifies_across_both_keys_and_anchors_reach_http() {
    let (url, collector) = Collector::start();
    let b = Bench::new(Some(&url)).await;
    let gw = b.start();
    let old_private = std::fs::read(b.state.join("audit.key")).unwrap();
    let first = b.keyring();
    assert_eq!(first.entries().len(), 1, "a fresh state dir has one key");
    let old_id = first.entries()[0].key_id.clone();
    // The gateway id is its first key's id.
    assert_eq!(
        std::fs::read_to_string(b.state.join("gateway.id"))
            .unwrap()
            .trim(),
        old_id
    );

    // Before: one session, done.
    let before = b.session(&gw, 1).await;
    // Across: a session that starts with the old key and ends after the rotation.
    let client = gw.client(&b.vendor, Transport::Quic);
    let across = client.open("pump-12", false, None).await.unwrap();
    let across_id = across.session_id.clone();
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let running = tokio::spawn(across.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    let part1 = payload(20_000, 2);
    rw.write_all(&part1).await.unwrap();
    let mut echoed = vec![0u8; part1.len()];
    rr.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, part1);

    // A security identity may not rotate (admin only), and that is audited.
    let refused = b.remote(&gw, &b.security, &["audit", "rotate-key"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused.stderr.contains("only admin identities"),
        "{refused:?}"
    );
    // A local rotation while the gateway runs is refused: the state dir is locked.
    let busy = b.local(&["audit", "rotate-key"]);
    assert!(!busy.status.success(), "{busy:?}");
    assert!(busy.stderr.contains("in use by ward gateway"), "{busy:?}");
    assert!(
        busy.stderr.contains("--gateway"),
        "says what to do: {busy:?}"
    );

    // The admin rotates through the running gateway.
    let rotated = b.remote(&gw, &b.admin, &["audit", "rotate-key"]);
    assert_ok(&rotated, "rotate-key");
    let keys = b.keyring();
    assert_eq!(keys.entries().len(), 2, "{keys:?}");
    let new_id = keys.current().unwrap().key_id.clone();
    assert_ne!(new_id, old_id);
    assert!(keys.entries()[0].retired);
    assert!(
        rotated
            .stdout
            .contains(&format!("{old_id} retired, {new_id} signs")),
        "{rotated:?}"
    );

    // The session in progress goes on and finishes with the key it started with.
    let part2 = payload(20_000, 3);
    rw.write_all(&part2).await.unwrap();
    rw.shutdown().await.unwrap();
    let mut rest = Vec::new();
    rr.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, part2);
    running.await.unwrap();
    b.wait_closed(&across_id).await;
    // After: a new session signs with the new key.
    let after = b.session(&gw, 4).await;

    let keys_of = |id: &str| checkpoint_keys(&std::fs::read(b.recording(id)).unwrap());
    assert!(
        keys_of(&before).iter().all(|k| *k == old_id),
        "{:?}",
        keys_of(&before)
    );
    assert!(
        keys_of(&across_id).iter().all(|k| *k == old_id),
        "{:?}",
        keys_of(&across_id)
    );
    assert!(
        keys_of(&after).iter().all(|k| *k == new_id),
        "{:?}",
        keys_of(&after)
    );
    // The audit log: checkpoints with the old key, then with the new one; the rotation audited.
    let events = audit_events(&b.state);
    let rot: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "signing_key_rotated")
        .collect();
    assert_eq!(rot.len(), 2, "one refused, one done: {rot:?}");
    assert_eq!(rot[0]["outcome"], "denied");
    assert_eq!(rot[1]["outcome"], "success");
    assert_eq!(rot[1]["detail"]["old_key_id"], old_id.as_str());
    assert_eq!(rot[1]["detail"]["new_key_id"], new_id.as_str());
    assert_eq!(rot[1]["principal"]["name"], "ada");
    let ck = log_keys(&b.state);
    let switch = ck
        .iter()
        .position(|k| *k == new_id)
        .expect("a new-key checkpoint");
    assert!(
        switch > 0 && ck[..switch].iter().all(|k| *k == old_id),
        "{ck:?}"
    );
    assert!(ck[switch..].iter().all(|k| *k == new_id), "{ck:?}");

    // The retired private key is gone from the state dir.
    let now_private = std::fs::read(b.state.join("audit.key")).unwrap();
    assert_ne!(now_private, old_private);
    let old_tail = &old_private[old_private.len() - 32..];
    for entry in std::fs::read_dir(&b.state).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(32).any(|w| w == old_tail),
                "the retired private key is still in {}",
                path.display()
            );
        }
    }
    assert!(!b.state.join("audit.key.new").exists());

    // Everything verifies across both keys, on the host and through the gateway.
    b.quiet().await;
    let out = b.local(&["audit", "verify", "--all"]);
    assert_ok(&out, "verify --all after rotation");
    assert!(
        out.stdout.contains("recordings vs audit log: ok"),
        "{out:?}"
    );
    let out = b.remote(&gw, &b.security, &["audit", "verify", "--all"]);
    assert_ok(&out, "verify --all through the gateway");
    // `pubkey --all` lists both keys, current and retired; plain `pubkey` the current one.
    for out in [
        b.local(&["audit", "pubkey", "--all"]),
        b.remote(&gw, &b.security, &["audit", "pubkey", "--all"]),
    ] {
        assert_ok(&out, "pubkey --all");
        let line = |id: &str| {
            out.stdout
                .lines()
                .find(|l| l.starts_with(id))
                .map(str::to_owned)
        };
        assert!(line(&old_id).unwrap().contains("retired"), "{out:?}");
        assert!(line(&new_id).unwrap().contains("current"), "{out:?}");
    }
    let out = b.local(&["audit", "pubkey"]);
    assert_eq!(
        out.stdout.trim(),
        hex::encode(keys.current().unwrap().public)
    );

    // The anchors went to the HTTP collector too: audit checkpoints under both keys, and the
    // three recordings; `--anchors URL` reads them back and everything agrees.
    let got = eventually(COMMAND_TIMEOUT, || {
        let text = collector.text();
        [&before, &across_id, &after]
            .iter()
            .all(|id| text.contains(&format!("\"session_id\":\"{id}\"")))
            && text.contains(&format!("\"kind\":\"audit\",\"gateway\":\"{old_id}\""))
            && text.contains(&format!("\"key_id\":\"{new_id}\""))
    })
    .await;
    assert!(got, "collector got: {}", collector.text());
    b.quiet().await;
    let out = b.local(&["audit", "verify", "--all", "--anchors", &url]);
    assert_ok(&out, "verify --all --anchors URL");
    assert!(out.stdout.contains("anchors: ok ("), "{out:?}");
    assert!(out.stdout.contains("3 recording anchors"), "{out:?}");

    // A restart on the rotated state dir resumes the log (checkpoints under both keys).
    let stderr = stop(gw);
    assert!(!stderr.contains("does not verify"), "{stderr}");
    let gw = b.start();
    let again = b.session(&gw, 5).await;
    assert!(keys_of(&again).iter().all(|k| *k == new_id));
    stop(gw);
    let out = b.local(&[
        "audit",
        "verify",
        "--all",
        "--anchors",
        b.anchors.to_str().unwrap(),
    ]);
    assert_ok(&out, "verify --all --anchors after the restart");

    // Locally, with the gateway stopped, a second rotation; still everything verifies.
    let out = b.local(&["audit", "rotate-key"]);
    assert_ok(&out, "local rotate-key");
    assert_eq!(b.keyring().entries().len(), 3);
    let out = b.local(&["audit", "verify", "--all"]);
    assert_ok(&out, "verify --all after the local rotation");

    // Case 58: a recording re-signed with a key that was never the gateway's fails, named.
    let foreign = Arc::new(ward_recording::Signer::generate().unwrap().0);
    let original = std::fs::read(b.recording(&before)).unwrap();
    let report = ward_recording::verify(&original, &b.keyring());
    let meta = report.meta.clone().unwrap();
    let end = report.end.clone().unwrap();
    let mut forged = Vec::new();
    let mut enc = ward_recording::Encoder::start(
        &meta,
        foreign.clone(),
        ward_recording::CheckpointPolicy::default(),
        &mut forged,
    )
    .unwrap();
    enc.data(
        ward_recording::Direction::Up,
        1,
        b"nothing happened",
        &mut forged,
    );
    enc.finish(2, &end, &mut forged);
    std::fs::write(b.recording(&before), &forged).unwrap();
    let out = b.local(&["audit", "verify", &before]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "signed by key {}, which was never this gateway's",
            foreign.key_id()
        )),
        "{out:?}"
    );
    let out = b.local(&[
        "audit",
        "verify",
        "--all",
        "--anchors",
        b.anchors.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("recording {before} differs from its anchor")),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Anchors catch what the files alone cannot
// ---------------------------------------------------------------------------------------------

/// The log up to and including its `n`-th line from the end that is a checkpoint.
fn cut_after_checkpoint(log: &[u8], from_end: usize) -> (Vec<u8>, usize) {
    let lines: Vec<&[u8]> = log.split_inclusive(|b| *b == b'\n').collect();
    let cps: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with(b"{\"type\":\"checkpoint\""))
        .map(|(i, _)| i)
        .collect();
    assert!(cps.len() > from_end, "only {} checkpoints", cps.len());
    let at = cps[cps.len() - 1 - from_end];
    (lines[..=at].concat(), at + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_rewritten_and_deleted_evidence_is_caught_with_anchors() {
    let b = Bench::new(None).await;
    let gw = b.start();
    let first = b.session(&gw, 10).await;
    // Quiet for a moment: the writer signs what it has (a checkpoint per session, at least).
    b.quiet().await;
    let second = b.session(&gw, 11).await;
    b.quiet().await;
    stop(gw);
    let anchors = b.anchors.to_str().unwrap().to_owned();
    let out = b.local(&["audit", "verify", "--all", "--anchors", &anchors]);
    assert_ok(&out, "untouched");
    assert!(out.stdout.contains("anchors: ok ("), "{out:?}");
    let log_path = b.state.join("audit.log");
    let log = std::fs::read(&log_path).unwrap();

    // 1. Cut exactly after a checkpoint (the second session's lines and the stop are gone).
    let (cut, lines) = cut_after_checkpoint(&log, 2);
    std::fs::write(&log_path, &cut).unwrap();
    let alone = b.local(&["audit", "verify"]);
    assert_ok(
        &alone,
        "a log cut after a checkpoint verifies on its own (the gap anchors close)",
    );
    assert!(alone.stdout.contains("audit log: ok"), "{alone:?}");
    let out = b.local(&["audit", "verify", "--anchors", &anchors]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "the audit log ends at line {lines} but an anchor from "
        )) && out.stdout.contains(": lines were cut"),
        "{out:?}"
    );
    let out = b.local(&["audit", "verify", "--all", "--anchors", &anchors]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.contains("lines were cut"), "{out:?}");

    // 2. Rewritten history: the attacker holds the host's key and re-signs a doctored log (the
    //    second session's open no longer names the device).
    let signer = Arc::new(
        ward_recording::Signer::from_pkcs8(&std::fs::read(b.state.join("audit.key")).unwrap())
            .unwrap(),
    );
    let mut chain =
        ward_recording::audit::AuditChain::new(signer, ward_recording::CheckpointPolicy::default());
    let mut rewritten = Vec::new();
    for line in log.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        if v["type"] == "checkpoint" {
            rewritten.extend(chain.checkpoint(0));
            continue;
        }
        let mut ev: ward_recording::audit::AuditEvent = serde_json::from_value(v).unwrap();
        if ev.session_id.as_deref() == Some(second.as_str()) && ev.event == "session_open" {
            ev.device = Some("nothing-to-see".into());
        }
        // Checkpoints stay where the original had them (with t = 0, the chain adds none).
        rewritten.extend(chain.line(&ev, 0));
    }
    std::fs::write(&log_path, &rewritten).unwrap();
    let alone = b.local(&["audit", "verify"]);
    assert_ok(&alone, "a re-signed log verifies on its own");
    let out = b.local(&["audit", "verify", "--anchors", &anchors]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("the audit log's history was rewritten"),
        "{out:?}"
    );

    // 3. A deleted recording is named (the log restored).
    std::fs::write(&log_path, &log).unwrap();
    std::fs::remove_file(b.recording(&first)).unwrap();
    let out = b.local(&["audit", "verify", "--anchors", &anchors]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("recording {first} is missing: an anchor from ")),
        "{out:?}"
    );
    let out = b.local(&["audit", "verify", "--all", "--anchors", &anchors]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("recording {first} is missing")),
        "{out:?}"
    );

    // 4. A forged anchor (signed by a key that was never the gateway's) is named, not trusted.
    let foreign = Arc::new(ward_recording::Signer::generate().unwrap().0);
    let mut fchain = ward_recording::audit::AuditChain::new(
        foreign,
        ward_recording::CheckpointPolicy::default(),
    );
    let mut written = Vec::new();
    for _ in 0..3 {
        written.extend(fchain.line(&audit_event(), 0));
        written.extend(fchain.checkpoint(0));
    }
    let gateway = std::fs::read_to_string(b.state.join("gateway.id")).unwrap();
    let mut forged = std::fs::read(&b.anchors).unwrap();
    for a in
        ward_recording::anchor::audit_anchors(&written, gateway.trim(), "2026-11-28T00:00:00.000Z")
    {
        forged.extend(a.to_line());
    }
    let forged_path = b.pki.dir.path().join("forged.jsonl");
    std::fs::write(&forged_path, &forged).unwrap();
    let out = b.local(&[
        "audit",
        "verify",
        "--anchors",
        forged_path.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains("which was never this gateway's: a forged anchor"),
        "{out:?}"
    );
}

fn audit_event() -> ward_recording::audit::AuditEvent {
    ward_recording::audit::AuditEvent {
        time: "2026-11-28T00:00:00.000Z".into(),
        event: "gateway_start".into(),
        outcome: "success".into(),
        severity: "info".into(),
        principal: None,
        source: None,
        device: None,
        session_id: None,
        reason: None,
        detail: Default::default(),
    }
}

/// A collector that is down: audited once as `anchor_failed` (high), the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_audited_once_and_sessions_go_on() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/anchors", closed.local_addr().unwrap());
    drop(closed);
    let b = Bench::new(Some(&url)).await;
    let gw = b.start();
    let one = b.session(&gw, 20).await;
    let two = b.session(&gw, 21).await;
    let failed = eventually(COMMAND_TIMEOUT, || {
        audit_events(&b.state)
            .iter()
            .any(|e| e["event"] == "anchor_failed")
    })
    .await;
    assert!(
        failed,
        "no anchor_failed event: {:?}",
        audit_events(&b.state)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = audit_events(&b.state);
    let fails: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "anchor_failed")
        .collect();
    assert_eq!(fails.len(), 1, "once per outage: {fails:?}");
    assert_eq!(fails[0]["severity"], "high");
    assert!(fails[0]["detail"]["sink"].as_str().unwrap().contains(&url));
    stop(gw);
    // The file sink got everything meanwhile.
    let out = b.local(&[
        "audit",
        "verify",
        "--all",
        "--anchors",
        b.anchors.to_str().unwrap(),
    ]);
    assert_ok(&out, "file anchors");
    let _ = (one, two);
}
