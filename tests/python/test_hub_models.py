"""Hub ids resolve through a (fake, offline) Hugging Face cache; a vLLM script runs unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import mmcore
from mmcore import Engine, SamplingParams
from mmcore.cli import main
from mmcore.hub import resolve_model_path
from mmcore.testing.fake_hf_cache import add_to_fake_hf_cache

REPO_ID = "llava-hf/llava-1.5-7b-hf"  # the id the vLLM example names; holds the tiny model here
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "vllm_offline_llava.py")


@pytest.fixture(scope="module")
def hf_home(tiny_llava_dir, tiny_llava_next_dir, tmp_path_factory) -> str:
    """An HF_HOME whose hub cache holds REPO_ID (main: tiny LLaVA, tag v1: tiny LLaVA-NeXT)."""
    home = tmp_path_factory.mktemp("hf_home")
    add_to_fake_hf_cache(home / "hub", REPO_ID, tiny_llava_dir)
    add_to_fake_hf_cache(home / "hub", REPO_ID, tiny_llava_next_dir, revision="v1")
    return str(home)


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 for this process (huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _hub(hf_home: str) -> str:
    return os.path.join(hf_home, "hub")


def test_hub_id_and_revisions_resolve_to_cached_snapshots(hf_home, offline):
    main_dir = resolve_model_path(REPO_ID, download_dir=_hub(hf_home))
    v1_dir = resolve_model_path(REPO_ID, revision="v1", download_dir=_hub(hf_home))
    assert main_dir != v1_dir
    for folder, model_type in ((main_dir, "llava"), (v1_dir, "llava_next")):
        assert os.path.basename(os.path.dirname(folder)) == "snapshots"
        with open(os.path.join(folder, "config.json")) as f:
            assert json.load(f)["model_type"] == model_type
    commit = os.path.basename(v1_dir)
    assert resolve_model_path(REPO_ID, revision=commit, download_dir=_hub(hf_home)) == v1_dir


@pytest.mark.parametrize(
    "model, revision, fragment",
    [
        ("llava-hf/not-cached", None, "not in the Hugging Face cache"),
        (REPO_ID, "v9", "at revision 'v9' is not a local folder"),
        ("./no/such/folder", None, "is not a checkpoint folder"),
        ("not a hub id!", None, "neither a local folder nor a Hugging Face hub id"),
    ],
)
def test_missing_model_is_one_line(hf_home, offline, model, revision, fragment):
    with pytest.raises(ValueError, match=fragment) as exc:
        resolve_model_path(model, revision=revision, download_dir=_hub(hf_home))
    assert "\n" not in str(exc.value) and exc.value.__cause__ is None
    if model.startswith("llava-hf"):
        assert "HF_HUB_OFFLINE=1" in str(exc.value)


def test_engine_from_hub_id_equals_engine_from_folder(hf_home, offline, tiny_llava_dir):
    params = SamplingParams(temperature=0.0, max_tokens=5)
    prompt = "USER: hello there\nASSISTANT:"
    by_id = Engine(REPO_ID, download_dir=_hub(hf_home)).generate(prompt, params, use_tqdm=False)
    by_dir = Engine(tiny_llava_dir).generate(prompt, params, use_tqdm=False)
    assert by_id[0].outputs[0].token_ids == by_dir[0].outputs[0].token_ids


def test_cli_missing_model_exits_with_one_line(hf_home, offline):
    for argv in (
        ["generate", "--model", "llava-hf/not-cached", "--download-dir", _hub(hf_home), "hi"],
        ["serve", "llava-hf/not-cached", "--download-dir", _hub(hf_home)],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        message = str(exc.value.code)
        assert message.startswith("error: model 'llava-hf/not-cached'") and "\n" not in message


def _offline_env(hf_home: str) -> dict[str, str]:
    env = dict(os.environ, HF_HOME=hf_home, HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    # The mmcore this test imports (the installed wheel in CI, a source tree with built
    # modules in development), not necessarily this checkout's python/ folder.
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(mmcore.__file__)), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return env


def test_vllm_example_runs_unchanged_on_a_cached_hub_id(hf_home, tiny_llava_dir):
    run = subprocess.run(
        [sys.executable, EXAMPLE],
        env=_offline_env(hf_home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(answers) == 2
    # The start-up summary is logged once, with no logging configured by the script.
    assert run.stderr.count("engine ready:") == 1

    # Same answers as mmcore's own API on the same checkpoint folder.
    from PIL import Image

    engine = Engine(tiny_llava_dir, max_model_len=512, mm_processor_kwargs={"do_center_crop": True})
    red = Image.new("RGB", (320, 240), (220, 30, 30))
    blue = Image.new("RGB", (200, 300), (30, 30, 220))
    params = SamplingParams(temperature=0.0, max_tokens=8)
    expected = engine.generate(
        {
            "prompt": "USER: <image>\n<image>\nWhat differs between the two pictures?\nASSISTANT:",
            "multi_modal_data": {"image": [red, blue]},
        },
        params,
        use_tqdm=False,
    )
    expected += engine.chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": red},
                    {"type": "text", "text": "What colour is this?"},
                ],
            }
        ],
        params,
        use_tqdm=False,
    )
    for answer, output in zip(answers, expected):
        assert answer["token_ids"] == output.outputs[0].token_ids
        assert answer["num_prompt_tokens"] == len(output.prompt_token_ids)
        assert len(answer["token_ids"]) == 8
