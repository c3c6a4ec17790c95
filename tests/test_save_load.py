"""Saving writes only adapter weights; every peft / transformers loading path restores identical outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from peft import AutoPeftModelForSequenceClassification, PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification

from fpt_peft import FPTConfig

PATCHES = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1))


def _trained_adapter(base_dir: Path, out: Path, **config: object) -> torch.Tensor:
    """Train a few steps, save to ``out``, return the eval logits for PATCHES."""
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    model = get_peft_model(base, FPTConfig(task_type="SEQ_CLS", input_dim=6, **config))  # type: ignore[arg-type]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(inputs_embeds=PATCHES, labels=torch.tensor([0, 1, 2])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out)
    with torch.no_grad():
        return model(inputs_embeds=PATCHES).logits


@pytest.fixture
def adapter(save_tiny, tmp_path: Path) -> tuple[Path, Path, torch.Tensor]:
    base_dir = save_tiny("gpt2", num_labels=3)
    out = tmp_path / "adapter"
    return base_dir, out, _trained_adapter(base_dir, out)


def test_adapter_file_holds_only_adapter_weights(adapter) -> None:
    base_dir, out, _ = adapter
    keys = set(load_file(out / "adapter_model.safetensors"))
    assert keys, "weights were saved"
    assert all(".fpt_" in k or k == "base_model.model.score.weight" for k in keys), keys
    assert not any("attn" in k or "mlp" in k or k.rsplit(".", 2)[-2] == "wte.weight" for k in keys)
    base_size = (base_dir / "model.safetensors").stat().st_size
    assert (out / "adapter_model.safetensors").stat().st_size < base_size / 4


def test_reload_in_fresh_process_gives_identical_outputs(adapter, tmp_path: Path) -> None:
    base_dir, out, logits = adapter
    torch.save(PATCHES, tmp_path / "x.pt")
    code = f"""
import torch, fpt_peft
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
base = AutoModelForSequenceClassification.from_pretrained({str(base_dir)!r})
model = PeftModel.from_pretrained(base, {str(out)!r}).eval()
with torch.no_grad():
    torch.save(model(inputs_embeds=torch.load({str(tmp_path / "x.pt")!r})).logits, {str(tmp_path / "y.pt")!r})
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert torch.equal(torch.load(tmp_path / "y.pt"), logits)


def test_peft_and_transformers_loading_paths(adapter) -> None:
    base_dir, out, logits = adapter
    config = PeftConfig.from_pretrained(str(out))
    assert isinstance(config, FPTConfig) and config.base_model_name_or_path == str(base_dir)

    frozen = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_dir), out).eval()
    assert not any(p.requires_grad for p in frozen.parameters())
    assert torch.equal(frozen(inputs_embeds=PATCHES).logits, logits)

    trainable = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base_dir), out, is_trainable=True
    )
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert names and all(".fpt_" in n or "modules_to_save" in n for n in names)

    auto = AutoPeftModelForSequenceClassification.from_pretrained(out).eval()
    assert torch.equal(auto(inputs_embeds=PATCHES).logits, logits)

    plain = AutoModelForSequenceClassification.from_pretrained(base_dir)
    plain.load_adapter(str(out), adapter_name="cifar")
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain(inputs_embeds=PATCHES).logits, logits)


def test_load_by_hub_repo_id_from_offline_cache(adapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base_dir, out, logits = adapter
    cache = tmp_path / "hub"
    repo = cache / "models--someone--fpt-tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        shutil.copy(out / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, "someone/fpt-tiny").eval()
    assert torch.equal(model(inputs_embeds=PATCHES).logits, logits)


def test_uploading_a_saved_adapter_sends_exactly_its_files(adapter, monkeypatch: pytest.MonkeyPatch) -> None:
    base_dir, out, _ = adapter
    uploads: list[dict[str, bytes]] = []

    def fake_create_commit(self, repo_id, operations, **kwargs):  # the network boundary only
        assert repo_id == "someone/fpt-tiny"
        files = {}
        for op in operations:
            data = op.path_or_fileobj
            files[op.path_in_repo] = Path(data).read_bytes() if isinstance(data, (str, Path)) else data.read()
        uploads.append(files)

    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: type("Repo", (), {"repo_id": repo_id})())
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kw: None)  # a Hub call too
    monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)  # one commit, through the fake
    # What the recipes do: upload the folder save_pretrained wrote (model card with the loading note included).
    HfApi().upload_folder(repo_id="someone/fpt-tiny", folder_path=str(out))
    files = uploads[-1]
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert b"import fpt_peft" in files["README.md"]
    assert json.loads(files["adapter_config.json"])["peft_type"] == "FPT"
    assert files["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    # peft's own push_to_hub works too; transformers puts its generic model card in place of ours.
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_dir), out)
    model.push_to_hub("someone/fpt-tiny", token="x")
    pushed = uploads[-1]
    assert pushed["adapter_model.safetensors"] == files["adapter_model.safetensors"]
    assert (
        json.loads(pushed["adapter_config.json"])["weights_sha256"]
        == json.loads(files["adapter_config.json"])["weights_sha256"]
    )


def test_symbolic_backbone_adapter_with_fpt_head_round_trips(save_tiny, tmp_path: Path) -> None:
    base_dir = save_tiny("bert", auto=AutoModel)
    config = FPTConfig(input_vocab_size=12, output_dim=2, output_tokens=2, values_per_token=3)
    model = get_peft_model(AutoModel.from_pretrained(base_dir), config).eval()
    ids = torch.randint(1, 12, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    before = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "sym")
    keys = set(load_file(tmp_path / "sym" / "adapter_model.safetensors"))
    assert "base_model.model.output_adapter.fpt_output.weight" in keys
    assert "base_model.model.embeddings.word_embeddings.fpt_input.weight" in keys
    again = PeftModel.from_pretrained(AutoModel.from_pretrained(base_dir), tmp_path / "sym").eval()
    assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, before)
    assert before.shape == (2, 6, 2)
