"""After a failed step: fail the requests it is blamed on, recompute the others, go on.

step N fails ──► blamed requests: finish_reason "error" (their blocks freed)
             └─► the step's other requests: re-added as prompt + tokens so far (recompute,
                 as a preemption would), same sampling state and detokenizer
then step N is closed in the core with every request of it finished, so nothing it may have
half-written is cached.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from mmcore.engine.fault_isolation import RequestFault
from mmcore.outputs import RequestOutput

if TYPE_CHECKING:
    from mmcore.engine.engine import Engine

logger = logging.getLogger("mmcore.engine")


def fail_request(engine: Engine, core_id: int, exc: BaseException) -> str | None:
    """Finish the whole request owning ``core_id`` with finish reason ``"error"``.

    Returns:
        The request id, or None when ``core_id`` is no longer live.
    """
    entry = engine._core_to_tracker.get(core_id)
    if entry is None:
        return None
    tracker = entry[0]
    message = f"the engine failed this request: {type(exc).__name__}: {exc}"
    logger.warning("request %s: %s", tracker.request_id, message)
    tracker.error = tracker.error or message
    for index, other in enumerate(tracker.core_ids):
        tracker.finish(index, "error")  # completions that already finished keep their reason
        if other in engine._core_to_tracker:
            engine._drop_core(other, "abort")
    return tracker.request_id


def fail_completion(engine: Engine, core_id: int, exc: BaseException) -> None:
    """The request owning ``core_id`` failed while its output was processed: finish it."""
    request_id = fail_request(engine, core_id, exc)
    if request_id is not None:
        engine._trackers.pop(request_id, None)


def _recompute(engine: Engine, core_id: int) -> None:
    """Re-add one completion as prompt + its tokens so far, under a new core id."""
    tracker, index = engine._core_to_tracker[core_id]
    if core_id in engine.structured_outputs:  # its grammar state cannot be replayed: fail it
        fail_request(engine, core_id, RuntimeError("its step failed under a grammar"))
        return
    state = engine.runner.requests[core_id]
    if state.sampling.slot >= 0:  # the old id's slot is freed with it: move the counts first
        slot = engine.runner.sampling_counts.copy_slot(state.sampling.slot)
        state = dataclasses.replace(state, sampling=dataclasses.replace(state.sampling, slot=slot))
    generated = tracker.outputs[index].token_ids
    engine._drop_core(core_id, "abort")
    token_ids = np.concatenate(
        [tracker.processed.token_ids, np.asarray(generated, dtype=np.int32)]
    ).astype(np.int32)
    new_id = next(engine._next_core_id)
    engine._add_core(
        new_id,
        token_ids,
        tracker,
        max_tokens=tracker.max_tokens - len(generated),
        min_tokens=max(0, tracker.params.min_tokens - len(generated)),
    )
    engine.runner.add_request(new_id, state)
    engine._core_to_tracker[new_id] = (tracker, index)
    tracker.core_ids[index] = new_id


def recover_failed_step(
    engine: Engine, out, blamed: list[int], exc: BaseException
) -> list[RequestOutput]:
    """Close step ``out`` (whose launch raised ``exc``) without stopping the engine.

    Args:
        engine: the engine whose step failed.
        out: the failed step's ``SchedulerOutput``.
        blamed: core ids the failure is attributed to.
        exc: the failure.

    Returns:
        The outputs to report: the step before (overlapped mode) and the failed requests.
    """
    outputs: list[RequestOutput] = []
    if engine._in_flight is not None:  # the step before holds real tokens: apply them first
        previous, engine._in_flight = engine._in_flight, None
        outputs += engine._apply(previous[0], previous[1].resolve())
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    step_ids = [r for r in out.req_ids.tolist() if r in engine._core_to_tracker]
    blamed_set = set(blamed)
    innocent = {r for r in step_ids if r not in blamed_set}
    try:  # items the failed step scheduled but never encoded count as cached in the core
        engine.runner.encode_missing(out, innocent)
    except RequestFault as fault:
        blamed_set |= set(fault.core_ids)
        innocent -= set(fault.core_ids)
    failed: dict[str, object] = {}
    for core_id in step_ids:
        if core_id not in engine._core_to_tracker:
            continue  # a completion of a request failed just before
        if core_id in innocent:
            _recompute(engine, core_id)
        else:
            request_id = fail_request(engine, core_id, getattr(exc, "cause", exc))
            failed[request_id] = engine._trackers.pop(request_id)
    num_sampled = len(out.sampling_req_ids)
    engine.scheduler.update_from_output(out, np.zeros(num_sampled, dtype=np.int32))
    logger.warning(
        "step failed (%s): %d request(s) failed, %d recomputed",
        type(exc).__name__,
        len(failed),
        len(innocent),
    )
    return outputs + [tracker.to_output() for tracker in failed.values()]
