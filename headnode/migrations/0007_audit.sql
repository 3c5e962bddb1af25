-- Every mutation through the API: who, what, which target, from where,
-- under which request, and how it ended. Written in the mutation's own
-- transaction when it succeeds.
CREATE TABLE audit_log (
    id           uuid PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        uuid,
    actor_role   text NOT NULL,
    action       text NOT NULL,
    target_kind  text NOT NULL,
    target_id    text NOT NULL,
    -- The account the target belongs to: it may read the entry too.
    owner        uuid,
    request_id   text NOT NULL,
    source       inet,
    -- "ok", or the error code of a request that failed.
    result       text NOT NULL,
    message      text
);
CREATE INDEX audit_log_owner_idx ON audit_log (owner, id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, id);
CREATE INDEX audit_log_target_idx ON audit_log (target_id, id);
