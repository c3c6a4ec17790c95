"""Adapter files are written atomically, safely under concurrency, and faults give clear errors.

The process-level guarantees are exercised by real processes (tests/adapter_io_worker.py): writers racing into
one folder while a reader loads it, saves killed with SIGKILL at random moments, a user without write permission,
and a real tiny filesystem that fills up and is remounted read-only. The rest runs in-process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import AutoModel

import fpt_peft
from fpt_peft import FPTConfig, safe_io

from .helpers import tiny_config

REPO = Path(__file__).resolve().parent.parent
ADAPTER_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors"}


def _model(seed: int = 0, **config: Any) -> Any:
    torch.manual_seed(seed)
    model = get_peft_model(AutoModel.from_config(tiny_config("gpt2")), FPTConfig(input_dim=6, output_dim=2, **config))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    return model


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def _load_state(folder: Path) -> dict[str, torch.Tensor]:
    return _state(PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), folder))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run_worker(args: list[str], root: Path, prefix: list[str] | None = None) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [*(prefix or []), sys.executable, "-m", "tests.adapter_io_worker", *args, "--root", str(root)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, result in results.items():
        assert "crashed" not in result, (name, result)
    return results


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Race, kill and permission scenarios in one worker process (torch is imported once, then it forks)."""
    return _run_worker(["race", "kill", "permissions"], tmp_path_factory.mktemp("processes"))


# ---------------------------------------------------------------------------------------------- real processes
def test_racing_writers_and_a_reader_only_ever_see_whole_adapters(processes: dict[str, Any]) -> None:
    race = processes["race"]
    assert race["writer_a"]["errors"] == [] and race["writer_b"]["errors"] == []
    assert race["writer_a"]["saves"] >= 5 and race["writer_b"]["saves"] >= 5, race
    assert race["reader"]["error_count"] == 0, race["reader"]["errors"]
    # The reader loaded many times and really saw the folder change under it (both adapters).
    seen = race["reader"]["seen"]
    assert seen["A"] >= 1 and seen["B"] >= 1 and seen["A"] + seen["B"] >= 10, seen
    assert race["final"] in ("A", "B") and race["leftovers"] == []


def test_a_save_killed_at_any_moment_leaves_a_loadable_adapter(processes: dict[str, Any]) -> None:
    kill = processes["kill"]
    outcomes = kill["outcomes"]
    assert all(o["after"] in ("A", "B") for o in outcomes), [o for o in outcomes if o["after"] not in ("A", "B")]
    # Kills landed at different moments: some after a save completed (the adapter changed), and some while files
    # were being moved in (a journal was left), after which the next load completed the save.
    assert sum(o["after"] != o["before"] for o in outcomes) >= 3, outcomes
    assert sum(o["interrupted"] for o in outcomes) >= 3, outcomes
    assert kill["leftovers"] == [] and kill["final"] == "A"


def test_a_user_without_write_permission_gets_a_clear_error(processes: dict[str, Any], tmp_path: Path) -> None:
    result = processes["permissions"]
    if "skipped" in result:  # not root: permission bits apply to this process itself
        folder = tmp_path / "readonly"
        folder.mkdir(mode=0o555)
        with pytest.raises(PermissionError, match=rf"Cannot save to '{folder}/adapter': '{folder}' is not writable"):
            _model().save_pretrained(folder / "adapter")
        return
    assert result["uid"] == 65534
    assert result["readonly"]["type"] == "PermissionError" and result["readonly"]["errno"] == errno.EACCES
    assert (
        f"Cannot save to '{result['base']}/readonly/adapter': '{result['base']}/readonly'"
        in result["readonly"]["message"]
    )
    assert "is not writable (Permission denied)" in result["readonly"]["message"]
    assert result["readonly_untouched"] and result["writable"] == "A"  # same user, writable folder: saves fine


