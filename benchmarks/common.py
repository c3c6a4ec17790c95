"""Helpers shared by the benchmark scripts: models, timing, memory figures, tables, JSON and plots."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LNTuningConfig, get_peft_model
from torch import nn

import fpt_peft  # registers FPT with peft
from fpt_peft import FPTConfig
from fpt_peft.discovery import discover
from fpt_peft.pretrained import minilm_path

transformers.logging.set_verbosity_error()
# Noise from the libraries on every run: peft's LN tuning warns about LayerNorm targets, transformers about a rename.
warnings.filterwarnings("ignore", message="Unsupported layer type")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
transformers.utils.logging.disable_progress_bar()

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODELS = ("minilm", "gpt2-shape", "tiny-bert")
"""``minilm``: the packaged, really pretrained MiniLM-L6-H384 (BERT, 22.7M parameters). ``gpt2-shape``: GPT-2 small's
exact shape (``GPT2Config()``: 12 layers, width 768, 124M parameters) with random weights, so no download is needed;
speed and memory depend on the shape, not on the values of the weights. ``tiny-bert``: MiniLM's structure (6 BERT
layers, so the same modules and wrappers) at width 32, random: the arithmetic is so small that fixed per-call costs
(Python, wrappers, hooks) dominate; for measuring overhead."""


# ---------------------------------------------------------------------- models
def load_base(name: str, device: str = "cpu", seed: int = 0) -> transformers.PreTrainedModel:
    """A backbone (``AutoModel``) for benchmark model ``name`` (one of :data:`MODELS`), on ``device``."""
    if name == "minilm":
        model = transformers.AutoModel.from_pretrained(minilm_path())
    elif name == "gpt2-shape":
        torch.manual_seed(seed)
        model = transformers.AutoModel.from_config(transformers.GPT2Config())
    elif name == "tiny-bert":
        torch.manual_seed(seed)
        config = transformers.BertConfig(
            num_hidden_layers=6, hidden_size=32, num_attention_heads=4, intermediate_size=128, vocab_size=1000
        )
        model = transformers.AutoModel.from_config(config)
    else:
        raise ValueError(f"Unknown benchmark model {name!r}; choose from {MODELS}.")
    return model.to(device)


def base_folder(name: str, scratch: Path) -> Path:
    """A folder holding ``name``'s weights as safetensors (the packaged MiniLM, or a random model saved once)."""
    if name == "minilm":
        return minilm_path()
    folder = scratch / name
    if not (folder / "model.safetensors").exists():
        load_base(name).save_pretrained(folder)
    return folder


def folder_bytes(folder: Path, suffix: str = ".safetensors") -> int:
    """Total size of the files ending in ``suffix`` in ``folder`` (the weights on disk)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(suffix))


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for saved models and adapters, removed when closed."""
    return tempfile.TemporaryDirectory(prefix="fpt-bench-")


def hidden_size(model: nn.Module) -> int:
    """Width of a Hugging Face backbone."""
    config: Any = getattr(model, "config")  # noqa: B009
    return int(getattr(config, "hidden_size", None) or config.n_embd)


# ---------------------------------------------------------------------- the training set-ups compared
VARIANTS = ("fpt_peft", "plain_fpt", "ln_tuning", "full")
"""``fpt_peft``: ``get_peft_model(backbone, FPTConfig(...))``. ``plain_fpt``: the official code's approach
(kzl/universal-computation ``fpt.py``): freeze by parameter name, hand-made input / output layers. ``ln_tuning``:
peft's ``LNTuningConfig`` on the hand-made model, same norms and positions targeted, the new layers in
``modules_to_save``. ``full``: the hand-made model with every weight trainable."""


