"""The OpenAPI 3.1 document, built from the routes' own pydantic models, and the /docs page.

The docs page is Swagger UI served from the `swagger-ui-bundle` package: no CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.models import ErrorResponse
from gateway.routing import RouteSpec

_REF = "#/components/schemas/{model}"

_ERROR_TEXT = {
    400: "Invalid JSON, or a body or query string that fails validation",
    401: "Missing, invalid or expired bearer token",
    403: "The account's role does not allow this",
    404: "No such resource (or not yours)",
    409: "Conflicts with the current state",
    413: "Body too large",
    429: "Too many attempts; see Retry-After",
    503: "Not ready",
}


def build_openapi(specs: list[RouteSpec], *, version: str) -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorResponse}
    for spec in specs:
        for model in (spec.body, spec.response, spec.form):
            if model is not None:
                models.add(model)
    names = sorted(m.__name__ for m in models)
    clashes = {n for n in names if names.count(n) > 1}
    if clashes:
        raise ValueError(f"two API models share a name (rename one): {sorted(clashes)}")
    mode: Literal["validation"] = "validation"
    keyed = [(m, mode) for m in sorted(models, key=lambda m: m.__name__)]
    refs, schema = models_json_schema(keyed, ref_template=_REF)
    components = schema.get("$defs", {})

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return refs[(model, "validation")]

    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        op: dict[str, Any] = {
            "operationId": spec.operation_id,
            "summary": spec.summary,
            "tags": [spec.tag],
        }
        if spec.description:
            op["description"] = spec.description
        params: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "integer"} if name.endswith("id") else {"type": "string"},
            }
            for name in spec.path_params
        ]
        if spec.query is not None:
            query_schema = spec.query.model_json_schema(ref_template=_REF)
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                param: dict[str, Any] = {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "schema": {k: v for k, v in prop.items() if k != "title"},
                }
                if "description" in prop:
                    param["description"] = prop["description"]
                params.append(param)
        if params:
            op["parameters"] = params
        if spec.body is not None:
            content: dict[str, Any] = {"application/json": {"schema": ref(spec.body)}}
            if spec.form is not None:
                content["multipart/form-data"] = {"schema": ref(spec.form)}
            op["requestBody"] = {"required": True, "content": content}
        responses: dict[str, Any] = {}
        if spec.response is not None:
            responses[str(spec.status)] = {
                "description": "OK",
                "content": {"application/json": {"schema": ref(spec.response)}},
            }
        else:
            responses[str(spec.status)] = {"description": "OK"}
        errors = set(spec.errors)
        if spec.body is not None or spec.query is not None:
            errors.add(400)
        if spec.body is not None:
            errors.add(413)  # any body over WAGATE_MAX_BODY_MB (`read_json`)
        if spec.auth != "public":
            errors.add(401)
        if spec.auth == "admin":
            errors.add(403)
        for status in sorted(errors):
            responses[str(status)] = {
                "description": _ERROR_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": ref(ErrorResponse)}},
            }
        op["responses"] = responses
        if spec.auth != "public":
            op["security"] = [{"bearerAuth": []}]
        paths.setdefault(spec.path, {})[spec.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wagate",
            "version": version,
            "description": "Self-hosted WhatsApp gateway: REST API. Errors are always "
            '`{"error": {"code", "message", "details"?}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def swagger_ui_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>wagate API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script src="/docs/static/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

DOCS_INIT_JS = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "BaseLayout"
});
"""


def add_docs_routes(app: web.Application, document: dict[str, Any]) -> None:
    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(document)

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=DOCS_HTML, content_type="text/html")

    async def docs_init(request: web.Request) -> web.Response:
        return web.Response(text=DOCS_INIT_JS, content_type="application/javascript")

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_get("/docs/init.js", docs_init)
    app.router.add_static("/docs/static", swagger_ui_dir(), follow_symlinks=False)
