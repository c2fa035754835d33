"""Back-propagate token-wise blocks only for the tokens the prediction reads.

After a ViT's target layer (its last block's first norm) the head reads only the class token,
yet the block's MLP runs on every token, and the head-only backward multiplies every patch
token's zero gradient through its weight matrices: more than half of that backward (ViT-B/16).
At load, one probe backward finds the modules after the target layer whose output gradient is
zero outside a few token rows, and a probe forward keeps those that are token-wise (a row of
their output depends on the same row of their input only) and contain a matrix product. While
explaining, such a module's output keeps the values of its full pass, and gradients reach its
input through a recomputation of the read rows only: the same numbers, a fraction of the work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers import LayerRecord

# A row recomputed alone vs the same row of the full pass: equal up to float rounding.
_RTOL, _ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class RowLimit:
    """A token-wise module whose output gradient can be non-zero only at ``rows`` (token indices)."""

    name: str
    module: nn.Module
    rows: torch.Tensor


class _ValuesOfFullPass(torch.autograd.Function):
    """Forward: the rows as the full pass computed them; backward: the gradient goes to the recomputation."""

    @staticmethod
    def forward(ctx: Any, full_rows: torch.Tensor, recomputed: torch.Tensor) -> torch.Tensor:
        return full_rows.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


class _Limiter:
    """The forward hook of one RowLimit; ``busy`` keeps the hook out of its own recomputation."""

    def __init__(self, limit: RowLimit) -> None:
        self.limit = limit
        self.busy = False

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor | None:
        if self.busy or len(inputs) != 1 or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        rows = self.limit.rows
        self.busy = True
        try:
            recomputed = module(inputs[0][:, rows])
        finally:
            self.busy = False
        full = output.detach()
        limited = full.clone()
        limited[:, rows] = _ValuesOfFullPass.apply(full[:, rows], recomputed)
        return limited


@contextmanager
def limit_rows(limits: tuple[RowLimit, ...]) -> Iterator[None]:
    """Inside the block, the ``limits`` modules back-propagate through their read rows only."""
    handles = [limit.module.register_forward_hook(_Limiter(limit)) for limit in limits]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _has_matrix_product(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Linear, nn.Conv1d)) for m in module.modules())


def _token_wise(module: nn.Module, given: torch.Tensor, output: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether the read rows of ``module``'s output come from the same rows of its input only:
    recomputed alone they match, and changing every other input row leaves them as they were."""
    others = torch.ones(given.shape[1], dtype=torch.bool, device=given.device)
    others[rows] = False
    changed = given.clone()
    changed[:, others] = changed[:, others] * 0.5 + 1.0
    try:
        with torch.inference_mode():
            alone = module(given[:, rows])
            moved = module(changed)
    except (RuntimeError, ValueError, IndexError, TypeError):
        return False
    return (
        isinstance(alone, torch.Tensor)
        and alone.shape == output[:, rows].shape
        and torch.allclose(alone, output[:, rows], rtol=_RTOL, atol=_ATOL)
        and isinstance(moved, torch.Tensor)
        and torch.allclose(moved[:, rows], output[:, rows], rtol=_RTOL, atol=_ATOL)
    )


def find_row_limits(
    model: nn.Module, layer: nn.Module, records: list[LayerRecord], example: torch.Tensor
) -> tuple[RowLimit, ...]:
    """The outermost token-wise modules after ``layer`` whose output gradient misses some token rows."""
    names = [r.name for r in records]
    start = next(i for i, r in enumerate(records) if r.module is layer) + 1
    candidates = {
        r.name: r.module
        for r in records[start:]
        if r.output_shape is not None
        and len(r.output_shape) == 3
        and r.output_shape[1] > 1
        and _has_matrix_product(r.module)
        and not any(m is layer for m in r.module.modules())
    }
    if not candidates:
        return ()
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    gradients: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def detach_layer(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output.detach().requires_grad_(True)

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1  # a module called twice may be read at other rows each time
            if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
                seen[name] = (inputs[0].detach(), output.detach())
                if output.requires_grad:
                    output.register_hook(lambda grad: gradients.__setitem__(name, grad.detach()))

        return hook

    read: list[torch.Tensor] = []
    heads = [r.module for r in records[start:] if isinstance(r.module, nn.Linear) and len(r.output_shape or ()) == 2]
    handles = [layer.register_forward_hook(detach_layer)]
    handles += [module.register_forward_hook(record(name)) for name, module in candidates.items()]
    # What every head reads (a DeiT has two), so heads initialised to zero (torchvision's ViT) still count.
    handles += [head.register_forward_pre_hook(lambda _m, inputs: read.append(inputs[0])) for head in heads]
    try:
        with torch.enable_grad():
            logits = model(example)
            generator = torch.Generator().manual_seed(0)
            objective = sum(
                ((t * torch.randn(t.shape, generator=generator).to(t)).sum() for t in [*read, logits]),
                start=torch.zeros((), device=logits.device),
            )
            if objective.requires_grad:
                objective.backward()
    finally:
        for handle in handles:
            handle.remove()
    found: list[RowLimit] = []
    for name in sorted(seen, key=names.index, reverse=True):  # outermost (completed last) first
        if name not in gradients or calls[name] > 1 or any(name.startswith(f"{f.name}.") for f in found):
            continue
        reached = gradients[name].abs().amax(dim=(0, 2)).nonzero().flatten()
        given, output = seen[name]
        if 0 < len(reached) < output.shape[1] and _token_wise(candidates[name], given, output, reached):
            found.append(RowLimit(name, candidates[name], reached))
    return tuple(sorted(found, key=lambda limit: names.index(limit.name)))
