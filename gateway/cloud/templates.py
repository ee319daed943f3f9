"""Message templates: synced from `/{waba_id}/message_templates`, created there, and the support
set wagate registers on request (in Spanish, Brazilian Portuguese and English)."""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

from db import cloud as cloud_db
from gateway.cloud.graph import GraphError

if TYPE_CHECKING:
    from gateway.cloud.numbers import CloudNumber
    from gateway.cloud.service import CloudService

# name -> language -> body text ({{1}} ticket key, {{2}} the second value). Meta refuses a body
# that starts or ends with a variable, so every variable has words after it.
DEFAULT_BODIES: dict[str, dict[str, str]] = {
    "ticket_created": {
        "es": "Hemos creado tu ticket {{1}}. Te responderemos pronto.",
        "pt_BR": "Criamos o seu ticket {{1}}. Responderemos em breve.",
        "en": "We created your ticket {{1}}. We will get back to you soon.",
    },
    "ticket_updated": {
        "es": "Tu ticket {{1}} tiene novedades: {{2}}. Responde a este mensaje si tienes dudas.",
        "pt_BR": "O seu ticket {{1}} tem novidades: {{2}}. Responda se tiver alguma dúvida.",
        "en": "Your ticket {{1}} was updated: {{2}}. Reply to this message if you have questions.",
    },
    "ticket_assigned": {
        "es": "Tu ticket {{1}} fue asignado a {{2}}, que te dará seguimiento.",
        "pt_BR": "O seu ticket {{1}} foi atribuído a {{2}}, que vai acompanhar o seu caso.",
        "en": "Your ticket {{1}} was assigned to {{2}}, who will follow up with you.",
    },
    "ticket_resolved": {
        "es": "Tu ticket {{1}} fue resuelto. Responde a este mensaje si necesitas algo más.",
        "pt_BR": "O seu ticket {{1}} foi resolvido. Responda se precisar de mais alguma coisa.",
        "en": "Your ticket {{1}} was resolved. Reply to this message if you need anything else.",
    },
    "agent_response": {
        "es": "Tu ticket {{1}} tiene una respuesta: {{2}}. Responde aquí para continuar.",
        "pt_BR": "O seu ticket {{1}} tem uma resposta: {{2}}. Responda aqui para continuar.",
        "en": "Your ticket {{1}} has a reply: {{2}}. Answer here to continue.",
    },
    "sla_warning": {
        "es": "Seguimos trabajando en tu ticket {{1}}; la respuesta tardará un poco más.",
        "pt_BR": "Ainda estamos trabalhando no seu ticket {{1}}; a resposta vai demorar um pouco.",
        "en": "We are still working on your ticket {{1}}; the answer will take a little longer.",
    },
}
EXAMPLES = {"{{1}}": "SUP-123", "{{2}}": "Ana"}


_VARIABLE = re.compile(r"\{\{\s*(\d+)\s*\}\}")
_TEXT = re.compile(r"\S")


def body_problem(text: str) -> str | None:
    """Why Meta would refuse this template body, or None. Its rules: a body neither starts nor
    ends with a variable, two variables are not side by side, and they are numbered 1, 2, ...
    in order of first use. Only what surely breaks them is refused here (a variable with
    nothing but spaces around it); Meta's review has the last word."""
    found = list(_VARIABLE.finditer(text))
    if not found:
        return None
    if not _TEXT.search(text[: found[0].start()]):
        return f"the body must not start with a variable: put words before {found[0].group(0)}"
    if not _TEXT.search(text[found[-1].end() :]):
        return f"the body must not end with a variable: put words after {found[-1].group(0)}"
    for before, after in itertools.pairwise(found):
        if not _TEXT.search(text[before.end() : after.start()]):
            return f"{before.group(0)} and {after.group(0)} need text between them"
    numbers: list[int] = []
    for match in found:
        n = int(match.group(1))
        if n not in numbers:
            numbers.append(n)
    if numbers != list(range(1, len(numbers) + 1)):
        return "variables must be numbered {{1}}, {{2}}, ... in order of first use"
    return None


def template_problem(components: list[dict[str, Any]]) -> str | None:
    """The first problem of a template's BODY component, named for the operator."""
    for component in components:
        if str(component.get("type", "")).upper() == "BODY":
            problem = body_problem(str(component.get("text") or ""))
            if problem:
                return problem
    return None


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
