-- Each operator's knowledge-base vocabulary per language: the stemmed words their articles use
-- and in how many articles. A question's words that no article has cannot help any article's
-- score, but searched for they make the strictest level ("every word") fail and the middle
-- one ("at least half") a long OR of word groups: "How can I get help with my order?" cost
-- 30-70 ms with 10,000 articles. Looked up first, only the known words are searched (an article's
-- score still counts every word of the question). Kept by a trigger on kb_articles; words are
-- taken in sorted order, so concurrent writers lock them in the same order.
CREATE TABLE kb_lexemes (
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    language    text NOT NULL,
    lexeme      text NOT NULL,
    articles    integer NOT NULL CHECK (articles > 0),
    PRIMARY KEY (user_id, language, lexeme)
);

CREATE FUNCTION wagate_kb_lexemes_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM kb_lexemes k
        WHERE k.user_id = OLD.user_id AND k.language = OLD.language
          AND k.lexeme = ANY (tsvector_to_array(OLD.search_vector)) AND k.articles = 1;
        UPDATE kb_lexemes k SET articles = k.articles - 1
        WHERE k.user_id = OLD.user_id AND k.language = OLD.language
          AND k.lexeme = ANY (tsvector_to_array(OLD.search_vector));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO kb_lexemes (user_id, language, lexeme, articles)
        SELECT NEW.user_id, NEW.language, w, 1
        FROM unnest(tsvector_to_array(NEW.search_vector)) AS w
        ORDER BY w
        ON CONFLICT (user_id, language, lexeme)
            DO UPDATE SET articles = kb_lexemes.articles + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER kb_articles_lexemes
    AFTER INSERT OR DELETE OR UPDATE OF title, body, tags, language, user_id ON kb_articles
    FOR EACH ROW EXECUTE FUNCTION wagate_kb_lexemes_sync();

INSERT INTO kb_lexemes (user_id, language, lexeme, articles)
SELECT a.user_id, a.language, w, count(*)
FROM kb_articles AS a, unnest(tsvector_to_array(a.search_vector)) AS w
GROUP BY a.user_id, a.language, w;
