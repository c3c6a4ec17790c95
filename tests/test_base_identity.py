"""An adapter knows the base it was trained on: how it was made (pretrained, or random with its seed) and a sample of
its frozen weights. Loading it onto a base with other weights is refused for a random base and warned about
otherwise; the right base reproduces the trained model exactly, also in a fresh process."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model

from fpt_peft import FPTConfig
from fpt_peft.data import TaskSpec
from fpt_peft.modeling import build_model, load_backbone

from .helpers import perturb_adapter
from .training_utils import run_python, save_tiny_backbone

SPEC = TaskSpec(name="toy", input_dim=5, num_classes=3, max_tokens=4)
RELOAD = """
import sys, torch, fpt_peft
from peft import PeftModel
from fpt_peft.modeling import load_backbone
base = load_backbone(sys.argv[1], init="random", seed=int(sys.argv[3]))
model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
torch.manual_seed(5)
features = torch.randn(2, 4, 5)
torch.save(model(inputs_embeds=features).logits, sys.argv[4])
"""


def _trained_random_adapter(tmp_path: Path, seed: int) -> tuple[str, Path, torch.Tensor]:
    backbone = save_tiny_backbone(tmp_path / "backbone")
    model = build_model(SPEC, backbone, init="random", seed=seed).eval()
    perturb_adapter(model)
    torch.manual_seed(5)
    expected = model(inputs_embeds=torch.randn(2, 4, 5)).logits
    model.save_pretrained(tmp_path / "adapter")
    return backbone, tmp_path / "adapter", expected


def test_a_random_init_adapter_records_its_seed_and_reloads_exactly_in_a_fresh_process(tmp_path: Path) -> None:
    backbone, adapter, expected = _trained_random_adapter(tmp_path, seed=7)
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert (saved["base_init"], saved["base_init_seed"]) == ("random", 7)
    assert len(saved["base_fingerprint"]) == 16
    done = run_python(["-c", RELOAD, backbone, str(adapter), "7", str(tmp_path / "out.pt")])
    assert done.returncode == 0, done.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_a_random_init_adapter_on_another_seed_is_refused_in_a_fresh_process(tmp_path: Path) -> None:
    backbone, adapter, _ = _trained_random_adapter(tmp_path, seed=7)
    done = run_python(["-c", RELOAD, backbone, str(adapter), "8", str(tmp_path / "out.pt")])
    assert done.returncode != 0 and not (tmp_path / "out.pt").exists()
    assert "randomly initialised" in done.stderr and "seed=7" in done.stderr, done.stderr


def test_a_pretrained_adapter_on_other_weights_warns_and_on_another_dtype_does_not(tmp_path: Path) -> None:
    backbone = save_tiny_backbone(tmp_path / "backbone")
    model = build_model(SPEC, backbone)
    assert model.peft_config["default"].base_init == "pretrained"
    model.save_pretrained(tmp_path / "adapter")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            PeftModel.from_pretrained(load_backbone(backbone, dtype=dtype), tmp_path / "adapter")
    other = load_backbone(backbone)  # another checkpoint of the architecture: every weight a little different
    torch.manual_seed(1)
    with torch.no_grad():
        for weight in other.parameters():
            weight.add_(torch.randn_like(weight) * 0.01)
    with pytest.warns(UserWarning, match="frozen weights differ"):
        PeftModel.from_pretrained(other, tmp_path / "adapter")


def test_a_reused_config_on_a_new_base_trains_without_a_word_and_records_the_new_base(tmp_path: Path) -> None:
    backbone, adapter, _ = _trained_random_adapter(tmp_path, seed=7)
    config = FPTConfig.from_pretrained(str(adapter))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = get_peft_model(load_backbone(backbone, init="random", seed=8), config)
    model.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "adapter_config.json").read_text())["base_fingerprint"]
    first = json.loads((adapter / "adapter_config.json").read_text())["base_fingerprint"]
    assert again != first
    model.load_adapter(str(tmp_path / "again"), adapter_name="default")  # resuming: its own base, no complaint


def test_a_second_adapter_and_a_cut_do_not_change_the_fingerprint(tmp_path: Path) -> None:
    backbone = save_tiny_backbone(tmp_path / "backbone", family="gpt2")
    model = get_peft_model(load_backbone(backbone, init="random", seed=3), FPTConfig(input_dim=5, num_layers=1))
    model.add_adapter("ablation", FPTConfig(input_dim=5, num_layers=1, train_attention=True))
    fingerprints = [c.base_fingerprint for c in model.peft_config.values()]
    assert fingerprints[0] is not None and fingerprints[0] == fingerprints[1]
    model.save_pretrained(tmp_path / "both")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.load_adapter(str(tmp_path / "both" / "ablation"), adapter_name="again")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("base_init", "bogus", "base_init must be"),
        ("base_init_seed", -1, "base_init_seed must be"),
        ("base_fingerprint", [float("nan")], "base_fingerprint must be"),
        ("base_fingerprint", [0.0] * 65, "base_fingerprint must be"),
    ],
)
def test_base_identity_fields_from_untrusted_files_are_bounded(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FPTConfig(input_dim=5, **{field: value})  # type: ignore[arg-type]
