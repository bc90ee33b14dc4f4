"""Tensor parallelism on GPUs: TP=2 against TP=1 on the same machine (nvidia-h200-x2).

Models (random weights, ``load_format="dummy"``):
  * ``llava-1.5-7b`` (``--dtype``, bf16 by default): batch-1 TTFT / ITL (5 requests: one
    336x336 image + 64 text tokens, 64 output tokens; medians), TTFT of 640-token text
    prompts, and offline throughput of ``--num-requests`` such requests, at TP=1, TP=2 (the
    one-shot peer all-reduce) and TP=2 with NCCL only (``disable_custom_all_reduce``; no
    throughput run); the goal is ITL(TP=2) <= 0.6 x ITL(TP=1). ``--profile-dir``: PyTorch
    profiler traces of one request at TP=2 and TP=1 (``Engine.start_profile``).
  * ``llava-llama2-70b`` (bf16; LLaVA-1.5's CLIP-L + projector over a Llama-2-70B LM, which
    needs two GPUs): batch-1 ITL against the bound (LM weight bytes + KV bytes) / (2 x copy
    bandwidth) -- goal <= 1.4x -- and offline throughput, at TP=2 only.
  * ``qwen2.5-vl-7b-instruct`` (bf16): batch-1 TTFT / ITL at TP=2 and TP=1 (one image of
    mixed sizes + 64 text tokens, 64 output tokens; goal ITL ratio <= 0.6).
  * Encoder TP vs data parallel (TP=2, LLaVA-1.5-7B): one step's worth of 64 one-image prompts
    with 1 output token each, ``mm_encoder_tp_mode="weights"`` vs ``"data"``.
  * All-reduce: NCCL vs the one-shot peer all-reduce of ``[batch, hidden]`` bf16, eager and
    replayed 64 in a row in a CUDA graph; its share of a decode step: one graph-replayed
    all-reduce times 2 x layers over the step period (an estimate: the step's own all-reduces
    are not timed inside the workers).

Usage: python bench/bench_gpu_tp.py --out DIR [--num-requests 1000] [--sections encoder,70b,7b]
       [--enforce-eager]   (each section fits one 10-minute device call)
Writes DIR/results_gpu_tp.json and prints it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import numpy as np
import torch

from bench_gpu_offline import _latency as batch1_latency  # the script folder is on sys.path
from bench_gpu_offline import make_requests, measure_machine
from bench_gpu_qwen2_vl import MODEL as QWEN
from bench_gpu_qwen2_vl import image_requests as qwen_image_requests
from mmcore import Engine, SamplingParams
from mmcore.testing.configs import CHAT_TEMPLATES, REAL_CONFIGS
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

TEXT_LEN, OUTPUT_LEN = 64, 64
BIG = "llava-llama2-70b"


def _register_70b() -> None:
    """LLaVA-1.5 with Llama-2-70B's LM shape (GQA 64 / 8 heads), bf16."""
    config = copy.deepcopy(REAL_CONFIGS["llava-1.5-7b"])
    config["text_config"].update(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        dtype="bfloat16",
    )
    config["dtype"] = "bfloat16"
    REAL_CONFIGS[BIG] = config
    CHAT_TEMPLATES[BIG] = CHAT_TEMPLATES["llava-1.5-7b"]


def lm_bytes(name: str, context_len: int) -> dict:
    """Bytes a batch-1 decode step reads: LM matmul weights (embedding excluded) and the KV of
    ``context_len`` tokens, in 2-byte dtypes."""
    t = REAL_CONFIGS[name]["text_config"]
    h, i, layers = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    head_dim = h // t["num_attention_heads"]
    q, kv = h, t["num_key_value_heads"] * head_dim
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * i
    weights = 2 * (layers * per_layer + t["vocab_size"] * h)
    kv_bytes = 2 * 2 * layers * kv * context_len
    return {"lm_weight_bytes": weights, "kv_bytes": kv_bytes, "layers": layers, "hidden": h}


def throughput(engine: Engine, num: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)
    requests = make_requests(num, TEXT_LEN, 336, seed=7)
    start = time.perf_counter()
    outputs = engine.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == OUTPUT_LEN for o in outputs)
    return {"num_requests": num, "elapsed_s": elapsed, "req_per_s": num / elapsed,
            "out_tok_per_s": num * OUTPUT_LEN / elapsed}  # fmt: skip


def latency(engine: Engine) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)
    medians = batch1_latency(engine, make_requests(5, TEXT_LEN, 336, seed=20), params)
    return {"ttft_ms": medians["ttft_s"] * 1e3, "itl_ms": medians["itl_s"] * 1e3}


