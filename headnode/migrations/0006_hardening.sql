-- Every claim of a job gets its own fencing token: the run that holds it is
-- the only one whose writes (to the job and to what its steps change) pass.
ALTER TABLE jobs ADD COLUMN lease_token uuid;

-- Why the last comparison of a server's instances with its node failed
-- (the node cannot see its pool, does not answer, ...); null once it works.
ALTER TABLE servers ADD COLUMN sync_error text;

-- Named leases for work one headnode does at a time (the reconciler).
CREATE TABLE leases (
    name    text PRIMARY KEY,
    holder  uuid NOT NULL,
    until   timestamptz NOT NULL
);

-- The server whose agent a job's step waits for (it does not answer).
ALTER TABLE jobs ADD COLUMN waiting_on uuid;

-- What an instance deleted by force may have left on its node (the node did
-- not answer): removed from the node once it answers again.
CREATE TABLE node_leftovers (
    server_id    uuid NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    instance_id  uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, instance_id)
);
