"""The method contract suite: what every method plugin must satisfy, as a pytest base class.

    from kbit.testing import MethodContract

    class TestMyMethod(MethodContract):
        method = "my-method"

Every test goes through the hooks as kbit calls them, on the tiny random model (the
``kbit_tiny_model`` fixture of kbit's pytest plugin, or one of the widths ``tiny_config`` sets), and
every failure says what to fix. The point of the contract is the merge: an adapter with non-zero
weights is attached to the base as the method prepares it, merged as the method's ``merge_policy``
says, and the merged model must give the adapter model's logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kbit.core.model.adapters import attach_adapter
from kbit.core.model.bases import load_base, prepare_for_training
from kbit.core.system.device import DeviceInfo
from kbit.core.errors import ConfigError
from kbit.core.methods.method import Method
from kbit.core.contract.method_info import MergePolicy, MethodInfo
from kbit.core.methods.registry import READY, default_registry
from kbit.core.contract.spec import QuantizationSpec

ADAPTER_MARKERS = ("lora_", "vera_")
HOOK_TESTS = {
    # every hook in kbit/core/contract/hookspecs.py and the contract test that exercises it (a meta-test keeps this complete)
    "describe_method": "test_listed_as_ready",
    "resolve_spec": "test_spec_is_valid_and_round_trips",
    "resolve_for_model": "test_resolve_for_model_settles_the_spec",
    "build_quant_config": "test_quantized_training_quantizes_the_base",
    "quantize_base": "test_quantized_training_quantizes_the_base",
    "dequantize_base": "test_merge_reproduces_the_adapter_model",
    "prepare_model": "test_prepare_model_leaves_only_adapter_trainable",
    "merge_policy": "test_merge_reproduces_the_adapter_model",
    "prepare_inference": "test_prepare_inference_keeps_the_outputs",
    "quantize_model": "test_quantize_model_writes_a_loadable_model",
}
PROMPTS = ["<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n42<|im_end|>\n",
           "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nteal<|im_end|>\n"]


class MethodContract:
    """Subclass as ``TestSomething`` and set ``method`` (and optionally ``distribution``, ``options``,
    ``merge_tolerance``, ``tiny_config``)."""

    method: ClassVar[str] = ""
    # your package's distribution name (as pip knows it): every test then fails unless ``method`` is yours
    distribution: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    merge_tolerance: ClassVar[float] = 1e-3  # max |Δlogit| allowed between the merged and the adapter model
    # make_tiny_model fields for a method the default 64-wide tiny model does not fit (hidden_size=256 …)
    tiny_config: ClassVar[dict[str, Any]] = {}

    @pytest.fixture
    def contract_model(self, request: pytest.FixtureRequest) -> Path:
        """The model folder every test runs on: ``kbit_tiny_model``, or with ``tiny_config`` a tiny model of
        those widths (``kbit_tiny_model_factory``: one per distinct config in a session)."""
        if not self.tiny_config:
            return request.getfixturevalue("kbit_tiny_model")
        return request.getfixturevalue("kbit_tiny_model_factory")(**self.tiny_config)

    @pytest.fixture
    def chosen(self) -> Method:
        return self.method_under_test()

    def method_under_test(self) -> Method:
        """The method under test; fails where kbit refused another claim on its name (the suite would test the
        method kbit kept, not necessarily yours) or, with ``distribution``, where it is not that one's."""
        assert self.method, "set `method = \"your-method\"` on your MethodContract subclass"
        claims = [r for r in default_registry().records() if r.name == self.method]
        refused = [r for r in claims if r.taken_by]
        assert not refused, ("; ".join(f"'kbit methods' refuses method '{self.method}' of {r.distribution} {r.version}: "
                                       f"{r.error}" for r in refused)
                             + "; the suite would test the method kbit kept instead: rename yours")
        method = default_registry().get(self.method)
        assert not self.distribution or method.distribution == self.distribution, (
            f"method '{self.method}' is provided by {method.distribution} {method.version}, not {self.distribution}")
        return method

    @pytest.fixture
    def spec(self, chosen: Method, contract_model: Path) -> QuantizationSpec:
        from transformers import AutoConfig

        spec = chosen.resolve_spec(self.options, DeviceInfo.cpu())
        spec = chosen.resolve_for_model(spec, AutoConfig.from_pretrained(contract_model))
        if spec.adapter is not None and spec.adapter.r == "auto":
            from kbit.core.train.sizing import concrete_adapter_spec

            spec = concrete_adapter_spec(spec, rank=8)
        return spec

    # Description and spec -----------------------------------------------------------------

    def test_listed_as_ready(self, chosen: Method) -> None:
        record = next(r for r in default_registry().records() if r.name == chosen.name)
        assert record.status == READY, f"'kbit methods' lists {chosen.name} as {record.status}: {record.error}"
        assert isinstance(chosen.info, MethodInfo)
        assert chosen.info.summary, "describe_method must return a MethodInfo with a one-line summary"

    def test_defaults_resolve(self, chosen: Method) -> None:
        values = chosen.info.options.resolve({})
        assert set(values) == set(chosen.info.options.names)

    def test_spec_is_valid_and_round_trips(self, chosen: Method, spec: QuantizationSpec) -> None:
        assert spec.method == chosen.name, "resolve_spec must return a spec whose method is the entry-point name"
        again = QuantizationSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec, "the spec must survive kbit.json: keep extras JSON-serialisable and settings typed"

    def test_unknown_option_is_refused(self, chosen: Method) -> None:
        with pytest.raises(ConfigError, match="no_such_option"):
            chosen.resolve_spec({**self.options, "no_such_option": "1"}, DeviceInfo.cpu())

    def test_resolve_for_model_settles_the_spec(self, chosen: Method, contract_model: Path) -> None:
        if not chosen.implements("resolve_for_model"):
            pytest.skip("method has no resolve_for_model hook")
        from transformers import AutoConfig

        spec = chosen.resolve_spec(self.options, DeviceInfo.cpu())
        fitted = chosen.resolve_for_model(spec, AutoConfig.from_pretrained(contract_model))
        assert isinstance(fitted, QuantizationSpec) and fitted.method == chosen.name

    # The base and the adapter -------------------------------------------------------------

    def test_quantized_training_quantizes_the_base(self, chosen: Method, spec: QuantizationSpec,
                                                   contract_model: Path) -> None:
        from transformers.utils.quantization_config import QuantizationConfigMixin

        config = chosen.build_quant_config(spec)
        assert config is None or isinstance(config, QuantizationConfigMixin)
        if chosen.info.quantized_training:
            assert config is not None or chosen.implements("quantize_base"), (
                "MethodInfo says quantized_training=True, but build_quant_config returns None and there is no "
                "quantize_base hook: quantize the base in one of them"
            )
        if chosen.implements("quantize_base"):
            model = load_base(chosen, spec, str(contract_model))
            from kbit.core.model.quantized_linear import QuantizedLinear

            assert any(isinstance(m, QuantizedLinear) for m in model.modules()), (
                "quantize_base left no kbit.plugin.QuantizedLinear layer: replace the quantized Linear layers with "
                "QuantizedLinear subclasses (kbit.plugin.replace_linears) so adapters attach and storage is measured"
            )

    def test_prepare_model_leaves_only_adapter_trainable(self, chosen: Method, spec: QuantizationSpec,
                                                         contract_model: Path) -> None:
        if spec.adapter is None:
            pytest.skip("method trains no adapter")
        import torch

        model = _adapter_model(chosen, spec, contract_model)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable, "no parameter is trainable after attaching the adapter"
        frozen_side = [n for n in trainable if not any(m in n for m in ADAPTER_MARKERS)]
        assert not frozen_side, f"prepare_model must freeze the base; still trainable: {frozen_side[:5]}"
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert torch.isfinite(loss), "the loss of the prepared base with its adapter is not finite"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if p.requires_grad), \
            "no adapter parameter received a gradient"

    # The merge, the contract's point -------------------------------------------------------

    def test_merge_reproduces_the_adapter_model(self, chosen: Method, spec: QuantizationSpec, contract_model: Path,
                                                tmp_path: Path) -> None:
        policy = chosen.merge_policy(spec)
        assert isinstance(policy, MergePolicy)
        if chosen.info.post_training_quantization:
            assert policy.action == "merge", "post-training quantization needs a merged model to quantize"
        if spec.adapter is None or policy.action != "merge":
            pytest.skip(f"merge policy is {policy.action}: {policy.reason}")
        from kbit.core.model.merge import logit_agreement, merged_model
        from kbit.core.model.quantized_linear import exact_activations

        model = _adapter_model(chosen, spec, contract_model, nonzero=True).eval()
        model.save_pretrained(tmp_path / "adapter")
        merged, described = merged_model(chosen, spec, policy, str(contract_model), tmp_path / "adapter")
        # the merge must reproduce the model that was trained, the adapter on the base as quantized for training,
        # whichever base the policy merges into: kbit train's merge check holds every merge to that
        with exact_activations(model):  # a runtime's activation rounding is not part of the weights merged
            agreement = logit_agreement(model, merged, [_batch(contract_model)])
        quantizes = chosen.build_quant_config(spec) is not None or chosen.implements("quantize_base")
        fix = ("merge_policy names base='original', the unquantized base, but the adapter trained on the quantized "
               "one: return base='dequantized' (with a dequantize_base hook where transformers cannot dequantize), or "
               "MergePolicy(action='keep_adapter', ...) where no merged weights reproduce the trained model"
               if policy.base == "original" and quantizes else
               "The merge base must hold exactly the weights the adapter trained on: dequantize_base must return "
               "exactly the weights quantize_base's layers compute with, and the base must be quantized in "
               "build_quant_config or quantize_base, never in prepare_model")
        assert agreement["max_abs_logit_diff"] < self.merge_tolerance, (
            f"merging method '{chosen.name}' into {described} does not reproduce the adapter model: max |Δlogit| "
            f"{agreement['max_abs_logit_diff']:.3g} (tolerance {self.merge_tolerance:g}), top-1 agreement "
            f"{100 * agreement['top1_agreement']:.1f}%. {fix}"
        )
        from kbit.core.model.merge import save_model
        from kbit.core.model.sources import load_causal_lm

        save_model(merged, _tokenizer(contract_model), tmp_path / "merged")
        saved = load_causal_lm(str(tmp_path / "merged"), dtype=policy.dtype)  # as merged/ is deployed and reloaded
        reloaded = logit_agreement(merged, saved, [_batch(contract_model)])
        assert reloaded["max_abs_logit_diff"] < 1e-5, (
            f"the merged model of method '{chosen.name}', saved and loaded again as a {type(saved).__name__}, "
            f"computes other logits (max |Δlogit| {reloaded['max_abs_logit_diff']:.3g}): dequantize_base must return "
            "the architecture's own layer types and weight layout"
        )

    def test_a_kept_adapter_reloads_as_trained(self, chosen: Method, spec: QuantizationSpec, contract_model: Path,
                                               tmp_path: Path) -> None:
        """A method that ships its adapter (``keep_adapter``): saved, then loaded on the base the way ``kbit eval``
        and users load it (the method's base, PEFT's ``from_pretrained``), it computes what was trained."""
        policy = chosen.merge_policy(spec)
        if spec.adapter is None or policy.action == "merge":
            pytest.skip("the adapter is merged: test_merge_reproduces_the_adapter_model checks what ships")
        from peft import PeftModel

        from kbit.core.model.merge import logit_agreement
        from kbit.core.model.quantized_linear import exact_activations

        model = _adapter_model(chosen, spec, contract_model, nonzero=True).eval()
        model.save_pretrained(tmp_path / "adapter")
        reloaded = PeftModel.from_pretrained(load_base(chosen, spec, str(contract_model)), tmp_path / "adapter").eval()
        with exact_activations(model), exact_activations(reloaded):
            agreement = logit_agreement(model, reloaded, [_batch(contract_model)])
        assert agreement["max_abs_logit_diff"] < self.merge_tolerance, (
            f"method '{chosen.name}' keeps its adapter, but saved and loaded again on its base it computes other logits "
            f"(max |Δlogit| {agreement['max_abs_logit_diff']:.3g}, tolerance {self.merge_tolerance:g}): load_base must "
            "give the base the adapter trained on, and prepare_model must not change what the adapter is saved with"
        )

    def test_prepare_inference_keeps_the_outputs(self, chosen: Method, spec: QuantizationSpec,
                                                 contract_model: Path) -> None:
        if not chosen.implements("prepare_inference"):
            pytest.skip("method has no prepare_inference hook")
        import torch

        model = _adapter_model(chosen, spec, contract_model, nonzero=True).eval()
        batch = _batch(contract_model)
        with torch.no_grad():
            before = model(**batch).logits.float()
            with model.disable_adapter():
                without = model(**batch).logits.float()
            after = chosen.prepare_inference(model, spec)(**batch).logits.float()
        change, effect = float((after - before).abs().mean()), float((before - without).abs().mean())
        assert change <= 0.1 * effect + 1e-4, (
            f"prepare_inference changed the adapter model's logits by {change:.3g} on average, "
            f"{100 * change / max(effect, 1e-12):.0f}% of what the adapter itself changes ({effect:.3g}): it may switch "
            "kernels, not the model"
        )

    def test_quantize_model_writes_a_loadable_model(self, chosen: Method, spec: QuantizationSpec,
                                                    contract_model: Path, tmp_path: Path) -> None:
        if not chosen.info.post_training_quantization:
            pytest.skip("method does not quantize after training")
        import torch
        from transformers import AutoModelForCausalLM

        assert chosen.implements("quantize_model"), "post_training_quantization=True needs a quantize_model hook"
        out = tmp_path / "quantized"
        out.mkdir()
        chosen.quantize_model(contract_model, spec, PROMPTS * 4, out)
        model = AutoModelForCausalLM.from_pretrained(out)
        logits = model(**_batch(contract_model)).logits
        assert torch.isfinite(logits).all(), "the quantized model gives non-finite logits"


def _adapter_model(method: Method, spec: QuantizationSpec, model_dir: Path, nonzero: bool = False) -> Any:
    """The base as the method prepares it, with the spec's adapter attached (random non-zero weights if asked);
    refused as ``kbit train`` refuses it (a base nothing quantized, a ``prepare_model`` that changes base weights)."""
    import torch

    base = load_base(method, spec, str(model_dir))
    model = attach_adapter(prepare_for_training(method, spec, method.merge_policy(spec), base), spec)
    if nonzero:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if any(m in name for m in ADAPTER_MARKERS) and parameter.dtype.is_floating_point:
                    noise = torch.randn(parameter.shape, generator=generator) * 0.05
                    parameter.add_(noise.to(parameter.device, parameter.dtype))
    return model


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _batch(model_dir: Path) -> dict[str, Any]:
    tokenizer = _tokenizer(model_dir)
    tokenizer.padding_side = "right"
    return dict(tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False))
