//! Ward's persistent state behind one trait per aggregate: locks ([`store::Store`]), users
//! ([`users::UserStore`]), access requests, approvals and grants ([`access_store`]), the session
//! index ([`session_index::SessionIndex`]) and the credential vault ([`vault::VaultStore`]), with
//! the embedded SQLite implementation
//! ([`store::SqliteStore`], `<state_dir>/ward.db`) and the shared PostgreSQL one ([`pg::PgStore`])
//! for several gateways; [`backend::Backend`] is the set a gateway runs on. See
//! docs/architecture.md and docs/deployment.md.
#![forbid(unsafe_code)]

pub mod access_store;
pub mod backend;
pub mod conformance;
pub mod gateways;
pub mod keywrap;
pub mod pg;
pub mod pins;
pub mod recording_store;
pub mod s3;
pub mod schema;
pub mod session_index;
pub mod session_query;
pub mod store;
pub mod store_async;
pub mod users;
pub mod vault;
