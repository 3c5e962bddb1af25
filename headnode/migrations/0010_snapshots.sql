-- ZFS snapshots of instances, as the headnode knows them. A row is written
-- before the node is asked (state 'creating') and removed after the node
-- destroyed the snapshot ('deleting' until then), so a crash in between
-- leaves a row a retry of the same name completes, never a snapshot the
-- database does not know of.
CREATE TABLE instance_snapshots (
    instance_id  uuid NOT NULL REFERENCES instances (id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    state        text NOT NULL CHECK (state IN ('creating', 'created', 'deleting')),
    used_bytes   bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, name)
);
