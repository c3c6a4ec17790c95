"""Smoke tests of the benchmark scripts: each runs with ``--quick`` in a subprocess and writes a sane JSON and a plot.

Timings are never asserted (they depend on the machine); sizes, FLOPs, trainable sets and sync counts are.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import ROOT, run_benchmark_quick
from .training_utils import offline_env

# End-to-end: real processes and training runs. `make test-slow` runs them (and CI).
pytestmark = pytest.mark.slow

SETUPS = ("fpt_peft", "plain_fpt", "ln_tuning", "full")


def _run(module: str, out_dir: Path, name: str) -> dict[str, Any]:
    return run_benchmark_quick(module, out_dir, name)


def test_cost_quick(tmp_path: Path) -> None:
    data = _run("cost", tmp_path, "cost-test")
    variants = data["variants"]
    assert set(variants) == set(SETUPS)
    for name, v in variants.items():
        assert all(math.isfinite(v[k]) for k in ("step_ms", "forward_ms", "backward_ms", "optimizer_ms")), name
        assert v["forward_gflop"] > 0 and v["backward_gflop"] > 0, name
        memory = v["memory"]
        assert memory["gradient_bytes"] > 0 and memory["optimizer_state_bytes"] > 0, name
        assert memory["train_state_bytes"] >= memory["trainable_parameter_bytes"] + memory["gradient_bytes"], name
        assert memory["rss_peak_bytes"] > 0, name
    fpt, full = variants["fpt_peft"], variants["full"]
    # The three FPT set-ups train exactly the same parameters.
    counts = {
        name: variants[name]["memory"]["trainable_parameters"] for name in ("fpt_peft", "plain_fpt", "ln_tuning")
    }
    assert len(set(counts.values())) == 1, counts
    assert fpt["memory"]["trainable_parameter_bytes"] * 20 < full["memory"]["trainable_parameter_bytes"]
    assert fpt["memory"]["train_state_bytes"] * 20 < full["memory"]["train_state_bytes"]
    # Same forward; the frozen core computes no weight gradients, so the backward does less work and keeps less.
    assert fpt["forward_gflop"] == pytest.approx(full["forward_gflop"], rel=0.01)
    assert fpt["backward_gflop"] < 0.75 * full["backward_gflop"]
    assert fpt["saved_activation_bytes"] < full["saved_activation_bytes"]
    assert fpt["step_time_ratio"] == 1.0


def test_cost_bf16_autocasts_every_setup_and_compile_leaves_fpt_without_graph_breaks() -> None:
    import torch._dynamo

    from benchmarks import cost
    from benchmarks.common import train_step

    fp32, bf16 = (cost.parse_args(["--quick", "--model", "tiny-bert", "--precision", p]) for p in ("fp32", "bf16"))
    batch = cost.batch_for(fp32)
    for name in ("fpt_peft", "plain_fpt", "full"):  # the blocks' matrix products compute in the run's precision
        for args, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
            variant = cost.variant_for(name, args)
            seen = []
            linear = next(m for n, m in variant.model.named_modules() if n.endswith("attention.self.query"))
            linear.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.dtype))
            variant.loss(**batch)
            assert seen == [dtype], (name, args.precision, seen)
    bf16.compile = True
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    variant = cost.compiled(cost.variant_for("fpt_peft", bf16), bf16)
    before = variant.model.state_dict()[
        "base_model.model.encoder.layer.0.attention.output.LayerNorm.fpt_copies.default.weight"
    ].clone()
    train_step(variant, batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the model really ran compiled
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    after = variant.model.state_dict()[
        "base_model.model.encoder.layer.0.attention.output.LayerNorm.fpt_copies.default.weight"
    ]
    assert not torch.equal(before, after)  # and trained


def test_cost_refuses_tf32_off_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import cost

    with pytest.raises(SystemExit, match=r"^2$") as exit_info:
        cost.parse_args(["--precision", "tf32"])
    assert exit_info.value.code == 2
    assert "--precision tf32 is a CUDA matrix-product mode" in capsys.readouterr().err


def test_adapters_quick(tmp_path: Path) -> None:
    data = _run("adapters", tmp_path, "adapters-test")
    minilm = data["models"]["minilm"]
    assert set(minilm["adapter_bytes"]) == {"cifar10", "mnist"}
    for size in minilm["adapter_bytes"].values():
        assert 0 < size * 50 < minilm["base_bytes"]
    assert minilm["base_to_adapter_size_ratio"] > 50
    for key in ("set_adapter_us", "load_adapter_ms", "reload_base_ms", "reload_base_with_adapter_ms"):
        assert math.isfinite(minilm[key]), key
    assert {"mixed_batch_4_adapters_ms", "switching_sub_batches_4_adapters_ms"} <= set(minilm)  # the serving row


def test_overhead_quick(tmp_path: Path) -> None:
    data = _run("overhead", tmp_path, "overhead-test")
    cases = data["cases"]
    assert set(cases) == {"continuous", "symbols"}
    for case in cases.values():
        for name in ("fpt_peft", "plain_fpt"):
            assert math.isfinite(case[name]["forward_us"]) and math.isfinite(case[name]["step_us"])
        assert case["profile"], "the profile lists fpt_peft's functions"
    # Host reads (GPU syncs) per forward: none added for continuous inputs, one for the id range check of symbols.
    continuous, symbols = cases["continuous"], cases["symbols"]
    assert continuous["fpt_peft"]["syncs_per_forward"] == continuous["plain_fpt"]["syncs_per_forward"]
    assert symbols["fpt_peft"]["syncs_per_forward"] <= symbols["plain_fpt"]["syncs_per_forward"] + 1


def test_time_series_quick(tmp_path: Path) -> None:
    data = _run("time_series", tmp_path, "time_series-test")
    methods = data["datasets"]["BasicMotions"]["methods"]
    assert set(methods) == {"FPT pretrained", "FPT random", "MiniRocket", "1-NN DTW"}
    for name, m in methods.items():
        assert 0.0 <= m["accuracy"] <= 1.0 and math.isfinite(m["seconds"]), name
    assert methods["MiniRocket"]["accuracy"] > 0.5  # 4 classes; the field's classifier is far above chance even here
    assert methods["FPT pretrained"]["trained_parameters"] == methods["FPT random"]["trained_parameters"] > 0
    assert methods["1-NN DTW"]["trained_parameters"] == 0
    assert {r["label"] for r in data["input_handling"]} == {
        f"BasicMotions:{n}+{c}" for n in ("norm", "raw") for c in ("mix", "separate")
    }


def test_cli_startup_quick(tmp_path: Path) -> None:
    data = _run("cli_startup", tmp_path, "cli_startup-test")
    medians = data["median_seconds"]
    assert sum(k.endswith("--help") for k in medians) == 2
    assert all(math.isfinite(v) for v in medians.values()) and math.isfinite(data["slowest_help_seconds"])


def test_compare_cost_quick_runs_the_default_arms_on_the_569_row_table(tmp_path: Path) -> None:
    data = _run("compare_cost", tmp_path, "compare_cost-test")
    classical = ["majority", "logistic_regression", "random_forest"]
    assert list(data["arms"]) == ["fpt_pretrained", "fpt_random", "no_lm", *classical]
    assert data["runs"] == 6 and math.isfinite(data["wall_seconds"])
    assert data["arms"]["logistic_regression"]["mean"] >= 0.9  # breast cancer: linear models reach about 0.97
    assert len(data["environment"]["git"]["commit"]) == 40


def test_paper_table_quick_runs_what_is_reachable_and_says_why_not(tmp_path: Path) -> None:
    """Offline: bit XOR runs (packaged MiniLM, 20 steps); MNIST's data is on the Hub, so its cells say so."""
    command = [sys.executable, "-m", "benchmarks.paper_table", "--quick", "--tasks", "bit_xor", "mnist"]
    command += [f"--runs-dir={tmp_path / 'runs'}", f"--out-dir={tmp_path}", "--name=table"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=offline_env())
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "table.json").read_text())
    assert data["benchmark"] == "paper_table" and data["quick"] is True and (tmp_path / "table.png").stat().st_size
    assert data["paper"]["bit_xor"] == [100.0, 100.0] and data["paper"]["listops"] == [38.4, 34.3]
    for init in ("pretrained", "random"):
        xor, mnist = data["results"]["bit_xor"][init], data["results"]["mnist"][init]
        assert xor["run"] and 0 <= xor["accuracy"] <= 100 and xor["steps"] == 20
        assert "--model minilm (paper: gpt2)" in xor["differences"] and "--preset paper" in xor["command"]
        assert not mnist["run"] and "ylecun/mnist" in mnist["reason"]
    assert "not run [" in done.stdout and "ylecun/mnist" in done.stdout


