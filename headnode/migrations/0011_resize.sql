-- Resize joins the kinds of jobs, and jobs get back a column for what their
-- steps need beyond the instance (a resize's undo needs the old package).
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('provision', 'start', 'stop', 'reboot', 'destroy', 'resize'));
ALTER TABLE jobs ADD COLUMN params jsonb NOT NULL DEFAULT '{}';
