"""Untrusted adapter files and inputs: refused with a clear error, never run, never a crash deep in torch.

- Pickled weights (``adapter_model.bin``) are refused by every loader unless the user opts in.
- Every field of ``adapter_config.json`` is validated: wrong types, absurd numbers, NaN, unknown fields.
- Property-based (hypothesis): valid configs round-trip through save/load; invalid ones raise ValueError or
  TypeError naming the field; input shapes give logits of the documented shape or a ValueError.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.utils import TaskType
from transformers import AutoModel

import fpt_peft
from fpt_peft import FPTConfig, safe_io

from .helpers import tiny_config

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _gpt2() -> Any:
    torch.manual_seed(0)
    return AutoModel.from_config(tiny_config("gpt2"))


def _fpt(**config: Any) -> Any:
    return get_peft_model(_gpt2(), FPTConfig(input_dim=6, output_dim=2, **config))


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- pickled weights
@pytest.fixture
def pickled(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    model = _fpt()
    with fpt_peft.allow_pickled_adapters():
        model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert {p.name for p in (tmp_path / "bin").iterdir()} >= {"adapter_model.bin", "adapter_config.json"}
    assert not (tmp_path / "bin" / "adapter_model.safetensors").exists()
    return tmp_path / "bin", _state(model)


def test_pickled_weights_are_refused_by_every_loader(pickled, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = pickled
    monkeypatch.delenv(safe_io.PICKLE_ENV, raising=False)

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the pickle was opened")

    monkeypatch.setattr(torch, "load", never)  # refused before anything is unpickled
    refused = rf"'{folder}' holds the adapter weights only as a pickle \(adapter_model\.bin\)"
    with pytest.raises(safe_io.PickledAdapterError, match=refused):
        PeftModel.from_pretrained(_gpt2(), folder)
    with pytest.raises(safe_io.PickledAdapterError, match=refused):
        FPTConfig.from_pretrained(str(folder))
    with pytest.raises(safe_io.PickledAdapterError, match=refused):
        _fpt().load_adapter(str(folder), adapter_name="other")
    with pytest.raises(safe_io.PickledAdapterError, match=refused):
        _gpt2().load_adapter(str(folder), adapter_name="other")  # transformers' own adapter API
    with pytest.raises(safe_io.PickledAdapterError, match="allow_pickled_adapters"):
        _fpt().save_pretrained(folder.parent / "again", safe_serialization=False)
    assert not (folder.parent / "again").exists()


def test_pickled_weights_load_after_opting_in(pickled, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, state = pickled
    with fpt_peft.allow_pickled_adapters():
        assert _same(_state(PeftModel.from_pretrained(_gpt2(), folder)), state)
    monkeypatch.setenv(safe_io.PICKLE_ENV, "1")
    assert _same(_state(PeftModel.from_pretrained(_gpt2(), folder)), state)
    with fpt_peft.allow_pickled_adapters(False), pytest.raises(safe_io.PickledAdapterError):
        PeftModel.from_pretrained(_gpt2(), folder)  # the context manager wins over the environment


def _offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> str:
    """A Hugging Face cache holding repo someone/fpt-tiny (huggingface_hub's layout), used offline."""
    cache = tmp_path / "hub"
    repo = cache / "models--someone--fpt-tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return "someone/fpt-tiny"


def test_hub_repo_with_only_pickled_weights_is_refused(pickled, tmp_path: Path, monkeypatch) -> None:
    folder, state = pickled
    files = {name: (folder / name).read_bytes() for name in ("adapter_config.json", "adapter_model.bin")}
    repo_id = _offline_hub(tmp_path, monkeypatch, files)
    monkeypatch.delenv(safe_io.PICKLE_ENV, raising=False)
    with pytest.raises(safe_io.PickledAdapterError, match=r"Hub repo 'someone/fpt-tiny' holds .* only as a pickle"):
        PeftModel.from_pretrained(_gpt2(), repo_id)
    with pytest.raises(safe_io.PickledAdapterError):
        _gpt2().load_adapter(repo_id)
    with fpt_peft.allow_pickled_adapters():
        assert _same(_state(PeftModel.from_pretrained(_gpt2(), repo_id)), state)


def test_hub_repo_whose_weights_do_not_match_the_config_is_refused(tmp_path: Path, monkeypatch) -> None:
    _fpt().save_pretrained(tmp_path / "a")
    other = _fpt()
    with torch.no_grad():
        other.base_model.model.ln_f.fpt_copies["default"].weight.add_(1.0)
    other.save_pretrained(tmp_path / "b")
    files = {
        "adapter_config.json": (tmp_path / "a" / "adapter_config.json").read_bytes(),
        "adapter_model.safetensors": (tmp_path / "b" / "adapter_model.safetensors").read_bytes(),
    }
    repo_id = _offline_hub(tmp_path, monkeypatch, files)
    with pytest.raises(safe_io.AdapterIntegrityError, match=r"adapter_model\.safetensors' does not belong to"):
        PeftModel.from_pretrained(_gpt2(), repo_id)


# ---------------------------------------------------------------------------------------------- config fields
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "adapter"
    _fpt().save_pretrained(folder)
    return folder


BAD_FIELDS = [
    ("input_dim", "six"),
    ("input_dim", 2**40),
    ("input_dim", True),
    ("input_dim", 6.5),
    ("output_dim", [2]),
    ("output_tokens", 0),
    ("values_per_token", -1),
    ("values_per_token", 2**24),  # output_dim * values_per_token: the output layer's width
    ("pad_token_id", True),
    ("pad_token_id", -1),
    ("input_init_gain", float("nan")),
    ("input_init_gain", float("inf")),
    ("input_init_gain", "1.41"),
    ("input_init_gain", True),
    ("train_layer_norms", "true"),
    ("train_positions", 1),
    ("inference_mode", "yes"),
    ("target_modules", [1, 2]),
    ("target_modules", "(unclosed"),
    ("target_modules", {"ln_f": True}),
    ("target_modules", []),
    ("exclude_modules", [None]),
    ("modules_to_save", "score"),
    ("modules_to_save", [3]),
    ("position_parameters", ["wpe"]),
    ("position_parameters", [1]),
    ("task_type", "TRANSLATION"),
    ("task_type", 5),
    ("base_hidden_size", "32"),
    ("base_hidden_size", 0),
    ("base_model_type", 7),
    ("base_model_name_or_path", 1),
    ("revision", ["main"]),
    ("peft_version", 0.21),
    ("auto_mapping", "transformers"),
    ("auto_mapping", {"base_model_class": 1}),
    ("weights_sha256", "abc"),
    ("weights_sha256", 12),
]


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS, ids=[f"{n}={v!r}" for n, v in BAD_FIELDS])
def test_every_malformed_field_is_named_in_a_clear_error(saved: Path, tmp_path: Path, name: str, value: Any) -> None:
    folder = tmp_path / "adapter"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, name: value}))  # NaN / Infinity: Python's JSON
    with pytest.raises((ValueError, TypeError), match=rf"FPTConfig\.(\w+ \* )?{name}\b"):
        FPTConfig.from_pretrained(str(folder))
    with pytest.raises((ValueError, TypeError), match=rf"FPTConfig\.(\w+ \* )?{name}\b"):
        PeftModel.from_pretrained(_gpt2(), folder)


