"""Message templates: synced from `/{waba_id}/message_templates`, created there, and the support
set wagate registers on request (in Spanish, Brazilian Portuguese and English)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from db import cloud as cloud_db
from gateway.cloud.graph import GraphError

if TYPE_CHECKING:
    from gateway.cloud.numbers import CloudNumber
    from gateway.cloud.service import CloudService

# name -> language -> body text ({{1}} ticket key, {{2}} the second value)
DEFAULT_BODIES: dict[str, dict[str, str]] = {
    "ticket_created": {
        "es": "Hemos creado tu ticket {{1}}. Te responderemos pronto.",
        "pt_BR": "Criamos o seu ticket {{1}}. Responderemos em breve.",
        "en": "We created your ticket {{1}}. We will get back to you soon.",
    },
    "ticket_updated": {
        "es": "Tu ticket {{1}} fue actualizado: {{2}}",
        "pt_BR": "O seu ticket {{1}} foi atualizado: {{2}}",
        "en": "Your ticket {{1}} was updated: {{2}}",
    },
    "ticket_assigned": {
        "es": "Tu ticket {{1}} fue asignado a {{2}}.",
        "pt_BR": "O seu ticket {{1}} foi atribuído a {{2}}.",
        "en": "Your ticket {{1}} was assigned to {{2}}.",
    },
    "ticket_resolved": {
        "es": "Tu ticket {{1}} fue resuelto. Responde a este mensaje si necesitas algo más.",
        "pt_BR": "O seu ticket {{1}} foi resolvido. Responda se precisar de mais alguma coisa.",
        "en": "Your ticket {{1}} was resolved. Reply to this message if you need anything else.",
    },
    "agent_response": {
        "es": "Respuesta a tu ticket {{1}}: {{2}}",
        "pt_BR": "Resposta ao seu ticket {{1}}: {{2}}",
        "en": "Reply to your ticket {{1}}: {{2}}",
    },
    "sla_warning": {
        "es": "Seguimos trabajando en tu ticket {{1}}; la respuesta tardará un poco más.",
        "pt_BR": "Ainda estamos trabalhando no seu ticket {{1}}; a resposta vai demorar um pouco.",
        "en": "We are still working on your ticket {{1}}; the answer will take a little longer.",
    },
}
EXAMPLES = {"{{1}}": "SUP-123", "{{2}}": "Ana"}


def default_templates() -> list[dict[str, Any]]:
    out = []
    for name, bodies in DEFAULT_BODIES.items():
        for language, text in bodies.items():
            values = [v for k, v in EXAMPLES.items() if k in text]
            body: dict[str, Any] = {"type": "BODY", "text": text}
            if values:
                body["example"] = {"body_text": [values]}
            out.append(
                {"name": name, "category": "UTILITY", "language": language, "components": [body]}
            )
    return out


def _waba(number: CloudNumber) -> str:
    if not number.waba_id:
        raise ValueError("this number has no waba_id (WhatsApp Business Account id)")
    return number.waba_id


async def sync(service: CloudService, number: CloudNumber) -> int:
    """Refresh the stored templates from Meta; how many Meta listed."""
    found = await service.graph.templates(_waba(number), number.access_token)
    for item in found:
        if not item.get("name") or not item.get("language"):
            continue
        await cloud_db.upsert_template(
            service.pool,
            number.session_id,
            template_id=str(item["id"]) if item.get("id") else None,
            name=str(item["name"]),
            language=str(item["language"]),
            category=str(item["category"]) if item.get("category") else None,
            status=str(item.get("status") or "PENDING"),
            components=list(item.get("components") or []),
            rejected_reason=item.get("rejected_reason"),
        )
    return len(found)


async def create(
    service: CloudService, number: CloudNumber, template: dict[str, Any]
) -> cloud_db.TemplateRow:
    answer = await service.graph.create_template(_waba(number), number.access_token, template)
    return await cloud_db.upsert_template(
        service.pool,
        number.session_id,
        template_id=str(answer["id"]) if answer.get("id") else None,
        name=template["name"],
        language=template["language"],
        category=answer.get("category") or template["category"],
        status=str(answer.get("status") or "PENDING"),
        components=template["components"],
    )


async def register_defaults(
    service: CloudService, number: CloudNumber
) -> tuple[list[cloud_db.TemplateRow], list[dict[str, str]]]:
    _waba(number)
    created, failed = [], []
    for template in default_templates():
        try:
            created.append(await create(service, number, template))
        except GraphError as exc:
            failed.append(
                {"name": template["name"], "language": template["language"], "error": str(exc)}
            )
    return created, failed
