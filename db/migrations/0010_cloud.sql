-- WhatsApp Cloud API numbers: a session with channel 'cloud' and its Meta credentials.
--
-- Secrets (access token, app secret, verify token) are sealed with a key derived from the
-- gateway's secret key; the database alone reveals none of them.
CREATE TABLE cloud_numbers (
    session_id              bigint PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    phone_number_id         text NOT NULL UNIQUE,
    waba_id                 text,
    display_phone_number    text,
    access_token_sealed     text NOT NULL,
    app_secret_sealed       text NOT NULL,
    verify_token_sealed     text,
    coexistence             boolean NOT NULL DEFAULT false,
    messages_per_second     integer,
    bootstrapped            boolean NOT NULL DEFAULT false,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- Every webhook POST whose signature checked out, committed before Meta gets its 200; the
-- processor stores what it says and marks it done in the same transaction, so a crash after
-- the 200 loses nothing and processes nothing twice. `event_at` (the oldest timestamp the
-- payload carries) orders processing; `session_id` is NULL for a number we do not know.
CREATE TABLE cloud_webhook_events (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at             timestamptz NOT NULL DEFAULT now(),
    event_at                timestamptz NOT NULL,
    phone_number_id         text,
    session_id              bigint REFERENCES sessions (id) ON DELETE SET NULL,
    body                    text NOT NULL,
    state                   text NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'done', 'failed', 'unknown_number')),
    error                   text,
    processed_at            timestamptz
);
CREATE INDEX cloud_webhook_events_pending_idx ON cloud_webhook_events (event_at, id)
    WHERE state = 'pending';

-- Statuses Meta reported, once each per (message, status): the dedupe key of redeliveries, and
-- what a message sent by us takes when its status arrives before the send's answer.
CREATE TABLE cloud_statuses (
    session_id              bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    wa_message_id           text NOT NULL,
    status                  text NOT NULL,
    at                      timestamptz NOT NULL,
    error_code              integer,
    error                   text,
    PRIMARY KEY (session_id, wa_message_id, status)
);

-- Message templates of a number's WhatsApp Business Account, as Meta last told us.
CREATE TABLE cloud_templates (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id              bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    template_id             text,
    name                    text NOT NULL,
    language                text NOT NULL,
    category                text,
    status                  text NOT NULL DEFAULT 'PENDING',
    components              jsonb NOT NULL DEFAULT '[]',
    rejected_reason         text,
    synced_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, name, language)
);

-- Why a message failed, as a number (Graph error codes such as 131047), beside `error`.
ALTER TABLE messages ADD COLUMN error_code integer;
