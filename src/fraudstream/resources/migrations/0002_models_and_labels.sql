-- 0002: trained models, analysts' labels, and the shadow model's score beside the live one.

ALTER TABLE transactions
    ADD COLUMN shadow_score          double precision,
    ADD COLUMN shadow_model_version  text;

COMMENT ON COLUMN transactions.shadow_score IS
    'Score of the shadow model (stored for comparison, never used for the action).';

CREATE TABLE models (
    version          text PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('isolation_forest', 'gradient_boosting')),
    artifact         bytea NOT NULL,
    sha256           text NOT NULL,
    metadata         jsonb NOT NULL,
    role             text CHECK (role IN ('live', 'shadow')),
    registered_at    timestamptz NOT NULL DEFAULT now(),
    activated_at     timestamptz
);

COMMENT ON TABLE models IS
    'Trained model artifacts (signed files, stored whole) and which one is live or in shadow; '
    'workers poll this table and swap models without a restart.';

CREATE UNIQUE INDEX models_one_per_role_idx ON models (role) WHERE role IS NOT NULL;

CREATE TABLE labels (
    transaction_id  text PRIMARY KEY,
    is_fraud        boolean NOT NULL,
    source          text NOT NULL,
    labelled_at     timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE labels IS
    'Confirmed outcomes (analyst review, chargeback, ...), joined to transactions for training.';

CREATE INDEX labels_labelled_at_idx ON labels (labelled_at);
