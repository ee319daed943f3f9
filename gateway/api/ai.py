"""The AI responder's resources: an operator's AI settings, personalities, knowledge-base
articles, each account's defaults, and a chat's AI state (resume after a handoff).

Everything is the caller's own (another operator's id is a 404; admins see all). The API key is
kept sealed and never shown: answers say only whether one is set.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, Field

from db import ai as ai_db
from db import kb as kb_db
from db import sessions as sessions_db
from db.ai import AiSettingsRow, Personality
from db.kb import Article
from db.users import User
from gateway.ai.config import effective
from gateway.ai.providers import search_languages
from gateway.ai.text import detect_language
from gateway.auth import current_user
from gateway.errors import ApiError, NotFound
from gateway.keys import POOL, SESSIONS, SETTINGS
from gateway.messaging import owned_conversation
from gateway.routing import ApiRouter, path_int
from gateway.security import SecretBox
from gateway.targets import UrlRefused, check_url

router = ApiRouter("ai")
log = structlog.get_logger(__name__)

Language = Literal["en", "es", "pt"]


def _box(request: web.Request) -> SecretBox:
    return SecretBox(request.app[SETTINGS].resolved_secret_key())


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        400,
        f"{field}: {message}",
        code="validation_error",
        details=[{"loc": [field], "msg": message, "type": "value_error"}],
    )


# -- settings ----------------------------------------------------------------------------------


class AiSettingsOut(BaseModel):
    provider: str = Field(description="kb (knowledge base only) or openai (a model)")
    base_url: str
    model: str
    api_key_set: bool = Field(description="Whether an API key is set (it is never shown)")
    timeout_seconds: float
    kb_threshold: float
    history_messages: int
    handoff_message: str | None
    operator_pause_minutes: float
    overridden: list[str] = Field(
        description="The fields you set yourself; the others are the gateway's defaults"
    )


class AiSettingsPatch(BaseModel):
    """Fields given change; null puts a field back to the gateway's default."""

    provider: Literal["kb", "openai"] | None = None
    base_url: str | None = Field(default=None, min_length=1, max_length=2048)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    api_key: str | None = Field(
        default=None, max_length=2048, description="A new key; null or empty removes yours"
    )
    timeout_seconds: float | None = Field(default=None, gt=0, le=300)
    kb_threshold: float | None = Field(default=None, ge=0, le=1)
    history_messages: int | None = Field(default=None, ge=0, le=100)
    handoff_message: str | None = Field(default=None, min_length=1, max_length=1000)
    operator_pause_minutes: float | None = Field(default=None, ge=0, le=10080)


def _settings_out(request: web.Request, row: AiSettingsRow) -> AiSettingsOut:
    config = effective(row, request.app[SETTINGS], _box(request))
    overridden = [c for c in ai_db.SETTING_COLUMNS if getattr(row, c) is not None]
    return AiSettingsOut(
        provider=config.provider,
        base_url=config.base_url,
        model=config.model,
        api_key_set=config.api_key_set,
        timeout_seconds=config.timeout_seconds,
        kb_threshold=config.kb_threshold,
        history_messages=config.history_messages,
        handoff_message=config.handoff_message,
        operator_pause_minutes=config.operator_pause_minutes,
        overridden=[c.replace("api_key_sealed", "api_key") for c in overridden],
    )


@router.get("/api/v1/ai/settings", summary="Your AI responder settings", response=AiSettingsOut)
async def get_ai_settings(request: web.Request) -> AiSettingsOut:
    user = current_user(request)
    return _settings_out(request, await ai_db.get_settings(request.app[POOL], user.id))


@router.patch(
    "/api/v1/ai/settings",
    summary="Change your AI provider, model endpoint, key and knobs",
    body=AiSettingsPatch,
    response=AiSettingsOut,
)
async def patch_ai_settings(request: web.Request, body: AiSettingsPatch) -> AiSettingsOut:
    user = current_user(request)
    pool = request.app[POOL]
    row = await ai_db.get_settings(pool, user.id)
    values = {c: getattr(row, c) for c in ai_db.SETTING_COLUMNS}
    given = body.model_fields_set
    for name in given:
        if name == "api_key":
            key = body.api_key
            values["api_key_sealed"] = _box(request).seal(key) if key else None
        elif name == "base_url" and body.base_url is not None:
            try:
                values["base_url"] = check_url(
                    body.base_url,
                    allow_private=request.app[SETTINGS].ai_allow_private,
                    setting="WAGATE_AI_ALLOW_PRIVATE",
                ).rstrip("/")
            except UrlRefused as exc:
                raise _invalid("base_url", str(exc)) from exc
        else:
            values[name] = getattr(body, name)
    saved = await ai_db.put_settings(
        pool, AiSettingsRow(user_id=user.id, updated_at=None, **values)
    )
    log.info("ai settings changed", user_id=user.id, fields=sorted(given))
    return _settings_out(request, saved)


