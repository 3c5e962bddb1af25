-- Retention: finished jobs and deleted instances older than the headnode's
-- history retention are deleted, a batch at a time, by one headnode. These
-- indexes find them without reading the live rows.
CREATE INDEX jobs_finished_at_idx ON jobs (finished_at) WHERE state IN ('succeeded', 'failed');
CREATE INDEX instances_deleted_at_idx ON instances (deleted_at) WHERE state = 'deleted';

-- A heartbeat (thousands a second, in batches) updates a server's liveness
-- columns only: the change feed's trigger now fires for the columns it
-- reports, instead of running for every heartbeat to find nothing to say.
DROP TRIGGER servers_events ON servers;
CREATE TRIGGER servers_events AFTER INSERT OR DELETE ON servers
    FOR EACH ROW EXECUTE FUNCTION events_server();
CREATE TRIGGER servers_events_update AFTER UPDATE OF setup_state, reserved ON servers
    FOR EACH ROW
    WHEN (OLD.setup_state IS DISTINCT FROM NEW.setup_state OR OLD.reserved IS DISTINCT FROM NEW.reserved)
    EXECUTE FUNCTION events_server();

-- The NICs of a network (the overlay's peers of a VNI, a network's
-- addresses in use) are found without reading every NIC.
CREATE INDEX instance_nics_network_idx ON instance_nics (network_id);
