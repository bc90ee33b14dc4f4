"""bench_gpu_transformers_backend.py --smoke: Idefics3-8B's real tokenizer, processor and image
sizes with a shrunk model on CPU; the backend's expanded prompts and greedy tokens equal HF's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_idefics3_smoke_backend_equals_hf_generate(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "bench" / "bench_gpu_transformers_backend.py")]
    command += ["--model", "idefics3-8b", "--smoke", "--num-requests", "2", "--hf-requests", "2"]
    command += ["--hf-batch-size", "2", "--max-tokens", "4", "--out", str(out)]
    import mmcore

    # The mmcore this test imported (the installed wheel in CI, the source tree with its built
    # modules here), not the source tree, which has no compiled core in CI.
    env = dict(os.environ, PYTHONPATH=str(Path(mmcore.__file__).resolve().parents[1]))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert "native" not in results  # mmcore has no native Idefics3
    assert results["transformers"]["model_class"] == "TransformersModel"
    assert results["hf"]["image_embeds_per_request"] == 17 * 169  # 364 px: 4x4 tiles + global
    assert results["agreement_with_hf"] == {
        "requests": 2,
        "equal_prompt_ids": 2,
        "equal_greedy_tokens": 2,
    }
    assert results["transformers"]["output_tokens"] == results["hf"]["output_tokens"] == 8
