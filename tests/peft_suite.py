"""Machinery for running peft's own generic test checks against FPT (used by ``tests/test_peft_conformance.py``).

- :func:`peft_source` fetches the source distribution of the *installed* peft version from PyPI (its wheel has no
  tests) and unpacks it once into ``.cache/peft-src/`` at the repository root, race-free between processes.
- :func:`load_upstream` imports peft's ``tests/`` directory as the package ``peft_upstream_tests`` (a name that cannot
  clash with this repository's own ``tests`` package; peft's test modules import each other relatively), with
  pytest's assertion rewriting so that failing upstream asserts show their values.
- :func:`save_tiny_models` writes tiny GPT-2, BERT and Llama sequence classifiers to disk; their folders stand in
  for the Hub model ids that peft's checks expect.
- :func:`harness_classes` makes the test classes that run the checks: subclasses of peft's own test classes that
  only replace what peft itself varies per test class (the model class and ``prepare_inputs_for_testing``).
- :func:`install_patches` swaps in what FPT needs in place of peft's per-method special cases (see there).
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.metadata
import inspect
import itertools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from peft import PeftConfig, PeftModelForSequenceClassification, get_peft_model

import fpt_peft

from .helpers import tiny_config

PEFT_VERSION = importlib.metadata.version("peft")
REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache" / "peft-src"
PACKAGE = "peft_upstream_tests"
UPSTREAM_MODULES = (
    "testing_utils",
    "testing_common",
    "test_config",
    "test_tuners_utils",
    "test_custom_models",
    "test_seq_classifier",
)
# Packages that peft's test modules import at module level but that fpt-peft itself does not need. If one is
# missing, the conformance module fails with the name of the package to add to the `dev` extra.
TEST_DEPENDENCIES = {"diffusers": "diffusers>=0.42", "parameterized": "parameterized>=0.9"}

FAMILIES = ("gpt2", "bert", "llama")
MODES = ("token", "feature")
# Folder names of the saved tiny models. They are the "model ids" of peft's checks, which skip merging checks for
# ids containing "gpt2" unless the method adapts GPT-2's Conv1D layers; FPT copies norms and positions and does not
# care about the layer type, so the GPT-2 folder avoids that substring.
MODEL_FOLDERS = {"gpt2": "tiny-gpt-2-seq-cls", "bert": "tiny-bert-seq-cls", "llama": "tiny-llama-seq-cls"}
INPUT_VOCAB_SIZE = 20  # token mode: a new vocabulary smaller than the tiny models' own (50), so the base can run too
FEATURE_DIM = 12  # feature mode: narrower than the tiny models (32), so a transposed or mis-sized input layer fails
# peft's seq-cls inputs (tests/test_seq_classifier.py), with a padded position in the second row.
TOKEN_IDS = [[1, 1, 1], [1, 2, 1]]
ATTENTION_MASK = [[1, 1, 1], [1, 0, 1]]
PERTURBATION = 0.1  # std of the noise added to new FPT adapters, see perturb_adapter_weights


class UpstreamUnavailableError(RuntimeError):
    """peft's test sources could not be fetched or imported."""


# ---------------------------------------------------------------------------------------------- peft's sources
def peft_source(version: str = PEFT_VERSION) -> Path:
    """The unpacked source distribution of peft ``version`` (fetched with pip on first use, then cached).

    Concurrent callers each unpack into a private temporary folder and rename it into place; the rename is atomic,
    and a caller that loses the race uses the winner's copy.
    """
    target = CACHE_DIR / f"peft-{version}"
    if _complete(target):
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".peft-{version}-", dir=CACHE_DIR))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--disable-pip-version-check",
            f"peft=={version}",
            "-d",
            str(work / "download"),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpstreamUnavailableError(f"Could not run {' '.join(command)}: {exc}") from exc
        if result.returncode != 0:
            raise UpstreamUnavailableError(
                f"Downloading peft {version}'s source distribution (for its test suite) failed with exit code "
                f"{result.returncode}: {' '.join(command)}\n{(result.stderr or result.stdout)[-3000:]}"
            )
        archives = sorted((work / "download").glob("peft-*.tar.gz"))
        if len(archives) != 1:
            found = sorted(p.name for p in (work / "download").iterdir())
            raise UpstreamUnavailableError(f"Expected one peft-{version}.tar.gz from pip, got {found}.")
        with tarfile.open(archives[0]) as archive:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse links and paths out of the folder
                archive.extractall(work / "unpacked", filter="data")
            else:  # pragma: no cover - older patch releases
                archive.extractall(work / "unpacked")  # the archive comes from PyPI, via pip
        unpacked = work / "unpacked" / f"peft-{version}"
        if not _complete(unpacked):
            raise UpstreamUnavailableError(f"{archives[0].name} has no tests/testing_common.py.")
        try:
            os.rename(unpacked, target)
        except OSError:
            if not _complete(target):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _complete(folder: Path) -> bool:
    return (folder / "tests" / "testing_common.py").is_file()


