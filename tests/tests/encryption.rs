//! Recordings encrypted at rest (issue 18, security cases 57 and 58's first half), end to end with
//! the real `ward` binary and the Debian `age` tools:
//!
//! - a gateway with `[recording] recipients` records sessions that carry a 64-byte random marker
//!   both ways; the marker is nowhere under the state dir (every file, raw bytes: recordings,
//!   `ward.db` and its WAL, the audit log);
//! - `ward audit verify --all` passes with no identity anywhere;
//! - `age -d -i KEY` decrypts a sealed segment (`ward_recording::sealed::age_files`) to bytes that
//!   hold the marker;
//! - `ward export --format raw` and `ward replay` with `--identity-key` give back exactly what was
//!   sent, on the host and through `--gateway`; `ward sessions --grep` and `ward ops` work with it;
//! - without the key each of them fails naming `--identity-key` (never an empty answer), and so
//!   does the gateway, which holds no key: the web player answers 409 saying how to replay it;
//! - a recording re-encrypted to another recipient fails `ward audit verify`, whether re-signed
//!   with another key or spliced between the gateway's own checkpoints.
//!
//! Loopback only; every child process bounded. Under CI a missing `age` fails the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use ward_ca::{Identity, Kind, SystemClock};
use ward_client::Transport;
use ward_recording::{Direction, Reader, Record};
use ward_tests::process::{run, run_ok, ward};
use ward_tests::*;

const LIMIT: Duration = Duration::from_secs(30);

/// `age-keygen -o PATH`: the identity file (0600) and its recipient (`age1…`).
fn age_keygen(path: &Path) -> String {
    let out = run_ok(std::process::Command::new("age-keygen").arg("-o").arg(path));
    let text = std::fs::read_to_string(path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no public key in {path:?}: {out:?}"))
}

/// 64 printable random bytes (hex): survives the replay's terminal filters unchanged.
fn marker() -> Vec<u8> {
    hex::encode(rand::random::<[u8; 32]>()).into_bytes()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// The recordings of `state` (session ids).
fn recordings(state: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(state.join(ward_server::RECORDINGS_DIR))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".wrec")?.to_string())
        })
        .collect();
    ids.sort();
    ids
}

fn recording_path(state: &Path, id: &str) -> PathBuf {
    state
        .join(ward_server::RECORDINGS_DIR)
        .join(format!("{id}.wrec"))
}

/// A `ward` command without a reviewer key in its environment.
fn ward_nokey(args: &[&str]) -> std::process::Command {
    let mut cmd = ward(args);
    cmd.env_remove("WARD_IDENTITY_KEY");
    cmd
}

fn security_identity() -> Identity {
    let now = now();
    Identity {
        trust_domain: "ward.test".into(),
        kind: Kind::Security,
        name: "sam".into(),
        org: None,
        roles: Vec::new(),
        serial: format!("{:016x}", rand::random::<u64>()),
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::hours(1),
        uri: "spiffe://ward.test/security/sam".into(),
    }
}

