-- Nodes prove who they are with a certificate of the headnode's CA whose key
-- never left the node (mutual TLS both ways). The bearer secrets go: the node
-- credential's hash and the control key the headnode sent in the clear.
-- A server registered before this must be deleted and its node re-joined.
ALTER TABLE servers
    ADD COLUMN cert_sha256 text,
    -- During a rotation: the certificate the node is being given. Either is
    -- accepted until the node presents the new one, which then replaces it.
    ADD COLUMN cert_next_sha256 text,
    ADD COLUMN cert_not_after timestamptz,
    DROP COLUMN credential_hash,
    DROP COLUMN control_key;

CREATE INDEX servers_cert_sha256_idx ON servers (cert_sha256);

-- The images the headnode asked a node to ensure: the only files that node
-- may fetch.
CREATE TABLE image_grants (
    server_id  uuid NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    image_id   uuid NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, image_id)
);
CREATE INDEX image_grants_image_id_idx ON image_grants (image_id);
