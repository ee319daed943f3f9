-- Messages sent from wagate: who sent them, and the client's idempotency key (the same key
-- never sends twice).
ALTER TABLE messages ADD COLUMN idempotency_key text;
ALTER TABLE messages ADD COLUMN sent_by bigint REFERENCES users (id) ON DELETE SET NULL;
CREATE UNIQUE INDEX messages_idempotency_key
    ON messages (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
