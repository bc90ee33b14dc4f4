"""CPU placement: compute cores and an I/O core from the process affinity; the engine thread
pins itself (and so its OpenMP team) while the rest of the process keeps its cores."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import torch

from mmcore.engine.cpu_placement import (
    GPU_HOST_THREADS,
    pin_compute_thread,
    plan_cpu_placement,
    set_openmp_environment,
)


def test_plan_keeps_one_core_for_io_and_the_rest_for_compute():
    placement = plan_cpu_placement({3, 0, 2, 1})
    assert placement.io_cores == (0,) and placement.compute_cores == (1, 2, 3)
    assert placement.num_compute_threads == 3
    single = plan_cpu_placement({5})
    assert single.io_cores == single.compute_cores == (5,)
    assert plan_cpu_placement().num_compute_threads >= 1  # from the real affinity


def test_openmp_environment_is_set_only_where_unset(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    set_openmp_environment(plan_cpu_placement({0, 1, 2}))
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["OMP_NUM_THREADS"] == "7"


def test_the_compute_thread_pins_itself_and_sizes_torch(monkeypatch):
    cores = os.sched_getaffinity(0)
    placement = plan_cpu_placement(cores)
    seen = {}
    threads_before = torch.get_num_threads()

    def engine_thread():
        pin_compute_thread(placement)
        seen["affinity"] = os.sched_getaffinity(0)
        seen["threads"] = torch.get_num_threads()

    t = threading.Thread(target=engine_thread)
    t.start()
    t.join()
    torch.set_num_threads(threads_before)
    assert seen["affinity"] == set(placement.compute_cores)
    assert seen["threads"] == placement.num_compute_threads
    assert os.sched_getaffinity(0) == cores  # this thread is untouched


def test_offline_engine_threads_leave_one_core_unless_omp_num_threads_is_set(monkeypatch):
    from mmcore.engine.cpu_placement import apply_offline_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(4)
        assert apply_offline_cpu_threads({0, 1, 2, 3}) == 3
        assert torch.get_num_threads() == 3
        assert apply_offline_cpu_threads({5}) == 1  # one core: compute takes it
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        torch.set_num_threads(4)
        assert apply_offline_cpu_threads({0, 1, 2, 3}) is None  # the user's count stays
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def _torch_threads_after(code: str, env: dict[str, str]) -> str:
    script = f"{code}\nimport torch\nprint(torch.get_num_threads())"
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split()[-1]


def test_gpu_host_threads_give_one_torch_thread_unless_omp_num_threads_is_set():
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = "from mmcore.engine.cpu_placement import set_gpu_host_threads as s; print(s())"
    assert _torch_threads_after(code, env) == str(GPU_HOST_THREADS)
    assert _torch_threads_after(code, {**env, "OMP_NUM_THREADS": "2"}) == "2"


def test_serve_on_a_gpu_device_sets_the_host_threads_before_torch(tmp_path):
    # No GPU here: the engine fails to start, after the server logged its thread choice.
    from mmcore.testing.tiny_checkpoints import build_tiny_llava

    model = build_tiny_llava(str(tmp_path / "tiny_llava"), seed=0)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "mmcore.cli", "serve", model, "--device", "cuda", "--port", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "host threads: 1 torch thread per process on a GPU host" in done.stderr
