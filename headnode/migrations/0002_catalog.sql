-- The catalog: images (files content-addressed), packages, nic tags, networks
-- and their addresses.

CREATE EXTENSION IF NOT EXISTS btree_gist;

-- One row per distinct file in the image store.
CREATE TABLE image_files (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size        bigint NOT NULL CHECK (size >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE images (
    id            uuid PRIMARY KEY,
    owner         uuid NOT NULL REFERENCES accounts (id),
    name          text NOT NULL,
    version       text NOT NULL,
    type          text NOT NULL CHECK (type IN ('container', 'vm')),
    os            text NOT NULL,
    description   text NOT NULL DEFAULT '',
    requirements  jsonb NOT NULL DEFAULT '{}',
    public        boolean NOT NULL DEFAULT false,
    state         text NOT NULL DEFAULT 'unactivated' CHECK (state IN ('unactivated', 'active', 'disabled')),
    file_sha256   text REFERENCES image_files (sha256),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner, name, version),
    CHECK (state = 'unactivated' OR file_sha256 IS NOT NULL)
);
CREATE INDEX images_file_idx ON images (file_sha256);

CREATE TABLE packages (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    version      text NOT NULL,
    description  text NOT NULL DEFAULT '',
    memory_mb    bigint NOT NULL CHECK (memory_mb > 0),
    swap_mb      bigint NOT NULL CHECK (swap_mb >= 0),
    vcpus        integer NOT NULL CHECK (vcpus > 0),
    cpu_cap      integer NOT NULL CHECK (cpu_cap >= 0),
    disk_mb      bigint NOT NULL CHECK (disk_mb > 0),
    brand        text NOT NULL CHECK (brand IN ('container', 'kvm')),
    traits       jsonb NOT NULL DEFAULT '{}',
    active       boolean NOT NULL DEFAULT true,
    owners       uuid[] NOT NULL DEFAULT '{}',
    used         boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

CREATE TABLE nic_tags (
    name         text PRIMARY KEY,
    mtu          integer NOT NULL CHECK (mtu BETWEEN 576 AND 9000),
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE networks (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    nic_tag          text NOT NULL REFERENCES nic_tags (name),
    vlan_id          integer NOT NULL CHECK (vlan_id = 0 OR vlan_id BETWEEN 2 AND 4094),
    vni              integer CHECK (vni BETWEEN 1 AND 16777215),
    subnet           cidr NOT NULL CHECK (family(subnet) = 4),
    gateway          inet,
    provision_start  inet NOT NULL,
    provision_end    inet NOT NULL,
    resolvers        inet[] NOT NULL DEFAULT '{}',
    routes           jsonb NOT NULL DEFAULT '{}',
    mtu              integer NOT NULL CHECK (mtu BETWEEN 576 AND 9000),
    owners           uuid[] NOT NULL DEFAULT '{}',
    description      text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (provision_start <= provision_end),
    CHECK (provision_start << subnet AND provision_end << subnet),
    CHECK (gateway IS NULL OR gateway << subnet),
    -- No two networks with overlapping subnets on one nic tag, VLAN and fabric.
    CONSTRAINT networks_no_overlap EXCLUDE USING gist (
        nic_tag WITH =, vlan_id WITH =, (coalesce(vni, 0)) WITH =, subnet inet_ops WITH &&
    )
);

-- Every address of a network's provision range has a row (free when
-- owner_type is NULL); addresses outside the range get a row when reserved.
-- The primary key makes an address impossible to hand out twice; allocation
-- takes the lowest free row with FOR UPDATE SKIP LOCKED.
CREATE TABLE network_ips (
    network_id  uuid NOT NULL REFERENCES networks (id) ON DELETE CASCADE,
    ip          inet NOT NULL,
    in_range    boolean NOT NULL,
    owner_type  text CHECK (owner_type IN ('reservation', 'instance')),
    owner_id    uuid,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (network_id, ip)
);
CREATE INDEX network_ips_free_idx ON network_ips (network_id, ip) WHERE owner_type IS NULL;
