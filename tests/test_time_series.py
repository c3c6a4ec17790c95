"""Time series: the archives' real data offline, GPT4TS's patching and normalisation, block truncation, the recipe."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from peft import PeftModel, get_peft_model

import fpt_peft
from fpt_peft.data import load_task, normalize_instance, patch_series, series_tokens
from fpt_peft.data.time_series import load_archive

from .training_utils import ROOT, load_recipe, offline_env, quick_args, run_python, save_tiny_backbone

pytest.importorskip("aeon")

# name: (train, test, channels, length (None: unequal), classes), from the UCR/UEA archives' descriptions.
BUNDLED = {
    "JapaneseVowels": (270, 370, 12, None, 9),
    "BasicMotions": (40, 40, 6, 100, 4),
    "GunPoint": (50, 150, 1, 150, 2),
    "ItalyPowerDemand": (67, 1029, 1, 24, 2),
    "ArrowHead": (36, 175, 1, 251, 3),
    "OSULeaf": (200, 242, 1, 427, 6),
}


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_datasets_load_offline_with_the_archive_split(name: str) -> None:
    n_train, n_test, channels, length, classes = BUNDLED[name]
    task = load_task("time_series", dataset=name, patch_len=8, stride=4)
    assert (len(task.train), len(task.eval)) == (n_train, n_test)
    assert task.spec.num_classes == classes and task.label_names is not None and len(task.label_names) == classes
    assert task.spec.input_dim == 8 * channels
    series, _ = load_archive(name, "train")
    assert {x.shape[0] for x in series} == {channels}
    lengths = {x.shape[1] for x in series}
    assert lengths == {length} if length else len(lengths) > 1
    mask = task.train[:]["attention_mask"]
    longest = max(x.shape[1] for x in series + load_archive(name, "test")[0])
    assert mask.shape[1] == task.spec.max_tokens == (max(longest, 8) + 4 - 8) // 4 + 1
    if length:
        assert bool(mask.all())  # equal lengths: nothing padded
    assert set(task.train[:]["labels"].tolist()) == set(range(classes))


def test_unequal_lengths_are_patched_each_on_its_own_length_then_padded_and_masked() -> None:
    task = load_task("time_series", dataset="JapaneseVowels", patch_len=4, stride=2, normalize=True)
    series, _ = load_archive("JapaneseVowels", "train")
    rows = task.train[:]
    for i in (0, 100, 269):
        own = series_tokens(normalize_instance(series[i]), 4, 2, "mix")
        real = int(rows["attention_mask"][i].sum())
        assert real == len(own) == (series[i].shape[1] + 2 - 4) // 2 + 1
        assert torch.equal(rows["inputs_embeds"][i][:real], torch.from_numpy(own))
        assert not rows["inputs_embeds"][i][real:].any()  # padding tokens are zeros, masked out


def test_normalisation_matches_a_hand_computation_and_gpt4ts_formula() -> None:
    x = np.array([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]], dtype=np.float32)
    # Channel 0: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5; channel 1: constant.
    expected = np.array([[-2, -1, 0, 3], [0, 0, 0, 0]], dtype=np.float64) / np.sqrt([[3.5 + 1e-5], [1e-5]])
    np.testing.assert_allclose(normalize_instance(x), expected, rtol=1e-6)
    # GPT4TS (Long-term_Forecasting/models/GPT4TS.py) on (batch, length, channels).
    t = torch.from_numpy(x).T[None]
    centered = t - t.mean(1, keepdim=True)
    official = centered / torch.sqrt(torch.var(centered, dim=1, keepdim=True, unbiased=False) + 1e-5)
    np.testing.assert_allclose(normalize_instance(x), official[0].T.numpy(), rtol=1e-6, atol=1e-7)


def test_patching_matches_a_hand_computation() -> None:
    x = np.array([[1, 2, 3, 4, 5]], dtype=np.float32)
    # Replicate the last value `stride` times: 1 2 3 4 5 5 5; windows of 2 every 2 steps.
    assert patch_series(x, 2, 2)[:, 0].tolist() == [[1, 2], [3, 4], [5, 5]]
    assert patch_series(x, 3, 1)[:, 0].tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 5]]
    assert patch_series(x[:, :1], 4, 1)[:, 0].tolist() == [[1, 1, 1, 1]]  # shorter than one window


@pytest.mark.parametrize(("patch_len", "stride"), [(4, 1), (8, 4), (16, 8), (5, 3)])
def test_tokens_match_the_gpt4ts_classification_code(patch_len: int, stride: int) -> None:
    """GPT4TS's Classification/src/models/gpt4ts.py: ReplicationPad1d((0, stride)), unfold, 'b m n p -> b n (p m)'."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 40)).astype(np.float32)  # (channels m, length l)
    padded = torch.nn.ReplicationPad1d((0, stride))(torch.from_numpy(x)[None])
    windows = padded.unfold(dimension=-1, size=patch_len, step=stride)  # (b, m, n, p)
    official = windows.permute(0, 2, 3, 1).reshape(1, windows.shape[2], patch_len * 3)  # 'b m n p -> b n (p m)'
    np.testing.assert_array_equal(series_tokens(x, patch_len, stride, "mix"), official[0].numpy())
    per_channel = windows.reshape(1, 3 * windows.shape[2], patch_len)  # 'b m n p -> b (m n) p'
    np.testing.assert_array_equal(series_tokens(x, patch_len, stride, "separate"), per_channel[0].numpy())


