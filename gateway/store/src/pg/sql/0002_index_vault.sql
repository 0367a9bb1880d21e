-- Ward's PostgreSQL schema, step 2: the session index and the credential vault (pgindex).
-- The same columns as SQLite's (gateway/store/src/schema.rs), with PostgreSQL's types, plus the
-- gateway that recorded each session (NULL on rows from before, e.g. migrated from a SQLite store
-- without its gateway.id). Text the search compares or orders by uses the "C" collation: byte
-- order, as on SQLite, whatever the database's locale.

-- The session index (`SessionIndex`, `SessionSearch`).
CREATE TABLE sessions (
    id text COLLATE "C" PRIMARY KEY,
    principal text COLLATE "C" NOT NULL,
    serial text NOT NULL,
    device text COLLATE "C" NOT NULL,
    protocol text COLLATE "C" NOT NULL,
    source text NOT NULL,
    rule text NOT NULL,
    start_unix_ms bigint NOT NULL,
    end_unix_ms bigint,
    end_reason text COLLATE "C" NOT NULL,
    bytes_up bigint NOT NULL,
    bytes_down bigint NOT NULL,
    sealed boolean NOT NULL,
    verification text COLLATE "C" NOT NULL,
    break_glass boolean NOT NULL,
    duration_s double precision NOT NULL,
    file_len bigint,
    file_mtime_ns bigint,
    ops text NOT NULL DEFAULT '',
    undecodable text,
    denied_ops bigint NOT NULL DEFAULT 0,
    ops_known boolean NOT NULL DEFAULT true,
    ops_truncated boolean NOT NULL DEFAULT false,
    gateway text
);
-- Newest first with the id as the tie-break; by device or principal within that order.
CREATE INDEX sessions_start_id ON sessions (start_unix_ms, id);
CREATE INDEX sessions_device ON sessions (device, start_unix_ms);
CREATE INDEX sessions_principal ON sessions (principal, start_unix_ms);
CREATE INDEX sessions_gateway ON sessions (gateway, start_unix_ms);

-- The credential vault (`VaultStore`): one value per device and account sealed under the
-- key-encryption key (its fingerprint in key_fp), and during a rotation the previous value.
CREATE TABLE vault (
    device text NOT NULL,
    account text NOT NULL,
    username text NOT NULL,
    ciphertext bytea NOT NULL,
    nonce bytea NOT NULL,
    key_fp text NOT NULL,
    created_unix bigint NOT NULL,
    updated_unix bigint NOT NULL,
    last_used_unix bigint,
    last_rotated_unix bigint,
    prev_ciphertext bytea,
    prev_nonce bytea,
    prev_key_fp text,
    pending boolean NOT NULL DEFAULT false,
    PRIMARY KEY (device, account)
);
