-- Full-text search over message text, stemmed for English, Spanish and Portuguese at once (a
-- query matches in whichever of the three it makes sense), and over names.
CREATE FUNCTION wagate_search_vector(body text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_tsvector('english'::regconfig, coalesce(body, ''))
        || to_tsvector('spanish'::regconfig, coalesce(body, ''))
        || to_tsvector('portuguese'::regconfig, coalesce(body, ''))
$$;

CREATE FUNCTION wagate_search_query(q text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT websearch_to_tsquery('english'::regconfig, q)
        || websearch_to_tsquery('spanish'::regconfig, q)
        || websearch_to_tsquery('portuguese'::regconfig, q)
$$;

CREATE INDEX messages_search_idx ON messages USING gin (wagate_search_vector(text_content))
    WHERE text_content IS NOT NULL;
CREATE INDEX conversations_name_search_idx
    ON conversations USING gin (to_tsvector('simple'::regconfig, coalesce(contact_name, '')));
CREATE INDEX contacts_session_idx ON contacts (session_id, id);
