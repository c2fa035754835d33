"""The explanation engine against Captum, on real torchvision architectures (random weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedGradCam, LayerGradCam
from torch import nn

from handlers.engine import Explainer, Job, TargetLayerError
from handlers.serving.response import predictions

SIDE = 112  # small inputs keep the suite fast; discovery is size-independent
SIZE = (SIDE, SIDE)

DISCOVERED = {
    "resnet18": "layer4",
    "googlenet": "inception5b",
    "densenet121": "features",
    "squeezenet1_1": "classifier.2",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
    "vgg11_bn": "features",
}


def images(n: int, *size: int, seed: int = 1) -> torch.Tensor:
    """``n`` seeded random images of ``size`` (height, width; one side: square; default SIZE)."""
    shape = SIZE if not size else (size[0], size[-1])
    return torch.randn((n, 3, *shape), generator=torch.Generator().manual_seed(seed))


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("arch,layer", sorted(DISCOVERED.items()))
def test_discovers_last_spatial_block(explainer_for, arch, layer):
    assert explainer_for(arch, SIDE).layer_name == layer


@pytest.mark.parametrize(
    "arch,cam",
    [
        ("resnet18", True),
        ("googlenet", True),
        ("efficientnet_b0", True),
        ("densenet121", False),
        ("vgg11_bn", False),
        ("mobilenet_v3_small", False),
        ("squeezenet1_1", False),
    ],
)
def test_cam_fast_path_only_for_pool_linear_heads(explainer_for, arch, cam):
    assert explainer_for(arch, SIDE).uses_cam_fast_path is cam


@pytest.mark.parametrize("arch", ["resnet18", "googlenet", "densenet121", "squeezenet1_1", "vgg11_bn"])
def test_gradcam_equals_captum_layergradcam_with_per_sample_targets(explainer_for, arch):
    explainer = explainer_for(arch, SIDE)
    model = explainer.model
    x = images(3)
    targets = [7, 1, 999]
    results = explainer.explain(x, [Job("gradcam", (t,)) for t in targets])
    ours = torch.stack([r.explanations[0].values for r in results])
    layer = dict(model.named_modules())[explainer.layer_name]
    reference = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True).detach()[:, 0]
    assert [r.explanations[0].target for r in results] == targets
    assert rel_error(ours, reference) < 1e-5


def test_batch_gives_the_same_maps_as_one_by_one(explainer_for):
    explainer = explainer_for("resnet18", SIDE)
    x = images(4)
    jobs = [Job("gradcam", (3,)), Job("guided_gradcam"), Job("gradcam", top_classes=2), Job("none")]
    together = explainer.explain(x, jobs)
    for i, job in enumerate(jobs):
        (alone,) = explainer.explain(x[i : i + 1], [job])
        assert torch.allclose(together[i].probabilities, alone.probabilities, atol=1e-6)
        assert [e.target for e in together[i].explanations] == [e.target for e in alone.explanations]
        for a, b in zip(together[i].explanations, alone.explanations, strict=True):
            assert rel_error(a.values, b.values) < 1e-4


def test_default_targets_are_the_top_predictions_of_the_same_pass(explainer_for):
    explainer = explainer_for("densenet121", SIDE)
    (result,) = explainer.explain(images(1), [Job("gradcam", top_classes=3)])
    assert [e.target for e in result.explanations] == result.probabilities.topk(3).indices.tolist()


def test_a_saturated_model_s_predictions_are_ranked_as_its_explained_targets():
    # Random-weight Inception v3 reaches logit gaps of 1e12: every probability but the top one
    # underflows to 0.0, so ranking them said nothing; the answer's predictions follow the logits,
    # as the targets of top_k_explanations do.
    classifier = nn.Linear(4, 6)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier).eval()
    with torch.no_grad():
        classifier.weight.mul_(1e6)
    explainer = Explainer(model, (16, 16))
    (result,) = explainer.explain(images(1, 16), [Job("gradcam", top_classes=4)])
    assert int((result.probabilities == 0).sum()) >= 4
    answered = predictions(result.probabilities, [str(i) for i in range(6)], 4, result.logits)
    assert [p["index"] for p in answered] == [e.target for e in result.explanations]
    assert [p["probability"] for p in answered][1:] == [0.0] * 3


def test_multiple_targets_equal_separate_explanations(explainer_for):
    explainer = explainer_for("vgg11_bn", SIDE)  # autograd path: one backward per slot
    x = images(2)
    (both, other) = explainer.explain(x, [Job("gradcam", (5, 9)), Job("gradcam", (9,))])
    (five,) = explainer.explain(x[:1], [Job("gradcam", (5,))])
    (nine,) = explainer.explain(x[:1], [Job("gradcam", (9,))])
    assert rel_error(both.explanations[0].values, five.explanations[0].values) < 1e-5
    assert rel_error(both.explanations[1].values, nine.explanations[0].values) < 1e-5
    assert other.explanations[0].target == 9


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn"])
def test_guided_gradcam_equals_captum_where_relus_are_modules(explainer_for, arch):
    explainer = explainer_for(arch, SIDE)
    model = explainer.model
    x = images(2)
    results = explainer.explain(x, [Job("guided_gradcam", (2,)), Job("guided_gradcam", (4,))])
    layer = dict(model.named_modules())[explainer.layer_name]
    reference = GuidedGradCam(model, layer).attribute(x.clone(), target=[2, 4]).detach().abs().amax(dim=1)
    ours = torch.stack([r.explanations[0].values for r in results])
    assert ours.shape == (2, *SIZE)
    assert rel_error(ours, reference) < 1e-5


class FunctionalReluNet(nn.Module):
    """ReLUs called as functions, as in GoogLeNet, Inception3 and DenseNet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_guided_backprop_is_applied_to_functional_relus():
    torch.manual_seed(0)
    model = FunctionalReluNet().eval()
    x = torch.randn(1, 3, 32, 32)
    explainer = Explainer(model, (32, 32), target_layer="conv2")
    (ours,) = explainer.explain(x, [Job("guided_gradcam", (1,))])
    # Captum hooks only nn.ReLU modules, so here it returns gradient x Grad-CAM.
    captum = GuidedGradCam(model, model.conv2).attribute(x.clone(), target=1).detach().abs().amax(dim=1)[0]
    xg = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(xg)[0, 1], xg)
    cam = LayerGradCam(model, model.conv2).attribute(x, target=1, relu_attributions=True).detach()
    plain_times_cam = (plain * F.interpolate(cam, size=(32, 32), mode="nearest")).abs().amax(dim=1)[0]
    assert rel_error(captum, plain_times_cam) < 1e-5
    assert rel_error(ours.explanations[0].values, plain_times_cam) > 0.05


