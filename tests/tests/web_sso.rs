//! Sign-in with the hospital's OpenID provider (issue 17, "Show"): a real OpenID provider on
//! loopback — the certified `oidc-provider` package from npm, run by node from tests/web/idp.mjs
//! over HTTPS with a certificate of a CA made here (the gateway trusts it through `ca_file`) —
//! and the real `ward gateway` with two `[[oidc]]` providers on it (`mfa = "idp"` with the
//! default `require_amr = ["mfa"]`, and `mfa = "ward"`). Debian's chromium (tests/web/sso.mjs)
//! signs in through the IdP's own login form: the mapped identity, every refusal (no map rule,
//! no MFA, unknown/replayed/carried callbacks, tampered ID tokens) and Ward's TOTP step; then
//! `ward login --sso --no-browser` (headless: the URL it prints is opened by chromium, signed in
//! through the IdP and approved) stores a certificate with the mapped identity; last, this test
//! checks the audit log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ward_core::config::LoginConfig;
use ward_core::PrincipalKind;
use ward_tests::process::{free_port, ward, Input, Proc, COMMAND_TIMEOUT};
use ward_tests::web::{add_user, browser_ready, node_module_ready, run_node, workspace};
use ward_tests::{ChildGateway, Pki};

/// The IdP's password for every account (tests/web/idp.mjs).
const IDP_PASSWORD: &str = "correct horse battery staple";

