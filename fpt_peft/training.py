"""The one training loop every recipe uses, with Accelerate (in the style of accelerate's ``examples/nlp_example.py``).

``python recipes/X.py`` runs on one device; ``accelerate launch [--multi_gpu --num_processes N] recipes/X.py`` or
``torchrun --nproc_per_node N recipes/X.py`` runs data-parallel, also on CPU (gloo). A recipe only builds its task
data and calls :func:`train`; the arguments shared by all recipes come from :func:`add_training_args`.

Outputs under ``output_dir``: ``checkpoints/step_XXXXXX`` (resumable with ``--resume``), ``adapter/`` (the trained FPT
adapter, for ``PeftModel.from_pretrained``), ``metrics.json`` and, with ``--log-with tensorboard``, ``logs/``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import typing
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from huggingface_hub import HfApi
from torch.utils.data import DataLoader, IterableDataset, Sampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from .arguments import TrainingArguments, check_output_dir
from .checkpoints import (
    CheckpointError,
    TrainingProgress,
    check_writable,
    checkpoint_bytes,
    estimate_checkpoint_bytes,
    estimate_save_bytes,
    install_adapter_state_hooks,
    latest_checkpoint,
    list_checkpoints,
    remove_checkpoints,
    save_adapter,
    save_checkpoint,
    set_aside_damaged,
    verify_checkpoint,
)
from .data.spec import TaskData
from .durable import write_text_atomically
from .metrics import load_metric
from .model_card import adapter_card, is_hub_id
from .modeling import build_model
from .presets import PresetReport
from .selection import BestStep, with_validation
from .sharding import (
    SHARDED_STATE_DIR,
    ShardingOptions,
    full_value,
    gather_adapter_state,
    is_sharded,
    load_sharded_state,
    local_part,
    requested_sharding,
    save_sharded_state,
    shard_model,
)
from .validation import check_task_data, model_inputs


class NonFiniteError(FloatingPointError):
    """Training met NaN or Inf: in a batch's inputs (``kind="inputs"``), the loss (``"loss"``), the gradient norm
    (``"gradients"``, with gradient clipping on) or, checked before each save, the trainable weights (``"weights"``).

    ``step`` is the optimizer step (1-based) it happened at (for ``"weights"``: the step after which it was found).
    Raised on every process alike. No checkpoint of that step or later is written, and every checkpoint written
    holds finite weights, so the last complete checkpoint is the last good state.
    """

    def __init__(self, message: str, *, step: int, kind: str) -> None:
        super().__init__(message)
        self.step, self.kind = step, kind


class EpochSampler(Sampler[int]):
    """A random order of the training examples that depends only on ``(seed, epoch)``.

    Every process draws the same order (Accelerate then gives each process its own batches), and a resumed run
    redraws exactly the order it was interrupted in, without touching the global random state.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of pass ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> typing.Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


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
        losses = (
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none"
            )
            .reshape(labels.shape[0], -1)
            .mean(dim=1)
        )
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


def _stream_batches(
    stream: IterableDataset, args: TrainingArguments, accelerator: Accelerator, skip: int
) -> typing.Iterator[dict[str, torch.Tensor]]:
    """Batches of an endless training stream for this process, on its device: its own shard (the processes' shards
    are disjoint and together make up the one-process stream, batch by batch), after its first ``skip`` batches.

    The stream must offer ``for_loader(batch_size, skip_batches, num_shards, shard_index)``, as
    :class:`~fpt_peft.data.BitStream` does: skipping costs nothing, and a resumed run continues the same stream.
    """
    for_loader = getattr(stream, "for_loader", None)
    if for_loader is None:
        raise TypeError(
            f"The train split is an IterableDataset ({type(stream).__name__}) without for_loader(batch_size, "
            "skip_batches, num_shards, shard_index): the training loop cannot split it between processes or resume "
            "it. Use a datasets.Dataset, or a stream like fpt_peft.data.BitStream."
        )
    shard = for_loader(
        batch_size=args.batch_size,
        skip_batches=skip,
        num_shards=accelerator.num_processes,
        shard_index=accelerator.process_index,
    )
    # Its own generator: creating the loader must not draw from the global RNG (dropout), or a resume would diverge.
    loader = DataLoader(
        shard, batch_size=args.batch_size, num_workers=args.num_workers, generator=torch.Generator().manual_seed(0)
    )
    for batch in loader:
        yield {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}


