"""Where media bytes come from: data URLs, allowed local files, allowed http(s) hosts.

Every source is refused unless the caller allowed it, and every failure is a ValueError that names
the URL or path, so a server can answer 400 with the message.
"""

from __future__ import annotations

import base64
import binascii
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0


def parse_data_url(url: str, expected_type: str) -> tuple[str, bytes]:
    """Decode a ``data:<mime>;base64,<payload>`` URL.

    Args:
        url: The data URL.
        expected_type: Top-level MIME type the payload must have, e.g. ``"image"``.

    Returns:
        ``(mime, payload_bytes)``.

    Raises:
        ValueError: Malformed URL, a MIME type other than ``expected_type/*``, a payload that is
            not base64, or bad base64.
    """
    header, sep, payload = url.partition(",")
    if not header.startswith("data:") or not sep:
        raise ValueError(f"malformed data URL (expected 'data:<mime>;base64,<data>'): {url[:64]!r}")
    params = header[len("data:") :].split(";")
    mime = params[0].strip().lower()
    if not mime.startswith(expected_type + "/"):
        raise ValueError(
            f"data URL has MIME type {mime or '(none)'!r}, expected {expected_type}/* data"
        )
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise ValueError(f"data URL of {mime} must be base64-encoded (';base64,' missing)")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"data URL of {mime} holds invalid base64: {e}") from None
    if not data:
        raise ValueError(f"data URL of {mime} is empty")
    return mime, data


def resolve_local_path(path: str | os.PathLike, allowed_local_media_path: str | None) -> str:
    """Resolve ``path`` (symlinks and ``..`` included) and check it lies under the allowed dir.

    Relative paths are taken relative to ``allowed_local_media_path``.

    Args:
        path: A local path, or the path part of a ``file://`` URL.
        allowed_local_media_path: Directory local media may be read from; None refuses all.

    Returns:
        The resolved real path of an existing regular file inside the allowed directory.

    Raises:
        ValueError: Local media disabled, path outside the directory, missing, or not a file.
    """
    path = os.fspath(path)
    if allowed_local_media_path is None:
        raise ValueError(
            f"cannot read local file {path!r}: local media is disabled "
            "(set allowed_local_media_path to a directory to allow it)"
        )
    root = os.path.realpath(allowed_local_media_path)
    if not os.path.isdir(root):
        raise ValueError(
            f"allowed_local_media_path {allowed_local_media_path!r} is not a directory"
        )
    resolved = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, resolved]) != root:
        raise ValueError(
            f"local path {path!r} resolves to {resolved!r}, outside the allowed media "
            f"directory {root!r}"
        )
    if not os.path.exists(resolved):
        raise ValueError(f"local file {path!r} does not exist")
    if not os.path.isfile(resolved):
        raise ValueError(f"local path {path!r} is not a regular file")
    return resolved


def read_local_file(
    path: str | os.PathLike,
    allowed_local_media_path: str | None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """Read an allowed local file (see ``resolve_local_path``), at most ``max_bytes`` long."""
    resolved = resolve_local_path(path, allowed_local_media_path)
    with open(resolved, "rb") as f:  # the resolved path: a swapped symlink cannot redirect it
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"local file {os.fspath(path)!r} is larger than {max_bytes} bytes")
    return data


def file_url_path(url: str) -> str:
    """The local path of a ``file://`` URL (host must be empty or ``localhost``)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"file URL {url!r} names a remote host {parsed.netloc!r}")
    return urllib.parse.unquote(parsed.path)


def _check_host(url: str, allowed_domains: Collection[str]) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"URL scheme {parsed.scheme!r} is not allowed (http/https only): {url!r}")
    host = (parsed.hostname or "").lower()
    allowed = {d.lower() for d in allowed_domains}
    if host not in allowed:
        raise ValueError(
            f"fetching from host {host!r} is not allowed ({url!r}); allowed domains: "
            f"{sorted(allowed) if allowed else 'none'}"
        )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed host, so a redirect cannot escape the allow-list."""

    def __init__(self, allowed_domains: Collection[str]):
        super().__init__()
        self.allowed_domains = allowed_domains

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_host(newurl, self.allowed_domains)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_url(
    url: str,
    allowed_domains: Collection[str],
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bytes:
    """Download an http(s) URL whose host (and every redirect's host) is in ``allowed_domains``.

    Args:
        url: ``http://`` or ``https://`` URL.
        allowed_domains: Host names allowed, matched exactly (case-insensitive).
        max_bytes: Largest body accepted.
        timeout_s: Socket timeout for connecting and each read.

    Returns:
        The response body.

    Raises:
        ValueError: Host not allowed, body larger than ``max_bytes``, HTTP or network error.
    """
    _check_host(url, allowed_domains)
    opener = urllib.request.build_opener(_CheckedRedirects(allowed_domains))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ValueError(
                    f"{url!r} declares {declared} bytes, more than the limit of {max_bytes}"
                )
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise ValueError(f"fetching {url!r} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(f"fetching {url!r} failed: {reason}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{url!r} returned more than the limit of {max_bytes} bytes")
    return data
