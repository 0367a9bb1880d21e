//! Evidence bundles (issue 18 item 5, security case 60): `ward evidence export` writes one file
//! that verifies on another machine with the gateway's state dir gone, fails after one flipped
//! byte anywhere (naming what), and verifies by hand with `tar`, `sha256sum -c` and
//! `openssl pkeyutl`. Through `--gateway` the gateway signs, only for security and admin
//! identities, only recordings it holds, and audits `evidence_exported`.
//!
//! Under CI a missing peer (sha256sum, openssl, tar) fails the test; locally it skips that part.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ward_ca::{Clock, Kind, SystemClock};
use ward_client::Transport;
use ward_core::frame::Review;
use ward_tests::process::*;
use ward_tests::*;

/// The tar entries of a bundle: (path, offset of its data, its size).
fn tar_entries(bytes: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 512 <= bytes.len() {
        let h = &bytes[pos..pos + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let prefix_end = h[345..500].iter().position(|b| *b == 0).unwrap_or(155);
        let name = String::from_utf8(h[..name_end].to_vec()).unwrap();
        let prefix = String::from_utf8(h[345..345 + prefix_end].to_vec()).unwrap();
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size_text = String::from_utf8(h[124..136].to_vec()).unwrap();
        let size =
            usize::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .unwrap();
        out.push((path, pos + 512, size));
        pos += 512 + size.div_ceil(512) * 512;
    }
    out
}

fn entry<'a>(entries: &'a [(String, usize, usize)], path: &str) -> &'a (String, usize, usize) {
    entries
        .iter()
        .find(|(p, _, _)| p == path)
        .unwrap_or_else(|| panic!("no {path} in {entries:?}"))
}

fn verify(bundle: &Path, extra: &[&str]) -> Finished {
    let mut args = vec!["evidence", "verify", bundle.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&mut ward(&args))
}

/// Two recorded sessions through a gateway; returns their ids (sorted).
async fn two_sessions(tg: &TestGateway, vendor: &Path) -> Vec<String> {
    let client = tg.client(vendor, Transport::Quic);
    let mut ids = Vec::new();
    for text in [&b"status\r\n"[..], b"rate 12.5\r\n"] {
        let session = client.open("pump-12", false, None).await.unwrap();
        ids.push(session.session_id.clone());
        let (_, end) = echo_session(session, text).await;
        assert!(matches!(end, ward_client::SessionEnd::Completed), "{end:?}");
    }
    ids.sort();
    ids
}

/// Flip one byte of `bytes` at `at`, write it next to `dir`, verify it, expect a failure naming
/// `names`.
fn flipped_fails(dir: &Path, bytes: &[u8], at: usize, label: &str, names: &[&str]) {
    let mut bad = bytes.to_vec();
    bad[at] ^= 0x01;
    let path = dir.join(format!("flipped-{label}.ward-evidence"));
    std::fs::write(&path, &bad).unwrap();
    let out = verify(&path, &[]);
    assert!(
        !out.status.success(),
        "{label}: a flipped byte at {at} verified: {out:?}"
    );
    let last = out.stdout.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("evidence: FAILED: "), "{label}: {out:?}");
    for n in names {
        assert!(
            last.contains(n),
            "{label}: expected {n:?} in {last:?}\n{out:?}"
        );
    }
}

