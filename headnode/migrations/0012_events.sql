-- The change feed behind GET /v1/events: one row per state change of an
-- instance, a job (its steps included) or a server, written by triggers in the transaction that
-- makes the change (so no code path can forget one and none outlives a
-- rollback), with the id of that transaction. Readers deliver only events
-- of transactions older than every running one (pg_snapshot_xmin), in
-- (xid, id) order: a set that never changes once delivered, so a client
-- resuming after the last event it saw misses nothing and sees nothing twice.
CREATE TABLE events (
    id       bigserial PRIMARY KEY,
    xid      bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    at       timestamptz NOT NULL DEFAULT now(),
    kind     text NOT NULL CHECK (kind IN ('instance', 'job', 'server')),
    target   uuid NOT NULL,
    -- Who may see it; null: operators only.
    owner    uuid,
    body     jsonb NOT NULL
);
CREATE INDEX events_order_idx ON events (xid, id);
CREATE INDEX events_at_idx ON events (at);

CREATE FUNCTION events_instance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state
       OR NEW.server_id IS DISTINCT FROM OLD.server_id THEN
        INSERT INTO events (kind, target, owner, body) VALUES ('instance', NEW.id, NEW.owner,
            jsonb_build_object('type', 'instance', 'id', NEW.id, 'owner', NEW.owner,
                               'alias', NEW.alias, 'state', NEW.state, 'server_id', NEW.server_id));
        PERFORM pg_notify('nereid_events', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER instances_events AFTER INSERT OR UPDATE ON instances
    FOR EACH ROW EXECUTE FUNCTION events_instance();

CREATE FUNCTION events_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Step changes too: they are what `--wait` shows.
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state
       OR NEW.steps IS DISTINCT FROM OLD.steps THEN
        INSERT INTO events (kind, target, owner, body) VALUES ('job', NEW.id, NEW.owner,
            jsonb_build_object('type', 'job', 'id', NEW.id, 'owner', NEW.owner,
                               'instance_id', NEW.instance_id, 'kind', NEW.kind,
                               'state', NEW.state, 'error', NEW.error, 'steps', NEW.steps));
        PERFORM pg_notify('nereid_events', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_events AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION events_job();

CREATE FUNCTION events_server() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO events (kind, target, body) VALUES ('server', OLD.id,
            jsonb_build_object('type', 'server', 'id', OLD.id, 'hostname', OLD.hostname,
                               'change', 'deleted'));
    ELSIF TG_OP = 'INSERT' OR NEW.setup_state IS DISTINCT FROM OLD.setup_state
          OR NEW.reserved IS DISTINCT FROM OLD.reserved THEN
        INSERT INTO events (kind, target, body) VALUES ('server', NEW.id,
            jsonb_build_object('type', 'server', 'id', NEW.id, 'hostname', NEW.hostname,
                               'change', lower(TG_OP), 'setup_state', NEW.setup_state,
                               'reserved', NEW.reserved));
    ELSE
        RETURN NULL;
    END IF;
    PERFORM pg_notify('nereid_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER servers_events AFTER INSERT OR UPDATE OR DELETE ON servers
    FOR EACH ROW EXECUTE FUNCTION events_server();
