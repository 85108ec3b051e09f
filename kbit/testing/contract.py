"""The method contract suite: what every method plugin must satisfy, as a pytest base class."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

from kbit.core.adapters import attach_adapter
from kbit.core.device import DeviceInfo
from kbit.core.errors import ConfigError
from kbit.core.method import Method
from kbit.core.method_info import MergePolicy, MethodInfo
from kbit.core.registry import READY, default_registry
from kbit.core.spec import QuantizationSpec
from kbit.testing.tiny import make_tiny_model

ADAPTER_MARKERS = ("lora_", "vera_")


class MethodContract:
    """Subclass as ``TestSomething`` and set ``method`` (and optionally ``options``)."""

    method: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}

    @pytest.fixture
    def chosen(self) -> Method:
        assert self.method, "set `method` on your MethodContract subclass"
        return default_registry().get(self.method)

    @pytest.fixture
    def spec(self, chosen: Method) -> QuantizationSpec:
        return chosen.resolve_spec(self.options, DeviceInfo.cpu())

    @pytest.fixture(scope="class")
    @classmethod  # pytest 9.2 deprecates class-scoped fixtures on instances (removed in pytest 10)
    def tiny_model_dir(cls, tmp_path_factory: pytest.TempPathFactory):
        return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))

    def test_listed_as_ready(self, chosen: Method) -> None:
        record = next(r for r in default_registry().records() if r.name == chosen.name)
        assert record.status == READY, record.error
        assert isinstance(chosen.info, MethodInfo)
        assert chosen.info.summary

    def test_defaults_resolve(self, chosen: Method) -> None:
        values = chosen.info.options.resolve({})
        assert set(values) == set(chosen.info.options.names)

    def test_spec_is_valid_and_round_trips(self, chosen: Method, spec: QuantizationSpec) -> None:
        assert spec.method == chosen.name
        assert QuantizationSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec

    def test_unknown_option_is_refused(self, chosen: Method) -> None:
        with pytest.raises(ConfigError, match="no_such_option"):
            chosen.resolve_spec({**self.options, "no_such_option": "1"}, DeviceInfo.cpu())

    def test_quant_config_type(self, chosen: Method, spec: QuantizationSpec) -> None:
        from transformers.utils.quantization_config import QuantizationConfigMixin

        config = chosen.build_quant_config(spec)
        if chosen.info.quantized_training:
            assert isinstance(config, QuantizationConfigMixin)
        else:
            assert config is None or isinstance(config, QuantizationConfigMixin)

    def test_merge_policy_is_valid(self, chosen: Method, spec: QuantizationSpec) -> None:
        policy = chosen.merge_policy(spec)
        assert isinstance(policy, MergePolicy)
        if chosen.info.post_training_quantization:
            assert policy.action == "merge", "post-training quantization needs a merged model to quantize"

    def test_prepare_model_leaves_only_adapter_trainable(self, chosen: Method, spec: QuantizationSpec, tiny_model_dir) -> None:
        if "adapter" not in spec.extras:
            pytest.skip("method trains no adapter")
        import torch
        from transformers import AutoModelForCausalLM

        from kbit.core.sizing import concrete_adapter_spec

        spec = concrete_adapter_spec(spec, rank=8)
        config = chosen.build_quant_config(spec)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=config, dtype=torch.float32)
        model = attach_adapter(chosen.prepare_model(model, spec), spec)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable, "no parameter is trainable after attaching the adapter"
        frozen_side = [n for n in trainable if not any(m in n for m in ADAPTER_MARKERS)]
        assert not frozen_side, f"non-adapter parameters left trainable: {frozen_side[:5]}"
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if p.requires_grad)

    def test_quantize_model(self, chosen: Method, spec: QuantizationSpec, tiny_model_dir, tmp_path) -> None:
        if not chosen.info.post_training_quantization:
            pytest.skip("method does not quantize after training")
        from transformers import AutoModelForCausalLM

        calibration = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"] * 8
        out = tmp_path / "quantized"
        out.mkdir()
        chosen.quantize_model(tiny_model_dir, spec, calibration, out)
        model = AutoModelForCausalLM.from_pretrained(out)
        assert model(input_ids=__import__("torch").tensor([[5, 6, 7]])).logits.isfinite().all()
