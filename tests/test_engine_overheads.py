"""The engine's shortcuts for small models give the results of the plain computation they replace."""

from __future__ import annotations

import torch
from torch import nn

from handlers.engine import Explainer, Job
from handlers.engine.capture import capture_activation, replace_activation, written_in_place
from handlers.engine.methods.eigencam import _gram, _top_eigenvectors, principal_projection
from handlers.engine.methods.gradient_cams import GradCamPlusPlus, XGradCam, per_channel


def _projection_by_eigh(activations: torch.Tensor) -> torch.Tensor:
    """The first principal component's projection from a full float64 eigendecomposition, signed as ours."""
    n, c, h, w = activations.shape
    flat = activations.double().reshape(n, c, h * w)
    centred = flat - flat.mean(dim=2, keepdim=True)
    vector = torch.linalg.eigh(centred @ centred.transpose(1, 2))[1][:, :, -1]
    projection = (vector[:, None, :] @ centred).squeeze(1)
    mean_map = flat.mean(dim=1)
    agreement = ((projection - projection.mean(1, keepdim=True)) * (mean_map - mean_map.mean(1, keepdim=True))).sum(1)
    return (projection * torch.where(agreement < 0, -1.0, 1.0)[:, None]).reshape(n, h, w)


def _normalised_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return float(((ours.double() - reference) / scale).abs().max())


def test_power_iteration_projection_equals_a_full_eigendecomposition():
    generator = torch.Generator().manual_seed(0)
    activations = torch.relu(torch.randn((6, 64, 16, 16), generator=generator))
    activations[:, :8] += 3 * torch.rand((6, 8, 1, 1), generator=generator)  # a dominant direction, as trained
    assert _normalised_difference(principal_projection(activations), _projection_by_eigh(activations)) <= 1e-5


def test_equal_top_eigenvalues_and_zero_maps_fall_back_without_nan():
    # Two orthogonal patterns of equal energy: no eigengap, so no power iteration can be trusted;
    # the bound must refuse them and eigh answer. A constant map has a zero Gram matrix.
    gram = torch.diag(torch.tensor([4.0, 4.0, 1.0, 0.5]))[None].repeat(3, 1, 1)
    gram[1] = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5]))
    gram[2] = 0.0
    vectors = _top_eigenvectors(gram)
    assert not vectors.isnan().any()
    assert torch.allclose((gram[1] @ vectors[1]).abs(), 4 * vectors[1].abs(), atol=1e-5)
    assert torch.allclose((gram[0] @ vectors[0]), 4 * vectors[0], atol=1e-5)  # some vector of the top eigenspace


def test_maps_whose_channels_sum_to_zero_are_oriented_by_their_peak_in_any_batch():
    # A LayerNorm output (ViT, Mixer, CrossViT) sums to zero over channels at every position, so the
    # mean-activation rule has nothing to go by; the sign used to follow float rounding and flip
    # with the batch. The largest entry decides instead, the same alone and among batch-mates.
    generator = torch.Generator().manual_seed(1)
    activations = torch.randn((8, 48, 7, 7), generator=generator)
    pattern = torch.rand((8, 1, 7, 7), generator=generator)
    activations[:, :6] += 2 * torch.rand((8, 6, 1, 1), generator=generator) * pattern
    activations -= activations.mean(dim=1, keepdim=True)
    batched = principal_projection(activations)
    for image, projection in zip(activations, batched, strict=True):
        alone = principal_projection(image[None])[0]
        assert _normalised_difference(alone[None], projection[None].double()) <= 1e-5
        assert float(alone.flatten()[alone.abs().argmax()]) > 0


class _InPlaceAfterLayer(nn.Module):
    """A conv layer whose output the forward then rectifies in place, and one whose output it does not touch."""

    def __init__(self) -> None:
        super().__init__()
        self.written = nn.Conv2d(3, 8, 3, padding=1)
        self.untouched = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.written(x)
        x.relu_()
        x = self.untouched(x)
        return self.head(x.mean(dim=(2, 3)) * 2)  # not pool + linear as such: the autograd path


def test_captures_copy_exactly_the_layers_the_forward_writes_in_place():
    model = _InPlaceAfterLayer().eval()
    example = torch.rand(1, 3, 8, 8)
    assert written_in_place(model, [model.written, model.untouched], example) == {model.written}


def test_maps_are_the_same_with_and_without_the_copy_the_probe_saves():
    torch.manual_seed(0)
    model = _InPlaceAfterLayer().eval()
    images = torch.rand(4, 3, 8, 8)
    for layer in ("written", "untouched"):
        explainer = Explainer(model, (8, 8), target_layer=layer)
        probed = explainer.explain(images, [Job("gradcam")] * 4)
        explainer.explained = type(explainer.explained)(**{**vars(explainer.explained), "written_in_place": None})
        copied = explainer.explain(images, [Job("gradcam")] * 4)
        for a, b in zip(probed, copied, strict=True):
            assert torch.equal(a.explanations[0].values, b.explanations[0].values)


def test_input_gradients_leave_the_callers_batch_as_it_was():
    torch.manual_seed(0)
    explainer = Explainer(_InPlaceAfterLayer().eval(), (8, 8), target_layer="untouched")
    plain = torch.rand(2, 3, 8, 8)
    with torch.inference_mode():
        inference = torch.rand(2, 3, 8, 8)
    for images in (plain, inference):
        before = images.clone()
        for method in ("guided_backprop", "guided_gradcam"):
            (result, _) = explainer.explain(images, [Job(method)] * 2)
            assert result.explanations[0].values.shape == (8, 8)
        assert torch.equal(images, before) and not images.requires_grad


