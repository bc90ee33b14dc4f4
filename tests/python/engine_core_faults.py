"""Engine builders with injected faults for the engine core process tests.

They live in a module of their own because the core process gets its builder pickled: it
imports this module by name, so the fault is injected in the core, not in the test process.
"""

from __future__ import annotations

import time

from mmcore import Engine

POISON_SEED = 666  # requests sampled with this seed make their step raise
STEP_DELAY_S = 0.05  # the slow engine's pause per step


def engine_with_poisoned_sampler(model_dir: str) -> Engine:
    """An engine whose sampler raises for rows of requests with ``seed=POISON_SEED``."""
    import mmcore.engine.runner as runner_module

    real = runner_module.sample_on_device

    def sample(logits, rows, **kwargs):
        if any(r.params.seed == POISON_SEED for r in rows):
            raise RuntimeError("injected sampler fault")
        return real(logits, rows, **kwargs)

    runner_module.sample_on_device = sample
    return Engine(model_dir, seed=0)


def slow_engine(model_dir: str) -> Engine:
    """An engine that pauses ``STEP_DELAY_S`` per step, so a request is still running when the
    test kills its core."""
    engine = Engine(model_dir, seed=0)
    real_step = engine.step

    def step():
        time.sleep(STEP_DELAY_S)
        return real_step()

    engine.step = step
    return engine