def test_no_hook_or_mode_outlives_a_call(explainer_for):
    explainer = explainer_for("resnet18", SIDE)
    model = explainer.model
    for method in ("gradcam", "guided_gradcam", "none"):
        explainer.explain(images(2), [Job(method), Job(method, top_classes=2)])
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert not torch.overrides._get_current_function_mode_stack()
    assert not any(p.requires_grad for p in model.parameters())


def test_results_are_detached_from_any_graph(explainer_for):
    explainer = explainer_for("vgg11_bn", SIDE)
    (result,) = explainer.explain(images(1), [Job("guided_gradcam")])
    assert result.explanations[0].values.grad_fn is None and not result.explanations[0].values.requires_grad
    assert result.probabilities.grad_fn is None


def test_wrong_target_layer_names_candidates(random_model):
    with pytest.raises(TargetLayerError, match=r"'layer9' does not exist.*candidates.*layer4"):
        Explainer(random_model("resnet18"), SIZE, target_layer="layer9")
    with pytest.raises(TargetLayerError, match=r"'fc' outputs 1 x 1000, not a spatial map"):
        Explainer(random_model("resnet18"), SIZE, target_layer="fc")


def test_explicit_middle_layer_is_explained_at_its_resolution(random_model):
    explainer = Explainer(random_model("resnet18"), SIZE, target_layer="layer3")
    (result,) = explainer.explain(images(1), [Job("gradcam")])
    assert not explainer.uses_cam_fast_path
    assert tuple(result.explanations[0].values.shape) == (SIDE // 16, SIDE // 16)


def test_out_of_range_target_and_unknown_method_raise(explainer_for):
    explainer = explainer_for("resnet18", SIDE)
    with pytest.raises(ValueError, match=r"outside 0\.\.999"):
        explainer.explain(images(1), [Job("gradcam", (1000,))])
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        explainer.explain(images(1), [Job("lime")])


class TokenNet(nn.Module):
    """A patch embedding followed by token layers, like a vision transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 8, stride=8)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        tokens = self.mix(self.patch(x).flatten(2).transpose(1, 2))
        return self.head(tokens.mean(1))


def test_token_layers_are_laid_on_the_patch_grid():
    explainer = Explainer(TokenNet().eval(), (32, 32))
    assert explainer.layer_name == "mix" and not explainer.uses_cam_fast_path
    (result,) = explainer.explain(images(1, 32), [Job("gradcam", (1,))])
    values = result.explanations[0].values
    assert tuple(values.shape) == (4, 4) and values.max() > 0


class ChannelsLastStages(nn.Module):
    """A patch embedding, then stages that work on N x H x W x C maps, as Swin and ConvNeXt blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 24, 4, stride=4)
        self.norm = nn.LayerNorm(24)
        self.mlp = nn.Linear(24, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)  # N x H x W x C from here on
        x = self.mlp(self.norm(x))
        return self.head(x.mean((1, 2)))


