-- SSH public keys of accounts (what instances get as root_authorized_keys),
-- the version of each instance's metadata as pushed to its node (bumped by
-- every change of tags, metadata or alias; the node keeps the newest), and
-- deletion protection.
CREATE TABLE ssh_keys (
    owner        uuid NOT NULL REFERENCES accounts (id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    fingerprint  text NOT NULL,
    key_type     text NOT NULL,
    bits         integer NOT NULL,
    key          text NOT NULL CHECK (length(key) <= 8192),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name),
    CONSTRAINT ssh_keys_fingerprint_key UNIQUE (owner, fingerprint)
);

ALTER TABLE instances
    ADD COLUMN metadata_generation bigint NOT NULL DEFAULT 1,
    ADD COLUMN deletion_protection boolean NOT NULL DEFAULT false;
