"""Where media bytes come from: data URLs, allowed local files, http(s) URLs.

Local files are refused unless the caller allowed a folder; http(s) URLs go through
``url_fetch.fetch_url`` (public hosts only, or the allowed domains). Every failure is a
ValueError that names the URL or path, so a server can answer 400 with the message.
"""

from __future__ import annotations

import base64
import binascii
import os
import urllib.parse

from mmcore.multimodal.url_fetch import fetch_url

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT_S",
    "fetch_url",
    "file_url_path",
    "parse_data_url",
    "read_local_file",
    "resolve_local_path",
]

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
