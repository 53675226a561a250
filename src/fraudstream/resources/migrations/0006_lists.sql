-- 0006: allow and deny lists, and the revision counters runners poll to pick up changes.
--
-- An entry is one value of one entity on one list, with a reason, who added it and an optional
-- expiry. Removing an entry keeps its row (who removed it, when) for the record; at most one
-- entry per (list, entity, value) is active. Every change bumps `revisions.lists` in the same
-- transaction: a single row updated under its row lock, so revisions follow commit order and a
-- runner that saw revision N has seen every change up to N (a timestamp or a sequence would
-- not: those are taken before commit, in any order).

CREATE TABLE revisions (
    name      text PRIMARY KEY,
    revision  bigint NOT NULL DEFAULT 0
);

COMMENT ON TABLE revisions IS
    'A counter per kind of managed configuration (lists, rules), bumped by every change to it.';

INSERT INTO revisions (name) VALUES ('lists');

CREATE TABLE list_entries (
    id              bigserial PRIMARY KEY,
    list            text NOT NULL CHECK (list IN ('deny', 'allow')),
    entity          text NOT NULL CHECK (entity IN ('card', 'customer', 'merchant', 'device', 'ip')),
    value           text NOT NULL CHECK (length(value) BETWEEN 1 AND 128),
    reason          text NOT NULL CHECK (length(btrim(reason)) > 0),
    expires_at      timestamptz,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    removed_by      text,
    removed_at      timestamptz,
    removed_reason  text
);

COMMENT ON TABLE list_entries IS
    'Allow and deny lists of cards (by reference), customers, merchants, devices and IPs; '
    'rules read them as card_on_deny_list, merchant_on_allow_list, ...';

CREATE UNIQUE INDEX list_entries_active_idx ON list_entries (list, entity, value)
    WHERE removed_at IS NULL;
CREATE INDEX list_entries_entity_value_idx ON list_entries (entity, value);
