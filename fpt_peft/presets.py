"""``--preset {default,paper}``: the set-up of Lu et al. (2021) in one flag, and how a run differs from it.

Standard library only, like :mod:`fpt_peft.arguments` (``--help`` must not load the machine-learning stack).

``default`` is each recipe's own fast offline set-up (the packaged MiniLM, larger batches, fewer steps); ``paper`` sets
the official set-up: every value below is checked against the official code, github.com/kzl/universal-computation
(commit 23b80fd, files named relative to its ``universal_computation/`` folder, ``scripts/run.py`` at the top) or,
where the code has no per-task value, the paper (arXiv 2103.05247). Flags given on the command line always win over
the preset. Every run records which preset it uses and where its set-up differs from the paper's
(:class:`PresetReport`) in ``metrics.json`` and the model card; a ``--preset paper`` run also prints it in one line.
The experiment's own choices, which the paper varies too (``--init random``, ``--finetune full``, the ablation
switches, ``--seed``), are not differences; nor are the evaluation and checkpoint cadence.

Only ``bit_xor``, ``bit_memory``, ``listops``, ``mnist``, ``cifar10``, ``cifar10_lra`` and ``homology`` are tasks of
the paper; ``--preset paper`` is refused elsewhere (``digits``, ``time_series``, ``own_data``), since there is no paper
set-up to reproduce there.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

PRESETS = ("default", "paper")

CONTINUOUS_RECIPES = (
    "bit_xor",
    "bit_memory",
    "mnist",
    "cifar10",
    "cifar10_lra",
    "digits",
    "time_series",
    "own_data",
)
SYMBOLIC_RECIPES = ("listops", "homology")  # symbols enter through a new embedding (FPTConfig.input_vocab_size)

_UNSET = object()  # a paper value no flag default can give (e.g. LRA's ListOps files: the user's --data-dir)
_SPLITS = {"test": "test", "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation"}


@dataclass(frozen=True)
class Setting:
    """One value of the paper's set-up: the recipe option ``dest`` and its paper value ``value``, with ``source``,
    where it comes from. ``--preset paper`` sets it unless ``value`` is unset (the user must give it, e.g. a data
    folder) or ``applied`` is False (the recipe derives it from other options); ``shown`` writes the paper's value in
    the difference line when ``value`` alone would not say it."""

    dest: str
    value: Any
    source: str
    shown: str | None = None
    applied: bool = True


def _common(learning_rate: float = 1e-3, lr_source: str = "scripts/run.py: learning_rate=1e-3") -> list[Setting]:
    return [
        Setting("model", "gpt2", "scripts/run.py: model_name='gpt2'; fpt.py: GPT2Model.from_pretrained"),
        Setting("batch_size", 4, "scripts/run.py: batch_size=4"),
        Setting("learning_rate", learning_rate, lr_source),
        Setting("max_grad_norm", 1.0, "trainer.py: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.)"),
        Setting("weight_decay", 0.0, "trainer.py: torch.optim.Adam(model.parameters(), lr=learning_rate)"),
        Setting("lr_scheduler", "constant", "trainer.py: Adam without a scheduler"),
        Setting("warmup_steps", 0, "trainer.py: Adam without a scheduler"),
        Setting(
            "gradient_accumulation_steps",
            1,
            "experiment.py: grad_accumulate=1 when batch_size <= gpu_batch_size (16)",
        ),
        # 10000 iterations x 100 steps: days on a GPU with GPT-2, out of reach on CPU (see the descriptions).
        Setting("max_steps", 1_000_000, "experiment.py: --num_iters 10000 x --steps_per_iter 100"),
        Setting("num_layers", None, "fpt.py: the whole GPT2Model", shown="all"),
    ]


_DROPOUT = Setting("input_dropout", 0.1, "scripts/run.py: dropout=0.1; fpt.py: nn.Dropout(dropout) after in_net")
_EMBEDDING = Setting("embedding_init", "normal", "fpt.py: nn.Embedding(input_dim, embedding_size), N(0, 1)")
_STEPS = (
    "The official code trains 1e6 steps (10000 iterations of 100); the paper reports convergence much earlier "
    "(steps to converge, FPT vs random: memory 1e4 vs 4e4, XOR 5e2 vs 2e4, ListOps 2e3 vs 6e3, MNIST 5e3 vs 2e4): "
    "shorten with --max-steps (listed as a difference)."
)
_EVAL = (
    "The official code logs the accuracy of the next 25 evaluation batches (100 examples; homology: 400) after every "
    "100 steps; here the whole evaluation set is scored every --eval-every steps (the preset: 10000) and at the end."
)
_HUB = "gpt2 (and the Hub datasets) need the Hugging Face Hub."

PAPER_SETTINGS: dict[str, list[Setting]] = {
    "bit_xor": [
        *_common(),
        _DROPOUT,
        Setting("n_bits", 5, "datasets/bit_xor.py: BitXORDataset(n=5); the paper: 5-bit strings"),
        Setting("n_strings", 2, "datasets/bit_xor.py: num_patterns=2"),
        Setting("patch_size", 5, "experiment.py: input_dim = n (a whole string per token)"),
        Setting("values", "01", "datasets/bit_xor.py: np.random.randint(low=0, high=2), fed as 0/1"),
        Setting("stream", True, "datasets/bit_xor.py: get_batch_np draws a fresh batch every step"),
    ],
    "bit_memory": [
        *_common(),
        _DROPOUT,
        Setting("n_strings", 5, "scripts/run.py: num_patterns=5"),
        Setting("n_bits", 1000, "scripts/run.py: n=1000"),
        Setting("patch_size", 50, "scripts/run.py: patch_size=50"),
        Setting("mask_prob", 0.5, "datasets/bit_memory.py: mask = np.random.randint(low=0, high=2)"),
        Setting("stream", True, "datasets/bit_memory.py: get_batch_np draws a fresh batch every step"),
    ],
    "listops": [
        *_common(),
        _EMBEDDING,
        Setting("formulation", "official", "datasets/helpers/listops.py: tfds tokenizer, padded_batch to 512"),
        Setting("max_tokens", 512, "datasets/helpers/listops.py: get_datasets(max_length=512)"),
        # Not set: --formulation official implies it, and --formulation fixed must not cut silently.
        Setting("length_policy", "truncate", "datasets/helpers/listops.py: tf_encode(x)[:max_length]", applied=False),
        Setting("eval_split", "validation", "datasets/listops.py: d_train, d_test, *_ = get_datasets() (val 2nd)"),
        Setting(
            "data_dir",
            _UNSET,
            "README.md: LRA's basic_train/val/test.tsv in data/listops",
            shown="LRA's basic_*.tsv files",
        ),
    ],
    "mnist": [
        *_common(),
        _DROPOUT,
        Setting(
            "patch_size",
            4,
            "the paper's MNIST task: 4x4 patches (49 tokens); experiment.py: input_dim = patch_size ** 2",
        ),
        Setting("num_train", None, "datasets/mnist.py: the whole train split", shown="all"),
        Setting("num_eval", None, "datasets/mnist.py: the whole test split", shown="all"),
    ],
    "cifar10": [
        *_common(),
        _DROPOUT,
        Setting(
            "patch_size", 4, "the paper's CIFAR-10 task: 4x4 patches (64 tokens); experiment.py: 3 * patch_size**2"
        ),
        Setting("augment", True, "datasets/cifar10.py: data_aug=True (experiment.py does not turn it off)"),
        Setting("num_train", None, "datasets/cifar10.py: the whole train split", shown="all"),
        Setting("num_eval", None, "datasets/cifar10.py: the whole test split", shown="all"),
    ],
    "cifar10_lra": [
        *_common(),
        _DROPOUT,
        Setting("patch_size", 1, "README.md: CIFAR-10 LRA is cifar10-gray with a patch size of 1"),
        Setting("augment", True, "datasets/cifar10_gray.py: data_aug=True, applied to the grey images"),
        Setting("num_train", None, "datasets/cifar10_gray.py: the whole train split", shown="all"),
        Setting("num_eval", None, "datasets/cifar10_gray.py: the whole test split", shown="all"),
    ],
    "homology": [
        *_common(1e-4, "the paper: learning rate 1e-4 for remote homology (scripts/run.py has 1e-3 for all)"),
        _EMBEDDING,
        Setting("vocabulary", "tape", "datasets/remote_homology.py: TAPE's RemoteHomologyDataset tokenizer"),
        Setting("max_tokens", 1024, "datasets/remote_homology.py: max_seq_len=1024"),
        Setting("length_policy", "drop", "datasets/remote_homology.py: batches longer than max_seq_len skipped"),
        Setting("eval_split", "valid", "datasets/remote_homology.py: TAPERemoteHomologyDataset(data_dir, 'valid')"),
        Setting("num_train", None, "datasets/remote_homology.py: the whole train split", shown="all"),
        Setting("num_eval", None, "datasets/remote_homology.py: the whole valid split", shown="all"),
    ],
}
"""The paper's set-up per recipe, with the source of every value."""

