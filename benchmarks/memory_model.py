"""Per-device memory of FPT training under DDP and FSDP: a model, its tables, and a check against measured memory.

The model (bytes per device, :func:`per_device_bytes`), for a base of ``P`` parameters of which FPT trains ``T``
(layer norms, positions, input and output layers), ``N`` devices, micro-batch ``B`` x ``S`` tokens per device:

- base weights: ``w * P`` (DDP), ``w * P / N`` (FSDP), ``w`` bytes per stored weight (bf16: 2);
- FPT's trained state: ``16 * T`` (fp32 weight, gradient and Adam's two moments), ``/ N`` under FSDP; DDP adds its
  gradient buckets (``4 * T``);
- FSDP's gathered weights: the root unit (embeddings, final norm, FPT's layers) and two blocks (the one computing
  and the one prefetched), in the compute dtype (``c`` bytes);
- activations: ``a * B * S * (L * k + 2 * h)`` where ``k`` is what autograd keeps per token and block. The frozen
  linear layers keep nothing (their weight gradient is not needed), so with FPT, as transformers runs these models:
  the norms' inputs (LayerNorm: ``h`` each; RMSNorm also keeps the normalised input: ``2h`` each), attention's
  queries, keys and values (GPT-2's fused projection keeps its whole ``3h`` output alive; Llama: ``h``), the copies
  of keys and values that the KV cache makes (``2 h_kv``), its output (``h``), and the feed-forward's activation
  (GPT-2's tanh GELU: ``4f``, four elementwise results; SwiGLU: ``3f``). GPT-2: ``k = 8h + 4f = 24h``; Llama:
  ``6h + 2 h_kv + 3f``; both checked against ``saved_tensors_hooks`` (:func:`check`). With activation checkpointing
  ``k = h`` (each block's input) plus one block's full activations while it is recomputed;
- working memory: one block's activations again (the backward's temporaries).

A device fits a configuration when the sum is at most 90% of its memory (CUDA context, NCCL buffers and allocator
fragmentation take the rest; not modelled). Nothing here depends on the data; the bytes are those of the steady state
of training (loading is not modelled: every process builds the whole base before sharding it).

    python -m benchmarks.memory_model                 # the tables (instant)
    python -m benchmarks.memory_model --measure       # and the check against measured CPU memory (minutes)
    python -m benchmarks.memory_model --quick         # a small check (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
HEADROOM = 0.9
INPUT_DIM, CLASSES = 48, 10  # as benchmarks/memory_probe.py (CIFAR-10)


@dataclass(frozen=True)
class Shape:
    """A transformer's shape: ``positions`` > 0 for learned positional embeddings (0: rotary), ``gated`` for a
    SwiGLU feed-forward (3 matrices), ``biases`` for GPT-2's biases and LayerNorm (RMSNorm without)."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    positions: int
    gated: bool
    biases: bool

    @property
    def kv(self) -> int:
        """Width of the keys (and values)."""
        return self.kv_heads * self.hidden // self.heads

    def block_parameters(self) -> int:
        """Parameters of one transformer block."""
        h, f, kv = self.hidden, self.intermediate, self.kv
        attention = 2 * h * h + 2 * h * kv + ((h + 2 * kv) + h if self.biases else 0)
        mlp = (3 if self.gated else 2) * h * f + ((f + h) if self.biases else 0)
        return attention + mlp + self.norm_parameters() * 2

    def norm_parameters(self) -> int:
        """Parameters of one norm."""
        return 2 * self.hidden if self.biases else self.hidden

    def root_parameters(self) -> int:
        """Parameters outside the blocks: embeddings, final norm, FPT's input and output layers."""
        h = self.hidden
        return (self.vocab + self.positions) * h + self.norm_parameters() + self.new_layer_parameters()

    def new_layer_parameters(self) -> int:
        """FPT's new input (``Linear(48, h)``) and output (``Linear(h, 10)``) layers."""
        return (INPUT_DIM + 1) * self.hidden + (self.hidden + 1) * CLASSES

    def parameters(self) -> int:
        """All parameters of the model FPT trains: the base, and FPT's copies of the norms and positions and its new
        layers."""
        copies = self.trained_norms() + self.positions * self.hidden
        return self.layers * self.block_parameters() + self.root_parameters() + copies

    def trained_norms(self) -> int:
        """FPT's trained copies of the norms."""
        return (2 * self.layers + 1) * self.norm_parameters()

    def trainable(self) -> int:
        """What FPT trains: the norms, the positions, the new layers."""
        return self.trained_norms() + self.positions * self.hidden + self.new_layer_parameters()

    def kept_per_token(self, checkpointing: bool) -> int:
        """Activation values autograd keeps per token and block, as transformers runs these models (measured with
        ``saved_tensors_hooks``; see the module docstring)."""
        if checkpointing:
            return self.hidden
        h, f, kv = self.hidden, self.intermediate, self.kv
        norms = 2 * h if self.biases else 4 * h  # LayerNorm keeps its input; RMSNorm its input and normalised input
        attention = (3 * h if self.biases else h) + 2 * kv + h  # fused qkv output or queries; KV-cache copies; output
        mlp = 4 * f if self.gated is False else 3 * f  # GPT-2's tanh GELU: 4 elementwise results; SwiGLU: 3
        return norms + attention + mlp


