"""The shared training module: arguments, model building, metrics, learning, checkpoints and resume, bad input."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from huggingface_hub import HfApi
from peft import PeftModel
from safetensors.torch import load_file

import fpt_peft.training as training
from fpt_peft.arguments import FPTTrainingArguments, add_training_args
from fpt_peft.checkpoints import LEGACY_FILES, latest_checkpoint, list_checkpoints
from fpt_peft.data import TaskData, TaskSpec, load_task
from fpt_peft.metrics import load_metric
from fpt_peft.modeling import build_model
from fpt_peft.training import train

from .training_utils import assert_adapter_reloads, save_tiny_backbone


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny BERT backbone (2 layers, width 32, 64 positions) saved like a Hub model."""
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def xor() -> TaskData:
    """Bit XOR as in the paper: two 5-bit strings, one token each."""
    return load_task("bit_xor", num_train=2000, num_eval=200, n_bits=5, patch_size=5)


@pytest.fixture(scope="module")
def xor_unseen() -> TaskData:
    """Bit XOR of two 5-bit strings, scored only on input pairs that the 600 training examples never show."""
    task = load_task("bit_xor", num_train=600, num_eval=400, n_bits=5, patch_size=5)
    seen = {row.tobytes() for row in np.asarray(task.train.with_format("numpy")["inputs_embeds"])}
    inputs = np.asarray(task.eval.with_format("numpy")["inputs_embeds"])
    unseen = [i for i, x in enumerate(inputs) if x.tobytes() not in seen]
    return dataclasses.replace(task, eval=task.eval.select(unseen))


def run(
    task: TaskData, model: str, out: Path, on_evaluate: training.EvaluationCallback | None = None, **kw: Any
) -> dict[str, float]:
    defaults: dict[str, Any] = {"max_steps": 10, "batch_size": 8, "eval_every": 0, "save_every": 0}
    args = FPTTrainingArguments(model=model, output_dir=str(out), **{**defaults, **kw})
    return train(task, args, on_evaluate=on_evaluate)


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------------- arguments
def test_training_args_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = add_training_args(argparse.ArgumentParser(), max_steps=7, learning_rate=1e-4)
    args = FPTTrainingArguments.from_namespace(parser.parse_args([]))
    assert (args.max_steps, args.learning_rate, args.max_grad_norm, args.lr_scheduler) == (7, 1e-4, 1.0, "constant")
    args = FPTTrainingArguments.from_namespace(
        parser.parse_args(["--lr", "0.01", "--freeze-ln", "--freeze-out", "--train-attn", "--init", "random"])
    )
    options = args.model_options()
    assert args.learning_rate == 0.01 and options["init"] == "random"
    assert not options["train_layer_norms"] and not options["train_output"] and options["train_attention"]
    assert options["train_positions"] and options["train_input"] and not options["train_feedforward"]
    with pytest.raises(SystemExit, match=r"^2$"):
        parser.parse_args(["--mixed-precision", "fp8"])
    assert "argument --mixed-precision: invalid choice: 'fp8'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        FPTTrainingArguments(batch_size=0)
    with pytest.raises(ValueError, match="Unknown training argument"):
        add_training_args(argparse.ArgumentParser(), max_step=3)


def test_metrics_compute_offline() -> None:
    accuracy = load_metric("accuracy")
    accuracy.add_batch(predictions=[1, 2, 3, 4], references=[1, 2, 0, 4])
    assert accuracy.compute() == {"accuracy": 0.75}
    per_bit = load_metric("per_bit_accuracy")
    per_bit.add_batch(predictions=[[1, 0], [1, 1]], references=[[1, 0], [0, 1]])
    assert per_bit.compute() == {"per_bit_accuracy": 0.75, "exact_match": 0.5}
    with pytest.raises(ValueError, match="Unknown metric"):
        load_metric("f1")


# ---------------------------------------------------------------------------------------------------- model building
def test_build_model_trains_only_the_fpt_groups(tiny: str, xor: TaskData) -> None:
    model = build_model(xor.spec, tiny, seed=0)
    names = list(trainable(model))
    assert names and all("fpt_" in n for n in names)
    assert any("LayerNorm" in n for n in names) and any("position_embeddings" in n for n in names)
    assert not any(("attention" in n and "LayerNorm" not in n) or "intermediate" in n for n in names)
    frozen_ln = build_model(xor.spec, tiny, seed=0, train_layer_norms=False, train_positions=False)
    assert not any("LayerNorm" in n or "position_embeddings" in n for n in trainable(frozen_ln))


