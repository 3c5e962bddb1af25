-- What each account's live instances hold, kept by a trigger in the
-- transaction that changes an instance, so a quota check reads one row
-- instead of counting the account's instances (which grew with the account:
-- every create of a large account scanned all of its instances under the
-- account's lock). The row is also the lock that orders two creates of one
-- account, instead of the accounts row, which every insert's foreign-key
-- check shares.
CREATE TABLE account_usage (
    account_id  uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    instances   bigint NOT NULL DEFAULT 0,
    ram_mb      bigint NOT NULL DEFAULT 0,
    disk_mb     bigint NOT NULL DEFAULT 0,
    vcpus       bigint NOT NULL DEFAULT 0
);

INSERT INTO account_usage (account_id, instances, ram_mb, disk_mb, vcpus)
SELECT owner, count(*), sum(ram_mb), sum(disk_mb), sum(vcpus)
  FROM instances WHERE state <> 'deleted' GROUP BY owner;

CREATE FUNCTION account_usage_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.state <> 'deleted' THEN
        INSERT INTO account_usage AS u (account_id, instances, ram_mb, disk_mb, vcpus)
        VALUES (OLD.owner, -1, -OLD.ram_mb, -OLD.disk_mb, -OLD.vcpus)
        ON CONFLICT (account_id) DO UPDATE SET instances = u.instances + EXCLUDED.instances,
            ram_mb = u.ram_mb + EXCLUDED.ram_mb, disk_mb = u.disk_mb + EXCLUDED.disk_mb,
            vcpus = u.vcpus + EXCLUDED.vcpus;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.state <> 'deleted' THEN
        INSERT INTO account_usage AS u (account_id, instances, ram_mb, disk_mb, vcpus)
        VALUES (NEW.owner, 1, NEW.ram_mb, NEW.disk_mb, NEW.vcpus)
        ON CONFLICT (account_id) DO UPDATE SET instances = u.instances + EXCLUDED.instances,
            ram_mb = u.ram_mb + EXCLUDED.ram_mb, disk_mb = u.disk_mb + EXCLUDED.disk_mb,
            vcpus = u.vcpus + EXCLUDED.vcpus;
    END IF;
    RETURN NULL;
END $$;

-- Only changes that move usage: a state change between two live states, the
-- common case, writes nothing.
CREATE TRIGGER instances_usage_insert AFTER INSERT ON instances
    FOR EACH ROW EXECUTE FUNCTION account_usage_track();
CREATE TRIGGER instances_usage_delete AFTER DELETE ON instances
    FOR EACH ROW EXECUTE FUNCTION account_usage_track();
CREATE TRIGGER instances_usage_update AFTER UPDATE OF state, owner, ram_mb, disk_mb, vcpus ON instances
    FOR EACH ROW
    WHEN ((OLD.state = 'deleted') IS DISTINCT FROM (NEW.state = 'deleted')
          OR OLD.owner IS DISTINCT FROM NEW.owner OR OLD.ram_mb IS DISTINCT FROM NEW.ram_mb
          OR OLD.disk_mb IS DISTINCT FROM NEW.disk_mb OR OLD.vcpus IS DISTINCT FROM NEW.vcpus)
    EXECUTE FUNCTION account_usage_track();

-- What the scheduler caches of a server (capabilities, nic tags, traits,
-- capacity totals) changes rarely; this version moves when it does, so a
-- headnode re-reads a server's wide row only then, and a placement reads
-- only the narrow columns that move with every placement.
ALTER TABLE servers ADD COLUMN static_version bigint NOT NULL DEFAULT 1;
CREATE FUNCTION servers_static_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.static_version := OLD.static_version + 1;
    RETURN NEW;
END $$;
CREATE TRIGGER servers_static_version BEFORE UPDATE OF sysinfo, setup, setup_state, reserved,
        overprovision_ram, overprovision_disk, overprovision_cpu ON servers
    FOR EACH ROW
    WHEN (OLD.sysinfo IS DISTINCT FROM NEW.sysinfo OR OLD.setup IS DISTINCT FROM NEW.setup
          OR OLD.setup_state IS DISTINCT FROM NEW.setup_state OR OLD.reserved IS DISTINCT FROM NEW.reserved
          OR OLD.overprovision_ram IS DISTINCT FROM NEW.overprovision_ram
          OR OLD.overprovision_disk IS DISTINCT FROM NEW.overprovision_disk
          OR OLD.overprovision_cpu IS DISTINCT FROM NEW.overprovision_cpu)
    EXECUTE FUNCTION servers_static_bump();

-- The scheduler's sample asks for the owner's instances on a few servers.
CREATE INDEX instances_owner_server_idx ON instances (owner, server_id) WHERE state <> 'deleted';

-- The firewall's "which owners have firewalled instances here", asked for
-- every node on every reconcile pass: instant for the many nodes with none.
CREATE INDEX instances_firewalled_idx ON instances (server_id, owner)
    WHERE firewall_enabled AND state <> 'deleted';

-- Foreign keys and list filters that large tables were scanned for: freeing
-- an instance's addresses, a tenant's instance and job lists.
CREATE INDEX network_ips_owner_idx ON network_ips (owner_id) WHERE owner_id IS NOT NULL;
CREATE INDEX instances_owner_id_idx ON instances (owner, id);
CREATE INDEX jobs_owner_id_idx ON jobs (owner, id);
