-- The Jira bridge: per operator a connection, per bridged chat a ticket, per bridged message a
-- comment, and the webhook deliveries Jira sent us (the dedupe keys of its retries).

-- One Jira site per operator. Secrets (API token or personal access token, webhook secret) are
-- sealed with a key derived from the gateway's secret key. `last_seq` is the bridge's cursor
-- over the operator's event log: what comes after it has not been looked at yet.
CREATE TABLE jira_connections (
    user_id                 bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    base_url                text NOT NULL,
    auth_kind               text NOT NULL CHECK (auth_kind IN ('cloud', 'pat')),
    email                   text,
    token_sealed            text NOT NULL,
    project_key             text NOT NULL,
    issue_type              text NOT NULL DEFAULT 'Task',
    webhook_secret_sealed   text,
    webhook_token_hash      text NOT NULL UNIQUE,
    webhook_token_sealed    text NOT NULL,
    enabled                 boolean NOT NULL DEFAULT true,
    -- WhatsApp Web or Cloud API sessions whose new 1:1 chats are bridged without a switch.
    auto_bridge_sessions    bigint[] NOT NULL DEFAULT '{}',
    auto_bridge_since       timestamptz NOT NULL DEFAULT now(),
    -- A message to a resolved or closed ticket: reopen it (true) or open a new one (false).
    reopen_resolved         boolean NOT NULL DEFAULT false,
    status_notices          boolean NOT NULL DEFAULT true,
    -- A custom notice ({key} and {status} are replaced); NULL: the built-in one per language.
    status_notice_text      text,
    language                text NOT NULL DEFAULT 'en' CHECK (language IN ('en', 'es', 'pt')),
    -- 'active', or 'rejected' after a 401/403 (nothing is sent until the operator fixes it).
    state                   text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'rejected')),
    last_error              text,
    failing_since           timestamptz,
    account_id              text,
    account_name            text,
    server_title            text,
    last_seq                bigint NOT NULL DEFAULT 0,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- A chat's ticket (the former `whatsapp_ticket_mapping`): session + phone -> issue key.
-- 'pending' while the issue is being created (`marker`, a label on the issue, finds it again
-- after a crash or a timeout); 'open' while it takes the chat's messages; 'closed' after
-- /new, /cancel or a resolution.
CREATE TABLE jira_tickets (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id             bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id          bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    conversation_id     bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    phone               text,
    project_key         text NOT NULL,
    issue_key           text,
    issue_id            text,
    marker              text NOT NULL UNIQUE,
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'open', 'closed')),
    status              text,
    status_category     text,
    language            text,
    create_attempts     integer NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    closed_at           timestamptz
);
CREATE UNIQUE INDEX jira_tickets_one_open ON jira_tickets (conversation_id)
    WHERE state IN ('pending', 'open');
CREATE INDEX jira_tickets_issue_idx ON jira_tickets (user_id, issue_key);
CREATE INDEX jira_tickets_session_phone_idx ON jira_tickets (session_id, phone);

-- Which message became which comment (and which Jira comment became which WhatsApp message):
-- the idempotency record of both directions and how our own comments are told from people's.
CREATE TABLE jira_comments (
    ticket_id           bigint NOT NULL REFERENCES jira_tickets (id) ON DELETE CASCADE,
    message_id          bigint NOT NULL,
    comment_id          text,
    origin              text NOT NULL CHECK (origin IN ('whatsapp', 'jira')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, origin)
);
CREATE INDEX jira_comments_comment_idx ON jira_comments (ticket_id, comment_id);

-- Conversations the "bridge every new 1:1 chat" rule has switched on once (switching a chat
-- off again sticks).
CREATE TABLE jira_auto_bridged (
    conversation_id     bigint PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- Webhook deliveries taken (X-Atlassian-Webhook-Identifier): a retry of one is answered 200
-- and does nothing.
CREATE TABLE jira_webhook_deliveries (
    user_id             bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    identifier          text NOT NULL,
    event               text,
    received_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, identifier)
);

-- Jira jobs run in order per chat: a job is due only when no older job of its lane is waiting.
CREATE INDEX outbox_jira_lane_idx ON outbox ((payload->>'lane'), id)
    WHERE kind LIKE 'jira\_%' AND state IN ('pending', 'running');
