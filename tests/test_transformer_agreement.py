"""Our Grad-CAM on vision transformers equals pytorch-grad-cam's, and the default-layer rule holds.

pytorch-grad-cam explains a transformer through a ``reshape_transform`` written here from
each model's own attributes (its prefix tokens and patch grid), independently of the
engine's layouts: token outputs lose their class/distillation/register tokens and are laid
on the patch grid, channels first; channels-last outputs are permuted. Both run on the
layer the engine discovers, with seeded random weights, one image and a batch of 8 with a
different target per image. Inputs are as small as each model allows, to keep the time down.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from handlers.engine import Explainer, Job, TargetLayerError
from handlers.evaluation.agreement import distinct_top_targets

timm = pytest.importorskip("timm")

TOLERANCE = 1e-4  # largest |difference| of the maps, each divided by its maximum
CLASSES = 10
BATCH = 8  # and one image


def _torchvision(arch: str, **kwargs: object) -> Callable[[], nn.Module]:
    """A torchvision builder; a ViT's head (initialised to zeros, so every map would be 0) gets random weights."""

    def build() -> nn.Module:
        model = torchvision.models.get_model(arch, weights=None, num_classes=CLASSES, **kwargs)
        if isinstance(model, torchvision.models.VisionTransformer):
            nn.init.normal_(model.heads.head.weight, std=0.02)
        return model

    return build


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)


@dataclass(frozen=True)
class Subject:
    """A model, its input side, the layer the engine must discover and how that layer's output is laid out.

    ``last_block``: for a ViT, its last block, whose output only passes the prefix tokens on.
    """

    build: Callable[[], nn.Module]
    side: int
    layer: str
    layout: str  # "tokens" (N x T x C), "nhwc" (channels last) or "nchw"
    last_block: str | None = None


SUBJECTS = {
    # torchvision ViTs: B/16 at 112 px (7 x 7 patches), L/16 at 64 px (4 x 4).
    "vit_b_16": Subject(
        _torchvision("vit_b_16", image_size=112),
        112,
        "encoder.layers.encoder_layer_11.ln_1",
        "tokens",
        "encoder.layers.encoder_layer_11",
    ),
    "vit_l_16": Subject(
        _torchvision("vit_l_16", image_size=64),
        64,
        "encoder.layers.encoder_layer_23.ln_1",
        "tokens",
        "encoder.layers.encoder_layer_23",
    ),
    # torchvision's Swin turns its last stage back to channels first ("permute"); MaxViT is channels first.
    "swin_t": Subject(_torchvision("swin_t"), 112, "permute", "nchw"),
    "swin_v2_t": Subject(_torchvision("swin_v2_t"), 112, "permute", "nchw"),
    "maxvit_t": Subject(_torchvision("maxvit_t"), 224, "blocks.3", "nchw"),
    # timm: DeiT (class token), DINOv2 with 4 register tokens (5 prefix tokens, 8 x 8 patches of 14),
    # a ResNet-ViT hybrid, and Swin whose final norm is channels last.
    "deit_tiny_patch16_224": Subject(
        _timm("deit_tiny_patch16_224", img_size=112), 112, "blocks.11.norm1", "tokens", "blocks.11"
    ),
    "vit_small_patch14_reg4_dinov2": Subject(
        _timm("vit_small_patch14_reg4_dinov2", img_size=112), 112, "blocks.11.norm1", "tokens", "blocks.11"
    ),
    "vit_tiny_r_s16_p8_224": Subject(_timm("vit_tiny_r_s16_p8_224"), 224, "blocks.11.norm1", "tokens", "blocks.11"),
    "swin_tiny_patch4_window7_224": Subject(_timm("swin_tiny_patch4_window7_224"), 224, "norm", "nhwc"),
    # Layers the default rule must find past look-alikes: LeViT pools its tokens (14 x 14, 7 x 7,
    # then 4 x 4) with no channels-first map between; CaiT's talking heads are Linear layers on
    # tokens x tokens attention (49 x 49 "images" of 4 channels at 112 px); the class-attention
    # blocks of CaiT and XCiT have q/k/v projections of the stream's width; CoaT calls one
    # convolution per stage from every block of it.
    "levit_128s": Subject(_timm("levit_128s"), 224, "stages", "tokens"),
    "cait_xxs24_224": Subject(_timm("cait_xxs24_224", img_size=112), 112, "blocks_token_only.1.norm1", "tokens"),
    "xcit_tiny_12_p16_224": Subject(
        _timm("xcit_tiny_12_p16_224", img_size=112), 112, "cls_attn_blocks.1.norm1", "tokens"
    ),
    "coat_lite_tiny": Subject(_timm("coat_lite_tiny", img_size=112), 112, "serial_blocks4.1.norm1", "tokens"),
}
VITS = [name for name, subject in SUBJECTS.items() if subject.last_block]


