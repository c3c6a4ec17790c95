"""The one training loop every recipe uses, with Accelerate (in the style of accelerate's ``examples/nlp_example.py``).

``python recipes/X.py`` runs on one device; ``accelerate launch [--multi_gpu --num_processes N] recipes/X.py`` or
``torchrun --nproc_per_node N recipes/X.py`` runs data-parallel, also on CPU (gloo). A recipe only builds its task
data and calls :func:`train`, which reads top to bottom: :func:`_set_up` (checks, model, data loaders, optimizer,
resume), :func:`_loop` (the optimizer steps, with logging, evaluation and checkpoints) and :func:`_finish` (the
final score and the saved adapter).

Outputs under ``output_dir``: ``checkpoints/step_XXXXXX`` (resumable with ``--resume``), ``adapter/`` (the trained FPT
adapter, for ``PeftModel.from_pretrained``), ``metrics.json`` and, with ``--log-with tensorboard``, ``logs/``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm
from transformers import get_scheduler

from .arguments import FPTTrainingArguments, check_output_dir, deprecated_name
from .batches import EpochSampler, stream_batches
from .checkpoints import TrainingProgress, install_adapter_state_hooks, remove_checkpoints, save_checkpoint
from .data.spec import TaskData
from .health import HEALTH, NonFiniteError, check_health
from .loss import fpt_loss
from .metrics import load_metric
from .modeling import build_model
from .outputs import save_outputs
from .preflight import check_output_space
from .presets import PresetReport
from .resume import resume_latest
from .selection import BestStep, with_validation
from .sharding import (
    SHARDED_STATE_DIR,
    ShardingOptions,
    full_value,
    load_sharded_state,
    local_part,
    requested_sharding,
    save_sharded_state,
    shard_model,
)
from .validation import check_task_data, model_inputs

__all__ = [
    "EpochSampler",
    "EvaluationCallback",
    "NonFiniteError",
    "evaluate_model",
    "float32_matmul_precision",
    "make_optimizer",
    "train",
]

EvaluationCallback = Callable[[int, dict[str, float]], "bool | None"]
"""``on_evaluate(step, scores)`` of :func:`train`: called after every evaluation; returning True stops the run."""


def _model_batch(batch: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in keys if k in batch}


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, metric_name: str, keys: tuple[str, ...]
) -> dict[str, float]:
    """Metric and mean cross-entropy of ``model`` on ``loader``, gathered across processes."""
    metric = load_metric(metric_name)
    was_training = model.training
    model.eval()
    loss_sum, count = 0.0, 0
    for batch in loader:
        logits = model(**_model_batch(batch, keys)).logits
        labels = batch["labels"]
        losses = fpt_loss(logits, labels, per_example=True)
        predictions, references, losses = accelerator.gather_for_metrics((logits.argmax(dim=-1), labels, losses))
        metric.add_batch(predictions=predictions.cpu().numpy(), references=references.cpu().numpy())
        loss_sum += float(losses.sum())
        count += losses.numel()
    model.train(was_training)
    result: dict[str, float] = metric.compute()
    result["eval_loss"] = loss_sum / max(count, 1)
    return result


def _describe_size(split: Any) -> str:
    return "endless" if isinstance(split, IterableDataset) else "no" if split is None else str(len(split))


def make_optimizer(
    params: Sequence[torch.nn.Parameter], args: FPTTrainingArguments, device: torch.device
) -> torch.optim.Adam:
    """The paper's Adam over ``params``: fused (one kernel for every tensor) on CUDA, torch's default elsewhere."""
    fused = True if device.type == "cuda" else None
    return torch.optim.Adam(params, lr=args.learning_rate, weight_decay=args.weight_decay, fused=fused)


def _tracker_config(args: FPTTrainingArguments, task: TaskData) -> dict[str, Any]:
    config = {k: ("" if v is None else v) for k, v in asdict(args).items()}  # tensorboard hparams refuse None
    config["task"] = task.spec.name
    return config


def train(
    task: TaskData,
    args: FPTTrainingArguments | argparse.Namespace,
    model: torch.nn.Module | None = None,
    on_evaluate: EvaluationCallback | None = None,
) -> dict[str, float]:
    """Train an FPT model on ``task`` with Accelerate; returns the final evaluation metrics.

    ``args``: the options, or the namespace of :func:`~fpt_peft.arguments.parse_recipe_args` (which has built and
    checked them once already). ``model`` replaces the one ``args`` describes
    (:func:`~fpt_peft.modeling.build_model`): a control such as :class:`~fpt_peft.controls.NoLM`, trained,
    checkpointed and scored the same way, and saved to ``output_dir/adapter`` by its own ``save_pretrained``.

    ``on_evaluate(step, scores)`` is called on every process after each evaluation during training (every
    ``eval_every`` steps, at the last step, and at step 0 with ``eval_on_start``) with the scores of the split
    evaluated (the validation split if there is one, else the eval split): the task's metric, ``eval_loss``,
    ``eval_runtime`` (seconds) and, when the step logged it, ``train_loss`` (the mean since the previous log).
    Returning True (on any process) stops training there, as an early stop does: a last checkpoint, then the finish.

    Every check (arguments, data against its spec, model, sequence length against the model's positions, output
    folder: earlier runs, write permission, free space for the checkpoints and adapter) runs before the first step.
    The final adapter is saved to ``output_dir/adapter``.

    Faults: checkpoints are atomic and durable (a run killed at any moment resumes with ``--resume`` from the last
    complete one, bit-identically); NaN or Inf in the inputs, loss, gradient norm or weights raises
    :class:`NonFiniteError` naming the step, on every process, before anything broken is saved.
    """
    preset: PresetReport | None = getattr(args, "preset_report", None)  # from parse_recipe_args (recipes)
    checked: FPTTrainingArguments | None = getattr(args, "checked_arguments", None)  # likewise
    if checked is not None and any(getattr(args, f.name, None) != getattr(checked, f.name) for f in fields(checked)):
        checked = None  # the namespace was changed after parsing: build and check its options again
    if isinstance(args, argparse.Namespace):
        args = checked or FPTTrainingArguments.from_namespace(args)
    if args.tf32 and (args.cpu or not torch.cuda.is_available()):
        raise ValueError("--tf32 is a CUDA matrix-product mode, and this run has no CUDA device; leave it out.")
    with float32_matmul_precision("high" if args.tf32 else None):
        run = _set_up(task, args, model, preset, output_dir_checked=checked is not None)
        run.on_evaluate = on_evaluate
        try:
            _loop(run)
        finally:
            run.bar.close()
        return _finish(run)


@contextlib.contextmanager
def float32_matmul_precision(precision: str | None) -> typing.Iterator[None]:
    """``torch.set_float32_matmul_precision(precision)`` inside the block (``"high"``: TensorFloat-32 matrix products
    on CUDA), the previous setting restored after it; None changes nothing."""
    previous = torch.get_float32_matmul_precision()
    if precision is not None:
        torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@dataclass
class _Run:
    """One training run, from its set-up through its loop to its finish."""

    task: TaskData
    args: FPTTrainingArguments
    preset: PresetReport | None
    output_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: EpochSampler | None  # a finite train split, drawn in a seeded order per pass
    stream: IterableDataset | None  # or an endless one, read by each process from its own shard
    train_loader: Any  # Accelerate's prepared DataLoader (its set_epoch), or None for a stream
    eval_loader: DataLoader
    validation_loader: DataLoader | None
    sharding: ShardingOptions | None
    keep: str  # which step's weights the adapter keeps: "best" (validation) or "last"
    progress: TrainingProgress = field(default_factory=TrainingProgress)
    best: BestStep = field(default_factory=BestStep)
    write_sharded_state: Callable[[Path], None] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    evaluated_at: int = -1
    bar: Any = None
    on_evaluate: EvaluationCallback | None = None

    @property
    def checkpoints(self) -> Path:
        """The run's checkpoint folder."""
        return self.output_dir / "checkpoints"

    @property
    def keys(self) -> tuple[str, ...]:
        """The batch keys the model takes."""
        return model_inputs(self.task.spec)


