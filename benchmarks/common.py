"""Helpers shared by the benchmark scripts: models, timing, memory figures, tables, JSON and plots."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LNTuningConfig, get_peft_model
from torch import nn

import fpt_peft  # registers FPT with peft
from benchmarks import paper
from benchmarks.sweep_journal import SweepJournal, journal_path
from fpt_peft import FPTConfig
from fpt_peft.pretrained import minilm_path
from fpt_peft.provenance import git_state
from fpt_peft.tuner.discovery import discover

transformers.logging.set_verbosity_error()
# Noise from the libraries on every run: peft's LN tuning warns about LayerNorm targets, transformers about a rename.
warnings.filterwarnings("ignore", message="Unsupported layer type")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
transformers.utils.logging.disable_progress_bar()

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GPT2_SHAPES = {  # name -> (layers, width, heads) of GPT-2 small, medium, large and XL
    "gpt2-shape": (12, 768, 12),
    "gpt2-medium-shape": (24, 1024, 16),
    "gpt2-large-shape": (36, 1280, 20),
    "gpt2-xl-shape": (48, 1600, 25),
}
MODELS = ("minilm", *GPT2_SHAPES, "tiny-bert")
"""``minilm``: the packaged, really pretrained MiniLM-L6-H384 (BERT, 22.7M parameters). ``gpt2-shape``: GPT-2 small's
exact shape (``GPT2Config()``: 12 layers, width 768, 124M parameters) with random weights, so no download is needed;
speed and memory depend on the shape, not on the values of the weights; ``gpt2-medium-shape``, ``gpt2-large-shape``
and ``gpt2-xl-shape`` likewise (355M, 774M, 1.56B). ``tiny-bert``: MiniLM's structure (6 BERT
layers, so the same modules and wrappers) at width 32, random: the arithmetic is so small that fixed per-call costs
(Python, wrappers, hooks) dominate; for measuring overhead."""


# ---------------------------------------------------------------------- models
def load_base(name: str, device: str = "cpu", seed: int = 0) -> transformers.PreTrainedModel:
    """A backbone (``AutoModel``) for benchmark model ``name`` (one of :data:`MODELS`), on ``device``."""
    if name == "minilm":
        model = transformers.AutoModel.from_pretrained(minilm_path())
    elif name in GPT2_SHAPES:
        torch.manual_seed(seed)
        layers, width, heads = GPT2_SHAPES[name]
        with torch.device(device):  # initialised where it runs: GPT-2 XL's 1.6B weights load in seconds on a GPU
            model = transformers.AutoModel.from_config(
                transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=heads)
            )
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
    checkpointing: bool = False,
) -> Variant:
    """Build set-up ``name`` (one of :data:`VARIANTS`) on a freshly loaded backbone.

    Every set-up gets the same backbone weights and the same seed for its new layers; all are in training mode
    (dropout on). ``checkpointing``: activation checkpointing of every transformer layer (Transformers'
    ``activation_checkpointing_enable``, non-reentrant), which keeps each layer's input and recomputes the rest.
    """
    base = load_base(model_name, device)
    if checkpointing:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
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


def saved_tensor_bytes(model: nn.Module, forward: Callable[[], object]) -> int:
    """Bytes that autograd keeps from ``forward()`` for the backward (``model``'s parameters excluded), storages
    counted once."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    del output
    return sum(storages.values())


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
    """Versions, machine facts and the code's git state (commit, uncommitted changes) recorded with every result."""
    info: dict[str, Any] = {
        "git": git_state(),
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


# ---------------------------------------------------------------------- learning curves (accuracy benchmarks)
@dataclass(frozen=True)
class CurveRun:
    """One training run of a learning-rate sweep: which task and model, the optimiser settings and the schedule.

    ``flags`` are :func:`fpt_peft.modeling.build_model`'s ``train_*`` switches (default: FPT's groups), and
    ``model_kwargs`` its other options (``input_dropout``, ``embedding_init``). ``label`` names the set-up being
    compared (``"pretrained"``, ``"random"``, an ablation rung); runs are grouped by ``(task, label)`` and the
    learning rate swept within a group. ``seed`` seeds the task's data, the new layers (and a random backbone), the
    batch order and dropout. ``stop_at``: end the run at the first evaluation whose accuracy reaches it (converged),
    instead of training on to ``steps``. ``device``: ``"cpu"`` or ``"cuda"``.
    """

    task: str
    label: str
    lr: float
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str = "pretrained"
    flags: dict[str, bool] = field(default_factory=dict)
    seed: int = 0
    steps: int = 200
    batch_size: int = 16
    eval_every: int = 25
    eval_batch_size: int = 128
    max_grad_norm: float = 1.0
    model: str = "minilm"
    threads: int = 1
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    stop_at: float | None = None
    device: str = "cpu"


def record_curve(run: CurveRun) -> dict[str, Any]:
    """Train one FPT model with :func:`fpt_peft.training.train` (the paper's Adam, constant ``lr``, gradient
    clipping, no validation split) and record its eval curve through ``on_evaluate``.

    The eval split is scored before the first step (``eval_on_start``), every ``eval_every`` steps and after the last
    one; the run ends at the first evaluation reaching ``stop_at``. The run's output folder (adapter, checkpoint,
    log) is temporary. Returns the run's settings with ``eval_steps``, ``accuracy`` (the task's metric: accuracy, or
    per-bit accuracy for the bit tasks), ``eval_loss`` and ``train_loss`` (mean over the steps since the previous
    evaluation) per evaluation, ``steps_trained``, and the wall time: ``seconds`` in all, ``eval_seconds`` of it
    spent scoring.
    """
    import datasets
    from accelerate.utils import set_seed

    from fpt_peft.arguments import FPTTrainingArguments
    from fpt_peft.data import TASKS, load_task
    from fpt_peft.modeling import build_model
    from fpt_peft.training import train

    set_threads(run.threads)
    start = time.perf_counter()
    takes_seed = "seed" in inspect.signature(TASKS[run.task]).parameters  # archive data (time series) is fixed
    task = load_task(run.task, **run.task_kwargs, **({"seed": run.seed} if takes_seed else {}))
    curve: dict[str, list[Any]] = {"eval_steps": [], "accuracy": [], "eval_loss": [], "train_loss": []}
    eval_seconds = 0.0

    def on_evaluate(step: int, scores: dict[str, float]) -> bool:
        nonlocal eval_seconds
        eval_seconds += scores["eval_runtime"]
        curve["eval_steps"].append(step)
        curve["accuracy"].append(scores[task.spec.metric])
        curve["eval_loss"].append(finite_or_none(scores["eval_loss"]))  # None: diverged (NaN)
        curve["train_loss"].append(finite_or_none(scores["train_loss"]) if "train_loss" in scores else None)
        return run.stop_at is not None and scores[task.spec.metric] >= run.stop_at

    set_seed(run.seed)
    options: dict[str, Any] = {**run.flags, **run.model_kwargs}
    model = build_model(task.spec, run.model, init=run.init, seed=run.seed, **options)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="curve-") as folder, open(Path(folder) / "log", "w") as log:
        args = FPTTrainingArguments(
            learning_rate=run.lr,
            max_grad_norm=run.max_grad_norm,
            batch_size=run.batch_size,
            eval_batch_size=run.eval_batch_size,
            max_steps=run.steps,
            eval_every=run.eval_every,
            log_every=run.eval_every,  # so that each evaluation gets the mean loss since the previous one
            eval_on_start=True,
            validation_fraction=0.0,  # the eval split is the curve (the learning rate is chosen on it: see lr_sweep)
            save_every=0,
            seed=run.seed,
            output_dir=folder,
            cpu=run.device == "cpu",
        )
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            train(task, args, model=model, on_evaluate=on_evaluate)
    steps_trained = curve["eval_steps"][-1]
    settings = {k: v for k, v in asdict(run).items() if k != "threads"}
    return {
        **settings,
        "metric": task.spec.metric,
        "train_examples": len(task.train) if isinstance(task.train, datasets.Dataset) else None,  # None: a stream
        "steps_trained": steps_trained,
        "eval_examples": len(task.eval),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **curve,
        "final_accuracy": curve["accuracy"][-1],
        "seconds": time.perf_counter() - start,
        "eval_seconds": eval_seconds,  # of "seconds": scoring the eval split
    }


def run_curves(
    runs: Sequence[CurveRun], workers: int = 1, journal: SweepJournal | None = None
) -> list[dict[str, Any]]:
    """Run :func:`record_curve` for every run, in ``workers`` processes of one thread each; results in input order.

    Progress is printed as runs finish. Workers are spawned (:func:`fpt_peft.jobs.run_jobs`), so that each starts
    with fresh thread pools; they end with a killed sweep, and a failed run stops the sweep (the running ones finish).
    With a ``journal``, the runs it holds are not trained again (their journaled results are returned) and every run
    trained is journaled as it finishes.
    """
    results: list[dict[str, Any] | None] = [journal.result(run) if journal else None for run in runs]
    pending = [index for index, result in enumerate(results) if result is None]
    if journal is not None and len(pending) < len(runs):
        print(
            f"{len(runs) - len(pending)} of {len(runs)} runs already finished ({journal.path}); "
            f"training the other {len(pending)}",
            flush=True,
        )

    def done(index: int, result: dict[str, Any]) -> None:
        if journal is not None:
            journal.record(runs[index], result)
        results[index] = result
        finished = sum(r is not None for r in results)
        print(
            f"[{finished}/{len(runs)}] {result['task']:<10} {result['label']:<12} lr {result['lr']:<7g} "
            f"seed {result['seed']}: final {result['final_accuracy']:.3f} ({result['seconds']:.0f} s)",
            flush=True,
        )

    if workers <= 1:
        for index in pending:
            done(index, record_curve(runs[index]))
    elif pending:
        from fpt_peft.jobs import run_jobs

        index_of = {id(runs[index]): index for index in pending}

        def describe(run: CurveRun) -> str:
            return f"{run.task} {run.label} lr {run.lr:g} seed {run.seed} failed"

        def finished(run: CurveRun, result: dict[str, Any]) -> None:
            done(index_of[id(run)], result)

        # A killed sweep's workers end with it; a failed run cancels the runs not yet started.
        run_jobs(record_curve, [runs[i] for i in pending], workers, finished, describe)
    return [r for r in results if r is not None]


def steps_to_reach(steps: Sequence[int], accuracy: Sequence[float], threshold: float) -> int | None:
    """The first evaluated step whose accuracy is at least ``threshold`` (None: never reached)."""
    return next((s for s, a in zip(steps, accuracy, strict=True) if a >= threshold), None)


def summarize_sweep(
    results: Sequence[dict[str, Any]], thresholds: dict[str, float], select_seeds: Sequence[int] | None = None
) -> dict[str, dict[str, Any]]:
    """Per ``task/label`` group: every learning rate's final accuracies, and the best learning rate.

    The best learning rate has the highest mean final eval accuracy over the runs with a seed in ``select_seeds``
    (default: all; ties: the fewer mean steps to the task's threshold, then the smaller rate). For it the summary
    holds the final accuracy and steps to the threshold (None: not reached) of every seed run at that rate, and the
    learning curve averaged over those seeds (with its minimum and maximum).
    """
    groups: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for result in results:
        key = f"{result['task']}/{result['label']}"
        groups.setdefault(key, {}).setdefault(result["lr"], []).append(result)
    summary: dict[str, dict[str, Any]] = {}
    for key, by_lr in groups.items():
        task = key.split("/", 1)[0]
        threshold = thresholds[task]
        per_lr = {
            lr: {
                "seeds": [r["seed"] for r in runs],
                "final_accuracy": [r["final_accuracy"] for r in runs],
                "final_accuracy_mean": statistics.mean(r["final_accuracy"] for r in runs),
                "steps_to_threshold": [steps_to_reach(r["eval_steps"], r["accuracy"], threshold) for r in runs],
            }
            for lr, runs in sorted(by_lr.items())
        }

        def selection(lr: float, runs_at: dict[float, list[dict[str, Any]]] = by_lr) -> list[dict[str, Any]]:
            chosen = [r for r in runs_at[lr] if select_seeds is None or r["seed"] in select_seeds]
            return chosen or runs_at[lr]

        best = max(by_lr, key=lambda lr: _sweep_score(selection(lr), lr, threshold))
        best_runs = sorted(by_lr[best], key=lambda r: r["seed"])
        # Runs stopped at convergence (stop_at) end early: the curve covers the evaluations every seed made.
        shortest = min(len(r["accuracy"]) for r in best_runs)
        curves = [r["accuracy"][:shortest] for r in best_runs]
        rates = sorted(by_lr)
        summary[key] = {
            "task": task,
            "label": best_runs[0]["label"],
            "threshold": threshold,
            "learning_rates": rates,
            "per_lr": {f"{lr:g}": values for lr, values in per_lr.items()},
            "selected_on_seeds": sorted({r["seed"] for lr in rates for r in selection(lr)}),
            "best_lr": best,
            "best_lr_at_edge_of_grid": len(rates) > 1 and best in (rates[0], rates[-1]),
            "seeds": [r["seed"] for r in best_runs],
            "final_accuracy": [r["final_accuracy"] for r in best_runs],
            "final_accuracy_mean": statistics.mean(r["final_accuracy"] for r in best_runs),
            "steps_to_threshold": [steps_to_reach(r["eval_steps"], r["accuracy"], threshold) for r in best_runs],
            "seconds": [r["seconds"] for r in best_runs],
            "curve_steps": best_runs[0]["eval_steps"][:shortest],
            "curve_accuracy_mean": [statistics.mean(values) for values in zip(*curves, strict=True)],
            "curve_accuracy_min": [min(values) for values in zip(*curves, strict=True)],
            "curve_accuracy_max": [max(values) for values in zip(*curves, strict=True)],
        }
    return summary


def _sweep_score(runs: Sequence[dict[str, Any]], lr: float, threshold: float) -> tuple[float, float, float]:
    """Sort key of a learning rate: mean final accuracy, then fewer mean steps to ``threshold``, then smaller lr."""
    reached = [steps_to_reach(r["eval_steps"], r["accuracy"], threshold) for r in runs]
    # A run that never reached the threshold counts as taking twice its length.
    mean_steps = statistics.mean(s if s is not None else 2 * r["steps"] for s, r in zip(reached, runs, strict=True))
    return (statistics.mean(r["final_accuracy"] for r in runs), -mean_steps, -lr)


TASK_TOKENS = {"bit_xor": 2, "bit_memory": 12, "listops": 32, "digits": 4}
"""Tokens per example of the :data:`TASK_PLANS` tasks: the rough relative cost of a training step."""


def longest_first(runs: Sequence[CurveRun]) -> list[CurveRun]:
    """``runs`` with the most expensive first, so that parallel workers finish together."""
    return sorted(runs, key=lambda r: -r.steps * r.batch_size * TASK_TOKENS.get(r.task, 16))


def lr_sweep(
    runs: Sequence[CurveRun],
    thresholds: dict[str, float],
    confirm_seeds: Sequence[int] = (),
    workers: int = 1,
    journal: SweepJournal | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The learning-rate protocol of both accuracy benchmarks: sweep, pick per set-up, confirm on fresh seeds.

    1. Train every run in ``runs`` (each set-up at every learning rate, on the sweep seeds).
    2. Per ``task/label``, pick the learning rate with the best mean final eval accuracy (:func:`summarize_sweep`).
    3. Train that learning rate again with each of ``confirm_seeds``; the reported figures are over all seeds at the
       chosen rate, the choice itself having used the sweep seeds only.

    Returns every run's result and the summary per ``task/label``. ``journal``: see :func:`run_curves`.
    """
    results = run_curves(longest_first(runs), workers, journal)
    sweep_seeds = sorted({r.seed for r in runs})
    extra = [s for s in confirm_seeds if s not in sweep_seeds]
    if extra:
        chosen = summarize_sweep(results, thresholds)
        template = {(r.task, r.label, r.lr): r for r in runs}
        confirm = [
            replace(template[(s["task"], s["label"], s["best_lr"])], seed=seed)
            for s in chosen.values()
            for seed in extra
        ]
        print(f"confirming the chosen learning rates on seeds {extra}: {len(confirm)} runs", flush=True)
        results += run_curves(longest_first(confirm), workers, journal)
    return results, summarize_sweep(results, thresholds, select_seeds=sweep_seeds)


def curve_plot(
    name: str,
    panels: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    out_dir: Path = RESULTS_DIR,
    title: str = "",
    bars: tuple[str, dict[str, dict[str, float]]] | None = None,
) -> Path:
    """Learning curves side by side (one panel per task), written to ``<out_dir>/<name>.png``.

    Each panel is ``(title, summaries)`` with :func:`summarize_sweep` summaries: each draws its mean eval curve at
    its best learning rate, shaded between the seeds' minimum and maximum, with the task's threshold dashed. ``bars``
    adds a last panel of grouped bars, ``(y label, {group: {bar: value}})``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(panels) + (bars is not None)
    fig, axes = plt.subplots(1, count, figsize=(4.0 * count, 3.4), squeeze=False)
    for ax, (panel_title, summaries) in zip(axes[0], panels, strict=False):
        for summary in summaries:
            steps = summary["curve_steps"]
            seeds = len(summary["seeds"])
            label = f"{summary['label']} (lr {summary['best_lr']:g}, {seeds} seed{'s' * (seeds > 1)})"
            (line,) = ax.plot(steps, summary["curve_accuracy_mean"], label=label, lw=1.5)
            if seeds > 1:
                ax.fill_between(
                    steps,
                    summary["curve_accuracy_min"],
                    summary["curve_accuracy_max"],
                    color=line.get_color(),
                    alpha=0.2,
                )
        if summaries:
            ax.axhline(summaries[0]["threshold"], color="grey", ls="--", lw=0.8)
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("eval accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    if bars is not None:
        ax = axes[0][-1]
        ylabel, groups = bars
        names = list(dict.fromkeys(b for values in groups.values() for b in values))
        width = 0.8 / max(1, len(names))
        for i, bar in enumerate(names):
            xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [values.get(bar, 0.0) for values in groups.values()], width, label=bar)
        ax.set_xticks(range(len(groups)), list(groups), fontsize=7, rotation=15)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    if title:  # wrapped to the figure's width (about 60 characters per panel at this size)
        fig.suptitle(textwrap.fill(title, width=60 * count), fontsize=9)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def finite_or_none(value: float) -> float | None:
    """``value``, or None for NaN / infinity (strict JSON has no NaN)."""
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class TaskPlan:
    """A task scaled to a 2-core CPU for the accuracy benchmarks: data options, batch, steps and threshold.

    For the generated tasks ``num_train`` is ``steps * batch_size`` (at ``steps_scale`` 1), so every step sees fresh
    examples, as in the paper's bit tasks (or the task is an endless stream: ``stream=True``). ``threshold`` is the
    eval accuracy whose first crossing is reported as "steps to threshold". ``model_kwargs`` and ``stop_at`` are
    passed to every :class:`CurveRun`.
    """

    task: str
    description: str
    task_kwargs: dict[str, Any]
    steps: int
    batch_size: int
    eval_every: int
    threshold: float
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    stop_at: float | None = None

    def runs(
        self,
        label: str,
        seeds: Sequence[int],
        init: str = "pretrained",
        flags: dict[str, bool] | None = None,
        lrs: Sequence[float] | None = None,
        steps_scale: float = 1.0,
        device: str = "cpu",
    ) -> list[CurveRun]:
        """One :class:`CurveRun` per learning rate and seed, for set-up ``label``, trained on ``device``."""
        steps = max(1, round(self.steps * steps_scale))
        kwargs = dict(self.task_kwargs)
        if self.task in GENERATED_TASKS and not kwargs.get("stream"):
            kwargs["num_train"] = max(kwargs.get("num_train", 0), steps * self.batch_size)
        return [
            CurveRun(
                task=self.task,
                label=label,
                lr=lr,
                task_kwargs=kwargs,
                init=init,
                flags=dict(flags or {}),
                seed=seed,
                steps=steps,
                batch_size=self.batch_size,
                eval_every=max(1, round(self.eval_every * steps_scale)),
                model_kwargs=dict(self.model_kwargs),
                stop_at=self.stop_at,
                device=device,
            )
            for lr in (lrs or self.lrs)
            for seed in seeds
        ]


GENERATED_TASKS = ("bit_xor", "bit_memory", "listops")

TASK_PLANS: dict[str, TaskPlan] = {
    "bit_xor": TaskPlan(
        "bit_xor",
        "two 5-bit strings, patches of 5 (the paper's setting: 2 tokens); fresh examples every step",
        {"n_bits": 5, "patch_size": 5, "num_eval": 300},
        steps=300,
        batch_size=16,
        eval_every=25,
        threshold=0.9,
        lrs=(3e-4, 1e-3, 3e-3, 1e-2),
    ),
    "bit_memory": TaskPlan(
        "bit_memory",
        "5 strings of 50 bits + a copy of one with half its bits masked, patches of 25 (12 tokens; paper: 5 x 1000 "
        "bits, patches of 50, 120 tokens); fresh examples every step",
        {"n_strings": 5, "n_bits": 50, "patch_size": 25, "mask_prob": 0.5, "num_eval": 200},
        steps=250,
        batch_size=16,
        eval_every=25,
        threshold=0.8,  # copying the visible bits and guessing the masked ones gives 75%; above it, recall
    ),
    "listops": TaskPlan(
        "listops",
        "generated LRA-grammar expressions of 17-32 tokens (paper: LRA, up to 2000, cut to 512); 10 classes",
        {"max_tokens": 32, "num_eval": 300},
        steps=200,
        batch_size=8,
        eval_every=50,
        threshold=0.3,  # twice the most frequent class (about 15%)
    ),
    "digits": TaskPlan(
        "digits",
        "scikit-learn's 8x8 digits (1438 train / 359 eval), patches of 4x4: 4 tokens of 16 values (paper: MNIST "
        "28x28, 49 tokens of 16 values)",
        {"patch_size": 4},
        steps=400,
        batch_size=16,
        eval_every=50,
        threshold=0.9,
    ),
}


def full_size_plan(
    task: str, description: str, num_eval: int, eval_every: int, threshold: float, **changes: Any
) -> TaskPlan:
    """The paper's set-up of ``task`` as ``--preset paper`` sets it (:func:`fpt_peft.presets.paper_defaults`: data,
    batch size, input dropout, embedding init), for the paper's steps to converge of the random init
    (:data:`benchmarks.paper.STEPS_TO_CONVERGE`); ``changes`` replace fields (``task_kwargs`` entries are added)."""
    from fpt_peft.presets import paper_defaults

    values = paper_defaults(task)
    data_keys = ("n_bits", "n_strings", "patch_size", "values", "stream", "mask_prob", "max_tokens")
    data: dict[str, Any] = {k: values[k] for k in data_keys if k in values}
    model: dict[str, Any] = {k: values[k] for k in ("input_dropout", "embedding_init") if k in values}
    plan = TaskPlan(
        task,
        description,
        {**data, **changes.pop("task_kwargs", {}), "num_eval": num_eval},
        steps=int(paper.STEPS_TO_CONVERGE[task][1]),
        batch_size=values["batch_size"],
        eval_every=eval_every,
        threshold=threshold,
        model_kwargs=model,
    )
    return replace(plan, **changes)


FULL_SIZE_PLANS: dict[str, TaskPlan] = {
    "bit_xor": full_size_plan(
        "bit_xor",
        "the paper's set-up (--preset paper): two 5-bit strings fed as 0/1, one string per token, a fresh batch of 4 "
        "every step, input dropout 0.1; trained until every eval bit is right (or 2e4 steps: the paper's random init)",
        num_eval=1000,
        eval_every=100,
        threshold=1.0,
        stop_at=1.0,
    ),
    "bit_memory": full_size_plan(
        "bit_memory",
        "the paper's set-up (--preset paper): 5 strings of 1000 bits plus the masked query, patches of 50 (120 "
        "tokens), a fresh batch of 4 every step, input dropout 0.1; up to 4e4 steps (the paper's random init)",
        num_eval=200,
        eval_every=100,
        threshold=0.99,
        stop_at=1.0,
    ),
    "listops": full_size_plan(
        "listops",
        "Rothermel et al.'s fixed loader at the paper's 512 tokens (--preset paper --formulation fixed), expressions "
        "generated offline (LRA's files are not on the Hub), new embedding N(0, 1), batch 4; up to 6e3 steps (the "
        "paper's random init)",
        num_eval=500,
        eval_every=500,
        threshold=0.3,
        lrs=(1e-4, 3e-4, 1e-3),
        task_kwargs={"formulation": "fixed"},
    ),
}
"""The paper's full-size bit memory, bit XOR and ListOps (Lu et al. 2021, Table 1 and its steps to converge), with
the official formulation: too long for a 2-core CPU at full length (see ``--max-steps``), the size of a GPU run."""


def quick_plan(plan: TaskPlan) -> TaskPlan:
    """``plan`` shrunk to a seconds-long smoke run (4 steps, tiny data, one learning rate)."""
    kwargs = dict(plan.task_kwargs)
    if plan.task in GENERATED_TASKS:
        kwargs.update(num_eval=16, **({} if kwargs.get("stream") else {"num_train": 16}))
    if plan.task == "listops":
        kwargs["max_tokens"] = 16
    return replace(plan, task_kwargs=kwargs, steps=4, batch_size=4, eval_every=2, lrs=(1e-3,))


def select_plans(plans: dict[str, TaskPlan], args: argparse.Namespace) -> dict[str, TaskPlan]:
    """``plans`` as this run trains them: shrunk by ``--quick``, or with their steps capped at ``--max-steps``."""
    if args.quick:
        return {name: quick_plan(plan) for name, plan in plans.items()}
    if args.max_steps is not None:
        return {name: replace(plan, steps=min(plan.steps, args.max_steps)) for name, plan in plans.items()}
    return dict(plans)


def sweep_parser(description: str, default_tasks: list[str], lrs_help: str, name: str) -> argparse.ArgumentParser:
    """Arguments shared by the learning-rate sweep benchmarks (pretrained vs random, ablation)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(TASK_PLANS), default=default_tasks)
    parser.add_argument("--lrs", nargs="+", type=float, default=None, help=lrs_help)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the sweep (default 0)")
    parser.add_argument(
        "--confirm-seeds", nargs="*", type=int, default=[1], help="fresh seeds run at each chosen rate (default 1)"
    )
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every task's steps (default 1)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="cap every task's steps (its evaluation cadence unchanged)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--workers", type=int, default=2, help="training processes, one thread each (default 2)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (4 steps, one lr, one seed)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=name, help="result file name")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped sweep of the same --name: train only the runs not journaled in "
        "<out-dir>/<name>.runs.jsonl (a sweep journals each run as it finishes; without a journal, start afresh)",
    )
    return parser


def parse_sweep_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``--quick`` shrinks the sweep to one seed, one worker and the default grid."""
    args = parser.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"argument --max-steps: expected a positive number of steps, got {args.max_steps}")
    if args.quick:
        args.seeds, args.confirm_seeds, args.workers, args.lrs = [0], [], 1, None
    return args


def open_journal(parser: argparse.ArgumentParser, args: argparse.Namespace) -> SweepJournal:
    """The journal of the sweep ``args`` name: continued with ``--resume``; without it, a journal left by a stopped
    sweep is an error (exit 2) rather than overwritten."""
    path = journal_path(args.out_dir, args.name)
    if path.exists() and not args.resume:
        parser.error(
            f"argument --resume: {path} holds the finished runs of a stopped sweep named {args.name!r}; pass --resume "
            "to continue it, or delete the file to start afresh"
        )
    try:
        journal = SweepJournal(path)
    except ValueError as error:
        parser.error(f"argument --resume: {error}")
    if args.resume and not journal.done:
        print(f"no finished runs journaled in {path}: starting the sweep afresh", flush=True)
    return journal
