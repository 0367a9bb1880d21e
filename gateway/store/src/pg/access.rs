//! Access requests, approvals and grants ([`AccessStore`]) in PostgreSQL.
//!
//! A decision locks the request's row (`SELECT … FOR UPDATE`) and runs the pure decision inside
//! that transaction, on the calling thread ([`PgStore::block_here`]): an approval racing on
//! another gateway waits for the lock, then reads the request and approvals as the first left
//! them, so racing approvals for the last slot make exactly one grant. `approvals`' primary key
//! (one per person) and `grants`' `UNIQUE (request)` hold whatever happens.

use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use ward_core::access::{AccessRequest, Approval, DecideError, Grant, RequestState};

use super::{pg_err, PgStore};
use crate::access_store::{AccessStore, ApproveOutcome, Decide, DecisionError};
use crate::store::StoreError;

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn approver_key(a: &Approval) -> String {
    format!("{}/{}", a.approver.kind.as_str(), a.approver.name)
}

async fn load_request(
    c: &impl GenericClient,
    id: &str,
    for_update: bool,
) -> Result<Option<AccessRequest>, StoreError> {
    let sql = if for_update {
        "SELECT body FROM access_requests WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT body FROM access_requests WHERE id = $1"
    };
    let row = c.query_opt(sql, &[&id]).await.map_err(pg_err)?;
    row.map(|r| from_json(&r.try_get::<_, String>(0).map_err(pg_err)?))
        .transpose()
}

async fn load_approvals(c: &impl GenericClient, id: &str) -> Result<Vec<Approval>, StoreError> {
    let rows = c
        .query(
            "SELECT body FROM approvals WHERE request = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| from_json(&r.try_get::<_, String>(0).map_err(pg_err)?))
        .collect()
}

async fn write_request(c: &impl GenericClient, r: &AccessRequest) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO access_requests (id, state, created, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE
         SET state = excluded.state, created = excluded.created, body = excluded.body",
        &[
            &r.id,
            &r.state.as_str(),
            &r.created.unix_timestamp(),
            &to_json(r)?,
        ],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn load_grant(
    c: &impl GenericClient,
    id: &str,
    for_update: bool,
) -> Result<Option<Grant>, StoreError> {
    let sql = if for_update {
        "SELECT body FROM grants WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT body FROM grants WHERE id = $1"
    };
    let row = c.query_opt(sql, &[&id]).await.map_err(pg_err)?;
    row.map(|r| from_json(&r.try_get::<_, String>(0).map_err(pg_err)?))
        .transpose()
}

impl AccessStore for PgStore {
    fn put_request(&self, r: &AccessRequest) -> Result<(), StoreError> {
        let (db, r) = (self.db(), r.clone());
        self.block(async move {
            let c = db.get().await?;
            write_request(&**c, &r).await
        })
    }

    fn request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        let (db, id) = (self.db(), id.to_owned());
        self.block(async move {
            let c = db.get().await?;
            load_request(&**c, &id, false).await
        })
    }

    fn requests(&self) -> Result<Vec<(AccessRequest, Vec<Approval>)>, StoreError> {
        let db = self.db();
        self.block(async move {
            let mut c = db.get().await?;
            // One snapshot for the requests and their approvals.
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_err)?;
            let rows = tx
                .query(
                    "SELECT body FROM access_requests ORDER BY created DESC, id DESC",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let r: AccessRequest = from_json(&row.try_get::<_, String>(0).map_err(pg_err)?)?;
                let a = load_approvals(&*tx, &r.id).await?;
                out.push((r, a));
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(out)
        })
    }

    fn approve(
        &self,
        id: &str,
        decide: &Decide<'_>,
        make_grant: &dyn Fn(&AccessRequest, &[Approval]) -> Grant,
    ) -> Result<ApproveOutcome, DecisionError> {
        let db = self.db();
        self.block_here(async move {
            let mut c = db.get().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let mut request = load_request(&*tx, id, true)
                .await?
                .ok_or_else(|| DecisionError::NotFound(id.to_owned()))?;
            let mut approvals = load_approvals(&*tx, id).await?;
            // Refused: the transaction rolls back when dropped.
            let approved = decide(&request, &approvals)?;
            tx.execute(
                "INSERT INTO approvals (request, approver, body) VALUES ($1, $2, $3)",
                &[
                    &id,
                    &approver_key(&approved.approval),
                    &to_json(&approved.approval)?,
                ],
            )
            .await
            .map_err(pg_err)?;
            approvals.push(approved.approval.clone());
            let mut grant = None;
            if approved.complete {
                request.state = RequestState::Approved;
                write_request(&*tx, &request).await?;
                let g = make_grant(&request, &approvals);
                tx.execute(
                    "INSERT INTO grants (id, request, principal, device, end_unix, body)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &g.id,
                        &g.request,
                        &g.principal.name,
                        &g.device,
                        &g.end.unix_timestamp(),
                        &to_json(&g)?,
                    ],
                )
                .await
                .map_err(pg_err)?;
                grant = Some(g);
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(ApproveOutcome {
                request,
                approved,
                grant,
            })
        })
    }

    fn deny(
        &self,
        id: &str,
        check: &dyn Fn(&AccessRequest) -> Result<(), DecideError>,
    ) -> Result<AccessRequest, DecisionError> {
        let db = self.db();
        self.block_here(async move {
            let mut c = db.get().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let mut request = load_request(&*tx, id, true)
                .await?
                .ok_or_else(|| DecisionError::NotFound(id.to_owned()))?;
            check(&request)?;
            request.state = RequestState::Denied;
            write_request(&*tx, &request).await?;
            tx.commit().await.map_err(pg_err)?;
            Ok(request)
        })
    }

    fn grants(&self, now: OffsetDateTime, all: bool) -> Result<Vec<Grant>, StoreError> {
        let db = self.db();
        self.block(async move {
            let c = db.get().await?;
            let rows = c
                .query(
                    "SELECT body FROM grants ORDER BY end_unix DESC, id DESC",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            let mut out = Vec::new();
            for row in rows {
                let g: Grant = from_json(&row.try_get::<_, String>(0).map_err(pg_err)?)?;
                if all || g.is_current(now) {
                    out.push(g);
                }
            }
            Ok(out)
        })
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let (db, id) = (self.db(), id.to_owned());
        self.block(async move {
            let c = db.get().await?;
            load_grant(&**c, &id, false).await
        })
    }

    fn revoke_grant(
        &self,
        id: &str,
        at: OffsetDateTime,
        why: &str,
    ) -> Result<Option<Grant>, StoreError> {
        let (db, id, why) = (self.db(), id.to_owned(), why.to_owned());
        self.block(async move {
            let mut c = db.get().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let Some(mut g) = load_grant(&*tx, &id, true).await? else {
                return Ok(None);
            };
            if g.revoked_at.is_none() {
                g.revoked_at = Some(at);
                g.revoked = Some(why);
                tx.execute(
                    "UPDATE grants SET body = $2 WHERE id = $1",
                    &[&id, &to_json(&g)?],
                )
                .await
                .map_err(pg_err)?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(Some(g))
        })
    }
}
