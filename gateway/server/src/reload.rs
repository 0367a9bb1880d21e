//! Config reload (SIGHUP, or [`crate::gateway::Gateway::reload`]).
//!
//! The new file goes through the same parse and validation as at start
//! ([`crate::gateway::load_config`]). What may change is policy: `[[device]]`, `[[rule]]`,
//! `[[approval]]`, `[login]` and `[gateway] timezone_offset`. Everything else in `[gateway]`
//! (listeners, CA, certificate and key paths, state dir, limits) is bound at start: a file that
//! changes any of it is refused naming the fields, and nothing is applied. The swap is one
//! assignment of an `Arc<Config>` and every decision reads one snapshot, so each new session sees
//! the old config or the new one, never a mix. Live sessions the new policy would refuse are cut
//! with "policy changed on reload: <reason>"; break-glass sessions are kept (an emergency
//! override). Either way the outcome is audited: `config_reloaded` with the file's SHA-256 and
//! counts, or `config_reload_failed` with the reason.

use std::path::Path;

use sha2::Digest;

use crate::audit::Event;
use crate::gateway::Shared;

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// SHA-256 (hex) of the config file as read.
    pub sha256: String,
    /// Devices in the new config.
    pub devices: usize,
    /// Rules in the new config.
    pub rules: usize,
    /// Approval policies in the new config.
    pub approvals: usize,
    /// Live sessions cut because the new policy would refuse them.
    pub sessions_cut: usize,
    /// Live break-glass sessions kept whatever the new policy says.
    pub break_glass_kept: usize,
}

/// Why a reload was refused; the gateway keeps running on its current config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read, parsed or validated (the message names file, line and field).
    #[error("config reload refused, nothing applied: {0}")]
    Invalid(String),
    /// The file changes fields that only a restart can change.
    #[error("config reload refused, nothing applied: {} cannot change without a restart (restart the gateway, or put the running value back)", fields.join(", "))]
    NeedsRestart {
        /// The fields, as named in the file (`gateway.listen`).
        fields: Vec<&'static str>,
        /// SHA-256 (hex) of the refused file.
        sha256: String,
    },
}

/// Reload `path` into `shared` (see the module docs).
pub(crate) fn reload(shared: &Shared, path: &Path) -> Result<ReloadReport, ReloadError> {
    let now = shared.clock.now();
    let result = apply(shared, path);
    match &result {
        Ok(r) => {
            tracing::info!(event = "config_reloaded", path = %path.display(), sha256 = %r.sha256,
                devices = r.devices, rules = r.rules, approvals = r.approvals,
                sessions_cut = r.sessions_cut, "config reloaded");
            shared.audit.emit(
                Event::new("config_reloaded", "success", now)
                    .severity(if r.sessions_cut > 0 {
                        "warning"
                    } else {
                        "info"
                    })
                    .detail("path", path.display().to_string())
                    .detail("sha256", r.sha256.clone())
                    .detail("devices", r.devices)
                    .detail("rules", r.rules)
                    .detail("approvals", r.approvals)
                    .detail("sessions_cut", r.sessions_cut)
                    .detail("break_glass_kept", r.break_glass_kept),
            );
        }
        Err(e) => {
            tracing::error!(event = "config_reload_failed", path = %path.display(), reason = %e,
                "config reload refused; still running on the previous config");
            let mut ev = Event::new("config_reload_failed", "failure", now)
                .severity("warning")
                .reason(e.to_string())
                .detail("path", path.display().to_string());
            if let ReloadError::NeedsRestart { fields, sha256 } = e {
                ev = ev
                    .detail("fields", fields.join(","))
                    .detail("sha256", sha256.clone());
            }
            shared.audit.emit(ev);
        }
    }
    result
}

fn apply(shared: &Shared, path: &Path) -> Result<ReloadReport, ReloadError> {
    // Read once: the hash is of exactly the bytes parsed.
    let bytes = std::fs::read(path)
        .map_err(|e| ReloadError::Invalid(format!("reading config {}: {e}", path.display())))?;
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    let text = String::from_utf8(bytes)
        .map_err(|e| ReloadError::Invalid(format!("{}: not UTF-8: {e}", path.display())))?;
    let new = crate::gateway::parse_config(path, &text)
        .map_err(|e| ReloadError::Invalid(format!("{e:#}")))?;
    let gateway = new.gateway.clone();
    let web = new.web.clone();
    let review = new.review.clone();
    let published = shared.swap_config(new, |cur| {
        let mut fields = cur.gateway.restart_only_changes(&gateway);
        // The web console's listener and its sign-in timeouts are bound at start.
        if cur.web.listen != web.listen {
            fields.push("web.listen");
        }
        if cur.web.consoles_listen != web.consoles_listen {
            fields.push("web.consoles_listen");
        }
        if cur.web.idle_timeout != web.idle_timeout {
            fields.push("web.idle_timeout");
        }
        if cur.web.max_session != web.max_session {
            fields.push("web.max_session");
        }
        // The reviewer identity is read (and its mode checked) at start.
        if cur.review != review {
            fields.push("review.identity_file");
        }
        if fields.is_empty() {
            Ok(())
        } else {
            Err(ReloadError::NeedsRestart {
                fields,
                sha256: sha256.clone(),
            })
        }
    })?;
    // Live sessions re-check themselves against the published snapshot; these are the ones it
    // ends (counted before they could end).
    let sessions_cut =
        published.ending(|end| matches!(end, ward_core::EndReason::PolicyChanged(_)));
    let break_glass_kept = shared.policy.live_break_glass();
    let config = &published.snapshot.config;
    Ok(ReloadReport {
        sha256,
        devices: config.devices.len(),
        rules: config.rules.len(),
        approvals: config.approvals.len(),
        sessions_cut,
        break_glass_kept,
    })
}
