//! Access requests, approvals and grants in the embedded store (`ward.db`).
//!
//! Rows hold the `ward_core::access` values as JSON, with the columns needed for lookups and
//! for the integrity constraints that make decisions safe under concurrency:
//! * `approvals` has `PRIMARY KEY (request, approver)`: one approval per person;
//! * `grants` has `UNIQUE (request)`: one grant per request, however approvals race;
//! * every decision runs in one `BEGIN IMMEDIATE` transaction (read request and approvals, decide
//!   with the pure `ward_core::access` functions, write), so two gateways or a gateway and a
//!   host-side command sharing the file serialise too.

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use time::OffsetDateTime;
use ward_core::access::{AccessRequest, Approval, Approved, DecideError, Grant, RequestState};

use crate::store::{SqliteStore, StoreError};

/// Errors from a decision: the store failed, or the decision refused.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such request.
    #[error("no access request {0}")]
    NotFound(String),
    /// The pure decision refused.
    #[error(transparent)]
    Refused(#[from] DecideError),
}

impl From<rusqlite::Error> for DecisionError {
    fn from(e: rusqlite::Error) -> Self {
        DecisionError::Store(StoreError::Db(e))
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn approver_key(a: &Approval) -> String {
    format!("{}/{}", a.approver.kind.as_str(), a.approver.name)
}

fn load_request(
    conn: &rusqlite::Connection,
    id: &str,
) -> Result<Option<AccessRequest>, StoreError> {
    let body: Option<String> = conn
        .query_row(
            "SELECT body FROM access_requests WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    body.map(|b| from_json(&b)).transpose()
}

fn load_approvals(conn: &rusqlite::Connection, id: &str) -> Result<Vec<Approval>, StoreError> {
    let mut stmt = conn.prepare("SELECT body FROM approvals WHERE request = ?1 ORDER BY rowid")?;
    let rows = stmt.query_map([id], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(from_json(&row?)?);
    }
    Ok(out)
}

fn write_request(conn: &rusqlite::Connection, r: &AccessRequest) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO access_requests (id, state, created, body) VALUES (?1, ?2, ?3, ?4)",
        params![
            r.id,
            r.state.as_str(),
            r.created.unix_timestamp(),
            to_json(r)?
        ],
    )?;
    Ok(())
}

/// What [`AccessStore::approve`] did.
#[derive(Debug, Clone)]
pub struct ApproveOutcome {
    /// The request after the approval.
    pub request: AccessRequest,
    /// The pure decision.
    pub approved: Approved,
    /// The grant, when this approval completed the request.
    pub grant: Option<Grant>,
}

/// The pure approval decision an [`AccessStore::approve`] runs inside its transaction.
pub type Decide<'a> = dyn Fn(&AccessRequest, &[Approval]) -> Result<Approved, DecideError> + 'a;

/// Access requests, approvals and grants in persistent state. Decisions are atomic: the pure
/// decision runs inside the store's transaction, so racing approvals cannot both complete.
pub trait AccessStore: Send + Sync {
    /// Stores a new request.
    fn put_request(&self, r: &AccessRequest) -> Result<(), StoreError>;
    /// One request.
    fn request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError>;
    /// All requests, newest first, with their approvals.
    fn requests(&self) -> Result<Vec<(AccessRequest, Vec<Approval>)>, StoreError>;
    /// Approves `id` atomically: `decide` (normally `ward_core::access::approve`) sees the
    /// request and its approvals as of this transaction; a completing approval writes the grant
    /// (`make_grant`) in the same transaction. Two racing approvals for the last slot cannot both
    /// complete: the second sees the first's approval and the request already approved.
    fn approve(
        &self,
        id: &str,
        decide: &Decide<'_>,
        make_grant: &dyn Fn(&AccessRequest, &[Approval]) -> Grant,
    ) -> Result<ApproveOutcome, DecisionError>;
    /// Denies `id` atomically after `check` (normally `ward_core::access::check_deny`).
    fn deny(
        &self,
        id: &str,
        check: &dyn Fn(&AccessRequest) -> Result<(), DecideError>,
    ) -> Result<AccessRequest, DecisionError>;
    /// Grants that have not ended by `now` (live or upcoming), including revoked ones when `all`.
    fn grants(&self, now: OffsetDateTime, all: bool) -> Result<Vec<Grant>, StoreError>;
    /// One grant.
    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;
    /// Marks a grant revoked (idempotent: a revoked grant keeps its first revocation).
    fn revoke_grant(
        &self,
        id: &str,
        at: OffsetDateTime,
        why: &str,
    ) -> Result<Option<Grant>, StoreError>;
}

impl AccessStore for SqliteStore {
    fn put_request(&self, r: &AccessRequest) -> Result<(), StoreError> {
        let conn = self.conn()?;
        write_request(&conn, r)
    }

