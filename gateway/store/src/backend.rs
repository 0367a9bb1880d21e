//! Which store a gateway runs on: the embedded SQLite file in its state dir (the default), or a
//! PostgreSQL shared by several gateways (`[store] url`, docs/deployment.md). [`Backend`] is the
//! set of trait objects the gateway's services and sessions use, whichever it is.