# -- personalities -------------------------------------------------------------------------------


class PersonalityIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    instructions: str = Field(default="", max_length=8000)
    language: Language | None = Field(default=None, description="Null: the customer's language")
    tone: str | None = Field(default=None, max_length=200)
    max_reply_chars: int | None = Field(default=None, ge=50, le=4096)


class PersonalityPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    instructions: str | None = Field(default=None, max_length=8000)
    language: Language | None = None
    tone: str | None = Field(default=None, max_length=200)
    max_reply_chars: int | None = Field(default=None, ge=50, le=4096)


class PersonalityOut(BaseModel):
    id: int
    user_id: int
    name: str
    instructions: str
    language: str | None
    tone: str | None
    max_reply_chars: int | None
    created_at: datetime
    updated_at: datetime


class PersonalityList(BaseModel):
    items: list[PersonalityOut]


def _p_out(p: Personality) -> PersonalityOut:
    return PersonalityOut(**p.__dict__)


async def owned_personality(request: web.Request, user: User, personality_id: int) -> Personality:
    found = await ai_db.get_personality(request.app[POOL], personality_id)
    if found is None or (found.user_id != user.id and not user.is_admin):
        raise NotFound("personality")
    return found


@router.get("/api/v1/personalities", summary="Your AI personalities", response=PersonalityList)
async def list_personalities(request: web.Request) -> PersonalityList:
    user = current_user(request)
    found = await ai_db.list_personalities(request.app[POOL], None if user.is_admin else user.id)
    return PersonalityList(items=[_p_out(p) for p in found])


@router.post(
    "/api/v1/personalities",
    summary="Add an AI personality (name, instructions, language, tone, reply length)",
    body=PersonalityIn,
    response=PersonalityOut,
    status=201,
)
async def create_personality(request: web.Request, body: PersonalityIn) -> PersonalityOut:
    user = current_user(request)
    created = await ai_db.create_personality(
        request.app[POOL], user_id=user.id, **body.model_dump()
    )
    return _p_out(created)


@router.get(
    "/api/v1/personalities/{personality_id}",
    summary="One AI personality",
    response=PersonalityOut,
    errors=(404,),
)
async def get_personality(request: web.Request) -> PersonalityOut:
    user = current_user(request)
    return _p_out(await owned_personality(request, user, path_int(request, "personality_id")))


@router.patch(
    "/api/v1/personalities/{personality_id}",
    summary="Change an AI personality",
    body=PersonalityPatch,
    response=PersonalityOut,
    errors=(404,),
)
async def patch_personality(request: web.Request, body: PersonalityPatch) -> PersonalityOut:
    user = current_user(request)
    found = await owned_personality(request, user, path_int(request, "personality_id"))
    values: dict[str, Any] = dict(found.__dict__)
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name in ("name", "instructions") and value is None:
            continue
        values[name] = value
    updated = await ai_db.update_personality(request.app[POOL], Personality(**values))
    if updated is None:
        raise NotFound("personality")
    return _p_out(updated)


@router.delete(
    "/api/v1/personalities/{personality_id}",
    summary="Remove an AI personality (its chats use their account's default)",
    status=204,
    errors=(404,),
)
async def delete_personality(request: web.Request) -> None:
    user = current_user(request)
    found = await owned_personality(request, user, path_int(request, "personality_id"))
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await ai_db.delete_personality(conn, found.id)


# -- knowledge base ----------------------------------------------------------------------------


