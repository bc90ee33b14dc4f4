"""Fetching media from http(s) URLs without letting a URL reach the server's own network (SSRF).

Like vLLM, any public host may be fetched by default. A host is refused when it resolves to a
loopback, private, link-local (cloud metadata: 169.254.169.254), carrier-grade NAT, multicast,
reserved or unspecified address. The check runs after DNS resolution and again on every redirect,
and the connection goes to the address that was checked (no second lookup a rebinding DNS server
could answer differently). ``allowed_domains`` narrows fetching to the hosts listed; listing a
host is also the operator's statement of trust in it, so a listed host may resolve to a private
address (an internal image store, or 127.0.0.1 in tests).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Collection
from urllib.parse import urljoin, urlsplit

DEFAULT_MAX_REDIRECTS = 5
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_USER_AGENT = "mmcore-media-fetch"


def _address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be fetched from, or None when it is a public unicast address."""
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    for attribute, what in (
        ("is_unspecified", "an unspecified"),
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local (cloud metadata)"),
        ("is_multicast", "a multicast"),
        ("is_reserved", "a reserved"),
        ("is_private", "a private"),
    ):
        if getattr(ip, attribute):
            return f"{what} address"
    if not ip.is_global:
        return "a non-public address"
    return None


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve image host {host!r}: {exc.strerror}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def checked_address(url: str, allowed_domains: Collection[str]) -> tuple[str, str]:
    """Check one URL against the policy and resolve it.

    Args:
        url: an ``http://`` or ``https://`` URL.
        allowed_domains: hosts that may be fetched (empty: any public host); a listed host may
            resolve to a private address.

    Returns:
        ``(host, address)``: the host name and the checked IP address to connect to.

    Raises:
        ValueError: bad scheme, host not allowed, or an address that is not public.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"URL scheme {parts.scheme!r} is not allowed (http/https only): {url!r}")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise ValueError(f"URL {url!r} has no host")
    allowed = {d.lower().rstrip(".") for d in allowed_domains}
    if allowed and host not in allowed:
        raise ValueError(
            f"fetching from host {host!r} is not allowed ({url!r}); allowed domains: "
            f"{sorted(allowed)} (--allowed-media-domains)"
        )
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise ValueError(f"URL {url!r} has an invalid port") from None
    addresses = _resolve(host, port)
    if not addresses:
        raise ValueError(f"image host {host!r} has no address")
    if host not in allowed:
        for address in addresses:
            problem = _address_problem(ipaddress.ip_address(address.split("%")[0]))
            if problem is not None:
                raise ValueError(
                    f"fetching from host {host!r} is not allowed: it resolves to {address}, "
                    f"{problem} ({url!r}); list the host in --allowed-media-domains to trust it"
                )
    return host, addresses[0]


def _pinned_url(url: str, address: str) -> str:
    """``url`` with its host replaced by the checked address (the Host header keeps the name)."""
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def fetch_url(
    url: str,
    allowed_domains: Collection[str] = (),
    max_bytes: int = 64 << 20,
    timeout_s: float = 10.0,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
) -> bytes:
    """Download an http(s) URL that passes :func:`checked_address`, as does every redirect.

    Args:
        url: ``http://`` or ``https://`` URL.
        allowed_domains: hosts that may be fetched (empty: any public host).
        max_bytes: largest body accepted.
        timeout_s: time limit of the whole fetch, redirects included.
        max_redirects: most redirects followed.

    Returns:
        The response body.

    Raises:
        ValueError: a refused host or address, too many redirects, a body over ``max_bytes``,
            a timeout, or an HTTP or network error.
    """
    import httpx2

    deadline = time.monotonic() + timeout_s
    # trust_env=False: no proxy from the environment, so the checked address is the one used.
    with httpx2.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for _ in range(max_redirects + 1):
            host, address = checked_address(url, allowed_domains)
            port = urlsplit(url).port
            host_header = host if port is None else f"{host}:{port}"
            try:
                with client.stream(
                    "GET",
                    _pinned_url(url, address),
                    headers={"Host": host_header, "User-Agent": _USER_AGENT},
                    extensions={"sni_hostname": host},
                ) as response:
                    if response.status_code in _REDIRECT_CODES:
                        location = response.headers.get("location")
                        if not location:
                            raise ValueError(f"{url!r} redirects without a Location header")
                        url = urljoin(url, location)
                        continue
                    if response.status_code >= 400:
                        raise ValueError(
                            f"fetching {url!r} failed: HTTP {response.status_code} "
                            f"{response.reason_phrase}"
                        )
                    return _read_limited(response, url, max_bytes, deadline)
            except httpx2.TimeoutException:
                raise ValueError(f"fetching {url!r} timed out after {timeout_s} s") from None
            except httpx2.HTTPError as exc:
                raise ValueError(f"fetching {url!r} failed: {exc}") from None
    raise ValueError(f"fetching {url!r} took more than {max_redirects} redirects")


def _read_limited(response, url: str, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ValueError(f"{url!r} declares {declared} bytes, more than the limit of {max_bytes}")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ValueError(f"{url!r} returned more than the limit of {max_bytes} bytes")
        if time.monotonic() > deadline:  # a server trickling bytes cannot hold a worker
            raise ValueError(f"fetching {url!r} took longer than the time limit")
        chunks.append(chunk)
    return b"".join(chunks)
