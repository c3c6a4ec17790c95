"""FPT behaves as a native PEFT method in what users do to models: copies, threads, merges, names, reuse, neighbours.

Each test here failed on the first version of the tuner (instance-level forward, per-call state on modules, merges
that swapped modules, key filters matching adapter names, configs mutated in place, a tuner owning every tuner layer).
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from transformers import AutoModel, AutoModelForSequenceClassification

import fpt_peft
from fpt_peft import FPTConfig, FPTInputLayer, FPTModuleLayer

from .helpers import perturb_adapter, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _backbone(layers: int = 2) -> Any:
    torch.manual_seed(0)
    return AutoModel.from_config(tiny_config("gpt2", n_layer=layers))


def _classifier(family: str = "gpt2") -> Any:
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(family, num_labels=3))


FEATURES = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(3))
IDS = torch.randint(1, 12, (4, 7), generator=torch.Generator().manual_seed(4))


def test_deepcopy_and_pickle_give_independent_working_copies() -> None:
    model = get_peft_model(_backbone(), FPTConfig(input_dim=5, output_dim=3)).eval()
    perturb_adapter(model)
    before = model(inputs_embeds=FEATURES).logits
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    unpickled = torch.load(buffer, weights_only=False)
    perturb_adapter(model, seed=2)  # the original moves on; the copies must not follow
    assert not torch.equal(model(inputs_embeds=FEATURES).logits, before)
    assert torch.equal(twin(inputs_embeds=FEATURES).logits, before)
    assert torch.equal(unpickled(inputs_embeds=FEATURES).logits, before)
    assert "forward" not in model.get_base_model().__dict__  # no instance-level forward


def test_two_threads_inside_one_forward_get_their_own_losses() -> None:
    model = get_peft_model(_backbone(), FPTConfig(input_dim=5, output_dim=3)).eval()
    labels = {0: torch.tensor([0, 1, 2, 0]), 1: torch.tensor([2, 2, 1, 1])}
    expected = {i: model(inputs_embeds=FEATURES, labels=y).loss for i, y in labels.items()}
    barrier = threading.Barrier(2, timeout=30)

    # Both calls wait for each other inside block 0: their forwards overlap for sure.
    def meet(*_: Any) -> None:
        barrier.wait()

    handle = model.get_base_model().h[0].register_forward_hook(meet)
    results: dict[int, Any] = {}

    def call(i: int) -> None:
        results[i] = model(inputs_embeds=FEATURES, labels=labels[i]).loss

    threads = [threading.Thread(target=call, args=(i,)) for i in labels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    handle.remove()
    assert expected[0] != expected[1]
    for i in labels:
        assert results[i] is not None and torch.equal(results[i], expected[i])


def test_save_after_merge_stores_the_trained_weights(tmp_path: Path) -> None:
    config = FPTConfig(task_type="SEQ_CLS", input_vocab_size=12)
    model = get_peft_model(_classifier(), config).eval()
    perturb_adapter(model)
    trained = model(input_ids=IDS).logits
    with model.disable_adapter():
        base = model(input_ids=IDS).logits
    model.merge_adapter()
    assert torch.allclose(model(input_ids=IDS).logits, trained, atol=1e-6)
    model.save_pretrained(tmp_path / "merged")
    with model.disable_adapter():  # as with LoRA: disabling a merged adapter unmerges it
        assert torch.allclose(model(input_ids=IDS).logits, base, atol=1e-6)
    again = PeftModel.from_pretrained(_classifier(), tmp_path / "merged").eval()
    assert torch.allclose(again(input_ids=IDS).logits, trained, atol=1e-6)


def test_merge_copies_in_place_and_unmerge_restores_the_base() -> None:
    model = get_peft_model(_backbone(), FPTConfig(input_dim=5, output_dim=3)).eval()
    perturb_adapter(model)
    norm = model.get_base_model().h[0].ln_1
    assert isinstance(norm, FPTModuleLayer)
    base_weight, adapter_weight = norm.base_layer.weight, norm.fpt_copies["default"].weight
    original = base_weight.detach().clone()
    model.merge_adapter()
    assert norm.base_layer.weight is base_weight and torch.equal(base_weight, adapter_weight)  # same tensor, new data
    model.unmerge_adapter()
    assert torch.equal(base_weight, original) and not torch.equal(adapter_weight, original)


@pytest.mark.parametrize("name", ["0", "1", "h", "ln_1", "default"])
def test_any_adapter_name_loads(name: str, tmp_path: Path) -> None:
    model = get_peft_model(_backbone(), FPTConfig(input_dim=5, output_dim=3)).eval()
    perturb_adapter(model)
    expected = model(inputs_embeds=FEATURES).logits
    model.save_pretrained(tmp_path)
    other = get_peft_model(_backbone(), FPTConfig(input_dim=5, output_dim=3), adapter_name="first")
    other.load_adapter(str(tmp_path), adapter_name=name)
    other.set_adapter(name)
    assert torch.equal(other.eval()(inputs_embeds=FEATURES).logits, expected)


def test_get_peft_model_writes_depth_independent_targets_into_the_config_and_it_can_be_reused() -> None:
    config = FPTConfig(input_dim=5, output_dim=3)
    model = get_peft_model(_backbone(2), config)
    assert model.peft_config["default"] is config  # used as-is, as LoRA's config is
    assert config.target_modules == ["ln_1", "ln_2", "ln_f", "wpe"] and config.base_hidden_size == 32
    deeper = get_peft_model(_backbone(4), config)
    wrapped = [n for n, m in deeper.named_modules() if isinstance(m, FPTModuleLayer) and n.endswith("ln_1")]
    assert len(wrapped) == 4


def test_a_lora_adapter_beside_fpt_stays_active_and_trainable() -> None:
    base = _backbone()
    inject_adapter_in_model(LoraConfig(target_modules=["c_attn"], init_lora_weights=False), base, adapter_name="lr")
    lora_layer = base.h[0].attn.c_attn
    model = get_peft_model(base, FPTConfig(input_dim=5, output_dim=3))
    assert lora_layer.active_adapters == ["lr"] and not lora_layer.disable_adapters
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    with_lora = model(inputs_embeds=FEATURES).logits
    with torch.no_grad():
        for param in lora.values():
            param.zero_()
    assert not torch.equal(model(inputs_embeds=FEATURES).logits, with_lora)  # LoRA really computes
    model.set_adapter("default")
    assert lora_layer.active_adapters == ["lr"]


def test_unload_and_delete_undo_every_side_effect() -> None:
    base = _classifier()
    assert base.config.pad_token_id is None
    model = get_peft_model(base, FPTConfig(task_type="SEQ_CLS", input_dim=5))
    assert base.config.pad_token_id == 0  # GPT-2 needs one for batches > 1
    plain = model.unload()
    assert plain.config.pad_token_id is None
    assert not plain._forward_hooks and not plain._forward_pre_hooks
    assert not any("fpt" in type(m).__module__ for m in plain.modules())

    backbone = _backbone()
    model = get_peft_model(backbone, FPTConfig(input_dim=5, output_dim=3), adapter_name="a")
    model.base_model.delete_adapter("a")
    assert not backbone._forward_hooks and not backbone._forward_pre_hooks
    assert not hasattr(backbone, "output_adapter") and backbone.config.pad_token_id is None


_WITHOUT_FPT = """
import json, sys, torch
sys.modules["fpt_peft"] = None  # importing fpt_peft fails from here on
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
print(json.dumps({"logits": model(input_ids=ids).logits.tolist(), "vocab": model.config.vocab_size,
                  "fpt": [m for m in sys.modules if m.startswith("fpt_peft") and sys.modules[m] is not None]}))
