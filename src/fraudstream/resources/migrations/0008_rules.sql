-- 0008: rules managed in the database beside the rules file, and the shadow rules' hits.
--
-- Every change to a rule (its definition or its status) is a new row of `rule_versions`, with
-- who made it, why, and the `revisions.rules` counter it produced; `rules` points at each rule's
-- current version. Nothing is deleted: disabling is a version too. The rules in force at
-- revision R are, per rule, the latest version whose revision is at most R.
--
-- Status: `draft` (kept and backtested, not evaluated on traffic), `shadow` (evaluated on every
-- decision and recorded in `transactions.shadow_rules_fired`, never moving a score or an
-- action), `enabled` (live), `disabled`. A rule with the id of a rule in the rules file
-- replaces that rule.

ALTER TABLE transactions
    ADD COLUMN shadow_rules_fired  text[] NOT NULL DEFAULT '{}';

COMMENT ON COLUMN transactions.shadow_rules_fired IS
    'Shadow rules that fired on this transaction (recorded only: they never move the decision).';

INSERT INTO revisions (name) VALUES ('rules');

CREATE TABLE rule_versions (
    rule_id        text NOT NULL CHECK (rule_id ~ '^[a-z][a-z0-9_]{1,63}$'),
    version        integer NOT NULL CHECK (version >= 1),
    status         text NOT NULL CHECK (status IN ('draft', 'shadow', 'enabled', 'disabled')),
    description    text NOT NULL,
    expression     text NOT NULL CHECK (length(btrim(expression)) BETWEEN 1 AND 4000),
    score          double precision NOT NULL CHECK (score BETWEEN 0 AND 100),
    action         text NOT NULL CHECK (action IN ('approve', 'review', 'decline')),
    severity       text NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    tags           text[] NOT NULL DEFAULT '{}',
    changed_by     text NOT NULL,
    change_reason  text NOT NULL CHECK (length(btrim(change_reason)) > 0),
    changed_at     timestamptz NOT NULL DEFAULT now(),
    revision       bigint NOT NULL,
    PRIMARY KEY (rule_id, version)
);

COMMENT ON TABLE rule_versions IS
    'Every version of every rule managed in the database: the definition, the status, who changed it and why.';

CREATE TABLE rules (
    rule_id  text PRIMARY KEY,
    version  integer NOT NULL,
    FOREIGN KEY (rule_id, version) REFERENCES rule_versions (rule_id, version)
);

COMMENT ON TABLE rules IS 'The current version of each rule managed in the database.';
