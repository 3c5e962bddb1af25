-- Network pools (Triton's NAPI): a named, ordered list of networks of one nic
-- tag; an instance asking for the pool gets the first of them that has a
-- free address. A network in a pool cannot be deleted until it leaves it.
CREATE TABLE network_pools (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    nic_tag      text NOT NULL REFERENCES nic_tags (name),
    owners       uuid[] NOT NULL DEFAULT '{}',
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE network_pool_members (
    pool_id     uuid NOT NULL REFERENCES network_pools (id) ON DELETE CASCADE,
    idx         integer NOT NULL CHECK (idx BETWEEN 0 AND 63),
    network_id  uuid NOT NULL REFERENCES networks (id),
    PRIMARY KEY (pool_id, idx),
    UNIQUE (pool_id, network_id)
);
CREATE INDEX network_pool_members_network_idx ON network_pool_members (network_id);

-- Operators may let an instance's NIC send what anti-spoofing drops
-- otherwise (Triton's allow_*_spoofing NIC properties): one object per NIC,
-- in the order of `networks`.
ALTER TABLE instances ADD COLUMN nic_options jsonb NOT NULL DEFAULT '[]';