def encoder_step(engine: Engine, num_images: int = 64) -> dict:
    """Wall time of ``num_images`` one-image prompts with 1 output token (one encoder batch)."""
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    engine.generate(make_requests(4, TEXT_LEN, 336, seed=1), params, use_tqdm=False)  # warm-up
    requests = make_requests(num_images, TEXT_LEN, 336, seed=3)
    start = time.perf_counter()
    engine.generate(requests, params, use_tqdm=False)
    return {"num_images": num_images, "elapsed_s": time.perf_counter() - start,
            "encoder_runs": engine.stats()["encoder_runs"]}  # fmt: skip


def _time_all_reduce(fn, x, graph: bool) -> float:
    """Seconds per all-reduce: 200 back to back (eager), or a graph of 64 in a row replayed."""
    for _ in range(20):
        fn(x)
    torch.cuda.synchronize()
    if not graph:
        start = time.perf_counter()
        for _ in range(200):
            fn(x)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / 200
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        for _ in range(64):
            fn(x)
    cuda_graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        cuda_graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / 640


def _all_reduce_worker(rank: int, port: int, hidden: int, batches: list, queue) -> None:
    import torch.distributed as dist

    from mmcore.distributed.peer_all_reduce import create_peer_all_reduce

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, device_id=device)  # fmt: skip
    peer = create_peer_all_reduce(dist.group.WORLD, rank, 2, device, torch.bfloat16)
    kinds = {"nccl": lambda x: dist.all_reduce(x)}
    if peer is not None:
        kinds["peer"] = peer.all_reduce
    times = {}
    for batch in batches:
        x = torch.randn(batch, hidden, dtype=torch.bfloat16, device="cuda")
        for name, fn in kinds.items():
            for graph in (False, True):
                key = f"{name}_{'graph' if graph else 'eager'}_{batch}x{hidden}"
                times[key] = _time_all_reduce(fn, x, graph)
    if rank == 0:
        queue.put(times)
    dist.destroy_process_group()


def all_reduce_seconds(hidden: int, batches: list) -> dict:
    """Seconds per all-reduce of ``[batch, hidden]`` bf16 over 2 GPUs: NCCL and the one-shot
    peer all-reduce, eager (back to back) and replayed in a CUDA graph."""
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_all_reduce_worker, args=(r, port, hidden, batches, queue))
             for r in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    times = queue.get(timeout=300)
    for p in procs:
        p.join()
    return times


def text_ttft(engine: Engine, prompt_len: int) -> float:
    """Median batch-1 TTFT (ms) of 5 text-only prompts of ``prompt_len`` tokens."""
    rng = np.random.default_rng(4)
    prompts = [{"prompt_token_ids": rng.integers(100, 30000, prompt_len).tolist()}
               for _ in range(5)]  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    return batch1_latency(engine, prompts, params)["ttft_s"] * 1e3


def profile_one_request(engine: Engine, folder: str) -> None:
    """A PyTorch profiler trace (every rank) of one batch-1 image request."""
    os.environ["MMCORE_TORCH_PROFILER_DIR"] = folder
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    engine.start_profile()
    engine.generate(make_requests(1, TEXT_LEN, 336, seed=99), params, use_tqdm=False)
    engine.stop_profile()


def qwen_tp(folder: str) -> dict:
    """Qwen2.5-VL-7B (bf16): batch-1 TTFT / ITL at TP=2 (peer all-reduce) and TP=1, one image
    of mixed sizes + 64 text tokens per request, 64 output tokens."""
    path = write_dummy_checkpoint(QWEN, os.path.join(folder, QWEN))
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)
    rows = {}
    for tp in (2, 1):
        engine = Engine(path, tensor_parallel_size=tp, load_format="dummy", device="cuda",
                        max_num_seqs=64, max_model_len=8192,
                        limit_mm_per_prompt={"image": 1, "video": 0})  # fmt: skip
        engine.generate(qwen_image_requests(2, TEXT_LEN, seed=1), params, use_tqdm=False)
        medians = batch1_latency(engine, qwen_image_requests(5, TEXT_LEN, seed=20), params)
        rows[f"tp{tp}"] = {"ttft_ms": medians["ttft_s"] * 1e3, "itl_ms": medians["itl_s"] * 1e3,
                           "peer_all_reduce": engine.stats()["peer_all_reduce"]}  # fmt: skip
        engine.shutdown()
        print(json.dumps({f"{QWEN} tp={tp}": rows[f"tp{tp}"]}), flush=True)
    rows["itl_ratio_tp2_over_tp1"] = rows["tp2"]["itl_ms"] / rows["tp1"]["itl_ms"]
    return rows


