-- Reactions, edits and revokes that arrived before the message they point at (a history
-- chunk or a redelivery out of order): kept here and applied when the target lands.
CREATE TABLE pending_interactions (
    session_id      bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    wa_message_id   text NOT NULL,
    target_wa_id    text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, wa_message_id)
);
CREATE INDEX pending_interactions_target_idx ON pending_interactions (session_id, target_wa_id);