# ---------------------------------------------------------------------------------------------------- set-up
def _set_up(
    task: TaskData,
    args: FPTTrainingArguments,
    model: torch.nn.Module | None,
    preset: PresetReport | None,
    output_dir_checked: bool,
) -> _Run:
    """Check everything, build the model, data loaders, optimizer and scheduler, prepare them, and resume or start."""
    output_dir, sharding = _check_run(task, args, model, output_dir_checked)
    task = with_validation(task, args.validation_fraction, args.seed)
    if args.early_stopping_patience and task.validation is None:
        raise ValueError("--early-stopping-patience needs a validation split: pass --validation-fraction above 0.")
    accelerator = Accelerator(
        # Without CUDA, cpu=True is what turns `accelerate launch --multi_gpu --num_processes N` into one gloo group.
        cpu=args.cpu or not torch.cuda.is_available(),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.log_with,
        # None: Accelerate's own setting (`accelerate launch --dynamo_backend`, its config or ACCELERATE_DYNAMO_*).
        dynamo_backend="inductor" if args.compile else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    if preset is not None and preset.preset == "paper":  # otherwise in metrics.json and the card only
        accelerator.print(preset.line())
    keep = args.keep or ("last" if sharding is not None else "best")  # said in the "Kept step" line
    if sharding is not None and task.validation is not None and keep == "best":
        raise ValueError(
            "--keep best copies the trainable weights of the best validation step, which FSDP sharding splits "
            "between the processes; leave --keep unset or pass --keep last with a sharded run."
        )
    set_seed(args.seed)
    described = f"the given {type(model).__name__}"
    if model is None:
        described = f"--model {args.model} ({args.init}, {args.finetune})"
        model = build_model(task.spec, args.model, seed=args.seed, **args.model_options())
    check_output_space(accelerator, args, model, output_dir, task.spec.metric)
    # Both before the optimizer, so that it holds the final parameters (fused Adam: CUDA tensors; FSDP: shards).
    if sharding is not None:
        model = shard_model(model, sharding, accelerator.device, accelerator.mixed_precision)
    else:
        model = model.to(accelerator.device)
    total = sum(p.numel() for p in model.parameters())
    run = _prepare(task, args, preset, output_dir, accelerator, model, sharding, keep)
    _resume_or_start(run)
    if args.log_with:
        accelerator.init_trackers(task.spec.name, config=_tracker_config(args, task))
    accelerator.print(
        f"{task.spec.name}: {_describe_size(task.train)} train / {_describe_size(task.validation)} validation / "
        f"{len(task.eval)} eval examples | {described} | "
        f"trainable {sum(p.numel() for p in run.trainable):,} of {total:,} parameters | "
        f"{accelerator.num_processes} process(es) on {accelerator.device}{_describe_sharding(sharding)} | "
        f"{output_dir}"
    )
    if task.description:  # what was read, and the kind inferred (own data)
        accelerator.print(task.description)
    run.bar = tqdm(
        total=args.max_steps,
        initial=run.progress.step,
        desc=task.spec.name,
        disable=not accelerator.is_local_main_process,
    )
    return run


def _check_run(
    task: TaskData, args: FPTTrainingArguments, model: torch.nn.Module | None, output_dir_checked: bool
) -> tuple[Path, ShardingOptions | None]:
    """The checks that need no model: options, data, output folder (unless already checked), sharding; the run's
    output folder and sharding options."""
    if model is not None and args.model_options() != FPTTrainingArguments().model_options():
        raise ValueError(  # they describe a model this run would not build
            "train(..., model=...) trains the model it is given; leave the model options of args (init, finetune, "
            "the freeze/train switches, num_layers, input_dropout, embedding_init, dtype) at their defaults."
        )
    output_dir = Path(args.output_dir or f"outputs/{task.spec.name}")
    check_task_data(task)
    if not output_dir_checked:
        check_output_dir(args, output_dir)
    sharding = requested_sharding()  # before Accelerator, which fails on CPU for an FSDP1 config
    if args.compile and sharding is not None:
        raise ValueError(
            "--compile is not supported with sharded (FSDP) training: the sharded model is not prepared by "
            "Accelerate, which is what compiles it. Leave out --compile or train without the FSDP config."
        )
    return output_dir, sharding


def _prepare(
    task: TaskData,
    args: FPTTrainingArguments,
    preset: PresetReport | None,
    output_dir: Path,
    accelerator: Accelerator,
    model: torch.nn.Module,
    sharding: ShardingOptions | None,
    keep: str,
) -> _Run:
    """The data loaders, optimizer and scheduler, prepared with the model by Accelerate."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    loader_options: dict[str, Any] = {"num_workers": args.num_workers, "generator": torch.Generator().manual_seed(0)}
    stream = task.train if isinstance(task.train, IterableDataset) else None
    sampler = None if stream is not None else EpochSampler(len(typing.cast(typing.Sized, task.train)), args.seed)
    train_loader = None
    if sampler is not None:
        train_loader = DataLoader(
            task.train, batch_size=args.batch_size, sampler=sampler, drop_last=True, **loader_options
        )
    eval_batch = args.eval_batch_size or args.batch_size
    eval_loader = DataLoader(task.eval, batch_size=eval_batch, **loader_options)
    validation_loader = None
    if task.validation is not None:
        validation_loader = DataLoader(task.validation, batch_size=eval_batch, **loader_options)
    optimizer = make_optimizer(trainable, args, accelerator.device)
    # Accelerate steps a prepared scheduler once per process per optimizer step, hence the scaling.
    n = accelerator.num_processes
    schedule = "constant_with_warmup" if args.lr_scheduler == "constant" and args.warmup_steps else args.lr_scheduler
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=args.warmup_steps * n, num_training_steps=args.max_steps * n
    )
    loaders = [eval_loader, validation_loader, train_loader]
    ready = [loader for loader in loaders if loader is not None]
    if sharding is None:
        model, optimizer, scheduler, *ready = accelerator.prepare(model, optimizer, scheduler, *ready)
    else:  # sharded already; its adapter and optimizer state go into checkpoints through save_sharded_state
        scheduler, *ready = accelerator.prepare(scheduler, *ready)
    prepared = [None if x is None else ready.pop(0) for x in loaders]
    eval_loader, validation_loader, train_loader = typing.cast(DataLoader, prepared[0]), prepared[1], prepared[2]
    if train_loader is not None and len(train_loader) == 0:
        raise ValueError(
            f"The train split has {_describe_size(task.train)} examples, fewer than one batch of {args.batch_size} "
            f"per process on {n} process(es). Lower --batch-size or use more training data."
        )
    return _Run(
        task=task,
        args=args,
        preset=preset,
        output_dir=output_dir,
        accelerator=accelerator,
        model=model,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        stream=stream,
        train_loader=train_loader,
        eval_loader=eval_loader,
        validation_loader=validation_loader,
        sharding=sharding,
        keep=keep,
        progress=TrainingProgress(num_processes=n),
    )


def _resume_or_start(run: _Run) -> None:
    """Register what checkpoints hold, clear them for ``--overwrite-output-dir``, seed, and resume if asked."""
    accelerator, args = run.accelerator, run.args
    accelerator.register_for_checkpointing(run.progress)
    accelerator.register_for_checkpointing(run.best)
    read_sharded_state = None
    if run.sharding is None:
        install_adapter_state_hooks(accelerator)
    else:
        model, optimizer = run.model, run.optimizer

        def write_sharded_state(folder: Path) -> None:
            save_sharded_state(model, optimizer, folder / SHARDED_STATE_DIR)

        def read_sharded_state(folder: Path) -> None:
            load_sharded_state(model, optimizer, folder / SHARDED_STATE_DIR)

        run.write_sharded_state = write_sharded_state
    if args.overwrite_output_dir and accelerator.is_main_process:
        remove_checkpoints(run.checkpoints)
    accelerator.wait_for_everyone()
    set_seed(args.seed, device_specific=True)  # dropout differs per process; a resume restores the saved states
    if args.resume or args.resume_if_possible:
        resume_latest(
            accelerator, run.checkpoints, run.progress, strict=args.resume, read_sharded_state=read_sharded_state
        )
    else:
        accelerator.print(f"Training afresh into {run.output_dir}.")


# ---------------------------------------------------------------------------------------------------- loop
def _loop(run: _Run) -> None:
    """Train until ``max_steps`` (or an early stop): each batch forward, backward and (every accumulation) a step."""
    accelerator, args, progress = run.accelerator, run.args, run.progress
    embeds = None if run.task.spec.is_symbolic else "inputs_embeds"
    watch = _Watch(run, embeds)
    if args.eval_on_start and progress.step == 0 and _evaluate(run, {}):
        return
    run.model.train()
    while progress.step < args.max_steps:
        for batch in _epoch_batches(run):
            with accelerator.accumulate(run.model):
                loss = run.model(**_model_batch(batch, run.keys), labels=batch["labels"]).loss
                if run.sharding is not None:  # reduce-scatter the gradients only on the last accumulated batch
                    run.model.set_requires_gradient_sync(accelerator.sync_gradients)  # type: ignore[operator]
                accelerator.backward(loss)
                norm = None
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    norm = full_value(accelerator.clip_grad_norm_(run.trainable, args.max_grad_norm))
                if accelerator.sync_gradients:  # what a prepared optimizer does; a sharded one is not prepared
                    run.optimizer.step()
                    run.optimizer.zero_grad()
                run.scheduler.step()
            progress.batch += 1
            watch.batch_done(batch, loss.detach().float(), norm)
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            run.bar.update(1)
            if _after_step(run, watch) or progress.step >= args.max_steps:
                return
        else:
            progress.epoch += 1
            progress.batch = 0


def _epoch_batches(run: _Run) -> typing.Iterable[dict[str, torch.Tensor]]:
    """The rest of the current pass: a finite split's batches from where the pass stands, or the stream's."""
    progress = run.progress
    if run.stream is not None:  # endless: the loop over it never ends a pass
        args = run.args
        return stream_batches(run.stream, args.batch_size, args.num_workers, run.accelerator, progress.batch)
    assert run.sampler is not None and run.train_loader is not None
    run.sampler.set_epoch(progress.epoch)
    run.train_loader.set_epoch(progress.epoch)
    if progress.batch:
        return run.accelerator.skip_first_batches(run.train_loader, progress.batch)
    return run.train_loader


class _Watch:
    """The running training loss, and the health of the run (see :mod:`fpt_peft.health`), kept on the device.

    ``health`` holds the first optimizer step (0: none yet) whose batch had non-finite inputs, whose loss was
    non-finite, whose gradient norm was non-finite, and (checked before each save) after which a trainable weight
    was non-finite. Kept on the device, so that the checks cost no host sync; read (and combined over processes)
    before logging, evaluating and saving, i.e. before a checkpoint or the adapter could record a broken state.
    """

    def __init__(self, run: _Run, embeds: str | None) -> None:
        device = run.accelerator.device
        self.run, self.embeds = run, embeds
        self.loss_sum = torch.zeros((), device=device)
        self.count = 0
        self.health = torch.zeros(len(HEALTH), dtype=torch.long, device=device)
        self.fine = torch.zeros((), dtype=torch.bool, device=device)
        # fp16's gradient scaler expects (and skips) overflowing gradients; bf16 and fp32 have no such steps.
        self.gradients = run.args.max_grad_norm > 0 and run.accelerator.mixed_precision != "fp16"

    def batch_done(self, batch: dict[str, torch.Tensor], loss: torch.Tensor, norm: Any) -> None:
        """Add a batch's loss, and note the step if its inputs, loss or gradient norm were not finite."""
        self.loss_sum += loss
        self.count += 1
        fine = self.fine
        bad_inputs = ~torch.isfinite(batch[self.embeds]).all() if self.embeds else fine  # integer ids are finite
        bad_norm = ~torch.isfinite(norm) if self.gradients and isinstance(norm, torch.Tensor) else fine
        bad = torch.stack((bad_inputs, ~torch.isfinite(loss), bad_norm, fine))
        self.health = torch.where(bad & (self.health == 0), self.run.progress.step + 1, self.health)

    def check_weights(self, step: int) -> None:
        """Note ``step`` if a trainable weight is not finite (a weight can turn so without a non-finite gradient
        norm: no clipping, overflow)."""
        bad = ~torch.stack([torch.isfinite(local_part(p)).all() for p in self.run.trainable]).all()
        self.health[3] = torch.where(bad & (self.health[3] == 0), step, self.health[3])

    def check(self) -> None:
        """Raise :class:`NonFiniteError` on every process if any process has seen NaN or Inf."""
        run = self.run
        check_health(run.accelerator, self.health, self.embeds, run.args, run.checkpoints)

    def mean_loss(self) -> float:
        """The mean training loss since the last call, over every process."""
        mean = float(self.run.accelerator.reduce(self.loss_sum, reduction="mean")) / max(self.count, 1)
        self.loss_sum.zero_()
        self.count = 0
        return mean


def _after_step(run: _Run, watch: _Watch) -> bool:
    """Log, evaluate and save as the step's number asks; whether training stops early here."""
    accelerator, args, step = run.accelerator, run.args, run.progress.step
    logs = step % args.log_every == 0 or step == args.max_steps
    evaluates = bool(args.eval_every and step % args.eval_every == 0) or step == args.max_steps
    saves = bool(args.save_every and step % args.save_every == 0) or step == args.max_steps
    if saves:
        watch.check_weights(step)
    if logs or evaluates or saves:
        watch.check()
    logged: dict[str, float] = {}
    if logs:
        logged["train_loss"] = watch.mean_loss()
        run.bar.set_postfix(loss=f"{logged['train_loss']:.4f}")
        accelerator.log({**logged, "lr": run.scheduler.get_last_lr()[0]}, step=step)
    stop = evaluates and _evaluate(run, logged)
    if saves or stop:
        save_checkpoint(accelerator, run.checkpoints, step, args.keep_checkpoints, run.write_sharded_state)
    return stop


def _evaluate(run: _Run, logged: dict[str, float]) -> bool:
    """Score the validation split (keeping the best step) or, without one, the eval split (for the record only);
    log it, and tell ``on_evaluate``. Whether training stops here (early stopping, or ``on_evaluate``)."""
    accelerator, step, spec = run.accelerator, run.progress.step, run.task.spec
    started = time.perf_counter()
    stop = False
    if run.validation_loader is None:  # no held-out data: the eval split, for the record only
        scores = run.metrics = evaluate_model(run.model, run.eval_loader, accelerator, spec.metric, run.keys)
        run.evaluated_at = step
        accelerator.log({f"eval_{k}" if k != "eval_loss" else k: v for k, v in scores.items()}, step=step)
        accelerator.print(_describe(step, scores))
    else:
        scores = evaluate_model(run.model, run.validation_loader, accelerator, spec.metric, run.keys)
        run.best.update(step, scores[spec.metric], scores["eval_loss"], run.trainable, run.keep == "best")
        accelerator.log({f"validation_{k.removeprefix('eval_')}": v for k, v in scores.items()}, step=step)
        accelerator.print(_describe(step, scores, "validation "))
        patience = run.args.early_stopping_patience
        stop = bool(patience) and run.best.evaluations_since >= patience
        if stop:
            accelerator.print(f"Early stop at step {step}: {patience} evaluations without a better one.")
    if run.on_evaluate is not None:
        told = bool(run.on_evaluate(step, {**scores, "eval_runtime": time.perf_counter() - started, **logged}))
        if accelerator.num_processes > 1:  # one process asking stops them all (or the others would wait forever)
            told = bool(accelerator.reduce(torch.tensor(int(told), device=accelerator.device), reduction="sum") > 0)
        stop = stop or told
    return stop


# ---------------------------------------------------------------------------------------------------- finish
def _finish(run: _Run) -> dict[str, float]:
    """Score the kept step on the eval split (or the last one, if not scored yet), save the outputs, end."""
    accelerator, spec, step = run.accelerator, run.task.spec, run.progress.step
    metrics = run.metrics
    if run.validation_loader is not None:
        metrics = _score_kept_step(
            run.model, run.trainable, run.best, run.keep, step, run.eval_loader, accelerator, spec
        )
    elif run.evaluated_at != step:  # e.g. resumed from the final checkpoint
        metrics = evaluate_model(run.model, run.eval_loader, accelerator, spec.metric, run.keys)
        accelerator.print(_describe(step, metrics))
    metrics["step"] = step
    save_outputs(accelerator, run.model, run.output_dir, metrics, run.args, run.task, run.preset)
    accelerator.end_training()
    return metrics


def _describe_sharding(sharding: ShardingOptions | None) -> str:
    if sharding is None:
        return ""
    extras = [
        name
        for name, on in (
            ("CPU offload", sharding.offload),
            ("activation checkpointing", sharding.activation_checkpointing),
        )
        if on
    ]
    return ", sharded (FSDP2" + "".join(f", {e}" for e in extras) + ")"


def _score_kept_step(
    model: torch.nn.Module,
    trainable: Sequence[torch.Tensor],
    best: BestStep,
    keep: str,
    step: int,
    eval_loader: DataLoader,
    accelerator: Accelerator,
    spec: Any,
) -> dict[str, float]:
    """Put back the best validation step's weights (``keep="best"``), then score the eval split once, there: its
    metrics with ``kept_step`` and the kept step's ``validation_<metric>`` and ``validation_loss``."""
    kept = best.step if keep == "best" and best.weights is not None else step
    if kept != step:
        best.restore(trainable)
    metrics = evaluate_model(model, eval_loader, accelerator, spec.metric, model_inputs(spec))
    if kept == best.step:
        metrics.update({f"validation_{spec.metric}": best.score, "validation_loss": best.loss})
    metrics["kept_step"] = kept
    accelerator.print(f"Kept step {kept} ({keep}); eval split scored once, there. " + _describe(kept, metrics))
    return metrics


def _describe(step: int, metrics: dict[str, float], split: str = "") -> str:
    return f"{split}step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def __getattr__(name: str) -> Any:
    """The deprecated ``TrainingArguments``, importable here as it was (:func:`fpt_peft.arguments.deprecated_name`)."""
    return deprecated_name(name, __name__)
