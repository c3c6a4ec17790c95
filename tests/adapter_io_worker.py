"""Real processes for tests/test_adapter_io.py: concurrent saves and loads, saves killed half-way, faults.

Run as ``python -m tests.adapter_io_worker SCENARIO [SCENARIO ...] --root DIR`` from the repository root; prints one
JSON object (scenario -> results) on its last line. The process imports torch once, then forks one child per role,
so every role is a separate process with its own file descriptors, as two users' programs would be.

Two adapters, A and B, have the same architecture and different weights; each config carries its name in
``base_model_name_or_path``. :func:`identify` loads a folder and says which one it holds, failing with
:class:`Mixed` unless the config and every weight belong to the same adapter. A mix of config and weights is
therefore caught even where the digest check would miss it.

Saves go through :func:`fpt_peft.adapter_save.save_adapter` (written beside the folder, swapped in atomically) or
through peft's plain ``save_pretrained`` (written in place): :data:`SAVES`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

torch.set_num_threads(1)  # before any op: the process forks

import tqdm  # noqa: E402

# No tqdm monitor thread either: a child forked while it holds tqdm's lock would hang at its first progress bar.
tqdm.tqdm.monitor_interval = 0

import transformers  # noqa: E402
from peft import PeftModel, get_peft_model, get_peft_model_state_dict  # noqa: E402

from fpt_peft import AdapterIntegrityError, FPTConfig  # noqa: E402
from fpt_peft.adapter_save import estimate_save_bytes, save_adapter  # noqa: E402
from fpt_peft.durable import check_writable  # noqa: E402

from .helpers import tiny_config  # noqa: E402

transformers.logging.set_verbosity_error()
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors"]
STATES: dict[str, dict[str, torch.Tensor]] = {}
MODELS: dict[str, Any] = {}
SAVES: dict[str, Callable[[Any, str], Any]] = {
    "atomic": save_adapter,
    "plain": lambda model, folder: model.save_pretrained(folder),
}


class Mixed(AssertionError):
    """A folder loaded without error to a config of one adapter with weights of another: never allowed."""


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(tiny_config("gpt2"))


def _adapter(name: str, seed: int) -> Any:
    model = get_peft_model(_base(), FPTConfig(input_dim=6, output_dim=2))
    model.peft_config["default"].base_model_name_or_path = name  # get_peft_model sets it from the base model
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator))
    return model


def identify(folder: str) -> str:
    """'A' or 'B': which adapter ``folder`` loads to; raises :class:`Mixed` unless its config and weights agree."""
    loaded = PeftModel.from_pretrained(_base(), folder)
    name = loaded.peft_config["default"].base_model_name_or_path
    got = get_peft_model_state_dict(loaded)
    for want in STATES.values():
        if got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want):
            if want is not STATES.get(name):
                raise Mixed(f"the config of {name} loaded with the weights of another adapter")
            return str(name)
    raise Mixed(f"the config of {name} loaded with weights that are neither A's nor B's (a mix of both)")


def outcome(folder: str) -> str:
    """:func:`identify`, or the kind of error the load raised: 'refused: ...', 'MIXED: ...' or 'OTHER: ...'."""
    try:
        return identify(folder)
    except Mixed as exc:
        return f"MIXED: {exc}"
    except AdapterIntegrityError as exc:
        kind = "corrupt" if "is corrupted or truncated" in str(exc) else "mismatch"
        return f"refused: {kind}: {str(exc)[:300]}"
    except Exception as exc:
        message = f"{type(exc).__name__}: {str(exc)[:300]}"
        # The weights file is not there (yet): peft's own error (offline it tries the folder path as a Hub repo).
        missing = isinstance(exc, FileNotFoundError) or "Repo id must be" in str(exc)
        return f"refused: missing: {message}" if missing else f"OTHER: {message}"


def _leftovers(folder: str) -> list[str]:
    """What is there besides the adapter's own files: in the folder, and beside it (``.tmp-*``)."""
    parent = os.path.dirname(folder)
    around = [n for n in os.listdir(parent) if n != os.path.basename(folder)]
    inside = [n for n in os.listdir(folder) if n not in ADAPTER_FILES] if os.path.isdir(folder) else ["<no folder>"]
    return sorted(around) + sorted(f"{os.path.basename(folder)}/{n}" for n in inside)


