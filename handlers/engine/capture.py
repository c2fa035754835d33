"""Capture the target layer's activation during the one forward pass that predicts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge

from .layers import MapLayout

CHANNELS_FIRST = MapLayout("nchw")


class ActivationCapture:
    """Holds the target layer's output of the latest forward, and reads it as an N x C x H x W map.

    ``detach_prefix=True`` makes the activation a leaf that requires grad, so autograd
    records only what follows the layer (the model's parameters are frozen). Downstream
    modules get a clone, so an in-place op after the layer cannot corrupt the capture.
    Token and channels-last outputs are converted by ``layout``, their gradients too.
    ``copy=False`` skips that clone where the forward is known not to write the output in place
    (``written_in_place``): a full copy of the map saved per call.
    """

    def __init__(self, detach_prefix: bool, layout: MapLayout = CHANNELS_FIRST, copy: bool = True) -> None:
        self.detach_prefix = detach_prefix
        self.layout = layout
        self.copy = copy
        self.activation: torch.Tensor | None = None

    def hook(self, module: nn.Module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"target layer {type(module).__name__} returns {type(output).__name__}, "
                "not a tensor; choose a layer with a single tensor output"
            )
        act = output.detach().requires_grad_(True) if self.detach_prefix else output
        self.activation = act
        return act.clone() if self.copy else act

    def _raw(self) -> torch.Tensor:
        if self.activation is None:
            raise RuntimeError("the target layer was not called during the forward pass")
        return self.activation

    def take(self) -> torch.Tensor:
        """The captured activation as an N x C x H x W map; raises if the layer was not reached."""
        return self.layout.to_nchw(self._raw())

    def gradient(self, outputs: torch.Tensor, seed: torch.Tensor, retain_graph: bool) -> torch.Tensor:
        """The vector-Jacobian product seed . d outputs / d activation, as an N x C x H x W map like
        ``take()``: with a one-hot ``seed``, the gradient of the chosen outputs' sum.

        Where the head starts with a global average pool (the activation's only use is a mean over
        its cells), N x C x 1 x 1 instead: the gradient at the pool's output divided by the cells, the
        value the pool's backward would copy to every cell (bit for bit), which broadcasts. The
        backward then stops at the pool, and the methods compute on C numbers per map, as on the
        pool + linear path (on the default model the pool's broadcast division alone was 2% of a
        prediction).
        """
        activation = self._raw()
        pool = _global_pool(outputs, activation) if self.layout.kind == "nchw" else None
        if pool is not None:
            (pooled,) = torch.autograd.grad(outputs, GradientEdge(pool, 0), seed, retain_graph=retain_graph)
            n, c, h, w = activation.shape
            return pooled.reshape(n, c, 1, 1) / (h * w)
        (grads,) = torch.autograd.grad(outputs, activation, seed, retain_graph=retain_graph)
        return self.layout.to_nchw(grads)


_HEAD_NODES = 64  # graph nodes searched for the activation's uses; past that, the full gradient


def _global_pool(outputs: torch.Tensor, activation: torch.Tensor) -> Node | None:
    """The autograd node of a mean over the last two dims of the N x C x H x W ``activation`` when
    that mean is its only use in the graph of ``outputs``, directly or through the capture's clone
    (a global-average-pool head); else None."""
    uses: dict[tuple[Node, int], list[Node]] = {}  # (node, its output) -> the nodes taking that output
    seen: set[Node] = set()
    stack = [outputs.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if len(seen) > _HEAD_NODES:
            return None
        for child, output in node.next_functions:
            if child is not None:
                uses.setdefault((child, output), []).append(node)
                stack.append(child)
    edge = get_gradient_edge(activation)
    used = uses.get((edge.node, edge.output_nr), [])
    while len(used) == 1 and used[0].name() == "CloneBackward0":  # down the chain of single uses, past clones
        used = uses.get((used[0], 0), [])
    if len(used) != 1 or used[0].name() != "MeanBackward1":
        return None
    mean = used[0]
    # Saved dims may read as unsigned (-1 as 2^64 - 1): both are the same mod 4, the rank.
    dims = {int(d) % 4 for d in getattr(mean, "_saved_dim", ())}
    shape = tuple(getattr(mean, "_saved_self_sym_sizes", ()))
    return mean if dims == {2, 3} and shape == tuple(activation.shape) else None


@contextmanager
def capture_activation(
    layer: nn.Module, detach_prefix: bool, layout: MapLayout = CHANNELS_FIRST, copy: bool = True
) -> Iterator[ActivationCapture]:
    """Hook ``layer`` for the duration of the block; the handle never outlives it."""
    capture = ActivationCapture(detach_prefix, layout, copy)
    handle = layer.register_forward_hook(capture.hook)
    try:
        yield capture
    finally:
        handle.remove()


@contextmanager
def replace_activation(layer: nn.Module, replacement: torch.Tensor) -> Iterator[None]:
    """Make ``layer`` output ``replacement``: evaluates the model's head on a chosen map."""
    handle = layer.register_forward_hook(lambda _m, _i, _o: replacement)
    try:
        yield
    finally:
        handle.remove()


def written_in_place(model: nn.Module, modules: Iterable[nn.Module], example: torch.Tensor) -> frozenset[nn.Module]:
    """The ``modules`` whose output the rest of the forward changes in place (an in-place ReLU
    after the layer, ``x += y`` on it or on a view of it), seen on one probe forward through the
    output's version counter: captures of these layers must copy the output, the others need not."""
    versions: dict[nn.Module, tuple[torch.Tensor, int]] = {}

    def hook(module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            versions[module] = (output, output._version)

    handles = [module.register_forward_hook(hook) for module in set(modules)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return frozenset(module for module, (output, version) in versions.items() if output._version != version)