def run(args) -> dict:
    _register_70b()
    machine = measure_machine()
    torch.cuda.empty_cache()  # give the workers the probe's memory back
    sections = set(args.sections.split(","))
    folder = tempfile.mkdtemp()
    results: dict = {"machine": machine, "gpus": torch.cuda.device_count(), "models": {}}
    common = dict(load_format="dummy", device="cuda", enforce_eager=args.enforce_eager)
    small = write_dummy_checkpoint("llava-1.5-7b", os.path.join(folder, "llava-1.5-7b"))
    # Tensor-parallel engines first: their workers free the GPUs at shutdown; the TP=1 engine
    # lives in this process (its memory is only sure to be free when the process ends).
    modes = {}
    for mode in ("weights", "data") if "encoder" in sections else ():
        engine = Engine(small, tensor_parallel_size=2, mm_encoder_tp_mode=mode,
                        max_num_batched_tokens=64 * (576 + TEXT_LEN), max_num_seqs=64,
                        **common)  # fmt: skip
        modes[mode] = encoder_step(engine)
        engine.shutdown()
        print(json.dumps({f"encoder {mode}": modes[mode]}), flush=True)
    results["encoder_tp_vs_data"] = modes
    if "70b" in sections:
        big = write_dummy_checkpoint(BIG, os.path.join(folder, BIG))
        engine = Engine(big, tensor_parallel_size=2, max_num_seqs=64, **common)
        row = {"latency": latency(engine), "throughput": throughput(engine, args.num_requests)}
        engine.shutdown()
        shapes = lm_bytes(BIG, 576 + TEXT_LEN + OUTPUT_LEN // 2)
        bound_s = (shapes["lm_weight_bytes"] + shapes["kv_bytes"]) / (
            2 * machine["copy_bytes_per_s"]
        )
        row["itl_bound_ms"] = bound_s * 1e3
        row["itl_over_bound"] = row["latency"]["itl_ms"] / row["itl_bound_ms"]
        results["models"][BIG] = row
        print(json.dumps({BIG: row}), flush=True)
    if "qwen7b" in sections:
        results["models"][QWEN] = qwen_tp(folder)
    if "7b" not in sections:
        return results
    rows = {}
    variants = {"tp2": (2, False), "tp2_nccl": (2, True), "tp1": (1, False)}
    for name, (tp, nccl_only) in variants.items():
        engine = Engine(small, tensor_parallel_size=tp, max_num_seqs=256,
                        disable_custom_all_reduce=nccl_only, dtype=args.dtype,
                        **common)  # fmt: skip
        rows[name] = {"latency": latency(engine),
                      "ttft_text_640_ms": text_ttft(engine, 576 + TEXT_LEN),
                      "peer_all_reduce": engine.stats()["peer_all_reduce"]}  # fmt: skip
        if args.profile_dir and name != "tp2_nccl":
            profile_one_request(engine, os.path.join(args.profile_dir, name))
        if name != "tp2_nccl":
            rows[name]["throughput"] = throughput(engine, args.num_requests)
        engine.shutdown()
        print(json.dumps({f"llava-1.5-7b {name}": rows[name]}), flush=True)
    for name in ("tp2", "tp2_nccl"):
        rows[f"itl_ratio_{name}_over_tp1"] = (
            rows[name]["latency"]["itl_ms"] / rows["tp1"]["latency"]["itl_ms"]
        )
    shapes = lm_bytes("llava-1.5-7b", 576 + TEXT_LEN + OUTPUT_LEN // 2)
    ar = all_reduce_seconds(shapes["hidden"], [1, 8, 256, 576 + TEXT_LEN])
    rows["all_reduce_s"] = ar
    hidden = shapes["hidden"]
    for kind in ("nccl", "peer"):
        key = f"{kind}_graph_1x{hidden}"
        if key in ar:
            itl = rows["tp2" if kind == "peer" else "tp2_nccl"]["latency"]["itl_ms"] / 1e3
            rows[f"all_reduce_share_batch1_{kind}"] = 2 * shapes["layers"] * ar[key] / itl
    results["models"]["llava-1.5-7b"] = rows
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument(
        "--sections",
        default="encoder,70b,7b,qwen7b",
        help="comma list of encoder, 70b, 7b, qwen7b",
    )
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--dtype", default="bfloat16", help="7b section (fp16 keeps NCCL only)")
    parser.add_argument("--profile-dir", help="7b: profiler traces of one request, TP=2 and 1")
    args = parser.parse_args()
    if torch.cuda.device_count() < 2:
        raise SystemExit("needs 2 GPUs (device kind nvidia-h200-x2)")
    results = run(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results_gpu_tp.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