/// A CA and a server certificate for 127.0.0.1 for the IdP: (ca.pem, cert.pem, key.pem).
fn idp_tls(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "St Mary's test IdP CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_file, cert, key_file) = (
        dir.join("idp-ca.pem"),
        dir.join("idp.crt"),
        dir.join("idp.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (ca_file, cert, key_file)
}

/// Start tests/web/idp.mjs on `port`; wait (bounded) until it serves.
fn start_idp(port: u16, cert: &Path, key: &Path, clients: &Value) -> Proc {
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(workspace().join("tests/web"))
        .arg("idp.mjs")
        .env("IDP_PORT", port.to_string())
        .env("IDP_TLS_CERT", cert)
        .env("IDP_TLS_KEY", key)
        .env("IDP_CLIENTS", clients.to_string());
    let mut idp = Proc::spawn(&mut cmd, Input::Null);
    idp.wait_for_stdout("idp listening on", Duration::from_secs(30));
    idp
}

fn provider(
    name: &str,
    display: &str,
    client: &str,
    idp: &str,
    web_port: u16,
    dir: &Path,
    extra: &str,
) -> String {
    let secret = dir.join(format!("{client}.secret"));
    format!(
        r#"
[[oidc]]
name = "{name}"
display = "{display}"
issuer = "{idp}"
client_id = "{client}"
client_secret_file = "{secret}"
redirect_url = "https://127.0.0.1:{web_port}/api/v1/sso/callback"
scopes = ["openid", "profile", "groups"]
ca_file = "{ca}"
{extra}

[[oidc.map]]
claim = "groups"
value = "icu-nurses"
kind = "clinician"
org = "st-mary"
roles = ["icu"]

[[oidc.map]]
claim = "groups"
value = "acme-field"
kind = "vendor"
org = "acme"
roles = ["field"]

[[oidc.map]]
claim = "groups"
value = "oncall"
roles = ["oncall"]
"#,
        secret = secret.display(),
        ca = dir.join("idp-ca.pem").display(),
    )
}

#[test]
fn sign_in_with_the_hospitals_openid_provider() {
    if !browser_ready() || !node_module_ready("oidc-provider") {
        return;
    }
    let pki = Arc::new(Pki::new());
    let dir = pki.dir.path().to_path_buf();
    let (_ca, cert, key) = idp_tls(&dir);
    let web_port = free_port();
    let idp_port = free_port();
    let idp_url = format!("https://127.0.0.1:{idp_port}");
    let callback = format!("https://127.0.0.1:{web_port}/api/v1/sso/callback");
    let secrets = [
        ("ward", hex::encode(rand::random::<[u8; 24]>())),
        ("ward-totp", hex::encode(rand::random::<[u8; 24]>())),
    ];
    for (client, secret) in &secrets {
        std::fs::write(dir.join(format!("{client}.secret")), format!("{secret}\n")).unwrap();
    }
    let clients: Vec<Value> = secrets
        .iter()
        .map(|(c, s)| json!({"client_id": c, "client_secret": s, "redirect_uri": callback}))
        .collect();
    let _idp = start_idp(idp_port, &cert, &key, &json!(clients));

    let rules = format!(
        "[web]\nlisten = \"127.0.0.1:{web_port}\"\n{}{}",
        provider(
            "hospital",
            "St Mary's account",
            "ward",
            &idp_url,
            web_port,
            &dir,
            ""
        ),
        provider(
            "hospital-totp",
            "St Mary + Ward code",
            "ward-totp",
            &idp_url,
            web_port,
            &dir,
            "mfa = \"ward\""
        ),
    );
    let state_dir = dir.join("state");
    let login = LoginConfig {
        mfa: vec![PrincipalKind::Clinician],
        ..LoginConfig::default()
    };
    // Only the mfa = "ward" user needs to exist in Ward (for its TOTP secret).
    let walt = add_user(&state_dir, &login, "walt", "clinician", None);
    let gw = ChildGateway::start(pki.clone(), &[], &rules, "", Some(&state_dir));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", web_port)).is_err() {
        assert!(Instant::now() < deadline, "the web console did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    let screenshots = std::env::var_os("WARD_WEB_SCREENSHOTS")
        .map(Into::into)
        .unwrap_or_else(|| workspace().join("target/web-screenshots"));
    let node_state = tempfile::tempdir().unwrap();
    let env = [
        ("WARD_WEB_URL", format!("https://127.0.0.1:{web_port}")),
        ("WARD_WEB_USERS", json!({"walt": walt.json()}).to_string()),
        ("WARD_WEB_SCREENSHOTS", screenshots.display().to_string()),
        ("WARD_WEB_STATE", node_state.path().display().to_string()),
        ("WARD_IDP_URL", idp_url.clone()),
        ("WARD_IDP_PASSWORD", IDP_PASSWORD.to_owned()),
    ];
    let mut failures = Vec::new();
    let identity = dir.join("cli-id");
    let mut cli: Option<Proc> = None;
    let (ok, output) = run_node("sso.mjs", &env, &mut failures, |name, _| match name {
        "audit-checked" => match check_audit(&gw.audit_events()) {
            Ok(()) => json!({"ok": true}),
            Err(why) => json!({"ok": false, "why": why}),
        },
        "cli-login-start" => {
            let mut cmd = ward(&["login", "--sso", "--no-browser", "--gateway", &gw.addr]);
            cmd.arg("--ca")
                .arg(gw.pki.root())
                .arg("--out")
                .arg(&identity);
            let mut p = Proc::spawn(&mut cmd, Input::Null);
            p.wait_for_stdout("Waiting for the approval", COMMAND_TIMEOUT);
            let out = p.stdout();
            let line = |prefix: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(str::trim)
            };
            let answer = match (line("url: "), line("code: ")) {
                (Some(url), Some(code)) => json!({"ok": true, "url": url, "code": code}),
                _ => json!({"ok": false, "why": format!("no url:/code: lines in {out}")}),
            };
            cli = Some(p);
            answer
        }
        "cli-login-done" => cli_login_done(cli.take(), &identity),
        other => json!({"ok": false, "why": format!("unknown ask {other}")}),
    });
    assert!(ok && failures.is_empty(), "{failures:#?}\n{output}");
}

/// `ward login --sso` exited 0 and stored a certificate with the identity the IdP's claims map
/// to (tina: vendor acme, role field), as `ward login` would.
fn cli_login_done(cli: Option<Proc>, identity: &Path) -> Value {
    let Some(cli) = cli else {
        return json!({"ok": false, "why": "ward login --sso was not started"});
    };
    let done = cli.finish(COMMAND_TIMEOUT);
    if !done.status.success() || !done.stdout.contains("logged in as vendor acme/tina") {
        return json!({"ok": false, "why": format!("ward login --sso: {done:?}")});
    }
    let crt = std::fs::read_to_string(identity.with_extension("crt")).unwrap_or_default();
    match ward_ca::inspect(&crt, None, ward_tests::now()) {
        Ok(seen)
            if seen.kind == Some(ward_ca::Kind::Vendor)
                && seen.name.as_deref() == Some("tina")
                && seen.org.as_deref() == Some("acme")
                && seen.roles == ["field"] =>
        {
            json!({"ok": true, "principal": seen.principal})
        }
        Ok(seen) => json!({"ok": false, "why": format!("certificate of {seen:?}")}),
        Err(e) => {
            json!({"ok": false, "why": format!("no certificate at {}: {e}", identity.display())})
        }
    }
}

/// The audit log holds every SSO outcome: sign-ins with `via = "sso"`, provider and subject;
/// refusals with their reasons.
fn check_audit(events: &[Value]) -> Result<(), String> {
    let signins: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "web_signin" && e["detail"]["via"] == "sso")
        .collect();
    let find = |outcome: &str, user: &str, reason: &str| {
        signins.iter().any(|e| {
            e["outcome"] == outcome
                && (user.is_empty()
                    || e["principal"]["name"] == user
                    || e["detail"]["user"] == user)
                && e["reason"].as_str().unwrap_or("").contains(reason)
        })
    };
    let nina = signins
        .iter()
        .find(|e| e["outcome"] == "success" && e["principal"]["name"] == "nina")
        .ok_or_else(|| format!("no successful SSO web_signin of nina: {signins:#?}"))?;
    let d = &nina["detail"];
    if d["provider"] != "hospital"
        || d["subject"] != "nina"
        || d["mfa"] != "idp"
        || nina["principal"]["kind"] != "clinician"
    {
        return Err(format!("nina's sign-in audit: {nina:#}"));
    }
    if d["web_session"].as_str().is_none_or(|s| s.len() != 12) {
        return Err(format!("no web_session in {nina:#}"));
    }
    for (outcome, user, reason) in [
        ("denied", "victor", "matches no [[oidc.map]] rule"),
        ("denied", "nora", "multi-factor"),
        // Nothing the IdP said is believed before its token is verified: no user named.
        ("denied", "", "ID token was refused"),
        ("denied", "walt", "wrong TOTP code"),
        ("success", "walt", "identity provider hospital-totp"),
        ("success", "tina", "identity provider hospital"),
    ] {
        if !find(outcome, user, reason) {
            return Err(format!(
                "no web_signin {outcome} of {user} saying {reason:?}: {signins:#?}"
            ));
        }
    }
    // The certificate `ward login --sso` got, approved by tina's SSO browser session.
    let issued = events.iter().any(|e| {
        e["event"] == "login"
            && e["outcome"] == "success"
            && e["principal"]["name"] == "tina"
            && e["detail"]["via"] == "sso"
            && e["detail"]["web_session"]
                .as_str()
                .is_some_and(|s| s.starts_with("sso-"))
    });
    if !issued {
        return Err("no login success for tina via sso approved by an sso- browser session".into());
    }
    let walt = signins
        .iter()
        .find(|e| e["outcome"] == "success" && e["principal"]["name"] == "walt")
        .map(|e| e["detail"]["mfa"].clone());
    if walt != Some(json!("ward")) {
        return Err(format!("walt's sign-in should say mfa = ward: {walt:?}"));
    }
    Ok(())
}
