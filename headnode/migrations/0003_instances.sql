-- Instances, their NICs, the capacity they hold on servers, and the durable
-- jobs (sagas) that provision and change them.

-- Capacity held on a server by its instances, changed only by conditional
-- updates (reserve) and by releases that are recorded on the instance, so a
-- server can never be over-committed and a release is never counted twice.
ALTER TABLE servers
    ADD COLUMN used_ram_mb   bigint NOT NULL DEFAULT 0 CHECK (used_ram_mb >= 0),
    ADD COLUMN used_disk_mb  bigint NOT NULL DEFAULT 0 CHECK (used_disk_mb >= 0),
    ADD COLUMN used_vcpus    integer NOT NULL DEFAULT 0 CHECK (used_vcpus >= 0),
    ADD COLUMN overprovision_ram   real NOT NULL DEFAULT 1.0 CHECK (overprovision_ram > 0),
    ADD COLUMN overprovision_disk  real NOT NULL DEFAULT 1.0 CHECK (overprovision_disk > 0),
    ADD COLUMN overprovision_cpu   real NOT NULL DEFAULT 4.0 CHECK (overprovision_cpu > 0);

CREATE TABLE instances (
    id                 uuid PRIMARY KEY,
    owner              uuid NOT NULL REFERENCES accounts (id),
    alias              text NOT NULL,
    brand              text NOT NULL CHECK (brand IN ('container', 'kvm')),
    -- Null once the image (or server) was deleted after the instance was;
    -- deleting either is refused while a live instance uses it.
    image_id           uuid REFERENCES images (id) ON DELETE SET NULL,
    package_id         uuid NOT NULL REFERENCES packages (id),
    server_id          uuid REFERENCES servers (id) ON DELETE SET NULL,
    state              text NOT NULL CHECK (state IN ('provisioning', 'running', 'stopping',
                           'stopped', 'failed', 'deleting', 'deleted', 'unknown')),
    -- The version of the desired state; agents report the generation they run.
    generation         bigint NOT NULL DEFAULT 1,
    -- What the instance holds on its server (released exactly once).
    ram_mb             bigint NOT NULL,
    disk_mb            bigint NOT NULL,
    vcpus              integer NOT NULL,
    capacity_held      boolean NOT NULL DEFAULT false,
    tags               jsonb NOT NULL DEFAULT '{}',
    metadata           jsonb NOT NULL DEFAULT '{}',
    firewall_enabled   boolean NOT NULL DEFAULT false,
    networks           uuid[] NOT NULL,
    idempotency_key    text,
    error              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    CHECK (NOT capacity_held OR server_id IS NOT NULL)
);
CREATE UNIQUE INDEX instances_idempotency_idx ON instances (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX instances_alias_idx ON instances (owner, alias) WHERE state <> 'deleted';
CREATE INDEX instances_server_idx ON instances (server_id) WHERE state <> 'deleted';

-- A NIC is an address of a network held by an instance; the address row of
-- network_ips (owner_type 'instance') and this row are written in one transaction.
CREATE TABLE instance_nics (
    instance_id  uuid NOT NULL REFERENCES instances (id),
    idx          integer NOT NULL CHECK (idx >= 0),
    network_id   uuid NOT NULL,
    ip           inet NOT NULL,
    mac          text NOT NULL UNIQUE,
    PRIMARY KEY (instance_id, idx),
    FOREIGN KEY (network_id, ip) REFERENCES network_ips (network_id, ip)
);

CREATE TABLE jobs (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('provision', 'start', 'stop', 'reboot', 'destroy')),
    instance_id   uuid NOT NULL REFERENCES instances (id),
    owner         uuid NOT NULL REFERENCES accounts (id),
    -- queued -> running -> succeeded | failed; a failing saga passes through
    -- unwinding while its undos run.
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'unwinding', 'succeeded', 'failed')),
    params        jsonb NOT NULL DEFAULT '{}',
    -- [{name, state (pending|running|done|failed|undone), attempts, error, started_at, finished_at}]
    steps         jsonb NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    error         text,
    request_id    text NOT NULL DEFAULT '-',
    -- The headnode working on it and until when; an expired lease is taken over.
    lease_owner   uuid,
    lease_until   timestamptz,
    run_after     timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
-- One unfinished job per instance: a second action while one runs is a 409.
CREATE UNIQUE INDEX jobs_one_active_per_instance ON jobs (instance_id)
    WHERE state IN ('queued', 'running', 'unwinding');
CREATE INDEX jobs_claim_idx ON jobs (run_after) WHERE state IN ('queued', 'running', 'unwinding');
CREATE INDEX jobs_instance_idx ON jobs (instance_id, created_at);