@pytest.mark.parametrize("size", [(32, 32), (32, 64), (48, 24)])
def test_channels_last_layers_are_permuted_to_maps(size):
    explainer = Explainer(ChannelsLastStages().eval(), size, target_layer="mlp")
    (result,) = explainer.explain(images(1, *size), [Job("gradcam", (0,))])
    assert tuple(result.explanations[0].values.shape) == (size[0] // 4, size[1] // 4)
    assert explainer.layer_name == Explainer(ChannelsLastStages().eval(), size).layer_name == "mlp"


class WindowedTokens(nn.Module):
    """Attention over windows, as Swin or GC ViT blocks: a projection of windows x tokens x C, then merged back."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)  # 8 x 8 patches of a 32 px image
        self.window_proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        n = x.shape[0]
        windows = self.patch(x).reshape(n, 8, 2, 4, 2, 4).permute(0, 2, 4, 3, 5, 1).reshape(n * 4, 16, 8)
        return self.head(self.window_proj(windows).reshape(n, 64, 8).mean(1))


def test_a_windowed_output_is_no_map_of_the_image():
    # windows x tokens x C looks like 4 x 4 patch tokens per window; at batch 2 its first axis is 8
    # rows, not 2 images (the activations of such a layer used to fail with a 500 IndexError).
    explainer = Explainer(WindowedTokens().eval(), (32, 32))
    assert "window_proj" not in explainer.layer_names and explainer.layer_name == "patch"
    with pytest.raises(TargetLayerError, match="'window_proj' outputs 4 x 16 x 8, not a spatial map"):
        Explainer(WindowedTokens().eval(), (32, 32), target_layer="window_proj")


class TwoTokenStreams(nn.Module):
    """Two patch sizes, each a token stream with a class token, as CrossViT's branches (8 x 8 and 4 x 4 here)."""

    def __init__(self) -> None:
        super().__init__()
        self.fine_patch = nn.Conv2d(3, 8, 4, stride=4)
        self.coarse_patch = nn.Conv2d(3, 8, 8, stride=8)
        self.fine_mix = nn.Linear(8, 8)
        self.coarse_mix = nn.Linear(8, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        patches = [self.fine_patch(x), self.coarse_patch(x)]  # both embeddings first, as CrossViT does
        streams = []
        for patch, mix in zip(patches, (self.fine_mix, self.coarse_mix), strict=True):
            tokens = patch.flatten(2).transpose(1, 2)
            tokens = mix(torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1))
            streams.append(tokens.mean(1))
        return self.head(torch.cat(streams, dim=1))


def test_every_token_stream_is_laid_on_its_own_patch_grid():
    # The fine stream's 65 tokens are its own 8 x 8 grid plus a class token; only the last patch
    # embedding's grid (4 x 4) used to count, so such a layer was no map and could not be named.
    explainer = Explainer(TwoTokenStreams().eval(), (32, 32), target_layer="fine_mix")
    (result,) = explainer.explain(images(1, 32), [Job("gradcam", (1,))])
    assert tuple(result.explanations[0].values.shape) == (8, 8)
    assert explainer.explained.layers["coarse_mix"].shape[2:] == (4, 4)


def test_swin_is_explained_at_its_last_stage_turned_channels_first(random_model):
    """Swin's stages are N x H x W x C; its final permute back to N x C x H x W comes last, so it is chosen."""
    assert Explainer(random_model("swin_t"), (224, 224)).layer_name == "permute"
    stage = Explainer(random_model("swin_t"), (224, 224), target_layer="features.7")
    (result,) = stage.explain(images(1, 224), [Job("gradcam", (3,))])
    assert tuple(result.explanations[0].values.shape) == (7, 7)
