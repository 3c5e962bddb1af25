-- Virtual machines, and the review of 0003.

-- Jobs never had parameters: their instance row holds what they work on.
ALTER TABLE jobs DROP COLUMN params;

-- What runs a VM's CPUs, as its node last reported (null for containers and
-- for a VM that has not run yet).
ALTER TABLE instances ADD COLUMN accelerator text CHECK (accelerator IN ('kvm', 'tcg'));
