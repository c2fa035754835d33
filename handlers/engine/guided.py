"""Guided backpropagation for every ReLU form: modules, functional and in-place calls.

Captum's GuidedBackprop hooks only ``nn.ReLU`` modules, so ``F.relu`` (GoogLeNet,
Inception3, DenseNet) and ``nn.ReLU6`` silently give the plain gradient, and its hook
handles accumulate on the object. Here a TorchFunctionMode, active only during the
forward, keeps each ReLU a native op and hooks its backward node: while the switch is
armed the hook drops the negative gradients the ReLU's own backward passes (the guided
rule: the two masks commute), in place on the tensor that backward has just made, so
the rule costs one in-place pass and no allocation; while disarmed it changes nothing.
In-place calls stay in place (``x.relu_()`` used as a statement must still change ``x``),
so every method predicts exactly the same. Nothing is registered on the model, and the
hooks die with the graph, so nothing outlives the call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class GuideSwitch:
    """Whether backward passes through guided ReLUs use the guided rule right now."""

    def __init__(self) -> None:
        self.armed = False

    def guide(self, grad: torch.Tensor) -> torch.Tensor | None:
        """Gradient hook on a ReLU's output: keep only positive gradients while armed."""
        return grad.clamp_min(0) if self.armed else None

    def guide_node(
        self, grad_inputs: tuple[torch.Tensor | None, ...], _grad_outputs: tuple[torch.Tensor | None, ...]
    ) -> tuple[torch.Tensor | None, ...] | None:
        """Post-hook of a ReLU's backward node: clamp, in place, the gradient it has just made
        (a new tensor that nothing else holds yet)."""
        if not self.armed:
            return None
        return tuple(grad if grad is None else grad.clamp_min_(0) for grad in grad_inputs)


_INPLACE_RELU_FUNCS = {F.relu_, torch.relu_, torch.Tensor.relu_}
_RELU_FUNCS = {F.relu, torch.relu, torch.Tensor.relu, *_INPLACE_RELU_FUNCS}
# Where a function takes an ``inplace`` flag positionally: F.relu(x, inplace), F.hardtanh(x, lo, hi, inplace).
_INPLACE_ARG = {F.relu: 1, F.relu6: 1, F.hardtanh: 3}
# Activations guided backprop is not defined for: counted so a model load can say so.
_UNGUIDED_FUNCS = {F.silu, F.gelu, F.hardswish, F.mish, F.elu, F.leaky_relu, F.selu}
# Every function the mode looks at; any other call (convolutions, norms, tensor methods) passes straight through.
_WATCHED_FUNCS = {*_RELU_FUNCS, F.relu6, F.hardtanh, F.hardtanh_, *_UNGUIDED_FUNCS}
# Backward nodes whose only output is the fresh gradient of the ReLU's input (out of place or in place).
_GUIDED_NODES = {"ReluBackward0", "HardtanhBackward0"}


def _relu6_bounds(func, args: tuple, kwargs: dict) -> float | None:
    """The upper bound when ``func(*args)`` is ReLU6-like (hardtanh from 0), else None."""
    if func is F.relu6:
        return 6.0
    if func in (F.hardtanh, F.hardtanh_) and kwargs.get("min_val", args[1] if len(args) > 1 else -1.0) == 0.0:
        return float(kwargs.get("max_val", args[2] if len(args) > 2 else 1.0))
    return None


def _in_place(func, args: tuple, kwargs: dict) -> bool:
    """Whether this call modifies its input: an in-place variant, or ``inplace=True``."""
    if func in _INPLACE_RELU_FUNCS or func is F.hardtanh_:
        return True
    position = _INPLACE_ARG.get(func)
    return position is not None and bool(kwargs.get("inplace", args[position] if len(args) > position else False))


class GuidedReLUMode(TorchFunctionMode):
    """Inside this mode, the backward of every ReLU and ReLU6 carries the switch's guided hook.

    In-place calls modify their input as they would without the mode; their backward node is
    the same ReLU backward, hooked the same way.
    """

    def __init__(self, switch: GuideSwitch) -> None:
        super().__init__()
        self.switch = switch
        self.guided_calls = 0
        self.unguided_calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _WATCHED_FUNCS:
            return func(*args, **kwargs)
        high = _relu6_bounds(func, args, kwargs)
        in_place = _in_place(func, args, kwargs)
        if func in _RELU_FUNCS:
            out = torch.relu_(args[0]) if in_place else torch.relu(args[0])
        elif high is not None:
            out = F.hardtanh(args[0], 0.0, high, inplace=in_place)
        else:
            if func in _UNGUIDED_FUNCS:
                self.unguided_calls[func.__name__] = self.unguided_calls.get(func.__name__, 0) + 1
            return func(*args, **kwargs)
        self.guided_calls += 1
        if out.requires_grad:
            node = out.grad_fn
            if node is not None and node.name() in _GUIDED_NODES:
                node.register_hook(self.switch.guide_node)
            else:  # e.g. an in-place call on a view, whose node is the view's: guide the output's gradient
                out.register_hook(self.switch.guide)
        return out
