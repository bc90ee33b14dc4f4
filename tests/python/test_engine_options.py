"""Engine(**kwargs) with vLLM's option names on a tiny LLaVA: validation, dtype, chat template,
generation_config, mm_processor_kwargs, trust_remote_code, served names, logs."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch

from mmcore import LLM, Engine, EngineArgs, SamplingParams
from mmcore.engine.engine_logging import StatLogger

PROMPT = "USER: <image>\nWhat is this?\nASSISTANT:"
GREEDY = SamplingParams(temperature=0.0, max_tokens=4)


def _copy_checkpoint(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def test_llm_is_engine_and_takes_vllm_names(tiny_llava_dir, photos):
    assert LLM is Engine
    llm = LLM(
        model=tiny_llava_dir,
        tokenizer=tiny_llava_dir,
        dtype="float",
        max_model_len=256,
        gpu_memory_utilization=0.5,
        kv_cache_memory_bytes=4 << 20,
        enforce_eager=True,
        enable_prefix_caching=False,
        limit_mm_per_prompt='{"image": 1}',
        mm_processor_kwargs={"do_normalize": False},
        trust_remote_code=True,  # accepted: mmcore implements llava itself
        served_model_name=["a", "b"],
        seed=1,
        tensor_parallel_size=1,
    )
    cfg = llm.config
    assert cfg.dtype == torch.float32 and next(llm.model.parameters()).dtype == torch.float32
    assert cfg.max_model_len == 256 and not cfg.scheduler_config.enable_prefix_caching
    assert cfg.served_model_names == ["a", "b"] and cfg.limit_mm_per_prompt == {"image": 1}
    # Construction-time processor kwargs reach the HF image processor.
    assert llm.processor.image_processor.do_normalize is False
    assert llm.get_tokenizer() is llm.tokenizer
    a = photos["astronaut"]
    with pytest.raises(ValueError, match="limit_mm_per_prompt"):
        llm.generate({"prompt": PROMPT, "multi_modal_data": {"image": [a, a]}}, GREEDY)


def test_engine_refuses_unknown_and_bad_options(tiny_llava_dir):
    with pytest.raises(TypeError, match="'max_num_seq' \\(did you mean 'max_num_seqs'"):
        Engine(tiny_llava_dir, max_num_seq=4)
    with pytest.raises(ValueError, match="dtype must be one of"):
        Engine(tiny_llava_dir, dtype="fp8")
    # The tiny LLaVA's heads do not split over 3 ranks: refused before any worker starts.
    with pytest.raises(ValueError, match="not divisible by tensor_parallel_size"):
        Engine(tiny_llava_dir, tensor_parallel_size=3)
    with pytest.raises(ValueError, match="max_model_len=100000 exceeds"):
        Engine(tiny_llava_dir, max_model_len=100000)
    with pytest.raises(ValueError, match="names 'images', which this model does not accept"):
        Engine(tiny_llava_dir, limit_mm_per_prompt={"images": 2})
    assert Engine(tiny_llava_dir, limit_mm_per_prompt='{"image": 2, "video": 0}')


def test_from_engine_args_matches_kwargs(tiny_llava_dir):
    args = EngineArgs(model=tiny_llava_dir, block_size=8, max_num_seqs=3)
    engine = Engine.from_engine_args(args)
    assert engine.config.block_size == 8 and engine.config.max_num_seqs == 3
    assert engine.config.args is args


def test_chat_template_file_or_string(tiny_llava_dir, tmp_path):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}>>"
    path = tmp_path / "tpl.jinja"
    path.write_text(template)
    messages = [{"role": "user", "content": "hi"}]
    for given in (template, str(path)):
        engine = Engine(tiny_llava_dir, chat_template=given)
        assert engine.chat_prompt(messages)["prompt"] == "[user] hi\n>>"
    with pytest.raises(ValueError, match="neither a file nor a Jinja template"):
        Engine(tiny_llava_dir, chat_template=str(tmp_path / "missing.jinja"))


def test_generation_config_auto_vllm_and_folder(tiny_llava_dir, tmp_path):
    model = _copy_checkpoint(tiny_llava_dir, tmp_path / "model")
    with open(os.path.join(model, "generation_config.json")) as f:
        gen = json.load(f)
    gen.update(temperature=0.0, top_p=0.5, top_k=7, max_new_tokens=3)
    with open(os.path.join(model, "generation_config.json"), "w") as f:
        json.dump(gen, f)

    auto = Engine(model)
    defaults = auto.get_default_sampling_params()
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == (0.0, 0.5, 7)
    assert defaults.max_tokens == 3
    # generate() without SamplingParams uses them: 3 greedy tokens, as the explicit call gives.
    implicit = auto.generate("USER: hi\nASSISTANT:", use_tqdm=False)[0].outputs[0]
    explicit = auto.generate(
        "USER: hi\nASSISTANT:",
        SamplingParams(temperature=0.0, top_p=0.5, top_k=7, max_tokens=3),
        use_tqdm=False,
    )[0].outputs[0]
    assert len(implicit.token_ids) == 3 and implicit.token_ids == explicit.token_ids

    assert Engine(model, generation_config="vllm").get_default_sampling_params() == (
        SamplingParams()
    )
    folder = Engine(tiny_llava_dir, generation_config=model).get_default_sampling_params()
    assert folder.top_k == 7
    with pytest.raises(ValueError, match="generation_config must be auto, vllm or a folder"):
        Engine(tiny_llava_dir, generation_config=str(tmp_path / "nowhere"))


def test_remote_code_only_checkpoint_is_refused(tiny_llava_dir, tmp_path):
    model = _copy_checkpoint(tiny_llava_dir, tmp_path / "remote")
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    config.update(model_type="acme_vlm", auto_map={"AutoConfig": "configuration_acme.AcmeConfig"})
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(config, f)
    for trust in (False, True):
        with pytest.raises(ValueError, match="'acme_vlm' needs its own remote code"):
            Engine(model, trust_remote_code=trust)


def test_startup_summary_and_stats_lines(tiny_llava_dir, caplog):
    with caplog.at_level(logging.INFO, logger="mmcore.engine"):
        engine = Engine(tiny_llava_dir, disable_log_stats=False, kv_cache_memory_bytes=1 << 20)
    ready = [r.getMessage() for r in caplog.records if "engine ready" in r.getMessage()]
    assert len(ready) == 1
    blocks = engine.config.num_blocks
    assert "device=cpu" in ready[0] and "dtype=float32" in ready[0]
    assert f"{blocks} blocks x 16 = {blocks * 16} tokens" in ready[0]
    gib = blocks * engine.config.kv_block_bytes / (1 << 30)
    assert f"({gib:.2f} GiB)" in ready[0] and "max_model_len=512" in ready[0]
    assert "eager (no CUDA graphs)" in ready[0] and "loaded in" in ready[0]

    engine.generate("USER: hi\nASSISTANT:", GREEDY, use_tqdm=False)
    line = StatLogger(engine, interval_s=0.0).maybe_log()
    assert "running: 0 reqs" in line and "tokens/s" in line and "KV cache usage" in line
    assert engine.num_generated_tokens == 4
    # Offline engines are quiet by default, as vLLM's LLM.
    assert Engine(tiny_llava_dir)._stat_logger is None


def test_unknown_model_type_is_named(tiny_llava_dir, tmp_path):
    model = _copy_checkpoint(tiny_llava_dir, tmp_path / "unknown")
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    config["model_type"] = "acme_unknown"
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="'acme_unknown' is unknown to transformers and mmcore"):
        Engine(model)
