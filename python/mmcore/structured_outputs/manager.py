"""Per-request grammar state of structured outputs, and the host masks of a step.

Each constrained completion (each of ``n``) owns an xgrammar matcher that advances with every
token the engine accepts for it. Before a step's sampling, :meth:`host_masks` fills the token
bitmask of the step's constrained rows (threaded, in xgrammar) and the bans of multi-token bad
words, from the tokens accepted so far.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from mmcore.sampling.host_masks import HostMasks, bad_word_bans
from mmcore.sampling.request_state import RequestSampling
from mmcore.sampling_params import StructuredOutputsParams
from mmcore.structured_outputs.compiler import GrammarCompiler

logger = logging.getLogger(__name__)


class StructuredOutputManager:
    """Grammar matchers of the running completions.

    Args:
        make_compiler: builds the :class:`GrammarCompiler` on first use (xgrammar reads the
            whole vocabulary then).
    """

    def __init__(self, make_compiler: Callable[[], GrammarCompiler]) -> None:
        self._make_compiler = make_compiler
        self._compiler: GrammarCompiler | None = None
        self._compiler_lock = threading.Lock()
        self._matchers: dict[int, object] = {}
        self._batch = None
        self.num_rejected_tokens = 0

    @property
    def compiler(self) -> GrammarCompiler:
        with self._compiler_lock:
            if self._compiler is None:
                self._compiler = self._make_compiler()
            return self._compiler

    def compile(self, params: StructuredOutputsParams):
        """Compile (or fetch from the cache) a constraint. Raises ValueError when invalid.

        Thread-safe: a server may compile in its input worker threads so the engine thread
        finds the grammar in the cache when the request is added.
        """
        return self.compiler.compile(params)

    def add(self, req_id: int, compiled) -> None:
        """Start a matcher for one completion."""
        self._matchers[req_id] = self.compiler.new_matcher(compiled)

    def remove(self, req_id: int) -> None:
        self._matchers.pop(req_id, None)

    def __contains__(self, req_id: int) -> bool:
        return req_id in self._matchers

    def __len__(self) -> int:
        return len(self._matchers)

    def accept(self, req_id: int, token_id: int) -> None:
        """Advance a completion's matcher by the token the engine just gave it."""
        matcher = self._matchers.get(req_id)
        if matcher is None or matcher.is_terminated():
            return
        if not matcher.accept_token(token_id):
            # Only reachable when another constraint (e.g. min_tokens) left no token the
            # grammar allows; the matcher keeps its state, as vLLM's does.
            self.num_rejected_tokens += 1
            logger.warning("request %d: token %d does not fit its grammar", req_id, token_id)

    def host_masks(
        self,
        req_ids: list[int],
        rows: list[RequestSampling],
        output_ids: Callable[[int], list[int] | None],
    ) -> HostMasks | None:
        """The host-computed constraints of one step's sampling rows.

        Args:
            req_ids: the request of each row.
            rows: each row's sampling inputs.
            output_ids: request id -> its generated tokens so far (None once finished).

        Returns:
            The masks, or None when no row is constrained.
        """
        masks = HostMasks()
        grammar_rows = [
            (i, self._matchers[r])
            for i, r in enumerate(req_ids)
            if r in self._matchers and not self._matchers[r].is_terminated()
        ]
        if grammar_rows:
            import xgrammar as xgr

            masks.bitmask_rows = np.asarray([i for i, _ in grammar_rows], dtype=np.int64)
            masks.bitmask = xgr.allocate_token_bitmask(len(grammar_rows), self.compiler.vocab_size)
            if self._batch is None:
                self._batch = xgr.BatchGrammarMatcher()
            self._batch.batch_fill_next_token_bitmask([m for _, m in grammar_rows], masks.bitmask)
        banned = []
        for i, (req_id, row) in enumerate(zip(req_ids, rows)):
            if row.bad_word_prefixes:
                tokens = output_ids(req_id)
                if tokens is not None:
                    banned.append((i, row.bad_word_prefixes, tokens))
        if banned:
            masks.ban_rows, masks.ban_ids = bad_word_bans(banned)
        return masks if masks else None

    def needs_host_masks(self, req_ids: list[int], rows: list[RequestSampling]) -> bool:
        """Whether any row of a step is constrained by a grammar or multi-token bad words."""
        matchers = self._matchers
        return any(r in matchers and not matchers[r].is_terminated() for r in req_ids) or any(
            r.bad_word_prefixes for r in rows
        )
