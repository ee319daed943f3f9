"""Read API latency on a full store: the inbox, a chat's messages and search, server-side.

The store: 50 operators. The one measured owns 10,000 conversations over 4 sessions and 900,000
messages; the other 49 own 100 conversations and about 2,000 messages each, so every query has
other owners' rows to filter out (1,000,000 messages and 14,900 conversations in all). Message
counts per chat are skewed: three chats with 80,000, 60,000 and 50,000 messages, a long
log-normal tail, and 1% of the chats with no message at all. Texts are Spanish, Portuguese and
English customer-service chat (templates with products, cities, order numbers), 12% of the
messages are media, and every message has a `raw` document of a few hundred bytes. Rows are
written in `sent_at` order, as live traffic would leave them, so one chat's messages are spread
over the whole table. The data goes in with one COPY into a staging table and one INSERT ...
SELECT with the secondary indexes dropped, then the migration's own index definitions are
rebuilt and the tables VACUUM ANALYZEd: a store in steady state, not the API's write path.

Served: the real application (`create_app`, fake driver, every session stopped) on a TCP port
on 127.0.0.1 through aiohttp's AppRunner, and in the same process and event loop, a bare aiohttp
application whose one handler returns a JSON body of the same size as the real page
(`web.json_response` of the same data): the floor for "an aiohttp JSON handler" here.

Server-side latency: a timing middleware inserted as the OUTERMOST middleware of each
application (before wagate's request log, metrics, error and auth middlewares) records
`perf_counter()` around the whole handler chain for every request: authentication (token
decode and user lookup), validation, every query, the pydantic models and the JSON encoding.
It leaves out only HTTP parsing and writing the response to the socket, which are the same for
both applications. The client (aiohttp, keep-alive, one request at a time, so it never runs
while the server works) also records the round trip.

Endpoints, each timed N times (300) round-robin over all of them (bare ones included), so that
any noise of this shared 2-core machine falls on all alike. Before that, each is warmed up with
20 requests (at least 7; fewer only for an endpoint slower than a quarter of its time budget):
past its fifth run a prepared statement may be switched to PostgreSQL's generic plan, as it is
in a gateway that has been up for a while.

- `GET /api/v1/conversations?limit=50`: the first inbox page, and a deep page (the cursor
  after following 100 pages);
- `GET /api/v1/conversations/{id}/messages?limit=50` in the largest chat: the newest page, and
  a deep page (`before=` the message 40,000 back);
- `GET /api/v1/conversations?q=` and `GET /api/v1/search?q=` for words that are common,
  middling, rare and absent, and a contact name.

An endpoint whose requests together take longer than its time budget stops early (fewer
samples; the tables say how many).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from aiohttp import web

from bench.common import BenchServer
from gateway.app import create_app
from gateway.keys import TOKENS
from gateway.logs import configure_logging
from gateway.settings import Settings

TARGET_PAGE_P99_MS = 15.0
TARGET_SEARCH_P99_MS = 50.0
SEED = 20261124
LABEL_HEADER = "X-Bench-Label"


@dataclass(frozen=True)
class Scale:
    operators: int
    main_sessions: int
    main_conversations: int
    main_messages: int
    other_conversations: int  # per other operator
    other_messages: int  # all other operators together
    heavy: tuple[int, ...]
    deep_pages: int  # inbox pages followed to the deep page
    deep_messages: int  # messages back for the deep message page
    requests: int  # timed requests per endpoint
    warmup: int
    budget_s: float  # time budget per endpoint


FULL = Scale(
    operators=50,
    main_sessions=4,
    main_conversations=10_000,
    main_messages=900_000,
    other_conversations=100,
    other_messages=100_000,
    heavy=(80_000, 60_000, 50_000),
    deep_pages=100,
    deep_messages=40_000,
    requests=300,
    warmup=20,
    budget_s=30.0,
)
QUICK = Scale(
    operators=10,
    main_sessions=4,
    main_conversations=1_000,
    main_messages=90_000,
    other_conversations=50,
    other_messages=10_000,
    heavy=(8_000, 6_000, 5_000),
    deep_pages=10,
    deep_messages=4_000,
    requests=50,
    warmup=5,
    budget_s=5.0,
)

# -- realistic text --------------------------------------------------------------------------

# fmt: off
_FILL: dict[str, dict[str, tuple[str, ...]]] = {
    "es": {
        "greet": ("Hola", "Buenas tardes", "Buenos días", "Qué tal", "Buenas noches"),
        "product": (
            "celular", "cargador", "audífonos", "teclado", "monitor", "mouse", "cable USB",
            "funda", "bocina", "reloj", "televisor", "refrigerador", "microondas", "ventilador",
            "colchón", "sillón", "escritorio", "lámpara", "cafetera", "batidora", "plancha",
            "aspiradora", "mochila", "tenis", "chamarra", "vestido", "perfume", "impresora",
            "tableta", "licuadora", "freidora de aire", "termo", "bicicleta", "casco",
            "patineta", "colchoneta", "mancuernas", "sartén", "olla exprés", "tostador",
        ),
        "city": (
            "Monterrey", "Guadalajara", "Puebla", "Querétaro", "Mérida", "Tijuana", "León",
            "Bogotá", "Medellín", "Lima", "Santiago", "Buenos Aires", "Córdoba", "Quito",
        ),
        "color": ("negro", "blanco", "azul", "rojo", "gris", "verde", "rosa"),
        "weekday": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado"),
    },
    "pt": {
        "greet": ("Olá", "Oi", "Bom dia", "Boa tarde", "Boa noite"),
        "product": (
            "celular", "carregador", "fone de ouvido", "teclado", "monitor", "mouse",
            "cabo USB", "capinha", "caixa de som", "relógio", "televisão", "geladeira",
            "micro-ondas", "ventilador", "colchão", "sofá", "escrivaninha", "luminária",
            "cafeteira", "batedeira", "ferro de passar", "aspirador", "mochila", "tênis",
            "jaqueta", "vestido", "perfume", "impressora", "tablet", "liquidificador",
            "fritadeira elétrica", "garrafa térmica", "bicicleta", "capacete", "skate",
        ),
        "city": (
            "São Paulo", "Rio de Janeiro", "Belo Horizonte", "Curitiba", "Recife",
            "Salvador", "Fortaleza", "Porto Alegre", "Manaus", "Lisboa", "Porto", "Campinas",
        ),
        "color": ("preto", "branco", "azul", "vermelho", "cinza", "verde", "rosa"),
        "weekday": ("segunda", "terça", "quarta", "quinta", "sexta", "sábado"),
    },
    "en": {
        "greet": ("Hi", "Hello", "Good morning", "Good afternoon", "Hey"),
        "product": (
            "phone", "charger", "headphones", "keyboard", "monitor", "mouse", "USB cable",
            "case", "speaker", "watch", "TV", "fridge", "microwave", "fan", "mattress", "couch",
            "desk", "lamp", "coffee maker", "mixer", "iron", "vacuum cleaner", "backpack",
            "sneakers", "jacket", "dress", "perfume", "printer", "tablet", "blender",
            "air fryer", "thermos", "bicycle", "helmet", "skateboard",
        ),
        "city": (
            "Miami", "Houston", "Los Angeles", "Chicago", "New York", "Dallas", "Phoenix",
            "San Diego", "Toronto", "Atlanta",
        ),
        "color": ("black", "white", "blue", "red", "grey", "green", "pink"),
        "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"),
    },
}
# (weight, template): inbound customer lines and outbound agent lines.
_INBOUND: dict[str, tuple[tuple[int, str], ...]] = {
    "es": (
        (8, "{greet}, quisiera saber el precio del {product}"),
        (5, "¿Tienen el {product} en color {color}?"),
        (6, "Mi pedido {num} todavía no ha llegado"),
        (5, "¿Cuánto cuesta el envío a {city}?"),
        (6, "Gracias, quedo atento a la confirmación"),
        (4, "Ya hice la transferencia, les mando el comprobante"),
        (3, "¿Me pueden enviar la factura del pedido {num}?"),
        (6, "Perfecto, muchas gracias por la ayuda"),
        (2, "El {product} llegó dañado, quiero hacer un cambio"),
        (3, "¿A qué hora abren mañana?"),
        (2, "Necesito cambiar la cita del {weekday}"),
        (3, "¿Aceptan pago con tarjeta o solo efectivo?"),
        (2, "¿Hacen entregas a domicilio en {city}?"),
        (8, "ok"), (6, "sí, gracias"), (4, "👍"), (3, "Listo"),
        (3, "Buenas, sigo esperando respuesta"),
    ),
    "pt": (
        (8, "{greet}, gostaria de saber o preço do {product}"),
        (5, "Vocês têm o {product} na cor {color}?"),
        (6, "Meu pedido {num} ainda não chegou"),
        (5, "Quanto custa o frete para {city}?"),
        (6, "Obrigado, fico no aguardo da confirmação"),
        (4, "Já fiz o pix, vou mandar o comprovante"),
        (3, "Podem me enviar a nota fiscal do pedido {num}?"),
        (6, "Perfeito, muito obrigado pela ajuda"),
        (2, "O {product} chegou com defeito, quero trocar"),
        (3, "Que horas vocês abrem amanhã?"),
        (2, "Preciso remarcar o horário de {weekday}"),
        (3, "Aceitam cartão ou só dinheiro?"),
        (8, "ok"), (6, "sim, obrigado"), (4, "👍"), (3, "Beleza"),
    ),
    "en": (
        (8, "{greet}, I'd like to know the price of the {product}"),
        (5, "Do you have the {product} in {color}?"),
        (6, "My order {num} hasn't arrived yet"),
        (5, "How much is shipping to {city}?"),
        (6, "Thanks, I'll wait for the confirmation"),
        (4, "I already paid, sending you the receipt now"),
        (3, "Can you send me the invoice for order {num}?"),
        (6, "Perfect, thank you so much for your help"),
        (2, "The {product} arrived damaged, I want a replacement"),
        (3, "What time do you open tomorrow?"),
        (2, "I need to reschedule my appointment on {weekday}"),
        (8, "ok"), (6, "yes thanks"), (4, "👍"), (3, "Sounds good"),
    ),
}
_OUTBOUND: dict[str, tuple[tuple[int, str], ...]] = {
    "es": (
        (6, "Con gusto, en un momento le confirmo la disponibilidad"),
        (5, "El {product} cuesta {amount} pesos, con envío gratis a {city}"),
        (5, "Su pedido {num} fue enviado, el número de guía es {guide}"),
        (3, "Tenemos envío gratis en compras mayores a {amount} pesos"),
        (4, "Claro, le comparto la factura en un momento"),
        (4, "Gracias por su compra, que tenga buen día"),
        (3, "Sí, lo tenemos en {color}, ¿cuántas piezas necesita?"),
        (2, "Abrimos de lunes a sábado de 9 a 19 horas"),
        (2, "Lamentamos el inconveniente, ya generamos el cambio del {product}"),
    ),
    "pt": (
        (6, "Claro, já confirmo a disponibilidade para você"),
        (5, "O {product} custa {amount} reais, com frete grátis para {city}"),
        (5, "Seu pedido {num} foi enviado, o código de rastreio é {guide}"),
        (3, "Temos frete grátis nas compras acima de {amount} reais"),
        (4, "Claro, envio a nota fiscal em instantes"),
        (4, "Obrigado pela compra, tenha um ótimo dia"),
        (3, "Sim, temos na cor {color}, quantas unidades?"),
        (2, "Sentimos muito, já pedimos a troca do {product}"),
    ),
    "en": (
        (6, "Sure, let me check availability for you"),
        (5, "The {product} is {amount} dollars, with free shipping to {city}"),
        (5, "Your order {num} has shipped, tracking number {guide}"),
        (3, "Free shipping on orders over {amount} dollars"),
        (4, "Of course, I'll send the invoice shortly"),
        (4, "Thanks for your purchase, have a great day"),
        (3, "Yes, we have it in {color}, how many do you need?"),
        (2, "Sorry about that, we've started the replacement of the {product}"),
    ),
}
_FIRST = (
    "María", "José", "Juan", "Ana", "Luis", "Carmen", "Carlos", "Lucía", "Jorge", "Sofía",
    "Miguel", "Valentina", "Pedro", "Camila", "Diego", "Fernanda", "João", "Mariana", "Paulo",
    "Beatriz", "Rafael", "Gabriela", "John", "Emily", "Michael", "Sarah", "David", "Jessica",
)
_LAST = (
    "García", "Martínez", "López", "Hernández", "González", "Pérez", "Rodríguez", "Sánchez",
    "Ramírez", "Torres", "Silva", "Santos", "Oliveira", "Souza", "Costa", "Pereira", "Smith",
    "Johnson", "Brown", "Miller", "Fuentes", "Vargas", "Castillo", "Ortega", "Rojas",
)
# fmt: on
_LANGS = (("es", 55), ("pt", 25), ("en", 20))
_MEDIA = (
    # (type, mime, weight, caption chance, file name)
    ("image", "image/jpeg", 6, 0.3, None),
    ("audio", "audio/ogg; codecs=opus", 3, 0.0, None),
    ("sticker", "image/webp", 2, 0.0, None),
    ("document", "application/pdf", 1, 0.5, "comprobante-{n}.pdf"),
)


def _zipf(items: tuple[str, ...], s: float = 1.1) -> tuple[tuple[str, ...], list[float]]:
    return items, list(accumulate(1 / (r + 1) ** s for r in range(len(items))))


class TextMaker:
    """Chat lines in one language, products Zipf-distributed (a few common, a long tail)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._tpl: dict[tuple[str, str], tuple[list[str], list[float]]] = {}
        for direction, table in (("inbound", _INBOUND), ("outbound", _OUTBOUND)):
            for lang, rows in table.items():
                texts = [t for _, t in rows]
                weights = list(accumulate(w for w, _ in rows))
                self._tpl[(lang, direction)] = (texts, weights)
        self._products = {lang: _zipf(f["product"]) for lang, f in _FILL.items()}

    def line(self, lang: str, direction: str) -> str:
        rng = self.rng
        texts, weights = self._tpl[(lang, direction)]
        template = rng.choices(texts, cum_weights=weights)[0]
        if "{" not in template:
            return template
        fill = _FILL[lang]
        products, pweights = self._products[lang]
        return template.format(
            greet=rng.choice(fill["greet"]),
            product=rng.choices(products, cum_weights=pweights)[0],
            city=rng.choice(fill["city"]),
            color=rng.choice(fill["color"]),
            weekday=rng.choice(fill["weekday"]),
            num=rng.randrange(10_000, 99_999),
            amount=rng.choice((299, 499, 799, 999, 1299, 1499, 2499)),
            guide=f"{rng.choice('MXBRUS')}{rng.randrange(10**9, 10**10)}",
        )


