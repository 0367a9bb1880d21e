//! An S3-compatible object store for tests, on loopback.