    fn request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        let conn = self.conn()?;
        load_request(&conn, id)
    }

    fn requests(&self) -> Result<Vec<(AccessRequest, Vec<Approval>)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT body FROM access_requests ORDER BY created DESC, id DESC")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let r: AccessRequest = from_json(&row?)?;
            let a = load_approvals(&conn, &r.id)?;
            out.push((r, a));
        }
        Ok(out)
    }

    fn approve(
        &self,
        id: &str,
        decide: &Decide<'_>,
        make_grant: &dyn Fn(&AccessRequest, &[Approval]) -> Grant,
    ) -> Result<ApproveOutcome, DecisionError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut request =
            load_request(&tx, id)?.ok_or_else(|| DecisionError::NotFound(id.to_owned()))?;
        let mut approvals = load_approvals(&tx, id)?;
        let approved = decide(&request, &approvals)?;
        tx.execute(
            "INSERT INTO approvals (request, approver, body) VALUES (?1, ?2, ?3)",
            params![
                id,
                approver_key(&approved.approval),
                to_json(&approved.approval)?
            ],
        )?;
        approvals.push(approved.approval.clone());
        let mut grant = None;
        if approved.complete {
            request.state = RequestState::Approved;
            write_request(&tx, &request)?;
            let g = make_grant(&request, &approvals);
            tx.execute(
                "INSERT INTO grants (id, request, principal, device, end_unix, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![g.id, g.request, g.principal.name, g.device, g.end.unix_timestamp(), to_json(&g)?],
            )?;
            grant = Some(g);
        }
        tx.commit()?;
        Ok(ApproveOutcome {
            request,
            approved,
            grant,
        })
    }

    fn deny(
        &self,
        id: &str,
        check: &dyn Fn(&AccessRequest) -> Result<(), DecideError>,
    ) -> Result<AccessRequest, DecisionError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut request =
            load_request(&tx, id)?.ok_or_else(|| DecisionError::NotFound(id.to_owned()))?;
        check(&request)?;
        request.state = RequestState::Denied;
        write_request(&tx, &request)?;
        tx.commit()?;
        Ok(request)
    }

    fn grants(&self, now: OffsetDateTime, all: bool) -> Result<Vec<Grant>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT body FROM grants ORDER BY end_unix DESC, id DESC")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let g: Grant = from_json(&row?)?;
            if all || g.is_current(now) {
                out.push(g);
            }
        }
        Ok(out)
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let conn = self.conn()?;
        let body: Option<String> = conn
            .query_row("SELECT body FROM grants WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        body.map(|b| from_json(&b)).transpose()
    }

    fn revoke_grant(
        &self,
        id: &str,
        at: OffsetDateTime,
        why: &str,
    ) -> Result<Option<Grant>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let body: Option<String> = tx
            .query_row("SELECT body FROM grants WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        let Some(body) = body else {
            return Ok(None);
        };
        let mut g: Grant = from_json(&body)?;
        if g.revoked_at.is_none() {
            g.revoked_at = Some(at);
            g.revoked = Some(why.to_owned());
            tx.execute(
                "UPDATE grants SET body = ?2 WHERE id = ?1",
                params![id, to_json(&g)?],
            )?;
        }
        tx.commit()?;
        Ok(Some(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use ward_core::access::{approve, grant_for, ApprovalPolicy, PrincipalRef};
    use ward_core::policy::{DeviceSelector, Who};
    use ward_core::{Principal, PrincipalKind};

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn person(kind: PrincipalKind, name: &str) -> Principal {
        Principal {
            kind,
            name: name.into(),
            org: None,
            roles: vec![],
            serial: "01".into(),
            not_after: now() + time::Duration::hours(1),
        }
    }

    fn policy(required: u32) -> ApprovalPolicy {
        ApprovalPolicy {
            name: "p".into(),
            devices: DeviceSelector::All,
            who: Who {
                kind: Some(PrincipalKind::Vendor),
                ..Who::default()
            },
            approvers: vec![Who {
                kind: Some(PrincipalKind::Clinician),
                ..Who::default()
            }],
            required,
            max_duration: Duration::from_secs(3600),
            pending_expiry: Duration::from_secs(3600),
        }
    }

    fn request() -> AccessRequest {
        AccessRequest {
            id: "req-1".into(),
            requester: PrincipalRef::of(&person(PrincipalKind::Vendor, "tech")),
            device: "pump-12".into(),
            reason: "fix".into(),
            start: now(),
            end: now() + time::Duration::hours(1),
            created: now(),
            expires: now() + time::Duration::hours(1),
            policy: "p".into(),
            state: RequestState::Pending,
        }
    }

    #[test]
    fn racing_approvals_make_one_grant() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        store.put_request(&request()).unwrap();
        // Two approvers race for the last (second) slot, after a first approval.
        let policies = [policy(2)];
        let first = person(PrincipalKind::Clinician, "a");
        store
            .approve(
                "req-1",
                &|r, a| approve(r, a, &policies, &first, None, now()),
                &|r, a| grant_for(r, a, "grant-x".into()),
            )
            .unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = ["b", "c"]
            .into_iter()
            .map(|name| {
                let store = store.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let policies = [policy(2)];
                    let who = person(PrincipalKind::Clinician, name);
                    barrier.wait();
                    store.approve(
                        "req-1",
                        &|r, a| approve(r, a, &policies, &who, None, now()),
                        &|r, a| grant_for(r, a, format!("grant-{name}")),
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let granted = results
            .iter()
            .filter(|r| matches!(r, Ok(o) if o.grant.is_some()))
            .count();
        assert_eq!(granted, 1, "{results:?}");
        assert!(results.iter().any(|r| matches!(
            r,
            Err(DecisionError::Refused(DecideError::NotPending { .. }))
        )));
        assert_eq!(store.grants(now(), true).unwrap().len(), 1);
        assert_eq!(
            store.request("req-1").unwrap().unwrap().state,
            RequestState::Approved
        );
    }

    #[test]
    fn state_survives_reopen_and_revocation_sticks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.put_request(&request()).unwrap();
            let policies = [policy(1)];
            let who = person(PrincipalKind::Clinician, "a");
            let out = store
                .approve(
                    "req-1",
                    &|r, a| approve(r, a, &policies, &who, Some("ok".into()), now()),
                    &|r, a| grant_for(r, a, "grant-1".into()),
                )
                .unwrap();
            assert!(out.grant.is_some());
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.grants(now(), false).unwrap().len(), 1);
        let g = store
            .revoke_grant("grant-1", now(), "by soc: done early")
            .unwrap()
            .unwrap();
        assert_eq!(g.revoked_at, Some(now()));
        assert!(store.grants(now(), false).unwrap().is_empty());
        assert_eq!(store.grants(now(), true).unwrap().len(), 1);
        assert!(store.revoke_grant("nope", now(), "x").unwrap().is_none());
        let (r, a) = store.requests().unwrap().remove(0);
        assert_eq!((r.state, a.len()), (RequestState::Approved, 1));
    }

    #[test]
    fn deny_is_atomic_and_final() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.put_request(&request()).unwrap();
        let r = store.deny("req-1", &|_| Ok(())).unwrap();
        assert_eq!(r.state, RequestState::Denied);
        assert!(matches!(
            store.deny("missing", &|_| Ok(())),
            Err(DecisionError::NotFound(_))
        ));
    }
}