def make_optimizer(
    params: Sequence[torch.nn.Parameter], args: TrainingArguments, device: torch.device
) -> torch.optim.Adam:
    """The paper's Adam over ``params``: fused (one kernel for every tensor) on CUDA, torch's default elsewhere."""
    fused = True if device.type == "cuda" else None
    return torch.optim.Adam(params, lr=args.learning_rate, weight_decay=args.weight_decay, fused=fused)


def _tracker_config(args: TrainingArguments, task: TaskData) -> dict[str, Any]:
    config = {k: ("" if v is None else v) for k, v in asdict(args).items()}  # tensorboard hparams refuse None
    config["task"] = task.spec.name
    return config


def train(
    task: TaskData, args: TrainingArguments | argparse.Namespace, model: torch.nn.Module | None = None
) -> dict[str, float]:
    """Train an FPT model on ``task`` with Accelerate; returns the final evaluation metrics.

    ``model`` replaces the one ``args`` describes (:func:`~fpt_peft.modeling.build_model`): a control such as
    :class:`~fpt_peft.controls.NoLM`, trained, checkpointed and scored the same way, and saved to
    ``output_dir/adapter`` by its own ``save_pretrained``.

    Every check (arguments, data against its spec, model, sequence length against the model's positions, output
    folder: earlier runs, write permission, free space for the checkpoints and adapter) runs before the first step.
    The final adapter is saved to ``output_dir/adapter``.

    Faults: checkpoints are atomic and durable (a run killed at any moment resumes with ``--resume`` from the last
    complete one, bit-identically); NaN or Inf in the inputs, loss, gradient norm or weights raises
    :class:`NonFiniteError` naming the step, on every process, before anything broken is saved.
    """
    preset: PresetReport | None = getattr(args, "preset_report", None)  # from parse_recipe_args (recipes)
    if isinstance(args, argparse.Namespace):
        args = TrainingArguments.from_namespace(args)
    if args.tf32 and (args.cpu or not torch.cuda.is_available()):
        raise ValueError("--tf32 is a CUDA matrix-product mode, and this run has no CUDA device; leave it out.")
    with float32_matmul_precision("high" if args.tf32 else None):
        return _train(task, args, model, preset)


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


