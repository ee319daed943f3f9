-- The inbox walks conversations most recent first; this index gives that order directly, so a
-- page reads about its own rows instead of sorting every conversation of the owner.
CREATE INDEX conversations_inbox_order_idx ON conversations
    ((coalesce(last_message_at, '0001-01-01 00:00:00+00'::timestamptz)) DESC, id DESC);
