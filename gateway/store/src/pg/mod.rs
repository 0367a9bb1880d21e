//! The PostgreSQL store: the same traits as SQLite over a pool of tokio-postgres connections
//! (docs/deployment.md).
