"""The gradient-CAM family: one base, each variant only says how activations and gradients combine.

Every variant needs the target layer's activations A and the gradients dS/dA of each target's
logit. Both come from the forward that predicts: with a verified pool + linear head the
gradient is known without any backward (W[c] / HW everywhere), otherwise autograd records only
the head after the layer (frozen parameters) and one head-only backward runs per target depth.
The formulas are those of pytorch-grad-cam (and Captum's LayerGradCam for Grad-CAM), which the
tests and ``make eval`` check them against.
"""

from __future__ import annotations

import torch

from ..row_limits import limit_rows
from .base import ExplainedModel, Method, MethodError, MethodOutput, MethodParams, Resolver, TargetSlots

_EPS_PLUSPLUS = 1e-6  # pytorch-grad-cam's constants, so maps agree to float precision
_EPS_XGRADCAM = 1e-7


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """sum_k weights[m, k] * A[m, k]: M x h x w, one batched (1 x C) @ (C x hw) product, without an
    M x C x h x w temporary (what einsum runs too, minus its parsing: a tenth of a small model's cost)."""
    m, c, h, w = activations.shape
    if weights.dtype != activations.dtype:
        weights = weights.to(activations.dtype)
    return torch.bmm(weights.unsqueeze(1), activations.reshape(m, c, h * w)).view(m, h, w)


def per_channel(gradients: torch.Tensor) -> torch.Tensor:
    """The gradient as M x C x 1 x 1 where each channel's is the same at every cell, else as it is.

    That is the case whenever a global pool follows the layer (most CNN heads, whatever comes after
    the pool), so on the autograd path a variant whose formula takes several full M x C x h x w
    passes (Grad-CAM++: nine) computes on C numbers per map instead, as on the pool + linear path.
    Checked exactly, by two reductions: a cost the one- and two-pass formulas (HiResCAM, LayerCAM,
    XGrad-CAM) would not win back, so they don't ask.
    """
    if gradients.shape[2:] == (1, 1):
        return gradients
    cells = gradients.flatten(2)
    largest = cells.amax(dim=2)
    return largest.view(*largest.shape, 1, 1) if torch.equal(largest, cells.amin(dim=2)) else gradients


def _cell_means(values: torch.Tensor) -> torch.Tensor:
    """M x C x h x w values averaged over the cells: M x C (a 1 x 1 map is its own mean: a view, no reduction)."""
    return values.flatten(1) if values.shape[2:] == (1, 1) else values.mean(dim=(2, 3))


