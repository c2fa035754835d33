"""Correct input gradients through batch and instance norms for one-image batches (a PyTorch CPU bug).

torch 2.14's CPU ``batch_norm`` backward (what ``nn.BatchNorm*`` and ``nn.InstanceNorm*`` run)
returns wrong values when the input is contiguous and the incoming gradient is channels-last
with a batch stride that is not the canonical one, which a batch of one image can have: the
batch axis has size 1, so views before it (EfficientFormer's token ``Flat``, a transpose) leave
any stride there. Measured on EfficientFormer-L1: an image's input gradient alone differed from
its gradient in a batch of 3 by more than its own maximum (guided backprop maps 0.7 apart after
max-normalisation); a finite difference agrees with the batched one. While ``one_image_norms``
is active, every norm module called with grad on one image hooks its backward node to make the
gradient it receives contiguous in the input's memory format first, which that kernel computes
right; with more images, or under ``inference_mode``, it changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


def norm_modules(model: nn.Module) -> list[nn.Module]:
    """The model's batch and instance norm modules: those whose backward runs ``batch_norm``'s."""
    return [module for module in model.modules() if isinstance(module, _NormBase)]


def _format(tensor: torch.Tensor) -> torch.memory_format:
    """The memory format the backward kernel reads ``tensor`` in: channels-last only if it is laid out so."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _hook(_module: nn.Module, inputs: tuple, output: object) -> None:
    """Forward hook: on a one-image output that records a backward, make its gradient laid out as the input."""
    if not (isinstance(output, torch.Tensor) and output.grad_fn is not None and output.shape[0] == 1 and inputs):
        return
    layout = _format(inputs[0]) if isinstance(inputs[0], torch.Tensor) else torch.contiguous_format

    def laid_out(grads: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
        return tuple(g if g is None else g.contiguous(memory_format=layout) for g in grads)

    output.grad_fn.register_prehook(laid_out)


@contextmanager
def one_image_norms(norms: list[nn.Module], images: int) -> Iterator[None]:
    """Hook ``norms`` for the forwards in the block when the batch has one image; else nothing."""
    if images != 1 or not norms:
        yield
        return
    handles = [module.register_forward_hook(_hook) for module in norms]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
