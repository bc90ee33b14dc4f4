"""Checks and resolves the image URLs of chat messages before the engine sees them.

``data:`` URLs pass through; ``http(s)://`` URLs are fetched (only from allowed hosts, with a
size and time limit) and replaced by their bytes; ``file://`` URLs and plain paths must lie
inside the allowed local folder once symlinks and ``..`` are resolved. Anything else is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from mmcore.server_args import ServerArgs

_MEDIA_PART_TYPES = ("image_url", "image", "image_pil")


@dataclass
class MediaPolicy:
    """Where the server may take media from.

    Attributes:
        allowed_domains: hosts http(s) image URLs may point to (empty: none).
        allowed_local_media_path: folder local files must lie in (None: no local files).
        max_bytes: largest fetched image.
        timeout_s: time limit of one fetch.
        max_images: most images in one request (None: the engine's limit only).
    """

    allowed_domains: list[str] = field(default_factory=list)
    allowed_local_media_path: str | None = None
    max_bytes: int = ServerArgs.max_image_bytes
    timeout_s: float = ServerArgs.media_fetch_timeout
    max_images: int | None = None


def _is_inside(path: str, folder: str) -> bool:
    real_path, real_folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real_path, real_folder]) == real_folder


def _local_path(url: str, policy: MediaPolicy) -> str:
    path = unquote(urlsplit(url).path) if url.startswith("file://") else url
    if policy.allowed_local_media_path is None:
        raise ValueError(
            "local image files are not allowed; start the server with --allowed-local-media-path"
        )
    if not os.path.isabs(path):
        path = os.path.join(policy.allowed_local_media_path, path)
    if not _is_inside(path, policy.allowed_local_media_path):
        raise ValueError(f"image path {url!r} is outside the allowed local media folder")
    return os.path.realpath(path)


def _fetch(url: str, policy: MediaPolicy) -> bytes:
    host = (urlsplit(url).hostname or "").lower()
    allowed = {d.lower() for d in policy.allowed_domains}
    if not host or host not in allowed:
        raise ValueError(
            f"image URL host {host or url!r} is not allowed; allowed hosts: "
            f"{sorted(allowed) or 'none (see --allowed-media-domains)'}"
        )
    from mmcore.multimodal.media import fetch_url

    return fetch_url(url, policy.allowed_domains, policy.max_bytes, policy.timeout_s)


def resolve_url(url: str, policy: MediaPolicy) -> str | bytes:
    """What the engine should load for one image URL: the data URL, a checked path, or bytes.

    Raises:
        ValueError: the URL's scheme, host or path is not allowed, or the fetch failed.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("image_url.url must be a non-empty string")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "data":
        return url
    if scheme in ("http", "https"):
        return _fetch(url, policy)
    if scheme == "file" or (scheme == "" and not url.startswith("//")):
        return _local_path(url, policy)
    raise ValueError(f"image URL scheme {scheme!r} is not supported (use data:, http(s): or file:)")


def _part_url(part: dict) -> Any:
    if part.get("type") == "image_url":
        url = part.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    return part.get("image", part.get("url"))


def resolve_messages(messages: list[dict[str, Any]], policy: MediaPolicy) -> list[dict[str, Any]]:
    """Copy of ``messages`` with every image part resolved by :func:`resolve_url`.

    Raises:
        ValueError: too many images, or an image URL that is not allowed.
    """
    parts = [
        p
        for m in messages
        if isinstance(m.get("content"), list)
        for p in m["content"]
        if isinstance(p, dict) and p.get("type") in _MEDIA_PART_TYPES
    ]
    if policy.max_images is not None and len(parts) > policy.max_images:
        raise ValueError(
            f"the request has {len(parts)} images, more than the {policy.max_images} allowed"
        )
    resolved = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            resolved.append(message)
            continue
        new_content = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in _MEDIA_PART_TYPES:
                url = _part_url(part)
                if not isinstance(url, str):
                    raise ValueError(f"a {part.get('type')!r} part needs a URL string")
                new_content.append({"type": "image", "image": resolve_url(url, policy)})
            else:
                new_content.append(part)
        resolved.append({**message, "content": new_content})
    return resolved
