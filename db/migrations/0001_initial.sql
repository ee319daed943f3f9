-- wagate initial schema. Released: never edit; add a new numbered file instead.

CREATE TABLE users (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email           text NOT NULL,
    password_hash   text NOT NULL,
    role            text NOT NULL DEFAULT 'operator' CHECK (role IN ('admin', 'operator')),
    display_name    text,
    disabled        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_login_at   timestamptz
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- A linked WhatsApp account: a WhatsApp Web device (channel 'web') or a Cloud API number ('cloud').
CREATE TABLE sessions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel         text NOT NULL DEFAULT 'web' CHECK (channel IN ('web', 'cloud')),
    name            text NOT NULL,
    phone           text,
    jid             text,
    lid             text,
    push_name       text,
    state           text NOT NULL DEFAULT 'stopped',
    desired_state   text NOT NULL DEFAULT 'stopped' CHECK (desired_state IN ('running', 'stopped')),
    last_error      text,
    banned_until    timestamptz,
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    connected_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_owner_idx ON sessions (owner_id);

-- People an account knows. A person may be addressed by phone JID and by LID; both are kept.
CREATE TABLE contacts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id      bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    jid             text NOT NULL,
    lid             text,
    phone           text,
    push_name       text,
    saved_name      text,
    business_name   text,
    photo_url       text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, jid)
);
CREATE UNIQUE INDEX contacts_session_lid_key ON contacts (session_id, lid) WHERE lid IS NOT NULL;

-- A chat. Columns of the former system's `conversations_new` keep their names
-- (external_id, contact_name, contact_photo_url, started_at, wa_user_id, ai_active,
-- personality_id, no_ac_ai, unread_count).
CREATE TABLE conversations (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id          bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    contact_id          bigint REFERENCES contacts (id) ON DELETE SET NULL,
    external_id         text NOT NULL,
    lid                 text,
    kind                text NOT NULL DEFAULT 'direct'
                        CHECK (kind IN ('direct', 'group', 'broadcast', 'status')),
    contact_name        text,
    contact_photo_url   text,
    wa_user_id          text,
    started_at          timestamptz NOT NULL DEFAULT now(),
    last_message_at     timestamptz,
    unread_count        integer NOT NULL DEFAULT 0 CHECK (unread_count >= 0),
    archived            boolean NOT NULL DEFAULT false,
    labels              text[] NOT NULL DEFAULT '{}',
    ai_active           boolean NOT NULL DEFAULT false,
    personality_id      bigint,
    no_ac_ai            boolean NOT NULL DEFAULT false,
    jira_bridge         boolean NOT NULL DEFAULT false,
    needs_human         boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, external_id)
);
CREATE INDEX conversations_session_recent_idx
    ON conversations (session_id, last_message_at DESC NULLS LAST, id DESC);
CREATE UNIQUE INDEX conversations_session_lid_key
    ON conversations (session_id, lid) WHERE lid IS NOT NULL;

CREATE TABLE messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id          bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    conversation_id     bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    wa_message_id       text,
    direction           text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    sender_type         text NOT NULL
                        CHECK (sender_type IN ('user', 'agent', 'ai', 'system', 'owner')),
    sender_jid          text,
    sender_name         text,
    message_type        text NOT NULL DEFAULT 'text',
    text_content        text,
    media_sha256        text,
    media_mime          text,
    media_size          bigint,
    media_filename      text,
    media_status        text CHECK (media_status IN
                        ('pending', 'stored', 'too_large', 'failed', 'expired')),
    quoted_wa_message_id text,
    interactions        jsonb NOT NULL DEFAULT '{}',
    raw                 jsonb,
    status              text NOT NULL DEFAULT 'received'
                        CHECK (status IN ('pending', 'sent', 'delivered', 'read', 'played',
                                          'failed', 'received')),
    error               text,
    from_history        boolean NOT NULL DEFAULT false,
    edited_at           timestamptz,
    revoked_at          timestamptz,
    sent_at             timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- The idempotency key of every delivery path: a redelivery or a replay inserts nothing.
CREATE UNIQUE INDEX messages_session_wa_id_key
    ON messages (session_id, wa_message_id) WHERE wa_message_id IS NOT NULL;
CREATE INDEX messages_conversation_time_idx ON messages (conversation_id, sent_at DESC, id DESC);

-- Work that leaves the process (sending, Jira, AI, webhooks): written in the same transaction
-- as its cause, taken by one worker at a time, retried with backoff, done exactly once.
CREATE TABLE outbox (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind                text NOT NULL,
    session_id          bigint REFERENCES sessions (id) ON DELETE CASCADE,
    payload             jsonb NOT NULL,
    dedupe_key          text UNIQUE,
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    locked_until        timestamptz,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    done_at             timestamptz
);
CREATE INDEX outbox_due_idx ON outbox (kind, next_attempt_at) WHERE state IN ('pending', 'running');

-- The durable per-user event log. `seq` counts per user without gaps: it is taken from
-- event_counters under that user's row lock, so events commit in seq order and a client that
-- catches up with `after=seq` can never skip one that commits late.
CREATE TABLE event_counters (
    user_id             bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    last_seq            bigint NOT NULL DEFAULT 0
);

CREATE TABLE event_log (
    user_id             bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seq                 bigint NOT NULL,
    event               text NOT NULL,
    session_id          bigint,
    payload             jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, seq)
);
