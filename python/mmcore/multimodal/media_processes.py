"""Image decoding and processing in worker processes, so they never hold the server's GIL.

Decoding (PIL) and the HF image processor run Python and numpy code that holds the GIL for a
good part of their time; in threads of the server process they slow the engine thread's step
and the event loop. Here each image is decoded, hashed and processed in a worker process
(``spawn``: no fork of a process running threads); only the small processed tensors come back.

    input thread ──submit(bytes)──► worker process: load_image ─► hash ─► processor.process
         ◄────────────── (identifier, num_embeds, tensors) ────────────┘
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_worker_processor: Any = None
_worker_options: dict[str, Any] = {}
# Processed tensors of recent images, by content identifier (a repeated image skips the
# processor, as the in-process processor cache does).
_worker_cache: OrderedDict[str, dict] = OrderedDict()
_WORKER_CACHE_ITEMS = 64
_PARENT_POLL_S = 1.0


def _exit_with_parent(parent_pid: int) -> None:
    """A killed server (SIGKILL) leaves its pool's workers waiting on the task queue forever,
    holding its stdout open: each worker leaves once its parent is gone."""
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_S)
    os._exit(0)


def _init_worker(processor_bytes: bytes, options: dict[str, Any]) -> None:
    global _worker_processor, _worker_options
    import torch

    torch.set_num_threads(1)  # one core per worker: the pool's size is the parallelism
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _worker_processor = pickle.loads(processor_bytes)
    _worker_options = options


def _process_image(source: Any) -> tuple[str, int, dict]:
    from mmcore.multimodal.hashing import hash_item
    from mmcore.multimodal.media import load_image

    opts = _worker_options
    image = load_image(
        source,
        allowed_local_media_path=opts["allowed_local_media_path"],
        max_pixels=opts["max_image_pixels"],
    )
    identifier = hash_item(image, model=opts["model_id"], **opts["mm_processor_kwargs"])
    data = _worker_cache.get(identifier)
    if data is None:
        data = _worker_processor.process("image", [image])[0]
        _worker_cache[identifier] = data
        if len(_worker_cache) > _WORKER_CACHE_ITEMS:
            _worker_cache.popitem(last=False)
    else:
        _worker_cache.move_to_end(identifier)
    return identifier, _worker_processor.num_embeds("image", image), data


def _ready() -> bool:
    return _worker_processor is not None


class MediaProcessPool:
    """A pool of worker processes that decode and process images.

    Args:
        processor: the model's ``MultiModalProcessor`` (pickled once into every worker).
        num_processes: worker processes.
        model_id: folded into content hashes (as ``InputProcessor`` does).
        mm_processor_kwargs: processor arguments folded into hashes.
        max_image_pixels: largest image decoded.
        allowed_local_media_path: folder local files must lie in.
    """

    def __init__(
        self,
        processor: Any,
        num_processes: int,
        *,
        model_id: str,
        mm_processor_kwargs: dict | None = None,
        max_image_pixels: int,
        allowed_local_media_path: str | None = None,
    ) -> None:
        if num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {num_processes}")
        options = {
            "model_id": model_id,
            "mm_processor_kwargs": dict(mm_processor_kwargs or {}),
            "max_image_pixels": max_image_pixels,
            "allowed_local_media_path": allowed_local_media_path,
        }
        self._executor = ProcessPoolExecutor(
            max_workers=num_processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(pickle.dumps(processor), options),
        )
        self.num_processes = num_processes
        self.ready = False  # set by warm_up()

    def warm_up(self, timeout_s: float | None = None) -> None:
        """Start the workers and wait until they have loaded the processor, so the first image
        after start-up does not wait for them (each imports torch and the processor: ~12 s on
        a 2-core host, where a server that declared itself ready first answered its first
        image request after 12.8 s and its second after 0.1 s).

        Raises:
            concurrent.futures.process.BrokenProcessPool: a worker failed to start.
            TimeoutError: ``timeout_s`` passed first.
        """
        futures = [self._executor.submit(_ready) for _ in range(self.num_processes)]
        for future in futures:
            future.result(timeout=timeout_s)
        self.ready = True

    def process_images(self, sources: list[Any]) -> list[tuple[str, int, dict]]:
        """Decode and process images in the workers, one task per image.

        Args:
            sources: encoded bytes (or picklable images / arrays), already size-checked.

        Returns:
            Per image: (content identifier, number of embeddings, processed tensors).

        Raises:
            ValueError: an image is corrupt or refused (raised in the worker).
        """
        futures = [self._executor.submit(_process_image, s) for s in sources]
        return [f.result() for f in futures]

    def shutdown(self) -> None:
        """Stop the workers (pending tasks are cancelled) and wait for them to exit."""
        self._executor.shutdown(wait=True, cancel_futures=True)
