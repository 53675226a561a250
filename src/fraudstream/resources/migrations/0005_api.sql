-- 0005: the scoring API's keys and the audit log.
--
-- A key is shown once, when it is created; only its SHA-256 is stored (keys are 256 random
-- bits, so a fast hash is enough: there is nothing to guess). Every change made through the
-- API or the CLI (keys, and later lists, cases and rules) is written to `audit_log`.

CREATE TABLE api_keys (
    id                text PRIMARY KEY,
    name              text NOT NULL,
    role              text NOT NULL CHECK (role IN ('scorer', 'analyst', 'rule_admin')),
    key_sha256        text NOT NULL UNIQUE,
    rate_limit_per_s  double precision NOT NULL CHECK (rate_limit_per_s > 0),
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    revoked_at        timestamptz
);

COMMENT ON TABLE api_keys IS
    'Keys of the scoring API: a role each, a request rate limit, and only the key''s SHA-256.';

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    action       text NOT NULL,
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb
);

COMMENT ON TABLE audit_log IS
    'Every change made by a person or a key: who (actor), what (action on entity), when, and the details.';

CREATE INDEX audit_log_entity_idx ON audit_log (entity_type, entity_id, at);
CREATE INDEX audit_log_at_idx ON audit_log (at);
