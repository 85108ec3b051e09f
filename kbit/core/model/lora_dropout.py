"""LoRA's input dropout without keeping the dropped input for the backward pass.

PEFT computes a LoRA layer's update as ``lora_B(lora_A(dropout(x)))``. Training keeps, per adapted
layer, torch's dropout noise (on a CPU a float tensor the size of ``x``: ``x * noise`` saves it) and
the dropped input (``lora_A`` saves it for its weight gradient), while ``x`` itself is already kept
by the base layer. On SmolLM2-135M with r=16 on every linear layer that is ~200 MB of a ~500 MB
step, 40% of the activations.

``fuse_lora_dropout`` gives each plain LoRA layer's ``A`` the dropout itself: it keeps the input it
is given (the base layer's, so no new memory) and a one-byte keep mask, and recomputes the dropped
input in the backward pass (one elementwise product). The dropout is the same (each element kept
with probability ``1 - p`` and scaled by ``1 / (1 - p)``, a fresh mask per call, drawn as
``keep_mask`` says), the parameters and their names are untouched, so saving, loading, merging and
resuming are PEFT's as before. Layers PEFT computes
differently (DoRA and other variants, whose forward reads the dropout module), and calls under
autocast, keep PEFT's own path.

Imported lazily (imports torch).
"""

from __future__ import annotations

from typing import Any

import torch


class _DroppedInputLinear(torch.autograd.Function):
    """``dropout(x, p) @ weight.T`` saving ``x`` and a bool mask instead of the dropped input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(x, keep, weight)
        ctx.scale = scale
        return torch.nn.functional.linear((x * keep).mul_(scale), weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, keep, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight.to(grad.dtype)).mul_(keep).mul_(ctx.scale)
        if ctx.needs_input_grad[1]:
            dropped = (x * keep).mul_(ctx.scale).reshape(-1, x.shape[-1])
            grad_weight = (grad.reshape(-1, grad.shape[-1]).t() @ dropped.to(grad.dtype)).to(weight.dtype)
        return grad_x, grad_weight, None


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A bool mask keeping each element with probability ``1 - p``, and the scale ``1 / (1 - p)`` for it.

    On a CPU torch's ``bernoulli_`` draws one double per element, serially (MKL's vectorized
    generator serves only Intel CPUs), a large share of a LoRA step. There each element is instead
    one 16-bit quarter of a 64-bit draw from torch's own generator (so seeds and resumed runs
    reproduce it) compared with ``p`` rounded to 1/65536; the scale uses that rounded ``p``, so the
    dropped input's expectation stays the input's. Elsewhere ``bernoulli_``.
    """
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p), 1.0 / (1.0 - p)
    count = shape.numel()
    dropped = round(p * 65536)
    draws = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-2**63, None)
    keep = draws.view(torch.int16)[:count].view(shape) >= dropped - 32768
    return keep, 65536 / (65536 - dropped)


class DropoutLoraA(torch.nn.Linear):
    """A LoRA ``A`` layer that applies its layer's input dropout itself (see the module docstring).

    Outside training, with p=0, with a bias or under autocast it is the plain ``nn.Linear`` after
    ``nn.functional.dropout`` that PEFT would have run. In training, a layer in a ``SharedInput``
    group computes through the group.
    """

    dropout_p: float = 0.0
    shared: SharedInput | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.dropout_p
        if not self.training or p == 0.0:
            return super().forward(x)
        if self.bias is not None or torch.is_autocast_enabled(x.device.type):
            return super().forward(torch.nn.functional.dropout(x, p, training=True))
        if self.shared is not None:
            return self.shared.output(self, x)
        return _DroppedInputLinear.apply(x, self.weight, p)


# Sibling layers that the model code calls with the very same input tensor (attention's q/k/v, a
# gated MLP's gate/up), by their attribute names in the common architectures.
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"),
                 ("wq", "wk", "wv"), ("w1", "w3"))