def load_upstream() -> types.SimpleNamespace:
    """Import peft's test modules (``UPSTREAM_MODULES``) from the cached source distribution."""
    tests_dir = peft_source() / "tests"
    if PACKAGE not in sys.modules:
        pytest.register_assert_rewrite(PACKAGE)
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(tests_dir)]
        package.__package__ = PACKAGE
        package.__spec__ = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        package.__spec__.submodule_search_locations = [str(tests_dir)]
        sys.modules[PACKAGE] = package
    modules = {}
    for name in UPSTREAM_MODULES:
        try:
            modules[name] = importlib.import_module(f"{PACKAGE}.{name}")
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            requirement = TEST_DEPENDENCIES.get(missing, missing)
            raise UpstreamUnavailableError(
                f"peft {PEFT_VERSION}'s tests/{name}.py imports {missing!r}, which is not installed. Add "
                f"{requirement!r} to the `dev` extra in pyproject.toml (pip install -e '.[dev]')."
            ) from exc
    return types.SimpleNamespace(**modules)


# ---------------------------------------------------------------------------------------------- models and inputs
def save_tiny_models(root: Path) -> dict[str, str]:
    """Save a seeded tiny ``*ForSequenceClassification`` model per family under ``root``; returns family -> folder."""
    folders = {}
    for family in FAMILIES:
        config = tiny_config(family)
        if config.pad_token_id is None:  # batched sequence classification finds the last token through it
            config.pad_token_id = 0
        torch.manual_seed(0)
        model = transformers.AutoModelForSequenceClassification.from_config(config)
        folder = root / MODEL_FOLDERS[family]
        model.save_pretrained(folder)
        folders[family] = str(folder)
    return folders


def hidden_size(model_id: str) -> int:
    """Width of the residual stream of the saved model ``model_id``."""
    config = transformers.AutoConfig.from_pretrained(model_id)
    return int(config.hidden_size if hasattr(config, "hidden_size") else config.n_embd)


def fpt_kwargs(mode: str, input_dim: int = FEATURE_DIM, task_type: str | None = "SEQ_CLS") -> dict[str, Any]:
    """FPTConfig keyword arguments of an input ``mode`` ("token": input_ids, "feature": inputs_embeds)."""
    kwargs: dict[str, Any] = {"task_type": task_type} if task_type else {}
    if mode == "token":
        kwargs["input_vocab_size"] = INPUT_VOCAB_SIZE
    elif mode == "feature":
        kwargs["input_dim"] = input_dim
    else:
        raise ValueError(f"Unknown mode {mode!r}.")
    return kwargs


class FPTInputsMixin:
    """What peft varies per test class: the inputs. Token mode feeds ``input_ids``, feature mode ``inputs_embeds``."""

    torch_device: str

    def __init__(self, mode: str, input_dim: int = FEATURE_DIM) -> None:
        self.mode = mode
        self.input_dim = input_dim

    def prepare_inputs_for_testing(self) -> dict[str, torch.Tensor]:
        mask = torch.tensor(ATTENTION_MASK).to(self.torch_device)
        if self.mode == "token":
            return {"input_ids": torch.tensor(TOKEN_IDS).to(self.torch_device), "attention_mask": mask}
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(len(TOKEN_IDS), len(TOKEN_IDS[0]), self.input_dim, generator=generator)
        return {"inputs_embeds": features.to(self.torch_device), "attention_mask": mask}

    def config_kwargs(self) -> dict[str, Any]:
        return fpt_kwargs(self.mode, self.input_dim)


