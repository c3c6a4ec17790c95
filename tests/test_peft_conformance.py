"""peft's own generic test checks, run against the FPT method.

peft tests every tuning method with the same generic checks: ``PeftCommonTester``'s ``_test_*`` methods
(``tests/testing_common.py``: save/load in safetensors and pickle, ``low_cpu_mem_usage``, merging, deleting,
disabling and unloading adapters, training and gradient checkpointing, dtypes, ...), the tests in
``tests/test_custom_models.py``, ``tests/test_config.py`` and ``tests/test_seq_classifier.py`` that are parametrized
over peft's list of all methods, and the model/layer status tests of ``tests/test_tuners_utils.py``. A method that
passes them behaves like a built-in one wherever peft, transformers or the Hub touch it. This module runs those very
checks, taken from the source distribution of the installed peft version (fetched from PyPI on first use and cached
in ``.cache/peft-src/``, see ``tests/peft_suite.py``), on FPT:

- ``test_common_check`` / ``test_custom_model_check`` / ``test_status_check``: tiny GPT-2, BERT and Llama sequence
  classifiers (saved to disk, standing in for peft's Hub model ids) x FPT's two input modes, "token"
  (``FPTConfig(task_type="SEQ_CLS", input_vocab_size=20)``, the model takes ``input_ids``) and "feature"
  (``FPTConfig(task_type="SEQ_CLS", input_dim=12)``, the model takes ``inputs_embeds``). peft adapts its checks to a
  model family by subclassing its test class with other inputs; so does this module (``peft_suite.harness_classes``).
- ``test_config_check``: the config checks of ``test_config.py``, per input mode.
- ``test_config_class_check``: the checks of ``test_custom_models.py`` that take a config class and build their own
  small custom models (``target_modules=[...]``), e.g. ``requires_grad`` after ``from_pretrained(is_trainable=...)``.
- ``TestFPTModelAndLayerStatus``: peft's ``get_model_status`` / ``get_layer_status`` tests on their own custom
  models, with ``LoraConfig(target_modules=...)`` replaced by ``FPTConfig(target_modules=...)``.

Every upstream check that cannot apply to FPT is skipped in one place, ``NOT_APPLICABLE``, with its reason. The
adaptations are listed next to it: ``ADAPTED_KWARGS`` (other FPTConfig settings where a check's premise needs them),
``SAME_WIDTH`` (feature-mode checks that also run the base model on the inputs), ``TENSOR_OUTPUT`` (checks that
compare outputs as tensors), and ``peft_suite.install_patches``, which holds the one place where new FPT adapters are
perturbed, as peft creates identity-at-init methods with ``init_weights=False``: FPT's copied norms start equal to the
base. A check that peft's own code skips for FPT fails here instead, so that every skip has a reason in this file
(only peft's "requires a hardware accelerator" marks skip on their own). ``test_every_upstream_check_is_classified``
fails when a peft upgrade brings a ``PeftCommonTester`` check that this module neither runs nor lists, or renames one
that is listed; the parametrized upstream tests are found automatically.

Needs the test dependencies of peft's test modules (``diffusers``, ``parameterized``; see ``peft_suite``) and, on
first run, PyPI. Takes about two minutes on two CPU cores.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from peft import get_peft_model

from fpt_peft import FPTConfig

from . import peft_suite
from .peft_suite import FAMILIES, MODES, UpstreamTest

# Fetches and imports peft's test modules; fails (does not skip) this module when that is impossible.
UP = peft_suite.load_upstream()
SEQ_CLS_HARNESS, CUSTOM_HARNESS = peft_suite.harness_classes(UP)
PeftCommonTester = UP.testing_common.PeftCommonTester

_NO_MERGE_AND_UNLOAD = (
    "merge_and_unload must return the plain base model, but in feature mode the new Linear input layer (input_dim "
    "-> hidden) has no counterpart in it, so no base model can take the features (merge_adapter is checked)."
)
_NOT_IDENTITY_AT_INIT = (
    "asserts that a fresh adapter leaves the output unchanged; FPT's new input layer (a new vocabulary or a Linear "
    "on features) replaces the base embedding, so a fresh FPT adapter never equals the base (cf. peft's exemption "
    "for PaRa); disabling is checked by testing_common::_test_disable_adapter."
)
_ONE_MERGED_ADAPTER = (
    "merges two adapters into the base at once; FPT adapters are trained copies that replace modules, so, as with "
    "LN tuning, only one adapter can be merged at a time."
)
_LORA_EXPECTATIONS = (
    "its expected values are LoRA's (module type names like 'lora.Linear', LoRA parameter counts, 'LoraModel', "
    "'LORA'), not properties of the status machinery."
)
_NEEDS_HUB = "loads a model or adapter from the Hugging Face Hub, which the tests cannot reach."
_OTHER_METHOD = "does not involve FPT: it checks another method (or no adapter at all)."
_LORA_OPTION = "uses a LoraConfig option that FPTConfig does not have ({})."
_STATUS = "test_tuners_utils::TestModelAndLayerStatus::"

# Keys: "<upstream file>::<check>" for PeftCommonTester's checks, "<upstream file>::<class>::<test>" for tests,
# optionally with "[<variant>]" (a parametrization of the upstream test) and/or "@token" / "@feature" (one mode).
NOT_APPLICABLE: dict[str, str] = {
    # ------------------------------------------------------------------ testing_common.py (PeftCommonTester)
    "testing_common::_test_merge_layers_multi": _ONE_MERGED_ADAPTER,
    "testing_common::_test_mixed_adapter_batches": (
        "peft's check skips every config but LoRA's and RoAD's, and it generates, which sequence classifiers cannot; "
        "FPT's adapter_names (forward and generate) is checked by tests/test_tuner_correctness.py."
    ),
    "testing_common::_test_generate_with_mixed_adapter_batches_and_beam_search": (
        "peft's check skips every config but LoRA's; sequence classifiers do not generate."
    ),
    "testing_common::_test_generate": "sequence classifiers have no generate().",
    "testing_common::_test_generate_pos_args": "sequence classifiers have no generate().",
    "testing_common::_test_generate_half_prec": "sequence classifiers have no generate().",
    "testing_common::_test_training_layer_indexing": "FPTConfig has no layers_to_transform (peft skips it then).",
    "testing_common::_test_training_prompt_learning_tasks": "checks the prompt encoder of prompt-learning methods.",
    "testing_common::_test_weighted_combination_of_adapters": "add_weighted_adapter is LoRA / IA3 arithmetic.",
    "testing_common::_test_weighted_combination_of_adapters_lora": "helper of the LoRA add_weighted_adapter check.",
    "testing_common::_test_weighted_combination_of_adapters_ia3": "helper of the IA3 add_weighted_adapter check.",
    "testing_common::_test_adding_multiple_adapters_with_bias_raises": "FPTConfig has no bias option.",
    "testing_common::_test_lora_conversion": (
        "converts additive adapters (W + delta) to LoRA; FPT replaces modules, so supports_lora_conversion() is "
        "False and the check would return without checking anything."
    ),
    "testing_common::_test_merge_layers@feature": _NO_MERGE_AND_UNLOAD,
    "testing_common::_test_merge_layers_fp16@feature": _NO_MERGE_AND_UNLOAD,
    "testing_common::_test_merge_layers_nan@feature": _NO_MERGE_AND_UNLOAD,
    "testing_common::_test_safe_merge@feature": _NO_MERGE_AND_UNLOAD,
    "testing_common::_test_prepare_for_training@feature": (
        "calls the input embedding on input_ids; in feature mode there are none (the Linear input layer is applied "
        "to inputs_embeds)."
    ),
    "testing_common::_test_passing_input_embeds_works@feature": (
        "needs input_ids to make inputs_embeds from; feature mode always passes inputs_embeds."
    ),
    # ------------------------------------------------------------------ test_custom_models.py::TestPeftCustomModel
    "test_custom_models::TestPeftCustomModel::test_disable_adapters": _NOT_IDENTITY_AT_INIT,
    "test_custom_models::TestPeftCustomModel::test_disable_adapters_with_merging": _NOT_IDENTITY_AT_INIT,
    "test_custom_models::TestPeftCustomModel::test_disable_adapter_with_bias_warns": "LoRA / BOFT bias options.",
    "test_custom_models::TestPeftCustomModel::test_forward_float16@feature": _NO_MERGE_AND_UNLOAD,
    "test_custom_models::TestPeftCustomModel::test_forward_bfloat16@feature": _NO_MERGE_AND_UNLOAD,
    "test_custom_models::TestPeftCustomModel::test_forward_float16_no_autocast@feature": _NO_MERGE_AND_UNLOAD,
    "test_custom_models::TestPeftCustomModel::test_forward_bfloat16_no_autocast@feature": _NO_MERGE_AND_UNLOAD,
    # ------------------------------------------------------------------ test_config.py::TestPeftConfig
    "test_config::TestPeftConfig::test_from_pretrained": _NEEDS_HUB,
    "test_config::TestPeftConfig::test_from_pretrained_cache_dir": _NEEDS_HUB,
    "test_config::TestPeftConfig::test_save_pretrained_with_runtime_config": _NEEDS_HUB,
    # ------------------------------------------------------------------ test_tuners_utils.py::TestModelAndLayerStatus
    _STATUS + "test_module_type_small": _LORA_EXPECTATIONS,
    _STATUS + "test_module_type_large": _LORA_EXPECTATIONS,
    _STATUS + "test_adapter_model_type_small": _LORA_EXPECTATIONS,
    _STATUS + "test_adapter_model_type_large": _LORA_EXPECTATIONS,
    _STATUS + "test_peft_types_small": _LORA_EXPECTATIONS,
    _STATUS + "test_peft_types_large": _LORA_EXPECTATIONS,
    _STATUS + "test_nb_params_small": _LORA_EXPECTATIONS,
    _STATUS + "test_nb_params_large": _LORA_EXPECTATIONS,
    _STATUS + "test_model_status_with_modules_to_save": _LORA_EXPECTATIONS,
    _STATUS + "test_model_with_injected_layers": _LORA_EXPECTATIONS,
    _STATUS + "test_merge_adapters_large": _ONE_MERGED_ADAPTER,
    _STATUS + "test_model_merged_adapters_large": _ONE_MERGED_ADAPTER,
    _STATUS + "test_requires_grad_irregular": "injects LoRA's lora_embedding_A / lora_embedding_B into a LoRA layer.",
    _STATUS + "test_model_requires_grad_model_irregular": (
        "injects LoRA's lora_embedding_A / lora_embedding_B into a LoRA layer."
    ),
    _STATUS + "test_with_trainable_tokens": _LORA_OPTION.format("trainable_token_indices"),
    _STATUS + "test_model_enabled_irregular_with_trainable_tokens": _LORA_OPTION.format("trainable_token_indices"),
    _STATUS + "test_model_active_adapters_with_trainable_tokens_irregular": _LORA_OPTION.format(
        "trainable_token_indices"
    ),
    _STATUS + "test_model_requires_irregular_with_trainable_tokens": _LORA_OPTION.format("trainable_token_indices"),
    _STATUS + "test_model_status_with_trainable_tokens": _LORA_OPTION.format("trainable_token_indices"),
    _STATUS + "test_target_parameters": _LORA_OPTION.format("target_parameters"),
    _STATUS + "test_target_parameters_and_target_modules": _LORA_OPTION.format("target_parameters"),
    _STATUS + "test_model_target_parameters": _LORA_OPTION.format("target_parameters"),
    _STATUS + "test_model_target_parameters_and_target_modules": _LORA_OPTION.format("target_parameters"),
    _STATUS + "test_base_model_type_transformers_automodel": _NEEDS_HUB,
    _STATUS + "test_transformers_model": _NEEDS_HUB,
    _STATUS + "test_transformer_model_without_adapter_raises": _NEEDS_HUB,
    _STATUS + "test_prefix_tuning": _NEEDS_HUB,
    _STATUS + "test_adaption_prompt": _NEEDS_HUB,
    _STATUS + "test_loha_model": _OTHER_METHOD,
    _STATUS + "test_vera_model": _OTHER_METHOD,
    _STATUS + "test_mixed_model_raises": _OTHER_METHOD,
    _STATUS + "test_vanilla_model_raises": _OTHER_METHOD,
}

_HEAD_IS_MODULES_TO_SAVE = (
    "with task_type='SEQ_CLS' peft wraps the classifier head as modules_to_save, which this check does not expect "
    "(peft runs it for models without a task head, or skips it for configs with modules_to_save); it runs with "
    "task_type=None, i.e. the same FPT adapter without the trained head."
)
# Checks whose premise FPT meets only with other settings: {key: (extra FPTConfig kwargs, why)}.
ADAPTED_KWARGS: dict[str, tuple[dict[str, Any], str]] = {
    # expects gradients on the method's weights and none elsewhere, but the head has them too
    "testing_common::_test_training_gradient_checkpointing": ({"task_type": None}, _HEAD_IS_MODULES_TO_SAVE),
    # activates two adapters at once, which modules_to_save refuses
    "test_custom_models::TestPeftCustomModel::test_active_adapter": ({"task_type": None}, _HEAD_IS_MODULES_TO_SAVE),
    # a modules_to_save head is never "merged", so get_model_status says "irregular" (for LoRA as well)
    _STATUS + "test_model_merged_adapters_small": ({"task_type": None}, _HEAD_IS_MODULES_TO_SAVE),
    "testing_common::_test_prepare_for_training": (
        {"train_input": False},
        "the check asserts that the input embedding's output needs no grad until enable_input_require_grads(); "
        "FPT trains its new input layer by default (peft skips the check for trainable tokens for that reason), so "
        "it runs with the input layer frozen.",
    ),
}

# Checks that run the base model on the adapter's inputs (disabled / unloaded / deleted adapters). In feature mode the
# base takes inputs_embeds of its own width only, so these use input_dim = hidden size; all others use FEATURE_DIM.
SAME_WIDTH = {
    "testing_common::_test_disable_adapter",
    "testing_common::_test_unload_adapter",
    "testing_common::_test_delete_adapter",
    "testing_common::_test_delete_inactive_adapter",
    "test_custom_models::TestPeftCustomModel::test_save_load_roundtrip",
}

# Checks that compare model outputs as tensors (peft runs them on models that return tensors or generate); they use
# the custom-model harness, whose classifiers return their logits (peft_suite.LogitsSequenceClassifier).
TENSOR_OUTPUT = {"testing_common::_test_disable_adapter"}

# PeftCommonTester's checks: (check, variant id, extra arguments). Each runs on every family x mode.
COMMON_CHECKS: list[tuple[str, str, dict[str, Any]]] = [
    ("_test_model_attr", "", {}),
    ("_test_adapter_name", "", {}),
    ("_test_prepare_for_training", "", {}),
    ("_test_load_model_low_cpu_mem_usage", "", {}),
    ("_test_save_pretrained", "", {}),
    ("_test_save_pretrained", "pickle", {"safe_serialization": False}),
    ("_test_save_pretrained_selected_adapters", "", {}),
    ("_test_save_pretrained_selected_adapters", "pickle", {"safe_serialization": False}),
    ("_test_save_pretrained_adapter_name_substring", "", {}),
    ("_test_from_pretrained_config_construction", "", {}),
    ("_test_load_multiple_adapters", "", {}),
    ("_test_add_adapter_no_autocast_adapter_dtype", "float16", {"dtype": torch.float16}),
    ("_test_add_adapter_no_autocast_adapter_dtype", "bfloat16", {"dtype": torch.bfloat16}),
    ("_test_merge_layers_fp16", "", {}),
    ("_test_merge_layers_nan", "", {}),
    ("_test_merge_layers", "", {}),
    ("_test_merge_layers_multi", "", {}),
    ("_test_merge_layers_is_idempotent", "", {}),
    ("_test_safe_merge", "", {}),
    ("_test_mixed_adapter_batches", "", {}),
    ("_test_generate_with_mixed_adapter_batches_and_beam_search", "", {}),
    ("_test_generate", "", {}),
    ("_test_generate_pos_args", "", {"raises_err": False}),
    ("_test_generate_half_prec", "", {}),
    ("_test_training", "", {}),
    ("_test_inference_safetensors", "", {}),
    ("_test_training_layer_indexing", "", {}),
    ("_test_training_gradient_checkpointing", "reentrant", {"use_reentrant": True}),
    ("_test_training_gradient_checkpointing", "non_reentrant", {"use_reentrant": False}),
    ("_test_peft_model_device_map", "", {}),
    ("_test_training_prompt_learning_tasks", "", {}),
    ("_test_delete_adapter", "", {}),
    ("_test_delete_inactive_adapter", "", {}),
    ("_test_delete_unknown_adapter_raises", "", {}),
    ("_test_unload_adapter", "", {}),
    ("_test_weighted_combination_of_adapters", "", {}),
    ("_test_weighted_combination_of_adapters_lora", "", {}),
    ("_test_weighted_combination_of_adapters_ia3", "", {}),
    ("_test_disable_adapter", "", {}),
    ("_test_adding_multiple_adapters_with_bias_raises", "", {}),
    ("_test_passing_input_embeds_works", "", {"test_name": "fpt"}),
    ("_test_lora_conversion", "", {}),
    ("_test_get_base_model_state_dict", "", {}),
]

# Tests parametrized over peft's lists of all methods / configs / cases, found in the upstream modules.
SEQ_CLS_TESTS = [
    t
    for t in peft_suite.parametrized_over(
        UP.test_seq_classifier,
        UP.test_seq_classifier.TestSequenceClassificationModels,
        UP.test_seq_classifier.ALL_CONFIGS,
        supplied=frozenset({"model_id"}),
    )
    if not peft_suite.delegates_to_common_check(t.method)
]
CUSTOM_MODEL_TESTS = list(
    peft_suite.parametrized_over(
        UP.test_custom_models, UP.test_custom_models.TestPeftCustomModel, UP.test_custom_models.TEST_CASES
    )
)
CONFIG_TESTS = list(
    peft_suite.parametrized_over(UP.test_config, UP.test_config.TestPeftConfig, UP.test_config.ALL_CONFIG_CLASSES)
)
CONFIG_CLASS_TESTS = [
    test
    for cls in vars(UP.test_custom_models).values()
    if isinstance(cls, type) and cls.__name__.startswith("Test")
    for test in peft_suite.parametrized_over(UP.test_custom_models, cls, UP.test_custom_models.ALL_PEFT_CONFIG_CLASSES)
]
# get_model_status checks of a one-adapter model ("small_model") whose expected values hold for any model.
STATUS_CHECKS = [
    "test_model_enabled_small",
    "test_model_disabled_small",
    "test_model_active_adapters_small",
    "test_model_merged_adapters_small",
    "test_model_requires_grad_model_small",
    "test_model_available_adapters_small",
    "test_model_devices_all_cpu_small",
]


def _not_applicable(key: str, variant: str = "", mode: str = "") -> str | None:
    """The reason from NOT_APPLICABLE for a check (variant patterns may use ``*``), or None."""
    names = [f"{key}[{variant}]", key] if variant else [key]
    for pattern, reason in NOT_APPLICABLE.items():
        pattern_name, _, pattern_mode = pattern.partition("@")
        if pattern_mode and pattern_mode != mode:
            continue
        regex = ".*".join(re.escape(part) for part in pattern_name.split("*"))
        if any(re.fullmatch(regex, name) for name in names):
            return reason
    return None


def _params(entries: list[tuple[str, str, Any]], grid: bool = False, modes: bool = False) -> list[Any]:
    """pytest params (entry[, family][, mode]) per (key, variant, entry), skipped with their NOT_APPLICABLE reason."""
    params = []
    for key, variant, entry in entries:
        test_id = key.split("::")[-1] + (f"[{variant}]" if variant else "")
        families = FAMILIES if grid else ("",)
        for family in families:
            for mode in MODES if grid or modes else ("",):
                reason = _not_applicable(key, variant, mode)
                marks = [pytest.mark.skip(reason=f"not applicable to FPT: {reason}")] if reason else []
                values = tuple(v for v in (entry, family, mode) if v != "")
                param_id = "-".join(part for part in (test_id, family, mode) if part)
                params.append(pytest.param(*values, marks=marks, id=param_id))
    return params


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return peft_suite.save_tiny_models(tmp_path_factory.mktemp("fpt-conformance-models"))


@pytest.fixture(autouse=True)
def _fpt_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    peft_suite.install_patches(monkeypatch, UP)


def _harness(cls: type, key: str, mode: str, model_id: str) -> Any:
    width = peft_suite.hidden_size(model_id) if mode == "feature" and key in SAME_WIDTH else peft_suite.FEATURE_DIM
    return cls(mode, input_dim=width)


def _kwargs(harness: Any, key: str) -> dict[str, Any]:
    kwargs = harness.config_kwargs()
    kwargs.update(ADAPTED_KWARGS.get(key, ({}, ""))[0])
    return kwargs


def _run(check: Callable[[], None]) -> None:
    """Run an upstream check; if peft's own code skips it for FPT, fail: classify it in NOT_APPLICABLE instead."""
    try:
        check()
    except pytest.skip.Exception as exc:
        pytest.fail(f"peft's check skipped itself for FPT ({exc.msg}); list it in NOT_APPLICABLE with a reason.")


