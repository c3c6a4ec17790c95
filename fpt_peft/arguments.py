"""The command line shared by every recipe, without importing torch, peft or transformers (``--help`` is instant).

:class:`FPTTrainingArguments` holds the options every recipe takes (named apart from transformers'
``TrainingArguments``, which has other fields); :func:`add_training_args` turns them into flags,
:func:`parse_recipe_args` parses and checks them before anything heavy is loaded, and :func:`run_recipe` turns user
mistakes found later into one ``error:`` line and exit status 2. A recipe imports the data and training modules only
after parsing, so ``python recipes/X.py --help`` answers without loading the machine-learning stack.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .presets import PRESETS, check_inputs, paper_defaults, preset_help, report
from .pretrained import DEFAULT_MODEL, check_model_name


@dataclass
class FPTTrainingArguments:
    """Options shared by every recipe; each field is a command-line flag (``--max-steps`` for ``max_steps``).

    Defaults follow the paper (Adam, constant learning rate 1e-3, gradient clipping 1.0); recipes override them
    per task through :func:`add_training_args`.
    """

    model: str = field(
        default=DEFAULT_MODEL, metadata={"help": "Backbone: 'minilm', 'smollm2', a local folder or a Hub id."}
    )
    init: str = field(
        default="pretrained",
        metadata={
            "choices": ("pretrained", "random", "shuffled"),
            "help": "Pretrained weights, the paper's random baseline, or the pretrained weights shuffled per tensor.",
        },
    )
    finetune: str = field(
        default="fpt", metadata={"choices": ("fpt", "full"), "help": "Train the FPT groups, or every weight."}
    )
    freeze_ln: bool = field(default=False, metadata={"help": "Ablation: freeze the layer norms."})
    freeze_pos: bool = field(default=False, metadata={"help": "Ablation: freeze the positional embeddings."})
    freeze_in: bool = field(default=False, metadata={"help": "Ablation: freeze the new input layer."})
    freeze_out: bool = field(default=False, metadata={"help": "Ablation: freeze the output layer."})
    train_attn: bool = field(default=False, metadata={"help": "Ablation: also train the self-attention weights."})
    train_ff: bool = field(default=False, metadata={"help": "Ablation: also train the feed-forward weights."})
    num_layers: int | None = field(
        default=None, metadata={"help": "Keep only the first N transformer blocks of the backbone (GPT4TS: 6)."}
    )
    input_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout after the new continuous input layer, in [0, 1) (official code: 0.1)."},
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "choices": ("float32", "bfloat16", "float16"),
            "help": "dtype of the frozen backbone (default: as saved). FPT's trainable copies stay float32.",
        },
    )
    embedding_init: str = field(
        default="scaled",
        metadata={
            "choices": ("scaled", "normal"),
            "help": "Init of a new symbol embedding: the base embeddings' std, or N(0, 1) as the official code.",
        },
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate.", "aliases": ("--lr",)})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: off)."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size per process."})
    eval_batch_size: int | None = field(default=None, metadata={"help": "Eval batch size (default: batch size)."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps to train for."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warm-up steps."})
    lr_scheduler: str = field(
        default="constant", metadata={"choices": ("constant", "cosine", "linear"), "help": "Schedule after warm-up."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "choices": ("no", "bf16", "fp16"),
            "help": "Mixed precision (Accelerate; default: the accelerate config's or launch flag's, else no).",
        },
    )
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the model (Accelerate's dynamo plugin, inductor backend)."},
    )
    tf32: bool = field(
        default=False,
        metadata={"help": "TensorFloat-32 matrix products in float32 (CUDA only; torch's default is off)."},
    )
    eval_every: int = field(
        default=200, metadata={"help": "Evaluate on the validation split every N steps (0: only at the end)."}
    )
    eval_on_start: bool = field(
        default=False,
        metadata={"help": "Also evaluate before the first step (step 0; with a validation split, it can be kept)."},
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of the training data held out (stratified) to choose the step to keep, when the task "
            "has no validation split; 0: none (then the eval split is scored as training goes, and chooses nothing)."
        },
    )
    keep: str | None = field(
        default=None,
        metadata={
            "choices": ("best", "last"),
            "help": "The adapter saved and scored on the eval split: the best validation step's, or the last step's "
            "(default: best; last in an FSDP-sharded run, whose weights are split between the processes).",
        },
    )
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after N evaluations without a better validation score (0: never)."}
    )
    log_every: int = field(default=50, metadata={"help": "Log the training loss every N steps."})
    save_every: int = field(default=500, metadata={"help": "Checkpoint every N steps (and at the end; 0: end only)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many most recent checkpoints to keep."})
    seed: int = field(default=0, metadata={"help": "Seed of the new layers, random init, data order and dropout."})
    output_dir: str | None = field(default=None, metadata={"help": "Output folder (default: outputs/<task>)."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh even if output_dir holds checkpoints of an earlier run."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the last complete checkpoint in output_dir (one must exist)."},
    )
    resume_if_possible: bool = field(
        default=False,
        metadata={"help": "Continue from the last complete checkpoint if any, else start afresh."},
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Push the final adapter to this Hub repo id."})
    cpu: bool = field(default=False, metadata={"help": "Train on CPU even if a GPU is available."})
    log_with: str | None = field(
        default=None, metadata={"choices": ("tensorboard", "wandb", "all"), "help": "Experiment tracker."}
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"--{_flag(f.name)} must be one of {list(choices)}, got {value!r}.")
        for name in ("batch_size", "max_steps", "gradient_accumulation_steps", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}.")
        for name in ("warmup_steps", "eval_every", "save_every", "num_workers", "early_stopping_patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"--validation-fraction must be in [0, 1), got {self.validation_fraction}.")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"--input-dropout must be in [0, 1), got {self.input_dropout}.")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"--num-layers must be >= 1, got {self.num_layers}.")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"--eval-batch-size must be >= 1, got {self.eval_batch_size}.")
        if not self.learning_rate > 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("--learning-rate must be > 0, --weight-decay and --max-grad-norm >= 0.")
        if (self.resume or self.resume_if_possible) and self.overwrite_output_dir:
            raise ValueError("--resume and --overwrite-output-dir contradict each other; pass one of them.")

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> FPTTrainingArguments:
        """The training arguments held by a parsed namespace (other attributes, e.g. data options, are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(namespace).items() if k in known})

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`fpt_peft.modeling.build_model` for these options."""
        return {
            "init": self.init,
            "finetune": self.finetune,
            "train_layer_norms": not self.freeze_ln,
            "train_positions": not self.freeze_pos,
            "train_input": not self.freeze_in,
            "train_output": not self.freeze_out,
            "train_attention": self.train_attn,
            "train_feedforward": self.train_ff,
            "num_layers": self.num_layers,
            "input_dropout": self.input_dropout,
            "embedding_init": self.embedding_init,
            "dtype": self.dtype,
        }


def add_own_data_args(parser: argparse.ArgumentParser, required: bool = True) -> argparse.ArgumentParser:
    """Add the flags of the user's data (``--data``, ``required`` or not, ``--kind``, ``--label-column``, ...) as a
    group "data"; :func:`own_data_options` turns the parsed values into :func:`fpt_peft.data.own_data` arguments."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", required=required, help="A table, .npz, folder of .npy, image folder, .ts file, or a dataset."
    )
    data.add_argument("--kind", choices=("table", "series", "image"), default=None, help="Default: inferred.")
    data.add_argument("--label-column", default="label", help="The class column of a table or dataset.")
    data.add_argument("--input-column", default=None, help="Input column(s), comma-separated. Default: the others.")
    data.add_argument("--split", default="train", help="A dataset's training split. Default: train.")
    data.add_argument("--test-split", default=None, help="A dataset's test split. Default: test, if it has one.")
    data.add_argument(
        "--test-fraction", type=float, default=0.2, help="Held out as test split when there is none. Default: 0.2."
    )
    data.add_argument("--image-size", type=int, default=None, help="Resize images to this square side.")
    data.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="Features per token (table), steps per patch (series), pixels per patch side (image). Default: by kind.",
    )
    data.add_argument("--stride", type=int, default=None, help="Steps between series patches. Default: half a patch.")
    return parser


