-- Tenant isolation: per-account quotas, bounded images, isolated id ranges.

-- Limits set on an account; a null column means the headnode's default.
-- Usage is never stored: it is counted from the rows it is about.
CREATE TABLE account_quotas (
    account_id   uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    instances    bigint CHECK (instances >= 0),
    memory_mb    bigint CHECK (memory_mb >= 0),
    disk_mb      bigint CHECK (disk_mb >= 0),
    vcpus        bigint CHECK (vcpus >= 0),
    images       bigint CHECK (images >= 0),
    image_bytes  bigint CHECK (image_bytes >= 0)
);

-- The most an image's file unpacks to, as its manifest declares.
ALTER TABLE images ADD COLUMN unpacked_size bigint CHECK (unpacked_size > 0);

-- A container in a host id range of its own.
ALTER TABLE instances ADD COLUMN isolated_ids boolean NOT NULL DEFAULT false;

CREATE INDEX instances_owner_idx ON instances (owner) WHERE state <> 'deleted';
CREATE INDEX images_owner_idx ON images (owner);
