-- An operator can revoke a node's certificate short of deleting the server:
-- from then on the certificate is refused (heartbeats, image downloads) and
-- the server is `unknown`, until a rotation gives the node a new one.
ALTER TABLE servers ADD COLUMN cert_revoked_at timestamptz;

-- The datacenter's CA, by fingerprint: the first headnode to start records
-- it, and a headnode started with another CA (another pki dir) on the same
-- database refuses to start (it could not reach a single agent).
CREATE TABLE datacenter_ca (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    ca_sha256  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
