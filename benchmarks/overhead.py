"""What fpt_peft adds to a plain PyTorch FPT: time per call where Python overhead shows, host syncs, a profile.

At realistic sizes the matrix products dwarf everything else (see ``benchmarks.cost``); here the model is MiniLM's
structure at width 32 (``tiny-bert``: the same 6 layers, 13 norms and positional embedding to wrap) and the batch
tiny, so that the fixed cost of fpt_peft's wrappers, hooks and checks becomes measurable. Two input kinds are measured,
each against the hand-made model of the official code (``plain_fpt``, see ``benchmarks.common``):

- ``continuous``: ``inputs_embeds`` (batch, tokens, input_dim) through a new ``Linear``;
- ``symbols``: ``input_ids`` and an ``attention_mask`` through a new ``Embedding`` (the validated path).

For each: the median time of a forward pass (eval mode, no grad) and of a training step, and the number of
host-device synchronisations per forward (reads of a tensor's value on the host, ``aten._local_scalar_dense``:
free on CPU, a pipeline stall on a GPU). A cProfile of fpt_peft's forward lists the Python functions of
fpt_peft and peft that run per call.

    python -m benchmarks.overhead
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import (
    MODELS,
    RESULTS_DIR,
    Variant,
    bar_plot,
    build_variant,
    environment,
    format_table,
    make_batch,
    median,
    paired_ratio,
    set_threads,
    synchronize,
    train_step,
    write_json,
)

CASES = {"continuous": {"input_dim": 48}, "symbols": {"input_vocab_size": 16}}
SETUPS = ("fpt_peft", "plain_fpt")


class SyncCounter(TorchDispatchMode):
    """Counts reads of tensor values on the host (``.item()``, ``int(t)``, ``bool(t)``): each is a GPU sync."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def forward_call(variant: Variant, batch: dict[str, torch.Tensor]) -> None:
    """One forward pass without labels' backward (eval mode, no grad)."""
    with torch.no_grad():
        variant.loss(**batch)


