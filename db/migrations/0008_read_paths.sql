-- Read paths that stay fast on a large store and under PostgreSQL's generic plans.
--
-- The inbox walks one session's conversations most recent first (an index per session: the
-- list query is a LATERAL per session, so a generic plan still reads only a page per session).
-- Conversations without a message sort last, at the same constant the cursor uses.
CREATE INDEX conversations_session_inbox_idx ON conversations
    (session_id, (coalesce(last_message_at, '0001-01-01 00:00:00+00'::timestamptz)) DESC, id DESC);
DROP INDEX conversations_inbox_order_idx;
DROP INDEX conversations_session_recent_idx;

-- Phone-number prefix search in the inbox (`q=5215…`).
CREATE INDEX conversations_phone_prefix_idx ON conversations (wa_user_id text_pattern_ops);

-- Message search: the search vector is stored (computed once at insert, not again at every
-- recheck and rank), indexed together with the session and the conversation (btree_gin) so one
-- index answers "this session's messages with these words" and "does this chat mention them".
-- A frequent word is answered instead by walking the session's messages newest first.
CREATE EXTENSION IF NOT EXISTS btree_gin;
ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    CASE WHEN text_content IS NULL THEN NULL ELSE wagate_search_vector(text_content) END
) STORED;
CREATE INDEX messages_search_vector_idx ON messages
    USING gin (session_id, conversation_id, search_vector);
CREATE INDEX messages_session_time_idx ON messages (session_id, sent_at DESC, id DESC);
DROP INDEX messages_search_idx;