def _train(
    task: TaskData, args: TrainingArguments, model: torch.nn.Module | None, preset: PresetReport | None
) -> dict[str, float]:
    """:func:`train` with its arguments converted and the float32 matrix-product precision set."""
    if model is not None and args.model_options() != TrainingArguments().model_options():
        raise ValueError(  # they describe a model this run would not build
            "train(..., model=...) trains the model it is given; leave the model options of args (init, finetune, "
            "the freeze/train switches, num_layers, input_dropout, embedding_init) at their defaults."
        )
    spec = task.spec
    output_dir = Path(args.output_dir or f"outputs/{spec.name}")
    check_task_data(task)
    check_output_dir(args, output_dir)
    task = with_validation(task, args.validation_fraction, args.seed)
    if args.early_stopping_patience and task.validation is None:
        raise ValueError("--early-stopping-patience needs a validation split: pass --validation-fraction above 0.")

    sharding = requested_sharding()  # before Accelerator, which fails on CPU for an FSDP1 config
    if args.compile and sharding is not None:
        raise ValueError(
            "--compile is not supported with sharded (FSDP) training: the sharded model is not prepared by "
            "Accelerate, which is what compiles it. Leave out --compile or train without the FSDP config."
        )
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
    if model is None:
        described = f"--model {args.model} ({args.init}, {args.finetune})"
        model = build_model(spec, args.model, seed=args.seed, **args.model_options())
    else:
        described = f"the given {type(model).__name__}"
    _check_outputs(accelerator, args, model, output_dir, spec.metric)
    # Both before the optimizer, so that it holds the final parameters (fused Adam: CUDA tensors; FSDP: shards).
    if sharding is not None:
        model = shard_model(model, sharding, accelerator.device, accelerator.mixed_precision)
    else:
        model = model.to(accelerator.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())

    keys = model_inputs(spec)
    loader_options: dict[str, Any] = {"num_workers": args.num_workers, "generator": torch.Generator().manual_seed(0)}
    # A finite train split is drawn in a seeded order per pass (and split between the processes by Accelerate); an
    # endless stream (the bit tasks' official formulation) is read by each process from its own shard.
    stream = task.train if isinstance(task.train, IterableDataset) else None
    sampler = EpochSampler(len(task.train), args.seed) if not isinstance(task.train, IterableDataset) else None
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

    progress = TrainingProgress(num_processes=n)
    best = BestStep()
    accelerator.register_for_checkpointing(progress)
    accelerator.register_for_checkpointing(best)
    write_sharded_state = read_sharded_state = None
    if sharding is None:
        install_adapter_state_hooks(accelerator)
    else:

        def write_sharded_state(folder: Path) -> None:
            save_sharded_state(model, optimizer, folder / SHARDED_STATE_DIR)

        def read_sharded_state(folder: Path) -> None:
            load_sharded_state(model, optimizer, folder / SHARDED_STATE_DIR)

    checkpoints = output_dir / "checkpoints"
    if args.overwrite_output_dir and accelerator.is_main_process:
        remove_checkpoints(checkpoints)
    accelerator.wait_for_everyone()
    set_seed(args.seed, device_specific=True)  # dropout differs per process; a resume restores the saved states
    if args.resume or args.resume_if_possible:
        _resume(accelerator, checkpoints, progress, strict=args.resume, read_sharded_state=read_sharded_state)
    else:
        accelerator.print(f"Training afresh into {output_dir}.")

    if args.log_with:
        accelerator.init_trackers(spec.name, config=_tracker_config(args, task))
    accelerator.print(
        f"{spec.name}: {_describe_size(task.train)} train / {_describe_size(task.validation)} validation / "
        f"{len(task.eval)} eval examples | {described} | "
        f"trainable {sum(p.numel() for p in trainable):,} of {total:,} parameters | "
        f"{n} process(es) on {accelerator.device}{_describe_sharding(sharding)} | {output_dir}"
    )
    if task.description:  # what was read, and the kind inferred (own data)
        accelerator.print(task.description)

    metrics: dict[str, float] = {}
    evaluated_at = -1
    stop = False
    keep_weights = keep == "best"
    running_loss = torch.zeros((), device=accelerator.device)
    running_count = 0
    # The first optimizer step (0: none yet) whose batch had non-finite inputs, whose loss was non-finite, whose
    # gradient norm was non-finite, and (checked before each save) after which a trainable weight was non-finite.
    # Kept on the device, so that the checks cost no host sync; read (and combined over processes) before logging,
    # evaluating and saving, i.e. before a checkpoint or the adapter could record a broken state.
    health = torch.zeros(len(_HEALTH), dtype=torch.long, device=accelerator.device)
    embeds = None if spec.is_symbolic else "inputs_embeds"
    fine = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    # fp16's gradient scaler expects (and skips) overflowing gradients; bf16 and fp32 have no such steps.
    watch_gradients = args.max_grad_norm > 0 and accelerator.mixed_precision != "fp16"
    bar = tqdm(
        total=args.max_steps, initial=progress.step, desc=spec.name, disable=not accelerator.is_local_main_process
    )
    model.train()
    try:
        while progress.step < args.max_steps and not stop:
            if stream is not None:  # endless: this loop never reaches its else
                epoch_loader: typing.Iterable[dict[str, torch.Tensor]] = _stream_batches(
                    stream, args, accelerator, progress.batch
                )
            else:
                assert sampler is not None and train_loader is not None
                sampler.set_epoch(progress.epoch)
                train_loader.set_epoch(progress.epoch)
                epoch_loader = (
                    accelerator.skip_first_batches(train_loader, progress.batch) if progress.batch else train_loader
                )
            for batch in epoch_loader:
                with accelerator.accumulate(model):
                    loss = model(**_model_batch(batch, keys), labels=batch["labels"]).loss
                    if sharding is not None:  # reduce-scatter the gradients only on the last accumulated batch
                        model.set_requires_gradient_sync(accelerator.sync_gradients)  # type: ignore[operator]
                    accelerator.backward(loss)
                    norm = None
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        norm = full_value(accelerator.clip_grad_norm_(trainable, args.max_grad_norm))
                    if accelerator.sync_gradients:  # what a prepared optimizer does; a sharded one is not prepared
                        optimizer.step()
                        optimizer.zero_grad()
                    scheduler.step()
                progress.batch += 1
                loss = loss.detach().float()
                running_loss += loss
                running_count += 1
                bad_inputs = ~torch.isfinite(batch[embeds]).all() if embeds else fine  # integer ids are finite
                bad_norm = ~torch.isfinite(norm) if watch_gradients and isinstance(norm, torch.Tensor) else fine
                bad = torch.stack((bad_inputs, ~torch.isfinite(loss), bad_norm, fine))
                health = torch.where(bad & (health == 0), progress.step + 1, health)
                if not accelerator.sync_gradients:
                    continue
                progress.step += 1
                bar.update(1)
                step = progress.step
                logs = step % args.log_every == 0 or step == args.max_steps
                evaluates = bool(args.eval_every and step % args.eval_every == 0) or step == args.max_steps
                saves = bool(args.save_every and step % args.save_every == 0) or step == args.max_steps
                if saves:  # a weight can turn non-finite without a non-finite gradient norm (no clipping, overflow)
                    bad_weights = ~torch.stack([torch.isfinite(local_part(p)).all() for p in trainable]).all()
                    health[3] = torch.where(bad_weights & (health[3] == 0), step, health[3])
                if logs or evaluates or saves:
                    _check_health(accelerator, health, embeds, args, checkpoints)
                if logs:
                    train_loss = float(accelerator.reduce(running_loss, reduction="mean")) / max(running_count, 1)
                    running_loss.zero_()
                    running_count = 0
                    bar.set_postfix(loss=f"{train_loss:.4f}")
                    accelerator.log({"train_loss": train_loss, "lr": scheduler.get_last_lr()[0]}, step=step)
                if evaluates and validation_loader is None:  # no held-out data: the eval split, for the record only
                    metrics = evaluate_model(model, eval_loader, accelerator, spec.metric, keys)
                    evaluated_at = step
                    accelerator.log({f"eval_{k}" if k != "eval_loss" else k: v for k, v in metrics.items()}, step=step)
                    accelerator.print(_describe(step, metrics))
                elif evaluates:
                    assert validation_loader is not None
                    held = evaluate_model(model, validation_loader, accelerator, spec.metric, keys)
                    best.update(step, held[spec.metric], held["eval_loss"], trainable, keep_weights)
                    accelerator.log({f"validation_{k.removeprefix('eval_')}": v for k, v in held.items()}, step=step)
                    accelerator.print(_describe(step, held, "validation "))
                    patience = args.early_stopping_patience
                    stop = bool(patience) and best.evaluations_since >= patience
                    if stop:
                        accelerator.print(f"Early stop at step {step}: {patience} evaluations without a better one.")
                if saves or stop:
                    save_checkpoint(accelerator, checkpoints, step, args.keep_checkpoints, write_sharded_state)
                if step >= args.max_steps or stop:
                    break
            else:
                progress.epoch += 1
                progress.batch = 0
    finally:
        bar.close()

    if validation_loader is not None:
        metrics = _score_kept_step(model, trainable, best, keep, progress.step, eval_loader, accelerator, spec)
    elif evaluated_at != progress.step:  # e.g. resumed from the final checkpoint
        metrics = evaluate_model(model, eval_loader, accelerator, spec.metric, keys)
        accelerator.print(_describe(progress.step, metrics))
    metrics["step"] = progress.step
    _save_adapter(accelerator, model, output_dir, metrics, args, task, preset)
    accelerator.end_training()
    return metrics


