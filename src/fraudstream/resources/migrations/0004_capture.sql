-- 0004: where each change-data capture (`fraudstream capture`) stands.
--
-- The capture acknowledges a source transaction to PostgreSQL only after its rows are confirmed
-- in Kafka, and records the same position here first. A crash of the source server can move a
-- replication slot back to its last checkpoint; a restarted capture passes this position as
-- its start, so what it already delivered is not delivered, or counted, twice. The counters
-- grow in the same statement as the position, so they count each source row once.

CREATE TABLE capture_positions (
    slot_name         text PRIMARY KEY,
    source_table      text NOT NULL,
    lsn               pg_lsn NOT NULL,
    snapshot          text NOT NULL CHECK (snapshot IN ('none', 'pending', 'done')),
    transactions      bigint NOT NULL DEFAULT 0,
    rows_captured     bigint NOT NULL DEFAULT 0,
    rows_rejected     bigint NOT NULL DEFAULT 0,
    updates           bigint NOT NULL DEFAULT 0,
    deletes           bigint NOT NULL DEFAULT 0,
    truncates         bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE capture_positions IS
    'Per replication slot: the end LSN of the last source transaction whose rows Kafka '
    'confirmed (the restart point), the initial snapshot''s state, and what was captured: rows '
    'produced, rows rejected to dead_letters, updates (emitted or ignored), deletes and '
    'truncates ignored.';