class HandMadeFPT(nn.Module):
    """The official code's model: new input layer -> transformer(inputs_embeds) -> new output Linear, last token.

    The input layer is ``Linear(input_dim, width)`` (orthogonal init, gain 1.41, zero bias) for continuous tokens, or
    ``Embedding(input_vocab_size, width)`` for symbols.
    """

    def __init__(
        self,
        transformer: nn.Module,
        output_dim: int,
        input_dim: int | None = None,
        input_vocab_size: int | None = None,
        gain: float = 1.41,
    ) -> None:
        super().__init__()
        width = hidden_size(transformer)
        self.in_net: nn.Module
        if input_vocab_size is not None:
            self.in_net = nn.Embedding(input_vocab_size, width)
        else:
            assert input_dim is not None
            self.in_net = linear = nn.Linear(input_dim, width)
            nn.init.orthogonal_(linear.weight, gain=gain)
            nn.init.zeros_(linear.bias)
        self.transformer = transformer
        self.out_net = nn.Linear(width, output_dim)

    def forward(
        self,
        labels: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-entropy loss of the class read from the last token."""
        tokens = self.in_net(input_ids if input_ids is not None else inputs_embeds)
        hidden = self.transformer(inputs_embeds=tokens, attention_mask=attention_mask).last_hidden_state
        logits = self.out_net(hidden[:, -1])
        return nn.functional.cross_entropy(logits.float(), labels)


def freeze_like_official(transformer: nn.Module) -> None:
    """Freeze by parameter name as the official code does: only layer norms and positional embeddings train.

    The official code tests ``'ln' in name`` and ``'wpe' in name`` (GPT-2 names); BERT's ``LayerNorm`` and
    ``position_embeddings`` are added so that the rule means the same on both models.
    """
    for name, param in transformer.named_parameters():
        lowered = name.lower()
        is_norm = "ln" in lowered or "layernorm" in lowered
        is_position = "wpe" in lowered or "position_embeddings" in lowered
        param.requires_grad = is_norm or is_position


@dataclass
class Variant:
    """A model ready to train: its module, its optimizer and a function computing the loss of a batch."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[..., torch.Tensor]


def make_optimizer(params: list[nn.Parameter], adam: str = "fused") -> torch.optim.Optimizer:
    """Adam (lr 1e-3, as in the paper) in the requested implementation: ``fused``, ``foreach`` or ``loop``."""
    kwargs: dict[str, Any] = {"fused": True} if adam == "fused" else {"foreach": adam == "foreach"}
    return torch.optim.Adam(params, lr=1e-3, **kwargs)


def build_variant(
    name: str,
    model_name: str,
    output_dim: int,
    input_dim: int | None = None,
    input_vocab_size: int | None = None,
    device: str = "cpu",
    adam: str = "fused",
) -> Variant:
    """Build set-up ``name`` (one of :data:`VARIANTS`) on a freshly loaded backbone.

    Every set-up gets the same backbone weights and the same seed for its new layers; all are in training mode
    (dropout on).
    """
    base = load_base(model_name, device)
    torch.manual_seed(1)
    model: nn.Module
    if name == "fpt_peft":
        config = FPTConfig(input_dim=input_dim, input_vocab_size=input_vocab_size, output_dim=output_dim)
        model = get_peft_model(base, config)

        def loss(**batch: torch.Tensor) -> torch.Tensor:
            return model(**batch).loss  # type: ignore[no-any-return]

    else:
        hand_made = HandMadeFPT(base, output_dim, input_dim, input_vocab_size).to(device)
        if name == "plain_fpt":
            freeze_like_official(hand_made.transformer)
            model = hand_made
        elif name == "ln_tuning":
            found = discover(hand_made, skip=("in_net", "out_net"))
            targets = found.norms + found.position_modules
            model = get_peft_model(
                hand_made, LNTuningConfig(target_modules=targets, modules_to_save=["in_net", "out_net"])
            )
        elif name == "full":
            model = hand_made.requires_grad_(True)
        else:
            raise ValueError(f"Unknown variant {name!r}; choose from {VARIANTS}.")

        def loss(**batch: torch.Tensor) -> torch.Tensor:
            return model(**batch)  # type: ignore[no-any-return]

    model.train()  # from_pretrained returns eval mode; training runs with dropout
    params = [p for p in model.parameters() if p.requires_grad]
    return Variant(name, model, make_optimizer(params, adam), loss)


def make_batch(
    batch: int,
    seq: int,
    output_dim: int,
    input_dim: int | None = None,
    input_vocab_size: int | None = None,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """A fixed random batch: ``inputs_embeds`` (batch, seq, input_dim), or ``input_ids`` with an all-ones
    ``attention_mask``; and one class per example in ``labels``."""
    generator = torch.Generator().manual_seed(0)
    tensors = {"labels": torch.randint(0, output_dim, (batch,), generator=generator)}
    if input_vocab_size is not None:
        tensors["input_ids"] = torch.randint(0, input_vocab_size, (batch, seq), generator=generator)
        tensors["attention_mask"] = torch.ones(batch, seq, dtype=torch.int64)
    else:
        assert input_dim is not None
        tensors["inputs_embeds"] = torch.randn(batch, seq, input_dim, generator=generator)
    return {k: v.to(device) for k, v in tensors.items()}


def train_step(variant: Variant, batch: dict[str, torch.Tensor], device: str = "cpu") -> tuple[float, float, float]:
    """One training step; returns the seconds of forward, backward and optimizer step."""
    synchronize(device)
    start = time.perf_counter()
    variant.optimizer.zero_grad(set_to_none=True)
    loss = variant.loss(**batch)
    synchronize(device)
    forward_done = time.perf_counter()
    loss.backward()
    synchronize(device)
    backward_done = time.perf_counter()
    variant.optimizer.step()
    synchronize(device)
    return forward_done - start, backward_done - forward_done, time.perf_counter() - backward_done


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads (0: torch's default).

    On a small shared machine, one thread gives stable timings: with two, another process on one core stalls every
    parallel region.
    """
    if threads > 0:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------- timing
def synchronize(device: str) -> None:
    """Wait for queued device work, so that wall-clock timings are complete."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median(values: Iterable[float]) -> float:
    """Median of ``values``."""
    return float(statistics.median(list(values)))


def paired_ratio(values: Sequence[float], references: Sequence[float]) -> float:
    """Median over rounds of ``values[i] / references[i]`` (measurements taken side by side in round ``i``)."""
    return median(v / r for v, r in zip(values, references, strict=True))


def time_calls(fn: Callable[[], object], repeats: int, device: str = "cpu") -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn``, each timed on its own."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------- memory
def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by ``tensors`` (each counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors an optimizer keeps per parameter (Adam: step, exp_avg, exp_avg_sq)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (monotonic)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------- reporting
def environment(device: str) -> dict[str, Any]:
    """Versions and machine facts recorded with every result."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": __import__("peft").__version__,
        "fpt_peft": fpt_peft.__version__,
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal too)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def mib(n_bytes: float) -> float:
    """Bytes to MiB."""
    return n_bytes / 2**20


def write_json(name: str, data: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``data`` to ``<out_dir>/<name>.json``; returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def bar_plot(
    name: str,
    panels: Sequence[tuple[str, dict[str, dict[str, float]]]],
    out_dir: Path = RESULTS_DIR,
    log_panels: Sequence[int] = (),
    title: str = "",
) -> Path:
    """Grouped bar charts side by side, written to ``<out_dir>/<name>.png``.

    Each panel is ``(y label, {group: {bar: value}})``, e.g. ``("ms per step", {"minilm": {"fpt_peft": 80.0}})``;
    panels whose index is in ``log_panels`` get a log scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for index, (ax, (ylabel, groups)) in enumerate(zip(axes[0], panels, strict=True)):
        bars = list(dict.fromkeys(b for values in groups.values() for b in values))
        width = 0.8 / max(1, len(bars))
        for i, bar in enumerate(bars):
            xs = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [values.get(bar, 0.0) for values in groups.values()], width, label=bar)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_ylabel(ylabel)
        if index in log_panels:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
