"""The `kb_articles` table: an operator's knowledge base, searched with PostgreSQL full text.

Each article's words are stemmed in its own language (`wagate_kb_config`: english, spanish,
portuguese). A question is matched against articles of its language first; an article's score
is the share of the question's searchable words it contains (title, tags and body), 0..1, and
ties are broken by `ts_rank_cd`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from db import Executor

LANGUAGES = ("en", "es", "pt")
COLUMNS = "id, user_id, title, body, tags, language, created_at, updated_at"


@dataclass(frozen=True)
class Article:
    id: int
    user_id: int
    title: str
    body: str
    tags: list[str]
    language: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Article:
        values = {k: row[k] for k in COLUMNS.split(", ")}
        values["tags"] = list(values["tags"] or [])
        return cls(**values)


@dataclass(frozen=True)
class Hit:
    article: Article
    score: float  # share of the question's words the article has, 0..1
    rank: float  # ts_rank_cd
    same_language: bool


_CREATE = f"""
INSERT INTO kb_articles (user_id, title, body, tags, language) VALUES ($1, $2, $3, $4, $5)
RETURNING {COLUMNS}
"""
_CREATE_MANY = """
INSERT INTO kb_articles (user_id, title, body, tags, language)
SELECT $1, t, b, string_to_array(g, E'\\x1f'), l
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS u(t, b, g, l)
"""
_GET = f"SELECT {COLUMNS} FROM kb_articles WHERE id = $1"
_LIST = f"""
SELECT {COLUMNS} FROM kb_articles
WHERE ($1::bigint IS NULL OR user_id = $1)
  AND ($2::text IS NULL OR language = $2)
  AND ($3::text IS NULL OR search_vector @@ wagate_kb_query(wagate_kb_config(language), $3))
  AND ($4::bigint IS NULL OR id > $4)
ORDER BY id
LIMIT $5
"""
_UPDATE = f"""
UPDATE kb_articles SET title = $2, body = $3, tags = $4, language = $5, updated_at = now()
WHERE id = $1
RETURNING {COLUMNS}
"""
_DELETE = "DELETE FROM kb_articles WHERE id = $1"
_COUNT = "SELECT count(*) FROM kb_articles WHERE user_id = $1"

# The question's searchable words, stemmed in the language tried, and those of them that some
# article of that language has (none: nothing in that language can answer; one indexed lookup).
_WORDS = """
SELECT q.words,
       ARRAY(SELECT k.lexeme FROM kb_lexemes AS k
             WHERE k.user_id = $1 AND k.language = $2 AND k.lexeme = ANY (q.words)
             ORDER BY k.lexeme) AS known
FROM (SELECT tsvector_to_array(to_tsvector(wagate_kb_config($2), $3)) AS words) AS q
"""
# Candidates matching `$3` (at most $5 of them: ranking every match is what costs), then the
# best by coverage of the question's words ($4), then by `ts_rank_cd`.
_RANKED = f"""
WITH cand AS (
    SELECT {COLUMNS}, search_vector FROM kb_articles
    WHERE user_id = $1 AND language = $2 AND search_vector @@ $3::tsquery
      AND NOT (id = ANY($7::bigint[]))
    LIMIT $5
)
SELECT {COLUMNS},
       ts_rank_cd(search_vector, $3::tsquery) AS rank,
       (SELECT count(*) FROM unnest($4::text[]) w
        WHERE search_vector @@ quote_literal(w)::tsquery)::float8
           / greatest(cardinality($4::text[]), 1) AS score
FROM cand
ORDER BY score DESC, rank DESC, id
LIMIT $6
"""
# Candidates ranked per level at most (a knowledge base where every article has every word of
# the question would otherwise rank them all: 3,300 of 10,000 took 110 ms).
CANDIDATES = 100
# Word subsets tried at the middle level at most (more: straight to "any word").
MAX_SUBSETS = 64


def _term(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def levels(words: list[str]) -> list[str]:
    """tsqueries, most demanding first: every word; at least half of them; any word. A level's
    matches come before a looser level's, so coverage decides before the cap does."""
    terms = [_term(w) for w in sorted(set(words))]
    if not terms:
        return []
    found = [" & ".join(terms)]
    half = (len(terms) + 1) // 2
    if 1 < half < len(terms) and math.comb(len(terms), half) <= MAX_SUBSETS:
        found.append(
            " | ".join(
                "(" + " & ".join(group) + ")" for group in itertools.combinations(terms, half)
            )
        )
    if len(terms) > 1:
        found.append(" | ".join(terms))
    return found


async def create(
    conn: Executor, *, user_id: int, title: str, body: str, tags: list[str], language: str
) -> Article:
    row = await conn.fetchrow(_CREATE, user_id, title, body, tags, language)
    assert row is not None
    return Article.from_row(row)


async def create_many(
    conn: Executor, user_id: int, items: list[tuple[str, str, list[str], str]]
) -> None:
    """Bulk insert (title, body, tags, language) rows (benchmarks, imports)."""
    await conn.execute(
        _CREATE_MANY,
        user_id,
        [i[0] for i in items],
        [i[1] for i in items],
        ["\x1f".join(i[2]) for i in items],
        [i[3] for i in items],
    )


async def get(conn: Executor, article_id: int) -> Article | None:
    row = await conn.fetchrow(_GET, article_id)
    return Article.from_row(row) if row else None


async def list_for(
    conn: Executor,
    user_id: int | None,
    *,
    language: str | None = None,
    q: str | None = None,
    after: int | None = None,
    limit: int = 50,
) -> list[Article]:
    rows = await conn.fetch(_LIST, user_id, language, q, after, limit)
    return [Article.from_row(r) for r in rows]


async def update(conn: Executor, article: Article) -> Article | None:
    row = await conn.fetchrow(
        _UPDATE, article.id, article.title, article.body, article.tags, article.language
    )
    return Article.from_row(row) if row else None


async def delete(conn: Executor, article_id: int) -> None:
    await conn.execute(_DELETE, article_id)


async def count(conn: Executor, user_id: int) -> int:
    return int(await conn.fetchval(_COUNT, user_id))


async def search(
    conn: Executor, user_id: int, question: str, languages: list[str], limit: int = 5
) -> list[Hit]:
    """The best articles for a question: in its own language (the first of `languages`) when
    any article there has one of its words; else in whichever other language covers the
    question best (its language may have been guessed wrong). In a language, the levels of
    `levels` are tried until one has candidates; best first (the share of the question's words
    an article has, then `ts_rank_cd`)."""
    best: list[Hit] = []
    for position, language in enumerate(languages):
        found = await conn.fetchrow(_WORDS, user_id, language, question)
        if found is None or not found["known"]:
            continue
        words = list(found["words"] or [])
        hits = await _search_in(conn, user_id, language, words, list(found["known"]), limit)
        if position == 0 and hits:
            return [Hit(h.article, h.score, h.rank, True) for h in hits]
        if hits and (not best or hits[0].score > best[0].score):
            best = hits
    return best


async def _search_in(
    conn: Executor, user_id: int, language: str, words: list[str], known: list[str], limit: int
) -> list[Hit]:
    """The levels are built from the `known` words (those some article has); the score is the
    share of all the question's `words` an article has."""
    hits: list[Hit] = []
    for query in levels(known):
        rows = await conn.fetch(
            _RANKED,
            user_id,
            language,
            query,
            words,
            CANDIDATES,
            limit - len(hits),
            [h.article.id for h in hits],
        )
        hits += [Hit(Article.from_row(r), float(r["score"]), float(r["rank"]), False) for r in rows]
        if len(hits) >= limit:
            break
    return hits