/// Security case 60: exported from the state dir (signed with its key) and through the gateway
/// (signed by the gateway, audited), copied elsewhere with the state dir deleted: verifies; one
/// flipped byte in a recording, the slice, the report, the sums, the signature or a tar header
/// fails, naming it; the sums recomputed after an edit fail on the signature; a key the auditor
/// pins that is not the gateway's fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_verifies_elsewhere_without_the_gateway_and_fails_after_one_flipped_byte() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let device = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        device,
        "telnet",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut tg = start_gateway(pki.clone(), &devices, ACME_RULES, "", clock.clone()).await;
    let state = tg.state_dir();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let sam = pki.person(Kind::Security, "sam", None, &[]);
    let ids = two_sessions(&tg, &vendor).await;
    let out_dir = tempfile::tempdir().unwrap();

    // Through the gateway: the gateway signs and audits.
    let remote = out_dir.path().join("remote.ward-evidence");
    let root = pki.root();
    let quic = tg.quic();
    let mut args = vec!["evidence", "export"];
    args.extend(ids.iter().map(String::as_str));
    args.extend([
        "--gateway",
        &quic,
        "--identity",
        sam.to_str().unwrap(),
        "--ca",
        root.to_str().unwrap(),
        "--out",
        remote.to_str().unwrap(),
    ]);
    let out = run_ok(&mut ward(&args));
    assert!(out.stdout.contains("wrote "), "{out:?}");
    // Never overwritten.
    let again = run(&mut ward(&args));
    assert!(
        !again.status.success() && again.stderr.contains("exists"),
        "{again:?}"
    );

    // The gateway audited what it signed: the sessions and the digest of SHA256SUMS.
    let bytes = std::fs::read(&remote).unwrap();
    let entries = tar_entries(&bytes);
    let (_, off, len) = entry(&entries, "SHA256SUMS");
    let sums = bytes[*off..*off + *len].to_vec();
    let exported: Vec<_> = audit_events(&state)
        .into_iter()
        .filter(|e| e["event"] == "evidence_exported")
        .collect();
    assert_eq!(exported.len(), 1, "{exported:?}");
    let e = &exported[0];
    assert_eq!(e["outcome"], "success", "{e}");
    assert_eq!(e["principal"]["name"], "sam", "{e}");
    assert_eq!(e["detail"]["sha256sums"], sha256(&sums), "{e}");
    assert_eq!(
        e["detail"]["sessions"],
        serde_json::json!(ids),
        "the event names the sessions"
    );

    // From the state dir, the gateway stopped: signed with the state dir's key.
    tg.shutdown(Duration::from_millis(50)).await;
    let local = out_dir.path().join("local.ward-evidence");
    let mut args = vec!["evidence", "export"];
    args.extend(ids.iter().map(String::as_str));
    args.extend([
        "--state-dir",
        state.to_str().unwrap(),
        "--out",
        local.to_str().unwrap(),
    ]);
    run_ok(&mut ward(&args));
    let key_hex = std::fs::read_to_string(state.join("audit.pub"))
        .unwrap()
        .trim()
        .to_string();

    // Elsewhere, the state dir gone.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut copies = Vec::new();
    for (name, src) in [("remote", &remote), ("local", &local)] {
        let copy = elsewhere
            .path()
            .join(format!("case-42-{name}.ward-evidence"));
        std::fs::copy(src, &copy).unwrap();
        copies.push(copy);
    }
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::remove_file(&remote).unwrap();
    std::fs::remove_file(&local).unwrap();
    let key_id = {
        let raw: [u8; 32] = hex::decode(&key_hex).unwrap().try_into().unwrap();
        ward_recording::key_id_of(&raw)
    };
    for copy in &copies {
        let out = verify(copy, &[]);
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.contains("evidence: ok"), "{out:?}");
        assert!(
            out.stdout.contains(&format!("signing key ids: {key_id}")),
            "{out:?}"
        );
        assert!(out.stdout.contains("ward audit pubkey --all"), "{out:?}");
        for id in &ids {
            assert!(
                out.stdout.contains(&format!("recording {id}: ok")),
                "{out:?}"
            );
        }
        assert!(
            out.stdout.contains("recordings vs audit slice: ok"),
            "{out:?}"
        );
        // Pinned to the gateway's key: ok; to another key: the signature fails.
        let pinned = verify(copy, &["--pubkey", &key_hex]);
        assert!(pinned.status.success(), "{pinned:?}");
        let other = hex::encode([7u8; 32]);
        let wrong = verify(copy, &["--pubkey", &other]);
        assert!(!wrong.status.success(), "{wrong:?}");
        assert!(
            wrong.stdout.contains("evidence: FAILED: signature"),
            "{wrong:?}"
        );
    }

    // One flipped byte, at several offsets.
    let copy = &copies[0];
    let bytes = std::fs::read(copy).unwrap();
    let entries = tar_entries(&bytes);
    let rec = format!("recordings/{}.wrec", ids[0]);
    let (_, rec_off, rec_len) = entry(&entries, &rec);
    let (_, slice_off, slice_len) = entry(&entries, "audit/slice.jsonl");
    let (_, report_off, report_len) = entry(&entries, "report.html");
    let (_, sums_off, _) = entry(&entries, "SHA256SUMS");
    let (_, sig_off, _) = entry(&entries, "SHA256SUMS.sig");
    let d = elsewhere.path();
    for (at, label, names) in [
        (
            rec_off + 3,
            "recording magic",
            vec!["SHA256SUMS", rec.as_str(), "altered"],
        ),
        (
            rec_off + rec_len / 2,
            "recording middle",
            vec!["SHA256SUMS", rec.as_str()],
        ),
        (
            rec_off + rec_len - 1,
            "recording end",
            vec!["SHA256SUMS", rec.as_str()],
        ),
        (
            slice_off + slice_len / 2,
            "slice",
            vec!["audit/slice.jsonl"],
        ),
        (report_off + report_len / 3, "report", vec!["report.html"]),
        // A digest's first hex digit: that file's sum no longer matches.
        (*sums_off, "sums", vec!["SHA256SUMS"]),
        (
            sig_off + 10,
            "signature",
            vec!["signature", "SHA256SUMS.sig does not verify"],
        ),
        // A tar header (the manifest's name field): the tar checksum fails.
        (
            entry(&entries, "manifest.json").1 - 512 + 2,
            "tar header",
            vec!["bundle"],
        ),
    ] {
        flipped_fails(d, &bytes, at, label, &names);
    }

    // An edit with SHA256SUMS recomputed to match: the signature catches it.
    let dir = tempfile::tempdir().unwrap();
    if require_peer("tar") && require_peer("sha256sum") {
        let x = dir.path();
        run_ok(Command::new("tar").arg("xf").arg(copy).arg("-C").arg(x));
        let report = x.join("report.html");
        let text = std::fs::read_to_string(&report).unwrap();
        std::fs::write(&report, text.replace("jdoe", "jdo3")).unwrap();
        let listed: Vec<String> = std::fs::read_to_string(x.join("SHA256SUMS"))
            .unwrap()
            .lines()
            .map(|l| l[66..].to_string())
            .collect();
        let sums = run_ok(Command::new("sha256sum").args(&listed).current_dir(x));
        std::fs::write(x.join("SHA256SUMS"), sums.stdout).unwrap();
        let forged = d.join("forged.ward-evidence");
        let mut tar = Command::new("tar");
        tar.arg("cf")
            .arg(&forged)
            .arg("-C")
            .arg(x)
            .arg("SHA256SUMS")
            .arg("SHA256SUMS.sig");
        tar.args(&listed);
        run_ok(&mut tar);
        let out = verify(&forged, &[]);
        assert!(!out.status.success(), "{out:?}");
        assert!(
            out.stdout.contains("SHA256SUMS: ok"),
            "the sums were made to match: {out:?}"
        );
        assert!(
            out.stdout.contains("evidence: FAILED: signature"),
            "{out:?}"
        );
    }
}

