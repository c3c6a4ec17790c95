"""The official code's input options: dropout after the continuous input layer, N(0, 1) symbol embeddings."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModel

from fpt_peft import FPTConfig
from fpt_peft.arguments import FPTTrainingArguments, add_training_args
from fpt_peft.data.spec import TaskSpec
from fpt_peft.modeling import build_model

from .helpers import tiny_config
from .training_utils import save_tiny_backbone


def _gpt2(**overrides: Any) -> Any:
    torch.manual_seed(0)
    return AutoModel.from_config(tiny_config("gpt2", **overrides))


def _continuous(rate: float) -> Any:
    torch.manual_seed(1)  # the same new layers whatever the rate: dropout draws nothing at creation
    return get_peft_model(_gpt2(), FPTConfig(input_dim=6, output_dim=2, input_dropout=rate))


def _input_layer(model: Any) -> Any:
    return model.base_model.model.get_input_embeddings()


# ---------------------------------------------------------------------------------------------- input dropout
def test_input_dropout_acts_only_in_training_mode() -> None:
    plain, dropped = _continuous(0.0), _continuous(0.5)
    assert torch.equal(
        _input_layer(plain).fpt_input["default"].weight, _input_layer(dropped).fpt_input["default"].weight
    )
    x = torch.randn(3, 4, 6)
    plain.eval(), dropped.eval()
    with torch.no_grad():
        assert torch.equal(plain(inputs_embeds=x).logits, dropped(inputs_embeds=x).logits)
    plain.train(), dropped.train()
    with torch.no_grad():
        torch.manual_seed(2)
        a = plain(inputs_embeds=x).logits
        torch.manual_seed(2)
        b = dropped(inputs_embeds=x).logits
    assert not torch.allclose(a, b)


def test_input_dropout_is_linear_then_dropout() -> None:
    layer = _input_layer(_continuous(0.25))
    linear = layer.fpt_input["default"]
    x = torch.randn(2, 5, 6)
    by_hand = x @ linear.weight.T + linear.bias  # the official nn.Linear, then nn.Dropout(p)
    layer.train()
    with torch.no_grad():
        torch.manual_seed(7)
        out = layer(x, features=True)
        torch.manual_seed(7)
        expected = torch.nn.functional.dropout(by_hand, p=0.25, training=True)
    torch.testing.assert_close(out, expected)
    kept = out != 0
    assert 0.6 < kept.float().mean() < 0.9  # about 1 - p of the values survive ...
    torch.testing.assert_close(out[kept], by_hand[kept] / 0.75)  # ... scaled by 1 / (1 - p), the rest are zeros
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x, features=True), by_hand)


def test_zero_input_dropout_draws_no_random_numbers() -> None:
    layer = _input_layer(_continuous(0.0)).train()
    torch.manual_seed(3)
    with torch.no_grad():
        layer(torch.randn(2, 3, 6), features=True)
    after = torch.rand(1)
    torch.manual_seed(3)
    torch.randn(2, 3, 6)
    assert torch.equal(after, torch.rand(1))  # the training run's random stream is the same as before the option


# --------------------------------------------------------------------------------------------- embedding init
@pytest.mark.parametrize("init", ["scaled", "normal"])
def test_symbol_embedding_init_statistics(init: str) -> None:
    base = _gpt2(initializer_range=0.05)
    base_std = float(base.get_input_embeddings().weight.detach().std())
    model = get_peft_model(base, FPTConfig(input_vocab_size=400, output_dim=2, embedding_init=init))
    weight = _input_layer(model).fpt_input["default"].weight.detach()
    assert abs(float(weight.mean())) < 0.05 * (1.0 if init == "normal" else base_std)
    expected = 1.0 if init == "normal" else base_std  # nn.Embedding's N(0, 1), or the base embeddings' scale
    assert math.isclose(float(weight.std()), expected, rel_tol=0.03)


def test_default_embedding_init_is_scaled() -> None:
    assert FPTConfig(input_vocab_size=5).embedding_init == "scaled"
    assert FPTConfig(input_dim=5).input_dropout == 0.0


# ------------------------------------------------------------------------------------------------ save / load
def test_options_round_trip_through_save_and_load(tmp_path: Path) -> None:
    model = _continuous(0.1)
    model.save_pretrained(tmp_path / "cont")
    saved = json.loads((tmp_path / "cont" / "adapter_config.json").read_text())
    assert (saved["input_dropout"], saved["embedding_init"]) == (0.1, "scaled")
    loaded = PeftModel.from_pretrained(_gpt2(), tmp_path / "cont")
    assert loaded.peft_config["default"].input_dropout == 0.1
    assert _input_layer(loaded).input_dropout == {"default": 0.1}
    assert FPTConfig.from_pretrained(str(tmp_path / "cont")).input_dropout == 0.1

    symbolic = get_peft_model(_gpt2(), FPTConfig(input_vocab_size=9, output_dim=2, embedding_init="normal"))
    symbolic.save_pretrained(tmp_path / "sym")
    reloaded = PeftModel.from_pretrained(_gpt2(), tmp_path / "sym")
    assert reloaded.peft_config["default"].embedding_init == "normal"
    assert torch.equal(
        _input_layer(reloaded).fpt_input["default"].weight, _input_layer(symbolic).fpt_input["default"].weight
    )


def test_a_config_saved_before_the_options_existed_loads_with_the_old_behaviour(tmp_path: Path) -> None:
    _continuous(0.0).save_pretrained(tmp_path / "a")
    config_file = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(
        json.dumps({k: v for k, v in config.items() if k not in ("input_dropout", "embedding_init")})
    )
    loaded = PeftModel.from_pretrained(_gpt2(), tmp_path / "a")
    assert (loaded.peft_config["default"].input_dropout, loaded.peft_config["default"].embedding_init) == (
        0.0,
        "scaled",
    )


# ------------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_dim": 4, "input_dropout": 1.0}, r"FPTConfig\.input_dropout must be a number in \[0, 1\), got 1\.0"),
        ({"input_dim": 4, "input_dropout": -0.1}, r"FPTConfig\.input_dropout must be a number in \[0, 1\), got -0\.1"),
        ({"input_dim": 4, "input_dropout": float("nan")}, r"FPTConfig\.input_dropout must be a number .* got nan"),
        ({"input_dim": 4, "input_dropout": "0.1"}, r"FPTConfig\.input_dropout must be a number .* got '0\.1'"),
        ({"input_dim": 4, "input_dropout": True}, r"FPTConfig\.input_dropout must be a number .* got True"),
        ({"input_vocab_size": 4, "input_dropout": 0.1}, r"FPTConfig\.input_dropout=0\.1 acts after the continuous"),
        ({"input_dropout": 0.1}, r"FPTConfig\.input_dropout=0\.1 acts after the continuous"),
        (
            {"input_vocab_size": 4, "embedding_init": "uniform"},
            r"embedding_init must be one of \['scaled', 'normal'\]",
        ),
        ({"input_vocab_size": 4, "embedding_init": 1}, r"FPTConfig\.embedding_init must be one of .* got 1"),
        ({"input_dim": 4, "embedding_init": "normal"}, r"FPTConfig\.embedding_init='normal' initialises a new symbol"),
    ],
)
def test_bad_values_are_refused_naming_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FPTConfig(**kwargs)


def test_bad_values_in_a_saved_config_are_refused(tmp_path: Path) -> None:
    _continuous(0.1).save_pretrained(tmp_path / "a")
    config_file = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    for field, value in (("input_dropout", 2.0), ("embedding_init", "zeros")):
        config_file.write_text(json.dumps({**config, field: value}))
        with pytest.raises(ValueError, match=rf"FPTConfig\.{field}"):
            PeftModel.from_pretrained(_gpt2(), tmp_path / "a")


# ---------------------------------------------------------------------------------- command line and modeling
def test_flags_reach_build_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = add_training_args(argparse.ArgumentParser())
    args = FPTTrainingArguments.from_namespace(
        parser.parse_args(["--input-dropout", "0.1", "--embedding-init", "normal"])
    )
    options = args.model_options()
    assert (options["input_dropout"], options["embedding_init"]) == (0.1, "normal")
    defaults = FPTTrainingArguments.from_namespace(parser.parse_args([])).model_options()
    assert (defaults["input_dropout"], defaults["embedding_init"]) == (0.0, "scaled")
    with pytest.raises(SystemExit, match=r"^2$"):
        parser.parse_args(["--embedding-init", "uniform"])
    assert "argument --embedding-init: invalid choice: 'uniform'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--input-dropout must be in \[0, 1\), got 1\.0"):
        FPTTrainingArguments(input_dropout=1.0)

    tiny = save_tiny_backbone(tmp_path / "tiny")
    spec = TaskSpec(name="t", input_dim=5, num_classes=2, max_tokens=4)
    model = build_model(spec, tiny, seed=0, input_dropout=0.1)
    assert model.peft_config["default"].input_dropout == 0.1
    assert _input_layer(model).input_dropout == {"default": 0.1}
    symbols = TaskSpec(name="s", input_vocab_size=7, pad_token_id=0, num_classes=2, max_tokens=4)
    assert (
        build_model(symbols, tiny, seed=0, embedding_init="normal").peft_config["default"].embedding_init == "normal"
    )
    with pytest.raises(ValueError, match=r"input_dropout=0\.1 acts after the continuous input layer"):
        build_model(symbols, tiny, seed=0, input_dropout=0.1)