def _write_ts(path: Path, rows: list[tuple[list[float], str]], classes: list[str]) -> None:
    lines = ["@problemName Tiny", "@timeStamps false", "@missing false", "@univariate true", "@equalLength false"]
    lines += [f"@classLabel true {' '.join(classes)}", "@data"]
    lines += [",".join(str(v) for v in values) + f":{label}" for values, label in rows]
    path.write_text("\n".join(lines) + "\n")


def test_a_local_archive_folder_loads_and_labels_sort_numerically(tmp_path: Path) -> None:
    folder = tmp_path / "Tiny"
    folder.mkdir()
    rows = [([float(i + j) for j in range(6 + i % 3)], str([2, 10, 9][i % 3])) for i in range(9)]
    _write_ts(folder / "Tiny_TRAIN.ts", rows, ["2", "9", "10"])
    _write_ts(folder / "Tiny_TEST.ts", rows[:4], ["2", "9", "10"])
    task = load_task("time_series", dataset="Tiny", data_dir=tmp_path, patch_len=2, stride=2, normalize=False)
    assert task.label_names == ("2", "9", "10")  # numerically, not "10" < "2"
    assert task.train[:]["labels"].tolist() == [0, 2, 1] * 3
    assert task.train[0]["inputs_embeds"][:3].tolist() == [[0, 1], [2, 3], [4, 5]]  # raw values, patches of 2
    _write_ts(folder / "Tiny_TEST.ts", [([1.0, 2.0], "7")], ["2", "7", "9", "10"])
    with pytest.raises(ValueError, match=r"test labels \['7'\] never occur in the train split"):
        load_task("time_series", dataset="Tiny", data_dir=tmp_path)


def test_unknown_dataset_offline_names_it_and_what_would_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset='NoSuchSet': not found .*--data-dir"):
        load_task("time_series", dataset="NoSuchSet", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"channels must be 'mix' or 'separate', got 'both'"):
        load_task("time_series", dataset="GunPoint", channels="both")


# ---------------------------------------------------------------------- keeping the first k blocks
def _tiny_gpt2() -> transformers.GPT2Model:
    torch.manual_seed(0)
    return transformers.GPT2Model(transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=64))