/// `GET path` on the web console's router as `who` (its client certificate).
async fn web_get(router: &axum::Router, path: &str, who: &Identity) -> (StatusCode, String) {
    let mut req = Request::builder().uri(path).body(Body::empty()).unwrap();
    req.extensions_mut().insert(ward_server::web::ConnInfo {
        peer: "127.0.0.1:50000".parse().unwrap(),
        certificate: Some(who.clone()),
    });
    let resp = tokio::time::timeout(LIMIT, router.clone().oneshot(req))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Re-encrypt `bytes` (a recording encrypted to `key`'s recipient) to `to`, as an attacker holding
/// a reviewer key would: decrypted with the library, sealed again to `to`, the meta fixed up.
/// Returns (the whole recording written again and signed with the attacker's own key, the same
/// records spliced between the gateway's own checkpoints).
fn reencrypt(bytes: &[u8], key: &str, to: &age::x25519::Recipient) -> (Vec<u8>, Vec<u8>) {
    use ward_recording::sealed::{load_identities, Unsealer};
    let identities = load_identities(key).unwrap();
    let mut reader = Reader::new(bytes);
    let mut at = Vec::new();
    while let Some(r) = reader.next_record() {
        at.push(r.unwrap());
    }
    let Record::Meta(meta) = &at[0].record else {
        panic!("no meta first")
    };
    let unsealer = Unsealer::new(meta, &identities).unwrap();
    let attacker = Arc::new(ward_recording::Signer::generate().unwrap().0);
    let mut forged = Vec::new();
    let mut enc = ward_recording::Encoder::start_sealed(
        meta,
        attacker,
        ward_recording::CheckpointPolicy::default(),
        std::slice::from_ref(to),
        &mut forged,
    )
    .unwrap();
    // Each sealed record sealed again, alone: one forged sealed record per original.
    let mut spliced_sealed = Vec::new();
    let mut end = None;
    for r in &at {
        match &r.record {
            Record::Sealed { t_ns, body } => {
                for inner in unsealer.open(body).unwrap() {
                    match inner {
                        Record::Data { dir, t_ns, payload } => {
                            enc.data(dir, t_ns, &payload, &mut forged)
                        }
                        Record::Event {
                            t_ns,
                            dir,
                            kind,
                            fields,
                        } => enc.event(dir, t_ns, &kind, &fields, &mut forged),
                        other => panic!("inside a sealed record: {other:?}"),
                    }
                }
                let before = forged.len();
                enc.flush(*t_ns, &mut forged).unwrap();
                spliced_sealed.push(forged[before..].to_vec());
            }
            Record::End { t_ns, info } => end = Some((*t_ns, info.clone())),
            _ => {}
        }
    }
    let (t, info) = end.expect("an end record");
    enc.finish(t, &info, &mut forged);

    // The splice: the forged meta and sealed records, the gateway's checkpoints and end.
    let forged_meta = {
        let mut r = Reader::new(&forged);
        let m = r.next_record().unwrap().unwrap();
        forged[m.offset as usize..(m.offset + m.len) as usize].to_vec()
    };
    let mut spliced = bytes[..8].to_vec();
    let mut sealed = spliced_sealed.into_iter();
    for r in &at {
        let raw = &bytes[r.offset as usize..(r.offset + r.len) as usize];
        match &r.record {
            Record::Meta(_) => spliced.extend_from_slice(&forged_meta),
            Record::Sealed { .. } => {
                // A flush may have added a checkpoint after the sealed record: the sealed one only.
                let s = sealed.next().unwrap();
                assert_eq!(s[0], raw[0], "a sealed record");
                let len = 5 + u32::from_le_bytes(s[1..5].try_into().unwrap()) as usize;
                spliced.extend_from_slice(&s[..len]);
            }
            _ => spliced.extend_from_slice(raw),
        }
    }
    (forged, spliced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_recordings_hold_no_plaintext_verify_without_a_key_and_open_only_with_one() {
    if !require_peer("age") || !require_peer("age-keygen") {
        return;
    }
    init_logs();
    let pki = Arc::new(Pki::new());
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("reviewer-age-key.txt");
    let recipient = age_keygen(&key_file);
    let key = key_file.display().to_string();
    let echo = echo_device().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let mut tg = start_gateway(
        pki.clone(),
        &[DeviceSpec::new(
            "pump-12",
            echo,
            "raw",
            &[("vendor", "acme")],
        )],
        ACME_RULES,
        &format!("\n[recording]\nrecipients = [\"{recipient}\"]\n"),
        Arc::new(SystemClock),
    )
    .await;
    let state = tg.state_dir();
    let s = state.display().to_string();
    let gateway = tg.quic();
    let (sec, root) = (
        security.display().to_string(),
        pki.root().display().to_string(),
    );

    // Two sessions, each carrying its own marker both ways (the device echoes it).
    let client = tg.client(&vendor, Transport::Quic);
    let (m1, m2) = (marker(), marker());
    let mut sent = Vec::new();
    for m in [&m1, &m2] {
        let data = [b"typed: ".as_slice(), m, b"\r\n"].concat();
        let (echoed, _) =
            echo_session(client.open("pump-12", false, None).await.unwrap(), &data).await;
        assert_eq!(echoed, data, "the device echoed the marker");
        sent.push(data);
    }
    assert!(eventually(LIMIT, || tg.live_sessions() == 0).await);
    let ids = recordings(&state);
    assert_eq!(ids.len(), 2, "{ids:?}");
    // Which recording holds which session (sessions start one after the other).
    let by_time = |id: &String| {
        std::fs::metadata(recording_path(&state, id))
            .unwrap()
            .modified()
            .unwrap()
    };
    let mut ids_by_time = ids.clone();
    ids_by_time.sort_by_key(by_time);
    let (id1, id2) = (ids_by_time[0].clone(), ids_by_time[1].clone());

    // The web console: the gateway holds no key, so the player says how to replay it.
    let router = tg.gw.as_ref().unwrap().web_router();
    let sam = security_identity();
    let (status, body) = web_get(&router, &format!("/api/v1/sessions/{id1}/timeline"), &sam).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("encrypted at rest")
            && body.contains(&format!("ward replay {id1}"))
            && body.contains("--identity-key"),
        "{body}"
    );
    let (status, body) = web_get(
        &router,
        &format!("/api/v1/sessions/{id1}/export?format=raw&dir=up"),
        &sam,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(!contains(body.as_bytes(), &m1), "no plaintext in a refusal");
    // The metadata still shows (it is stored in plaintext), with its verification.
    let (status, body) = web_get(&router, &format!("/api/v1/sessions/{id1}"), &sam).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"verification\":\"ok\""), "{body}");
    let (status, body) = web_get(&router, "/api/v1/sessions?grep=typed", &sam).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("ward sessions --grep"), "{body}");

    // Through the gateway without a key: a clear error naming the flag, never an empty replay.
    let through: &[&str] = &["--gateway", &gateway, "--identity", &sec, "--ca", &root];
    let out = run(&mut ward_nokey(
        &[&["replay", &id1, "--no-timing"][..], through].concat(),
    ));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("--identity-key"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = run(&mut ward_nokey(
        &[&["sessions", "--grep", "typed"][..], through].concat(),
    ));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("--identity-key"), "{out:?}");
    let out = run(&mut ward_nokey(&[&["ops", &id1][..], through].concat()));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("--identity-key"), "{out:?}");

    // Through the gateway with the key: decrypted here, byte for byte what was sent.
    let exports = tempfile::tempdir().unwrap();
    let p = exports.path().join("gw").display().to_string();
    run_ok(&mut ward_nokey(
        &[
            &[
                "export",
                &id1,
                "--format",
                "raw",
                "--out",
                &p,
                "--identity-key",
                &key,
            ][..],
            through,
        ]
        .concat(),
    ));
    assert_eq!(std::fs::read(format!("{p}.up")).unwrap(), sent[0]);
    assert_eq!(std::fs::read(format!("{p}.down")).unwrap(), sent[0]);
    let out = run_ok(&mut ward_nokey(
        &[
            &[
                "replay",
                &id2,
                "--no-timing",
                "--raw",
                "--identity-key",
                &key,
            ][..],
            through,
        ]
        .concat(),
    ));
    assert!(contains(out.stdout.as_bytes(), &m2), "{out:?}");
    let out = run_ok(&mut ward_nokey(
        &[
            &[
                "sessions",
                "--json",
                "--grep",
                std::str::from_utf8(&m2).unwrap(),
            ][..],
            &["--identity-key", &key],
            through,
        ]
        .concat(),
    ));
    let found: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(found.len(), 1, "{out:?}");
    assert!(found[0].contains(&id2), "{out:?}");
    let out = run_ok(&mut ward_nokey(
        &[&["ops", &id1, "--identity-key", &key][..], through].concat(),
    ));
    assert!(out.stdout.contains("no operations recorded"), "{out:?}");

    // The gateway audited who fetched what to decrypt where.
    tg.shutdown(Duration::from_millis(200)).await;
    let events = audit_events(&state);
    for ev in [
        "recording_searched",
        "operations_viewed",
        "recording_exported",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == ev && e["outcome"] == "success"),
            "{ev} audited"
        );
    }

    // Case 57: no payload byte in plaintext anywhere under the state dir.
    let all = files(&state);
    assert!(
        all.iter().any(|f| f.ends_with("ward.db")),
        "the store is there to look at: {all:?}"
    );
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        for m in [&m1, &m2] {
            assert!(
                !contains(&bytes, m),
                "the marker is in plaintext in {}",
                f.display()
            );
        }
    }

    // Case 58: integrity checks out with no identity anywhere.
    let out = run_ok(&mut ward_nokey(&[
        "audit",
        "verify",
        "--all",
        "--state-dir",
        &s,
    ]));
    assert!(
        out.stdout.contains("recordings vs audit log: ok"),
        "{out:?}"
    );

    // The Debian age tool decrypts a sealed segment: the marker is inside.
    let stored = std::fs::read(recording_path(&state, &id1)).unwrap();
    let segments = ward_recording::sealed::age_files(&stored).unwrap();
    assert!(!segments.is_empty());
    let mut plain = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let f = exports.path().join(format!("{id1}-{i:04}.age"));
        std::fs::write(&f, seg).unwrap();
        let out = std::process::Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&key_file)
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "age -d: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        plain.extend_from_slice(&out.stdout);
    }
    assert!(contains(&plain, &m1), "age -d output holds the marker");

    // On the host, with the key: the same bytes; without it: the flag named.
    let p = exports.path().join("host").display().to_string();
    run_ok(&mut ward_nokey(&[
        "export",
        &id2,
        "--format",
        "raw",
        "--out",
        &p,
        "--state-dir",
        &s,
        "--identity-key",
        &key,
    ]));
    assert_eq!(std::fs::read(format!("{p}.up")).unwrap(), sent[1]);
    assert_eq!(std::fs::read(format!("{p}.down")).unwrap(), sent[1]);
    let mut with_env = ward(&["replay", &id2, "--no-timing", "--raw", "--state-dir", &s]);
    with_env.env("WARD_IDENTITY_KEY", &key_file);
    let out = run_ok(&mut with_env);
    assert!(contains(out.stdout.as_bytes(), &m2), "{out:?}");
    let out = run(&mut ward_nokey(&[
        "replay",
        &id2,
        "--no-timing",
        "--state-dir",
        &s,
    ]));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("recording {id2} is encrypted at rest"))
            && out.stderr.contains("--identity-key"),
        "{out:?}"
    );
    let out = run(&mut ward_nokey(&[
        "export",
        &id2,
        "--format",
        "json",
        "--out",
        "-",
        "--state-dir",
        &s,
    ]));
    assert!(
        !out.status.success() && out.stderr.contains("--identity-key"),
        "{out:?}"
    );
    let out = run(&mut ward_nokey(&[
        "sessions",
        "--grep",
        "typed",
        "--state-dir",
        &s,
    ]));
    assert!(
        !out.status.success() && out.stderr.contains("--identity-key"),
        "{out:?}"
    );
    let out = run_ok(&mut ward_nokey(&[
        "sessions",
        "--json",
        "--grep",
        std::str::from_utf8(&m1).unwrap(),
        "--state-dir",
        &s,
        "--identity-key",
        &key,
    ]));
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    assert!(out.stdout.contains(&id1), "{out:?}");
    // Another reviewer's key is not one of the recipients: refused, saying so.
    let other_file = keys.path().join("other.txt");
    age_keygen(&other_file);
    let out = run(&mut ward_nokey(&[
        "replay",
        &id2,
        "--no-timing",
        "--state-dir",
        &s,
        "--identity-key",
        &other_file.display().to_string(),
    ]));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("cannot be decrypted"), "{out:?}");

    // Case 58: re-encrypted to an attacker's recipient, the recording no longer verifies —
    // re-signed with another key, or spliced between the gateway's own checkpoints.
    let attacker = age::x25519::Identity::generate();
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    let (forged, spliced) = reencrypt(&stored, &key_text, &attacker.to_public());
    let path = recording_path(&state, &id1);
    for (what, bytes) in [("re-signed", forged), ("spliced", spliced)] {
        assert!(!contains(&bytes, &m1));
        std::fs::write(&path, &bytes).unwrap();
        let out = run(&mut ward_nokey(&[
            "audit",
            "verify",
            &id1,
            "--state-dir",
            &s,
        ]));
        assert!(!out.status.success(), "{what}: {out:?}");
        assert!(out.stdout.contains("FAILED"), "{what}: {out:?}");
    }
    std::fs::write(&path, &stored).unwrap();
    run_ok(&mut ward_nokey(&[
        "audit",
        "verify",
        &id1,
        "--state-dir",
        &s,
    ]));
}