# -- loading the store -----------------------------------------------------------------------


@dataclass
class Chat:
    session_id: int
    owner: int
    external_id: str
    kind: str
    name: str
    phone: str
    lang: str
    count: int
    last_at: datetime | None
    archived: bool
    labels: list[str]
    unread: int
    id: int = 0
    times: list[datetime] = field(default_factory=list)


def _counts(rng: random.Random, chats: int, messages: int, heavy: tuple[int, ...]) -> list[int]:
    """Messages per chat: the heavy ones first, 1% empty, a log-normal tail for the rest."""
    tail = chats - len(heavy)
    empty = max(1, chats // 100) if heavy else 0
    weights = [rng.lognormvariate(0.0, 1.3) for _ in range(tail - empty)]
    left = messages - sum(heavy)
    scale = left / sum(weights)
    counts = [max(1, round(w * scale)) for w in weights]
    counts[counts.index(max(counts))] += left - sum(counts)  # exact total
    return list(heavy) + counts + [0] * empty


def _plan(
    rng: random.Random, scale: Scale, users: list[int], sessions: dict[int, list[int]]
) -> list[Chat]:
    now = datetime.now(UTC).replace(microsecond=0)
    chats: list[Chat] = []
    langs = [lang for lang, _ in _LANGS]
    lang_weights = [w for _, w in _LANGS]

    def make(owner: int, session_id: int, count: int, heavy: bool) -> Chat:
        n = len(chats)
        group = not heavy and rng.random() < 0.05
        phone = f"{rng.choice(('521', '551', '1', '54911', '57'))}{rng.randrange(10**9, 10**10)}"
        if group:
            external = f"1203630{n:011d}@g.us"
            name = f"{rng.choice(('Ventas', 'Soporte', 'Equipo', 'Familia', 'Pedidos'))} {n}"
        else:
            external = f"{phone}@s.whatsapp.net"
            name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        last = None
        if count:
            age = (
                timedelta(hours=rng.uniform(0, 6))
                if heavy
                else timedelta(days=min(365.0, rng.expovariate(1 / 20)))
            )
            last = now - age
        return Chat(
            session_id=session_id,
            owner=owner,
            external_id=external,
            kind="group" if group else "direct",
            name=name,
            phone=phone,
            lang=rng.choices(langs, weights=lang_weights)[0],
            count=count,
            last_at=last,
            archived=rng.random() < 0.05,
            labels=rng.sample(["cliente", "vip", "mayoreo", "reclamo"], rng.randrange(0, 2)),
            unread=rng.choice((0, 0, 0, 0, 1, 2, 5)),
        )

    main = users[0]
    counts = _counts(rng, scale.main_conversations, scale.main_messages, scale.heavy)
    main_sessions = sessions[main]
    for i, count in enumerate(counts):
        chat = make(main, main_sessions[i % len(main_sessions)], count, i < len(scale.heavy))
        if i < len(scale.heavy):
            chat.archived = False
            chat.name = f"Distribuidora {chat.name}"
        chats.append(chat)
    others = users[1:]
    other_counts = _counts(rng, scale.other_conversations * len(others), scale.other_messages, ())
    rng.shuffle(other_counts)
    for k, count in enumerate(other_counts):
        owner = others[k % len(others)]
        chats.append(make(owner, sessions[owner][0], count, False))
    return chats


_STAGING = """
CREATE UNLOGGED TABLE bench_staging (
    conversation_id bigint, session_id bigint, k integer, direction text, sender_type text,
    message_type text, text_content text, media_mime text, media_size bigint,
    media_filename text, status text, sender_jid text, sender_name text, sent_at timestamptz
)
"""
_STAGING_COLUMNS = (
    "conversation_id",
    "session_id",
    "k",
    "direction",
    "sender_type",
    "message_type",
    "text_content",
    "media_mime",
    "media_size",
    "media_filename",
    "status",
    "sender_jid",
    "sender_name",
    "sent_at",
)
# ids follow time, as live traffic leaves them: one chat's messages spread over the table.
_FILL_MESSAGES = """
INSERT INTO messages (session_id, conversation_id, wa_message_id, direction, sender_type,
                      sender_jid, sender_name, message_type, text_content, media_sha256,
                      media_mime, media_size, media_filename, media_status, raw, status,
                      from_history, sent_at, created_at, updated_at)
SELECT st.session_id, st.conversation_id,
       '3EB0' || upper(lpad(to_hex(st.conversation_id), 6, '0') || lpad(to_hex(st.k), 8, '0')),
       st.direction, st.sender_type, st.sender_jid, st.sender_name, st.message_type,
       st.text_content,
       CASE WHEN st.media_mime IS NOT NULL
            THEN md5(st.conversation_id || ':' || st.k) || md5(st.k || ':' || st.conversation_id)
       END,
       st.media_mime, st.media_size, st.media_filename,
       CASE WHEN st.media_mime IS NOT NULL THEN 'stored' END,
       jsonb_build_object(
           'key', jsonb_build_object('remoteJid', c.external_id,
                                     'fromMe', st.direction = 'outbound',
                                     'id', '3EB0' || upper(lpad(to_hex(st.conversation_id), 6,
                                           '0') || lpad(to_hex(st.k), 8, '0'))),
           'messageTimestamp', extract(epoch FROM st.sent_at)::bigint,
           'pushName', st.sender_name,
           'message', CASE WHEN st.media_mime IS NULL
                           THEN jsonb_build_object('conversation', st.text_content)
                           ELSE jsonb_build_object('mediaMessage', jsonb_build_object(
                               'mimetype', st.media_mime, 'fileLength', st.media_size,
                               'caption', st.text_content,
                               'mediaKey', md5(st.k || 'key'),
                               'directPath', '/v/t62.7118-24/' || md5(st.k || 'path')))
                      END,
           'verifiedBizName', NULL),
       st.status, st.k % 3 = 0, st.sent_at, st.sent_at, st.sent_at
FROM bench_staging st JOIN conversations c ON c.id = st.conversation_id
ORDER BY st.sent_at
"""


def _message_rows(rng: random.Random, chats: list[Chat]) -> Iterator[tuple[Any, ...]]:
    maker = TextMaker(rng)
    media_kinds = [m for m in _MEDIA]
    media_weights = list(accumulate(m[2] for m in _MEDIA))
    for chat in chats:
        if not chat.count or chat.last_at is None:
            continue
        span = (
            timedelta(days=365)
            if chat.count > 5_000
            else timedelta(hours=min(24 * 365, chat.count * rng.uniform(0.5, 6.0)))
        )
        first = chat.last_at - span
        offsets = sorted(rng.random() for _ in range(chat.count - 1))
        seconds = span.total_seconds()
        times = [first + timedelta(seconds=o * seconds) for o in offsets] + [chat.last_at]
        for k, at in enumerate(times):
            inbound = rng.random() < 0.55
            direction = "inbound" if inbound else "outbound"
            sender_type = "user" if inbound else rng.choice(("agent", "agent", "ai", "owner"))
            if rng.random() < 0.12:
                mtype, mime, _w, caption, fname = rng.choices(
                    media_kinds, cum_weights=media_weights
                )[0]
                text = maker.line(chat.lang, direction) if rng.random() < caption else None
                size = rng.randrange(8_000, 2_000_000)
                filename = fname.format(n=k) if fname else None
            else:
                mtype, mime, size, filename = "text", None, None, None
                text = maker.line(chat.lang, direction)
                if rng.random() < 0.3:
                    text += ". " + maker.line(chat.lang, direction)
            status = "received" if inbound else rng.choice(("read", "read", "delivered", "sent"))
            if inbound:
                sender_jid = (
                    f"{chat.phone}@s.whatsapp.net"
                    if chat.kind == "direct"
                    else f"52{rng.randrange(10**9, 10**10)}@s.whatsapp.net"
                )
                sender_name = chat.name
            else:
                sender_jid, sender_name = None, None
            yield (
                chat.id,
                chat.session_id,
                k,
                direction,
                sender_type,
                mtype,
                text,
                mime,
                size,
                filename,
                status,
                sender_jid,
                sender_name,
                at,
            )


async def populate(url: str, scale: Scale, log: logging.Logger | None = None) -> dict[str, Any]:
    """Fill a migrated, empty database with the store; what was loaded and how long it took."""
    say = (log or logging.getLogger(__name__)).info
    rng = random.Random(SEED)
    started = time.perf_counter()
    steps: dict[str, float] = {}
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute("SET work_mem = '256MB'")
        users = [
            int(r["id"])
            for r in await conn.fetch(
                "INSERT INTO users (email, password_hash, role, display_name) "
                "SELECT 'operator' || g || '@bench.example', 'x', 'operator', 'Operator ' || g "
                "FROM generate_series(1, $1) g ORDER BY g RETURNING id",
                scale.operators,
            )
        ]
        sessions: dict[int, list[int]] = {}
        for i, user in enumerate(users):
            n = scale.main_sessions if i == 0 else 1
            rows = await conn.fetch(
                "INSERT INTO sessions (owner_id, name, phone, state, desired_state) "
                "SELECT $1::bigint, 'Línea ' || g, "
                "'52155' || lpad(($1::bigint * 10 + g)::text, 8, '0'), "
                "'stopped', 'stopped' FROM generate_series(1, $2) g ORDER BY g RETURNING id",
                user,
                n,
            )
            sessions[user] = [int(r["id"]) for r in rows]
        chats = _plan(rng, scale, users, sessions)
        t = time.perf_counter()
        await conn.copy_records_to_table(
            "conversations",
            columns=(
                "session_id",
                "external_id",
                "kind",
                "contact_name",
                "wa_user_id",
                "started_at",
                "last_message_at",
                "unread_count",
                "archived",
                "labels",
                "created_at",
                "updated_at",
            ),
            records=[
                (
                    c.session_id,
                    c.external_id,
                    c.kind,
                    c.name,
                    c.phone if c.kind == "direct" else None,
                    (c.last_at or datetime.now(UTC)) - timedelta(days=400),
                    c.last_at,
                    c.unread,
                    c.archived,
                    c.labels,
                    (c.last_at or datetime.now(UTC)) - timedelta(days=400),
                    c.last_at or datetime.now(UTC),
                )
                for c in chats
            ],
        )
        ids = {
            (int(r["session_id"]), r["external_id"]): int(r["id"])
            for r in await conn.fetch("SELECT id, session_id, external_id FROM conversations")
        }
        for c in chats:
            c.id = ids[(c.session_id, c.external_id)]
        steps["conversations_s"] = time.perf_counter() - t
        say("api_read: %d conversations loaded", len(chats))

        t = time.perf_counter()
        await conn.execute(_STAGING)
        await conn.copy_records_to_table(
            "bench_staging", columns=_STAGING_COLUMNS, records=_message_rows(rng, chats)
        )
        steps["generate_and_copy_s"] = time.perf_counter() - t
        say("api_read: messages staged")

        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' AND tablename = 'messages' "
            "AND indexname <> 'messages_pkey'"
        )
        t = time.perf_counter()
        async with conn.transaction():
            for row in indexes:
                await conn.execute(f'DROP INDEX "{row["indexname"]}"')
            # Rows are consistent by construction: skip the per-row foreign-key triggers.
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(_FILL_MESSAGES)
        await conn.execute("DROP TABLE bench_staging")
        steps["insert_s"] = time.perf_counter() - t
        say("api_read: messages inserted")
        t = time.perf_counter()
        for row in indexes:
            await conn.execute(row["indexdef"])
        steps["indexes_s"] = time.perf_counter() - t
        say("api_read: indexes rebuilt")
        t = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) messages")
        await conn.execute("VACUUM (ANALYZE) conversations")
        await conn.execute("VACUUM (ANALYZE) sessions")
        await conn.execute("VACUUM (ANALYZE) users")
        steps["vacuum_analyze_s"] = time.perf_counter() - t
        sizes = await conn.fetchrow(
            "SELECT pg_total_relation_size('messages') AS messages_bytes, "
            "pg_relation_size('messages') AS messages_heap_bytes, "
            "pg_indexes_size('messages') AS messages_index_bytes, "
            "pg_total_relation_size('conversations') AS conversations_bytes, "
            "(SELECT count(*) FROM messages) AS messages, "
            "(SELECT count(*) FROM conversations) AS conversations"
        )
    finally:
        await conn.close()
    main = users[0]
    heavy = [c for c in chats if c.owner == main][: len(scale.heavy)]
    return {
        "seconds": time.perf_counter() - started,
        "steps": steps,
        "operators": len(users),
        "main_user": main,
        "main_sessions": sessions[main],
        "main_conversations": sum(1 for c in chats if c.owner == main),
        "main_messages": sum(c.count for c in chats if c.owner == main),
        "main_archived": sum(1 for c in chats if c.owner == main and c.archived),
        "heavy_conversations": [{"id": c.id, "messages": c.count} for c in heavy],
        "largest_tail_chat": max(c.count for c in chats[len(scale.heavy) :]),
        "median_chat": statistics.median(c.count for c in chats),
        **{k: int(v) for k, v in dict(sizes).items()},
    }


