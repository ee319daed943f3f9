"""Schemathesis against the live `/openapi.json`: no 5xx, and every response fits its own schema.

One test sets up a realistic account first (an admin token, a linked session with chats of
several message types, an outbound text, a stored attachment, a second session still waiting for
its QR) so that generated requests reach real rows, not only 404s. Then every operation of the
document, `/api/v1/sim/*` included, is fuzzed by schemathesis through the test server on
127.0.0.1: positive and negative data, a fixed number of derandomized examples per operation and
mode, every response checked against the document. Schemathesis is synchronous (requests), and the
server runs on this test's event loop, so the fuzzing runs in a worker thread.

Path ids are drawn half from the ids that exist and half from whatever schemathesis makes up.
Before its random cases, each operation also gets the values random data seldom hits: every
string query parameter and JSON body property set to a string with U+0000, every integer one past
either end of int64, every number NaN or Infinity (which Python's json module reads), and
malformed JSON and multipart bodies.
Operations that end the linked session (stop, the phone unlinking or banning it, logout, delete)
run last, in that order, so that everything else is fuzzed against a connected account. Between
the two, a canary message from the phone must still arrive: fuzzed phone input (`/sim`) must not
have jammed the session's ingest.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.core.failures import FailureGroup

from gateway.settings import Settings
from sessions.fake_server import SimMessage
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.sessions_helpers import (
    Client,
    create_session,
    fast_settings,
    link,
    phone,
    text,
    wait_for,
    wait_state,
)

pytestmark = [
    pytest.mark.timeout(400),
    # schemathesis' negative generation calls `random` inside strategies; Hypothesis deprecates
    # that, and filterwarnings=error would make it a failure of the generator, not of the API.
    pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module inside strategies"
        ":hypothesis.errors.HypothesisDeprecationWarning"
    ),
]

# Random examples per operation and generation mode (positive, negative): with the edge values,
# about 3,500 requests, one to two minutes on two cores.
MAX_EXAMPLES = 50
# Operations that end or remove the linked session: fuzzed last, in this order. Nothing is
# excluded: each of these still gets its examples, against the real session first.
LAST = ("stop_session", "control", "logout_session", "delete_session")
# What every response is checked for. `not_a_server_error` and `response_schema_conformance` are
# the requirement; the others hold the rest of the document to its word (declared status
# codes, content types and headers, and bearer auth enforced where the document says it is).
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "ignored_auth",
)

ALICE = "+5215512345678"
BRUNO = "+5215587654321"
CARLA = "+5511987654321"
CANARY = "+5215500000042"
PHOTO = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(range(256)) * 4


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return fast_settings(tmp_path, db_url)


# -- the state to fuzz against ----------------------------------------------------------------


async def _get(client: Client, token: str, path: str) -> Any:
    resp = await client.get(path, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def seed(client: Client, token: str, settings: Settings) -> dict[str, list[int]]:
    """A linked session with chats, inbound and outbound messages and a stored attachment, and a
    second session waiting for its QR code. Returns the ids that exist, by path parameter."""
    sid = await link(client, token, settings)
    p = phone(settings, sid)
    p.send(
        text(ALICE, "Where are my shipped packages?", push_name="Alice"),
        text(BRUNO, "¿Dónde están mis pedidos?", push_name="Bruno"),
        text(CARLA, "Preciso das minhas encomendas", push_name="Carla"),
    )
    p.send(
        SimMessage.model_validate({"type": "image", "from": ALICE, "caption": "a photo"}),
        SimMessage.model_validate({"type": "location", "from": BRUNO, "lat": 19.4, "lng": -99.1}),
        SimMessage.model_validate({"type": "poll", "from": CARLA, "options": ["yes", "no"]}),
    )

    async def chats() -> list[dict[str, Any]] | None:
        items = (await _get(client, token, "/api/v1/conversations"))["items"]
        return items if len(items) >= 3 else None

    conversation_ids = sorted(c["id"] for c in await wait_for(chats, what="three conversations"))
    url = f"/api/v1/conversations/{conversation_ids[0]}/messages"
    resp = await client.post(url, json={"text": "on its way"}, headers=bearer(token))
    assert resp.status == 202, await resp.text()
    outbound = [(await resp.json())["id"]]
    form = aiohttp.FormData()
    form.add_field("file", PHOTO, filename="photo.jpg", content_type="image/jpeg")
    form.add_field("text", "the package")
    resp = await client.post(url, data=form, headers=bearer(token))
    assert resp.status == 202, await resp.text()
    outbound.append((await resp.json())["id"])

    async def all_messages() -> list[int] | None:
        ids: list[int] = []
        for cid in conversation_ids:
            page = await _get(client, token, f"/api/v1/conversations/{cid}/messages")
            ids += [m["id"] for m in page["items"]]
        return ids if len(ids) >= 8 else None

    inbound = sorted(set(await wait_for(all_messages, what="eight messages")) - set(outbound))
    waiting = await create_session(client, token, "second")
    await wait_state(client, token, waiting, "qr_required")
    # The first of each is the one the edge values go to: the linked session, the chat with
    # the account's own messages, its own text message (which it may edit and delete).
    return {
        "session_id": [sid, waiting],
        "conversation_id": conversation_ids,
        "message_id": outbound + inbound,
    }


async def canary_arrives(client: Client, token: str, settings: Settings, sid: int) -> bool:
    """Whether a message the phone sends now is still stored and listed."""
    phone(settings, sid).send(text(CANARY, "canary", push_name="Canary"))

    async def arrived() -> bool:
        page = await _get(client, token, "/api/v1/conversations?limit=200")
        return any(c["external_id"].startswith(CANARY[1:]) for c in page["items"])

    try:
        await wait_for(arrived, timeout=20, what="the canary message")
    except AssertionError:
        return False
    return True


# -- what the fuzzer reports ------------------------------------------------------------------


@dataclass
class Finding:
    operation: str
    kind: str
    title: str
    status: int | None
    request_id: str | None
    reproduce: str
    detail: str
    count: int = 1

    def render(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        return "\n".join(
            [
                f"* {self.operation}: {self.title} [{self.kind}] ({status}, seen {self.count}x, "
                f"X-Request-ID {self.request_id})",
                f"  {self.reproduce}",
                "  " + self.detail.strip().replace("\n", "\n  "),
            ]
        )


@dataclass
class Report:
    findings: dict[tuple[str, ...], Finding] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)

    def add(self, key: tuple[str, ...], make: Callable[[], Finding]) -> None:
        if key in self.findings:
            self.findings[key].count += 1
        else:
            self.findings[key] = make()

    def describe(self) -> str:
        total = sum(self.requests.values())
        head = f"{len(self.findings)} distinct problem(s) in {total} requests:"
        return "\n\n".join([head, *(f.render() for f in self.findings.values())])


def _operation_id(operation: Any) -> str:
    return str(operation.definition.raw.get("operationId", operation.label))


def _header(headers: Any, name: str) -> str | None:
    for key, value in dict(headers).items():
        if key.lower() == name.lower():
            return str(value[0] if isinstance(value, list) else value)
    return None


def load_operations(base_url: str) -> tuple[list[Any], dict[str, Any]]:
    # An explicit config: nothing from a schemathesis.toml or the environment; and reproductions
    # shown as sent (the default sanitizer hides `session_id` and `password` values).
    config = schemathesis.Config.from_dict({"output": {"sanitization": {"enabled": False}}})
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config, timeout=10)
    return [result.ok() for result in schema.get_all_operations()], schema.raw_schema


# -- edge values: what random data seldom hits, sent on purpose -----------------------------------

NUL = "nul\x00byte"  # PostgreSQL text and jsonb can not hold U+0000
INT64 = (2**63, -(2**63) - 1)  # one past each end of bigint
# Python's json module reads and writes these; JSON has no such values.
NON_FINITE = (math.nan, math.inf)


def _types(schema: dict[str, Any]) -> set[str]:
    found = {schema["type"]} if isinstance(schema.get("type"), str) else set()
    for alternative in schema.get("anyOf", []) + schema.get("oneOf", []):
        found |= _types(alternative)
    return found


def _resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _items(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any] | None:
    for alternative in [schema, *schema.get("anyOf", [])]:
        if "items" in alternative:
            return _resolve(alternative["items"], document)
    return None


def edge_values(schema: dict[str, Any], document: dict[str, Any]) -> list[Any]:
    """Values of this schema's type that random generation seldom produces."""
    schema = _resolve(schema, document)
    types = _types(schema)
    values: list[Any] = []
    if "string" in types and "enum" not in schema:
        values.append(NUL)
    if "integer" in types:
        values.extend(INT64)
    if "number" in types:
        values.extend(NON_FINITE)
    items = _items(schema, document)
    if "array" in types and items is not None:
        values.extend([value] for value in edge_values(items, document))
    return values


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def body_edges(body: Any, schema: dict[str, Any], document: dict[str, Any]) -> list[Any]:
    """Copies of a JSON object body, each with one property (or one property of the first item
    of an array of objects) set to an edge value."""
    schema = _resolve(schema, document)
    base = dict(body) if isinstance(body, dict) else {}
    out: list[Any] = []
    for prop, prop_schema in schema.get("properties", {}).items():
        for value in edge_values(prop_schema, document):
            out.append({**base, prop: value})
        items = _items(_resolve(prop_schema, document), document)
        if items is not None and "properties" in items:
            first = base.get(prop) or [{}]
            head = first[0] if isinstance(first[0], dict) else {}
            for inner in body_edges(head, items, document):
                out.append({**base, prop: [inner, *first[1:]]})
    return out


