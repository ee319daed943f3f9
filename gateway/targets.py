"""Where the gateway may send requests on an operator's behalf (webhooks, AI model endpoints):
http(s) URLs whose host is public, unless the matching setting allows private targets. Checked
when a URL is saved, again before every request, and once more on the resolved addresses, so a
name that resolves to a private address (DNS rebinding) is caught too."""

from __future__ import annotations

import functools
import ipaddress
import re
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL


class UrlRefused(ValueError):
    """This URL may not be a webhook target."""


def refused_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local, shared, reserved, multicast or unspecified."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(
    url: str, *, allow_private: bool, setting: str = "WAGATE_WEBHOOKS_ALLOW_PRIVATE"
) -> str:
    """The URL as it will be used, or `UrlRefused` with the reason (`setting` names the switch
    that would allow a private target)."""
    try:
        parsed = URL(url.strip())
    except ValueError as exc:
        raise UrlRefused(f"not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused("only http:// and https:// URLs are allowed")
    host = parsed.raw_host
    if not host or not parsed.is_absolute():
        raise UrlRefused("the URL needs a host")
    if parsed.user is not None or parsed.password is not None:
        raise UrlRefused("credentials in the URL are not allowed (verify the signature instead)")
    if parsed.explicit_port is not None and not 0 < parsed.explicit_port < 65536:
        raise UrlRefused("the port must be between 1 and 65535")
    if not _is_ip(host) and not _HOSTNAME.match(host.rstrip(".")):
        raise UrlRefused(f"{host!r} is not a valid host name")
    refusal = host_refusal(host, allow_private=allow_private, setting=setting)
    if refusal is not None:
        raise UrlRefused(refusal)
    return str(parsed.with_fragment(None))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


_HOSTNAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$", re.I)


def host_refusal(
    host: str, *, allow_private: bool, setting: str = "WAGATE_WEBHOOKS_ALLOW_PRIVATE"
) -> str | None:
    """Why a literal host may not be reached (None: it may, or it is a name to resolve)."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None:
        try:
            socket.inet_aton(host)  # 127.1, 2130706433, 0x7f000001: addresses in disguise
        except OSError:
            pass
        else:
            return f"{host} is not a canonical IP address"
        if allow_private:
            return None
        if host == "localhost" or host.endswith(".localhost"):
            return f"{host} is a loopback name ({setting} is off)"
        return None
    if not allow_private and refused_address(ip):
        return f"{host} is a private, loopback or link-local address ({setting} is off)"
    return None


@functools.lru_cache(maxsize=1024)
def url_refusal(
    url: str, *, allow_private: bool, setting: str = "WAGATE_WEBHOOKS_ALLOW_PRIVATE"
) -> str | None:
    """`host_refusal` of a URL's host (checked again before every delivery: the setting may
    have changed since the webhook was saved)."""
    return host_refusal(URL(url).raw_host or "", allow_private=allow_private, setting=setting)


class GuardedResolver(AbstractResolver):
    """DNS for requests to operators' URLs (webhooks, AI model endpoints): only public addresses
    come back (unless private ones are allowed), so the connection goes exactly where the check
    looked."""

    def __init__(
        self,
        *,
        allow_private: bool,
        inner: AbstractResolver | None = None,
        setting: str = "WAGATE_WEBHOOKS_ALLOW_PRIVATE",
    ) -> None:
        self._allow_private = allow_private
        self._setting = setting
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return found
        kept = [r for r in found if not refused_address(ipaddress.ip_address(r["host"]))]
        if not kept:
            raise OSError(
                f"{host} resolves only to private, loopback or link-local addresses "
                f"({self._setting} is off)"
            )
        return kept

    async def close(self) -> None:
        await self._inner.close()
