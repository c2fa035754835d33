"""Token-wise blocks after a ViT's target layer back-propagate only the tokens the head reads.

The head-only backward of Grad-CAM on a ViT runs through the last block; its MLP works on every
token, but only the class token (plus a distillation token in DeiT) reaches the prediction.
The engine finds such modules at load and recomputes only the read rows with gradients: maps
and predictions must be exactly those of the full backward, for every gradient-CAM method.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from handlers.engine import METHODS, Explainer, Job
from handlers.engine.methods.gradient_cams import GradientCam

timm = pytest.importorskip("timm")

GRADIENT_CAMS = [name for name, method in METHODS.items() if isinstance(method, GradientCam) and name != "cam"]


def small_vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=6
    )
    torch.nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision starts the head at zero
    return model.eval()


def without_limits(explainer: Explainer) -> Explainer:
    twin = Explainer.__new__(Explainer)
    twin.__dict__.update(explainer.__dict__)
    twin.explained = dataclasses.replace(explainer.explained, row_limits=())
    return twin


def test_the_last_block_mlp_of_a_vit_is_limited_to_the_class_token():
    explainer = Explainer(small_vit(), (32, 32))
    assert explainer.layer_name == "encoder.layers.encoder_layer_2.ln_1"
    limits = explainer.explained.row_limits
    assert [(limit.name, limit.rows.tolist()) for limit in limits] == [("encoder.layers.encoder_layer_2.mlp", [0])]


@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_maps_and_predictions_equal_the_full_backward(method):
    explainer = Explainer(small_vit(), (32, 32))
    full = without_limits(explainer)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    jobs = [Job(method, targets=(i, (i + 2) % 6)) for i in range(4)]
    limited, reference = explainer.explain(images, jobs), full.explain(images, jobs)
    plain = explainer.explain(images, [Job("none")] * 4)
    assert any(e.values.abs().max() > 0 for r in reference for e in r.explanations)
    for a, b, c in zip(limited, reference, plain, strict=True):
        assert torch.equal(a.probabilities, b.probabilities)  # the values of the full pass, bit for bit
        # nn.MultiheadAttention's fused path serves inference mode only: float rounding apart
        assert torch.allclose(a.probabilities, c.probabilities, atol=1e-6)
        for x, y in zip(a.explanations, b.explanations, strict=True):
            assert torch.allclose(x.values, y.values, rtol=1e-5, atol=1e-6 * float(y.values.abs().max()))


def test_deit_reads_its_class_and_distillation_tokens():
    """Its two heads read two tokens; the attention's output projection is token-wise too."""
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64).eval()
    limits = Explainer(model, (64, 64)).explained.row_limits
    assert {limit.name: limit.rows.tolist() for limit in limits} == {
        "blocks.11.attn.proj": [0, 1],
        "blocks.11.mlp": [0, 1],
    }


def test_a_head_that_averages_every_token_is_not_limited():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, global_pool="avg").eval()
    assert Explainer(model, (64, 64)).explained.row_limits == ()


def test_deit_maps_equal_the_full_backward():
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64).eval()
    explainer = Explainer(model, (64, 64))
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    jobs = [Job("gradcam", targets=(i, 500 + i)) for i in range(3)]
    limited, reference = explainer.explain(images, jobs), without_limits(explainer).explain(images, jobs)
    for a, b in zip(limited, reference, strict=True):
        assert torch.equal(a.probabilities, b.probabilities)
        for x, y in zip(a.explanations, b.explanations, strict=True):
            assert torch.allclose(x.values, y.values, rtol=1e-5, atol=1e-6 * float(y.values.abs().max()))


def test_a_module_called_twice_is_not_limited():
    """Its calls may be read at different rows: it keeps the full backward."""
    model = small_vit()
    block = model.encoder.layers[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        x = x + self.mlp(self.ln_2(x))
        return x + self.mlp(self.ln_2(x))

    block.forward = forward.__get__(block)
    limits = Explainer(model, (32, 32)).explained.row_limits
    assert not [limit.name for limit in limits if limit.name.startswith("encoder.layers.encoder_layer_2.mlp")]
