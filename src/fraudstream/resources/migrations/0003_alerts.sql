-- 0003: the alert outbox and its delivery log.
--
-- The PostgreSQL sink inserts one `alerts` row per flagged transaction and matching route, in
-- the same database transaction as the decision, so an alert exists if and only if its decision
-- is stored. The dispatcher (fraudstream.runners.alerts) delivers them and logs every try in
-- `alert_attempts`.

CREATE TABLE alerts (
    id               bigserial PRIMARY KEY,
    transaction_id   text NOT NULL REFERENCES transactions (transaction_id),
    route            text NOT NULL,
    channel          text NOT NULL,
    card_ref         text,
    action           text NOT NULL CHECK (action IN ('review', 'decline')),
    severity         text NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    score            double precision NOT NULL,
    event_time       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'suppressed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    delivery_id      text,
    duplicate_of     bigint REFERENCES alerts (id),
    last_error       text,
    UNIQUE (transaction_id, route)
);

COMMENT ON TABLE alerts IS
    'Outbox: one row per flagged transaction and alert route, written with the decision. '
    'pending -> delivered (delivery_id names the message that carried it: one alert or a digest) '
    'or suppressed (duplicate_of: the alert for the same card and route inside the dedup window).';

CREATE INDEX alerts_due_idx ON alerts (channel, next_attempt_at) WHERE status = 'pending';
CREATE INDEX alerts_route_card_idx ON alerts (route, card_ref, event_time)
    WHERE status <> 'suppressed';
CREATE INDEX alerts_created_at_idx ON alerts (created_at);

CREATE TABLE alert_attempts (
    id           bigserial PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alerts (id),
    channel      text NOT NULL,
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('delivered', 'failed')),
    delivery_id  text,
    error        text
);

COMMENT ON TABLE alert_attempts IS
    'Every try to deliver an alert, with its outcome; a digest try has one row per alert in it.';

CREATE INDEX alert_attempts_alert_id_idx ON alert_attempts (alert_id);
CREATE INDEX alert_attempts_started_at_idx ON alert_attempts (started_at);