def test_fields_of_a_newer_version_wrong_peft_type_and_missing_fields(saved: Path, tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    shutil.copytree(saved, folder)
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "fpt_layer_dropout": 0.1}))
    with pytest.raises(ValueError, match=r"does not know: \['fpt_layer_dropout'\].*newer fpt-peft"):
        PeftModel.from_pretrained(_gpt2(), folder)
    config_file.write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(ValueError, match="peft_type='LORA'; FPTConfig loads only 'FPT'"):
        FPTConfig.from_pretrained(str(folder))
    # A missing field takes its default; here the weights then hold a layer the config does not describe.
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k != "input_dim"}))
    with pytest.raises(ValueError, match=r"do not match its config.*unexpected \['.*fpt_input"):
        PeftModel.from_pretrained(_gpt2(), folder)


def test_new_layers_larger_than_the_weights_file_are_refused_before_allocation(saved: Path, tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    huge = {**config, "input_dim": None, "input_vocab_size": 2**24}  # 2**24 x 32 weights: 2 GB to allocate
    (folder / "adapter_config.json").write_text(json.dumps(huge))
    refused = (
        r"declares new input/output layers of 536,870,978 weights for a base of width 32, but .* only [\d,]+ bytes"
    )
    with pytest.raises(ValueError, match=refused):
        PeftModel.from_pretrained(_gpt2(), folder)


# ---------------------------------------------------------------------------------------------- config properties
@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    sizes = st.integers(1, 2**24)
    kwargs: dict[str, Any] = {}
    seq_cls = draw(st.booleans())
    if seq_cls:
        kwargs["task_type"] = draw(st.sampled_from(["SEQ_CLS", TaskType.SEQ_CLS]))
    elif draw(st.booleans()):
        kwargs["task_type"] = draw(st.sampled_from(["FEATURE_EXTRACTION", "CAUSAL_LM", "TOKEN_CLS"]))
    kind = draw(st.sampled_from(["continuous", "symbolic", "none"]))
    if kind == "continuous":
        kwargs["input_dim"] = draw(sizes)
    elif kind == "symbolic":
        kwargs["input_vocab_size"] = vocab = draw(sizes)
        kwargs["pad_token_id"] = draw(st.integers(0, vocab - 1))
    kwargs["values_per_token"] = values = draw(st.integers(1, 64))
    kwargs["output_tokens"] = draw(st.integers(1, 2**24 // values))
    if not seq_cls and draw(st.booleans()):
        kwargs["output_dim"] = draw(st.integers(1, 2**24 // values))
    for flag in ("train_layer_norms", "train_positions", "train_input", "train_attention", "train_feedforward"):
        kwargs[flag] = draw(st.booleans())
    kwargs["train_output"] = True if seq_cls else draw(st.booleans())
    kwargs["input_init_gain"] = draw(st.floats(min_value=1e-3, max_value=999.0))
    names = st.lists(st.from_regex(r"[a-z_]{1,8}(\.[0-9a-z_]{1,8}){0,3}", fullmatch=True), min_size=1, max_size=4)
    kwargs["target_modules"] = draw(st.none() | names | st.just(r".*\.ln_\d"))
    kwargs["exclude_modules"] = draw(st.none() | names)
    kwargs["modules_to_save"] = draw(st.none() | names)
    kwargs["position_parameters"] = draw(
        st.none() | st.lists(st.from_regex(r"[a-z]{1,6}\.[a-z_]{1,12}", fullmatch=True), max_size=2)
    )
    kwargs["base_model_type"] = draw(st.none() | st.sampled_from(["gpt2", "bert", "llama"]))
    kwargs["base_hidden_size"] = draw(st.none() | st.integers(1, 2**24))
    kwargs["weights_sha256"] = draw(st.none() | st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
    kwargs["base_model_name_or_path"] = draw(st.none() | st.text(min_size=1, max_size=20))
    return kwargs


@PROPERTY
@given(valid_configs())
def test_valid_configs_round_trip_through_save_and_load(kwargs: dict[str, Any]) -> None:
    config = FPTConfig(**kwargs)
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        again = PeftConfig.from_pretrained(folder)
    assert isinstance(again, FPTConfig)
    assert again == config


def _not_int(min_value: int) -> st.SearchStrategy[Any]:
    return (
        st.integers(max_value=min_value - 1)
        | st.integers(min_value=2**24 + 1)
        | st.booleans()
        | st.floats(allow_nan=True)
        | st.text(max_size=3)
        | st.lists(st.integers(), max_size=2)
    )


def _not_names() -> st.SearchStrategy[Any]:
    return (
        st.integers()
        | st.booleans()
        | st.lists(st.integers() | st.none() | st.just(""), min_size=1, max_size=3)
        | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
    )


INVALID: dict[str, st.SearchStrategy[Any]] = {
    "input_dim": _not_int(1),
    "input_vocab_size": _not_int(1),
    "output_dim": _not_int(1),
    "output_tokens": _not_int(1) | st.none(),
    "values_per_token": _not_int(1) | st.none(),
    "pad_token_id": _not_int(0),
    "input_init_gain": st.floats().filter(lambda g: not (0 < g < 1e3))
    | st.sampled_from([math.nan, math.inf, True, "1.4", None]),
    "train_layer_norms": st.integers() | st.text(max_size=3) | st.none(),
    "train_output": st.integers() | st.floats() | st.none(),
    "inference_mode": st.integers() | st.text(max_size=3),
    "target_modules": _not_names() | st.just("(") | st.just([]),
    "exclude_modules": _not_names() | st.just("[a-"),
    "modules_to_save": _not_names() | st.text(max_size=5),
    "position_parameters": _not_names() | st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), min_size=1),
    "task_type": st.integers() | st.text(max_size=8).filter(lambda t: t not in list(TaskType)),
    "base_hidden_size": _not_int(1),
    "base_model_type": st.integers() | st.lists(st.text(max_size=3), max_size=2),
    "base_model_name_or_path": st.integers() | st.floats(),
    "weights_sha256": st.text(max_size=70).filter(lambda t: len(t) != 64) | st.integers(),
    "auto_mapping": st.text(max_size=5) | st.dictionaries(st.text(max_size=3), st.integers(), min_size=1),
}


@PROPERTY
@given(st.sampled_from(sorted(INVALID)).flatmap(lambda name: st.tuples(st.just(name), INVALID[name])))
def test_invalid_values_raise_value_or_type_error_naming_the_field(field_and_value: tuple[str, Any]) -> None:
    name, value = field_and_value
    try:
        FPTConfig(**{name: value})
    except (ValueError, TypeError) as exc:
        assert f"FPTConfig.{name}" in str(exc), str(exc)
    else:
        raise AssertionError(f"FPTConfig({name}={value!r}) was accepted")


# ---------------------------------------------------------------------------------------------- input properties
@pytest.fixture(scope="module")
def continuous() -> Any:
    # Tiny GPT-2 (64 learned positions); 5-wide tokens in, 2 last tokens x 2 values x 3 classes out.
    model = get_peft_model(_gpt2(), FPTConfig(input_dim=5, output_dim=3, output_tokens=2, values_per_token=2))
    return model.eval()


@pytest.fixture(scope="module")
def symbolic() -> Any:
    torch.manual_seed(0)
    model = get_peft_model(AutoModel.from_config(tiny_config("bert")), FPTConfig(input_vocab_size=11, output_dim=4))
    return model.eval()


@PROPERTY
@given(
    batch=st.integers(1, 4),
    tokens=st.integers(1, 70),
    width=st.integers(1, 8),
    shape=st.sampled_from(["3d", "3d", "3d", "2d", "4d"]),
    padded=st.booleans(),
)
def test_continuous_inputs_give_documented_logits_or_a_value_error(
    continuous: Any, batch: int, tokens: int, width: int, shape: str, padded: bool
) -> None:
    dims = {"2d": (batch, width), "3d": (batch, tokens, width), "4d": (batch, tokens, 2, width)}[shape]
    features = torch.randn(*dims)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    if padded and tokens > 2:
        mask[0, -1] = 0
    try:
        with torch.no_grad():
            logits = continuous(inputs_embeds=features, attention_mask=mask if shape == "3d" else None).logits
    except ValueError as exc:
        message = str(exc)
        if shape != "3d" or width != 5:
            assert "inputs_embeds must have shape (batch, tokens, input_dim=5)" in message
        elif tokens > 64:
            assert f"{tokens} tokens but" in message and "hold 64 positions" in message
        else:
            assert tokens < 2 and "reads the last 2 tokens" in message, message
        return
    assert shape == "3d" and width == 5 and 2 <= tokens <= 64
    assert logits.shape == (batch, 4, 3)


@PROPERTY
@given(batch=st.integers(1, 4), tokens=st.integers(1, 70), low=st.integers(-3, 10), high=st.integers(0, 14))
def test_symbolic_inputs_give_documented_logits_or_a_value_error(
    symbolic: Any, batch: int, tokens: int, low: int, high: int
) -> None:
    low, high = min(low, high), max(low, high)
    ids = torch.randint(low, high + 1, (batch, tokens))
    ids[0, 0], ids[-1, -1] = low, high
    low, high = int(ids.min()), int(ids.max())  # one example of one token holds only `high`
    try:
        with torch.no_grad():
            logits = symbolic(input_ids=ids).logits
    except ValueError as exc:
        message = str(exc)
        if tokens > 64:
            assert "hold 64 positions" in message
        else:
            assert (low < 0 or high >= 11) and "input_ids must lie in [0, input_vocab_size=11)" in message
        return
    assert tokens <= 64 and low >= 0 and high < 11
    assert logits.shape == (batch, 4)


# Gaps found by the properties above; they need changes in model.py / layer.py (strict: remove once fixed).
@pytest.mark.parametrize("dims", [(2, 0, 5), (0, 4, 5)], ids=["no tokens", "no examples"])
def test_empty_inputs_give_a_value_error(continuous: Any, dims: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        continuous(inputs_embeds=torch.randn(*dims))


def test_non_integer_ids_give_a_value_error(symbolic: Any) -> None:
    with pytest.raises(ValueError):
        symbolic(input_ids=torch.rand(2, 4))


def test_labels_outside_the_classes_give_a_value_error(continuous: Any) -> None:
    with pytest.raises(ValueError):
        continuous(inputs_embeds=torch.randn(2, 4, 5), labels=torch.full((2, 4), 7))
