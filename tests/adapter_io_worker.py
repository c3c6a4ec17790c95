"""Real processes for tests/test_adapter_io.py: concurrent saves and loads, saves killed half-way, faults.

Run as ``python -m tests.adapter_io_worker SCENARIO [SCENARIO ...] --root DIR`` from the repository root; prints one
JSON object (scenario -> results) on its last line. The process imports torch once, then forks one child per role,
so every role is a separate process with its own file descriptors and locks, as two users' programs would be.

Two adapters, A and B, have the same architecture and different weights; each config carries its name in
``base_model_name_or_path``. :func:`identify` loads a folder and says which one it holds, failing unless the config
and every weight belong to the same adapter. A mix of config and weights would therefore be caught even if the
digest check did not exist.
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

import transformers  # noqa: E402
from peft import PeftModel, get_peft_model, get_peft_model_state_dict  # noqa: E402

from fpt_peft import FPTConfig, safe_io  # noqa: E402

from .helpers import tiny_config  # noqa: E402

transformers.logging.set_verbosity_error()
STATES: dict[str, dict[str, torch.Tensor]] = {}
MODELS: dict[str, Any] = {}


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
    """'A' or 'B': which adapter ``folder`` loads to; raises unless its config and all its weights agree."""
    loaded = PeftModel.from_pretrained(_base(), folder)
    name = loaded.peft_config["default"].base_model_name_or_path
    got, want = get_peft_model_state_dict(loaded), STATES[name]
    if got.keys() != want.keys() or not all(torch.equal(got[k], want[k]) for k in want):
        raise AssertionError(f"config of {name} loaded with weights of another adapter")
    return str(name)


def _leftovers(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith((safe_io.STAGING_PREFIX, safe_io.JOURNAL_NAME)))


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


# ------------------------------------------------------------------------------------------------ race
def _writer(folder: str, name: str, seconds: float) -> dict[str, Any]:
    saves, errors = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            MODELS[name].save_pretrained(folder)
            saves += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"saves": saves, "errors": errors[:5]}


def _reader(folder: str, seconds: float) -> dict[str, Any]:
    seen = {"A": 0, "B": 0}
    errors = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            seen[identify(folder)] += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"seen": seen, "errors": errors[:5], "error_count": len(errors)}


def race(root: str, seconds: float = 2.0) -> dict[str, Any]:
    """Writers of A and of B save into one folder as fast as they can while a reader loads it in a loop."""
    folder = os.path.join(root, "race")
    MODELS["A"].save_pretrained(folder)
    children = [
        _fork(_writer, folder, "A", seconds),
        _fork(_writer, folder, "B", seconds),
        _fork(_reader, folder, seconds),
    ]
    writer_a, writer_b, reader = (_collect(*child) for child in children)
    return {
        "writer_a": writer_a,
        "writer_b": writer_b,
        "reader": reader,
        "final": identify(folder),
        "leftovers": _leftovers(folder),
    }


# ------------------------------------------------------------------------------------------------ kill
def _save_forever(folder: str, first: str) -> None:
    """Alternate saves of ``first`` and the other adapter, slowed down where a kill does most harm, until killed."""
    real_replace = os.replace

    def slow_replace(source: Any, destination: Any) -> None:
        time.sleep(random.uniform(0.002, 0.01))  # widens the window between moving one file in and the next
        real_replace(source, destination)

    os.replace = slow_replace  # type: ignore[assignment]
    random.seed(os.getpid())
    order = [first, "B" if first == "A" else "A"]
    count = 0
    while True:
        MODELS[order[count % 2]].save_pretrained(folder)
        count += 1


def killed_saves(root: str, rounds: int = 20) -> dict[str, Any]:
    """SIGKILL a process that keeps saving, at a random moment, then load the folder; ``rounds`` times.

    Each round's first save writes the adapter the folder does not hold, so any completed save shows as a change.
    """
    folder = os.path.join(root, "kill")
    MODELS["A"].save_pretrained(folder)
    current = "A"
    rng = random.Random(0)
    outcomes = []
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:
            try:
                _save_forever(folder, first="B" if current == "A" else "A")
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.01, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        interrupted = os.path.exists(os.path.join(folder, safe_io.JOURNAL_NAME))
        try:
            now = identify(folder)
            outcomes.append({"interrupted": interrupted, "before": current, "after": now})
            current = now
        except Exception as exc:
            outcomes.append({"interrupted": interrupted, "before": current, "after": f"{type(exc).__name__}: {exc}"})
    MODELS["A"].save_pretrained(folder)  # a later save clears what the killed ones left behind
    return {"outcomes": outcomes, "leftovers": _leftovers(folder), "final": identify(folder)}


# ------------------------------------------------------------------------------------------------ permissions
def _as_nobody(folder: str) -> dict[str, Any]:
    os.setgid(65534)
    os.setuid(65534)
    result: dict[str, Any] = {"uid": os.getuid()}
    try:
        MODELS["A"].save_pretrained(os.path.join(folder, "readonly", "adapter"))
        result["readonly"] = "saved"
    except OSError as exc:
        result["readonly"] = {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
    MODELS["A"].save_pretrained(os.path.join(folder, "writable", "adapter"))  # the control: same user, own folder
    result["writable"] = identify(os.path.join(folder, "writable", "adapter"))
    return result


def permissions(root: str) -> dict[str, Any]:
    """A user without write permission on the folder (a child switched to uid 65534 when run as root)."""
    if os.geteuid() != 0:
        return {"skipped": "not root: test_adapter_io checks permission bits in-process"}
    base = tempfile.mkdtemp(prefix="fpt-peft-perm-")  # under /tmp: the user must be able to reach it
    try:
        os.chmod(base, 0o755)
        for name, mode in (("readonly", 0o555), ("writable", 0o755)):
            os.mkdir(os.path.join(base, name))
            os.chown(os.path.join(base, name), 65534, 65534)
            os.chmod(os.path.join(base, name), mode)
        result = _collect(*_fork(_as_nobody, base))
        result["readonly_untouched"] = os.listdir(os.path.join(base, "readonly")) == []
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


def _attempt(folder: str) -> dict[str, Any]:
    try:
        MODELS["B"].save_pretrained(folder)
        return {"saved": True}
    except OSError as exc:
        return {"errno": exc.errno, "message": str(exc), "after": identify(folder), "leftovers": _leftovers(folder)}


def filesystem(root: str) -> dict[str, Any]:
    """``root`` is a tiny tmpfs of our own (see test_adapter_io): a full disk and a read-only mount, for real."""
    folder = os.path.join(root, "adapter")
    MODELS["A"].save_pretrained(folder)
    result: dict[str, Any] = {"saved": identify(folder)}
    _fill(root, leave=24 * 1024)
    result["full_precheck"] = _attempt(folder)
    original_check = safe_io.check_writable
    safe_io.check_writable = lambda path, needed_bytes=0: None  # type: ignore[assignment]
    _fill(root, leave=4096)
    result["full_midwrite"] = _attempt(folder)
    safe_io.check_writable = original_check  # type: ignore[assignment]
    os.unlink(os.path.join(root, "filler"))
    subprocess.run(["mount", "-o", "remount,ro", root], check=True)
    result["readonly"] = _attempt(folder)
    return result


SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {
    "race": race,
    "kill": killed_saves,
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
