-- 0001: what the scoring pipeline writes. Applied once by fraudstream.adapters.postgres_schema.migrate,
-- inside a transaction; never edit this file after release, add 0002_<name>.sql instead.

CREATE TABLE transactions (
    transaction_id   text PRIMARY KEY,
    event_time       timestamptz NOT NULL,
    card_ref         text,
    card_last4       text,
    customer_id      text,
    merchant_id      text,
    mcc              text,
    terminal_id      text,
    amount           double precision NOT NULL,
    currency         text NOT NULL,
    country          text,
    latitude         double precision,
    longitude        double precision,
    channel          text,
    device_id        text,
    ip               text,
    score            double precision NOT NULL,
    rule_score       double precision NOT NULL,
    model_score      double precision,
    action           text NOT NULL CHECK (action IN ('approve', 'review', 'decline')),
    is_flagged       boolean NOT NULL,
    rules_fired      text[] NOT NULL,
    reasons          text[] NOT NULL,
    is_late          boolean NOT NULL,
    ruleset_version  text NOT NULL,
    model_version    text,
    kafka_partition  integer,
    kafka_offset     bigint,
    ingested_at      timestamptz,
    decided_at       timestamptz NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE transactions IS
    'Every scored transaction with its decision and reasons; one row per transaction_id, '
    'written once (replayed batches add nothing). kafka_partition/kafka_offset say where it was read.';

CREATE INDEX transactions_decided_at_idx ON transactions (decided_at);
CREATE INDEX transactions_event_time_idx ON transactions (event_time);
CREATE INDEX transactions_card_ref_event_time_idx ON transactions (card_ref, event_time);
CREATE INDEX transactions_flagged_decided_at_idx ON transactions (decided_at) WHERE is_flagged;
CREATE INDEX transactions_action_decided_at_idx ON transactions (action, decided_at);

CREATE TABLE fraud_transactions (
    transaction_id  text PRIMARY KEY REFERENCES transactions (transaction_id),
    event_time      timestamptz NOT NULL,
    card_ref        text,
    card_last4      text,
    customer_id     text,
    merchant_id     text,
    amount          double precision NOT NULL,
    currency        text NOT NULL,
    country         text,
    score           double precision NOT NULL,
    action          text NOT NULL CHECK (action IN ('approve', 'review', 'decline')),
    rules_fired     text[] NOT NULL,
    reasons         text[] NOT NULL,
    decided_at      timestamptz NOT NULL
);

COMMENT ON TABLE fraud_transactions IS
    'The flagged transactions (review or decline), as first stored in transactions: '
    'the alert queue the dashboard and analysts read.';

CREATE INDEX fraud_transactions_decided_at_idx ON fraud_transactions (decided_at);

CREATE TABLE dead_letters (
    id               bigserial PRIMARY KEY,
    topic            text NOT NULL,
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL,
    raw              bytea NOT NULL,
    error            text NOT NULL,
    field            text NOT NULL,
    received_at      timestamptz NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset)
);

COMMENT ON TABLE dead_letters IS
    'Messages that could not be decoded or validated, byte for byte, with the field at fault; '
    'one row per source position.';

CREATE INDEX dead_letters_received_at_idx ON dead_letters (received_at);