def _plusplus_reference(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's Grad-CAM++ weights (grad_cam_plusplus.py) cell by cell, in float64, then the map."""
    a, g = activations.double(), gradients.double()
    sums = a.sum(dim=(2, 3), keepdim=True)
    alpha = g.square() / (2 * g.square() + sums * g.pow(3) + 1e-6)
    alpha = torch.where(g != 0, alpha, 0.0)
    weights = (torch.relu(g) * alpha).sum(dim=(2, 3))
    return torch.relu((weights[:, :, None, None] * a).sum(dim=1))


def test_gradients_equal_at_every_cell_reduce_to_one_per_channel_and_others_stay():
    generator = torch.Generator().manual_seed(0)
    per_cell = torch.randn((3, 5, 1, 1), generator=generator).expand(3, 5, 4, 6).contiguous()
    reduced = per_channel(per_cell)
    assert reduced.shape == (3, 5, 1, 1) and torch.equal(reduced.expand_as(per_cell), per_cell)
    one_cell_off = per_cell.clone()
    one_cell_off[2, 4, 3, 5] += 1e-6
    assert per_channel(one_cell_off) is one_cell_off
    with_nan = per_cell.clone()
    with_nan[0, 0] = float("nan")
    assert per_channel(with_nan) is with_nan


def test_gradcam_plusplus_and_xgradcam_agree_on_a_gradient_equal_at_every_cell_and_on_its_cells():
    generator = torch.Generator().manual_seed(0)
    activations = torch.relu(torch.randn((4, 16, 7, 7), generator=generator))
    per_cell = (torch.randn((4, 16, 1, 1), generator=generator) * 1e-2).expand(4, 16, 7, 7).contiguous()
    varying = per_cell + 1e-3 * torch.randn((4, 16, 7, 7), generator=generator)
    for gradients in (per_cell, varying):
        ours = torch.relu(GradCamPlusPlus().combine(activations, gradients))
        reference = _plusplus_reference(activations, gradients)
        assert _normalised_difference(ours, reference) <= 1e-5
    cellwise = torch.relu(XGradCam().combine(activations, per_cell))
    pooled = torch.relu(XGradCam().combine(activations, per_cell[:, :, :1, :1]))
    assert _normalised_difference(cellwise, pooled.double()) <= 1e-5


def test_gram_from_row_halves_is_the_full_product():
    generator = torch.Generator().manual_seed(0)
    for channels in (1, 2, 7, 64):
        rows = torch.randn((3, channels, 50), generator=generator)
        gram = _gram(rows)
        assert gram.shape == (3, channels, channels)
        assert torch.allclose(gram, rows @ rows.transpose(1, 2), rtol=1e-5, atol=1e-4)


class _Heads(nn.Module):
    """A conv layer and one of several heads on it: a global mean alone, the mean and a second use
    of the same map, or a mean over channels (not a pool)."""

    def __init__(self, head: str) -> None:
        super().__init__()
        self.layer = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.layer(x)
        if self.head == "pool":
            return self.fc(a.mean(dim=(2, 3)))
        if self.head == "pool and max":
            return self.fc(a.mean(dim=(2, 3)) + a.amax(dim=(2, 3)))
        return self.fc(a.mean(dim=1).flatten(1)[:, :6])


def _layer_gradient(model: _Heads, images: torch.Tensor, target: int) -> torch.Tensor:
    with torch.enable_grad(), capture_activation(model.layer, detach_prefix=True) as capture:
        logits = model(images)
        seed = torch.zeros_like(logits)
        seed[:, target] = 1.0
        return capture.gradient(logits, seed, retain_graph=False)


def test_a_global_pool_head_gives_the_per_channel_gradient_bit_for_bit_and_other_heads_the_full_one():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 5, 7)
    for head in ("pool", "pool and max", "mean over channels"):
        model = _Heads(head).eval().requires_grad_(False)
        activation = model.layer(images).detach().requires_grad_(True)
        gradient = _layer_gradient(model, images, target=2)
        with torch.enable_grad(), replace_activation(model.layer, activation):
            (full,) = torch.autograd.grad(model(images)[:, 2].sum(), activation)
        if head == "pool":
            assert gradient.shape == (3, 6, 1, 1)
            assert torch.equal(gradient.expand_as(full), full)
        else:
            assert gradient.shape == full.shape and torch.equal(gradient, full)


def test_autograd_maps_equal_the_pool_plus_linear_maps_bit_for_bit():
    torch.manual_seed(0)
    model = _Heads("pool").eval()
    images = torch.rand(4, 3, 8, 8)
    shortcut, autograd = Explainer(model, (8, 8), "layer"), Explainer(model, (8, 8), "layer", cam_fast_path=False)
    assert shortcut.uses_cam_fast_path and not autograd.uses_cam_fast_path
    for method in ("gradcam", "hirescam", "gradcam_plusplus", "xgradcam", "layercam"):
        jobs = [Job(method, (i % 4,)) for i in range(4)]
        for a, b in zip(shortcut.explain(images, jobs), autograd.explain(images, jobs), strict=True):
            assert torch.equal(a.explanations[0].values, b.explanations[0].values), method
