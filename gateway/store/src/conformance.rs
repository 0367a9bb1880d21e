//! The store's conformance suite: the same checks run against every backend (SQLite here, and
//! PostgreSQL in tests/tests/store_conformance.rs).

pub mod index_vault;