# ---------------------------------------------------------------------------------------------- the checks
@pytest.mark.parametrize(
    "entry, family, mode",
    _params([(f"testing_common::{name}", variant, (name, extra)) for name, variant, extra in COMMON_CHECKS], grid=True)
    + _params([(t.key, t.variant, t) for t in SEQ_CLS_TESTS], grid=True),
)
def test_common_check(
    entry: Any, family: str, mode: str, tiny_models: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """PeftCommonTester's checks and the seq-cls tests, on a tiny classifier with an FPT adapter."""
    model_id = tiny_models[family]
    if isinstance(entry, UpstreamTest):
        harness = _harness(SEQ_CLS_HARNESS, entry.key, mode, model_id)
        arguments = {"model_id": model_id, "config_cls": FPTConfig, "config_kwargs": _kwargs(harness, entry.key)}
        _run(lambda: peft_suite.call_upstream(entry, harness, request, **arguments))
        return
    name, extra = entry
    key = f"testing_common::{name}"
    harness = _harness(CUSTOM_HARNESS if key in TENSOR_OUTPUT else SEQ_CLS_HARNESS, key, mode, model_id)
    arguments = {"model_id": model_id, "config_cls": FPTConfig, "config_kwargs": _kwargs(harness, key), **extra}
    _run(lambda: getattr(harness, name)(**arguments))


@pytest.mark.parametrize(
    "test, family, mode",
    _params(
        [(t.key, t.variant, t) for t in CUSTOM_MODEL_TESTS if not peft_suite.delegates_to_common_check(t.method)],
        grid=True,
    ),
)
def test_custom_model_check(
    test: UpstreamTest, family: str, mode: str, tiny_models: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """test_custom_models.py's per-method tests (those not just running a common check) on the classifiers."""
    model_id = tiny_models[family]
    harness = _harness(CUSTOM_HARNESS, test.key, mode, model_id)
    arguments = {
        "test_name": f"FPT {family} {mode}",
        "model_id": model_id,
        "config_cls": FPTConfig,
        "config_kwargs": _kwargs(harness, test.key),
    }
    _run(lambda: peft_suite.call_upstream(test, harness, request, **arguments))


@pytest.mark.parametrize("test, mode", _params([(t.key, t.variant, t) for t in CONFIG_TESTS], modes=True))
def test_config_check(test: UpstreamTest, mode: str, request: pytest.FixtureRequest) -> None:
    """test_config.py's tests for every config class, with FPTConfig of each input mode."""
    mandatory = peft_suite.fpt_kwargs(mode, task_type=None)  # the tests pass task_type themselves
    instance = test.cls()
    _run(lambda: peft_suite.call_upstream(test, instance, request, config_class=FPTConfig, mandatory_kwargs=mandatory))


@pytest.mark.parametrize("test", _params([(t.key, t.variant, t) for t in CONFIG_CLASS_TESTS]))
def test_config_class_check(test: UpstreamTest, request: pytest.FixtureRequest) -> None:
    """test_custom_models.py's tests for every config class: peft's custom models, FPTConfig(target_modules=...)."""
    instance = test.cls()
    _run(lambda: peft_suite.call_upstream(test, instance, request, config_cls=FPTConfig))


@pytest.mark.parametrize(
    "name, family, mode",
    _params([(f"{_STATUS}{name}", "", name) for name in STATUS_CHECKS], grid=True),
)
def test_status_check(name: str, family: str, mode: str, tiny_models: dict[str, str]) -> None:
    """get_model_status checks of test_tuners_utils.py on a classifier with one FPT adapter."""
    key = f"{_STATUS}{name}"
    kwargs = {**peft_suite.fpt_kwargs(mode), **ADAPTED_KWARGS.get(key, ({}, ""))[0]}
    base = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_models[family])
    model = get_peft_model(base, FPTConfig(**kwargs))
    tests = UP.test_tuners_utils.TestModelAndLayerStatus
    _run(lambda: getattr(tests, name)(tests(), small_model=model))


class TestFPTModelAndLayerStatus(UP.test_tuners_utils.TestModelAndLayerStatus):  # type: ignore[misc,name-defined]
    """peft's model/layer status tests on its own custom models, LoraConfig(target_modules=...) -> FPTConfig."""

    @pytest.fixture(autouse=True)
    def _not_applicable(self, request: pytest.FixtureRequest) -> None:
        name = request.node.originalname
        reason = _not_applicable(f"{_STATUS}{name}")
        if reason:
            pytest.skip(f"not applicable to FPT: {reason}")


# ---------------------------------------------------------------------------------------------- bookkeeping
def _known_keys() -> set[str]:
    keys = {f"testing_common::{name}" for name, _, _ in COMMON_CHECKS}
    for test in (*SEQ_CLS_TESTS, *CUSTOM_MODEL_TESTS, *CONFIG_TESTS, *CONFIG_CLASS_TESTS):
        keys.add(test.key)
        if test.variant:
            keys.add(f"{test.key}[{test.variant}]")
    status = UP.test_tuners_utils.TestModelAndLayerStatus
    keys.update(f"{_STATUS}{n}" for n in vars(status) if n.startswith("test_"))
    return keys


def _names_a_check(pattern: str, known: set[str]) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return any(re.fullmatch(regex, key) for key in known)


def test_every_upstream_check_is_classified() -> None:
    """Every PeftCommonTester check runs here or is listed; every key of the tables names a real upstream check."""
    found = {"seq-cls": SEQ_CLS_TESTS, "custom": CUSTOM_MODEL_TESTS, "config": CONFIG_TESTS}
    found["config-class"] = CONFIG_CLASS_TESTS
    empty = [name for name, tests in found.items() if not tests]
    assert not empty, f"found no upstream tests for {empty}: has peft changed how it parametrizes them?"
    checks = {n for n, _ in inspect.getmembers(PeftCommonTester, inspect.isfunction) if n.startswith("_test_")}
    listed = {name for name, _, _ in COMMON_CHECKS}
    assert checks <= listed, f"peft {peft_suite.PEFT_VERSION} has checks this module does not run: {checks - listed}"
    known = _known_keys()
    for table in (NOT_APPLICABLE, ADAPTED_KWARGS, SAME_WIDTH, TENSOR_OUTPUT):
        stale = sorted(k for k in table if not _names_a_check(k.split("@")[0], known))
        assert not stale, f"keys that name no upstream check (renamed or removed in peft?): {stale}"


def test_upstream_sources_match_installed_peft() -> None:
    """The checks come from the source distribution of the installed peft version."""
    tests_dir = Path(UP.testing_common.__file__).parent
    assert tests_dir.parent.name == f"peft-{peft_suite.PEFT_VERSION}"
    assert isinstance(UP.testing_common, types.ModuleType)