def test_xor_probe_quick_probes_the_frozen_network_and_the_raw_inputs(tmp_path: Path) -> None:
    data = _run("xor_probe", tmp_path, "xor_probe-test")
    probes = data["probes"]
    readings = [f"pretrained, {r}, dropout {d}" for r in ("all tokens", "last token") for d in ("off", "on")]
    assert list(probes) == ["raw inputs", *readings]
    assert all(0.0 <= score <= 1.0 for score in probes.values())
    assert probes["raw inputs"] <= 0.6  # no linear model of the inputs reads XOR: 0.5 per bit, up to sampling noise
    assert data["settings"]["task_options"]["num_train"] == 200


def test_gpu_suite_quick_runs_every_step_it_can_and_says_why_it_skips_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    command = [sys.executable, "-m", "benchmarks.gpu_suite", "--quick", "--device=cpu", f"--out-dir={out}"]
    result = subprocess.run(command, cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bit_memory.png", "cost.png", "memory.png", "suite.json", "suite.log"]
    assert all((out / name).stat().st_size > 1000 for name in files if name.endswith(".png"))
    data = json.loads((out / "suite.json").read_text())
    assert data["versions"]["torch"] and data["can"]["bf16"] is True
    assert "CUDA" in data["can"]["tf32"]  # a reason, not a bare False
    steps = data["steps"]
    assert steps["cost-tf32"]["status"] == "skipped" and "CUDA" in steps["cost-tf32"]["reason"]
    assert steps["cost-xl"]["status"] == "skipped" and steps["cost-xl"]["reason"]
    ran = [name for name, step in steps.items() if step["status"] != "skipped"]
    assert ran == ["cost-fp32", "cost-bf16", "cost-bf16-compile", "largest-batch-tiny-bert", "bit-memory"]
    assert all(steps[name]["status"] == "ok" and steps[name]["seconds"] > 0 for name in ran), steps
    for name in ("cost-fp32", "cost-bf16", "cost-bf16-compile"):
        fpt = steps[name]["results"]["variants"]["fpt_peft"]
        assert fpt["share_of_matmul_rate"] > 0 and fpt["achieved_tflops"] > 0, name
    compiled = steps["cost-bf16-compile"]["results"]
    assert compiled["settings"]["compile"] and compiled["settings"]["precision"] == "bf16"
    profile = compiled["variants"]["fpt_peft"]["profile"]
    assert len(profile) >= 5 and 0 < sum(k["share"] for k in profile) <= 1.0001
    batches = steps["largest-batch-tiny-bert"]["results"]["variants"]
    # Checkpointing keeps one tensor per layer instead of every activation: a larger batch fits, for both set-ups.
    for setup in ("fpt_peft", "full"):
        assert batches[f"{setup} + checkpointing"]["largest_batch"] > 2 * batches[setup]["largest_batch"] > 0
    assert batches["full"]["fixed_bytes"] > 2 * batches["fpt_peft"]["fixed_bytes"]  # weights' grads and Adam state
    runs = steps["bit-memory"]["results"]
    assert {r["label"] for r in runs["runs"]} == {"pretrained", "random"}
    log = (out / "suite.log").read_text()
    assert "[cost-tf32] skipped" in log and "[bit-memory] ok" in log
    (out / "notes.txt").write_text("mine")
    again = subprocess.run(command, cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "holds other files than a suite's" in again.stderr  # never mixed with others
    assert json.loads((out / "suite.json").read_text()) == data