def _shell_bytes(data: bytes) -> str:
    """`data` as a bash $'...' word."""
    text = "".join(chr(b) if 32 <= b < 127 and chr(b) not in "'\\" else f"\\x{b:02x}" for b in data)
    return f"$'{text}'"


# How reproductions show the bearer token.
SHOWN_HEADERS = {"Authorization": "Bearer $TOKEN"}


# -- the fuzzer (runs in a thread) --------------------------------------------------------------


class Fuzzer:
    """Sends cases through one HTTP session, checks each answer, collects distinct failures."""

    def __init__(
        self, base_url: str, token: str, ids: dict[str, list[int]], document: dict[str, Any]
    ) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ids = ids
        self.document = document
        self.checks = [getattr(checks, name) for name in CHECKS]
        self.report = Report()
        self.http = requests.Session()

    def close(self) -> None:
        self.http.close()

    def _finding(self, operation: Any, kind: str, title: str, **fields: Any) -> Finding:
        return Finding(
            operation=f"{_operation_id(operation)} ({operation.label})",
            kind=kind,
            title=title,
            **fields,
        )

    def check(
        self,
        case: Any,
        response: Any = None,
        reproduce: str | None = None,
        sent_as: str | None = None,
    ) -> None:
        """Send `case` (unless its `response` is given: then `reproduce` and `sent_as`, the
        request's Content-Type, tell what was sent instead) and check the answer."""
        operation = case.operation
        name = _operation_id(operation)
        self.report.requests[name] = self.report.requests.get(name, 0) + 1
        media = sent_as or case.media_type or "-"
        reproduce = reproduce or case.as_curl_command(headers=SHOWN_HEADERS)
        if response is None:
            try:
                response = case.call(
                    base_url=self.base_url, session=self.http, headers=self.headers, timeout=60
                )
            except requests.RequestException as exc:
                self.report.add(
                    (name, "network", media),
                    lambda error=exc: self._finding(
                        operation,
                        type(error).__name__,
                        "no answer",
                        status=None,
                        request_id=None,
                        reproduce=reproduce,
                        detail=str(error),
                    ),
                )
                return
        transport = {
            "base_url": self.base_url,
            "session": self.http,
            "headers": self.headers,
            "timeout": 60,
        }
        try:
            case.validate_response(
                response, checks=self.checks, headers=self.headers, transport_kwargs=transport
            )
        except FailureGroup as group:
            server_error = response.status_code >= 500
            for failure in group.exceptions:
                kind = type(failure).__name__
                if server_error and kind == "UndefinedStatusCode":
                    continue  # the same 5xx, reported once as a server error
                # 5xx are told apart by the request's media type (JSON or multipart body);
                # other failures by their title (which names the schema or status problem).
                self.report.add(
                    (name, kind, media if server_error else failure.title),
                    lambda failure=failure, kind=kind: self._finding(
                        operation,
                        kind,
                        failure.title,
                        status=response.status_code,
                        request_id=_header(response.headers, "X-Request-ID"),
                        reproduce=reproduce,
                        detail=(response.text or "")[:500] + "\n" + failure.message[:1500],
                    ),
                )

    def _run(self, strategy: Any, test: Callable[[Any], None], examples: int) -> None:
        def one_case(case: Any) -> None:
            test(case)

        hypothesis_settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],  # failures are collected, not raised
            suppress_health_check=list(HealthCheck),
        )(given(case=strategy)(one_case))()

    def fuzz(self, operation: Any) -> None:
        """Random positive and negative cases; half the positive ones on ids that exist."""
        params = [p.name for p in operation.path_parameters]
        known = self.ids.get(params[0], []) if params else []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            if known and mode is GenerationMode.POSITIVE:
                fixed = {
                    value: operation.as_strategy(
                        generation_mode=mode, path_parameters={params[0]: value}
                    )
                    for value in known
                }
                strategy = st.one_of(strategy, st.sampled_from(known).flatmap(fixed.__getitem__))
            try:
                self._run(strategy, self.check, MAX_EXAMPLES)
            except Unsatisfiable:
                # Negative data needs something to break (parameters or a body); without any,
                # there is nothing to generate.
                if mode is not GenerationMode.NEGATIVE:
                    raise

    def edges(self, operation: Any) -> None:
        """One valid case (on an id that exists), then the same with each query parameter and
        each JSON body property set in turn to each edge value; and malformed bodies."""
        params = [p.name for p in operation.path_parameters]
        path = {p: self.ids[p][0] for p in params if self.ids.get(p)}
        raw = operation.definition.raw
        content = raw.get("requestBody", {}).get("content", {})
        media = "application/json" if "application/json" in content else None
        strategy = operation.as_strategy(path_parameters=path or None, media_type=media)
        self._run(strategy, self._edges_of, 1)

    def _edges_of(self, base: Any) -> None:
        operation = base.operation
        raw = operation.definition.raw
        url = f"{self.base_url}{base.formatted_path}"
        raw_bodies: list[tuple[str, bytes]] = []

        def variant(**changes: Any) -> Any:
            fields = {
                "path_parameters": dict(base.path_parameters or {}),
                "query": dict(base.query or {}),
                "media_type": base.media_type,
            }
            if base.media_type is not None:
                fields["body"] = base.body
            return operation.Case(**{**fields, **changes})

        for param in raw.get("parameters", []):
            if param["in"] == "query":
                for value in edge_values(param["schema"], self.document):
                    self.check(variant(query={**(base.query or {}), param["name"]: value}))
        content = raw.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            schema = content["application/json"]["schema"]
            for body in body_edges(base.body, schema, self.document):
                if _finite(body):
                    self.check(variant(body=body))
                else:  # neither requests nor schemathesis send NaN: as raw bytes
                    raw_bodies.append(("application/json", json.dumps(body).encode()))
        malformed = []
        if "application/json" in content:
            malformed.append(("application/json", b'{"unterminated": '))
        if "multipart/form-data" in content:
            malformed += [
                ("multipart/form-data; boundary=wagate", b"no boundary line at all"),
                ("multipart/form-data", b"--x\r\n\r\nno boundary parameter\r\n--x--\r\n"),
                (
                    "multipart/form-data; boundary=wagate",
                    b'--wagate\r\nContent-Disposition: form-data; name="\x01"\r\n\r\n'
                    b"control character in a part header\r\n--wagate--\r\n",
                ),
            ]
        for content_type, data in raw_bodies + malformed:
            headers = {**self.headers, "Content-Type": content_type}
            try:
                response = self.http.request(
                    operation.method.upper(), url, data=data, headers=headers, timeout=60
                )
            except requests.RequestException:
                continue  # reported through the random cases' network findings, if any
            reproduce = (
                f"curl -X {operation.method.upper()} -H 'Authorization: Bearer $TOKEN' "
                f"-H 'Content-Type: {content_type}' --data-binary {_shell_bytes(data)} {url}"
            )
            sent_as = f"raw {content_type}"
            self.check(variant(), response=response, reproduce=reproduce, sent_as=sent_as)
            if response.status_code < 400:  # none of these bodies is valid: a 4xx is due
                self.report.add(
                    (_operation_id(operation), "AcceptedInvalidBody", sent_as),
                    lambda response=response, reproduce=reproduce: self._finding(
                        operation,
                        "AcceptedInvalidBody",
                        "a body that is not valid JSON or multipart was accepted",
                        status=response.status_code,
                        request_id=_header(response.headers, "X-Request-ID"),
                        reproduce=reproduce,
                        detail=response.text[:500],
                    ),
                )