# Not the paper's values, only sensible for 1e6 steps: how often to evaluate and checkpoint.
PAPER_RUN_DEFAULTS: dict[str, Any] = {"eval_every": 10_000, "save_every": 10_000}

PAPER_DESCRIPTIONS: dict[str, str] = {
    "bit_xor": (
        "gpt2, batch 4, Adam 1e-3, clipping 1.0, input dropout 0.1; two 5-bit strings fed as 0/1, one string per "
        "token, a fresh random batch every step. Evaluated on --num-eval examples drawn once (the official code: "
        "fresh batches). With 5 bits there are only 1024 distinct inputs: training sees every test input."
    ),
    "bit_memory": (
        "gpt2, batch 4, Adam 1e-3, clipping 1.0, input dropout 0.1; 5 strings of 1000 bits plus the masked query "
        "(p=0.5), patches of 50 (120 tokens), a fresh random batch every step. Evaluated on --num-eval examples drawn "
        "once (the official code: fresh batches)."
    ),
    "listops": (
        "gpt2, batch 4, Adam 1e-3, clipping 1.0, new embedding N(0, 1); the official loader (']' dropped, cut and "
        "padded to 512 tokens, no mask, read at the last position), evaluated on LRA's validation file. Needs LRA's "
        "files (--data-dir lra_release/listops-1000; not on the Hub): without them the expressions are generated "
        "offline, listed as a difference. Rothermel et al. (2021) fixed the loader: --formulation fixed."
    ),
    "mnist": "gpt2, batch 4, Adam 1e-3, clipping 1.0, input dropout 0.1; 4x4 patches, evaluated on the test split.",
    "cifar10": (
        "gpt2, batch 4, Adam 1e-3, clipping 1.0, input dropout 0.1; 4x4x3 patches, training augmentation (random "
        "crop with padding 4, flip, rotation up to 20 degrees), evaluated on the test split."
    ),
    "cifar10_lra": (
        "gpt2, batch 4, Adam 1e-3, clipping 1.0, input dropout 0.1; grey images as 1024 tokens of one pixel, the "
        "same training augmentation as CIFAR-10 (the official grey loader applies it too), evaluated on the test "
        "split."
    ),
    "homology": (
        "gpt2, batch 4, Adam 1e-4 (the paper; the official script has 1e-3), clipping 1.0, new embedding N(0, 1); "
        "TAPE vocabulary with <cls>/<sep>, sequences over 1024 tokens left out, evaluated on the valid split. The "
        "official code skips whole batches holding a longer sequence (here: single sequences) and scales the "
        "reported accuracy by 0.9739 for them (not done here); it evaluates in batches of 16."
    ),
}
"""What ``--preset paper`` sets per recipe, and where it cannot follow the paper."""