class LogitsSequenceClassifier:
    """``transformers_class`` for peft's custom-model checks, which treat the model output as a tensor.

    peft's custom test models return their logits tensor and carry an assignable ``dtype`` attribute; this loads the
    tiny Hugging Face classifier as a subclass that does the same, and is otherwise unchanged.
    """

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: torch.dtype | None = None) -> transformers.PreTrainedModel:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(model_id, dtype=dtype or torch.float32)
        model.__class__ = _returning_logits(type(model))
        return model


@functools.cache
def _returning_logits(base: type) -> type:
    @functools.wraps(base.forward)
    def forward(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return base.forward(self, *args, **kwargs).logits

    dtype_property = next(c.__dict__["dtype"] for c in base.__mro__ if "dtype" in c.__dict__)

    def set_dtype(self: Any, value: torch.dtype) -> None:
        """peft's custom models keep ``dtype`` as an attribute, which its checks assign; here the weights set it."""

    dtype = property(dtype_property.fget, set_dtype)
    return type(f"{base.__name__}ReturningLogits", (base,), {"forward": forward, "dtype": dtype})


def harness_classes(upstream: types.SimpleNamespace) -> tuple[type, type]:
    """(seq-cls harness, custom-model harness): peft's test classes with FPT inputs; not collected by pytest."""

    class SeqClsHarness(FPTInputsMixin, upstream.test_seq_classifier.TestSequenceClassificationModels):
        transformers_class = transformers.AutoModelForSequenceClassification

    class CustomModelHarness(FPTInputsMixin, upstream.test_custom_models.TestPeftCustomModel):
        transformers_class = LogitsSequenceClassifier

    return SeqClsHarness, CustomModelHarness


# ---------------------------------------------------------------------------------------------- patches
def perturb_adapter_weights(model: torch.nn.Module, scale: float = PERTURBATION) -> None:
    """Add seeded noise to every FPT adapter weight of ``model``.

    FPT's trainable copies start equal to the base modules they copy. peft makes its checks meaningful for methods
    that start as an identity by creating adapters with ``init_weights=False`` (``set_init_weights_false`` in its
    ``testing_utils``); FPTConfig has no such switch, so new FPT adapters get this noise instead. Without it a
    save/load check would pass even if the copies were never saved, as they would equal the base anyway.
    """
    prefix = fpt_peft.PREFIX
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if prefix in name and param.is_floating_point() and param.device.type != "meta":
                noise = torch.randn(param.shape, generator=generator) * scale
                param.add_(noise.to(device=param.device, dtype=param.dtype))


def _get_peft_model_perturbed(model: torch.nn.Module, peft_config: PeftConfig, *args: Any, **kwargs: Any) -> Any:
    peft_model = get_peft_model(model, peft_config, *args, **kwargs)
    if isinstance(peft_config, fpt_peft.FPTConfig):
        perturb_adapter_weights(peft_model)
    return peft_model


def _set_init_weights_false(original: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def set_init_weights_false(config_cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
        if issubclass(config_cls, fpt_peft.FPTConfig):
            return dict(kwargs)  # FPTConfig has no init_weights; _get_peft_model_perturbed plays its part
        return original(config_cls, kwargs)

    return set_init_weights_false


def fpt_config_like_lora(**kwargs: Any) -> fpt_peft.FPTConfig:
    """Stand-in for ``LoraConfig`` in peft's model/layer-status tests: the same target modules, adapted by FPT."""
    kwargs.pop("r", None)  # LoRA's rank has no FPT counterpart
    return fpt_peft.FPTConfig(**kwargs)


def install_patches(monkeypatch: pytest.MonkeyPatch, upstream: types.SimpleNamespace) -> None:
    """Undone after each test by ``monkeypatch``.

    - ``get_peft_model`` perturbs new FPT adapters and ``set_init_weights_false`` leaves FPT kwargs alone (see
      :func:`perturb_adapter_weights`).
    - ``hub_online_once`` treats every model id as already fetched, so it keeps the Hub offline (the ids are local
      folders; its first call per id would otherwise switch transformers to online mode).
    - ``LoraConfig`` in ``test_tuners_utils`` becomes :func:`fpt_config_like_lora` (only the status tests use it).
    - ``PeftModelForSequenceClassification`` loses the ``generate`` it inherits from ``PeftModel`` (it would call
      the classifier's missing ``generate``): ``_test_disable_adapter`` compares ``generate()`` scores whenever a
      model has ``generate``, and the model's outputs otherwise.
    """
    for module in (upstream.testing_common, upstream.test_seq_classifier, upstream.test_custom_models):
        monkeypatch.setattr(module, "get_peft_model", _get_peft_model_perturbed)
        if hasattr(module, "set_init_weights_false"):
            monkeypatch.setattr(
                module, "set_init_weights_false", _set_init_weights_false(module.set_init_weights_false)
            )
    monkeypatch.setattr(upstream.testing_utils, "_HUB_MODEL_ACCESSES", _AlwaysFetched())
    monkeypatch.setattr(upstream.test_tuners_utils, "LoraConfig", fpt_config_like_lora)
    monkeypatch.setattr(PeftModelForSequenceClassification, "generate", property(_no_generate), raising=False)


def _no_generate(self: Any) -> Any:
    raise AttributeError("sequence classifiers do not generate")


class _AlwaysFetched(dict):  # type: ignore[type-arg]
    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> int:
        return 0


# ---------------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class UpstreamTest:
    """One variant of a parametrized upstream test method, to be called with FPT's values."""

    key: str  # "module::Class::method", the key of NOT_APPLICABLE
    variant: str  # the other parametrize values, as an id ("" if none)
    cls: type
    method: Callable[..., Any]
    values: tuple[tuple[str, Any], ...]  # arguments from the other parametrize marks

    @property
    def id(self) -> str:
        return self.key.split("::")[-1] + (f"[{self.variant}]" if self.variant else "")


def parametrized_over(
    module: types.ModuleType, cls: type, argvalues: object, supplied: frozenset[str] = frozenset()
) -> Iterator[UpstreamTest]:
    """Each method of ``cls`` parametrized over ``argvalues`` (peft's list of all methods / configs / cases).

    The method's other parametrize marks are expanded into variants, except those over arguments in ``supplied``
    (e.g. peft's list of Hub model ids, which the caller replaces).
    """
    for name, method in sorted(vars(cls).items()):
        if not name.startswith("test_") or not callable(method):
            continue
        marks = [m for m in getattr(method, "pytestmark", []) if m.name == "parametrize"]
        if not any(m.args[1] is argvalues for m in marks):
            continue
        # pytestmark lists the decorators bottom-up; the variant id follows the source order
        others = [m for m in reversed(marks) if m.args[1] is not argvalues and not supplied & set(_argnames(m))]
        key = f"{module.__name__.split('.')[-1]}::{cls.__name__}::{name}"
        for combination in itertools.product(*(_mark_values(m) for m in others)):
            values = tuple(item for part in combination for item in part)
            variant = "-".join(_value_id(n, v) for n, v in values)
            yield UpstreamTest(key, variant, cls, method, values)


def _argnames(mark: pytest.Mark) -> list[str]:
    names = mark.args[0]
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


def _mark_values(mark: pytest.Mark) -> list[tuple[tuple[str, Any], ...]]:
    names = _argnames(mark)
    rows = []
    for value in mark.args[1]:
        value = getattr(value, "values", value)  # pytest.param(...)
        row = value if len(names) > 1 else (value,)
        rows.append(tuple(zip(names, row, strict=True)))
    return rows


def _value_id(name: str, value: object) -> str:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, bool):  # a bare True / False would not say which flag it is
        return f"{name}={value}"
    return str(value)


def call_upstream(test: UpstreamTest, instance: object, request: pytest.FixtureRequest, **given: Any) -> None:
    """Call ``test`` on ``instance`` with ``given`` arguments, its variant values and pytest's builtin fixtures."""
    arguments = dict(test.values)
    arguments.update(given)
    for name in list(inspect.signature(test.method).parameters)[1:]:
        if name not in arguments:
            arguments[name] = request.getfixturevalue(name)  # tmp_path, recwarn, monkeypatch, ...
    test.method(instance, **arguments)


def delegates_to_common_check(method: Callable[..., Any]) -> bool:
    """Whether an upstream test method just runs one of PeftCommonTester's ``_test_*`` checks."""
    return "self._test_" in inspect.getsource(method)