def _cellwise(gradients: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """sum_k G[m, k] * A[m, k] per cell; a gradient that is the same at every cell (1 x 1) is a weight."""
    if gradients.shape[2:] == (1, 1):
        return weighted_sum(gradients.flatten(1), activations)
    return (gradients * activations).sum(dim=1)


class GradientCam(Method):
    """Maps = ReLU(combine(A, dS/dA)) at the target layer; subclasses define ``combine``."""

    resolution = "layer"
    passes = "1 forward; + 1 head-only backward per target depth unless the head is pool + linear"
    resolves_in_prediction_pass = True  # maps for resolved rows only; the backward is head-only

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """M x h x w map before the ReLU, from M x C x h x w activations and gradients (M x C x 1 x 1
        on the pool + linear path, where the gradient is the same at every cell)."""
        raise NotImplementedError

    def backpropagates(self, model: ExplainedModel) -> bool:
        return model.linear_head is None  # the pool + linear path needs no backward

    def run(self, model: ExplainedModel, images: torch.Tensor, resolve: Resolver, params: MethodParams) -> MethodOutput:
        if model.linear_head is not None:
            head = model.linear_head
            with torch.inference_mode(), model.capture(model.layer, False, model.layout) as capture:
                logits = model.model(images)
                slots = TargetSlots.build(resolve(logits), images.device)
                activations = capture.take()
                activations = activations if slots.one_per_row else activations[slots.rows]
                gradients = head.gradient(slots.targets, activations)
                maps = torch.relu(self.combine(activations, gradients))
            return MethodOutput(logits, slots, maps)
        with (
            torch.enable_grad(),
            model.capture(model.layer, True, model.layout) as capture,
            limit_rows(model.row_limits),
        ):
            logits = model.model(images)
            slots = TargetSlots.build(resolve(logits.detach()), images.device)
            activations = capture.take().detach()
            if slots.one_per_row:  # the usual case: one backward, every row, nothing to gather
                grads = capture.gradient(logits, slots.seed(logits, slots.rows), retain_graph=False)
                maps = torch.relu(self.combine(activations, grads))
            else:
                maps = torch.empty((len(slots.rows), *activations.shape[2:]), device=images.device)
                for j, positions in enumerate(slots.by_depth):
                    seed = slots.seed(logits, positions)
                    grads = capture.gradient(logits, seed, retain_graph=j + 1 < len(slots.by_depth))
                    rows = slots.rows[positions]
                    maps[positions] = torch.relu(self.combine(activations[rows], grads[rows]))
        return MethodOutput(logits.detach(), slots, maps)


class GradCam(GradientCam):
    """Grad-CAM (Selvaraju et al.): channel weights are the spatially averaged gradients."""

    name = "gradcam"
    summary = "Grad-CAM: where the target layer's channels that raise the class score are active"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return weighted_sum(_cell_means(gradients), activations)


class Cam(GradCam):
    """CAM (Zhou et al.): the classifier's weights on the pooled map; only for pool + linear heads,
    where it equals Grad-CAM and costs no backward."""

    name = "cam"
    summary = "CAM: the classifier's weights applied to the last feature map (pool + linear heads only)"
    passes = "1 forward, no backward"

    def available(self, model: ExplainedModel) -> bool:
        return model.linear_head is not None

    def check(self, model: ExplainedModel, params: MethodParams, targets: int) -> None:
        if not self.available(model):
            raise MethodError(
                "method 'cam' needs a global-average-pool + linear head after the target layer, "
                "which this model does not have: use 'gradcam', its generalisation"
            )


class HiResCam(GradientCam):
    """HiResCAM (Draelos & Carin): gradients times activations element-wise, summed over channels."""

    name = "hirescam"
    summary = "HiResCAM: gradient x activation at each cell, so the map follows what the score used"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return _cellwise(gradients, activations)


class GradCamPlusPlus(GradientCam):
    """Grad-CAM++ (Chattopadhay et al.): positive gradients weighted by second/third-order terms."""

    name = "gradcam_plusplus"
    summary = "Grad-CAM++: Grad-CAM weighting positive gradients, better with several instances of a class"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        gradients = per_channel(gradients)
        squared = gradients.square()
        sums = activations.sum(dim=(2, 3), keepdim=True)
        # alpha = g^2 / (2 g^2 + sum(A) g^3 + eps), fused in place: on the autograd path every op is
        # a full M x C x h x w pass. pytorch-grad-cam also zeroes alpha where g == 0; there it is
        # already 0 (0 / eps), and relu(g) zeroes it where g < 0.
        denominator = (2 * squared).addcmul_(sums * squared, gradients).add_(_EPS_PLUSPLUS)
        alpha = squared.div_(denominator).mul_(torch.relu(gradients))
        area = activations.shape[2] * activations.shape[3]  # a sum over cells, also of a 1 x 1 gradient
        return weighted_sum(_cell_means(alpha) * area, activations)


class XGradCam(GradientCam):
    """XGrad-CAM (Fu et al.): gradients weighted by the normalised activations."""

    name = "xgradcam"
    summary = "XGrad-CAM: Grad-CAM with activation-normalised weights (axiom-based)"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        sums = activations.sum(dim=(2, 3), keepdim=True)
        if gradients.shape[2:] == (1, 1):  # the same gradient at every cell: it factors out of the sum
            weights = (gradients * sums / (sums + _EPS_XGRADCAM)).flatten(1)
        else:  # divided per channel after the sum over cells: two full passes, as cheap as per_channel's check
            weights = (gradients * activations).sum(dim=(2, 3)) / (sums.flatten(1) + _EPS_XGRADCAM)
        return weighted_sum(weights, activations)


class LayerCam(GradientCam):
    """LayerCAM (Jiang et al.): positive gradients times activations, element-wise."""

    name = "layercam"
    summary = "LayerCAM: positive gradient x activation at each cell, also meaningful at earlier layers"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return _cellwise(torch.relu(gradients), activations)
