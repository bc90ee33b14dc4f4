"""Where the one-shot peer-to-peer all-reduce is refused (NCCL or gloo then), on any machine.

The reductions themselves run on 2 GPUs: test_gpu_peer_all_reduce.py.
"""

from __future__ import annotations

import torch

from mmcore.distributed.communication import all_reduce
from mmcore.distributed.peer_all_reduce import unavailable_reason
from mmcore.engine_args import EngineArgs


def test_refused_off_cuda_for_one_rank_and_for_float16():
    assert unavailable_reason(torch.device("cpu"), torch.bfloat16, 2) == "not a CUDA device"
    assert unavailable_reason(torch.device("cuda", 0), torch.bfloat16, 1) == "one rank"
    reason = unavailable_reason(torch.device("cuda", 0), torch.float16, 2)
    assert reason is not None and "torch.float16" in reason


def test_one_rank_all_reduce_is_the_input_and_the_option_exists():
    x = torch.arange(6.0)
    assert all_reduce(x) is x
    assert EngineArgs().disable_custom_all_reduce is False
    assert EngineArgs(disable_custom_all_reduce=True).disable_custom_all_reduce is True
