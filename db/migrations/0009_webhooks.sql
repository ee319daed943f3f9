-- Outgoing webhooks: each one is a durable cursor over its owner's event log.
--
-- `last_seq` is the last event of the owner's log that this webhook is done with (delivered,
-- or skipped by its filter); the dispatcher sends what comes after it, in order, and moves it
-- only after a 2xx. `generation` changes whenever the operator changes the webhook (URL,
-- filter, replay, re-enable): a dispatcher's cursor write for an older generation is ignored.
CREATE TABLE webhooks (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id             bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url                 text NOT NULL,
    events              text[] NOT NULL DEFAULT '{*}',
    session_id          bigint,
    description         text,
    secret_encrypted    text NOT NULL,
    enabled             boolean NOT NULL DEFAULT true,
    state               text NOT NULL DEFAULT 'active'
                        CHECK (state IN ('active', 'failing', 'disabled')),
    last_seq            bigint NOT NULL DEFAULT 0,
    generation          integer NOT NULL DEFAULT 1,
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz,
    failing_since       timestamptz,
    last_error          text,
    last_status         integer,
    last_delivered_at   timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_user_idx ON webhooks (user_id);

-- Recent delivery attempts, a bounded history per webhook (the dispatcher prunes it).
CREATE TABLE webhook_deliveries (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id          bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    delivery_id         text NOT NULL,
    seq                 bigint,
    event               text NOT NULL,
    attempt             integer NOT NULL,
    status_code         integer,
    latency_ms          integer,
    delivered           boolean NOT NULL,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_recent_idx ON webhook_deliveries (webhook_id, id DESC);
