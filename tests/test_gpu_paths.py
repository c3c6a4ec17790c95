"""The options GPU users train with, checked on the CPU at tiny sizes: bf16 autocast and a bf16 backbone train as
fp32 does, ``--compile`` compiles without graph breaks (feature and vocabulary mode) and saves a clean adapter,
SDPA attention, fused Adam on CUDA, and ``--tf32`` (refused without CUDA, scoped to the run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModel

from fpt_peft.arguments import FPTTrainingArguments
from fpt_peft.data import load_task
from fpt_peft.modeling import build_model
from fpt_peft.training import float32_matmul_precision, make_optimizer

from .training_utils import load_recipe, run_python, save_tiny_backbone

BIT_MEMORY = ["--n-bits", "20", "--patch-size", "5", "--num-train", "512", "--num-eval", "64", "--lr", "1e-2"]
STEPS = ["--max-steps", "60", "--eval-every", "0", "--log-every", "20", "--save-every", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


def _recipe(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, float], list[float]]:
    """Run recipe ``name`` in this process; its metrics and the logged training losses."""
    logged: list[float] = []
    original_log = Accelerator.log

    def log(self: Accelerator, values: dict[str, float], **kwargs: Any) -> None:
        if "train_loss" in values:
            logged.append(values["train_loss"])
        original_log(self, values, **kwargs)

    monkeypatch.setattr(Accelerator, "log", log)
    AcceleratorState._reset_state()  # Accelerate fixes the precision and dynamo backend once per process
    try:
        return load_recipe(name).main(argv), logged
    finally:
        AcceleratorState._reset_state()
        monkeypatch.undo()


def test_bf16_autocast_and_a_bf16_backbone_train_bit_memory_as_fp32_does(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Measured (torch 2.13, CPU): final eval loss 0.3764 (fp32), 0.3763 (autocast), 0.3751 (bf16 backbone); the
    # training loss falls from about 0.45 at step 20 to 0.38 at step 60 in each.
    task = load_task("bit_memory", num_train=512, num_eval=64, n_bits=20, patch_size=5, seed=0)
    initial = get_peft_model_state_dict(build_model(task.spec, tiny, seed=0))
    runs = {}
    for name, extra in {
        "fp32": [],
        "autocast": ["--mixed-precision", "bf16"],
        "bf16": ["--dtype", "bfloat16"],
    }.items():
        out = tmp_path / name
        metrics, losses = _recipe(
            "bit_memory", ["--model", tiny, *BIT_MEMORY, *STEPS, "--output-dir", str(out), *extra], monkeypatch
        )
        weights = load_file(str(out / "adapter/adapter_model.safetensors"))
        runs[name] = (metrics, losses, weights)
    fp32_metrics, _, fp32_weights = runs["fp32"]
    for name, (metrics, losses, weights) in runs.items():
        assert losses[-1] < 0.9 * losses[0], (name, losses)  # the loss falls
        assert metrics["eval_loss"] == pytest.approx(fp32_metrics["eval_loss"], rel=0.02), name
        norms = [k for k in weights if "LayerNorm.fpt_copies" in k]
        assert norms and all(weights[k].dtype == torch.float32 for k in norms), name  # FPT's copies stay float32
        moved = [k for k in norms if not torch.equal(weights[k], initial[k])]
        assert moved == norms, (name, sorted(set(norms) - set(moved)))  # every norm tensor trained
        if name != "fp32":
            assert any(not torch.equal(weights[k], fp32_weights[k]) for k in weights), name  # bf16 really ran


def test_a_bf16_backbone_computes_in_bf16_around_float32_copies(tiny: str) -> None:
    task = load_task("bit_memory", num_train=32, num_eval=8, n_bits=20, patch_size=5, seed=0)
    model = build_model(task.spec, tiny, seed=0, **FPTTrainingArguments(dtype="bfloat16").model_options())
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if "fpt_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "fpt_" not in n} == {torch.bfloat16}
    seen: list[torch.dtype] = []
    query = next(m for n, m in model.named_modules() if n.endswith("attention.self.query"))
    query.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    out = model(inputs_embeds=task.train[:4]["inputs_embeds"], labels=task.train[:4]["labels"])
    assert seen == [torch.bfloat16] and torch.isfinite(out.loss)


def test_compile_trains_without_graph_breaks_and_saves_a_clean_adapter(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    out = tmp_path / "compiled"
    argv = ["--model", tiny, *BIT_MEMORY, *STEPS, "--save-every", "30", "--output-dir", str(out)]
    metrics, losses = _recipe("bit_memory", [*argv, "--compile"], monkeypatch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the model really ran compiled
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert losses[-1] < 0.9 * losses[0]
    eager, _ = _recipe("bit_memory", [*argv, "--output-dir", str(tmp_path / "eager")], monkeypatch)
    assert metrics["eval_loss"] == pytest.approx(eager["eval_loss"], rel=0.02)
    # Checkpoints and the adapter hold the model's own keys (no torch.compile wrapper prefix) and reload.
    saved = load_file(str(out / "adapter/adapter_model.safetensors"))
    checkpoint = load_file(str(out / "checkpoints/step_000060/model.safetensors"))
    assert set(saved) == set(load_file(str(tmp_path / "eager/adapter/adapter_model.safetensors")))
    assert not any("_orig_mod" in k for k in [*saved, *checkpoint])
    reloaded = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny), str(out / "adapter"))
    assert torch.equal(
        get_peft_model_state_dict(reloaded)["base_model.model.embeddings.LayerNorm.fpt_copies.weight"],
        saved["base_model.model.embeddings.LayerNorm.fpt_copies.weight"],
    )
    # A compiled run resumes from its checkpoint (the load hook sees the compiled model).
    resumed, _ = _recipe("bit_memory", [*argv, "--compile", "--max-steps", "70", "--resume"], monkeypatch)
    assert resumed["step"] == 70


def test_compile_in_vocabulary_mode_has_no_graph_break(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    argv = [
        "--model",
        tiny,
        "--num-train",
        "256",
        "--num-eval",
        "32",
        "--max-tokens",
        "64",
        "--max-steps",
        "10",
        "--eval-every",
        "0",
        "--save-every",
        "0",
        "--output-dir",
        str(tmp_path / "listops"),
        "--compile",
    ]
    _recipe("listops", argv, monkeypatch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_backbones_use_sdpa_attention(tmp_path: Path, family: str) -> None:
    folder = save_tiny_backbone(tmp_path / family, family)
    task = load_task("bit_memory", num_train=32, num_eval=8, n_bits=20, patch_size=5, seed=0)
    assert build_model(task.spec, folder).get_base_model().config._attn_implementation == "sdpa"


def test_adam_is_fused_on_cuda_only() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    args = FPTTrainingArguments(learning_rate=3e-4)
    assert make_optimizer(params, args, torch.device("cuda")).defaults["fused"] is True
    assert not make_optimizer(params, args, torch.device("cpu")).defaults["fused"]
    assert make_optimizer(params, args, torch.device("cpu")).defaults["lr"] == 3e-4


def test_tf32_is_scoped_to_the_run() -> None:
    before = torch.get_float32_matmul_precision()
    with float32_matmul_precision("high"):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), float32_matmul_precision("high"):
        raise RuntimeError  # restored on the way out of a failed run, too
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tf32"], "--tf32 is a CUDA matrix-product mode, and this run has no CUDA device"),
        (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    ],
)
def test_gpu_options_refused_with_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    done = run_python(["recipes/bit_memory.py", "--max-steps", "1", "--output-dir", str(tmp_path), *flags])
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "adapter").exists()


def test_compile_with_a_sharded_run_is_refused_with_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from .training_utils import ROOT, offline_env

    env = {**offline_env(), "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    done = subprocess.run(
        [sys.executable, "recipes/bit_memory.py", "--max-steps", "1", "--output-dir", str(tmp_path), "--compile"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--compile is not supported with sharded (FSDP) training" in errors[0], errors
    assert os.listdir(tmp_path) == [] or not (tmp_path / "adapter").exists()


def test_activation_checkpointing_recomputes_the_same_gradients_down_to_the_input_layer() -> None:
    from benchmarks.common import build_variant, make_batch

    batch = make_batch(2, 16, 10, input_dim=48)
    grads = {}
    for checkpointing in (False, True):
        variant = build_variant("fpt_peft", "tiny-bert", 10, input_dim=48, checkpointing=checkpointing)
        variant.model.eval()  # no dropout: the two runs must compute the same numbers
        assert variant.model.get_base_model().is_activation_checkpointing is checkpointing
        variant.loss(**batch).backward()
        grads[checkpointing] = {n: p.grad for n, p in variant.model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys()
    assert any("layer.0." in n for n in grads[True]) and any("fpt_input" in n for n in grads[True]), list(grads[True])
    for name, grad in grads[False].items():
        assert grad is not None and grads[True][name] is not None, name
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_largest_batch_search_doubles_then_bisects_to_a_sixteenth() -> None:
    from benchmarks.largest_batch import largest

    for limit in (1, 5, 37, 300, 1000):
        tried: list[int] = []

        def fits(batch: int, limit: int = limit, tried: list[int] = tried) -> bool:
            tried.append(batch)
            return batch <= limit

        found = largest(fits, 4096)
        assert limit * 15 / 16 <= found <= limit, (limit, found, tried)
        assert len(tried) <= 2 * limit.bit_length() + 2
    assert largest(lambda b: False, 64) == 0
    assert largest(lambda b: True, 100) == 64  # the cap: never a batch above --max-batch


def test_gpu_suite_refuses_a_full_run_without_cuda_and_a_folder_of_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import gpu_suite

    for argv, message in (
        ([f"--out-dir={tmp_path / 'new'}", "--device=cpu"], "without a CUDA device only --quick runs"),
        ([f"--out-dir={tmp_path}", "--quick", "--device=cpu"], "holds other files than a suite's"),
    ):
        (tmp_path / "kept.txt").write_text("a result")
        with pytest.raises(SystemExit) as exit_info:
            gpu_suite.parse_args(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and (tmp_path / "kept.txt").read_text() == "a result"
    previous = tmp_path / "previous"  # a previous suite's folder is accepted: a second run replaces its files
    previous.mkdir()
    for name in gpu_suite.FILES:
        (previous / name).write_text("old")
    assert gpu_suite.parse_args([f"--out-dir={previous}", "--quick", "--device=cpu"]).out_dir == previous
