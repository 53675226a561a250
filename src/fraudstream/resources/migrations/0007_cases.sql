-- 0007: analysts' cases, their transactions and comments, and who gave each label.
--
-- A flagged transaction opens a case for its card, or joins the card's open case: the PostgreSQL
-- sink does it in the same database transaction as the decision (fraudstream.adapters.cases),
-- so a stored flag on a card always has its case. At most one case per card is open (a partial
-- unique index); a transaction is in at most one case. A case keeps its aggregates (count, max
-- score, highest action, amount, last event time), updated with every transaction attached, so
-- the queue is an index scan. Closing a case gives every transaction of it a verdict, written to
-- `labels` with who gave it and in which case; a later flag on the card opens a new case.

CREATE TABLE cases (
    id               bigserial PRIMARY KEY,
    card_ref         text NOT NULL,
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    assignee         text CHECK (length(assignee) BETWEEN 1 AND 128),
    transactions     integer NOT NULL DEFAULT 0 CHECK (transactions >= 0),
    max_score        double precision NOT NULL DEFAULT 0,
    highest_action   text NOT NULL DEFAULT 'review'
                     CHECK (highest_action IN ('approve', 'review', 'decline')),
    total_amount     double precision NOT NULL DEFAULT 0,
    last_event_time  timestamptz NOT NULL,
    opened_at        timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz,
    closed_by        text,
    resolution       text CHECK (resolution IN ('fraud', 'legitimate', 'mixed')),
    CHECK ((status = 'closed') = (closed_at IS NOT NULL)),
    CHECK ((status = 'closed') = (closed_by IS NOT NULL)),
    CHECK ((status = 'closed') = (resolution IS NOT NULL))
);

COMMENT ON TABLE cases IS
    'Analysts'' unit of review: the flagged transactions of one card, open until an analyst '
    'closes it with a verdict for each (resolution fraud, legitimate or mixed). At most one open '
    'case per card; transactions .. last_event_time aggregate its case_transactions.';

CREATE UNIQUE INDEX cases_one_open_per_card_idx ON cases (card_ref) WHERE status = 'open';
CREATE INDEX cases_status_score_idx ON cases (status, max_score DESC, id);
CREATE INDEX cases_status_opened_at_idx ON cases (status, opened_at DESC, id DESC);
CREATE INDEX cases_assignee_status_idx ON cases (assignee, status);
CREATE INDEX cases_card_ref_opened_at_idx ON cases (card_ref, opened_at);

CREATE TABLE case_transactions (
    case_id         bigint NOT NULL REFERENCES cases (id),
    transaction_id  text NOT NULL UNIQUE REFERENCES transactions (transaction_id),
    attached_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (case_id, transaction_id)
);

COMMENT ON TABLE case_transactions IS
    'The flagged transactions of each case; a transaction belongs to one case, attached by the '
    'sink when its decision is stored.';

CREATE TABLE case_comments (
    id          bigserial PRIMARY KEY,
    case_id     bigint NOT NULL REFERENCES cases (id),
    author      text NOT NULL,
    body        text NOT NULL CHECK (length(btrim(body)) > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE case_comments IS
    'Analysts'' notes on a case, oldest first; never edited (the audit log has who wrote each).';

CREATE INDEX case_comments_case_id_idx ON case_comments (case_id, created_at, id);

ALTER TABLE labels
    ADD COLUMN labelled_by  text,
    ADD COLUMN case_id      bigint REFERENCES cases (id);

COMMENT ON COLUMN labels.labelled_by IS
    'The analyst whose verdict this is (source case); null for labels loaded by other means.';
COMMENT ON COLUMN labels.case_id IS
    'The case whose closing gave this label; null for labels from other sources.';

CREATE INDEX labels_case_id_idx ON labels (case_id) WHERE case_id IS NOT NULL;
