"""Training cost of FPT through fpt_peft against full finetuning, peft's LN tuning and a plain PyTorch FPT.

One run measures four ways of training the same backbone on the same batch (continuous tokens in, one class out,
read from the last token, as in the paper's image tasks):

- ``fpt_peft``: ``get_peft_model(AutoModel..., FPTConfig(input_dim=..., output_dim=...))``.
- ``plain_fpt``: the official code's approach (kzl/universal-computation ``fpt.py``): a bare Hugging Face model,
  ``requires_grad=False`` by parameter name except layer norms and positional embeddings, hand-made
  ``nn.Linear`` input and output layers.
- ``ln_tuning``: peft's ``LNTuningConfig`` on the same hand-made model, targeting the same norms and positional
  embeddings, with the new input / output layers in ``modules_to_save`` (the same trainable set as FPT).
- ``full``: the same hand-made model with every weight trainable (full finetuning).

Step times (forward + backward + Adam step) are medians over ``--repeats`` rounds of ``--steps`` steps, the
variants interleaved (in rotating order) so that they share the machine's state; ratios are paired (taken within
each round, then the median over rounds). Memory is measured per variant
in its own subprocess: the bytes of trainable parameters, gradients and Adam state (counted from the tensors), and
the peak memory of the training steps above what the loaded model already held (CPU: peak resident set size, from
``getrusage``; CUDA: ``torch.cuda.max_memory_allocated``). FLOPs come from ``torch.utils.flop_counter``, and the
activations autograd keeps for the backward from ``saved_tensors_hooks``.

``--checkpointing`` recomputes each layer in the backward; ``--profile`` records the top operators by self time.
``--precision`` trains in ``fp32``, ``tf32`` (CUDA matrix products in TensorFloat-32) or ``bf16`` (weights in
float32, the forward under ``torch.autocast`` in bfloat16, as Accelerate's ``mixed_precision="bf16"``); ``--compile``
times ``torch.compile`` of each model (FLOPs and activations are counted on the model itself). The achieved rate
(counted FLOPs / step time) is set beside the device's matrix-product rate, measured in the same run with one
(batch x tokens, width) @ (width, 4 x width) product in the run's precision.

    python -m benchmarks.cost                       # MiniLM (packaged, pretrained), CPU
    python -m benchmarks.cost --model gpt2-shape    # GPT-2 small's shape, random weights
    python -m benchmarks.cost --device cuda --model gpt2-xl-shape --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils import flop_counter

from benchmarks.common import (
    MODELS,
    RESULTS_DIR,
    VARIANTS,
    Variant,
    bar_plot,
    build_variant,
    current_rss_bytes,
    environment,
    format_table,
    hidden_size,
    make_batch,
    median,
    mib,
    optimizer_state_tensors,
    paired_ratio,
    peak_rss_bytes,
    saved_tensor_bytes,
    set_threads,
    synchronize,
    tensor_bytes,
    train_step,
    write_json,
)

REFERENCE = "fpt_peft"
DEFAULT_BATCH = {"minilm": 16, "tiny-bert": 16}  # GPT-2 shapes: 4
DEFAULT_STEPS = {"minilm": 5, "tiny-bert": 20}  # GPT-2 shapes: 3
PRECISIONS = ("fp32", "tf32", "bf16")
Batch = dict[str, torch.Tensor]


def variant_for(name: str, args: argparse.Namespace) -> Variant:
    """Build set-up ``name`` with the sizes in ``args``, computing in ``args.precision`` (eager: not compiled)."""
    variant = build_variant(
        name,
        args.model,
        args.output_dim,
        input_dim=args.input_dim,
        device=args.device,
        adam=args.adam,
        checkpointing=args.checkpointing,
    )
    if args.precision != "bf16":
        return variant
    eager, device_type = variant.loss, torch.device(args.device).type

    def loss(**batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return eager(**batch)

    return dataclasses.replace(variant, loss=loss)


def compiled(variant: Variant, args: argparse.Namespace) -> Variant:
    """``variant`` with its model run through ``torch.compile`` (same weights and optimizer) when ``--compile``."""
    if not args.compile:
        return variant
    model = torch.compile(variant.model)
    device_type = torch.device(args.device).type

    def loss(**batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            out = model(**batch)
        return out if isinstance(out, torch.Tensor) else out.loss

    return dataclasses.replace(variant, loss=loss)


def set_precision(precision: str) -> None:
    """TensorFloat-32 matrix products on CUDA for ``tf32`` only (torch's default is off)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"


def matmul_tflops(args: argparse.Namespace, width: int, repeats: int = 20) -> float:
    """The device's rate, in TFLOP/s, for one (batch x tokens, width) @ (width, 4 x width) product in the run's
    precision (bf16 tensors for ``bf16``): the roofline the training steps are set against."""
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(args.batch * args.seq, width, generator=generator).to(args.device, dtype)
    b = torch.randn(width, 4 * width, generator=generator).to(args.device, dtype)
    times = []
    for i in range(repeats + 3):
        synchronize(args.device)
        start = time.perf_counter()
        a @ b
        synchronize(args.device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * a.shape[0] * width * 4 * width / median(times) / 1e12


def batch_for(args: argparse.Namespace) -> Batch:
    """The fixed batch of continuous tokens described by ``args``."""
    return make_batch(args.batch, args.seq, args.output_dim, input_dim=args.input_dim, device=args.device)


# ---------------------------------------------------------------------- FLOPs
def _cpu_sdpa(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return int(flop_counter.sdpa_flop_count(query, key, value))


def _cpu_sdpa_backward(grad: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return int(flop_counter.sdpa_backward_flop_count(grad, query, key, value))


# torch's counter has formulas for the CUDA attention kernels only; the CPU flash kernel does the same work.
_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def count_flops(variant: Variant, batch: Batch) -> tuple[int, int]:
    """FLOPs of one forward and one backward pass (matrix products and attention)."""
    variant.optimizer.zero_grad(set_to_none=True)
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS) as forward:
        loss = variant.loss(**batch)
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS) as backward:
        loss.backward()
    variant.optimizer.zero_grad(set_to_none=True)
    return forward.get_total_flops(), backward.get_total_flops()


def saved_activation_bytes(variant: Variant, batch: Batch) -> int:
    """Bytes that autograd keeps from one forward for the backward (parameters excluded), storages counted once.

    A frozen linear layer needs only its weight to pass the gradient on to its input, so autograd does not keep its
    input: FPT keeps fewer activations than full finetuning, though input gradients flow through every layer.
    """
    return saved_tensor_bytes(variant.model, lambda: variant.loss(**batch))


# ---------------------------------------------------------------------- memory (one subprocess per variant)
def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Memory of training set-up ``args.worker`` in this (fresh) process; see the module docstring."""
    variant = compiled(variant_for(args.worker, args), args)
    batch = batch_for(args)
    gc.collect()
    rss_before, rss_peak_before = current_rss_bytes(), peak_rss_bytes()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    for _ in range(max(2, args.warmup)):
        train_step(variant, batch, args.device)
    params = list(variant.model.parameters())
    trainable = [p for p in params if p.requires_grad]
    grads = [p.grad for p in params if p.grad is not None]
    rss_peak = peak_rss_bytes()
    result: dict[str, Any] = {
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "parameter_bytes": tensor_bytes(params),
        "trainable_parameter_bytes": tensor_bytes(trainable),
        "gradient_bytes": tensor_bytes(grads),
        "optimizer_state_bytes": tensor_bytes(optimizer_state_tensors(variant.optimizer)),
        "rss_before_training_bytes": rss_before,
        "rss_peak_bytes": rss_peak,
        # Peak of the training steps above what the process held with the model loaded. Exact when training set
        # a new peak (else loading did, and the figure is a lower bound).
        "rss_training_peak_delta_bytes": max(0, rss_peak - rss_before),
        "rss_training_set_the_peak": rss_peak > rss_peak_before,
    }
    result["train_state_bytes"] = (
        result["trainable_parameter_bytes"] + result["gradient_bytes"] + result["optimizer_state_bytes"]
    )
    if cuda:
        result["cuda_training_peak_delta_bytes"] = torch.cuda.max_memory_allocated() - allocated_before
    return result


def memory_in_subprocesses(args: argparse.Namespace, variants: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Run :func:`measure_memory` for every set-up, each in its own process (concurrently: no timing there)."""
    command = [sys.executable, "-m", "benchmarks.cost", *_shared_arguments(args)]
    root = Path(__file__).resolve().parent.parent
    running = {
        name: subprocess.Popen(
            [*command, f"--worker={name}"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name in variants
    }
    results = {}
    for name, process in running.items():
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"memory worker {name!r} failed:\n{err.decode()[-4000:]}")
        results[name] = json.loads(out.decode().strip().splitlines()[-1])
    return results


def _shared_arguments(args: argparse.Namespace) -> list[str]:
    keys = ("model", "device", "batch", "seq", "input_dim", "output_dim", "adam", "warmup", "threads", "precision")
    flags = ["--compile"] * args.compile + ["--checkpointing"] * args.checkpointing
    return [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in keys] + flags


# ---------------------------------------------------------------------- timing (all set-ups in this process)
def measure_time(args: argparse.Namespace, variants: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Step times and FLOPs of every set-up.

    The set-ups take turns (in rotating order) for ``repeats`` rounds of ``steps`` steps; a round's figure is the
    median of its steps, and the reported figure the median over rounds.
    """
    batch = batch_for(args)
    built = {name: variant_for(name, args) for name in variants}
    reference: Any = built[REFERENCE].model
    args.matmul_tflops = matmul_tflops(args, hidden_size(reference.get_base_model()))
    results: dict[str, dict[str, Any]] = {}
    for name, variant in built.items():
        forward, backward = count_flops(variant, batch)
        results[name] = {
            "forward_gflop": forward / 1e9,
            "backward_gflop": backward / 1e9,
            "saved_activation_bytes": saved_activation_bytes(variant, batch),
        }
        built[name] = variant = compiled(variant, args)
        for _ in range(args.warmup):
            train_step(variant, batch, args.device)
    rounds: dict[str, list[list[float]]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(args.repeats):
        for name in order:
            steps = [train_step(built[name], batch, args.device) for _ in range(args.steps)]
            rounds[name].append(
                [median(s[i] for s in steps) * 1e3 for i in range(3)] + [median(map(sum, steps)) * 1e3]
            )
        order = order[1:] + order[:1]
    if args.profile:
        for name, variant in built.items():
            results[name]["profile"] = top_kernels(variant, batch, args)
    for name, per_round in rounds.items():
        results[name].update(
            step_ms=median(r[3] for r in per_round),
            step_ms_rounds=[r[3] for r in per_round],
            forward_ms=median(r[0] for r in per_round),
            backward_ms=median(r[1] for r in per_round),
            optimizer_ms=median(r[2] for r in per_round),
        )
    return results


def top_kernels(variant: Variant, batch: Batch, args: argparse.Namespace, top: int = 12) -> list[dict[str, Any]]:
    """The operators (CUDA: kernels) that take a training step's time, by self time over ``args.steps`` steps."""
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda
    with profile(activities=activities) as profiler:
        for _ in range(args.steps):
            train_step(variant, batch, args.device)
    events = [e for e in profiler.key_averages() if e.key != "ProfilerStep*"]

    def self_us(event: Any) -> float:  # torch < 2.4 names the device time "cuda"
        if not cuda:
            return float(event.self_cpu_time_total)
        device_time: Any = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        return float(device_time)

    total = sum(map(self_us, events)) or 1.0
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    return [
        {
            "name": e.key,
            "self_ms_per_step": self_us(e) / 1e3 / args.steps,
            "share": self_us(e) / total,
            "calls_per_step": e.count / args.steps,
        }
        for e in ranked
    ]


# ---------------------------------------------------------------------- report
def report(args: argparse.Namespace, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Add ratios to the reference set-up; print the table; write the JSON and the plot."""
    ref = variants[REFERENCE]
    threads = torch.get_num_threads()
    cuda = args.device.startswith("cuda")
    peak_key = "cuda_training_peak_delta_bytes" if cuda else "rss_training_peak_delta_bytes"
    for values in variants.values():
        memory = values["memory"]
        values["gflop"] = values["forward_gflop"] + values["backward_gflop"]
        # Paired: the ratio within each round (the set-ups ran minutes apart at most), then the median over rounds.
        # Robust to a shared machine's slow and fast phases, which a ratio of two medians is not.
        values["step_time_ratio"] = paired_ratio(values["step_ms_rounds"], ref["step_ms_rounds"])
        values["flop_ratio"] = values["gflop"] / (ref["forward_gflop"] + ref["backward_gflop"])
        values["train_state_ratio"] = memory["train_state_bytes"] / ref["memory"]["train_state_bytes"]
        values["peak_memory_ratio"] = memory[peak_key] / max(1, ref["memory"][peak_key])
        values["saved_activation_ratio"] = values["saved_activation_bytes"] / ref["saved_activation_bytes"]
        values["achieved_tflops"] = values["gflop"] / values["step_ms"]  # GFLOP per ms = TFLOP/s
        values["share_of_matmul_rate"] = values["achieved_tflops"] / args.matmul_tflops
    headers = [
        "set-up",
        "trainable params",
        "step ms",
        "x fpt_peft",
        "fwd ms",
        "bwd ms",
        "Adam ms",
        "GFLOP fwd+bwd",
        "x fpt_peft",
        "TFLOP/s",
        "of matmul",
        "params+grads+Adam MiB",
        "x fpt_peft",
        "saved activations MiB",
        "x fpt_peft",
        ("CUDA" if cuda else "RSS") + " peak over model, MiB",
        "x fpt_peft",
    ]
    rows = [
        [
            name,
            v["memory"]["trainable_parameters"],
            v["step_ms"],
            f"{v['step_time_ratio']:.2f}",
            v["forward_ms"],
            v["backward_ms"],
            v["optimizer_ms"],
            f"{v['forward_gflop']:.1f}+{v['backward_gflop']:.1f}",
            f"{v['flop_ratio']:.2f}",
            f"{v['achieved_tflops']:.3g}",
            f"{v['share_of_matmul_rate']:.1%}",
            mib(v["memory"]["train_state_bytes"]),
            f"{v['train_state_ratio']:.1f}",
            mib(v["saved_activation_bytes"]),
            f"{v['saved_activation_ratio']:.2f}",
            mib(v["memory"][peak_key]),
            f"{v['peak_memory_ratio']:.2f}",
        ]
        for name, v in variants.items()
    ]
    keys = (
        "model",
        "device",
        "threads",
        "batch",
        "seq",
        "input_dim",
        "output_dim",
        "adam",
        "warmup",
        "steps",
        "repeats",
        "precision",
        "compile",
        "checkpointing",
    )
    plain = variants.get("plain_fpt")
    data = {
        "benchmark": "cost",
        "command": "python -m benchmarks.cost " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "settings": {key: getattr(args, key) for key in keys},
        "environment": environment(args.device),
        "reference": REFERENCE,
        "matmul_tflops": args.matmul_tflops,
        "fpt_peft_overhead_vs_plain_fpt": (
            None if plain is None else paired_ratio(ref["step_ms_rounds"], plain["step_ms_rounds"]) - 1
        ),
        "variants": variants,
    }
    name = args.name or f"cost-{args.model}"
    json_path = write_json(name, data, args.out_dir)
    phases = (("forward", "forward_ms"), ("backward", "backward_ms"), ("Adam", "optimizer_ms"), ("step", "step_ms"))
    png_path = bar_plot(
        name,
        [
            ("ms (median)", {phase: {n: v[key] for n, v in variants.items()} for phase, key in phases}),
            (
                "MiB",
                {
                    "params+grads+Adam": {n: mib(v["memory"]["train_state_bytes"]) for n, v in variants.items()},
                    "saved activations": {n: mib(v["saved_activation_bytes"]) for n, v in variants.items()},
                    "peak over model": {n: mib(v["memory"][peak_key]) for n, v in variants.items()},
                },
            ),
            (
                "GFLOP per step",
                {
                    "forward": {n: v["forward_gflop"] for n, v in variants.items()},
                    "backward": {n: v["backward_gflop"] for n, v in variants.items()},
                },
            ),
        ],
        out_dir=args.out_dir,
        title=f"{args.model}: batch {args.batch} x {args.seq} tokens, {args.device}, {args.precision}"
        + (", compiled" if args.compile else "")
        + f", {threads} thread(s)",
    )
    print(
        f"\n{args.model}: batch {args.batch} x {args.seq} tokens of width {args.input_dim}, {args.device}, "
        f"{threads} thread(s), Adam {args.adam}, {args.precision}{' compiled' if args.compile else ''}; medians of "
        f"{args.repeats} rounds x {args.steps} steps; matrix products at {args.matmul_tflops:.3g} TFLOP/s"
    )
    print(format_table(headers, rows))
    if plain is not None:
        print(f"fpt_peft step time vs plain PyTorch FPT: {data['fpt_peft_overhead_vs_plain_fpt']:+.1%}")
    for name, values in variants.items():
        if "profile" in values:
            kernels = ", ".join(f"{k['name']} {k['share']:.0%}" for k in values["profile"][:5])
            print(f"{name}: top self time: {kernels}")
    print(f"wrote {json_path} and {png_path}")
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="minilm")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: stable on a shared box; 0: all)"
    )
    parser.add_argument("--batch", type=int, default=None, help="default: 16 for minilm, 4 for GPT-2 shapes")
    parser.add_argument("--seq", type=int, default=64, help="tokens per example (default 64: CIFAR-10 in 4x4 patches)")
    parser.add_argument("--input-dim", type=int, default=48, help="width of a continuous token (default 48)")
    parser.add_argument("--output-dim", type=int, default=10)
    parser.add_argument("--adam", choices=("fused", "foreach", "loop"), default="fused")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per set-up")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 5; GPT-2 shapes 3)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default), tf32 (CUDA), bf16")
    parser.add_argument("--compile", action="store_true", help="time torch.compile of each model")
    parser.add_argument(
        "--checkpointing", action="store_true", help="activation checkpointing of every layer (recompute in backward)"
    )
    parser.add_argument("--profile", action="store_true", help="record each set-up's top kernels by self time")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny batch, one step)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="result file name (default cost-<model>)")
    parser.add_argument("--worker", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.warmup, args.steps, args.repeats = args.batch or 2, 8, 1, 1, 1
    if args.batch is None:
        args.batch = DEFAULT_BATCH.get(args.model, 4)
    if args.steps is None:
        args.steps = DEFAULT_STEPS.get(args.model, 3)
    if args.precision == "tf32" and not args.device.startswith("cuda"):
        parser.error("--precision tf32 is a CUDA matrix-product mode; on the CPU use fp32 or bf16.")
    if REFERENCE not in args.variants:
        args.variants.insert(0, REFERENCE)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or, with ``--worker``, one memory measurement) and report."""
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    set_threads(args.threads)
    set_precision(args.precision)
    if args.worker:
        print(json.dumps(measure_memory(args)))
        return None
    variants = tuple(args.variants)
    memory = memory_in_subprocesses(args, variants)
    timing = measure_time(args, variants)
    for name in variants:
        timing[name]["memory"] = memory[name]
    return report(args, timing)


if __name__ == "__main__":
    main()