def is_paper_task(recipe: str) -> bool:
    """Whether ``recipe`` is one of the paper's seven tasks (and so has a ``paper`` preset)."""
    return recipe in PAPER_SETTINGS


def preset_help(recipe: str) -> str:
    """The ``--preset`` help of ``recipe``."""
    if not is_paper_task(recipe):
        return (
            f"default: this recipe's set-up. 'paper' is refused: {recipe} is not one of the paper's tasks "
            f"({', '.join(PAPER_SETTINGS)}). Default: default."
        )
    return (
        f"default: the fast offline set-up (packaged MiniLM); paper: the set-up of Lu et al. (2021) and their "
        f"official code: {PAPER_DESCRIPTIONS[recipe]} {_STEPS} {_EVAL} {_HUB} Flags given explicitly win over the "
        "preset. Default: default."
    )


def paper_defaults(recipe: str) -> dict[str, Any]:
    """The option values ``--preset paper`` sets in ``recipe`` (the paper's set-up plus evaluation/save cadence).

    Raises a ValueError, naming the paper's tasks, for a recipe that is not one of them.
    """
    if not is_paper_task(recipe):
        raise ValueError(
            f"argument --preset: 'paper' is not available in {recipe}: it is not one of the paper's tasks "
            f"({', '.join(PAPER_SETTINGS)}), so there is no paper set-up to reproduce. Pass --preset default, and the "
            "paper's generic options yourself if you want them (--model gpt2 --batch-size 4 --learning-rate 1e-3 "
            "--max-grad-norm 1.0 --input-dropout 0.1)."
        )
    values = {s.dest: s.value for s in PAPER_SETTINGS[recipe] if s.applied and s.value is not _UNSET}
    return {**PAPER_RUN_DEFAULTS, **values}