def time_per_call(fn: Any, calls: int, device: str) -> float:
    """Mean microseconds of ``calls`` calls of ``fn``."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls * 1e6


def measure_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """Forward and step times, syncs per forward, for fpt_peft and plain_fpt on input kind ``case``."""
    sizes: dict[str, Any] = {"device": args.device, **CASES[case]}
    batch = make_batch(args.batch, args.seq, args.output_dim, **sizes)
    built = {name: build_variant(name, args.model, args.output_dim, **sizes) for name in SETUPS}
    results: dict[str, dict[str, Any]] = {name: {"forward_us": [], "step_us": []} for name in SETUPS}
    for name, variant in built.items():
        for _ in range(3):
            train_step(variant, batch, args.device)
        counter = SyncCounter()
        with counter:
            forward_call(variant, batch)
        results[name]["syncs_per_forward"] = counter.count
    order = list(SETUPS)
    for _ in range(args.repeats):
        for name in order:
            variant = built[name]
            variant.model.eval()
            forward = partial(forward_call, variant, batch)
            results[name]["forward_us"].append(time_per_call(forward, args.calls, args.device))
            variant.model.train()
            step = partial(train_step, variant, batch, args.device)
            results[name]["step_us"].append(time_per_call(step, args.calls, args.device))
        order.reverse()
    summary: dict[str, Any] = {}
    for name, values in results.items():
        summary[name] = {
            "forward_us": median(values["forward_us"]),
            "step_us": median(values["step_us"]),
            "syncs_per_forward": values["syncs_per_forward"],
            "forward_us_rounds": values["forward_us"],
            "step_us_rounds": values["step_us"],
        }
    fpt, plain = summary["fpt_peft"], summary["plain_fpt"]
    for kind in ("forward", "step"):
        # Paired within each round (the two set-ups ran back to back), then the median over rounds.
        pairs = list(zip(fpt[f"{kind}_us_rounds"], plain[f"{kind}_us_rounds"], strict=True))
        summary[f"{kind}_overhead_us"] = median(a - b for a, b in pairs)
        summary[f"{kind}_overhead"] = paired_ratio(fpt[f"{kind}_us_rounds"], plain[f"{kind}_us_rounds"]) - 1
    summary["profile"] = profile_forward(built["fpt_peft"], batch, args.profile_calls)
    return summary


def profile_forward(variant: Variant, batch: dict[str, torch.Tensor], calls: int) -> list[dict[str, Any]]:
    """cProfile of ``calls`` forward passes: the fpt_peft and peft functions, microseconds per forward."""
    variant.model.eval()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        forward_call(variant, batch)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, function), (_, ncalls, tottime, cumtime, _) in stats.items():
        if "fpt_peft" in filename or "/peft/" in filename:
            where = filename.split("site-packages/")[-1].split("/fpt_peft/")[-1]
            rows.append(
                {
                    "function": f"{where}:{line}({function})",
                    "calls_per_forward": ncalls / calls,
                    "own_us_per_forward": tottime / calls * 1e6,
                    "cumulative_us_per_forward": cumtime / calls * 1e6,
                }
            )
    return sorted(rows, key=lambda r: -r["own_us_per_forward"])


def report(args: argparse.Namespace, cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Print the tables, write the JSON and the plot."""
    headers = ["input", "set-up", "forward us", "step us", "syncs / forward"]
    rows: list[list[object]] = []
    for case, summary in cases.items():
        for name in SETUPS:
            s = summary[name]
            rows.append([case, name, s["forward_us"], s["step_us"], s["syncs_per_forward"]])
        rows.append(
            [
                case,
                "fpt_peft overhead",
                f"{summary['forward_overhead_us']:+.0f} us ({summary['forward_overhead']:+.1%})",
                f"{summary['step_overhead_us']:+.0f} us ({summary['step_overhead']:+.1%})",
                "",
            ]
        )
    settings = {key: getattr(args, key) for key in ("model", "device", "threads", "batch", "seq", "calls", "repeats")}
    data = {
        "benchmark": "overhead",
        "command": "python -m benchmarks.overhead " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "settings": settings,
        "environment": environment(args.device),
        "cases": cases,
    }
    name = args.name or "overhead"
    json_path = write_json(name, data, args.out_dir)
    panels = [
        (f"{kind} us (median)", {case: {n: cases[case][n][f"{kind}_us"] for n in SETUPS} for case in cases})
        for kind in ("forward", "step")
    ]
    png_path = bar_plot(
        name, panels, out_dir=args.out_dir, title=f"{args.model}: batch {args.batch} x {args.seq} tokens"
    )
    threads = torch.get_num_threads()
    print(f"\n{args.model}: batch {args.batch} x {args.seq} tokens, {args.device}, {threads} thread(s)")
    print(format_table(headers, rows))
    for case, summary in cases.items():
        print(f"\nfpt_peft / peft Python functions per forward ({case}), top 12 by own time:")
        top = summary["profile"][:12]
        print(
            format_table(
                ["function", "calls", "own us", "cumulative us"],
                [
                    [r["function"], r["calls_per_forward"], r["own_us_per_forward"], r["cumulative_us_per_forward"]]
                    for r in top
                ],
            )
        )
    print(f"wrote {json_path} and {png_path}")
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", choices=MODELS, default="tiny-bert", help="default tiny-bert: overhead in isolation"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1; 0: all)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=8)
    parser.add_argument("--output-dim", type=int, default=10)
    parser.add_argument("--calls", type=int, default=50, help="calls per timed round")
    parser.add_argument("--repeats", type=int, default=15, help="rounds; the median is reported")
    parser.add_argument("--profile-calls", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="result file name (default overhead)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.repeats, args.profile_calls = 2, 2, 5
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the measurement and report."""
    args = parse_args(argv)
    set_threads(args.threads)
    return report(args, {case: measure_case(case, args) for case in CASES})


if __name__ == "__main__":
    main()
