"""No silent wrong answers in ordinary use of the tuner: half-precision bases, ``num_layers`` under merge / disable /
unload, configs reused from saved adapters, mixed-adapter batches (``adapter_names``), the ablation switches on every
family, and depth-independent targets. Each test failed on the tuner before these were fixed (commit 7b0e62a)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from fpt_peft import FPTConfig, FPTModuleLayer
from fpt_peft.tuner.discovery import discover

from .helpers import base_state, perturb_adapter, tiny_config


def _model(family: str, kind: str = "backbone", **config: Any) -> Any:
    torch.manual_seed(0)
    auto = {"backbone": AutoModel, "seq_cls": AutoModelForSequenceClassification, "causal": AutoModelForCausalLM}
    return auto[kind].from_config(tiny_config(family, **config))


def _wrapped(model: torch.nn.Module) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, FPTModuleLayer)}


# ---------------------------------------------------------------------------------------------- half-precision bases
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["token", "feature"])
@pytest.mark.parametrize("autocast", [False, True])
def test_half_precision_bases_train_their_norms_in_float32(dtype: torch.dtype, mode: str, autocast: bool) -> None:
    base = _model("llama").to(dtype)
    frozen = base_state(base)
    inputs = (
        {"input_ids": torch.randint(0, 11, (4, 6))} if mode == "token" else {"inputs_embeds": torch.randn(4, 6, 5)}
    )
    config = FPTConfig(output_dim=2, **({"input_vocab_size": 11} if mode == "token" else {"input_dim": 5}))
    model = get_peft_model(base, config)
    norms = {n: p for n, p in model.named_parameters() if "fpt_copies" in n and "norm" in n}
    before = {n: p.detach().clone() for n, p in norms.items()}
    assert norms and {p.dtype for p in norms.values()} == {torch.float32}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    labels = torch.tensor([0, 1, 1, 0])
    for _ in range(10):
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            out = model(**inputs, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    moved = sum(int((p != before[n]).sum()) for n, p in norms.items())
    total = sum(p.numel() for p in norms.values())
    assert moved == total, f"{moved} of {total} norm weight values moved"
    assert out.last_hidden_state.dtype == dtype  # the frozen blocks still compute in the base's dtype
    after = model.get_base_model().state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items() if k in after), "frozen weights changed"


def test_an_adapter_trained_on_a_bf16_base_loads_onto_float32_and_float16_bases(tmp_path: Path) -> None:
    model = get_peft_model(_model("gpt2").to(torch.bfloat16), FPTConfig(input_dim=5, output_dim=3)).eval()
    perturb_adapter(model)
    features = torch.randn(2, 4, 5)
    expected = model(inputs_embeds=features).logits.float()
    model.save_pretrained(tmp_path)
    for dtype, atol in ((torch.float32, 0.05), (torch.float16, 0.05), (torch.bfloat16, 0.0)):
        loaded = PeftModel.from_pretrained(_model("gpt2").to(torch.bfloat16).to(dtype), tmp_path).eval()
        assert {p.dtype for n, p in loaded.named_parameters() if "fpt_" in n} == {torch.float32}
        torch.testing.assert_close(loaded(inputs_embeds=features).logits.float(), expected, atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------- num_layers
def test_num_layers_merge_and_unload_exports_the_cut_model_and_reloads_it(tmp_path: Path) -> None:
    model = get_peft_model(
        _model("gpt2", "seq_cls", num_labels=3, pad_token_id=0), FPTConfig(task_type="SEQ_CLS", num_layers=1)
    )
    perturb_adapter(model)
    model.eval()
    ids = torch.randint(1, 50, (3, 6))
    expected = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "GPT2ForSequenceClassification" and len(merged.transformer.h) == 1
    assert merged.config.n_layer == 1 and merged.config.num_hidden_layers == 1
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-6, rtol=0)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-6, rtol=0)


def test_num_layers_disable_runs_the_full_base_and_unload_returns_it() -> None:
    base = _model("gpt2", n_layer=3)
    plain = copy.deepcopy(base).eval()
    model = get_peft_model(base, FPTConfig(input_vocab_size=50, output_dim=2, num_layers=1)).eval()
    perturb_adapter(model)
    ids = torch.randint(1, 50, (2, 5))
    reference = plain(input_ids=ids).last_hidden_state
    assert len(model.get_base_model().h) == 1
    with model.disable_adapter():
        assert len(model.get_base_model().h) == 3 and model.get_base_model().config.n_layer == 3
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, reference, atol=0, rtol=0)
    assert len(model.get_base_model().h) == 1 and model(input_ids=ids).logits.shape == (2, 2)
    unloaded = model.unload()
    assert len(unloaded.h) == 3 and unloaded.config.n_layer == 3
    torch.testing.assert_close(unloaded(input_ids=ids).last_hidden_state, reference, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- reused configs
def test_a_config_read_from_a_saved_adapter_serves_a_new_model_that_saves_and_resumes(tmp_path: Path) -> None:
    first = get_peft_model(_model("gpt2"), FPTConfig(input_dim=5, output_dim=3))
    perturb_adapter(first)
    first.save_pretrained(tmp_path / "a")
    config = FPTConfig.from_pretrained(str(tmp_path / "a"))
    assert config.weights_sha256 is None and "weights_sha256" not in config.to_dict()  # read, checked, not kept
    torch.manual_seed(7)
    second = get_peft_model(AutoModel.from_config(tiny_config("gpt2")), config)
    perturb_adapter(second, seed=2)
    second.eval()
    features = torch.randn(2, 4, 5)
    expected = second(inputs_embeds=features).logits
    second.save_pretrained(tmp_path / "b")
    second.load_adapter(str(tmp_path / "b"), adapter_name="default")  # what resuming does
    torch.testing.assert_close(second(inputs_embeds=features).logits, expected, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- adapter_names
def _two_adapters(kind: str, **config: Any) -> Any:
    base = _model("gpt2", kind, num_labels=3, pad_token_id=0) if kind == "seq_cls" else _model("gpt2", kind)
    model = get_peft_model(base, FPTConfig(**config), adapter_name="a")
    model.add_adapter("b", FPTConfig(**config))
    perturb_adapter(model)
    return model.eval()


def _rows_alone(model: Any, names: list[str], **inputs: torch.Tensor) -> torch.Tensor:
    rows = []
    for row, name in enumerate(names):
        one = {k: v[row : row + 1] for k, v in inputs.items()}
        if name == "__base__":
            with model.disable_adapter():
                rows.append(model(**one).logits)
        else:
            model.set_adapter(name)
            rows.append(model(**one).logits)
    return torch.cat(rows)


@pytest.mark.parametrize(
    ("kind", "config", "inputs"),
    [
        ("backbone", {"input_dim": 5, "output_dim": 3, "output_tokens": 2, "values_per_token": 2}, "features"),
        ("seq_cls", {"task_type": "SEQ_CLS", "input_vocab_size": 12}, "ids"),
        ("seq_cls", {"task_type": "SEQ_CLS"}, "ids"),
    ],
)
def test_each_row_uses_its_own_adapter(kind: str, config: dict[str, Any], inputs: str) -> None:
    model = _two_adapters(kind, **config)
    batch = (
        {"inputs_embeds": torch.randn(4, 6, 5)}
        if inputs == "features"
        else {"input_ids": torch.randint(1, 12, (4, 6))}
    )
    names = ["a", "b", "b", "a"]
    mixed = model(**batch, adapter_names=names).logits
    torch.testing.assert_close(mixed, _rows_alone(model, names, **batch), atol=1e-5, rtol=0)
    model.set_adapter("b")
    assert not torch.allclose(mixed[0], model(**{k: v[:1] for k, v in batch.items()}).logits[0])  # row 0 is a's
    if "input_vocab_size" not in config and kind == "seq_cls":  # norms and positions only: the plain base may join
        names = ["__base__", "a", "b", "__base__"]
        mixed = model(**batch, adapter_names=names).logits
        torch.testing.assert_close(mixed, _rows_alone(model, names, **batch), atol=1e-5, rtol=0)


def test_adapter_names_that_cannot_be_computed_raise_naming_them() -> None:
    model = _two_adapters("backbone", input_dim=5, output_dim=3)
    features = torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match=r"non-existing adapter\(s\): nope"):
        model(inputs_embeds=features, adapter_names=["a", "nope"])
    with pytest.raises(ValueError, match=r"'__base__' rows cannot share a batch with adapter\(s\) \['a'\]"):
        model(inputs_embeds=features, adapter_names=["a", "__base__"])
    model.add_adapter("wide", FPTConfig(input_dim=7, output_dim=3))
    with pytest.raises(ValueError, match=r"Adapters \['a', 'wide'\] cannot share a batch"):
        model(inputs_embeds=features, adapter_names=["a", "wide"])
    with pytest.raises(ValueError, match=r"adapter_names has 3 names, but the input has 2 rows"):
        model(inputs_embeds=features, adapter_names=["a", "b", "a"])
    model.train()
    with pytest.raises(ValueError, match=r"training mode"):
        model(inputs_embeds=features, adapter_names=["a", "b"])


def test_generate_with_adapter_names_matches_each_row_alone() -> None:
    model = _two_adapters("causal", task_type="CAUSAL_LM")
    ids = torch.randint(1, 50, (3, 4))
    names = ["b", "a", "__base__"]
    mixed = model.generate(input_ids=ids, adapter_names=names, max_new_tokens=5, do_sample=False, pad_token_id=0)
    alone = []
    for row, name in enumerate(names):
        one = {"input_ids": ids[row : row + 1], "max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
        if name == "__base__":
            with model.disable_adapter():
                alone.append(model.generate(**one))
        else:
            model.set_adapter(name)
            alone.append(model.generate(**one))
    assert torch.equal(mixed, torch.cat(alone))
    assert not torch.equal(alone[0], alone[1])  # the adapters really differ


# ---------------------------------------------------------------------------------------------- families
def _attention_by_class(model: torch.nn.Module, name: str) -> bool:
    """An oracle independent of discovery's path names: a linear is attention when a module class above it says so."""
    parts = name.split(".")
    return any("Attention" in type(model.get_submodule(".".join(parts[:i]))).__name__ for i in range(1, len(parts)))


