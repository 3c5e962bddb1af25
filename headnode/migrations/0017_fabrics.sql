-- Fabrics (Triton's NAPI fabrics): each account's own layer-2 VLANs, carried
-- between nodes over VXLAN on the datacenter's underlay nic tag. A fabric
-- VLAN's VNI is drawn here, once, and is unique in the datacenter, so two
-- accounts' fabrics never share a segment whatever their VLAN ids and
-- subnets. VNIs from 2^23 up are the fabrics'; an operator's network with a
-- VNI takes one below.
CREATE SEQUENCE fabric_vni_seq AS integer START 8388608 MINVALUE 8388608 MAXVALUE 16777215;

CREATE TABLE fabric_vlans (
    owner        uuid NOT NULL REFERENCES accounts (id),
    vlan_id      integer NOT NULL CHECK (vlan_id BETWEEN 0 AND 4095),
    vni          integer NOT NULL UNIQUE DEFAULT nextval('fabric_vni_seq')
                 CHECK (vni BETWEEN 8388608 AND 16777215),
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, vlan_id),
    UNIQUE (owner, name)
);
ALTER SEQUENCE fabric_vni_seq OWNED BY fabric_vlans.vni;

-- A fabric network belongs to one account's fabric VLAN (its owner is its
-- only user); it is untagged on the wire (vlan_id 0) and carries the VLAN's VNI.
ALTER TABLE networks
    ADD COLUMN fabric_owner   uuid,
    ADD COLUMN fabric_vlan_id integer,
    ADD CONSTRAINT networks_fabric_vlan_fkey FOREIGN KEY (fabric_owner, fabric_vlan_id)
        REFERENCES fabric_vlans (owner, vlan_id),
    ADD CONSTRAINT networks_fabric_whole CHECK ((fabric_owner IS NULL) = (fabric_vlan_id IS NULL)),
    -- One account's fabric subnets never overlap (another account's may).
    ADD CONSTRAINT networks_fabric_no_overlap EXCLUDE USING gist (
        fabric_owner WITH =, subnet inet_ops WITH &&
    ) WHERE (fabric_owner IS NOT NULL);
ALTER TABLE networks ADD CONSTRAINT networks_operator_vni
    CHECK (fabric_owner IS NOT NULL OR vni IS NULL OR vni < 8388608) NOT VALID;

-- Names: unique among the operator's networks, and within each account's fabrics.
ALTER TABLE networks DROP CONSTRAINT networks_name_key;
CREATE UNIQUE INDEX networks_name_key ON networks (name) WHERE fabric_owner IS NULL;
CREATE UNIQUE INDEX networks_fabric_name_key ON networks (fabric_owner, name)
    WHERE fabric_owner IS NOT NULL;
CREATE INDEX networks_vni_idx ON networks (vni) WHERE vni IS NOT NULL;

-- A fabric network with a gateway and internet_nat: every node that runs one
-- of its instances provides the gateway itself and NATs it out to the
-- datacenter's NAT network, from an address of that network (Triton's NAT
-- zone, one per network and node). The address is held while the row lives.
ALTER TABLE networks ADD COLUMN internet_nat boolean NOT NULL DEFAULT false;
ALTER TABLE network_ips DROP CONSTRAINT network_ips_owner_type_check,
    ADD CONSTRAINT network_ips_owner_type_check
        CHECK (owner_type IN ('reservation', 'instance', 'gateway'));
CREATE TABLE fabric_nats (
    network_id   uuid NOT NULL REFERENCES networks (id) ON DELETE CASCADE,
    server_id    uuid NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    external_id  uuid NOT NULL,
    ip           inet NOT NULL,
    mac          text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (network_id, server_id),
    FOREIGN KEY (external_id, ip) REFERENCES network_ips (network_id, ip)
);
CREATE INDEX fabric_nats_server_idx ON fabric_nats (server_id);
-- However the row goes (its network or its server deleted), the address is free again.
CREATE FUNCTION fabric_nat_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE network_ips SET owner_type = NULL, owner_id = NULL, updated_at = now()
     WHERE network_id = OLD.external_id AND ip = OLD.ip AND in_range;
    DELETE FROM network_ips WHERE network_id = OLD.external_id AND ip = OLD.ip AND NOT in_range;
    RETURN OLD;
END $$;
CREATE TRIGGER fabric_nat_release AFTER DELETE ON fabric_nats
    FOR EACH ROW EXECUTE FUNCTION fabric_nat_release();
