-- Accounts, API tokens, join tokens and servers: the foundation of the headnode.
-- Secrets (tokens, join tokens, node credentials) are stored as sha256 hashes.

CREATE TABLE accounts (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    role        text NOT NULL CHECK (role IN ('operator', 'tenant')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tokens (
    id            uuid PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name          text NOT NULL,
    secret_hash   bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX tokens_account_idx ON tokens (account_id);

CREATE TABLE join_tokens (
    id              uuid PRIMARY KEY,
    secret_hash     bytea NOT NULL UNIQUE,
    created_by      uuid NOT NULL REFERENCES accounts (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    used_by_server  uuid
);

CREATE TABLE servers (
    id               uuid PRIMARY KEY,
    hostname         text NOT NULL,
    -- One server per machine: a second agent on the same machine is refused.
    machine_id       text NOT NULL UNIQUE,
    setup_state      text NOT NULL DEFAULT 'unsetup'
                     CHECK (setup_state IN ('unsetup', 'setting_up', 'setup')),
    reserved         boolean NOT NULL DEFAULT false,
    sysinfo          jsonb NOT NULL,
    setup            jsonb,
    usage            jsonb,
    agent_address    text NOT NULL,
    agent_version    text NOT NULL,
    credential_hash  bytea NOT NULL UNIQUE,
    -- Presented by the headnode when it calls the agent; the agent keeps its hash.
    control_key      text NOT NULL,
    last_heartbeat   timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
