//! A PostgreSQL server for tests: Debian's PostgreSQL 15, started unprivileged on loopback in a
//! temporary directory.