SHAPES = [
    Shape("GPT-2 small", 12, 768, 3072, 12, 12, 50257, 1024, False, True),
    Shape("GPT-2 medium", 24, 1024, 4096, 16, 16, 50257, 1024, False, True),
    Shape("GPT-2 large", 36, 1280, 5120, 20, 20, 50257, 1024, False, True),
    Shape("GPT-2 xl", 48, 1600, 6400, 25, 25, 50257, 1024, False, True),
    Shape("Llama-3-8B shape", 32, 4096, 14336, 32, 8, 128256, 0, True, False),
    Shape("Llama-3-70B shape", 80, 8192, 28672, 64, 8, 128256, 0, True, False),
]


@dataclass(frozen=True)
class Precision:
    """Bytes per stored base weight, per weight in compute, per kept activation."""

    weight: int = 2
    compute: int = 2
    activation: int = 2


BF16 = Precision()
FP32 = Precision(4, 4, 4)


def per_device_bytes(
    shape: Shape,
    devices: int,
    sharded: bool,
    tokens: int,
    checkpointing: bool = False,
    precision: Precision = BF16,
) -> dict[str, float]:
    """The model's bytes per device, by component (``tokens``: micro-batch x sequence length per device)."""
    split = devices if sharded else 1
    base = shape.parameters() - shape.trainable()
    full_block = precision.activation * tokens * shape.kept_per_token(False)
    kept = precision.activation * tokens * (shape.layers * shape.kept_per_token(checkpointing) + 2 * shape.hidden)
    parts = {
        "base weights": precision.weight * base / split,
        "trained state": 16 * shape.trainable() / split + (0 if sharded else 4 * shape.trainable()),
        "gathered weights": (
            precision.compute * (shape.root_parameters() + 2 * shape.block_parameters())
            if sharded and devices > 1
            else 0
        ),
        "activations": kept + (full_block if checkpointing else 0),
        "working": full_block,
    }
    parts["total"] = sum(parts.values())
    return parts


def largest_fitting(devices: int, gib: int, sharded: bool, tokens: int, checkpointing: bool) -> str:
    """The largest of :data:`SHAPES` whose training fits on each of ``devices`` devices of ``gib`` GiB."""
    fitting = [
        s.name
        for s in SHAPES
        if per_device_bytes(s, devices, sharded, tokens, checkpointing)["total"] <= HEADROOM * gib * GIB
    ]
    return fitting[-1] if fitting else "none"


def tables(tokens: int = 16 * 512) -> dict[str, Any]:
    """Per-device GiB by component for every shape (8 devices) and the largest base that fits."""
    breakdown = []
    for shape in SHAPES:
        for sharded in (False, True):
            for checkpointing in (False, True):
                parts = per_device_bytes(shape, 8, sharded, tokens, checkpointing)
                breakdown.append(
                    {
                        "shape": shape.name,
                        "parameters": shape.parameters(),
                        "trainable": shape.trainable(),
                        "mode": "FSDP" if sharded else "DDP",
                        "checkpointing": checkpointing,
                        **{k: v / GIB for k, v in parts.items()},
                    }
                )
    fits = [
        {
            "devices": devices,
            "gib": gib,
            "checkpointing": checkpointing,
            "DDP": largest_fitting(devices, gib, False, tokens, checkpointing),
            "FSDP": largest_fitting(devices, gib, True, tokens, checkpointing),
        }
        for gib in (24, 80)
        for devices in (1, 8, 64)
        for checkpointing in (False, True)
    ]
    return {"tokens_per_device": tokens, "breakdown_8_devices": breakdown, "largest_fitting": fits}


# ---------------------------------------------------------------------------------------------- measured check
MEASURED = {
    "GPT-2 small": SHAPES[0],
    "GPT-2 medium": SHAPES[1],
    "Llama shape, 8 x 512": Shape("Llama shape, 8 x 512", 8, 512, 1792, 8, 2, 32000, 0, True, False),
    "quick": Shape("quick", 2, 256, 1024, 4, 4, 50257, 1024, False, True),
}