def test_random_init_is_seeded_and_differs(tiny: str, xor: TaskData) -> None:
    def query(model: PeftModel) -> torch.Tensor:
        return model.get_base_model().get_parameter("encoder.layer.0.attention.self.query.weight")

    pretrained = build_model(xor.spec, tiny, seed=0)
    random_a = build_model(xor.spec, tiny, init="random", seed=1)
    random_b = build_model(xor.spec, tiny, init="random", seed=1)
    assert torch.equal(query(random_a), query(random_b))
    assert not torch.equal(query(random_a), query(pretrained))


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_full_finetuning_trains_every_used_weight(tmp_path: Path, xor: TaskData, family: str) -> None:
    folder = save_tiny_backbone(tmp_path, family)
    model = build_model(xor.spec, folder, finetune="full", seed=0)
    base = model.get_base_model()
    # Every base weight the forward uses has a trainable copy: all but the unused token embedding (and BERT's pooler).
    unused = ("word_embeddings", "wte", "pooler")
    adapter_parts = ("fpt_", "modules_to_save", "output_adapter")
    originals = [p for n, p in base.named_parameters() if not any(part in n for part in (*adapter_parts, *unused))]
    new_layers = sum(p.numel() for n, p in base.named_parameters() if "fpt_input" in n or "output_adapter" in n)
    assert sum(p.numel() for p in trainable(model).values()) == sum(p.numel() for p in originals) + new_layers
    batch = xor.train[:4]
    model(inputs_embeds=batch["inputs_embeds"], labels=batch["labels"]).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # none unused: DDP-safe
    with pytest.raises(ValueError, match="finetune='full'"):
        build_model(xor.spec, folder, finetune="full", train_layer_norms=False)


