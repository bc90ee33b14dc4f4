"""The CPU thread tuner: a smaller OpenMP team while the process's threads are preempted, the
full team again once a probe runs undisturbed (fake clock and context-switch counter)."""

from __future__ import annotations

import pytest

from mmcore.engine import cpu_thread_tuner as tuner_module
from mmcore.engine.cpu_thread_tuner import CpuThreadTuner


class FakeHost:
    """A 2-core host: ``neighbours`` CPU-bound processes besides the tuned team."""

    def __init__(self, neighbours: int = 0):
        self.now = 0.0
        self.switches = 0
        self.neighbours = neighbours
        self.set_calls: list[int] = []
        self.tuner: CpuThreadTuner | None = None

    def running_tasks(self) -> int:
        return self.neighbours + (self.tuner.threads if self.tuner else 1)

    def run(self, tuner: CpuThreadTuner, steps: int, step_s: float, switches_per_s: float):
        for _ in range(steps):
            tuner.step_started()
            self.now += step_s
            self.switches += round(switches_per_s * step_s)
            tuner.step_finished()


def _tuner(host: FakeHost, max_threads: int = 2, set_threads=None) -> CpuThreadTuner:
    host.tuner = CpuThreadTuner(
        max_threads,
        set_threads or host.set_calls.append,
        clock=lambda: host.now,
        switches=lambda: host.switches,
        running_tasks=host.running_tasks,
        cores=max_threads,
    )
    return host.tuner


def test_a_quiet_host_keeps_every_thread():
    host = FakeHost()
    tuner = _tuner(host)
    host.run(tuner, 500, 0.02, switches_per_s=20)
    assert tuner.threads == 2 and host.set_calls == []


def test_contention_drops_a_thread_probes_back_and_backs_off():
    host = FakeHost(neighbours=1)
    tuner = _tuner(host)
    host.run(tuner, 2, 0.02, switches_per_s=1000)  # one 40 ms window, preempted
    assert host.set_calls == [1]
    # Held at one thread for FIRST_HOLD_S, then one probe at two (still contended): back to
    # one, held twice as long.
    host.run(tuner, int(tuner_module.FIRST_HOLD_S / 0.02) + 1, 0.02, switches_per_s=1000)
    host.run(tuner, 2, 0.02, switches_per_s=1000)
    assert host.set_calls == [1, 2, 1]
    start = host.now
    while host.set_calls[-1] == 1 and host.now - start < 10:
        host.run(tuner, 1, 0.02, switches_per_s=1000)
    assert host.now - start == pytest.approx(2 * tuner_module.FIRST_HOLD_S, abs=0.05)
    # The neighbour is gone: at the first window that sees the free core two threads return,
    # without waiting out the hold, and stay.
    host.neighbours = 0
    host.run(tuner, 3, 0.02, switches_per_s=10)
    assert host.set_calls == [1, 2, 1, 2] and tuner.threads == 2
    host.run(tuner, 300, 0.02, switches_per_s=10)
    assert host.set_calls == [1, 2, 1, 2]


def test_holds_never_exceed_the_maximum():
    host = FakeHost(neighbours=1)
    probes = []

    def record(n):
        if n == 2:
            probes.append(host.now)

    tuner = _tuner(host, set_threads=record)
    host.run(tuner, 4000, 0.02, switches_per_s=1000)  # 80 s next to a busy neighbour
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert len(probes) >= 8 and tuner.threads == 1
    # 2, 4, 8, 8, ... seconds between probes (each plus the probe's own window).
    assert max(gaps) == pytest.approx(tuner_module.MAX_HOLD_S, abs=0.1)
    assert gaps[0] < gaps[1] < gaps[2] == pytest.approx(gaps[3])


def test_a_larger_team_steps_down_one_thread_at_a_time():
    host = FakeHost(neighbours=2)
    tuner = _tuner(host, max_threads=4)
    host.run(tuner, 2, 0.02, switches_per_s=1000)
    host.run(tuner, 2, 0.02, switches_per_s=1000)
    assert host.set_calls == [3, 2]


def test_one_thread_is_not_tuned():
    with pytest.raises(ValueError, match="at least 2"):
        CpuThreadTuner(1, lambda n: None)


def test_the_engine_tunes_cpu_threads_unless_told_not_to(monkeypatch):
    import torch

    class Runner:
        device = torch.device("cpu")

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert isinstance(tuner_module.cpu_thread_tuner_for(Runner()), CpuThreadTuner)
    monkeypatch.setenv("MMCORE_CPU_ADAPTIVE_THREADS", "0")
    assert tuner_module.cpu_thread_tuner_for(Runner()) is None
    monkeypatch.delenv("MMCORE_CPU_ADAPTIVE_THREADS")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert tuner_module.cpu_thread_tuner_for(Runner()) is None
    assert tuner_module.cpu_thread_tuner_for(None) is None