OWN_DATA_OPTIONS = (
    "data",
    "kind",
    "label_column",
    "input_column",
    "split",
    "test_split",
    "test_fraction",
    "image_size",
    "patch_size",
    "stride",
)


def own_data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`fpt_peft.data.own_data` keyword arguments parsed by :func:`add_own_data_args` (``seed`` aside)."""
    return {name: getattr(args, name) for name in OWN_DATA_OPTIONS}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def add_training_args(parser: argparse.ArgumentParser, **defaults: Any) -> argparse.ArgumentParser:
    """Add the :class:`FPTTrainingArguments` flags to ``parser``; ``defaults`` overrides field defaults per recipe.

    Not ``transformers.HfArgumentParser``: that one imports transformers (and torch), several seconds before
    ``--help`` could answer, and has no per-recipe defaults; this one needs only the standard library.
    """
    unknown = set(defaults) - {f.name for f in fields(FPTTrainingArguments)}
    if unknown:
        raise ValueError(f"Unknown training argument default(s): {sorted(unknown)}.")
    hints = typing.get_type_hints(FPTTrainingArguments)
    group = parser.add_argument_group("training (shared by every recipe)")
    for f in fields(FPTTrainingArguments):
        default = defaults.get(f.name, f.default)
        flags = [f"--{_flag(f.name)}", *f.metadata.get("aliases", ())]
        kind = hints[f.name]
        if kind is bool:
            group.add_argument(*flags, dest=f.name, action="store_true", default=default, help=f.metadata["help"])
            continue
        if isinstance(kind, types.UnionType):  # `int | None` and the like
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        helptext = f.metadata["help"] + ("" if default is None else f" Default: {default}.")
        group.add_argument(
            *flags, dest=f.name, type=kind, default=default, choices=f.metadata.get("choices"), help=helptext
        )
    return parser


def check_output_dir(args: FPTTrainingArguments, output_dir: Path) -> None:
    """Raise if ``output_dir`` holds an earlier run that ``args`` neither resumes nor overwrites, or if ``--resume``
    finds no complete checkpoint there."""
    from .checkpoints import latest_checkpoint  # torch: imported only once the arguments parsed

    checkpoints = output_dir / "checkpoints"
    found = latest_checkpoint(checkpoints) is not None
    if found and not (args.resume or args.resume_if_possible or args.overwrite_output_dir):
        raise FileExistsError(
            f"{str(output_dir)!r} holds checkpoints of an earlier run. Pass --resume to continue it, "
            "--overwrite-output-dir to start again, or another --output-dir."
        )
    if args.resume and not found:
        raise FileNotFoundError(
            f"--resume: {str(checkpoints)!r} holds no complete checkpoint to continue from. Check --output-dir, or "
            "pass --resume-if-possible to start afresh when there is none."
        )


def parse_recipe_args(parser: argparse.ArgumentParser, argv: list[str] | None, task: str) -> argparse.Namespace:
    """Parse a recipe's arguments and check them before any data or model is loaded: a mistake ends the program
    argparse-style (usage, one ``error:`` line, exit status 2). ``task`` names the recipe and its default output
    folder.

    Adds ``--preset {default,paper}`` (:mod:`fpt_peft.presets`): ``paper`` first becomes the parser's defaults, so
    that flags given explicitly win. The namespace gets ``preset_report`` (a :class:`~fpt_peft.presets.PresetReport`:
    where the run's set-up differs from the paper's), which :func:`fpt_peft.training.train` saves (and prints for
    ``--preset paper``), and ``checked_arguments``: the :class:`FPTTrainingArguments` built and checked here, which
    ``train`` uses as they are (the output folder is not checked twice).
    """
    if not any(action.dest == "preset" for action in parser._actions):
        group = parser.add_argument_group("preset")
        group.add_argument("--preset", choices=PRESETS, default="default", help=preset_help(task))
    chosen, _ = parser.parse_known_args(argv)  # --help and malformed flags end here, as in the full parse
    if chosen.preset == "paper":
        try:
            values = paper_defaults(task)
        except ValueError as exc:
            parser.error(str(exc))
        known = {action.dest for action in parser._actions}
        missing = sorted(set(values) - known)
        if missing:  # a bug in the preset table, not a user mistake
            raise KeyError(f"The paper preset of {task!r} sets options the recipe does not have: {missing}.")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    try:
        training_args = FPTTrainingArguments.from_namespace(args)
        check_model_name(training_args.model)
        check_inputs(task, args)
        check_output_dir(training_args, Path(training_args.output_dir or f"outputs/{task}"))
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    flags = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    args.preset_report = report(task, args, flags)
    args.checked_arguments = training_args  # built and checked once: train() takes them from here
    return args


def run_recipe(main: Callable[[], object]) -> None:
    """Run a recipe's ``main``: a user mistake found later (data, output folder, model files) prints one line and
    exits with status 2, on the main process only; a traceback is for bugs (``FPT_PEFT_TRACEBACK=1`` shows it)."""
    try:
        main()
    except (ValueError, OSError) as exc:  # what the checks of fpt_peft raise, with a message that says what to do
        if os.environ.get("FPT_PEFT_TRACEBACK"):
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def deprecated_name(name: str, module: str) -> Any:
    """A module's ``__getattr__``: ``TrainingArguments``, the old name of :class:`FPTTrainingArguments` (deprecated:
    transformers has a class of that name with other fields), with a warning; else ``module`` has no ``name``."""
    if name == "TrainingArguments":
        import warnings

        warnings.warn(
            "fpt_peft's TrainingArguments is now FPTTrainingArguments (the old name is transformers' class); "
            "the old name will be removed in 0.3.0.",
            FutureWarning,
            stacklevel=3,  # the code that asked for the old name, past the module's __getattr__
        )
        return FPTTrainingArguments
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


def __getattr__(name: str) -> Any:
    """The deprecated ``TrainingArguments`` (see :func:`deprecated_name`)."""
    return deprecated_name(name, __name__)