def _can_mount_a_private_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_a_private_tmpfs(), reason="needs user namespaces to mount a private tmpfs")
def test_full_disk_and_read_only_filesystem_for_real(tmp_path: Path) -> None:
    """A 200 KiB tmpfs, private to the worker (a user and mount namespace): real ENOSPC and EROFS, no mocks."""
    root = tmp_path / "tiny"
    root.mkdir()
    shell = 'mount -t tmpfs -o size=200k tmpfs "$0" && exec "$@"'
    result = _run_worker(["filesystem"], root, prefix=["unshare", "-Urm", "sh", "-c", shell, str(root)])["filesystem"]
    folder = f"'{root}/adapter'"
    assert result["saved"] == "A"
    precheck = result["full_precheck"]  # refused before writing anything
    assert precheck["errno"] == errno.ENOSPC and f"Not enough space to save to {folder}" in precheck["message"]
    midwrite = result["full_midwrite"]  # the disk fills up while writing
    assert midwrite["errno"] == errno.ENOSPC
    assert f"Saving the FPT adapter to {folder} failed (No space left on device)" in midwrite["message"]
    assert "the adapter saved there before (if any) is unchanged" in midwrite["message"]
    readonly = result["readonly"]
    assert readonly["errno"] == errno.EROFS and "is not writable (Read-only file system)" in readonly["message"]
    for attempt in (precheck, midwrite, readonly):
        assert attempt["after"] == "A" and attempt["leftovers"] == []  # the previous adapter loads, nothing left


# ---------------------------------------------------------------------------------------------- in-process
def test_save_writes_the_adapter_and_its_digest_and_nothing_else(tmp_path: Path) -> None:
    model = _model()
    model.save_pretrained(tmp_path / "a")
    assert set(os.listdir(tmp_path / "a")) == ADAPTER_FILES | {safe_io.LOCK_NAME}
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["weights_sha256"] == safe_io.file_sha256(str(tmp_path / "a" / "adapter_model.safetensors"))
    model.add_adapter("other", FPTConfig(input_dim=3))
    model.save_pretrained(tmp_path / "b")
    assert set(os.listdir(tmp_path / "b")) == ADAPTER_FILES | {safe_io.LOCK_NAME, "other"}
    assert set(os.listdir(tmp_path / "b" / "other")) == ADAPTER_FILES | {safe_io.LOCK_NAME}
    for folder in (tmp_path / "b", tmp_path / "b" / "other"):
        recorded = json.loads((folder / "adapter_config.json").read_text())["weights_sha256"]
        assert recorded == safe_io.file_sha256(str(folder / "adapter_model.safetensors"))
    assert _same(_load_state(tmp_path / "a"), _state(model))


def test_a_write_that_fails_midway_leaves_the_previous_adapter(tmp_path: Path, monkeypatch) -> None:
    first, second = _model(seed=1), _model(seed=2)
    first.save_pretrained(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ADAPTER_FILES}

    def disk_full(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\0" * 100)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("peft.peft_model.safe_save_file", disk_full)
    with pytest.raises(OSError, match=rf"Saving the FPT adapter to '{tmp_path}' failed \(No space left on device\)"):
        second.save_pretrained(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in ADAPTER_FILES} == before
    assert set(os.listdir(tmp_path)) == ADAPTER_FILES | {safe_io.LOCK_NAME}  # no staging folder left
    assert _same(_load_state(tmp_path), _state(first))


def test_a_save_interrupted_while_moving_files_in_is_completed_by_the_next_load(tmp_path: Path, monkeypatch) -> None:
    first, second = _model(seed=1), _model(seed=2)
    first.save_pretrained(tmp_path)
    real_replace = os.replace
    moved: list[str] = []

    def crash_after_first_move(source: Any, destination: Any) -> None:
        if safe_io.STAGING_PREFIX in str(source):  # moving a staged file in (not the journal's own rename)
            if moved:
                raise KeyboardInterrupt  # the process dies here (as under SIGKILL, nothing after this runs)
            moved.append(str(destination))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", crash_after_first_move)
    with pytest.raises(KeyboardInterrupt):
        second.save_pretrained(tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    # On disk now: the new weights next to the old config, and the journal of the save.
    assert moved == [str(tmp_path / "adapter_model.safetensors")]
    assert (tmp_path / safe_io.JOURNAL_NAME).exists()
    recorded = json.loads((tmp_path / "adapter_config.json").read_text())["weights_sha256"]
    assert recorded != safe_io.file_sha256(str(tmp_path / "adapter_model.safetensors"))
    assert _same(_load_state(tmp_path), _state(second))  # the load completed the save first
    assert set(os.listdir(tmp_path)) == ADAPTER_FILES | {safe_io.LOCK_NAME}


def test_a_journal_pointing_outside_the_adapter_is_refused(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "a")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    journal = {"version": 1, "staging": "..", "moves": [["../victim.txt", "adapter_config.json"]]}
    (tmp_path / "a" / safe_io.JOURNAL_NAME).write_text(json.dumps(journal))
    with pytest.raises(ValueError, match="is not a journal fpt-peft wrote; refusing to act on it"):
        PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), tmp_path / "a")
    assert victim.read_text() == "keep me"