/// The by-hand path of docs/evidence.md with the real tools: `tar xf`, `sha256sum -c SHA256SUMS`,
/// `openssl pkeyutl -verify -pubin -inkey keys/<id>.pem -rawin -in SHA256SUMS -sigfile
/// SHA256SUMS.sig`; and the same openssl check fails on an altered SHA256SUMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_verifies_by_hand_with_sha256sum_and_openssl() {
    init_logs();
    let (have_tar, have_sums, have_openssl) = (
        require_peer("tar"),
        require_peer("sha256sum"),
        require_peer("openssl"),
    );
    let pki = Arc::new(Pki::new());
    let device = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        device,
        "telnet",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut tg = start_gateway(pki.clone(), &devices, ACME_RULES, "", clock).await;
    let state = tg.state_dir();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let ids = two_sessions(&tg, &vendor).await;
    tg.shutdown(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("case.ward-evidence");
    run_ok(&mut ward(&[
        "evidence",
        "export",
        &ids[0],
        "--state-dir",
        state.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]));
    if !have_tar {
        return;
    }
    let listing = run_ok(Command::new("tar").arg("tf").arg(&bundle));
    for want in [
        "SHA256SUMS",
        "SHA256SUMS.sig",
        "manifest.json",
        "report.html",
        "audit/slice.jsonl",
        "keys/audit-keys.jsonl",
        &format!("recordings/{}.wrec", ids[0]),
    ] {
        assert!(
            listing.stdout.lines().any(|l| l == want),
            "{want} not in `tar tf`: {}",
            listing.stdout
        );
    }
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run_ok(Command::new("tar").arg("xf").arg(&bundle).arg("-C").arg(&x));
    if have_sums {
        let out = run_ok(
            Command::new("sha256sum")
                .args(["-c", "SHA256SUMS"])
                .current_dir(&x),
        );
        assert!(out.stdout.contains("report.html: OK"), "{out:?}");
        assert!(!out.stdout.contains("FAILED"), "{out:?}");
    }
    if have_openssl {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
        let key_id = manifest["signing_key_id"].as_str().unwrap().to_string();
        let pem = format!("keys/{key_id}.pem");
        let openssl = |sums: &str| {
            run(Command::new("openssl")
                .args(["pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-rawin"])
                .args(["-in", sums, "-sigfile", "SHA256SUMS.sig"])
                .current_dir(&x))
        };
        let out = openssl("SHA256SUMS");
        assert!(out.status.success(), "{out:?}");
        assert!(
            out.stdout.contains("Signature Verified Successfully"),
            "{out:?}"
        );
        // The PEM is the gateway's key.
        let der = run_ok(
            Command::new("openssl")
                .args(["pkey", "-pubin", "-in", &pem, "-outform", "DER"])
                .current_dir(&x),
        );
        let raw = &der.raw_stdout[der.raw_stdout.len() - 32..];
        let key_hex = std::fs::read_to_string(state.join("audit.pub")).unwrap();
        assert_eq!(hex::encode(raw), key_hex.trim());
        // An altered SHA256SUMS does not verify.
        let mut sums = std::fs::read(x.join("SHA256SUMS")).unwrap();
        sums[0] = if sums[0] == b'0' { b'1' } else { b'0' };
        std::fs::write(x.join("SHA256SUMS.altered"), &sums).unwrap();
        let out = openssl("SHA256SUMS.altered");
        assert!(!out.status.success(), "{out:?}");
    }
}