def test_num_layers_cuts_the_base_and_the_adapter_reloads_onto_the_full_base(tmp_path: Path) -> None:
    base = _tiny_gpt2()
    full = {k: v.clone() for k, v in base.state_dict().items()}
    config = fpt_peft.FPTConfig(input_dim=3, output_dim=5, num_layers=2)
    model = get_peft_model(base, config).eval()
    assert len(base.h) == 2 and base.config.num_hidden_layers == 2 and config.num_layers == 2
    assert not any(".h.2." in n or ".h.3." in n for n, _ in model.named_parameters())
    x = torch.randn(2, 7, 3)
    # The cut model computes what GPT4TS's `gpt2.h = gpt2.h[:k]` computes.
    reference = _tiny_gpt2().eval()
    reference.h = reference.h[:2]
    with torch.no_grad():
        hidden = reference(inputs_embeds=model.base_model.model.wte.fpt_input["default"](x)).last_hidden_state
        torch.testing.assert_close(model(inputs_embeds=x).last_hidden_state, hidden)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
        expected = model(inputs_embeds=x).logits
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter/adapter_config.json").read_text())["num_layers"] == 2
    torch.save(x, tmp_path / "x.pt")
    torch.save(expected, tmp_path / "expected.pt")
    # A fresh process, a fresh full-depth base: the adapter cuts it again and computes the same logits.
    script = textwrap.dedent(
        f"""
        import torch, transformers, fpt_peft
        from peft import PeftModel
        torch.manual_seed(0)
        base = transformers.GPT2Model(transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=64))
        model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r})
        assert len(base.h) == 2, len(base.h)
        x = torch.load({str(tmp_path / "x.pt")!r})
        torch.testing.assert_close(model(inputs_embeds=x).logits, torch.load({str(tmp_path / "expected.pt")!r}))
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=offline_env(), cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    # Unload puts the cut blocks back: the base is whole again, bit for bit.
    restored = model.unload()
    assert len(restored.h) == 4 and restored.config.num_hidden_layers == 4
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in full.items())


def test_an_adapter_for_k_blocks_is_refused_on_a_shallower_base(tmp_path: Path) -> None:
    get_peft_model(_tiny_gpt2(), fpt_peft.FPTConfig(input_dim=3, output_dim=5, num_layers=3)).save_pretrained(
        tmp_path / "a"
    )
    shallow = transformers.GPT2Model(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64))
    with pytest.raises(ValueError, match=r"made for the first 3 transformer blocks .* GPT2Model has 2"):
        PeftModel.from_pretrained(shallow, tmp_path / "a")
    model = get_peft_model(_tiny_gpt2(), fpt_peft.FPTConfig(input_dim=3, output_dim=5, num_layers=2))
    with pytest.raises(ValueError, match=r"already keeps 2 blocks"):
        model.add_adapter("other", fpt_peft.FPTConfig(input_dim=3, output_dim=5, num_layers=1))
    with pytest.raises(ValueError, match=r"FPTConfig.num_layers must be an int in \[1, "):
        fpt_peft.FPTConfig(num_layers=0)


# ---------------------------------------------------------------------- the recipe
@pytest.mark.slow
def test_recipe_learns_basic_motions_beyond_random_weights_and_saves_the_label_names(tmp_path: Path) -> None:
    """Pretrained FPT beats the same recipe on frozen random weights by a margin: measured 0.975 against 0.60-0.65
    (40 test series, 4 balanced classes: chance is 0.25)."""
    out = tmp_path / "run"
    args = [
        "--model",
        "minilm",
        "--max-steps",
        "60",
        "--batch-size",
        "8",
        "--dataset",
        "BasicMotions",
        "--eval-every",
        "0",
    ]
    metrics = load_recipe("time_series").main([*args, "--output-dir", str(out)])
    control = load_recipe("time_series").main([*args, "--output-dir", str(tmp_path / "random"), "--init", "random"])
    assert metrics["accuracy"] >= 0.9, metrics
    assert metrics["accuracy"] >= control["accuracy"] + 0.2, (metrics, control)
    labels = json.loads((out / "adapter/labels.json").read_text())["id2label"]
    assert labels == {"0": "badminton", "1": "running", "2": "standing", "3": "walking"}


@pytest.mark.slow
def test_recipe_under_accelerate_launch_with_two_processes_keeps_k_blocks(tmp_path: Path) -> None:
    tiny = save_tiny_backbone(tmp_path / "tiny", family="gpt2")
    out = tmp_path / "run"
    launch = ["-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate_configs/cpu_2proc.yaml"]
    data = ["--dataset", "GunPoint", "--patch-len", "16", "--stride", "8", "--num-layers", "1"]
    done = run_python([*launch, "recipes/time_series.py", *quick_args(tiny, out, steps=4), *data], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    saved = json.loads((out / "adapter/adapter_config.json").read_text())
    assert saved["num_layers"] == 1
    base = transformers.AutoModel.from_pretrained(tiny)
    PeftModel.from_pretrained(base, str(out / "adapter"))
    assert len(base.h) == 1


def test_recipe_argument_mistake_is_one_line_and_status_2(tmp_path: Path) -> None:
    failed = run_python(["recipes/time_series.py", "--output-dir", str(tmp_path), "--num-layers", "0"])
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == "time_series.py: error: --num-layers must be >= 1, got 0."