def fuzz(
    base_url: str,
    token: str,
    ids: dict[str, list[int]],
    document: dict[str, Any],
    operations: list[Any],
) -> Report:
    """Each operation in order: its edge values, then random cases."""
    fuzzer = Fuzzer(base_url, token, ids, document)
    try:
        for operation in operations:
            fuzzer.edges(operation)  # first, while the state is as seeded
            fuzzer.fuzz(operation)
    finally:
        fuzzer.close()
    return fuzzer.report


# -- the test ------------------------------------------------------------------------------


async def test_the_api_conforms_to_its_openapi_document(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    ids = await seed(client, token, settings)
    base_url = str(client.make_url("")).rstrip("/")
    set_hypothesis_home_dir(tmp_path / "hypothesis")  # not .hypothesis/ in the work tree
    try:
        operations, document = await asyncio.to_thread(load_operations, base_url)
        names = [_operation_id(op) for op in operations]
        assert set(LAST) <= set(names), names
        assert any(name.startswith("send") for name in names), "no /sim routes in the document"
        first = [op for op in operations if _operation_id(op) not in LAST]
        last = sorted(
            (op for op in operations if _operation_id(op) in LAST),
            key=lambda op: LAST.index(_operation_id(op)),
        )
        started = time.monotonic()
        report = await asyncio.to_thread(fuzz, base_url, token, ids, document, first)
        linked = ids["session_id"][0]
        ingest_ok = await canary_arrives(client, token, settings, linked)
        report_last = await asyncio.to_thread(fuzz, base_url, token, ids, document, last)
        elapsed = time.monotonic() - started
    finally:
        set_hypothesis_home_dir(None)
    report.findings.update(report_last.findings)
    report.requests.update(report_last.requests)
    print(f"schemathesis: {sum(report.requests.values())} requests in {elapsed:.0f} s")
    assert set(report.requests) == set(names)
    problems = [report.describe()] if report.findings else []
    if not ingest_ok:
        problems.append(
            "after fuzzing, a message from the phone of session "
            f"{linked} no longer arrives: some fuzzed /api/v1/sim input jammed its ingest "
            "or its simulated phone (see the 'connect failed', 'storing events failed' or "
            "'broken IPC stream' lines in the log)"
        )
    assert not problems, "\n\n".join(problems)