/// Only security and admin identities get a bundle signed, and only over the recordings the
/// gateway holds: a vendor is refused (audited `denied`); a security identity sending sums whose
/// recording digest is not the stored recording's, or naming other sessions, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_signs_only_for_reviewers_and_only_its_own_recordings() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let device = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        device,
        "telnet",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let tg = start_gateway(pki.clone(), &devices, ACME_RULES, "", clock).await;
    let state = tg.state_dir();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let sam = pki.person(Kind::Security, "sam", None, &[]);
    let ids = two_sessions(&tg, &vendor).await;
    let rec = std::fs::read(state.join("recordings").join(format!("{}.wrec", ids[0]))).unwrap();
    let good = ward_recording::evidence::make_sums([
        ("manifest.json", &b"{}"[..]),
        (&format!("recordings/{}.wrec", ids[0]), &rec[..]),
    ])
    .unwrap();
    let sign = |who: &Path, sessions: Vec<String>, sums: Vec<u8>| {
        let client = tg.client(who, Transport::Quic);
        async move {
            client
                .review_upload(Review::SignEvidence { sessions }, &sums)
                .await
        }
    };
    // A vendor: refused.
    let e = sign(&vendor, vec![ids[0].clone()], good.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("only security and admin"), "{e}");
    // Security, a digest that is not the stored recording's.
    let forged = ward_recording::evidence::make_sums([(
        format!("recordings/{}.wrec", ids[0]).as_str(),
        &b"not the recording"[..],
    )])
    .unwrap();
    let e = sign(&sam, vec![ids[0].clone()], forged)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not the recording stored here"), "{e}");
    // Security, naming a session the sums do not hold.
    let e = sign(&sam, ids.clone(), good.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("exactly the sessions named"), "{e}");
    // Not a SHA256SUMS (e.g. a checkpoint message): refused, never signed.
    let e = sign(
        &sam,
        vec![ids[0].clone()],
        b"ward-audit-checkpoint-v1".to_vec(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("not an evidence SHA256SUMS"), "{e}");
    // Well-formed and its own: signed, with the key the gateway publishes.
    let answer = sign(&sam, vec![ids[0].clone()], good.clone())
        .await
        .unwrap();
    let sig: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let key_hex = std::fs::read_to_string(state.join("audit.pub")).unwrap();
    assert_eq!(sig["public"], key_hex.trim());
    let public: [u8; 32] = hex::decode(key_hex.trim()).unwrap().try_into().unwrap();
    let raw = hex::decode(sig["sig"].as_str().unwrap()).unwrap();
    assert!(ward_recording::evidence::verify_sums(&public, &good, &raw));
    // Audited: one success, the rest refused or denied.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let events: Vec<_> = audit_events(&state)
        .into_iter()
        .filter(|e| e["event"] == "evidence_exported")
        .map(|e| e["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        ["denied", "failure", "failure", "failure", "success"],
        "{events:?}"
    );
}

/// A state dir as a gateway with `[recording] recipients` leaves it: one recording sealed to
/// `recipient` (carrying `marker` up and down), its audit trail, the signing key. Returns the
/// session id.
fn sealed_state_dir(state: &Path, recipient: &str, marker: &[u8]) -> String {
    use ward_recording::audit::{AuditChain, AuditEvent, AuditPrincipal};
    use ward_recording::{CheckpointPolicy, Direction, Encoder, EndInfo, SessionMeta, Signer};
    std::fs::create_dir_all(state.join("recordings")).unwrap();
    let (signer, pkcs8) = Signer::generate().unwrap();
    let signer = Arc::new(signer);
    std::fs::write(state.join("audit.key"), pkcs8).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        state.join("audit.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        state.join("audit.pub"),
        format!("{}\n", hex::encode(signer.public_key())),
    )
    .unwrap();
    let id = "00c0ffee000000a1".to_string();
    let meta = SessionMeta {
        session_id: id.clone(),
        principal_kind: "vendor".into(),
        principal_name: "jdoe".into(),
        principal_org: Some("acme".into()),
        cert_serial: "01".into(),
        source: "127.0.0.1:50000".into(),
        device: "pump-12".into(),
        device_addr: "127.0.0.1:2323".into(),
        protocol: "telnet".into(),
        rule: "acme-maintains-its-pumps".into(),
        transport: "quic".into(),
        break_glass: false,
        started_unix_ms: 1_795_000_000_000,
        recipients: Vec::new(),
        age_header: None,
    };
    let r = ward_recording::sealed::parse_recipient(recipient).unwrap();
    let mut out = Vec::new();
    let policy = CheckpointPolicy::default();
    let mut enc = Encoder::start_sealed(&meta, signer.clone(), policy, &[r], &mut out).unwrap();
    enc.data(Direction::Up, 1_000, marker, &mut out);
    enc.flush(1_000, &mut out).unwrap();
    enc.data(Direction::Down, 2_000, marker, &mut out);
    enc.flush(2_000, &mut out).unwrap();
    let n = marker.len() as u64;
    let end = EndInfo {
        ended_unix_ms: 1_795_000_001_000,
        reason: "completed".into(),
        bytes_up: n,
        bytes_down: n,
    };
    enc.finish(3_000, &end, &mut out);
    std::fs::write(state.join("recordings").join(format!("{id}.wrec")), &out).unwrap();
    let event = |kind: &str, detail: serde_json::Value| AuditEvent {
        time: "2026-11-28T16:00:00.000Z".into(),
        event: kind.into(),
        outcome: "success".into(),
        severity: "info".into(),
        principal: Some(AuditPrincipal {
            name: "jdoe".into(),
            kind: "vendor".into(),
            org: Some("acme".into()),
            serial: "01".into(),
        }),
        source: None,
        device: Some("pump-12".into()),
        session_id: Some(id.clone()),
        reason: Some("permitted".into()),
        detail: serde_json::from_value(detail).unwrap(),
    };
    let mut chain = AuditChain::new(signer, policy);
    let mut log = Vec::new();
    log.extend(chain.line(&event("gateway_start", serde_json::json!({})), 0));
    log.extend(chain.checkpoint(0));
    log.extend(chain.line(
        &event(
            "session_open",
            serde_json::json!({"recorded": true, "rule": "acme-maintains-its-pumps"}),
        ),
        0,
    ));
    log.extend(chain.line(
        &event(
            "session_close",
            serde_json::json!({"bytes_up": n, "bytes_down": n}),
        ),
        0,
    ));
    log.extend(chain.checkpoint(0));
    std::fs::write(state.join("audit.log"), log).unwrap();
    id
}

/// An age key pair made with the real `age-keygen`: (identity file, recipient).
fn age_keygen(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(format!("{name}.age"));
    run_ok(Command::new("age-keygen").arg("-o").arg(&path));
    let public = run_ok(Command::new("age-keygen").arg("-y").arg(&path));
    (path, public.stdout.trim().to_string())
}

/// Encrypted recordings: the bundle carries their sealed segments as age files that the real
/// `age -d` opens with the security team's identity (and that verify compares with the
/// recording byte for byte, with no key); with `--recipient`, one payload re-encrypted to an
/// auditor, which `age -d` opens with the auditor's identity and `ward evidence verify
/// --identity-key` checks against the recording. The marker is nowhere in the bundle's bytes.
#[test]
fn encrypted_recordings_go_in_sealed_or_reencrypted_to_an_auditor() {
    if !(require_peer("age") && require_peer("age-keygen") && require_peer("tar")) {
        return;
    }
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (team, team_recipient) = age_keygen(dir.path(), "team");
    let (auditor, auditor_recipient) = age_keygen(dir.path(), "auditor");
    let marker: Vec<u8> = (0..64u32).map(|i| b'A' + ((i * 7) % 26) as u8).collect();
    let state = dir.path().join("state");
    let id = sealed_state_dir(&state, &team_recipient, &marker);
    let s = state.to_str().unwrap();

    // Sealed segments, no key needed to export or verify.
    let b1 = dir.path().join("sealed.ward-evidence");
    run_ok(&mut ward(&[
        "evidence",
        "export",
        &id,
        "--state-dir",
        s,
        "--out",
        b1.to_str().unwrap(),
    ]));
    let bytes = std::fs::read(&b1).unwrap();
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_slice()),
        "the payload is in the bundle in the clear"
    );
    let out = verify(&b1, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "payload {id}: ok (2 age file(s), each the recording's sealed segment byte for byte)"
        )),
        "{out:?}"
    );
    let with_key = verify(&b1, &["--identity-key", team.to_str().unwrap()]);
    assert!(with_key.status.success(), "{with_key:?}");
    assert!(
        with_key.stdout.contains("each decrypted with the identity"),
        "{with_key:?}"
    );
    let x = dir.path().join("x1");
    std::fs::create_dir(&x).unwrap();
    run_ok(Command::new("tar").arg("xf").arg(&b1).arg("-C").arg(&x));
    let seg = x.join("payload").join(&id).join("0001.age");
    let plain = run_ok(Command::new("age").arg("-d").arg("-i").arg(&team).arg(&seg));
    assert!(
        plain
            .raw_stdout
            .windows(marker.len())
            .any(|w| w == marker.as_slice()),
        "age -d of the first segment lacks the marker"
    );
    // Not with the auditor's identity.
    let refused = run(Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&auditor)
        .arg(&seg));
    assert!(!refused.status.success(), "{refused:?}");

    // Re-encrypted to the auditor.
    let b2 = dir.path().join("auditor.ward-evidence");
    run_ok(&mut ward(&[
        "evidence",
        "export",
        &id,
        "--state-dir",
        s,
        "--out",
        b2.to_str().unwrap(),
        "--recipient",
        &auditor_recipient,
        "--identity-key",
        team.to_str().unwrap(),
    ]));
    let out = verify(&b2, &["--identity-key", auditor.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "payload {id}: ok (decrypted: the recording's meta"
        )),
        "{out:?}"
    );
    assert!(out.stdout.contains("64 bytes up, 64 down"), "{out:?}");
    // The team's identity opens both: the payload equals the recording's records.
    let out = verify(&b2, &["--identity-key", team.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "the team's identity does not open the auditor's payload: {out:?}"
    );
    assert!(
        out.stdout.contains("does not open with the identity given"),
        "{out:?}"
    );
    // An identity file holding both keys opens the payload and the recording: equal.
    let both = dir.path().join("both.age");
    let text =
        std::fs::read_to_string(&team).unwrap() + &std::fs::read_to_string(&auditor).unwrap();
    std::fs::write(&both, text).unwrap();
    std::fs::set_permissions(&both, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = verify(&b2, &["--identity-key", both.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("equal to the recording's records"),
        "{out:?}"
    );
    let x = dir.path().join("x2");
    std::fs::create_dir(&x).unwrap();
    run_ok(Command::new("tar").arg("xf").arg(&b2).arg("-C").arg(&x));
    let plain = run_ok(
        Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&auditor)
            .arg(x.join("payload").join(format!("{id}.age"))),
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&marker);
    assert_eq!(plain.stdout.matches(&b64).count(), 2, "{}", plain.stdout);
    // --recipient without a key that opens the recording: refused, naming what is needed.
    let b3 = dir.path().join("nokey.ward-evidence");
    let out = run(&mut ward(&[
        "evidence",
        "export",
        &id,
        "--state-dir",
        s,
        "--out",
        b3.to_str().unwrap(),
        "--recipient",
        &auditor_recipient,
        "--identity-key",
        auditor.to_str().unwrap(),
    ]));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("none of the 1 identities given matches"),
        "{out:?}"
    );
}

