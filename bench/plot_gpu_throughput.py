"""Plot output tokens/s vs batch size (concurrent requests) for mmcore and HF generate().

Reads the JSON files of ``bench/bench_gpu_offline.py``: HF rows (batch B: 2 batches of B
requests), mmcore's sweep rows (same workload: 2 x B requests, B at a time) when present, and
the main mmcore run (all requests at once, ``concurrent_requests`` in flight) as one point.

Usage: python bench/plot_gpu_throughput.py OUT.png RESULT.json [RESULT.json ...]
"""

from __future__ import annotations

import json
import sys


def series(result: dict) -> dict[str, list[tuple[int, float]]]:
    """Label -> [(batch, output tok/s)] of one benchmark result."""
    label = f"{result['device'].replace('NVIDIA ', '')}, {result['date'][:16]}"
    out: dict[str, list[tuple[int, float]]] = {}
    hf = [(r["batch"], r["out_tok_per_s"]) for r in result.get("hf", []) if "out_tok_per_s" in r]
    if hf:
        out[f"HF generate ({label})"] = hf
    mm = [(r["batch"], r["out_tok_per_s"]) for r in result["mmcore"].get("sweep", [])]
    main = result["mmcore"].get("graphs")
    if main:
        mm.append((result["concurrent_requests"], main["out_tok_per_s"]))
    if mm:
        out[f"mmcore ({label})"] = sorted(set(mm))
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png, paths = sys.argv[1], sys.argv[2:]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        for name, points in series(result).items():
            xs, ys = zip(*sorted(points))
            style = "o-" if name.startswith("mmcore") else "s--"
            ax.plot(xs, ys, style, label=name)
    ax.set_xscale("log", base=2)
    ticks = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
    ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    ax.set_xlabel("batch size / concurrent requests")
    ax.set_ylabel("output tokens / s")
    ax.set_title("LLaVA-1.5-7B (random fp16 weights), 1 image + 64 text tokens, 128 out")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