# -- serving and timing ------------------------------------------------------------------------


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def processes_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


async def postgres_pids(url: str) -> list[int]:
    """Every process of the PostgreSQL server (backends and background workers)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
        return [int(r["pid"]) for r in rows]
    finally:
        await conn.close()


class CpuWindow:
    """CPU used between `start()` and `stop()`: by us (this process and PostgreSQL) and by the
    rest of the machine, in % of one core; and the 1-minute load average at both ends."""

    def __init__(self, pg_pids: list[int]) -> None:
        self.pg_pids = pg_pids

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = machine_busy()
        self.own0 = time.process_time()
        self.pg0 = processes_cpu(self.pg_pids)
        self.load0 = os.getloadavg()[0]

    def stop(self, extra_own_s: float = 0.0) -> dict[str, float]:
        seconds = time.monotonic() - self.t0
        own = time.process_time() - self.own0
        pg = processes_cpu(self.pg_pids) - self.pg0
        busy = machine_busy() - self.busy0
        return {
            "seconds": seconds,
            "this_process_pct": 100 * own / seconds,
            "postgres_pct": 100 * pg / seconds,
            "others_pct": 100 * (busy - own - pg - extra_own_s) / seconds,
            "loadavg_start": self.load0,
            "loadavg_end": os.getloadavg()[0],
        }


def timing_middleware(samples: dict[str, list[float]]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            label = request.headers.get(LABEL_HEADER)
            if label:
                samples.setdefault(label, []).append(time.perf_counter() - started)

    return middleware


def bare_app(bodies: dict[str, Any], samples: dict[str, list[float]]) -> web.Application:
    """One aiohttp handler that encodes and returns a stored JSON body: the floor."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(bodies[request.match_info["name"]])

    app = web.Application(middlewares=[timing_middleware(samples)])
    app.router.add_get("/bare/{name}", handler)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Endpoint:
    label: str
    group: str  # "page", "search" or "bare"
    url: str
    headers: dict[str, str]
    client: list[float] = field(default_factory=list)
    bytes: int = 0
    items: int | None = None
    spent: float = 0.0
    done: bool = False