def _check_outputs(
    accelerator: Accelerator, args: TrainingArguments, model: torch.nn.Module, output_dir: Path, metric: str
) -> None:
    """Before the first step: fail unless ``output_dir`` is writable and has room for the checkpoints and adapter.

    A checkpoint is estimated by :func:`~fpt_peft.checkpoints.estimate_checkpoint_bytes` (adapter weights, Adam's
    two moments, RNG states); at its peak a run holds ``keep_checkpoints`` of them plus the one being written, and
    the final adapter. Checkpoints already there (``--resume``, ``--overwrite-output-dir``) count as space that
    will be reused. The evaluation metric is created once too (``evaluate`` makes a cache folder for it). Every
    process checks; if any fails, all raise, so that none waits for the others forever.
    """
    checkpoints = output_dir / "checkpoints"
    one = estimate_checkpoint_bytes(model, accelerator.num_processes)
    adapter = estimate_save_bytes(model)
    existing = sum(checkpoint_bytes(p) for p in list_checkpoints(checkpoints))
    needed = max(0, (args.keep_checkpoints + 1) * one - existing) + adapter
    error: OSError | None = None
    try:
        check_writable(output_dir, needed)
        for folder in (checkpoints, output_dir / "adapter"):  # either may exist already, with other permissions
            check_writable(folder)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            hint = (
                f"this run needs about {needed:,} bytes there: {args.keep_checkpoints} checkpoint(s) plus one being "
                f"written (about {one:,} bytes each) and the final adapter (about {adapter:,} bytes). Free some space "
                "or pass another --output-dir (or a lower --keep-checkpoints)."
            )
        else:
            hint = "pass a writable --output-dir."
        error = type(exc)(exc.errno, f"{exc.strerror}. Checked before training: {hint}")
        error.__cause__ = exc
    if error is None:
        try:
            load_metric(metric)
        except OSError as exc:
            error = type(exc)(
                exc.errno,
                f"Cannot create the {metric!r} metric, checked before training: the evaluate library needs a "
                f"writable cache folder ({exc.strerror}: {exc.filename!r}). Set HF_METRICS_CACHE (or HF_HOME) to a "
                "writable folder.",
            )
            error.__cause__ = exc
    failures = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum")
    if error is not None:
        raise error
    if float(failures) > 0:
        raise OSError(
            f"Another process failed the checks of --output-dir {str(output_dir)!r} before training; see its error."
        )