def _fork(role: Callable[..., Any], *args: Any) -> tuple[int, int]:
    """Run ``role(*args)`` in a child process; returns (pid, read end of the pipe its JSON result comes through)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            result = role(*args)
        except BaseException as exc:
            result = {"crashed": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write, "w") as handle:
            json.dump(result, handle)
        os._exit(0)
    os.close(write)
    return pid, read


def _collect(pid: int, read: int) -> Any:
    with os.fdopen(read) as handle:
        text = handle.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def _fresh_folder(root: str, name: str) -> str:
    """``root/name/adapter``, in a parent of its own so that what a save leaves beside it can be listed."""
    parent = os.path.join(root, name)
    os.makedirs(parent)
    return os.path.join(parent, "adapter")


# ------------------------------------------------------------------------------------------------ race
def _writer(folder: str, names: str, save: str, seconds: float) -> dict[str, Any]:
    """Save the adapters ``names`` ("A", "B", or "AB" taking turns) into ``folder`` until ``seconds`` are over."""
    saves, errors = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            SAVES[save](MODELS[names[saves % len(names)]], folder)
            saves += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"saves": saves, "errors": errors[:5], "error_count": len(errors)}


def _reader(folder: str, seconds: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = outcome(folder)
        kind = got if got in ("A", "B") else ":".join(got.split(":")[:2])
        counts[kind] = counts.get(kind, 0) + 1
        examples.setdefault(kind, got)
    return {"counts": counts, "examples": examples}


def _race(root: str, save: str, writers: tuple[str, ...], seconds: float = 3.0) -> dict[str, Any]:
    """Writer processes (one per entry of ``writers``) save into one folder as fast as they can while a reader loads
    it in a loop."""
    folder = _fresh_folder(root, f"race-{save}")
    SAVES[save](MODELS["A"], folder)
    children = [_fork(_writer, folder, names, save, seconds) for names in writers]
    reader = _fork(_reader, folder, seconds)
    results = [_collect(*child) for child in children]
    return {
        "writers": results,
        "reader": _collect(*reader),
        "final": outcome(folder),
        "leftovers": _leftovers(folder),
    }


def race(root: str) -> dict[str, Any]:
    """Two processes saving A and B with save_adapter."""
    return _race(root, "atomic", ("A", "B"))


def race_plain(root: str) -> dict[str, Any]:
    """One process saving A and B in turns with peft's plain save_pretrained (two plain writers into one folder can
    leave one's config beside the other's weights: peft writes in place; README says to use save_adapter then)."""
    return _race(root, "plain", ("AB",))


# ------------------------------------------------------------------------------------------------ kill
def _save_forever(folder: str, first: str, save: str) -> None:
    """Alternate saves of ``first`` and the other adapter until killed."""
    order = [first, "B" if first == "A" else "A"]
    count = 0
    while True:
        SAVES[save](MODELS[order[count % 2]], folder)
        count += 1


def _killed_saves(root: str, save: str, rounds: int = 20) -> dict[str, Any]:
    """SIGKILL a process that keeps saving, at a random moment, then load the folder; ``rounds`` times.

    Each round's first save writes the adapter the folder does not hold, so any completed save shows as a change.
    A folder a kill left unloadable is saved again (whole, by this process) before the next round.
    """
    folder = _fresh_folder(root, f"kill-{save}")
    SAVES[save](MODELS["A"], folder)
    current = "A"
    rng = random.Random(0)
    outcomes = []
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:
            try:
                _save_forever(folder, "B" if current == "A" else "A", save)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.01, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        left = _leftovers(folder)
        after = outcome(folder)
        outcomes.append({"before": current, "after": after, "left": left})
        if after in ("A", "B"):
            current = after
        else:
            shutil.rmtree(folder, ignore_errors=True)
            SAVES[save](MODELS[current], folder)
    save_adapter(MODELS["A"], folder)  # a later save clears what the killed ones left behind
    return {"outcomes": outcomes, "leftovers": _leftovers(folder), "final": outcome(folder)}


def kill(root: str) -> dict[str, Any]:
    return _killed_saves(root, "atomic")


def kill_plain(root: str) -> dict[str, Any]:
    return _killed_saves(root, "plain")


# ------------------------------------------------------------------------------------------------ permissions
def _error(exc: OSError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc)}


def _as_nobody(base: str) -> dict[str, Any]:
    os.setgid(65534)
    os.setuid(65534)
    result: dict[str, Any] = {"uid": os.getuid()}
    folder = os.path.join(base, "readonly", "adapter")
    for name, attempt in (
        ("check_writable", lambda: check_writable(folder, estimate_save_bytes(MODELS["B"]))),
        ("save_adapter", lambda: save_adapter(MODELS["B"], folder)),
    ):
        try:
            attempt()
            result[name] = "saved"
        except OSError as exc:
            result[name] = _error(exc)
    result["after"] = outcome(folder)  # loading needs no write access: nothing is created on a load
    writable = os.path.join(base, "writable", "adapter")  # the control: same user, own folder
    save_adapter(MODELS["B"], writable)
    result["writable"] = outcome(writable)
    return result


def permissions(root: str) -> dict[str, Any]:
    """A user without write permission on an adapter's folder (a child switched to uid 65534 when run as root)."""
    if os.geteuid() != 0:
        return {"skipped": "not root: test_adapter_io checks permission bits in-process"}
    base = tempfile.mkdtemp(prefix="fpt-peft-perm-")  # under /tmp: the user must be able to reach it
    try:
        os.chmod(base, 0o755)
        readonly = os.path.join(base, "readonly")
        save_adapter(MODELS["A"], os.path.join(readonly, "adapter"))  # root's adapter, readable by all:
        for name in ADAPTER_FILES:  # (safetensors >= 0.8 creates its files with mode 0600)
            os.chmod(os.path.join(readonly, "adapter", name), 0o644)
        os.chmod(readonly, 0o555)
        os.chown(readonly, 65534, 65534)
        os.mkdir(os.path.join(base, "writable"))
        os.chown(os.path.join(base, "writable"), 65534, 65534)
        before = _leftovers(os.path.join(readonly, "adapter"))
        result = _collect(*_fork(_as_nobody, base))
        result["untouched"] = before == _leftovers(os.path.join(readonly, "adapter")) == []
        result["base"] = base
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------ tiny filesystem
def _fill(root: str, leave: int) -> None:
    """Fill the filesystem of ``root`` until about ``leave`` bytes are free."""
    with open(os.path.join(root, "filler"), "ab") as handle:
        while shutil.disk_usage(root).free > leave + 4096:
            handle.write(b"\0" * min(shutil.disk_usage(root).free - leave, 1 << 16))
            handle.flush()