@dataclass(frozen=True)
class PresetReport:
    """Which preset a run uses and where its set-up differs from the paper's (empty: the paper's set-up)."""

    preset: str
    differences: tuple[str, ...]
    paper_task: bool = True

    def line(self) -> str:
        """The one line a run prints at start."""
        if not self.paper_task:
            return f"preset {self.preset}: this task is not one of the paper's (no paper set-up to compare with)"
        if not self.differences:
            return f"preset {self.preset}: the paper's set-up"
        return f"preset {self.preset}: differs from the paper in: " + ", ".join(self.differences)

    def as_json(self) -> dict[str, Any]:
        """The keys ``metrics.json`` holds for the preset."""
        return {"preset": self.preset, "preset_differences": list(self.differences) if self.paper_task else None}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and (os.path.isabs(value) or os.path.isdir(value)):
        return "a local folder"
    return str(value)


def _same(dest: str, given: Any, paper: Any) -> bool:
    if dest == "eval_split":
        return bool(_SPLITS.get(str(given), given) == _SPLITS.get(str(paper), paper))
    return bool(given == paper)


def _effective(recipe: str, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values, with those a recipe resolves from several flags resolved as it does."""
    values = dict(vars(args))
    if recipe == "homology" and values.get("length_policy") is None:
        values["length_policy"] = "error" if values.get("truncation") is False else "truncate"
    if recipe == "listops":
        if values.get("max_tokens") is None:
            values["max_tokens"] = 128 if values.get("formulation") == "default" else 512
        if values.get("length_policy") is None:
            official = values.get("truncation") or values.get("formulation") == "official"
            values["length_policy"] = "truncate" if official else "error"
    return values


def report(
    recipe: str, args: argparse.Namespace, flags: dict[str, str], world_size: int | None = None
) -> PresetReport:
    """How the parsed ``args`` of ``recipe`` differ from the paper's set-up; ``flags`` maps option names to their
    flag (``"batch_size"`` -> ``"--batch-size"``), ``world_size`` is the number of processes (default: from the
    ``WORLD_SIZE`` environment variable that ``accelerate launch`` and ``torchrun`` set)."""
    preset = getattr(args, "preset", "default")
    if not is_paper_task(recipe):
        return PresetReport(preset, (), paper_task=False)
    values = _effective(recipe, args)
    differences = []
    for setting in PAPER_SETTINGS[recipe]:
        given = values.get(setting.dest)
        flag = flags.get(setting.dest, f"--{setting.dest.replace('_', '-')}")
        paper = setting.shown or _shown(setting.value)
        if setting.value is _UNSET:
            if given is None:
                differences.append(f"{flag} not given (paper: {paper})")
        elif not _same(setting.dest, given, setting.value):
            differences.append(f"{flag} {_shown(given)} (paper: {paper})")
    precision = values.get("mixed_precision") or os.environ.get("ACCELERATE_MIXED_PRECISION")
    if precision in ("bf16", "fp16"):
        differences.append(f"--mixed-precision {precision} (paper: fp32)")
    processes = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1") or 1)
    if processes > 1:
        per_step = values.get("batch_size", 1) * values.get("gradient_accumulation_steps", 1) * processes
        differences.append(f"{processes} processes: {per_step} examples per step (paper: 1 process, 4)")
    return PresetReport(preset, tuple(differences))


def check_inputs(recipe: str, args: argparse.Namespace) -> None:
    """Raise a ValueError for input-layer options the recipe's inputs cannot take (as FPTConfig would, later)."""
    dropout = getattr(args, "input_dropout", 0.0)
    if recipe in SYMBOLIC_RECIPES and dropout:
        raise ValueError(
            f"--input-dropout {dropout:g}: {recipe} feeds symbols through a new embedding, and the input dropout acts "
            "after a continuous input layer (the official code has none after an embedding). Leave it at 0."
        )
    init = getattr(args, "embedding_init", "scaled")
    if recipe in CONTINUOUS_RECIPES and init != "scaled":
        raise ValueError(
            f"--embedding-init {init}: {recipe} feeds continuous values through a new linear layer, and this option "
            "initialises a new symbol embedding. Leave it at 'scaled'."
        )
