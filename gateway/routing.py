"""Routes declared with their pydantic models, so handlers and the OpenAPI document share them.

    router = ApiRouter("auth")

    @router.post("/api/v1/auth/login", body=LoginRequest, response=TokenResponse, auth="public")
    async def login(request: web.Request, body: LoginRequest) -> TokenResponse: ...

The wrapper parses and validates the JSON body and the query string (400 with the field errors
otherwise), enforces the role, and serializes the returned model. The same declarations feed
`gateway.openapi`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.errors import ApiError, Forbidden
from gateway.keys import REQUEST_USER, SETTINGS
from gateway.settings import max_body_bytes

Auth = Literal["public", "user", "admin"]
Endpoint = Callable[..., Awaitable[Any]]

_PATH_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    summary: str
    tag: str
    auth: Auth
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    errors: tuple[int, ...]
    operation_id: str
    form: type[BaseModel] | None = None  # documents a multipart/form-data alternative
    description: str = ""

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(part) for part in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


INT64_MAX = 2**63 - 1


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def unstorable(value: Any, loc: tuple[str, ...] = ()) -> tuple[tuple[str, ...], str] | None:
    """The first value PostgreSQL can not take (a NUL in text, an integer beyond 64 bits, a
    non-finite float), with where it is; None when all is well."""
    if isinstance(value, str):
        return (loc, "text may not contain the NUL character") if "\x00" in value else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (loc, "integer out of range") if abs(value) > INT64_MAX else None
    if isinstance(value, float):
        return None if math.isfinite(value) else (loc, "number must be finite")
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = unstorable(item, (*loc, str(key)))
        if found is not None:
            return found
    return None


def check_storable(data: Any, where: str) -> None:
    found = unstorable(data)
    if found is not None:
        loc, msg = found
        raise ApiError(
            400,
            f"the {where} is invalid",
            code="validation_error",
            details=[{"loc": list(loc), "msg": msg, "type": "value_error"}],
        )


async def read_json(request: web.Request) -> Any:
    limit = max_body_bytes(request.app[SETTINGS])
    if request.content_length and request.content_length > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes")
    raw = await request.read()
    if not raw:
        raise ApiError(400, "a JSON body is required", code="invalid_json")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc


def parse_model(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    check_storable(data, where)
    try:
        parsed = model.model_validate(data)
        check_storable(parsed.model_dump(), where)
        return parsed
    except ValidationError as exc:
        raise ApiError(
            400,
            f"the {where} is invalid",
            code="validation_error",
            details=validation_details(exc),
        ) from exc


def to_response(result: Any, status: int) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, BaseModel):
        return web.json_response(result.model_dump(mode="json"), status=status)
    if result is None:
        return web.Response(status=204 if status == 200 else status)
    return web.json_response(result, status=status)


class ApiRouter:
    """A RouteTableDef whose routes carry their models and auth level."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.table = web.RouteTableDef()
        self.specs: list[RouteSpec] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        auth: Auth = "user",
        errors: tuple[int, ...] = (),
        description: str = "",
        form: type[BaseModel] | None = None,
        owned: Callable[[web.Request], Awaitable[Any]] | None = None,
    ) -> Callable[[Endpoint], Endpoint]:
        """`owned`, when given, runs before the body is read: it raises 404 for an id in the
        path that is not the caller's, so another operator's id is a 404 whatever the body."""

        def decorate(fn: Endpoint) -> Endpoint:
            spec = RouteSpec(
                method=method.upper(),
                path=path,
                summary=summary,
                tag=self.tag,
                auth=auth,
                body=body,
                query=query,
                response=response,
                status=status,
                errors=errors,
                operation_id=fn.__name__,
                description=description or (fn.__doc__ or "").strip(),
                form=form,
            )

            @wraps(fn)
            async def handler(request: web.Request) -> web.StreamResponse:
                if spec.auth == "admin":
                    user = request.get(REQUEST_USER)
                    if user is None or not user.is_admin:
                        raise Forbidden("this needs an admin account")
                if owned is not None:
                    await owned(request)
                kwargs: dict[str, Any] = {}
                if spec.body is not None:
                    if spec.form is not None and request.content_type == "multipart/form-data":
                        kwargs["body"] = None  # the handler streams the parts itself
                    else:
                        kwargs["body"] = parse_model(spec.body, await read_json(request), "body")
                if spec.query is not None:
                    kwargs["query"] = parse_model(spec.query, dict(request.query), "query string")
                return to_response(await fn(request, **kwargs), spec.status)

            handler.wagate_auth = auth  # type: ignore[attr-defined]
            self.table.route(spec.method, path)(handler)
            self.specs.append(spec)
            return fn

        return decorate

    def get(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("DELETE", path, **kwargs)


def path_int(request: web.Request, name: str) -> int:
    """An integer path parameter; anything else is a 404 (no such resource)."""
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, f"no {name.removesuffix('_id')} {raw!r}")
    return int(raw)