class SharedInput:
    """``A`` layers of sibling LoRA layers that are given the very same input tensor: the first of
    them to see an input computes all their products at once, ``dropout(x) @ [A_1; A_2; ...]ᵀ`` (one
    mask, one matmul, one saved input, one input gradient), and each takes its own columns. The
    result is each layer's own product, with one dropout mask for the group.

    Inputs are compared by identity, as the LoRA layers received them (a forward pre-hook notes each
    one; PEFT may cast it to the adapter's dtype, and qat detaches it, before ``A`` sees it). A member
    given another tensor computes alone, so a model that feeds the siblings differently gets the
    plain result. Membership never changes, so gradient checkpointing's recomputation takes the same
    path as the forward pass.
    """

    def __init__(self, members: list[tuple[torch.nn.Module, DropoutLoraA]]) -> None:
        self.members = [a for _, a in members]
        self.received: dict[int, torch.Tensor] = {}
        self.pending: tuple[torch.Tensor, torch.Tensor, dict[int, slice]] | None = None
        self._hooks = []
        for layer, a in members:
            a.shared = self
            self._hooks.append(layer.register_forward_pre_hook(self._note_input(a)))

    def release(self) -> None:
        """Let every member compute alone again (and forget its inputs)."""
        for hook in self._hooks:
            hook.remove()
        for member in self.members:
            member.shared = None
        self.received.clear()
        self.pending = None

    def _note_input(self, a: DropoutLoraA) -> Any:
        def hook(layer: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if layer.training and args and isinstance(args[0], torch.Tensor):
                self.received[id(a)] = args[0]
        return hook

    def output(self, layer: DropoutLoraA, x: torch.Tensor) -> torch.Tensor:
        source = self.received.pop(id(layer), x)
        if self.pending is not None and self.pending[0] is source and id(layer) in self.pending[2]:
            _, out, columns = self.pending
            part = out[..., columns.pop(id(layer))]
            if not columns:
                self.pending = None  # every member took its part: keep no reference to the input
            return part
        if self.pending is not None and self.pending[0] is source:  # taken already: this call is not the group's
            return _DroppedInputLinear.apply(x, layer.weight, layer.dropout_p)
        out = _DroppedInputLinear.apply(x, torch.cat([m.weight for m in self.members]), layer.dropout_p)
        columns, start = {}, 0
        for member in self.members:
            columns[id(member)] = slice(start, start + member.out_features)
            start += member.out_features
        part = out[..., columns.pop(id(layer))]
        self.pending = (source, out, columns)
        return part


def fuse_lora_dropout(model: Any) -> int:
    """Move the input dropout of every plain LoRA layer of ``model`` (a PEFT model) into its ``A``
    layer, and group the ``A`` layers of siblings named in ``SHARED_INPUTS`` (same input width,
    dropout, dtype and adapter) as a ``SharedInput``; returns how many adapter layers changed.
    Idempotent."""
    changed = 0
    for parent in model.modules():
        candidates: dict[tuple[Any, ...], list[tuple[torch.nn.Module, DropoutLoraA]]] = {}
        for child_name, module in parent.named_children():
            lora_a, dropouts = getattr(module, "lora_A", None), getattr(module, "lora_dropout", None)
            if not isinstance(lora_a, torch.nn.ModuleDict) or not isinstance(dropouts, torch.nn.ModuleDict):
                continue
            variants = getattr(module, "lora_variant", {}) or {}
            for name, layer in lora_a.items():
                dropout = dropouts[name] if name in dropouts else None
                if type(layer) is torch.nn.Linear and name not in variants and isinstance(dropout, torch.nn.Dropout) \
                        and dropout.p != 0.0:
                    layer.__class__ = DropoutLoraA  # in place: parameters, hooks and their identity are kept
                    layer.dropout_p = float(dropout.p)
                    dropouts[name] = torch.nn.Identity()
                    changed += 1
                family = next((i for i, names in enumerate(SHARED_INPUTS) if child_name in names), None)
                if type(layer) is DropoutLoraA and layer.shared is None and layer.bias is None and family is not None:
                    key = (family, name, layer.in_features, layer.dropout_p, layer.weight.dtype, layer.weight.device)
                    candidates.setdefault(key, []).append((module, layer))
        for members in candidates.values():
            if len(members) > 1:
                SharedInput(members)
    return changed
