"""``QuantizedLinear``: the building block for a method that quantizes its base itself (``quantize_base``).

A subclass stores its weight in its own buffers (codes, scales, offsets ...) and implements
``dequantize()``. Everything else works as for a ``torch.nn.Linear``: PEFT attaches LoRA/DoRA to it
(it *is* a ``Linear``, found by ``target_modules="all-linear"``), ``weight`` reads the dequantized
values, the forward pass multiplies by them, and kbit's memory and bits-per-weight figures count
the buffers as stored. ``replace_linears`` swaps a model's layers for quantized ones and
``dequantize_linears`` swaps them back to plain ``Linear`` layers holding exactly the dequantized
weights, which is what a merge into the dequantized base needs.

Imports torch: import it inside hooks (``from kbit.plugin import QuantizedLinear``), not at the top
of a plugin module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch


class QuantizedLinear(torch.nn.Linear):
    """A ``torch.nn.Linear`` whose weight lives quantized in the subclass's buffers.

    Subclasses call ``super().__init__(linear)`` with the layer they replace (its shape and bias
    are kept; its weight is not) and implement ``dequantize()``.

    ``activations`` (default None: inputs used as they come) names the format a runtime rounds this
    layer's input to before its matmul, e.g. ``"q8_1"``, what llama.cpp's CPU backend does for Q4_1
    weights (``kbit.core.runtime.rounding``; ``activation_format("q4_1")`` gives it). The forward pass
    then multiplies the rounded input, with a straight-through gradient, so the layer trains against
    what the runtime computes. Only this layer's own matmul sees the rounding: a PEFT adapter wrapped
    around it gets the input as it was.
    """

    activations: str | None = None
    _cached_weight: torch.Tensor | None = None

    def __init__(self, linear: torch.nn.Linear, activations: str | None = None) -> None:
        torch.nn.Module.__init__(self)  # not Linear.__init__: there is no full-precision weight to allocate
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.bias = linear.bias
        if activations is not None:
            from kbit.core.runtime.rounding import check_format

            check_format(activations)
            self.activations = activations

    def dequantize(self) -> torch.Tensor:
        """The weight as a float tensor of shape (out_features, in_features)."""
        raise NotImplementedError(f"{type(self).__name__} must implement dequantize()")

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.dequantize()

    def cache_weight(self) -> None:
        """Multiply by a kept copy of ``dequantize()`` from now on: generation runs every layer once per
        new token, and dequantizing each time can cost more than the matmul. Costs a float copy of the
        weight; the stored blocks stay what ``weight``, merges and exports read. Call it once the layer
        is on its device."""
        self._cached_weight = self.dequantize().detach()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.activations is not None:
            from kbit.core.runtime.rounding import fake_quantize_activations

            inputs = fake_quantize_activations(inputs, self.activations)
        weight = (self._cached_weight if self._cached_weight is not None else self.dequantize()).to(inputs.dtype)
        bias = None if self.bias is None else self.bias.to(inputs.dtype)
        return torch.nn.functional.linear(inputs, weight, bias)

    def extra_repr(self) -> str:
        rounding = f", activations={self.activations}" if self.activations is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{rounding}"


def cache_dequantized(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``QuantizedLinear`` keeping its dequantized weight (``cache_weight``): the
    ``prepare_inference`` of a method that quantizes in ``quantize_base``, trading a float copy of the
    weights for generation speed once training is over. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            module.cache_weight()
    return model


def dequantized_copy_fits(layers: Iterable[torch.nn.Module], share: float = 0.25) -> bool:
    """True when ``layers`` (linear layers holding quantized weights) are on the CPU and a float32 copy
    of their weights takes at most ``share`` of the memory free now.

    An accelerator keeps its quantized weights as they are: there memory is what the bits buy, and
    its kernels dequantize at a small cost; a CPU dequantizes in plain code (BENCHMARKS.md, issue 25)."""
    from kbit.core.system.device import DeviceInfo, free_memory_bytes

    chosen = list(layers)
    tensors = [t for layer in chosen for t in (*layer.parameters(recurse=False), *layer.buffers(recurse=False))]
    if not chosen or any(t.device.type != "cpu" for t in tensors):
        return False
    needed = sum(layer.in_features * layer.out_features * 4 for layer in chosen)
    return needed <= share * free_memory_bytes(DeviceInfo.cpu())


@contextlib.contextmanager
def exact_activations(model: torch.nn.Module) -> Iterator[None]:
    """Run every ``QuantizedLinear`` of ``model`` on its input as it comes, for the duration: the runtime's
    activation rounding (``activations``) is switched off and restored afterwards.

    The rounding belongs to the runtime, not to the weights: a merged float model (or transformers'
    reader of a GGUF) computes without it, so a check of the merge compares the weights through this.
    """
    rounded = [module for module in model.modules()
               if isinstance(module, QuantizedLinear) and module.activations is not None]
    formats = [module.activations for module in rounded]
    try:
        for module in rounded:
            module.activations = None
        yield
    finally:
        for module, fmt in zip(rounded, formats):
            module.activations = fmt


def replace_linears(model: torch.nn.Module, make: Callable[[str, torch.nn.Linear], torch.nn.Module],
                    skip: Iterable[str] = ()) -> int:
    """Replace every plain ``Linear`` of ``model`` by ``make(name, layer)``; returns how many.

    transformers' ``Conv1D`` (GPT-2 and its kin, weight stored ``(in, out)``) counts as a linear layer: ``make``
    gets the equivalent ``Linear`` (the transposed weight, the same bias), as transformers' bitsandbytes loading
    swaps it, and a merge turns the dequantized layer back into a ``Conv1D``. The output head
    (``model.get_output_embeddings()``, often tied to the input embeddings) and layers whose name ends with one
    of ``skip`` are left alone.
    """
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skipped = tuple(skip)
    chosen = [(name, module) for name, module in model.named_modules()
              if type(module) in (torch.nn.Linear, Conv1D) and module is not head
              and not any(name == s or name.endswith(f".{s}") for s in skipped)]
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, _as_linear(module) if isinstance(module, Conv1D) else module))
    return len(chosen)


def _as_linear(conv: torch.nn.Module) -> torch.nn.Linear:
    weight = conv.weight.detach()
    linear = torch.nn.Linear(weight.shape[0], weight.shape[1], bias=conv.bias is not None, device=weight.device,
                             dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if conv.bias is not None:
            linear.bias.copy_(conv.bias.detach())
    linear.requires_grad_(conv.weight.requires_grad)
    return linear


def dequantize_linears(model: torch.nn.Module, dtype: torch.dtype | None = None,
                       weight_of: Callable[[torch.nn.Linear], torch.Tensor | None] | None = None) -> torch.nn.Module:
    """Replace every ``QuantizedLinear`` of ``model`` by a plain ``Linear`` with its dequantized weight
    (in ``dtype``, else the dequantized weight's own).

    ``weight_of`` widens this to another backend's quantized layers: it gets each ``Linear`` (a
    subclass included) and returns its dequantized weight, or None to leave the layer alone, e.g.
    ``lambda m: m.qweight.dequantize() if hasattr(m, "qweight") else None`` for optimum-quanto.
    """
    if weight_of is None:
        weight_of = lambda module: module.dequantize() if isinstance(module, QuantizedLinear) else None
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for name, module in linears:
        weight = weight_of(module)
        if weight is None:
            continue
        weight = weight.detach()
        plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                device=weight.device, dtype=dtype or weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        model.set_submodule(name, plain)
    return model