def _attempt(folder: str, attempt: Callable[[], Any]) -> dict[str, Any]:
    try:
        attempt()
        result: dict[str, Any] = {"saved": True}
    except OSError as exc:
        result = _error(exc)
    return {**result, "after": outcome(folder), "leftovers": _leftovers(folder)}


def filesystem(root: str) -> dict[str, Any]:
    """``root`` is a tiny tmpfs of our own (see test_adapter_io): a full disk and a read-only mount, for real."""
    folder = os.path.join(root, "adapter")
    save_adapter(MODELS["A"], folder)
    result: dict[str, Any] = {"saved": outcome(folder)}
    needed = estimate_save_bytes(MODELS["B"])
    _fill(root, leave=24 * 1024)
    result["full_check"] = _attempt(folder, lambda: check_writable(folder, needed))
    _fill(root, leave=4096)
    result["full_save"] = _attempt(folder, lambda: save_adapter(MODELS["B"], folder))
    os.unlink(os.path.join(root, "filler"))
    subprocess.run(["mount", "-o", "remount,ro", root], check=True)
    result["readonly_check"] = _attempt(folder, lambda: check_writable(folder))
    result["readonly_save"] = _attempt(folder, lambda: save_adapter(MODELS["B"], folder))
    return result


SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {
    "race": race,
    "race_plain": race_plain,
    "kill": kill,
    "kill_plain": kill_plain,
    "permissions": permissions,
    "filesystem": filesystem,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS))
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    for name, seed in (("A", 1), ("B", 2)):
        MODELS[name] = _adapter(name, seed)
        STATES[name] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(MODELS[name]).items()}
    results: dict[str, Any] = {}
    for scenario in args.scenarios:
        started = time.monotonic()
        try:
            results[scenario] = SCENARIOS[scenario](args.root)
        except Exception as exc:
            results[scenario] = {"crashed": f"{type(exc).__name__}: {exc}"}
        results[scenario]["seconds"] = round(time.monotonic() - started, 2)
    sys.stdout.write("\n" + json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
