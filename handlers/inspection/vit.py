"""InspectionViT: a small vision transformer for the same inspection task, to test Grad-CAM on transformers.

Built in plain torch (no timm: it is an optional extra) in the usual ViT layout, so the
engine reads it as it reads timm's or torchvision's: a patch embedding (``patch_embed``), a
class token and learned position embeddings, pre-norm ``blocks`` (``norm1`` -> attention ->
``norm2`` -> MLP, each with a residual), a final ``norm`` and a linear ``head`` on the class
token: 203k parameters, 65 tokens (class + an 8 x 8 patch grid at 128 px).

The patch embedding is a convolutional stem (four stride-2 3 x 3 conv stages, then a 1 x 1
projection: torchvision's ``conv_stem_configs``, Xiao et al. 2021) rather than one 16 x 16
stride-16 convolution: with that linear patchify stem the training loss stayed at chance
(1.11 after 3 epochs); with the stem it falls to 0.02 in 10. Patches of 8 px (a 16 x 16 grid,
the CNN's) cost 6x more per step on 2 CPU cores than the 5-minute training budget allows.

Usage: ``python -m handlers.inspection.vit --out handlers/inspection/inspection_vit.pth``
trains it deterministically on CPU with the CNN's data (same generator, sizes and seeds, see
``train.py``) and writes the weights plus a JSON report next to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import CLASSES, INPUT_SIZE
from .train import TrainConfig, train

logger = logging.getLogger(__name__)

VIT_WEIGHTS_FILE = Path(__file__).resolve().parent / "inspection_vit.pth"


@dataclass(frozen=True)
class ViTShape:
    """The architecture's sizes (everything but the weights).

    ``stem``: output channels of the stride-2 3 x 3 conv + BatchNorm + ReLU stages of the patch
    embedding, each halving the side; a 1 x 1 convolution then gives the tokens their ``width``.
    """

    stem: tuple[int, ...] = (16, 32, 64, 64)
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 2

    @property
    def patch(self) -> int:
        """Side in pixels of the image square one token stands for."""
        return 2 ** len(self.stem)


def conv_stem(channels: Sequence[int], width: int) -> nn.Sequential:
    """Stride-2 conv stages, then a 1 x 1 projection to the token width: the patch embedding."""
    layers: list[nn.Module] = []
    in_channels = 3
    for out_channels in channels:
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers, nn.Conv2d(in_channels, width, 1))


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection.

    ``scaled_dot_product_attention`` rather than softmax(q k^T) v written out: on CPU its fused
    kernel is about 5x faster over 257 tokens (it never stores the 257 x 257 weights), which is
    what keeps training within minutes on 2 cores; it is deterministic at a fixed thread count.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v)
        return self.proj(mixed.transpose(1, 2).reshape(n, tokens, width))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class InspectionViT(nn.Module):
    """Patch embedding, class token + position embeddings, ``blocks``, final ``norm``, ``head`` on the class token."""

    def __init__(self, num_classes: int = len(CLASSES), shape: ViTShape = ViTShape()) -> None:
        super().__init__()
        grid = INPUT_SIZE // shape.patch
        self.patch_embed = conv_stem(shape.stem, shape.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, shape.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, shape.width))
        self.blocks = nn.Sequential(*(Block(shape.width, shape.heads, shape.mlp_ratio) for _ in range(shape.depth)))
        self.norm = nn.LayerNorm(shape.width)
        self.head = nn.Linear(shape.width, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # N x (grid * grid) x width
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


# The CNN's data and seeds (train.TrainConfig's defaults); a higher peak rate and the usual
# transformer weight decay. Ten epochs reach the CNN's held-out accuracy.
VIT_CONFIG = TrainConfig(lr=2e-3, weight_decay=0.05)


def build(num_classes: int) -> InspectionViT:
    """The untrained InspectionViT of the default shape (``train.train``'s builder)."""
    return InspectionViT(num_classes)


def load_vit(path: Path = VIT_WEIGHTS_FILE) -> InspectionViT:
    """InspectionViT with the committed weights, in eval mode."""
    model = InspectionViT()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=VIT_WEIGHTS_FILE, help="weights path; the report goes next to it")
    parser.add_argument("--epochs", type=int, default=VIT_CONFIG.epochs)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = dataclasses.replace(VIT_CONFIG, epochs=args.epochs)
    report = train(config, args.out, build, {"kind": "InspectionViT", **asdict(ViTShape()), "patch": ViTShape().patch})
    logger.info("held-out accuracy %.4f, weights sha256 %s", report["test_accuracy"], report["weights_sha256"])


if __name__ == "__main__":
    main()
