-- Firewall rules in Triton's language. `parsed` is the rule as the headnode
-- parsed it (the text stays the source of truth); a global rule has no owner.
CREATE TABLE fw_rules (
    id           uuid PRIMARY KEY,
    owner        uuid REFERENCES accounts (id),
    rule         text NOT NULL CHECK (length(rule) <= 4096),
    parsed       jsonb NOT NULL,
    enabled      boolean NOT NULL DEFAULT false,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fw_rules_owner_idx ON fw_rules (owner, id);