def _block_linears(model: torch.nn.Module) -> set[str]:
    found = discover(model)
    return set(found.attention) | set(found.feedforward)


FAMILIES = ["gpt2", "bert", "opt", "gpt_neox", "llama", "qwen2", "mistral", "phi3", "t5", "bart"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("group", ["attention", "feedforward"])
def test_ablation_switches_select_exactly_their_linears(family: str, group: str) -> None:
    plain = _model(family)
    linears = _block_linears(plain)
    expected = {n for n in linears if _attention_by_class(plain, n) == (group == "attention")}
    assert expected and len(linears) >= 4 * 2  # every block has attention and feed-forward linears
    switches = {"train_attention": group == "attention", "train_feedforward": group == "feedforward"}
    model = get_peft_model(_model(family), FPTConfig(train_layer_norms=False, train_positions=False, **switches))
    assert _wrapped(model) == expected


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["backbone", "seq_cls"])
def test_suffix_targets_select_exactly_what_discovery_found(family: str, kind: str) -> None:
    model = get_peft_model(
        _model(family, kind, num_labels=2), FPTConfig(task_type="SEQ_CLS" if kind == "seq_cls" else None)
    )
    config = model.peft_config["default"]
    assert all("." not in t or not t.split(".")[0].isdigit() for t in config.target_modules)
    assert not any(any(part.isdigit() for part in t.split(".")) for t in config.target_modules), "depth-independent"
    fresh = _model(family, kind, num_labels=2)
    found = discover(fresh)
    skipped = ("score", "classifier", "lm_head", "classification_head")
    expected = {n for n in found.norms + found.position_modules if not any(s in n.split(".") for s in skipped)}
    assert _wrapped(model) == expected


# ---------------------------------------------------------------------------------------------- torch.compile
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["token", "feature"])
def test_compiles_as_one_graph_and_computes_what_eager_does(mode: str) -> None:
    config = FPTConfig(input_vocab_size=11, output_dim=3) if mode == "token" else FPTConfig(input_dim=5, output_dim=3)
    inputs = (
        {"input_ids": torch.randint(0, 11, (2, 6))} if mode == "token" else {"inputs_embeds": torch.randn(2, 6, 5)}
    )
    model = get_peft_model(_model("gpt2"), config).eval()
    eager = model(**inputs, labels=torch.tensor([0, 1]))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # any graph break (a host read, an untraceable check) raises
    out = compiled(**inputs, labels=torch.tensor([0, 1]))
    torch.testing.assert_close(out.logits, eager.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, eager.loss, atol=1e-5, rtol=1e-5)
    if mode == "token":  # the range check runs on the device when compiled
        with pytest.raises(RuntimeError, match=r"input_ids must lie in \[0, input_vocab_size=11\)"):
            compiled(input_ids=torch.full((2, 6), 11))
