-- Images made from instances: a job kind, and the image they came from.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('provision', 'start', 'stop', 'reboot', 'destroy', 'resize', 'create_image'));
ALTER TABLE images ADD COLUMN origin uuid;
