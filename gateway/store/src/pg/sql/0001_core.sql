-- Ward's shared state, part 1 (issue 19): the same tables as the SQLite store (gateway/store/src/
-- schema.rs), times as Unix seconds (or milliseconds where the name says so), JSON bodies as text.

-- Locks on principals, devices and orgs (LockStore).
CREATE TABLE locks (
    kind text NOT NULL,
    value text NOT NULL,
    until bigint,
    reason text NOT NULL,
    locked_by text NOT NULL,
    PRIMARY KEY (kind, value)
);

-- Users (UserStore). TOTP seeds are sealed under the gateways' key-encryption key (totp_ct,
-- totp_nonce, totp_kek); totp_secret only exists for rows copied from an older SQLite store.
CREATE TABLE users (
    name text PRIMARY KEY,
    kind text NOT NULL,
    org text,
    roles text NOT NULL,
    password_phc text NOT NULL,
    totp_secret text,
    totp_last_step bigint,
    disabled boolean NOT NULL DEFAULT false,
    created_unix bigint NOT NULL,
    disabled_unix bigint,
    must_change_password boolean NOT NULL DEFAULT false,
    totp_ct bytea,
    totp_nonce bytea,
    totp_kek text
);

-- Consecutive failed logins per name (users or not: an attacker guesses names), shared by every
-- gateway so the back-off holds whichever gateway a guess reaches.
CREATE TABLE login_failures (
    name text PRIMARY KEY,
    failures integer NOT NULL,
    last_unix_ms bigint NOT NULL
);

-- Access requests, approvals and grants (AccessStore): one approval per person per request, one
-- grant per request. Decisions lock the request row (SELECT ... FOR UPDATE).
CREATE TABLE access_requests (
    id text PRIMARY KEY,
    state text NOT NULL,
    created bigint NOT NULL,
    body text NOT NULL
);
CREATE TABLE approvals (
    request text NOT NULL,
    approver text NOT NULL,
    seq bigserial NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (request, approver)
);
CREATE TABLE grants (
    id text PRIMARY KEY,
    request text NOT NULL UNIQUE,
    principal text NOT NULL,
    device text NOT NULL,
    end_unix bigint NOT NULL,
    body text NOT NULL
);

-- Device certificate pins (PinStore).
CREATE TABLE device_pins (
    device text PRIMARY KEY,
    pin text NOT NULL,
    set_by text NOT NULL,
    set_unix bigint NOT NULL
);

-- The gateways sharing this database (GatewayRegistry), with their heartbeat.
CREATE TABLE gateways (
    id text PRIMARY KEY,
    quic text NOT NULL,
    tcp text,
    web text,
    version text NOT NULL,
    started_unix_ms bigint NOT NULL,
    last_seen_unix_ms bigint NOT NULL,
    keyring text NOT NULL DEFAULT ''
);

-- The change feed: every change that can end a live session or open one (a lock, a grant or its
-- revocation, a request's decision, a user disabled or changed) notifies every gateway.
-- Logins (TOTP steps, password changes) do not: they change nothing the policy reads.
CREATE FUNCTION ward_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ward_changes', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER locks_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON locks
    FOR EACH STATEMENT EXECUTE FUNCTION ward_notify_change();
CREATE TRIGGER grants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON grants
    FOR EACH STATEMENT EXECUTE FUNCTION ward_notify_change();
CREATE TRIGGER access_requests_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON access_requests
    FOR EACH STATEMENT EXECUTE FUNCTION ward_notify_change();
CREATE TRIGGER users_changed AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF disabled, kind, org, roles ON users
    FOR EACH STATEMENT EXECUTE FUNCTION ward_notify_change();