_HEALTH = ("inputs", "loss", "gradients", "weights")  # what ``health`` tracks, in order (see train())


def _check_health(
    accelerator: Accelerator, health: torch.Tensor, embeds: str | None, args: TrainingArguments, checkpoints: Path
) -> None:
    """Raise :class:`NonFiniteError` on every process if any process has seen NaN or Inf (see ``health``)."""
    width = len(_HEALTH)
    if accelerator.num_processes > 1:
        rows = accelerator.gather(health).reshape(-1, width).tolist()  # every process gets every row
    else:
        rows = [health.tolist()]
    # The earliest step; at one step, the first cause in _HEALTH's order (bad inputs explain a bad loss, ...).
    seen = [(row[kind], kind, rank) for rank, row in enumerate(rows) for kind in range(width) if row[kind] > 0]
    if not seen:
        return
    step, kind, rank = min(seen)
    last = latest_checkpoint(checkpoints)
    kept = f"the last complete checkpoint, {str(last)!r}, is intact" if last else "no checkpoint had been written"
    where = f" (process {rank})" if accelerator.num_processes > 1 else ""
    settings = (
        f"--learning-rate {args.learning_rate:g}, --max-grad-norm {args.max_grad_norm:g}, --mixed-precision "
        f"{accelerator.mixed_precision}"
    )
    if _HEALTH[kind] == "inputs":
        message = (
            f"{embeds} contain NaN or Inf in the batch of step {step}{where}: the training data (or a transform of "
            f"it) has non-finite values. Nothing after step {step - 1} was saved; {kept}."
        )
    elif _HEALTH[kind] == "loss":
        message = (
            f"Non-finite training loss (NaN or Inf) at step {step}{where}, with finite inputs: training diverged "
            f"({settings}), or a weight became non-finite. Nothing after step {step - 1} was saved; {kept}."
        )
    elif _HEALTH[kind] == "gradients":
        message = (
            f"Non-finite gradient norm (NaN or Inf) at step {step}{where}, with a finite loss: training diverged "
            f"({settings}); that step's update made the weights non-finite. Nothing after step {step - 1} was "
            f"saved; {kept}."
        )
    else:
        message = (
            f"Trainable weights are non-finite (NaN or Inf) after step {step}{where}, though every loss was finite: "
            f"training diverged ({settings}). This state was not saved; {kept}."
        )
    raise NonFiniteError(message, step=step, kind=_HEALTH[kind])


def _resume(
    accelerator: Accelerator,
    checkpoints: Path,
    progress: TrainingProgress,
    strict: bool,
    read_sharded_state: typing.Callable[[Path], None] | None = None,
) -> None:
    """Load the last complete checkpoint, if any (model adapter, optimizer, scheduler, RNG states, progress), and
    what ``read_sharded_state(folder)`` restores (a sharded model's adapter and optimizer state).

    Checkpoints whose files no longer match their manifest (damaged after they were written) are renamed to
    ``step_XXXXXX.damaged`` and the previous one is used.
    """
    last = None
    damaged = []
    for candidate in reversed(list_checkpoints(checkpoints)):
        try:
            verify_checkpoint(candidate)
        except CheckpointError as exc:
            accelerator.print(f"--resume: skipping a damaged checkpoint. {exc}")
            damaged.append(candidate)
            continue
        last = candidate
        break
    accelerator.wait_for_everyone()  # every process has verified before the damaged ones move
    if damaged and accelerator.is_main_process:
        for folder in damaged:
            accelerator.print(f"--resume: moved {folder} to {set_aside_damaged(folder)}.")
    accelerator.wait_for_everyone()
    if last is None:
        if strict:
            raise FileNotFoundError(f"--resume: no intact checkpoint in {str(checkpoints)!r} to continue from.")
        accelerator.print(f"No complete checkpoint in {checkpoints}: training afresh.")
        return
    sharded = (last / SHARDED_STATE_DIR).is_dir()
    if sharded != (read_sharded_state is not None):
        written, now = ("a sharded (FSDP)", "unsharded") if sharded else ("an unsharded", "sharded (FSDP)")
        raise ValueError(
            f"{last} was written by {written} run, and this run is {now}: resume it the way it was started (with or "
            "without --config_file recipes/accelerate_configs/fsdp.yaml), or start afresh with --overwrite-output-dir."
        )
    processes = accelerator.num_processes
    accelerator.load_state(str(last))
    if progress.num_processes != processes:
        raise ValueError(
            f"{last} was written by a run with {progress.num_processes} process(es); resume it with the same number "
            f"(this run has {processes})."
        )
    if read_sharded_state is not None:
        read_sharded_state(last)
    accelerator.print(f"Resumed from {last} at step {progress.step}.")


