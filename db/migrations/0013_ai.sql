-- The AI responder: per-operator settings, personalities, knowledge-base articles, per-session
-- defaults, a durable cursor per operator over the event log, and one decision per inbound
-- message it looked at.

-- Each operator's provider and knobs; a NULL column takes the gateway's WAGATE_AI_* default.
CREATE TABLE ai_settings (
    user_id                 bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    provider                text CHECK (provider IN ('kb', 'openai')),
    base_url                text,
    model                   text,
    api_key_sealed          text,
    timeout_seconds         real,
    kb_threshold            real,
    history_messages        integer,
    handoff_message         text,
    operator_pause_minutes  real,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ai_personalities (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                 bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                    text NOT NULL,
    instructions            text NOT NULL DEFAULT '',
    language                text CHECK (language IN ('en', 'es', 'pt')),
    tone                    text,
    max_reply_chars         integer,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ai_personalities_user_idx ON ai_personalities (user_id, id);

-- The text-search configuration of an article's (or a question's) language.
CREATE FUNCTION wagate_kb_config(language text) RETURNS regconfig
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE language
        WHEN 'en' THEN 'english'::regconfig
        WHEN 'es' THEN 'spanish'::regconfig
        WHEN 'pt' THEN 'portuguese'::regconfig
        ELSE 'simple'::regconfig
    END
$$;

-- Any of a question's words (stemmed in `cfg`), OR-ed: a customer's question carries more words
-- than the article it should find. NULL when the question has no searchable word.
CREATE FUNCTION wagate_kb_query(cfg regconfig, q text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery
    FROM unnest(tsvector_to_array(to_tsvector(cfg, coalesce(q, '')))) AS lexeme
$$;

-- An article's words: title and tags weigh more than the body. (Declared immutable:
-- array_to_string is only stable because of types whose output may change; text[] is not one.
-- Only built-in functions inside: pg_restore runs it with an empty search_path.)
CREATE FUNCTION wagate_kb_vector(language text, title text, tags text[], body text)
RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector(c.cfg, title), 'A')
        || setweight(to_tsvector(c.cfg, array_to_string(tags, ' ')), 'A')
        || setweight(to_tsvector(c.cfg, body), 'B')
    FROM (SELECT CASE language
                     WHEN 'en' THEN 'english'::regconfig
                     WHEN 'es' THEN 'spanish'::regconfig
                     WHEN 'pt' THEN 'portuguese'::regconfig
                     ELSE 'simple'::regconfig
                 END AS cfg) AS c
$$;

CREATE TABLE kb_articles (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                 bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title                   text NOT NULL,
    body                    text NOT NULL,
    tags                    text[] NOT NULL DEFAULT '{}',
    language                text NOT NULL DEFAULT 'en' CHECK (language IN ('en', 'es', 'pt')),
    search_vector           tsvector GENERATED ALWAYS AS (
        wagate_kb_vector(language, title, tags, body)
    ) STORED,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kb_articles_search_idx ON kb_articles USING gin (user_id, search_vector);
CREATE INDEX kb_articles_user_idx ON kb_articles (user_id, id);

-- Per WhatsApp account: whether new direct chats start with the AI on, and its personality.
CREATE TABLE ai_session_defaults (
    session_id              bigint PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    ai_default              boolean NOT NULL DEFAULT false,
    personality_id          bigint REFERENCES ai_personalities (id) ON DELETE SET NULL,
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- A new direct chat takes its account's default (groups, broadcasts and status never do).
CREATE FUNCTION wagate_ai_new_conversation() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    d ai_session_defaults%ROWTYPE;
BEGIN
    IF NEW.kind = 'direct' THEN
        SELECT * INTO d FROM ai_session_defaults WHERE session_id = NEW.session_id;
        IF FOUND AND d.ai_default AND NOT NEW.no_ac_ai THEN
            NEW.ai_active := true;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER conversations_ai_default BEFORE INSERT ON conversations
    FOR EACH ROW EXECUTE FUNCTION wagate_ai_new_conversation();

-- An operator's hand reply pauses the AI in that chat until then.
ALTER TABLE conversations ADD COLUMN ai_paused_until timestamptz;
CREATE INDEX conversations_ai_active_idx ON conversations (session_id) WHERE ai_active;

-- How far the responder got in each operator's event log. Operators that exist now start at
-- their latest event (nothing of the past is answered); later ones from their first.
CREATE TABLE ai_cursors (
    user_id                 bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    last_seq                bigint NOT NULL DEFAULT 0,
    updated_at              timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ai_cursors (user_id, last_seq) SELECT user_id, last_seq FROM event_counters;

-- What the responder decided about an inbound message of a chat with the AI on: answered,
-- handoff, loop, rate_limited, ... Its primary key is the "never answer twice" guard.
CREATE TABLE ai_replies (
    inbound_message_id      bigint PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    conversation_id         bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    outcome                 text NOT NULL,
    provider                text,
    score                   real,
    detail                  text,
    created_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ai_replies_conversation_idx ON ai_replies (conversation_id, created_at DESC);
