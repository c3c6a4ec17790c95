"""One command for a GPU run: the speed and memory a GPU user asks about, and one full-size bit-memory pair.

    python -m benchmarks.gpu_suite --out-dir DIR            # one CUDA GPU
    python -m benchmarks.gpu_suite --out-dir DIR --quick    # a smoke run of every step, CPU or GPU (minutes)

Steps, each in its own process. A step that fails or times out is logged and the suite goes on.

1. ``cost``: GPT-2 small's shape at 16 x 512 tokens, fpt_peft against plain PyTorch FPT and full finetuning, in
   fp32, tf32, bf16 and bf16 + ``torch.compile``; the last also profiled (the operators that take the time).
2. ``cost-xl``: GPT-2 XL's shape in bf16 + compile, fpt_peft alone: its share of the matrix-product rate.
3. ``largest-batch``: the largest batch of 512-token examples per GPT-2 shape, FPT against full finetuning, with and
   without activation checkpointing (:mod:`benchmarks.largest_batch`).
4. ``bit-memory``: the paper's bit memory task at full size (5 x 1000 bits), pretrained against random MiniLM,
   1e4 steps (:mod:`benchmarks.pretrained_vs_random`).

First it prints the versions it found and what this torch and device can do: CUDA, bfloat16, TF32 (CUDA, Ampere or
newer) and ``torch.compile`` (a trial compile). It skips a step that needs what is missing, and states why. No
network is used. ``--quick`` runs the same steps on the smallest sizes (``tiny-bert``, a few tokens, a few steps).

Writes five files into ``--out-dir`` when it ends (a previous suite's are replaced; a folder holding anything else
is refused): ``suite.json`` (versions, capabilities, and per step its command, status,
seconds and results), ``suite.log`` (every step's output), ``cost.png``, ``memory.png`` and ``bit_memory.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from benchmarks.common import GPT2_SHAPES, bar_plot, environment

ROOT = Path(__file__).resolve().parent.parent
PRECISION_RUNS = (("fp32", False), ("tf32", False), ("bf16", False), ("bf16", True))
FILES = ("suite.log", "cost.png", "memory.png", "bit_memory.png", "suite.json")  # suite.json last: all is there


@dataclass
class Step:
    """One benchmark run of the suite: its name, its command, what it needs and the result file it writes."""

    name: str
    command: list[str]
    result: str
    needs: tuple[str, ...] = ()
    skip_reason: str | None = None
    report: dict[str, Any] = field(default_factory=dict)


def capabilities(device: str) -> dict[str, Any]:
    """Versions found (:func:`benchmarks.common.environment`: the code's commit too), and what this torch can do on
    ``device``: each capability is True or the reason it is not."""
    import accelerate

    cuda = device.startswith("cuda")
    found = {**environment(device), "accelerate": accelerate.__version__, "cuda_runtime": torch.version.cuda}
    can: dict[str, Any] = {"cuda": cuda or "no CUDA device (the CPU runs the steps)"}
    if cuda:
        can["bf16"] = torch.cuda.is_bf16_supported() or "this GPU has no bfloat16 matrix products"
        major, minor = torch.cuda.get_device_capability()
        can["tf32"] = major >= 8 or f"TF32 needs compute capability 8.0 or newer; this GPU has {major}.{minor}"
    else:
        can["bf16"] = _trial(lambda: torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16))
        can["tf32"] = "TF32 is a CUDA matrix-product mode"
    can["compile"] = _trial(lambda: torch.compile(lambda x: (x * 2).sum())(torch.ones(8, device=device)))
    return {"versions": found, "can": can}


def _trial(function: Any) -> bool | str:
    try:
        function()
        return True
    except Exception as error:  # any failure means the capability is missing; its message says why
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def plan(args: argparse.Namespace, scratch: Path) -> list[Step]:
    """The suite's steps, sized for ``--quick`` or for a GPU."""
    py = [sys.executable, "-m"]
    where = [f"--device={args.device}", f"--out-dir={scratch}"]
    small = "tiny-bert" if args.quick else "gpt2-shape"
    sizes = ["--quick"] if args.quick else ["--batch=16", "--seq=512", "--steps=5", "--repeats=5"]
    steps = []
    for precision, compile_ in PRECISION_RUNS:
        name = f"cost-{precision}{'-compile' if compile_ else ''}"
        command = [*py, "benchmarks.cost", f"--model={small}", f"--precision={precision}", *sizes, *where]
        command += [f"--name={name}", *(["--compile", "--profile"] if compile_ else [])]
        if args.quick and compile_:
            command += ["--variants", "fpt_peft"]  # one compile keeps the smoke run short
        elif not args.quick:
            command += ["--variants", "fpt_peft", "plain_fpt", "full"]
        needs = ("compile",) * compile_ + {"tf32": ("tf32",), "bf16": ("bf16",)}.get(precision, ())
        steps.append(Step(name, command, f"{name}.json", needs))
    xl = [*py, "benchmarks.cost", "--model=gpt2-xl-shape", "--precision=bf16", "--compile", "--variants", "fpt_peft"]
    xl += ["--batch=8", "--seq=512", "--steps=3", "--repeats=3", *where, "--name=cost-xl"]
    steps.append(Step("cost-xl", xl, "cost-xl.json", ("cuda", "bf16", "compile")))
    if args.quick:
        steps[-1].skip_reason = "--quick: GPT-2 XL's shape is a GPU's job"
    for model in ["tiny-bert"] if args.quick else list(GPT2_SHAPES):
        command = [*py, "benchmarks.largest_batch", f"--model={model}", *where, f"--name=largest_batch-{model}"]
        command += ["--memory-budget-gib=1", "--precision=fp32"] if args.quick else ["--precision=bf16"]
        steps.append(Step(f"largest-batch-{model}", command, f"largest_batch-{model}.json"))
    bits = [*py, "benchmarks.pretrained_vs_random", "--tasks", "bit_memory", "--seeds", "0", "--confirm-seeds"]
    bits += ["--quick"] if args.quick else ["--size=full", "--lrs", "1e-3", "--max-steps=10000"]
    steps.append(Step("bit-memory", [*bits, *where, "--name=bit_memory"], "bit_memory.json"))
    return steps


def run(step: Step, can: dict[str, Any], log: TextIO, timeout: float) -> None:
    """Run ``step`` (or skip it, with the reason) and record its status, seconds and output."""
    missing = {need: can[need] for need in step.needs if can[need] is not True}
    if step.skip_reason or missing:
        reason = step.skip_reason or "; ".join(f"{need}: {why}" for need, why in missing.items())
        step.report.update(status="skipped", reason=reason)
        print(f"[{step.name}] skipped: {reason}", file=log, flush=True)
        return
    print(f"[{step.name}] $ {' '.join(step.command[1:])}", file=log, flush=True)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run(step.command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        log.write(done.stdout + done.stderr)
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout:.0f} s"
    step.report.update(status=status, seconds=round(time.perf_counter() - start, 1))
    print(f"[{step.name}] {status} in {step.report['seconds']} s", file=log, flush=True)


def plots(steps: list[Step], scratch: Path, out_dir: Path) -> None:
    """``cost.png`` (step time and share of the matmul rate), ``memory.png`` (largest batch), ``bit_memory.png``."""
    results = {s.name: s.report["results"] for s in steps if "results" in s.report}
    costs = {name.removeprefix("cost-"): r for name, r in results.items() if r.get("benchmark") == "cost"}
    if costs:
        time_panel = {k: {v: r["variants"][v]["step_ms"] for v in r["variants"]} for k, r in costs.items()}
        share = {
            k: {v: 100 * r["variants"][v]["share_of_matmul_rate"] for v in r["variants"]} for k, r in costs.items()
        }
        bar_plot("cost", [("ms per step", time_panel), ("% of the matmul rate", share)], out_dir, log_panels=[0])
    batches = {
        n.removeprefix("largest-batch-"): r for n, r in results.items() if r.get("benchmark") == "largest_batch"
    }
    if batches:
        panel = {m: {v: r["variants"][v]["largest_batch"] for v in r["variants"]} for m, r in batches.items()}
        bar_plot("memory", [("largest batch at 512 tokens", panel)], out_dir, log_panels=[0])
    if (scratch / "bit_memory.png").exists():
        shutil.copyfile(scratch / "bit_memory.png", out_dir / "bit_memory.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True, help="a new folder, or a previous suite's (replaced)")
    parser.add_argument("--quick", action="store_true", help="every step at the smallest sizes (CPU: minutes)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--step-timeout", type=float, default=600.0, help="seconds before a step is stopped")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("argument --device: cuda was asked for, and this torch sees no CUDA device")
    if not args.device.startswith("cuda") and not args.quick:
        parser.error("argument --quick: without a CUDA device only --quick runs (the full suite is a GPU's job)")
    others = sorted(p.name for p in args.out_dir.iterdir() if p.name not in FILES) if args.out_dir.is_dir() else []
    if others or (args.out_dir.exists() and not args.out_dir.is_dir()):
        parser.error(
            f"argument --out-dir: {args.out_dir} holds other files than a suite's ({others[:3] or 'not a folder'}); "
            "give a new folder, or one a previous suite wrote (its files are replaced when this one ends)"
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every step and write the suite's files."""
    args = parse_args(argv)
    found = capabilities(args.device)
    print(json.dumps(found, indent=2), flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fpt-suite-") as tmp:
        scratch, done = Path(tmp), Path(tmp) / "suite"
        done.mkdir()
        steps = plan(args, scratch)
        with open(done / "suite.log", "w") as log:
            for step in steps:
                run(step, found["can"], log, args.step_timeout)
                if (scratch / step.result).exists() and step.report["status"] == "ok":
                    step.report["results"] = json.loads((scratch / step.result).read_text())
                print(f"{step.name}: {step.report['status']} {step.report.get('reason', '')}", flush=True)
        plots(steps, scratch, done)
        data = {
            "benchmark": "gpu_suite",
            "command": "python -m benchmarks.gpu_suite " + " ".join(sys.argv[1:] if argv is None else argv),
            "quick": args.quick,
            **found,
            "seconds": round(time.perf_counter() - start, 1),
            "steps": {s.name: {"command": " ".join(s.command[2:]), **s.report} for s in steps},
        }
        (done / "suite.json").write_text(json.dumps(data, indent=2) + "\n")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for name in FILES:  # each file whole or not at all: copied beside its target, then renamed over it
            if (done / name).exists():
                shutil.copyfile(done / name, args.out_dir / f".{name}.partial")
                (args.out_dir / f".{name}.partial").replace(args.out_dir / name)
            else:
                (args.out_dir / name).unlink(missing_ok=True)  # a previous suite's plot this one could not make
    print(f"suite: {data['seconds']} s; wrote {sorted(p.name for p in args.out_dir.iterdir())} to {args.out_dir}")
    return data


if __name__ == "__main__":
    main()