def _save_adapter(
    accelerator: Accelerator,
    model: torch.nn.Module,
    output_dir: Path,
    metrics: dict[str, float],
    args: TrainingArguments,
    task: TaskData,
    preset: PresetReport | None = None,
) -> None:
    """Write the final adapter with its model card, and the metrics (main process only; a sharded model's adapter is
    gathered first, by every process), both with the ``preset`` report if any; push the adapter folder to
    ``args.push_to_hub`` if given."""
    state = gather_adapter_state(model, accelerator.device) if is_sharded(model) else None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        adapter = accelerator.unwrap_model(model, keep_torch_compile=False)
        configs = getattr(adapter, "peft_config", None)  # None: a control model (``train(..., model=...)``)
        base = configs[adapter.active_adapter].base_model_name_or_path if configs else None
        card = (
            None
            if not configs
            else adapter_card(  # a control model writes the card of its own class
                task=task.spec.name,
                base_model=base or None,
                dataset=task.source if is_hub_id(task.source) and not task.local_source else None,
                metrics=metrics,
                setup=_card_setup(args, accelerator, is_sharded(model)),
                preset=preset,
                data_name=task.source if task.local_source else None,
                data_description=task.description,
            )
        )
        labels = None
        if task.label_names is not None:
            labels = {"labels.json": json.dumps({"id2label": dict(enumerate(task.label_names))}, indent=2) + "\n"}
        text = None if card is None else str(card)
        save_adapter(adapter, output_dir / "adapter", card=text, extra_files=labels, state_dict=state)
        saved = {**metrics, **preset.as_json()} if preset is not None else metrics
        write_text_atomically(output_dir / "metrics.json", json.dumps(saved, indent=2) + "\n")
        accelerator.print(f"Saved the adapter to {output_dir / 'adapter'}.")
        if args.push_to_hub:
            # upload_folder sends exactly what save_pretrained wrote, model card included (push_to_hub would
            # replace the card with transformers' generic one).
            api = HfApi()
            repo = api.create_repo(args.push_to_hub, exist_ok=True).repo_id
            api.upload_folder(repo_id=repo, folder_path=str(output_dir / "adapter"), commit_message="Upload adapter")
            accelerator.print(f"Pushed the adapter to https://huggingface.co/{repo}.")
    accelerator.wait_for_everyone()


def _card_setup(args: TrainingArguments, accelerator: Accelerator, sharded: bool) -> dict[str, Any]:
    """The training options a model card reports."""
    options = args.model_options()
    trained = [g for g, key in _GROUPS.items() if options[key]]
    return {
        "model": "a local folder" if os.path.isabs(args.model) or os.path.isdir(args.model) else args.model,
        "init": args.init,
        "finetune": args.finetune,
        "trained groups": ", ".join(trained),
        "transformer blocks kept": "all" if args.num_layers is None else args.num_layers,
        "learning rate": args.learning_rate,
        "batch size (per process)": args.batch_size,
        "processes": accelerator.num_processes,
        "parallelism": "sharded (FSDP2)" if sharded else "data parallel" if accelerator.num_processes > 1 else "none",
        "steps": args.max_steps,
        "mixed precision": accelerator.mixed_precision,
        "backbone dtype": args.dtype or "as saved",
        "seed": args.seed,
    }


_GROUPS = {
    "layer norms": "train_layer_norms",
    "positions": "train_positions",
    "input layer": "train_input",
    "output layer": "train_output",
    "attention": "train_attention",
    "feed-forward": "train_feedforward",
}


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