/// A gateway with `[recording] recipients`: sessions recorded encrypted, exported through
/// `--gateway` (the gateway signs without being able to read them), verified elsewhere with no
/// key and with the team's identity; `age -d` opens a segment and finds what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_recordings_export_through_the_gateway() {
    init_logs();
    if !(require_peer("age") && require_peer("age-keygen") && require_peer("tar")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (team, team_recipient) = age_keygen(dir.path(), "team");
    let pki = Arc::new(Pki::new());
    let device = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        device,
        "telnet",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let extra = format!("\n[recording]\nrecipients = [\"{team_recipient}\"]\n");
    let mut tg = start_gateway(pki.clone(), &devices, ACME_RULES, &extra, clock).await;
    let state = tg.state_dir();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let sam = pki.person(Kind::Security, "sam", None, &[]);
    let marker = b"MARKER-7f3c9a1e-evidence-through-the-gateway-0123456789abcdef".to_vec();
    let client = tg.client(&vendor, Transport::Quic);
    let session = client.open("pump-12", false, None).await.unwrap();
    let id = session.session_id.clone();
    let (_, end) = echo_session(session, &marker).await;
    assert!(matches!(end, ward_client::SessionEnd::Completed), "{end:?}");
    let bundle = dir.path().join("enc.ward-evidence");
    let (quic, root) = (tg.quic(), pki.root());
    run_ok(&mut ward(&[
        "evidence",
        "export",
        &id,
        "--gateway",
        &quic,
        "--identity",
        sam.to_str().unwrap(),
        "--ca",
        root.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]));
    tg.shutdown(Duration::from_millis(50)).await;
    std::fs::remove_dir_all(&state).unwrap();
    let bytes = std::fs::read(&bundle).unwrap();
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_slice()),
        "the payload is in the bundle in the clear"
    );
    let out = verify(&bundle, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains(&format!("payload {id}: ok")), "{out:?}");
    let out = verify(&bundle, &["--identity-key", team.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("each decrypted with the identity"),
        "{out:?}"
    );
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run_ok(Command::new("tar").arg("xf").arg(&bundle).arg("-C").arg(&x));
    let mut found = false;
    for e in std::fs::read_dir(x.join("payload").join(&id)).unwrap() {
        let plain = run_ok(
            Command::new("age")
                .arg("-d")
                .arg("-i")
                .arg(&team)
                .arg(e.unwrap().path()),
        );
        found |= plain
            .raw_stdout
            .windows(marker.len())
            .any(|w| w == marker.as_slice());
    }
    assert!(found, "no segment holds the marker");
}