async def fetch(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[dict[str, Any], int]:
    async with http.get(url, headers=headers) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status} {body[:300]!r}")
    return json.loads(body), len(body)


def _quantiles(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    if len(ms) >= 2:
        q = statistics.quantiles(ms, n=100, method="inclusive")
        p50, p90, p99 = q[49], q[89], q[98]
    else:
        p50 = p90 = p99 = ms[0]
    return {
        "n": len(ms),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


async def measure(
    http: aiohttp.ClientSession,
    endpoints: list[Endpoint],
    samples: dict[str, list[float]],
    scale: Scale,
) -> None:
    # Warm-up: caches, prepared statements and their switch to a generic plan (after 5 runs).
    for ep in endpoints:
        started = time.perf_counter()
        for i in range(scale.warmup):
            body, size = await fetch(http, ep.url, ep.headers)
            ep.bytes = size
            items = body.get("items") if isinstance(body, dict) else None
            ep.items = len(items) if isinstance(items, list) else None
            if i >= 6 and time.perf_counter() - started > scale.budget_s / 4:
                break
    samples.clear()
    for _ in range(scale.requests):
        active = [ep for ep in endpoints if not ep.done]
        if not active:
            break
        for ep in active:
            headers = {**ep.headers, LABEL_HEADER: ep.label}
            t = time.perf_counter()
            async with http.get(ep.url, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            took = time.perf_counter() - t
            ep.client.append(took)
            ep.spent += took
            if ep.spent > scale.budget_s:
                ep.done = True


async def counts_for(url: str, owner: int, words: list[str]) -> dict[str, dict[str, int]]:
    """How many of the owner's messages (and chats) each word matches."""
    conn = await asyncpg.connect(url)
    try:
        out = {}
        for word in words:
            row = await conn.fetchrow(
                "SELECT count(*) AS messages, count(DISTINCT m.conversation_id) AS chats "
                "FROM messages m JOIN sessions s ON s.id = m.session_id "
                "WHERE s.owner_id = $1 AND m.text_content IS NOT NULL "
                "AND wagate_search_vector(m.text_content) @@ wagate_search_query($2)",
                owner,
                word,
            )
            names = await conn.fetchval(
                "SELECT count(*) FROM conversations c JOIN sessions s ON s.id = c.session_id "
                "WHERE s.owner_id = $1 AND to_tsvector('simple', coalesce(c.contact_name, '')) "
                "@@ websearch_to_tsquery('simple', $2)",
                owner,
                word,
            )
            out[word] = {
                "messages": int(row["messages"]),
                "chats": int(row["chats"]),
                "names": int(names),
            }
        return out
    finally:
        await conn.close()


# Search words: common, middling, rare (tail product), absent, and a contact's first name.
SEARCH_WORDS = ("pedido", "factura", "licuadora", "xilofono", "Valentina")


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("kv", "info" if args.verbose else "warning")
    scale = QUICK if args.quick else FULL
    log = logging.getLogger("bench.api_read")
    with tempfile.TemporaryDirectory(prefix="wagate-api-read-") as tmp:
        root = Path(tmp)
        async with BenchServer(root) as server:
            url = await server.database("api_read")
            loaded = await populate(url, scale, log)
            log.info("api_read: store loaded in %.0f s", loaded["seconds"])
            words = await counts_for(url, loaded["main_user"], list(SEARCH_WORDS))
            result = await _serve_and_measure(root, url, scale, loaded)
            result["store"] = loaded
            result["words"] = words
            result["postgres"] = await server.settings()
            result["postgres"]["server"] = server.description
    return result


async def _serve_and_measure(
    root: Path, url: str, scale: Scale, loaded: dict[str, Any]
) -> dict[str, Any]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=root / "var",
        database_url=url,
        secret_key="bench-secret-key-api-read-" + uuid.uuid4().hex,
        admin_email="admin@bench.example",
        admin_password="bench-admin-password",
        driver="fake",
        log_level="warning",
    )
    samples: dict[str, list[float]] = {}
    app = create_app(settings, database_url=url)
    app.middlewares.insert(0, timing_middleware(samples))
    runner, base = await serve(app)
    bare_bodies: dict[str, Any] = {}
    bare_runner, bare_base = await serve(bare_app(bare_bodies, samples))
    try:
        token, _ = app[TOKENS].issue(loaded["main_user"], "operator")
        auth = {"Authorization": f"Bearer {token}"}
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as http:
            api = f"{base}/api/v1"
            heavy = loaded["heavy_conversations"][0]["id"]
            first, _ = await fetch(http, f"{api}/conversations?limit=50", auth)
            cursor = first["next_cursor"]
            for _ in range(scale.deep_pages - 1):
                page, _ = await fetch(http, f"{api}/conversations?limit=50&cursor={cursor}", auth)
                cursor = page["next_cursor"]
            conn = await asyncpg.connect(url)
            try:
                deep_before = await conn.fetchval(
                    "SELECT id FROM messages WHERE conversation_id = $1 "
                    "ORDER BY sent_at DESC, id DESC OFFSET $2 LIMIT 1",
                    heavy,
                    scale.deep_messages,
                )
            finally:
                await conn.close()
            msgs, _ = await fetch(http, f"{api}/conversations/{heavy}/messages?limit=50", auth)
            bare_bodies["conversations"] = first
            bare_bodies["messages"] = msgs
            endpoints = [
                Endpoint(
                    "conversations, first page", "page", f"{api}/conversations?limit=50", auth
                ),
                Endpoint(
                    f"conversations, page {scale.deep_pages + 1}",
                    "page",
                    f"{api}/conversations?limit=50&cursor={cursor}",
                    auth,
                ),
                Endpoint(
                    "messages, newest page (largest chat)",
                    "page",
                    f"{api}/conversations/{heavy}/messages?limit=50",
                    auth,
                ),
                Endpoint(
                    f"messages, {scale.deep_messages:,} back (largest chat)",
                    "page",
                    f"{api}/conversations/{heavy}/messages?limit=50&before={deep_before}",
                    auth,
                ),
            ]
            for word in SEARCH_WORDS:
                endpoints.append(
                    Endpoint(
                        f"conversations?q={word}",
                        "search",
                        f"{api}/conversations?limit=50&q={word}",
                        auth,
                    )
                )
                endpoints.append(
                    Endpoint(f"search?q={word}", "search", f"{api}/search?q={word}", auth)
                )
            endpoints += [
                Endpoint(
                    "bare aiohttp, conversations-page body",
                    "bare",
                    f"{bare_base}/bare/conversations",
                    {},
                ),
                Endpoint(
                    "bare aiohttp, messages-page body", "bare", f"{bare_base}/bare/messages", {}
                ),
            ]
            window = CpuWindow(await postgres_pids(url))
            window.start()
            await measure(http, endpoints, samples, scale)
            cpu = window.stop()
    finally:
        await bare_runner.cleanup()
        await runner.cleanup()
    rows = []
    for ep in endpoints:
        rows.append(
            {
                "label": ep.label,
                "group": ep.group,
                "path": ep.url.split("127.0.0.1", 1)[1].split("/", 1)[1],
                "bytes": ep.bytes,
                "items": ep.items,
                "stopped_early": ep.done and len(ep.client) < scale.requests,
                "server": _quantiles(samples.get(ep.label, [])),
                "client": _quantiles(ep.client),
            }
        )
    return {
        "scale": scale.__dict__,
        "cpu": cpu,
        "endpoints": rows,
        "deep_before_id": deep_before,
        "targets": {"page_p99_ms": TARGET_PAGE_P99_MS, "search_p99_ms": TARGET_SEARCH_P99_MS},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(run_async(args))


def _verdict(row: dict[str, Any]) -> str:
    if row["group"] == "bare":
        return "(floor)"
    target = TARGET_PAGE_P99_MS if row["group"] == "page" else TARGET_SEARCH_P99_MS
    ok = row["server"]["p99_ms"] <= target
    return f"{'meets' if ok else 'MISSES'} {target:.0f}"


def report(result: dict[str, Any]) -> str:
    store = result["store"]
    lines = [
        f"## Read API latency ({store['main_conversations']:,} chats, "
        f"{store['messages']:,} messages)",
        "",
        f"Store: {store['messages']:,} messages, {store['conversations']:,} conversations, "
        f"{store['operators']} operators; the measured operator has "
        f"{store['main_conversations']:,} chats and {store['main_messages']:,} messages "
        f"(largest chat {store['heavy_conversations'][0]['messages']:,}). "
        f"Loaded in {store['seconds']:.0f} s.",
        "",
        "| endpoint | n | server p50 / p99 / max ms | client p50 / p99 ms | body | vs p99 target |",
        "| --- | ---: | --- | --- | ---: | --- |",
    ]
    for row in result["endpoints"]:
        s, c = row["server"], row["client"]
        lines.append(
            f"| {row['label']} | {s['n']} | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} / "
            f"{s['max_ms']:.2f} | {c['p50_ms']:.2f} / {c['p99_ms']:.2f} | "
            f"{row['bytes'] / 1024:.1f} KB | {_verdict(row)} |"
        )
    cpu = result["cpu"]
    lines += [
        "",
        f"Measured over {cpu['seconds']:.0f} s: CPU of this process "
        f"{cpu['this_process_pct']:.0f}%, PostgreSQL {cpu['postgres_pct']:.0f}%, "
        "everything else on the machine "
        f"{cpu['others_pct']:.0f}% (of one core); 1-minute load average "
        f"{cpu['loadavg_start']:.2f} -> {cpu['loadavg_end']:.2f}.",
    ]
    lines.append("")
    lines.append("Matches among the measured operator's messages (chats; names):")
    for word, found in result["words"].items():
        lines.append(
            f"- `{word}`: {found['messages']:,} messages in {found['chats']:,} chats; "
            f"{found['names']:,} names"
        )
    return "\n".join(lines)
