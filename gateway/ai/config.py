"""An operator's AI settings as they apply: their own choices over the WAGATE_AI_* defaults."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.fernet import InvalidToken

from db.ai import AiSettingsRow
from gateway.security import SecretBox
from gateway.settings import Settings


@dataclass(frozen=True)
class AiConfig:
    provider: str
    base_url: str
    base_url_trusted: bool  # the administrator's WAGATE_AI_BASE_URL, not an operator's choice
    model: str
    api_key: str | None
    api_key_set: bool
    timeout_seconds: float
    kb_threshold: float
    history_messages: int
    handoff_message: str | None
    operator_pause_minutes: float


def effective(row: AiSettingsRow, settings: Settings, box: SecretBox) -> AiConfig:
    api_key: str | None = None
    if row.api_key_sealed:
        try:
            api_key = box.open(row.api_key_sealed)
        except InvalidToken:
            api_key = None  # sealed under another secret key: as if none were set
    elif settings.ai_api_key is not None:
        api_key = settings.ai_api_key.get_secret_value() or None
    return AiConfig(
        provider=row.provider or settings.ai_provider,
        base_url=row.base_url or settings.ai_base_url,
        base_url_trusted=not row.base_url,
        model=row.model or settings.ai_model,
        api_key=api_key,
        api_key_set=api_key is not None,
        timeout_seconds=row.timeout_seconds or settings.ai_timeout_seconds,
        kb_threshold=(
            row.kb_threshold if row.kb_threshold is not None else settings.ai_kb_threshold
        ),
        history_messages=(
            row.history_messages
            if row.history_messages is not None
            else settings.ai_history_messages
        ),
        handoff_message=row.handoff_message or settings.ai_handoff_message,
        operator_pause_minutes=(
            row.operator_pause_minutes
            if row.operator_pause_minutes is not None
            else settings.ai_operator_pause_minutes
        ),
    )
