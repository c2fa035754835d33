"""Guided backpropagation for every ReLU form: modules, functional and in-place calls.

Captum's GuidedBackprop hooks only ``nn.ReLU`` modules, so ``F.relu`` (GoogLeNet,
Inception3, DenseNet) and ``nn.ReLU6`` silently give the plain gradient, and its hook
handles accumulate on the object. Here a TorchFunctionMode, active only during the
forward, routes every ReLU call through an autograd function whose backward applies
the guided rule (pass only positive gradients) while the switch is armed. Nothing is
registered on the model, so nothing outlives the call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class GuideSwitch:
    """Whether backward passes through guided ReLUs use the guided rule right now."""

    def __init__(self) -> None:
        self.armed = False


class _GuidedClamp(torch.autograd.Function):
    """clamp(x, low, high) whose backward masks like the clamp and, when armed, drops negative gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float | None, switch: GuideSwitch):
        out = x.clamp(min=low, max=high)
        mask = x > low if high is None else (x > low) & (x < high)
        ctx.save_for_backward(mask)
        ctx.switch = switch
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        if ctx.switch.armed:
            grad = grad.clamp_min(0)
        return grad * mask, None, None, None


_RELU_FUNCS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
# Activations guided backprop is not defined for: counted so a model load can say so.
_UNGUIDED_FUNCS = {F.silu, F.gelu, F.hardswish, F.mish, F.elu, F.leaky_relu, F.selu}


class GuidedReLUMode(TorchFunctionMode):
    """Inside this mode, ReLU and ReLU6 calls become guided-backprop-aware clamps.

    In-place variants return a new tensor: every torchvision model uses the return value.
    """

    def __init__(self, switch: GuideSwitch) -> None:
        super().__init__()
        self.switch = switch
        self.guided_calls = 0
        self.unguided_calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS:
            self.guided_calls += 1
            return _GuidedClamp.apply(args[0], 0.0, None, self.switch)
        if func is F.relu6:
            self.guided_calls += 1
            return _GuidedClamp.apply(args[0], 0.0, 6.0, self.switch)
        if func is F.hardtanh:
            low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
            high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
            if low == 0.0:  # ReLU6 is hardtanh(0, 6)
                self.guided_calls += 1
                return _GuidedClamp.apply(args[0], 0.0, float(high), self.switch)
        if func in _UNGUIDED_FUNCS:
            self.unguided_calls[func.__name__] = self.unguided_calls.get(func.__name__, 0) + 1
        return func(*args, **kwargs)