"""


def test_token_mode_merges_into_a_plain_model_that_loads_without_fpt_peft(tmp_path: Path) -> None:
    model = get_peft_model(_classifier(), FPTConfig(task_type="SEQ_CLS", input_vocab_size=12, pad_token_id=0))
    perturb_adapter(model)
    model.eval()
    expected = model(input_ids=IDS).logits
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "GPT2ForSequenceClassification"
    assert merged.config.vocab_size == 12 and merged.config.pad_token_id == 0
    assert merged.get_input_embeddings().weight.shape == (12, 32)
    assert torch.allclose(merged(input_ids=IDS).logits, expected, atol=1e-6)
    merged.save_pretrained(tmp_path / "plain")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_FPT, str(tmp_path / "plain"), json.dumps(IDS.tolist())],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["fpt"] == [] and result["vocab"] == 12
    assert torch.allclose(torch.tensor(result["logits"]), expected, atol=1e-5)


def test_feature_mode_and_backbone_heads_refuse_merge_and_unload_clearly() -> None:
    model = get_peft_model(_classifier(), FPTConfig(task_type="SEQ_CLS", input_dim=5))
    with pytest.raises(ValueError, match=r"no place for"):
        model.merge_and_unload()
    assert isinstance(model.get_base_model().get_input_embeddings(), FPTInputLayer)  # nothing was unloaded
    backbone = get_peft_model(_backbone(), FPTConfig(input_vocab_size=12, output_dim=3))
    with pytest.raises(ValueError, match=r"output layer"):
        backbone.merge_and_unload()


def test_every_adapter_weight_follows_peft_autocast_rule() -> None:
    config = FPTConfig(input_dim=5, output_dim=3)
    bf16 = AutoModel.from_config(tiny_config("gpt2"), dtype=torch.bfloat16)
    model = get_peft_model(bf16, config)
    dtypes = {n: p.dtype for n, p in model.named_parameters() if "fpt_" in n}
    assert any("fpt_copies" in n for n in dtypes) and set(dtypes.values()) == {torch.float32}
    out = model(inputs_embeds=FEATURES, labels=torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(out.loss) and out.last_hidden_state.dtype == torch.bfloat16  # the base computes in bf16
    kept = get_peft_model(
        AutoModel.from_config(tiny_config("gpt2"), dtype=torch.bfloat16), config, autocast_adapter_dtype=False
    )
    assert all(p.dtype == torch.bfloat16 for n, p in kept.named_parameters() if "fpt_" in n)


def test_low_cpu_mem_usage_creates_meta_weights_and_loads_them(tmp_path: Path) -> None:
    model = get_peft_model(_backbone(), FPTConfig(input_vocab_size=12, output_dim=3)).eval()
    perturb_adapter(model)
    expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    empty = inject_adapter_in_model(FPTConfig(input_vocab_size=12, output_dim=3), _backbone(), low_cpu_mem_usage=True)
    assert {p.device.type for n, p in empty.named_parameters() if "fpt_" in n} == {"meta"}
    loaded = PeftModel.from_pretrained(_backbone(), tmp_path, low_cpu_mem_usage=True).eval()
    assert {p.device.type for n, p in loaded.named_parameters()} == {"cpu"}
    assert torch.allclose(loaded(input_ids=IDS).logits, expected, atol=1e-6)  # assigned tensors: other kernels


def test_layers_expose_in_and_out_features() -> None:
    model = get_peft_model(_backbone(), FPTConfig(input_vocab_size=12, output_dim=3, train_attention=True))
    base = model.get_base_model()
    assert (base.h[0].attn.c_attn.in_features, base.h[0].attn.c_attn.out_features) == (32, 96)
    assert (base.wte.in_features, base.wte.out_features) == (50, 32)
    assert base.h[0].ln_1.in_features is None  # a norm has none


@pytest.mark.parametrize("trainable", [True, False])
def test_requires_grad_follows_is_trainable_on_every_load_path(trainable: bool, tmp_path: Path) -> None:
    get_peft_model(_backbone(), FPTConfig(input_dim=5, output_dim=3)).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_backbone(), tmp_path, is_trainable=trainable)
    adapter = [p.requires_grad for n, p in loaded.named_parameters() if "fpt_" in n]
    assert adapter and all(g == trainable for g in adapter)
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if "fpt_" not in n)
    loaded.load_adapter(str(tmp_path), adapter_name="second", is_trainable=trainable)
    loaded.set_adapter("second")
    second = [p.requires_grad for n, p in loaded.named_parameters() if ".second" in n]
    assert second and all(second)  # set_adapter makes the active adapter trainable, as for every peft method
    first = [p.requires_grad for n, p in loaded.named_parameters() if ".default" in n]
    assert not any(first)


def test_config_conventions_match_peft(tmp_path: Path) -> None:
    FPTConfig(input_dim=5, output_dim=3).save_pretrained(tmp_path)
    assert FPTConfig.from_pretrained(str(tmp_path)).input_dim == 5  # a folder with only a config
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**data, "from_the_future": 1}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert FPTConfig.from_pretrained(str(tmp_path)).output_dim == 3
    assert any("from_the_future" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match=r"Invalid task type: 'NOT_A_TASK'\. Must be one of") as ours:
        FPTConfig(task_type="NOT_A_TASK")
    with pytest.raises(ValueError, match=r"Invalid task type: 'NOT_A_TASK'\. Must be one of") as peft_own:
        LoraConfig(task_type="NOT_A_TASK")
    assert str(ours.value) == str(peft_own.value)


def test_from_pretrained_keeps_a_complete_config_object(tmp_path: Path) -> None:
    get_peft_model(_backbone(), FPTConfig(input_dim=5, output_dim=3)).save_pretrained(tmp_path)
    config = FPTConfig.from_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(_backbone(), tmp_path, config=config, is_trainable=False)
    assert loaded.peft_config["default"] is config and config.inference_mode


def test_model_status_names_the_method() -> None:
    from peft import get_model_status

    model = get_peft_model(_backbone(), FPTConfig(input_dim=5, output_dim=3))
    status = get_model_status(model)
    assert status.peft_types == {"default": "FPT"} and status.active_adapters == ["default"]
    assert status.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_import_registers_three_tables_only() -> None:
    from peft import mapping

    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING["FPT"] is FPTConfig
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING["FPT"] is fpt_peft.FPTModel
    assert mapping.PEFT_TYPE_TO_PREFIX_MAPPING["FPT"] == "fpt_"


def test_transformers_load_adapter_path_computes_the_head_and_loss(tmp_path: Path) -> None:
    model = get_peft_model(_backbone(), FPTConfig(input_dim=5, output_dim=3)).eval()
    perturb_adapter(model)
    labels = torch.tensor([0, 1, 2, 0])
    expected = model(inputs_embeds=FEATURES, labels=labels)
    model.save_pretrained(tmp_path)
    plain = _backbone().eval()
    plain.load_adapter(str(tmp_path))  # transformers' own API: no PeftModel, no tuner forward
    out = plain(inputs_embeds=FEATURES, labels=labels)
    assert torch.allclose(out.logits, expected.logits, atol=1e-6) and torch.allclose(out.loss, expected.loss)