def probe(shape: Shape, processes: int, shard: bool, checkpointing: bool, batch: int, length: int) -> dict[str, Any]:
    """Run :mod:`benchmarks.memory_probe` on ``processes`` CPU processes; returns rank 0's record."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command += ["-m", "benchmarks.memory_probe", "--out", out, "--batch", str(batch), "--tokens", str(length)]
        command += ["--layers", str(shape.layers), "--hidden", str(shape.hidden), "--heads", str(shape.heads)]
        command += ["--family", "llama" if shape.gated else "gpt2", "--intermediate", str(shape.intermediate)]
        command += ["--kv-heads", str(shape.kv_heads), "--vocab", str(shape.vocab)]
        command += ["--shard"] if shard else []
        command += ["--checkpointing"] if checkpointing else []
        # glibc's malloc raises its mmap threshold as large blocks are freed, then keeps freed tensors in its heap:
        # RSS would count memory no tensor holds. A fixed threshold returns every large tensor to the system.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=1800)
        return dict(json.loads((Path(out) / "rank0.json").read_text()))


def check(names: list[str], batch: int, length: int) -> list[dict[str, Any]]:
    """Measured against modelled bytes per process, fp32 on CPU: one process unsharded (what DDP keeps per device),
    2 processes sharded, and sharded with activation checkpointing."""
    rows = []
    for name in names:
        shape = MEASURED[name]
        for processes, shard, checkpointing in ((1, False, False), (2, True, False), (2, True, True)):
            record = probe(shape, processes, shard, checkpointing, batch, length)
            model = per_device_bytes(shape, processes, shard, batch * length, checkpointing, FP32)
            assert record["parameters"] == shape.parameters(), (record["parameters"], shape.parameters())
            assert record["trainable"] == shape.trainable(), (record["trainable"], shape.trainable())
            weights = record["rss_model"] - record["rss_empty"]
            step = (record["rss_step_peak"] or 0) - record["rss_step_start"]
            rows.append(
                {
                    "shape": name,
                    "processes": processes,
                    "mode": "FSDP" if shard else "one process",
                    "checkpointing": checkpointing,
                    "weights_measured": weights,
                    "weights_model": model["base weights"] + 4 * shape.trainable() / (processes if shard else 1),
                    "step_measured": step,
                    "step_model": model["total"] - model["base weights"] - 4 * shape.trainable() / processes,
                    "activations_measured": record["saved_activation_bytes"],
                    "activations_model": model["activations"] if not shard else None,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the tables (and the measured check); write ``benchmarks/results/memory_model.json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="Also measure GPT-2 small, medium, a Llama shape.")
    parser.add_argument("--quick", action="store_true", help="Measure one tiny shape only (a smoke test).")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="memory_model")
    args = parser.parse_args(argv)
    from benchmarks.common import format_table, write_json

    data: dict[str, Any] = {"model": tables(), "shapes": [asdict(s) for s in SHAPES]}
    rows = data["model"]["breakdown_8_devices"]
    columns = ["base weights", "trained state", "gathered weights", "activations", "working", "total"]
    print("GiB per device, 8 devices, micro-batch 16 x 512 tokens, bf16:")
    print(
        format_table(
            ["shape", "mode", "AC", *columns],
            [[r["shape"], r["mode"], r["checkpointing"], *(f"{r[c]:.2f}" for c in columns)] for r in rows],
        )
    )
    fits = data["model"]["largest_fitting"]
    print("\nLargest base that fits (micro-batch 16 x 512 tokens per device):")
    print(
        format_table(
            ["devices", "GiB each", "AC", "DDP", "FSDP"],
            [[f["devices"], f["gib"], f["checkpointing"], f["DDP"], f["FSDP"]] for f in fits],
        )
    )
    if args.measure or args.quick:
        names = ["quick"] if args.quick else ["GPT-2 small", "GPT-2 medium", "Llama shape, 8 x 512"]
        batch, length = (2, 64) if args.quick else (4, 256)
        data["check"] = {"batch": batch, "tokens": length, "rows": check(names, batch, length)}
        print(f"\nMeasured on CPU (fp32, micro-batch {batch} x {length}), MiB per process, measured / model:")
        print(
            format_table(
                ["shape", "mode", "processes", "AC", "weights", "training step", "activations kept"],
                [
                    [
                        r["shape"],
                        r["mode"],
                        r["processes"],
                        r["checkpointing"],
                        f"{r['weights_measured'] / 2**20:.0f} / {r['weights_model'] / 2**20:.0f}",
                        f"{r['step_measured'] / 2**20:.0f} / {r['step_model'] / 2**20:.0f}",
                        "-"
                        if r["activations_model"] is None
                        else f"{r['activations_measured'] / 2**20:.1f} / {r['activations_model'] / 2**20:.1f}",
                    ]
                    for r in data["check"]["rows"]
                ],
            )
        )
    write_json(args.name, data, args.out_dir)
    return data


if __name__ == "__main__":
    main()
