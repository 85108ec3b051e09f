"""Quantization-aware LoRA: every adapted layer multiplies by ``W + ΔW`` rounded to a GGUF type's grid.

``AdapterSettings.fake_quant`` names the type (one of ``kbit.core.export.grids.GRID_TYPES``).

- ``train_through_grid(model, grid)`` (a PEFT model, called wherever kbit attaches or loads such an
  adapter): each LoRA layer computes ``round(W + ΔW) @ x`` — the exact rounding of the file type,
  ``round_to_grid`` — with a straight-through gradient into its adapter (the adapter's own path
  carries the gradient and its value cancels: ``y = round(W + ΔW) x + (ΔW x - stop_grad(ΔW x))``).
  The input gradient is the rounded weight's. Every other linear layer except the output head is
  rounded once in place, since the file stores it in that type too.
- ``compute_through_grid(model, on)``: the adapted layers compute in float while ``on`` is False (the
  share of the steps a run trains before the rounding, ``AdapterSettings.fake_quant_after``).
- ``round_merged(model, grid)``: a merged model's linear layers (not the head) rounded the same way.

``ΔW`` is PEFT's ``get_delta_weight`` added to the base weight as PEFT's merge adds it, so the merged
and rounded model is the trained model bit for bit, and a GGUF of that type written from it holds
the same values (each grid is idempotent). The rounded weight is kept between calls while neither
the base nor the adapter changes (generation and the recomputation of gradient checkpointing reuse
it): one float copy of each adapted weight.

PEFT's own QAT path does not fit: peft 0.21 has none for LoRA, and torchao's QAT fake-quantizes the
base weight before the adapter is added, which is not the weight the merged file holds.
Imported lazily (imports torch and peft).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear

from kbit.core.errors import ConfigError
from kbit.core.export.grids import round_to_grid


class GridLoraLinear(LoraLinear):
    """A PEFT LoRA ``Linear`` whose forward multiplies by its merged weight rounded to ``grid``
    (see the module docstring). Saved, loaded, merged and resumed as the PEFT layer it is."""

    grid: str = ""
    through_grid: bool = True  # False: the plain LoRA forward (the float steps before the rounding starts)
    _rounded: tuple[tuple[Any, ...], list[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapters = [name for name in self.active_adapters if name in self.lora_A]
        if self.disable_adapters or self.merged or not adapters or args or kwargs or not self.through_grid:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        weight = self.rounded_weight(adapters)
        bias = None if base.bias is None else base.bias.to(x.dtype)
        result = torch.nn.functional.linear(x, weight.to(x.dtype), bias)
        if torch.is_grad_enabled():
            inputs = x.detach()
            for name in adapters:
                lora_a = self.lora_A[name]
                update = self.lora_B[name](lora_a(self.lora_dropout[name](inputs.to(lora_a.weight.dtype)))) * self.scaling[name]
                result = result + (update - update.detach()).to(result.dtype)
        return result

    def rounded_weight(self, adapters: list[str]) -> torch.Tensor:
        """``round(W + ΔW)`` for the active ``adapters``, kept until the base weight or an adapter changes.

        The adapter matrices are compared by value (a copy is kept: ``r × (in + out)`` numbers, small
        beside the weight) because trainers and loaders also write them through ``.data``, which
        tensor version counters do not see."""
        base = self.get_base_layer()
        factors = [t for name in adapters for t in (self.lora_A[name].weight, self.lora_B[name].weight)]
        key = (tuple(adapters), base.weight.data_ptr(), base.weight._version, tuple(self.scaling[n] for n in adapters))
        if self._rounded is not None and self._rounded[0] == key \
                and all(torch.equal(kept, now) for kept, now in zip(self._rounded[1], factors)):
            return self._rounded[2]
        with torch.no_grad():
            merged = base.weight.detach().clone()
            for name in adapters:
                merged += self.get_delta_weight(name).to(merged.dtype)  # as PEFT's merge adds it
            rounded = round_to_grid(merged, self.grid).to(merged.dtype)
            self._rounded = (key, [t.detach().clone() for t in factors], rounded)
        return rounded


def train_through_grid(model: Any, grid: str) -> Any:
    """Make ``model`` (a PEFT model with plain LoRA adapters) compute through ``grid``; returns ``model``.

    ConfigError when an adapted layer is not a plain LoRA ``Linear`` (DoRA, VeRA, a quantized base
    layer): the rounding needs the float weight ``W + ΔW``.
    """
    head = _output_head(model)
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            base = module.get_base_layer()
            if base is head or module is head:
                continue
            if type(module) not in (LoraLinear, GridLoraLinear) or any(module.use_dora.values()):
                raise ConfigError(f"fake_quant needs plain LoRA adapters; {name} is {type(module).__name__}"
                                  f"{' (DoRA)' if any(module.use_dora.values()) else ''}: use peft_type lora")
            if type(base) is not torch.nn.Linear:
                raise ConfigError(f"fake_quant rounds float torch Linear layers; {name} is a {type(base).__name__} "
                                  "(GPT-2-style Conv1D and quantized layers are not supported)")
            module.__class__ = GridLoraLinear  # in place: parameters, hooks and PEFT's bookkeeping are kept
            module.grid = grid
            module._rounded = None
    for module in _plain_linears(model, head):
        module.weight.data = round_to_grid(module.weight, grid).to(module.weight.dtype)
    return model


def compute_through_grid(model: Any, on: bool) -> None:
    """Switch every adapted layer of ``model`` to computing through its grid (``on``) or in float, as a plain
    LoRA layer on the (unrounded) base weight. The layers the adapter leaves alone stay rounded, as the file
    stores them."""
    for module in model.modules():
        if isinstance(module, GridLoraLinear):
            module.through_grid = on


def round_merged(model: Any, grid: str) -> Any:
    """Round every linear layer of a merged model except the output head to ``grid``, in place; returns it."""
    for module in _plain_linears(model, _output_head(model)):
        module.weight.data = round_to_grid(module.weight, grid).to(module.weight.dtype)
    return model


def _output_head(model: Any) -> Any:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if getter is not None else None


def _plain_linears(model: Any, head: Any) -> list[torch.nn.Linear]:
    """The plain ``Linear`` layers outside any LoRA layer's adapters, not the head. A LoRA layer's base
    layer is excluded (its parent rounds ``W + ΔW``), and so are its ``A``/``B`` matrices."""
    inside: set[int] = set()
    for module in model.modules():
        if isinstance(module, LoraLinear):
            inside.update(id(m) for m in module.modules() if m is not module)
    return [module for module in model.modules()
            if type(module) is torch.nn.Linear and module is not head and id(module) not in inside]
