"""Where the AI responder's answers come from.

`KbProvider` answers with the best knowledge-base article when its score clears the
threshold (offline, no model). `OpenAiProvider` asks any OpenAI-compatible chat-completions
endpoint, with the top articles, the chat's last messages and the personality's instructions in
the prompt; it raises `ProviderError` (kind: timeout, http_4xx, http_5xx, rate_limited, network,
bad_response) for the responder to fall back on.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from db import kb
from db.ai import Personality
from db.kb import Hit
from gateway.ai.text import LANGUAGES
from gateway.targets import url_refusal

# What a model writes to hand the chat over to a person.
HANDOFF_TOKEN = "[HANDOFF]"
LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "pt": "Portuguese"}


@dataclass(frozen=True)
class Question:
    """One inbound message to answer, with what surrounds it."""

    user_id: int
    text: str
    language: str
    personality: Personality | None
    history: list[dict[str, Any]] = field(default_factory=list)  # oldest first


@dataclass(frozen=True)
class Answer:
    text: str | None  # None: hand over to a person
    provider: str
    score: float | None = None
    reason: str | None = None  # why it hands over


@dataclass(frozen=True)
class ModelConfig:
    base_url: str
    model: str
    api_key: str | None
    timeout: float
    articles: int
    # An operator's own base_url goes through the guarded client (public addresses only unless
    # WAGATE_AI_ALLOW_PRIVATE); the administrator's WAGATE_AI_BASE_URL (an Ollama on loopback,
    # say) through the plain one.
    trusted: bool = True


class ProviderError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def search_languages(language: str) -> list[str]:
    return [language, *(lang for lang in LANGUAGES if lang != language)]


class KbProvider:
    name = "kb"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def hits(self, question: Question, limit: int = 5) -> list[Hit]:
        return await kb.search(
            self._pool, question.user_id, question.text, search_languages(question.language), limit
        )

    async def answer(self, question: Question, threshold: float) -> Answer:
        hits = await self.hits(question, 1)
        if not hits:
            return Answer(None, self.name, 0.0, "no article matches")
        best = hits[0]
        if best.score < threshold:
            return Answer(
                None,
                self.name,
                best.score,
                f"low confidence ({best.score:.2f} < {threshold:.2f}, article {best.article.id})",
            )
        return Answer(best.article.body, self.name, best.score)


def system_prompt(question: Question, hits: list[Hit]) -> str:
    p = question.personality
    language = (p.language if p and p.language else None) or question.language
    lines = []
    if p is not None:
        lines.append(f"You are {p.name}, answering customers on WhatsApp for this business.")
        if p.instructions.strip():
            lines.append(p.instructions.strip())
        if p.tone:
            lines.append(f"Tone: {p.tone}.")
        if p.max_reply_chars:
            lines.append(f"Keep each answer under {p.max_reply_chars} characters.")
    else:
        lines.append("You answer customers of this business on WhatsApp.")
    named = LANGUAGE_NAMES.get(language, "the customer's language")
    lines.append(f"Answer in {named}.")
    lines.append(
        "Answer only from the knowledge-base articles below and the conversation. If they do "
        f"not contain the answer, or the customer wants a person, reply exactly {HANDOFF_TOKEN}."
    )
    lines.append("Use WhatsApp formatting (*bold*, _italic_); no Markdown headings or tables.")
    if hits:
        lines.append("")
        lines.append("Knowledge base:")
        for hit in hits:
            a = hit.article
            lines.append(f"### {a.title}\n{a.body}")
    return "\n".join(lines)


def chat_messages(question: Question, hits: list[Hit]) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system_prompt(question, hits)}]
    for m in question.history:
        role = "user" if m["direction"] == "inbound" else "assistant"
        out.append({"role": role, "content": str(m["text_content"])})
    out.append({"role": "user", "content": question.text})
    return out


class OpenAiProvider:
    name = "openai"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        kb_provider: KbProvider,
        *,
        guarded_http: aiohttp.ClientSession | None = None,
        allow_private: bool = False,
    ) -> None:
        self._http = http
        self._guarded = guarded_http or http
        self._allow_private = allow_private
        self._kb = kb_provider

    async def answer(self, question: Question, config: ModelConfig) -> Answer:
        hits = await self._kb.hits(question, config.articles) if config.articles else []
        body = {
            "model": config.model,
            "messages": chat_messages(question, hits),
            "temperature": 0.2,
        }
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        url = config.base_url.rstrip("/") + "/chat/completions"
        http = self._http
        if not config.trusted:
            http = self._guarded
            # Checked again at every call: the setting may have changed since the URL was saved.
            refusal = url_refusal(
                url, allow_private=self._allow_private, setting="WAGATE_AI_ALLOW_PRIVATE"
            )
            if refusal is not None:
                raise ProviderError("refused", refusal)
        try:
            async with asyncio.timeout(config.timeout):
                async with http.post(
                    url, data=json.dumps(body), headers=headers, allow_redirects=False
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
        except TimeoutError as exc:
            raise ProviderError("timeout", f"no answer within {config.timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise ProviderError("network", f"{type(exc).__name__}: {exc}"[:300]) from exc
        except OSError as exc:
            raise ProviderError("network", f"{type(exc).__name__}: {exc}"[:300]) from exc
        if status == 429:
            raise ProviderError("rate_limited", "the endpoint answered 429")
        if status >= 500:
            raise ProviderError("http_5xx", f"the endpoint answered {status}")
        if 300 <= status < 400:
            raise ProviderError("redirect", f"the endpoint answered {status} (not followed)")
        if status >= 400:
            raise ProviderError("http_4xx", f"the endpoint answered {status}: {raw[:200]!r}")
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProviderError("bad_response", "not a chat-completions answer") from exc
        if not isinstance(content, str):
            raise ProviderError("bad_response", "the answer has no text")
        # The retrieval score is kept with the decision: low confidence is the model's call here
        # (the prompt tells it to hand over when the articles do not hold the answer).
        best = max((h.score for h in hits), default=None)
        if HANDOFF_TOKEN in content or not content.strip():
            return Answer(None, self.name, best, "the model asked for a person")
        return Answer(content, self.name, best)
