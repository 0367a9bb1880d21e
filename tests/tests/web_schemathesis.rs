//! The web console's API against its own OpenAPI document, fuzzed by `schemathesis` (PyPI; .ci/run
//! installs it into the CI venv): the real `ward gateway` binary with `[web] listen` on, called
//! with an admin's client certificate and its CSRF token, with some recorded sessions, a pending
//! request and a lock to find. Every generated request must get an answer that is not a server
//! error, whose status code and content type the document declares, and whose body matches the
//! declared schema.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_ca::Kind;
use ward_tests::hostile::{console_device, CONSOLE_PROMPT};
use ward_tests::process::{free_port, run, run_with, ward, Input, Proc, COMMAND_TIMEOUT};
use ward_tests::{require_peer, ChildGateway, DeviceSpec, Pki, ACME_RULES};

/// How long schemathesis may run.
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(480);

#[test]
fn the_api_holds_to_its_openapi_document_under_schemathesis() {
    if !require_peer("schemathesis") || !require_peer("curl") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let console = rt.block_on(console_device());
    let pki = Arc::new(Pki::new());
    let jdoe = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let admin = pki.person(Kind::Admin, "ada", None, &[]);
    let devices = [
        DeviceSpec::new(
            "pump-7",
            console,
            "telnet",
            &[("vendor", "acme"), ("class", "infusion-pump")],
        ),
        DeviceSpec::new("pump-jit", console, "telnet", &[("class", "infusion-pump")]),
    ];
    let web_port = free_port();
    let rules = format!(
        r#"{ACME_RULES}
[[approval]]
name = "pump-jit-maintenance"
who = {{ kind = "vendor" }}
devices = {{ ids = ["pump-jit"] }}
approvers = [ {{ kind = "admin" }} ]

[web]
listen = "127.0.0.1:{web_port}"
"#
    );
    let gw = ChildGateway::start(pki.clone(), &devices, &rules, "", None);
    let as_ = |identity: &std::path::Path, args: &[&str]| {
        let mut cmd = ward(args);
        cmd.args(["--gateway", &gw.addr, "--identity"])
            .arg(identity)
            .arg("--ca")
            .arg(pki.root());
        cmd
    };
    // Something to list: two recorded sessions, a pending request, a lock.
    for _ in 0..2 {
        let mut p = Proc::spawn(&mut as_(&jdoe, &["connect", "pump-7"]), Input::Pipe);
        p.wait_for_stdout(CONSOLE_PROMPT, COMMAND_TIMEOUT);
        p.send(b"status\nexit\n");
        p.wait_for_stdout("bye", COMMAND_TIMEOUT);
        let out = p.finish(COMMAND_TIMEOUT);
        assert!(out.status.success(), "{out:?}");
    }
    let out = run(&mut as_(
        &jdoe,
        &[
            "request",
            "pump-jit",
            "--reason",
            "firmware",
            "--duration",
            "1h",
        ],
    ));
    assert!(out.status.success(), "{out:?}");
    let out = run(&mut as_(
        &admin,
        &[
            "lock",
            "--org",
            "other",
            "--force",
            "--reason",
            "schemathesis",
        ],
    ));
    assert!(out.status.success(), "{out:?}");

    let base = format!("https://127.0.0.1:{web_port}");
    let crt = ward_ca::Issued::cert_path(&admin);
    let key = ward_ca::Issued::key_path(&admin);
    // The admin's CSRF token (certificate callers get one too).
    let deadline = Instant::now() + Duration::from_secs(10);
    let whoami = loop {
        let out = run(std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(pki.root())
            .arg("--cert")
            .arg(&crt)
            .arg("--key")
            .arg(&key)
            .arg(format!("{base}/api/v1/whoami")));
        if out.status.success() {
            break out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "whoami with the admin's certificate: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let whoami: serde_json::Value = serde_json::from_str(&whoami).unwrap();
    let csrf = whoami["csrf"].as_str().expect("whoami has a csrf token");

    let report = pki.dir.path().join("schemathesis-report");
    let mut cmd = std::process::Command::new("schemathesis");
    cmd.current_dir(pki.dir.path())
        .args(["--no-color", "run", &format!("{base}/api/v1/openapi.json")])
        .args(["--url", &format!("{base}/api/v1")])
        .arg("--tls-verify")
        .arg(pki.root())
        .arg("--request-cert")
        .arg(&crt)
        .arg("--request-cert-key")
        .arg(&key)
        .args(["--header", &format!("X-Ward-CSRF: {csrf}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "15",
            "--seed",
            "16",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&report)
        .env("SCHEMATHESIS_TELEMETRY", "false");
    let out = run_with(&mut cmd, Input::Null, SCHEMATHESIS_TIMEOUT);
    println!("{}\n{}", out.stdout, out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found the API and its OpenAPI document disagree:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    drop(gw);
}
