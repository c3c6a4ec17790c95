"""The largest batch of 512-token examples that trains in memory: FPT against full finetuning, with and without
activation checkpointing.

FPT trains under 1% of the weights, but its backward still has to reach the first layer's norms and the input layer,
so autograd keeps activations through the whole network: activations, not weights, bound its batch. This benchmark
measures how far.

- On CUDA the search is real. Each (set-up, checkpointing) pair runs in its own process. It doubles the batch from 1
  until two training steps (forward, backward, Adam) raise ``torch.cuda.OutOfMemoryError``. Then it bisects between
  the last batch that fitted and the first that did not, to within 1/16. It also records the peak allocated memory at
  the batch it found.
- On a CPU, running out of memory kills the process instead, so the figure is counted, not searched, and labelled so:
  ``(--memory-budget-gib - weights - gradients and Adam state) / bytes kept per example``. The bytes kept per example
  are what autograd saves for the backward (``saved_tensors_hooks``, at batches 1 and 2). With checkpointing they
  are each layer's input, which checkpointing keeps, plus one layer's activations recomputed during the backward.

    python -m benchmarks.largest_batch --device cuda --model gpt2-xl-shape --precision bf16
    python -m benchmarks.largest_batch --model tiny-bert --memory-budget-gib 1      # counted, on a CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    MODELS,
    RESULTS_DIR,
    environment,
    format_table,
    hidden_size,
    make_batch,
    saved_tensor_bytes,
    set_threads,
    tensor_bytes,
    train_step,
    write_json,
)
from benchmarks.cost import variant_for

SEARCHED = ("fpt_peft", "full")


def largest(fits: Any, limit: int) -> int:
    """The largest ``b <= limit`` with ``fits(b)``: doubling from 1, then bisection to within 1/16 (0: none fits)."""
    fitted, failed = 0, 1
    while failed <= limit and fits(failed):
        fitted, failed = failed, 2 * failed
    if failed > limit:
        return fitted
    while failed - fitted > max(1, fitted // 16):
        middle = (fitted + failed) // 2
        fitted, failed = (middle, failed) if fits(middle) else (fitted, middle)
    return fitted


def search_on_cuda(args: argparse.Namespace) -> dict[str, Any]:
    """The real search for set-up ``args.worker`` in this (fresh) process; see the module docstring."""
    variant = variant_for(args.worker, args)
    peaks: dict[int, int] = {}

    def fits(batch_size: int) -> bool:
        batch = make_batch(batch_size, args.seq, args.output_dim, input_dim=args.input_dim, device=args.device)
        torch.cuda.reset_peak_memory_stats()
        try:
            for _ in range(2):  # the second step holds Adam's state as well
                train_step(variant, batch, args.device)
            peaks[batch_size] = torch.cuda.max_memory_allocated()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            variant.optimizer.zero_grad(set_to_none=True)
            del batch
            gc.collect()
            torch.cuda.empty_cache()

    found = largest(fits, args.max_batch)
    return {"largest_batch": found, "peak_bytes_at_largest": peaks.get(found), "method": "searched"}


def count_on_cpu(args: argparse.Namespace) -> dict[str, Any]:
    """The counted figure for set-up ``args.worker``; see the module docstring."""
    variant = variant_for(args.worker, args)
    params = list(variant.model.parameters())
    fixed = tensor_bytes(params) + 3 * tensor_bytes(p for p in params if p.requires_grad)  # + grads, Adam's 2

    def kept(batch_size: int) -> int:
        batch = make_batch(batch_size, args.seq, args.output_dim, input_dim=args.input_dim)
        return saved_tensor_bytes(variant.model, lambda: variant.loss(**batch))

    per_example = kept(2) - kept(1)
    if args.checkpointing:
        model: Any = variant.model
        base = model.get_base_model() if args.worker == "fpt_peft" else model.transformer
        layers = int(getattr(base.config, "num_hidden_layers", None) or base.config.n_layer)
        whole = variant_for(args.worker, argparse.Namespace(**{**vars(args), "checkpointing": False}))
        batch1 = make_batch(1, args.seq, args.output_dim, input_dim=args.input_dim)
        one_layer = saved_tensor_bytes(whole.model, lambda: whole.loss(**batch1)) // layers
        per_example += layers * args.seq * hidden_size(base) * 4 + one_layer
    budget = int(args.memory_budget_gib * 2**30)
    found = max(0, min(args.max_batch, (budget - fixed) // per_example))
    return {
        "largest_batch": found,
        "fixed_bytes": fixed,
        "bytes_per_example": per_example,
        "memory_budget_bytes": budget,
        "method": "counted",
    }


def run_worker(args: argparse.Namespace, name: str, checkpointing: bool) -> dict[str, Any]:
    """Measure one (set-up, checkpointing) pair in a fresh process (a CUDA out-of-memory error leaves no trace)."""
    keys = ("model", "device", "seq", "input_dim", "output_dim", "precision", "max_batch", "memory_budget_gib")
    command = [sys.executable, "-m", "benchmarks.largest_batch", f"--worker={name}"]
    command += [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in keys]
    command += ["--checkpointing"] * checkpointing
    done = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"largest-batch worker {name!r} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="gpt2-shape")
    parser.add_argument("--device", default="cpu", help="cpu (default: counted) or cuda (searched)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per example (default 512)")
    parser.add_argument("--input-dim", type=int, default=48)
    parser.add_argument("--output-dim", type=int, default=10)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help="bf16 autocast (default)")
    parser.add_argument("--max-batch", type=int, default=4096, help="stop the search here (default 4096)")
    parser.add_argument("--memory-budget-gib", type=float, default=16.0, help="CPU only: the memory to fill")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="result file name (default largest_batch-<model>)")
    parser.add_argument("--worker", choices=SEARCHED, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.memory_budget_gib <= 0:
        parser.error("arguments --max-batch and --memory-budget-gib: expected positive numbers")
    args.compile, args.adam = False, "fused" if args.device.startswith("cuda") else "foreach"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Find the largest batch of every (set-up, checkpointing) pair and report (or, as ``--worker``, one pair)."""
    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    set_threads(1)
    if args.worker:
        print(json.dumps(search_on_cuda(args) if cuda else count_on_cpu(args)))
        return None
    results = {
        f"{name}{' + checkpointing' if checkpointing else ''}": run_worker(args, name, checkpointing)
        for name in SEARCHED
        for checkpointing in (False, True)
    }
    method = "searched on the device" if cuda else f"counted against {args.memory_budget_gib:g} GiB"
    print(f"\n{args.model}: largest batch of {args.seq}-token examples, {args.precision}, {method}")
    print(format_table(["set-up", "largest batch"], [[name, r["largest_batch"]] for name, r in results.items()]))
    data = {
        "benchmark": "largest_batch",
        "command": "python -m benchmarks.largest_batch " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: getattr(args, k) for k in ("model", "device", "seq", "precision", "max_batch")},
        "method": method,
        "environment": environment(args.device),
        "variants": results,
    }
    print(f"wrote {write_json(args.name or f'largest_batch-{args.model}', data, args.out_dir)}")
    return data


if __name__ == "__main__":
    main()
