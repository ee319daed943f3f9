"""The webhook HTTP client against a real aiohttp server: kept-alive connections, answers it
does not read (chunked, large, `Connection: close`), a server that drops an idle connection."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from aiohttp import web

from gateway.targets import GuardedResolver
from gateway.webhook_http import Target, WebhookConnection, WebhookHttpError


@pytest.fixture
async def server(aiohttp_server: Any) -> Any:
    peers: list[Any] = []

    async def ok(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        assert request.headers["X-Test"] == "1"
        assert await request.read() == b'{"a":1}'
        return web.Response(status=201, text="created")

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=202)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"part")
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.Response:
        return web.Response(status=500, body=b"x" * 1_000_000)

    async def closing(request: web.Request) -> web.Response:
        return web.Response(status=410, headers={"Connection": "close"})

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()  # no answer at all
        return web.Response()

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/big", big)
    app.router.add_post("/close", closing)
    app.router.add_post("/drop", drop)
    srv = await aiohttp_server(app)
    srv.peers = peers
    return srv


def connection(server: Any, path: str) -> WebhookConnection:
    return WebhookConnection(
        f"http://127.0.0.1:{server.port}{path}",
        resolver=GuardedResolver(allow_private=True),
        tls=ssl.create_default_context(),
        user_agent="test",
    )


async def test_answers_of_every_shape(server: Any) -> None:
    ok = connection(server, "/ok")
    for _ in range(3):
        assert await ok.post({"X-Test": "1"}, b'{"a":1}', 5) == 201
    assert len(set(server.peers)) == 1  # one kept-alive connection
    for path, status in (("/chunked", 202), ("/big", 500), ("/close", 410)):
        conn = connection(server, path)
        assert await conn.post({}, b"{}", 5) == status
        assert await conn.post({}, b"{}", 5) == status  # on a new connection
        conn.close()
    ok.close()


async def test_a_dropped_request_is_an_error(server: Any) -> None:
    conn = connection(server, "/drop")
    with pytest.raises(WebhookHttpError, match="closed before an answer"):
        await conn.post({}, b"{}", 5)


async def test_a_stale_kept_alive_connection_is_replaced(server: Any) -> None:
    conn = connection(server, "/ok")
    assert await conn.post({"X-Test": "1"}, b'{"a":1}', 5) == 201
    assert conn._writer is not None
    conn._writer.transport.abort()  # as if the server had closed it while idle
    assert await conn.post({"X-Test": "1"}, b'{"a":1}', 5) == 201
    assert len(set(server.peers)) == 2
    conn.close()


def test_targets() -> None:
    t = Target.parse("https://Example.com/a%20b?x=1")
    assert (t.https, t.host, t.port, t.host_header, t.path) == (
        True,
        "example.com",
        443,
        "example.com",
        "/a%20b?x=1",
    )
    t = Target.parse("http://[2a00:1450::1]:8080")
    assert (t.host, t.port, t.host_header, t.path) == (
        "2a00:1450::1",
        8080,
        "[2a00:1450::1]:8080",
        "/",
    )


def self_signed(tmp_path: Any, name: str) -> tuple[str, str]:
    """A certificate for `name` (and its key) in PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


class LoopbackDns:
    """Every name is 127.0.0.1 (the test's HTTPS server)."""

    async def resolve(self, host: str, port: int = 0, family: Any = None) -> list[Any]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": 2}]

    async def close(self) -> None:
        pass


async def test_https_checks_the_certificate_and_the_name(
    aiohttp_server: Any, tmp_path: Any
) -> None:
    cert, key = self_signed(tmp_path, "hooks.example.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def ok(request: web.Request) -> web.Response:
        assert request.host.startswith("hooks.example.test")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", ok)
    srv = await aiohttp_server(app, ssl=server_tls)
    trusting = ssl.create_default_context(cafile=cert)

    def conn(name: str, tls: ssl.SSLContext) -> WebhookConnection:
        return WebhookConnection(
            f"https://{name}:{srv.port}/hook", resolver=LoopbackDns(), tls=tls, user_agent="t"
        )

    good = conn("hooks.example.test", trusting)
    assert await good.post({}, b"{}", 5) == 204
    assert await good.post({}, b"{}", 5) == 204
    good.close()
    for name, tls in (
        ("other.example.test", trusting),  # the certificate is not for this name
        ("hooks.example.test", ssl.create_default_context()),  # nor from a known CA
    ):
        with pytest.raises(WebhookHttpError, match="CERTIFICATE_VERIFY_FAILED"):
            await conn(name, tls).post({}, b"{}", 5)