def token_geometry(model: nn.Module, side: int) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, patch grid) from the model's own attributes: timm's, else torchvision's ViT."""
    timm_models = timm.models
    if isinstance(model, timm_models.levit.Levit):  # no prefix; its last stage's attention bias is tokens x tokens
        cells = len(model.stages[-1].blocks[0].attn.attention_bias_idxs)
        return 0, (math.isqrt(cells), math.isqrt(cells))
    if isinstance(model, timm_models.coat.CoaT):  # a class token per stage; the last stage's patch grid
        height, width = model.patch_embed4.grid_size
        return 1, (int(height), int(width))
    if isinstance(model, timm_models.xcit.Xcit):  # a square grid of num_patches
        cells = model.patch_embed.num_patches
        return int(model.num_prefix_tokens), (math.isqrt(cells), math.isqrt(cells))
    if hasattr(model, "num_prefix_tokens"):
        embedding: Any = model.patch_embed
        height, width = embedding.grid_size
        return int(model.num_prefix_tokens), (int(height), int(width))  # type: ignore[arg-type]
    assert isinstance(model, torchvision.models.VisionTransformer)
    return 1, (side // model.patch_size, side // model.patch_size)


def reshape_transform(subject: Subject, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """pytorch-grad-cam's reshape_transform for the subject's layer (None: already channels first)."""
    if subject.layout == "nhwc":
        return lambda output: output.permute(0, 3, 1, 2)
    if subject.layout == "tokens":
        prefix, (height, width) = token_geometry(model, subject.side)

        def tokens_to_grid(output: torch.Tensor) -> torch.Tensor:
            patches = output[:, prefix:, :]
            return patches.reshape(output.shape[0], height, width, output.shape[2]).permute(0, 3, 1, 2)

        return tokens_to_grid
    return None


def reference_gradcam(
    model: nn.Module, layer: str, images: torch.Tensor, targets: list[int], reshape: Callable | None
) -> torch.Tensor:
    """pytorch-grad-cam's GradCAM at the layer's resolution (its cam before resizing and scaling)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class RawGradCAM(pytorch_grad_cam.GradCAM):
        raw: np.ndarray

        def get_cam_image(self, *args, **kwargs) -> np.ndarray:
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    cam = RawGradCAM(model, [dict(model.named_modules())[layer]], reshape_transform=reshape)
    try:
        cam(images, [ClassifierOutputTarget(t) for t in targets])
    finally:
        cam.activations_and_grads.release()
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(np.maximum(np.asarray(cam.raw, dtype=np.float32), 0))  # the ReLU it applies next


@dataclass(frozen=True)
class Agreement:
    """What one subject gave: the discovered layer, and per batch size the largest normalised error."""

    layer: str
    errors: dict[int, float]
    targets: list[int]
    peaks: list[float]  # the reference's map maxima (all > 0, or the comparison means nothing)


def max_normalised(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its maximum (an all-zero map stays zero)."""
    return maps / maps.flatten(1).amax(1).clamp_min(1e-30)[:, None, None]


@functools.cache
def agreement(name: str) -> Agreement:
    """Reference first (it needs the parameters' gradients), then the engine, which freezes the model.

    Batch 1 is the image whose reference map is strongest, so it never compares two all-zero maps.
    """
    subject = SUBJECTS[name]
    torch.manual_seed(0)
    model = subject.build().eval()
    images = torch.randn(BATCH, 3, subject.side, subject.side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = distinct_top_targets(model(images))
    reshape = reshape_transform(subject, model)
    batch = reference_gradcam(model, subject.layer, images, targets, reshape)
    peaks = batch.flatten(1).amax(1)
    strongest = int(peaks.argmax())
    rows = {1: [strongest], BATCH: list(range(BATCH))}
    theirs = {
        1: reference_gradcam(model, subject.layer, images[[strongest]], [targets[strongest]], reshape),
        BATCH: batch,
    }
    explainer = Explainer(model, (subject.side, subject.side))
    errors = {}
    for n, index in rows.items():
        results = explainer.explain(images[index], [Job("gradcam", (targets[i],)) for i in index])
        ours = torch.stack([r.explanations[0].values for r in results]).double()
        assert ours.shape == theirs[n].shape, (ours.shape, theirs[n].shape)
        errors[n] = float((max_normalised(ours) - max_normalised(theirs[n].double())).abs().max())
    return Agreement(explainer.layer_name, errors, targets, peaks.tolist())


@pytest.mark.parametrize("name", SUBJECTS)
def test_gradcam_equals_pytorch_grad_cam_at_batch_1_and_8(name):
    result = agreement(name)
    assert result.layer == SUBJECTS[name].layer
    assert len(set(result.targets)) == BATCH
    # Mostly non-zero maps, so the agreement compares something (with random weights, a class can
    # have no positive evidence at the layer: both maps are then zero, the hybrid has 3 of 8 such).
    assert sum(peak > 0 for peak in result.peaks) >= len(result.peaks) // 2
    for batch, error in result.errors.items():
        assert error <= TOLERANCE, (name, batch, error)


@pytest.mark.parametrize("name", VITS)
def test_a_vit_is_explained_at_its_last_block_s_first_norm_as_its_output_has_zero_patch_gradients(name):
    """The last block only passes its prefix tokens on: its patch tokens get exactly zero gradient."""
    subject = SUBJECTS[name]
    assert subject.last_block is not None
    torch.manual_seed(0)
    model = subject.build().eval()
    gradients: list[torch.Tensor] = []

    def keep_gradient(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.register_hook(gradients.append)

    handle = dict(model.named_modules())[subject.last_block].register_forward_hook(keep_gradient)
    try:
        images = torch.randn(2, 3, subject.side, subject.side, generator=torch.Generator().manual_seed(1))
        model(images)[:, :3].sum().backward()
    finally:
        handle.remove()
    prefix, _ = token_geometry(model, subject.side)
    (gradient,) = gradients
    assert gradient[:, prefix:].abs().max() == 0
    assert gradient[:, :prefix].abs().max() > 0
    first_norm = {"torchvision": "ln_1", "timm": "norm1"}[
        "timm" if hasattr(model, "num_prefix_tokens") else "torchvision"
    ]
    assert agreement(name).layer == f"{subject.last_block}.{first_norm}"


def test_the_last_block_of_a_vit_is_refused_as_a_target_layer():
    subject = SUBJECTS["deit_tiny_patch16_224"]
    torch.manual_seed(0)
    with pytest.raises(TargetLayerError, match="does not reach the prediction"):
        Explainer(subject.build().eval(), (subject.side, subject.side), target_layer=subject.last_block)