/// A signing-key rotation between two sessions: one bundle holds a session signed by each key
/// and an audit slice spanning the rotation; it verifies with both keys listed, signed by the new
/// one, and `--pubkey` of only the old key fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_spanning_a_key_rotation_verifies_with_both_keys() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let device = echo_device().await;
    let devices = [DeviceSpec::new(
        "pump-12",
        device,
        "telnet",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut tg = start_gateway(pki.clone(), &devices, ACME_RULES, "", clock).await;
    let state = tg.state_dir();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let sam = pki.person(Kind::Security, "sam", None, &[]);
    let ada = pki.person(Kind::Admin, "ada", None, &[]);
    let (quic, root) = (tg.quic(), pki.root());
    let gw = |who: &Path| {
        vec![
            "--gateway".to_string(),
            quic.clone(),
            "--identity".into(),
            who.display().to_string(),
            "--ca".into(),
            root.display().to_string(),
        ]
    };
    let old = std::fs::read_to_string(state.join("audit.pub"))
        .unwrap()
        .trim()
        .to_string();
    let client = tg.client(&vendor, Transport::Quic);
    let mut ids = Vec::new();
    for round in 0..2 {
        let session = client.open("pump-12", false, None).await.unwrap();
        ids.push(session.session_id.clone());
        let (_, end) = echo_session(session, b"status\r\n").await;
        assert!(matches!(end, ward_client::SessionEnd::Completed), "{end:?}");
        if round == 0 {
            let mut args = vec!["audit".to_string(), "rotate-key".into()];
            args.extend(gw(&ada));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_ok(&mut ward(&args));
        }
    }
    let new = std::fs::read_to_string(state.join("audit.pub"))
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(old, new, "the key rotated");
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("rotated.ward-evidence");
    let mut args = vec!["evidence".to_string(), "export".into()];
    args.extend(ids.iter().cloned());
    args.extend(["--out".to_string(), bundle.display().to_string()]);
    args.extend(gw(&sam));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&mut ward(&args));
    tg.shutdown(Duration::from_millis(50)).await;
    std::fs::remove_dir_all(&state).unwrap();
    let id_of = |hex_key: &str| {
        let raw: [u8; 32] = hex::decode(hex_key).unwrap().try_into().unwrap();
        ward_recording::key_id_of(&raw)
    };
    let out = verify(&bundle, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("SHA256SUMS signed by key {}", id_of(&new))),
        "{out:?}"
    );
    for k in [&old, &new] {
        assert!(
            out.stdout.contains(&id_of(k)),
            "key {} not listed: {out:?}",
            id_of(k)
        );
    }
    let both = verify(&bundle, &["--pubkey", &old, "--pubkey", &new]);
    assert!(both.status.success(), "{both:?}");
    let only_old = verify(&bundle, &["--pubkey", &old]);
    assert!(!only_old.status.success(), "{only_old:?}");
}