class ArticleIn(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    body: str = Field(min_length=1, max_length=20000, description="The answer given")
    tags: list[str] = Field(default=[], max_length=30)
    language: Language = "en"


class ArticlePatch(BaseModel):
    title: str | None = Field(default=None, min_length=1, max_length=300)
    body: str | None = Field(default=None, min_length=1, max_length=20000)
    tags: list[str] | None = Field(default=None, max_length=30)
    language: Language | None = None


class ArticleOut(BaseModel):
    id: int
    user_id: int
    title: str
    body: str
    tags: list[str]
    language: str
    created_at: datetime
    updated_at: datetime


class ArticleList(BaseModel):
    items: list[ArticleOut]
    next_after: int | None = Field(description="Pass as `after` for the next page")


class ArticleQuery(BaseModel):
    language: Language | None = None
    q: str | None = Field(default=None, min_length=1, max_length=200, description="Words")
    after: int | None = Field(default=None, ge=0, le=2**62)
    limit: int = Field(default=50, ge=1, le=200)


class KbSearchQuery(BaseModel):
    # 500 characters: a longer one, percent-encoded, could pass the 8 KB request line limit.
    q: str = Field(min_length=1, max_length=500, description="A customer's question")
    language: Language | None = Field(default=None, description="Default: detected")
    limit: int = Field(default=5, ge=1, le=20)


class KbSearchHit(BaseModel):
    article: ArticleOut
    score: float = Field(description="Share of the question's words the article has (0..1)")
    rank: float
    same_language: bool


class KbSearchResult(BaseModel):
    language: str
    threshold: float
    items: list[KbSearchHit]


def _tags(tags: list[str]) -> list[str]:
    return sorted({t.strip()[:50] for t in tags if t.strip()})


def _a_out(a: Article) -> ArticleOut:
    return ArticleOut(**a.__dict__)


async def owned_article(request: web.Request, user: User, article_id: int) -> Article:
    found = await kb_db.get(request.app[POOL], article_id)
    if found is None or (found.user_id != user.id and not user.is_admin):
        raise NotFound("article")
    return found


@router.get(
    "/api/v1/kb/articles",
    summary="Your knowledge-base articles (by id; filter by language or words)",
    query=ArticleQuery,
    response=ArticleList,
)
async def list_articles(request: web.Request, query: ArticleQuery) -> ArticleList:
    user = current_user(request)
    found = await kb_db.list_for(
        request.app[POOL],
        None if user.is_admin else user.id,
        language=query.language,
        q=query.q,
        after=query.after,
        limit=query.limit + 1,
    )
    more = len(found) > query.limit
    found = found[: query.limit]
    return ArticleList(
        items=[_a_out(a) for a in found], next_after=found[-1].id if more and found else None
    )


@router.post(
    "/api/v1/kb/articles",
    summary="Add a knowledge-base article",
    body=ArticleIn,
    response=ArticleOut,
    status=201,
)
async def create_article(request: web.Request, body: ArticleIn) -> ArticleOut:
    user = current_user(request)
    created = await kb_db.create(
        request.app[POOL],
        user_id=user.id,
        title=body.title,
        body=body.body,
        tags=_tags(body.tags),
        language=body.language,
    )
    return _a_out(created)


@router.get(
    "/api/v1/kb/search",
    summary="Which articles a customer's question finds, and their scores",
    query=KbSearchQuery,
    response=KbSearchResult,
)
async def search_articles(request: web.Request, query: KbSearchQuery) -> KbSearchResult:
    user = current_user(request)
    language = query.language or detect_language(query.q)
    hits = await kb_db.search(
        request.app[POOL], user.id, query.q, search_languages(language), query.limit
    )
    config = effective(
        await ai_db.get_settings(request.app[POOL], user.id), request.app[SETTINGS], _box(request)
    )
    return KbSearchResult(
        language=language,
        threshold=config.kb_threshold,
        items=[
            KbSearchHit(
                article=_a_out(h.article),
                score=h.score,
                rank=h.rank,
                same_language=h.same_language,
            )
            for h in hits
        ],
    )


@router.get(
    "/api/v1/kb/articles/{article_id}",
    summary="One knowledge-base article",
    response=ArticleOut,
    errors=(404,),
)
async def get_article(request: web.Request) -> ArticleOut:
    user = current_user(request)
    return _a_out(await owned_article(request, user, path_int(request, "article_id")))


@router.patch(
    "/api/v1/kb/articles/{article_id}",
    summary="Change a knowledge-base article",
    body=ArticlePatch,
    response=ArticleOut,
    errors=(404,),
)
async def patch_article(request: web.Request, body: ArticlePatch) -> ArticleOut:
    user = current_user(request)
    found = await owned_article(request, user, path_int(request, "article_id"))
    values: dict[str, Any] = dict(found.__dict__)
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None:
            continue
        values[name] = _tags(value) if name == "tags" else value
    updated = await kb_db.update(request.app[POOL], Article(**values))
    if updated is None:
        raise NotFound("article")
    return _a_out(updated)


@router.delete(
    "/api/v1/kb/articles/{article_id}",
    summary="Remove a knowledge-base article",
    status=204,
    errors=(404,),
)
async def delete_article(request: web.Request) -> None:
    user = current_user(request)
    found = await owned_article(request, user, path_int(request, "article_id"))
    await kb_db.delete(request.app[POOL], found.id)


# -- per account and per chat ----------------------------------------------------------------------


class SessionAiOut(BaseModel):
    session_id: int
    ai_default: bool = Field(description="New direct chats of this account start with the AI on")
    personality_id: int | None = Field(description="The personality of chats that name none")


class SessionAiPatch(BaseModel):
    ai_default: bool | None = None
    personality_id: int | None = None


@router.get(
    "/api/v1/sessions/{session_id}/ai",
    summary="An account's AI defaults",
    response=SessionAiOut,
    errors=(404,),
)
async def get_session_ai(request: web.Request) -> SessionAiOut:
    session = await _owned_session(request)
    found = await ai_db.get_session_defaults(request.app[POOL], session.id)
    return SessionAiOut(**{k: found[k] for k in ("session_id", "ai_default", "personality_id")})


@router.patch(
    "/api/v1/sessions/{session_id}/ai",
    summary="Switch the AI on for new chats of an account; its default personality",
    body=SessionAiPatch,
    response=SessionAiOut,
    errors=(404,),
)
async def patch_session_ai(request: web.Request, body: SessionAiPatch) -> SessionAiOut:
    session = await _owned_session(request)
    pool = request.app[POOL]
    found = await ai_db.get_session_defaults(pool, session.id)
    ai_default = found["ai_default"] if body.ai_default is None else body.ai_default
    personality_id = found["personality_id"]
    if "personality_id" in body.model_fields_set:
        personality_id = body.personality_id
        if personality_id is not None:
            p = await ai_db.get_personality(pool, personality_id)
            if p is None or p.user_id != session.owner_id:
                raise _invalid("personality_id", "no such personality of the account's owner")
    saved = await ai_db.put_session_defaults(pool, session.id, ai_default, personality_id)
    return SessionAiOut(**{k: saved[k] for k in ("session_id", "ai_default", "personality_id")})


async def _owned_session(request: web.Request) -> sessions_db.Session:
    user = current_user(request)
    session = await sessions_db.get(request.app[POOL], path_int(request, "session_id"))
    if session is None or (session.owner_id != user.id and not user.is_admin):
        raise NotFound("session")
    return session


class AiDecisionOut(BaseModel):
    inbound_message_id: int
    outcome: str = Field(
        description="answered, handoff, loop, rate_limited, needs_human, paused, stale, not_text"
    )
    provider: str | None
    score: float | None
    detail: str | None
    created_at: datetime


class ConversationAiOut(BaseModel):
    conversation_id: int
    ai_active: bool
    no_ac_ai: bool
    needs_human: bool
    paused_until: datetime | None = Field(description="Quiet after an operator's reply until")
    decisions: list[AiDecisionOut] = Field(description="The latest decisions, newest first")


async def _conversation_ai(request: web.Request, conversation_id: int) -> ConversationAiOut:
    pool = request.app[POOL]
    row = await pool.fetchrow(
        "SELECT ai_active, no_ac_ai, needs_human, ai_paused_until FROM conversations WHERE id = $1",
        conversation_id,
    )
    if row is None:
        raise NotFound("conversation")
    decisions = await ai_db.latest_replies(pool, conversation_id, 20)
    return ConversationAiOut(
        conversation_id=conversation_id,
        ai_active=row["ai_active"],
        no_ac_ai=row["no_ac_ai"],
        needs_human=row["needs_human"],
        paused_until=row["ai_paused_until"],
        decisions=[AiDecisionOut(**d) for d in decisions],
    )


@router.get(
    "/api/v1/conversations/{conversation_id}/ai",
    summary="A chat's AI state and its latest decisions",
    response=ConversationAiOut,
    errors=(404,),
)
async def get_conversation_ai(request: web.Request) -> ConversationAiOut:
    found = await owned_conversation(
        request.app, current_user(request), path_int(request, "conversation_id")
    )
    return await _conversation_ai(request, found["id"])


@router.post(
    "/api/v1/conversations/{conversation_id}/ai/resume",
    summary="Give a chat back to the AI (clears needs_human and an operator pause)",
    response=ConversationAiOut,
    errors=(404,),
)
async def resume_conversation_ai(request: web.Request) -> ConversationAiOut:
    found = await owned_conversation(
        request.app, current_user(request), path_int(request, "conversation_id")
    )
    await ai_db.resume(request.app[POOL], found["id"])
    await request.app[SESSIONS].publish_conversation(found["session_id"], found["id"])
    return await _conversation_ai(request, found["id"])