@pytest.mark.parametrize("finetune", ["fpt", "full"])
def test_frozen_weights_stay_bit_identical(
    tiny: str, xor: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finetune: str
) -> None:
    built: list[tuple[PeftModel, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def capture(*args: Any, **kwargs: Any) -> PeftModel:
        model = build_model(*args, **kwargs)
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        built.append((model, frozen, trainable(model)))
        return model

    monkeypatch.setattr(training, "build_model", capture)
    run(xor, tiny, tmp_path, finetune=finetune, max_steps=5)
    model, frozen_before, trained_before = built[0]
    after = dict(model.named_parameters())
    assert frozen_before and all(torch.equal(after[n], t) for n, t in frozen_before.items())
    assert all(not after[n].requires_grad for n in frozen_before)
    assert any(not torch.equal(after[n], t) for n, t in trained_before.items())


# ---------------------------------------------------------------------------------------------------- learning
def test_bit_xor_learns_on_inputs_it_never_saw(tiny: str, xor_unseen: TaskData, tmp_path: Path) -> None:
    assert len(xor_unseen.eval) >= 100
    metrics = run(xor_unseen, tiny, tmp_path, finetune="full", max_steps=400, batch_size=32, learning_rate=3e-3)
    # Chance is 0.5 per bit; no linear model of the inputs gets past 0.75 (the XOR of two bits is not separable).
    assert metrics["per_bit_accuracy"] >= 0.85, metrics
    assert_adapter_reloads(tmp_path, tiny, xor_unseen, metrics)  # a full-finetuning adapter reloads like an FPT one


def test_digits_learns(tiny: str, tmp_path: Path) -> None:
    digits = load_task("digits")
    metrics = run(digits, tiny, tmp_path, finetune="full", max_steps=250, batch_size=32, learning_rate=3e-3)
    assert metrics["accuracy"] >= 0.6, metrics  # chance: 0.1 (this seed reaches 0.88)


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_resume_continues_exactly(tiny: str, tmp_path: Path) -> None:
    """Stopping at a checkpoint and resuming ends bit-identical to an uninterrupted run (weights, data order, RNG)."""
    task = load_task("digits")
    options: dict[str, Any] = {"batch_size": 16, "save_every": 8, "gradient_accumulation_steps": 2}
    run(task, tiny, tmp_path / "straight", max_steps=60, **options)
    run(task, tiny, tmp_path / "stopped", max_steps=24, **options)
    (tmp_path / "stopped/checkpoints/.tmp-step_999999").mkdir()  # a half-written checkpoint: must be ignored
    metrics = run(task, tiny, tmp_path / "stopped", max_steps=60, resume=True, **options)
    assert metrics["step"] == 60
    straight = load_file(str(tmp_path / "straight/adapter/adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "stopped/adapter/adapter_model.safetensors"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    # Keeps the last two complete checkpoints (the 24-step run's final one is among the older ones, pruned).
    assert [p.name for p in list_checkpoints(tmp_path / "stopped/checkpoints")] == ["step_000056", "step_000060"]


def test_latest_checkpoint_ignores_temporary_folders(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for name in ("step_000010", "step_000020", ".tmp-step_000030", "step_x", "notes", "step_000040"):
        (root / name).mkdir(parents=True)
    for name in ("step_000010", "step_000020"):  # complete (in 0.1.0's format, without a manifest)
        for file in LEGACY_FILES:
            (root / name / file).touch()
    latest = latest_checkpoint(root)  # step_000040 is empty: not a complete checkpoint
    assert latest is not None and latest.name == "step_000020"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_trackers_and_push_to_hub(tiny: str, xor: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pushed: list[tuple[str, set[str]]] = []

    def upload_folder(self: HfApi, repo_id: str, folder_path: str, **kwargs: object) -> None:  # the network boundary
        pushed.append((repo_id, {p.name for p in Path(folder_path).iterdir()}))

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: type("Repo", (), {"repo_id": repo_id})())
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    # Accelerate fixes the precision once per process; reset its state around this bf16 run (as its own tests do).
    AcceleratorState._reset_state()
    try:
        run(xor, tiny, tmp_path, log_with="tensorboard", push_to_hub="me/fpt-xor", mixed_precision="bf16")
    finally:
        AcceleratorState._reset_state()
    assert pushed == [("me/fpt-xor", {"README.md", "adapter_config.json", "adapter_model.safetensors"})]
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert (tmp_path / "adapter/adapter_config.json").exists() and (tmp_path / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------------- bad input
def _with_labels(task: TaskData, labels: np.ndarray) -> TaskData:
    train = datasets.Dataset.from_dict(
        {"inputs_embeds": np.asarray(task.train["inputs_embeds"]), "labels": labels}
    ).with_format("torch")
    return TaskData(spec=task.spec, train=train, eval=task.eval)


BadInput = tuple[TaskData, dict[str, Any], type[Exception], str]


def _bad_inputs(xor: TaskData) -> dict[str, Callable[[], BadInput]]:
    n = len(xor.train)
    return {
        "missing column": lambda: (
            TaskData(spec=xor.spec, train=xor.train.remove_columns("labels"), eval=xor.eval),
            {},
            ValueError,
            r"missing column\(s\) \['labels'\]",
        ),
        "labels out of range": lambda: (
            _with_labels(xor, np.full((n, 5), 2)),
            {},
            ValueError,
            r"labels must lie in \[0, num_classes=2\)",
        ),
        "label shape": lambda: (
            _with_labels(xor, np.zeros((n, 3), dtype=np.int64)),
            {},
            ValueError,
            r"labels must have shape",
        ),
        "too long": lambda: (
            load_task("bit_xor", num_train=16, num_eval=4, n_bits=200, patch_size=5),
            {},
            ValueError,
            "80 tokens, but --model .* has 64 learned positions",
        ),
        "missing model folder": lambda: (
            xor,
            {"model": "./no/such/model"},
            FileNotFoundError,
            "--model './no/such/model'",
        ),
        "unknown model": lambda: (xor, {"model": "no-such-model-xyz"}, OSError, "--model 'no-such-model-xyz'"),
        "too little data": lambda: (
            TaskData(spec=xor.spec, train=xor.train.select(range(3)), eval=xor.eval),
            {},
            ValueError,
            "fewer than one batch",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing column",
        "labels out of range",
        "label shape",
        "too long",
        "missing model folder",
        "unknown model",
        "too little data",
    ],
)
def test_bad_input_fails_before_training(
    tiny: str, xor: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # fail fast, whatever the environment
    task, options, error, message = _bad_inputs(xor)[case]()
    with pytest.raises(error, match=message):
        run(task, options.pop("model", tiny), tmp_path, **options)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "adapter").exists()


def test_bad_task_and_data_paths_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown task 'xor'"):
        load_task("xor")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("mnist", source=str(tmp_path / "no-such-folder"))


def test_symbolic_ids_out_of_range_fail_before_training(tiny: str, tmp_path: Path) -> None:
    spec = TaskSpec(name="toy", input_vocab_size=5, num_classes=2, pad_token_id=0, max_tokens=4)
    data = datasets.Dataset.from_dict(
        {"input_ids": [[1, 2, 9, 0]] * 8, "attention_mask": [[1, 1, 1, 0]] * 8, "labels": [0, 1] * 4}
    ).with_format("torch")
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, input_vocab_size=5\)"):
        run(TaskData(spec=spec, train=data, eval=data), tiny, tmp_path)


def test_existing_checkpoints_need_resume_or_overwrite(tiny: str, xor: TaskData, tmp_path: Path) -> None:
    run(xor, tiny, tmp_path, max_steps=2)
    with pytest.raises(FileExistsError, match="--resume"):
        run(xor, tiny, tmp_path, max_steps=2)
    assert run(xor, tiny, tmp_path, max_steps=2, overwrite_output_dir=True)["step"] == 2


# ------------------------------------------------------------------------------------------------ endless streams
def test_a_stream_trains_a_fresh_batch_each_step_and_resumes_bit_identically(tiny: str, tmp_path: Path) -> None:
    """The official bit tasks' formulation: every step reads the next batch of the stream, none twice; a run stopped
    after its checkpoint at step 3 and resumed ends where an uninterrupted one does."""
    task = load_task("bit_xor", num_train=None, num_eval=16, n_bits=5, patch_size=5, values="01", stream=True)
    seen: list[torch.Tensor] = []
    model = build_model(task.spec, tiny, seed=0)
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].clone()) if module.training else None,
        with_kwargs=True,
    )
    original = training.build_model
    training.build_model = lambda *a, **k: model  # type: ignore[assignment]
    try:
        run(task, tiny, tmp_path / "seen", max_steps=3)
    finally:
        training.build_model = original  # type: ignore[assignment]
        hook.remove()
    expected = torch.stack([task.train.example(i)["inputs_embeds"] for i in range(24)]).reshape(3, 8, -1, 5)
    assert torch.equal(torch.stack(seen), expected)  # batch k is examples 8k .. 8k+7 of the stream

    straight = tmp_path / "straight"
    last = {"save_every": 3, "keep": "last"}  # the runs' evaluation steps differ (3 and 6 vs 6): keep the last
    run(task, tiny, straight, max_steps=6, **last)
    stopped = tmp_path / "stopped"
    run(task, tiny, stopped, max_steps=3, **last)
    resumed = run(task, tiny, stopped, max_steps=6, resume=True, **last)
    assert resumed["step"] == 6
    a = load_file(str(straight / "adapter/adapter_model.safetensors"))
    b = load_file(str(stopped / "adapter/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_iterable_dataset_without_for_loader_is_refused(tiny: str, tmp_path: Path) -> None:
    class Plain(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            while True:
                yield {"inputs_embeds": torch.zeros(2, 5), "labels": torch.zeros(5, dtype=torch.long)}

    task = load_task("bit_xor", num_train=None, num_eval=8, n_bits=5, patch_size=5, stream=True)
    with pytest.raises(TypeError, match="without for_loader"):
        plain = TaskData(spec=task.spec, train=Plain(), eval=task.eval)
        run(plain, tiny, tmp_path / "plain", max_steps=1, validation_fraction=0.0)
    with pytest.raises(ValueError, match="without held_out"):  # no validation examples can be drawn from it
        run(plain, tiny, tmp_path / "plain", max_steps=1)


def test_the_old_name_of_the_options_class_still_imports_with_a_deprecation_warning() -> None:
    import fpt_peft.arguments
    import fpt_peft.training
    from fpt_peft.arguments import FPTTrainingArguments

    for module in (fpt_peft.arguments, fpt_peft.training):
        with pytest.warns(FutureWarning, match="now FPTTrainingArguments"):
            assert module.TrainingArguments is FPTTrainingArguments
        with pytest.raises(AttributeError, match="no attribute 'TrainingArgs'"):
            _ = module.TrainingArgs


def test_a_recipe_run_builds_and_checks_its_options_once_and_again_only_if_they_changed(
    tiny: str, xor: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fpt_peft.arguments as arguments
    from fpt_peft.arguments import parse_recipe_args

    calls: list[Path] = []

    def counting(args: FPTTrainingArguments, output_dir: Path) -> None:
        calls.append(output_dir)
        check_output_dir(args, output_dir)

    check_output_dir = arguments.check_output_dir
    monkeypatch.setattr(arguments, "check_output_dir", counting)
    monkeypatch.setattr(training, "check_output_dir", counting)
    parser = add_training_args(argparse.ArgumentParser(), max_steps=2, batch_size=8, eval_every=0, save_every=0)
    argv = ["--model", tiny, "--output-dir", str(tmp_path / "a")]
    args = parse_recipe_args(parser, argv, task="bit_xor")
    assert isinstance(args.checked_arguments, FPTTrainingArguments) and len(calls) == 1
    assert train(xor, args)["step"] == 2 and len(calls) == 1  # checked at parse time only
    args = parse_recipe_args(parser, [*argv[:-1], str(tmp_path / "b")], task="bit_xor")
    args.max_steps = 3  # changed after parsing: the snapshot is stale, so train builds and checks afresh
    assert train(xor, args)["step"] == 3 and calls[-2:] == [tmp_path / "b", tmp_path / "b"] and len(calls) == 3


# ---------------------------------------------------------------------------------------------------- on_evaluate
def test_on_evaluate_sees_every_evaluation_from_step_0_and_can_stop_the_run(tiny: str, tmp_path: Path) -> None:
    """``eval_on_start`` scores the untrained model at step 0; ``on_evaluate`` gets each evaluation's scores (the
    metric, the loss, its runtime, the training loss since the last log) and ends the run when it returns True."""
    task = load_task("digits")
    seen: list[tuple[int, dict[str, float]]] = []

    def record(step: int, scores: dict[str, float]) -> bool:
        seen.append((step, scores))
        return False

    options: dict[str, Any] = {"eval_every": 4, "log_every": 4, "validation_fraction": 0.0, "batch_size": 16}
    metrics = run(task, tiny, tmp_path / "all", max_steps=12, eval_on_start=True, **options, on_evaluate=record)
    assert [step for step, _ in seen] == [0, 4, 8, 12]
    assert "train_loss" not in seen[0][1] and all(scores["train_loss"] > 0 for _, scores in seen[1:])
    assert all(scores["eval_runtime"] > 0 and scores["eval_loss"] > 0 for _, scores in seen)
    assert seen[-1][1]["accuracy"] == metrics["accuracy"] and metrics["step"] == 12
    assert seen[0][1]["eval_loss"] > seen[-1][1]["eval_loss"]  # it learned between the first and last score

    stopped = run(task, tiny, tmp_path / "stop", max_steps=12, **options, on_evaluate=lambda step, _: step >= 4)
    assert stopped["step"] == 4  # stopped at the first evaluation that asked; the adapter saved there
    assert [p.name for p in list_checkpoints(tmp_path / "stop/checkpoints")] == ["step_000004"]
    assert (tmp_path / "stop/adapter/adapter_model.safetensors").is_file()


def test_on_evaluate_gets_the_validation_scores_when_there_is_a_validation_split(tiny: str, tmp_path: Path) -> None:
    task = load_task("digits")
    seen: list[dict[str, float]] = []
    metrics = run(
        task, tiny, tmp_path, max_steps=8, eval_every=4, validation_fraction=0.2,
        on_evaluate=lambda step, scores: seen.append(scores),
    )  # fmt: skip
    assert len(seen) == 2  # the validation scores it was told are the ones that chose the kept step
    kept = max(range(2), key=lambda i: (seen[i]["accuracy"], -seen[i]["eval_loss"], -i))
    assert metrics["kept_step"] == 4 * (kept + 1) and metrics["validation_accuracy"] == seen[kept]["accuracy"]


def test_one_loss_formula_ignores_masked_positions_per_example_as_in_the_mean() -> None:
    """``fpt_loss`` is the tuner's loss, NoLM's and the evaluation's: ``-100`` positions count in none of them."""
    from fpt_peft.controls import NoLM
    from fpt_peft.loss import fpt_loss

    logits, labels = torch.randn(3, 4, 5), torch.randint(0, 5, (3, 4))
    labels[0, 1] = labels[2, :3] = -100
    per_example = fpt_loss(logits, labels, per_example=True)
    for i in range(3):  # each example: the mean over its counted positions only
        counted = labels[i] != -100
        expected = torch.nn.functional.cross_entropy(logits[i][counted], labels[i][counted])
        assert torch.allclose(per_example[i], expected)
    expected_mean = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1))
    assert torch.allclose(fpt_loss(logits, labels), expected_mean)
    control = NoLM(hidden_size=8, max_tokens=2, num_classes=5, num_outputs=4, input_dim=3)
    out = control(inputs_embeds=torch.randn(3, 2, 3), labels=labels)
    assert torch.equal(out.loss, fpt_loss(out.logits, labels))
