//! `report.html`: the bundle for people. One self-contained page (no script, no external
//! resource, a CSP that forbids both), every value escaped ([`esc`]), long values wrapped so a
//! 10,000-character name cannot push the table off the page.
//!
//! What it says is what the export verified; `ward evidence verify` checks it again from the
//! signed data, which is the evidence (the report is covered by `SHA256SUMS` like every file).

use std::collections::BTreeMap;

use ward_recording::audit::AuditEvent;
use ward_recording::VerifyReport;

use super::{Check, Manifest};

/// HTML-escape `s` for text and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (a device's escape sequences in a reason) shown, not passed.
            c if c.is_control() && c != '\n' && c != '\t' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

fn unix_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(ward_recording::audit::rfc3339_ms)
        .unwrap_or_else(|_| ms.to_string())
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#111}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;width:100%;table-layout:fixed}\
td,th{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top;overflow-wrap:anywhere;word-break:break-word}\
th{background:#f4f4f4;width:14em}.ok{color:#060;font-weight:bold}.bad{color:#a00;font-weight:bold}\
code{font-family:ui-monospace,monospace;overflow-wrap:anywhere}.note{color:#555}";

/// The report: who, what, when, the decision and its rule, verification, a timeline.
pub fn render(
    manifest: &Manifest,
    reports: &BTreeMap<String, VerifyReport>,
    slice: &[u8],
    checks: &[Check],
) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width\">");
    h.push_str(&format!(
        "<title>Ward evidence: {}</title><style>{STYLE}</style></head><body>\n",
        esc(&manifest.sessions.join(", "))
    ));
    h.push_str("<h1>Ward evidence bundle</h1>\n<table>");
    let row = |h: &mut String, k: &str, v: &str| {
        h.push_str(&format!("<tr><th>{}</th><td>{v}</td></tr>\n", esc(k)));
    };
    row(&mut h, "Format", &esc(&manifest.format));
    row(&mut h, "Gateway", &esc(&manifest.gateway));
    row(&mut h, "Created", &esc(&manifest.created));
    row(&mut h, "Exported by", &esc(&manifest.exported_by));
    row(&mut h, "Sessions", &esc(&manifest.sessions.join(", ")));
    row(
        &mut h,
        "Signed by key",
        &format!("<code>{}</code>", esc(&manifest.signing_key_id)),
    );
    row(
        &mut h,
        "Audit slice",
        &format!(
            "lines {}..{} of the gateway's audit log",
            manifest.audit_slice.0, manifest.audit_slice.1
        ),
    );
    h.push_str("</table>\n<p class=\"note\">This page was written at export. The evidence is the signed data beside it: run <code>ward evidence verify</code> on the bundle, or check it by hand (docs/evidence.md), and compare the key ids with the gateway's published keys (<code>ward audit pubkey --all</code>) or its anchors.</p>\n");

    let events = events_of(slice);
    for (id, r) in reports {
        h.push_str(&format!(
            "<h2>Session <code>{}</code></h2>\n<table>",
            esc(id)
        ));
        if let Some(m) = &r.meta {
            let who = format!(
                "{} ({}{}), certificate serial <code>{}</code>, from {}",
                esc(&m.principal_name),
                esc(&m.principal_kind),
                m.principal_org
                    .as_deref()
                    .map(|o| format!(", {}", esc(o)))
                    .unwrap_or_default(),
                esc(&m.cert_serial),
                esc(&m.source)
            );
            row(&mut h, "Who", &who);
            row(
                &mut h,
                "What",
                &format!(
                    "device {} at {}, protocol {}, over {}",
                    esc(&m.device),
                    esc(&m.device_addr),
                    esc(&m.protocol),
                    esc(&m.transport)
                ),
            );
            row(&mut h, "Started", &esc(&unix_ms(m.started_unix_ms)));
            let open = events
                .iter()
                .find(|(_, e)| e.event == "session_open" && e.session_id.as_deref() == Some(id));
            let decision = match open {
                Some((seq, e)) => format!(
                    "{} (audit line {seq}): {}{}",
                    esc(&e.outcome),
                    esc(e.reason.as_deref().unwrap_or("")),
                    e.detail
                        .get("rule")
                        .and_then(|v| v.as_str())
                        .map(|r| format!(", rule <code>{}</code>", esc(r)))
                        .unwrap_or_default()
                ),
                None => "not in the audit slice".into(),
            };
            row(
                &mut h,
                "Decision",
                &format!(
                    "{decision}; the recording names rule <code>{}</code>",
                    esc(&m.rule)
                ),
            );
            if m.break_glass {
                row(
                    &mut h,
                    "Break-glass",
                    "<span class=\"bad\">yes: emergency access</span>",
                );
            }
        }
        match &r.end {
            Some(end) => {
                row(&mut h, "Ended", &esc(&unix_ms(end.ended_unix_ms)));
                row(&mut h, "End reason", &esc(&end.reason));
                row(
                    &mut h,
                    "Bytes",
                    &format!(
                        "{} up (client to device), {} down",
                        end.bytes_up, end.bytes_down
                    ),
                );
            }
            None => row(
                &mut h,
                "Ended",
                &esc(&format!("{} (no end record)", r.status)),
            ),
        }
        let files = manifest
            .recordings
            .iter()
            .find(|m| &m.session_id == id)
            .map(|m| m.payload.clone())
            .unwrap_or_default();
        let encrypted = r.meta.as_ref().is_some_and(|m| !m.recipients.is_empty());
        let payload = match (encrypted, &manifest.recipient) {
            (false, _) => "in the recording, not encrypted".to_string(),
            (true, Some(to)) => format!(
                "encrypted at rest; re-encrypted for {} in {}",
                esc(to),
                esc(&files.join(", "))
            ),
            (true, None) => format!(
                "encrypted at rest to {}: {} age file(s) under <code>payload/{}/</code>",
                esc(&r
                    .meta
                    .as_ref()
                    .map(|m| m.recipients.join(", "))
                    .unwrap_or_default()),
                files.len(),
                esc(id)
            ),
        };
        row(&mut h, "Payload", &payload);
        row(
            &mut h,
            "Recording",
            &format!(
                "<span class=\"{}\">{}</span>: {} records, {}",
                if r.ok { "ok" } else { "bad" },
                if r.ok { "verifies" } else { "FAILS" },
                r.records,
                esc(&r.status.to_string())
            ),
        );
        h.push_str("</table>\n");
    }

    h.push_str("<h2>Verification at export</h2>\n<table>");
    for c in checks {
        h.push_str(&format!(
            "<tr><th>{}</th><td><span class=\"{}\">{}</span> {}</td></tr>\n",
            esc(&c.name),
            if c.ok { "ok" } else { "bad" },
            if c.ok { "ok" } else { "FAILED" },
            esc(&c.detail)
        ));
    }
    h.push_str("</table>\n");

    h.push_str(
        "<h2>Timeline (audit log)</h2>\n<table><tr><th>Line / time</th><th>Event</th></tr>\n",
    );
    for (seq, e) in &events {
        let who = e
            .principal
            .as_ref()
            .map(|p| format!(" by {}", esc(&p.name)))
            .unwrap_or_default();
        let mut detail: Vec<String> = e
            .detail
            .iter()
            .map(|(k, v)| format!("{}={}", esc(k), esc(&v.to_string())))
            .collect();
        detail.truncate(12);
        h.push_str(&format!(
            "<tr><th>{seq} · {}</th><td><b>{}</b> {}{}{}{}{}</td></tr>\n",
            esc(&e.time),
            esc(&e.event),
            esc(&e.outcome),
            who,
            e.session_id
                .as_deref()
                .map(|s| format!(", session <code>{}</code>", esc(s)))
                .unwrap_or_default(),
            e.reason
                .as_deref()
                .map(|r| format!(": {}", esc(r)))
                .unwrap_or_default(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(" <span class=\"note\">({})</span>", detail.join(", "))
            }
        ));
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

/// The slice's events (checkpoints left out) with their line numbers.
fn events_of(slice: &[u8]) -> Vec<(u64, AuditEvent)> {
    slice
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_slice(line).ok()?;
            let seq = v.get("seq")?.as_u64()?;
            let e = serde_json::from_value::<AuditEvent>(v).ok()?;
            Some((seq, e))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"\x1b[2J"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\\u{1b}[2J"
        );
    }

    #[test]
    fn a_hostile_and_long_name_stays_text() {
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "format": "ward-evidence-v1", "gateway": "<img src=x onerror=alert(1)>",
            "created": "c", "exported_by": "l", "sessions": ["aa"], "signing_key_id": "k",
            "key_ids": [], "recordings": [], "payload": "none", "audit_slice": [1, 2],
            "anchors": false, "tool": "t"}))
        .unwrap();
        let long = "A".repeat(10_000);
        let slice = format!(
            "{{\"seq\":1,\"time\":\"t\",\"event\":\"session_open\",\"outcome\":\"success\",\"severity\":\"info\",\"principal\":{{\"name\":\"{long}</td><script>\",\"kind\":\"vendor\",\"serial\":\"01\"}},\"session_id\":\"aa\",\"reason\":\"permitted\",\"detail\":{{\"rule\":\"r<b>\"}},\"chain\":\"00\"}}\n"
        );
        let html = render(&manifest, &BTreeMap::new(), slice.as_bytes(), &[]);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x"));
        assert!(html.contains(&long));
        assert!(html.contains("overflow-wrap:anywhere"));
        assert!(html.contains("default-src 'none'"));
    }
}
