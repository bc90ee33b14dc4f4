"""A Hugging Face hub cache on disk, filled from a local checkpoint, for offline tests.

The layout is the one ``huggingface_hub`` writes (and reads with ``HF_HUB_OFFLINE=1``)::

    <hub_dir>/models--<org>--<name>/
        blobs/<sha256>                      file contents
        refs/<revision>                     the commit hash a branch or tag points to
        snapshots/<commit>/<file> -> ../../blobs/<sha256>
"""

from __future__ import annotations

import hashlib
import os
import shutil


def repo_folder(hub_dir: str | os.PathLike, repo_id: str) -> str:
    """``<hub_dir>/models--org--name`` for ``org/name``."""
    return os.path.join(hub_dir, "models--" + repo_id.replace("/", "--"))


def add_to_fake_hf_cache(
    hub_dir: str | os.PathLike,
    repo_id: str,
    source_dir: str | os.PathLike,
    *,
    revision: str = "main",
    commit: str | None = None,
) -> str:
    """Put the files of ``source_dir`` into the cache as ``repo_id`` at ``revision``.

    Args:
        hub_dir: the hub cache folder (``$HF_HOME/hub``, or a ``download_dir``).
        repo_id: ``org/name``.
        source_dir: a checkpoint folder (flat: config.json, safetensors, tokenizer files).
        revision: the branch or tag name written under ``refs/``.
        commit: the 40-hex commit hash (default: derived from the files and revision).

    Returns:
        The snapshot folder.
    """
    names = sorted(os.listdir(source_dir))
    digest = hashlib.sha1(repr((repo_id, revision, names)).encode())
    commit = commit or digest.hexdigest()
    repo = repo_folder(hub_dir, repo_id)
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    os.makedirs(snapshot, exist_ok=True)
    for name in names:
        path = os.path.join(source_dir, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            blob_id = hashlib.sha256(f.read()).hexdigest()
        blob = os.path.join(repo, "blobs", blob_id)
        if not os.path.exists(blob):
            shutil.copyfile(path, blob)
        link = os.path.join(snapshot, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..", "..", "blobs", blob_id), link)
    with open(os.path.join(repo, "refs", revision), "w") as f:
        f.write(commit)
    return snapshot
