"""Writes ``docs/engine_args.md`` from the option dataclasses: ``python -m mmcore.options_doc``.

The tables are generated, so the page cannot drift from the options (a test compares them).
"""

from __future__ import annotations

import sys

from mmcore.arg_utils import options_table
from mmcore.engine_args import EngineArgs
from mmcore.server_args import ServerArgs

_INTRO = """# Engine and server options

Generated from `mmcore.engine_args.EngineArgs` and `mmcore.server_args.ServerArgs` by
`python -m mmcore.options_doc > docs/engine_args.md`; do not edit by hand.

Every option is declared once, as a typed dataclass field with its default, help and allowed
values. The same declaration gives:

- the Python keyword argument: `Engine(model, max_model_len=4096)` (`LLM` is the same class,
  under vLLM's name); an unknown name is a `TypeError` naming it and the closest option, a value
  of the wrong type or outside the choices a `ValueError`;
- the command-line flag of `mmcore serve`, `mmcore generate` and `mmcore bench offline`:
  `--max-model-len 4096` (`32k`/`32K` read as vLLM reads them). Booleans take `--x` and
  `--no-x` (`--no-enable-prefix-caching`), dicts take JSON (`--limit-mm-per-prompt
  '{"image": 2}'`; `image=2` still works), lists take several values
  (`--served-model-name a b`).

The names, spellings and defaults are vLLM's where vLLM has the option, so `vllm serve`
command lines and scripts written for `vllm.LLM` run as they are.

`model` (and `tokenizer`) is a checkpoint folder or a Hugging Face hub id. A hub id goes through
`huggingface_hub.snapshot_download`: the HF cache (`HF_HOME`, `HF_HUB_CACHE`, or
`download_dir`), `revision`, and offline mode (`HF_HUB_OFFLINE=1`: only the cache) are
honoured; weights in formats mmcore does not read (`*.bin`, `*.pt`, ...) are not downloaded. A
model that cannot be found is one line (`error: model 'org/name' is not a local folder and not
in the Hugging Face cache ...`).

`trust_remote_code` is accepted, but mmcore never runs a checkpoint's own code: a checkpoint
whose model type only exists as remote code is refused with an error naming the model types
mmcore implements.

`generation_config="auto"` makes the checkpoint's `generation_config.json` (`temperature`,
`top_p`, `top_k`, `min_p`, `repetition_penalty`, `max_new_tokens`) the defaults of the
`SamplingParams` used when a call passes none (`Engine.get_default_sampling_params()`);
`"vllm"` ignores the file.

`tensor_parallel_size` and `distributed_executor_backend` accept only the values that run in
this version (1 and `uni`); others are refused with an error saying so.

At start-up the engine logs one line: device, dtype, KV cache blocks and tokens,
`max_model_len`, CUDA graphs captured, load time. Unless `disable_log_stats` (the offline
`Engine`'s default, as vLLM's `LLM`), it logs running/waiting requests, generation throughput,
KV cache use and prefix cache hit rate every 10 seconds.

To add an option, declare one field with `mmcore.arg_utils.option(default, help=...,
choices=..., parse=...)` in `EngineArgs` (read it in `engine/config.py` from `EngineArgs`) or in
`ServerArgs` (read it in `commands.server_config`), add its range check to `__post_init__` if
its type does not say enough, and regenerate this page.
"""


def render() -> str:
    """The whole Markdown page."""
    return (
        _INTRO
        + "\n## Engine options (`EngineArgs`)\n\n"
        + options_table(EngineArgs)
        + "\n## Server options (`ServerArgs`, `mmcore serve` only)\n\n"
        + "`mmcore serve MODEL` and `mmcore serve --model MODEL` are the same.\n\n"
        + options_table(ServerArgs)
    )


if __name__ == "__main__":
    sys.stdout.write(render())