def test_staging_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = safe_io._staging_name().removeprefix(safe_io.STAGING_PREFIX).split("-")[0]
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / f"{safe_io.STAGING_PREFIX}{host}-{dead.pid}-0badcafe"
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"half")
    live = tmp_path / f"{safe_io.STAGING_PREFIX}{host}-{os.getpid()}-00c0ffee"  # a concurrent save in progress
    live.mkdir()
    _model().save_pretrained(tmp_path)
    assert not stale.exists() and live.exists()


def test_a_reader_holds_off_writers_until_its_load_is_done(tmp_path: Path) -> None:
    first, second = _model(seed=1), _model(seed=2)
    first.save_pretrained(tmp_path)
    writer = threading.Thread(target=second.save_pretrained, args=(tmp_path,))
    with safe_io.reading(tmp_path):  # what every FPT load holds (threads use separate lock descriptors)
        writer.start()
        time.sleep(0.5)
        assert writer.is_alive()  # staged, waiting for the lock to move its files in
        assert _same(_state(first), _load_state(tmp_path))
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert _same(_load_state(tmp_path), _state(second))


def test_check_writable_names_the_path(tmp_path: Path, monkeypatch) -> None:
    safe_io.check_writable(tmp_path / "new" / "deeper", needed_bytes=1)  # a folder that does not exist yet: fine
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        NotADirectoryError, match=rf"Cannot save to '{tmp_path}/file/out': '{tmp_path}/file' is a file"
    ):
        safe_io.check_writable(tmp_path / "file" / "out")
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(OSError, match=rf"Not enough space to save to '{tmp_path}'") as caught:
        safe_io.check_writable(tmp_path, needed_bytes=free * 2)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path)


def test_a_full_disk_is_reported_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:
    """shutil.disk_usage is faked here; test_full_disk_and_read_only_filesystem_for_real fills a real filesystem."""
    model = _model()
    model.save_pretrained(tmp_path)
    weights = (tmp_path / "adapter_model.safetensors").stat().st_size
    tensors = safe_io.estimate_save_bytes(model) - safe_io.SAVE_MARGIN_BYTES  # the file adds a small header
    assert 0.8 * weights <= tensors <= weights
    before = sorted(os.listdir(tmp_path))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(OSError, match=rf"Not enough space to save to '{tmp_path}': about [\d,]+ bytes are needed"):
        model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == before


def test_wrappers_are_idempotent_and_leave_other_adapters_alone(tmp_path: Path) -> None:
    save, load = PeftModel.save_pretrained, PeftModel.load_adapter
    fpt_peft.register()
    fpt_peft.register()
    assert PeftModel.save_pretrained is save and PeftModel.load_adapter is load
    lora = get_peft_model(AutoModel.from_config(tiny_config("gpt2")), LoraConfig(target_modules=["c_attn"]))
    lora.save_pretrained(tmp_path / "lora")
    assert set(os.listdir(tmp_path / "lora")) == ADAPTER_FILES  # no lock, no digest: peft's own behaviour
    assert "weights_sha256" not in json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    lora.save_pretrained(tmp_path / "lora-bin", safe_serialization=False)  # pickles stay peft's business for LoRA
    again = PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), tmp_path / "lora-bin")
    assert _same(_state(again), _state(lora))
