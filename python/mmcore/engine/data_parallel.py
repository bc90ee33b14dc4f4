"""``data_parallel_size`` engine replicas behind one interface, with cache-aware routing.

Each replica is a whole :class:`~mmcore.engine.engine.Engine` (itself tensor parallel or not)
with its own KV, prefix and encoder caches. A new request goes to the replica that most
recently took one of its multimodal items (same content hash or uuid), where the item's encoder
output and the KV blocks of its prefix are likely still cached; a request with no such item
goes to the least loaded replica. The class offers the Engine calls the offline API and the
server use, so either can drive it.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

from mmcore.engine.engine import Engine
from mmcore.engine.inputs import ProcessedPrompt
from mmcore.outputs import RequestOutput
from mmcore.sampling_params import SamplingParams

_REMEMBERED_ITEMS = 4096  # item identifiers remembered per replica (LRU)


class DataParallelEngine:
    """``data_parallel_size`` replicas of one model, requests routed by cached items.

    Args:
        model: the checkpoint folder.
        data_parallel_size: number of replicas (>= 1).
        **kwargs: Engine options, for every replica. On CUDA, replica ``r`` of a
            ``tensor_parallel_size`` = 1 engine uses ``cuda:r``.

    Attributes:
        replicas: the engines.
        routed: per replica, how many requests it was given.
    """

    def __init__(self, model: str, data_parallel_size: int = 2, **kwargs: Any) -> None:
        if not isinstance(data_parallel_size, int) or data_parallel_size < 1:
            raise ValueError(
                f"data_parallel_size must be an integer >= 1, got {data_parallel_size!r}"
            )
        if data_parallel_size > 1 and kwargs.get("tensor_parallel_size", 1) > 1:
            raise ValueError(
                "data_parallel_size > 1 with tensor_parallel_size > 1 is not supported"
            )
        self.replicas: list[Engine] = []
        for rank in range(data_parallel_size):
            options = dict(kwargs)
            if str(options.get("device", "auto")) in ("cuda", "auto") and _cuda_count() > 1:
                options["device"] = f"cuda:{rank}"
            self.replicas.append(Engine(model, **options))
        first = self.replicas[0]
        self.config, self.inputs, self.tokenizer = first.config, first.inputs, first.tokenizer
        self.processor = first.processor
        self.routed = [0] * data_parallel_size
        self._seen = [collections.OrderedDict() for _ in self.replicas]
        self._owner: dict[str, int] = {}
        self._active = [0] * data_parallel_size
        self._next_id = itertools.count()

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    # ------------------------------------------------------------------ routing
    def route(self, processed: ProcessedPrompt) -> int:
        """The replica for a processed prompt: the one holding most of its items (latest use
        breaks ties), else the least loaded."""
        identifiers = [item.identifier for item in processed.items]
        best, best_score = None, 0
        for rank, seen in enumerate(self._seen):
            score = sum(ident in seen for ident in identifiers)
            if score > best_score:
                best, best_score = rank, score
        if best is None:
            best = min(range(len(self.replicas)), key=lambda r: (self._active[r], r))
        seen = self._seen[best]
        for ident in identifiers:
            seen[ident] = None
            seen.move_to_end(ident)
            if len(seen) > _REMEMBERED_ITEMS:
                seen.popitem(last=False)
        return best

    # ------------------------------------------------------------------ Engine calls
    def add_request(self, request_id: str, prompt: Any, params: SamplingParams | None = None):
        """Process and route one prompt (any form ``Engine.generate`` takes)."""
        self.add_processed(request_id, self.inputs.process(prompt), params or SamplingParams())

    def add_processed(self, request_id: str, processed: ProcessedPrompt, params) -> None:
        if request_id in self._owner:
            raise ValueError(f"request id {request_id!r} is already running")
        rank = self.route(processed)
        self.replicas[rank].add_processed(request_id, processed, params)
        self._owner[request_id] = rank
        self._active[rank] += 1
        self.routed[rank] += 1

    def abort_request(self, request_id: str) -> None:
        rank = self._owner.pop(request_id, None)
        if rank is not None:
            self.replicas[rank].abort_request(request_id)
            self._active[rank] -= 1

    def has_unfinished_requests(self) -> bool:
        return any(r.has_unfinished_requests() for r in self.replicas)

    def step(self) -> list[RequestOutput]:
        """One step of every replica that has work; their outputs together."""
        outputs = []
        for rank, replica in enumerate(self.replicas):
            if not replica.has_unfinished_requests():
                continue
            for output in replica.step():
                if output.finished and self._owner.pop(output.request_id, None) is not None:
                    self._active[rank] -= 1
                outputs.append(output)
        return outputs

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = False):
        """As :meth:`Engine.generate`: one RequestOutput per prompt, in input order."""
        prompt_list = prompts if isinstance(prompts, list) else [prompts]
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(prompt_list):
                raise ValueError(
                    f"got {len(sampling_params)} sampling_params for {len(prompt_list)} prompts"
                )
            params_list = sampling_params
        else:
            params_list = [sampling_params or SamplingParams()] * len(prompt_list)
        processed = [self.inputs.process(p) for p in prompt_list]
        ids = [f"dp-{next(self._next_id)}" for _ in prompt_list]
        for request_id, proc, params in zip(ids, processed, params_list):
            self.add_processed(request_id, proc, params)
        results: dict[str, RequestOutput] = {}
        wanted = set(ids)
        while len(results) < len(ids):
            for output in self.step():
                if output.finished and output.request_id in wanted:
                    results[output.request_id] = output
        return [results[i] for i in ids]

    def chat_prompt(self, messages: list[dict], chat_template: str | None = None) -> dict:
        return self.replicas[0].chat_prompt(messages, chat_template)

    def stats(self) -> dict[str, Any]:
        """Counters summed over the replicas, plus ``routed`` (requests per replica)."""
        total: dict[str, Any] = {}
        for replica in self.replicas:
            for key, value in replica.stats().items():
                total[key] = total.get(key, 0) + value
        total["routed"] = list(self.routed)
        return total

    def shutdown(self) -> None:
        for replica in self.replicas:
            replica.shutdown()


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
