"""Gemma 3 language model alone (``model_type`` ``gemma3_text``, HF ``Gemma3ForCausalLM``):
greedy tokens equal HF's past the sliding window, and log-probabilities come from the
soft-capped logits (``final_logit_softcapping``) as HF computes them."""

from __future__ import annotations

import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.testing.tiny_gemma3 import _TEXT, build_gemma3_tokenizer

CAP = 2.0  # small: the cap visibly changes the log-probabilities


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    path = tmp_path_factory.mktemp("tiny_gemma3_text")
    tok = build_gemma3_tokenizer()
    config = Gemma3TextConfig(
        **_TEXT,
        vocab_size=len(tok),
        final_logit_softcapping=CAP,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(1)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), model, tok


def test_greedy_and_softcapped_logprobs_match_hf(text_dir):
    path, model, tok = text_dir
    prompts = [
        "<bos>The cat sleeps on a warm blanket while the coffee cools on the table.",
        "<bos>" + "A photo of an astronaut standing next to a flag on the moon. " * 3,
        "<bos>Numbers 0 1 2 3",
    ]
    engine = Engine(path, kv_cache_memory_bytes=32 << 20)
    params = SamplingParams(temperature=0.0, max_tokens=5, logprobs=0)
    outputs = engine.generate(prompts, params, use_tqdm=False)
    for prompt, out in zip(prompts, outputs):
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hf = model.generate(ids, max_new_tokens=5, do_sample=False, top_k=None)
            generated = hf[0, ids.shape[1] :].tolist()
            logits = model(hf).logits[0, ids.shape[1] - 1 : -1].float()  # capped by HF
        assert out.outputs[0].token_ids == generated
        expected = torch.log_softmax(logits, -1)[torch.arange(5), torch.tensor(generated)]
        got = [lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, generated)]
        torch.testing.assert_close(torch.tensor(got), expected, atol=1e-4, rtol=1e-4)
        assert logits.abs().max() <= CAP
