"""Engine.start_profile() / stop_profile() (vLLM's calls) on one rank; TP ranks:
test_tensor_parallel.py::test_tp2_profile_writes_every_ranks_trace."""

from __future__ import annotations

import json

import pytest

from mmcore import Engine, SamplingParams


def test_profile_writes_trace_and_summary_and_refuses_misuse(tiny_llava_dir, tmp_path, monkeypatch):
    engine = Engine(tiny_llava_dir)
    monkeypatch.delenv("MMCORE_TORCH_PROFILER_DIR", raising=False)
    with pytest.raises(RuntimeError, match="MMCORE_TORCH_PROFILER_DIR"):
        engine.start_profile()
    monkeypatch.setenv("MMCORE_TORCH_PROFILER_DIR", str(tmp_path / "prof"))
    with pytest.raises(RuntimeError, match="not running"):
        engine.stop_profile()
    engine.start_profile()
    with pytest.raises(RuntimeError, match="already running"):
        engine.start_profile()
    params = SamplingParams(temperature=0.0, max_tokens=4)
    engine.generate(["USER: hello\nASSISTANT:"], params, use_tqdm=False)
    engine.stop_profile()
    summary = (tmp_path / "prof" / "rank0_summary.txt").read_text()
    assert "aten::mm" in summary or "aten::addmm" in summary
    with open(tmp_path / "prof" / "rank0_trace.json") as f:
        events = json.load(f)["traceEvents"]
    assert any(e.get("name", "").startswith("aten::") for e in events)
    # The engine runs on afterwards, and a second trace can start.
    assert len(engine.generate(["USER: hi\nASSISTANT:"], params, use_tqdm=False)) == 1
    engine.start_profile()
    engine.stop_profile()
