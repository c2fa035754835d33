"""Layer activations: what any layer responds to, channel by channel (not class-specific)."""

from __future__ import annotations

import torch

from .base import ExplainedModel, Method, MethodError, MethodOutput, MethodParams, Resolver, TargetSlots


def _layer_name(model: ExplainedModel, params: MethodParams) -> str:
    return params.layer or model.layer_name


class Activations(Method):
    """The N most strongly activated channels of a layer (by mean activation), or one channel.

    Read from the forward that predicts, with a hook on the layer: the same numbers as Captum's
    LayerActivation (checked by the tests), without the second forward it would cost.
    """

    name = "activations"
    summary = "Layer activations: the most strongly activated channels of any layer (not class-specific)"
    explains = "channel"
    resolution = "layer"
    passes = "1 forward"
    params = ("layer", "channel", "channels")

    def check(self, model: ExplainedModel, params: MethodParams, targets: int) -> None:
        name = _layer_name(model, params)
        if name not in model.layers:
            shown = ", ".join(list(model.layers)[:12])
            raise MethodError(
                f"option 'layer': {name[:80]!r} is not a layer with a channels-first map; "
                f"layers (last first): {shown}{', ...' if len(model.layers) > 12 else ''}"
            )
        channels = model.layers[name].shape[1]
        if params.channel is not None and not 0 <= params.channel < channels:
            raise MethodError(f"option 'channel': {params.channel} is outside 0..{channels - 1} of layer {name!r}")

    def run(self, model: ExplainedModel, images: torch.Tensor, resolve: Resolver, params: MethodParams) -> MethodOutput:
        layer = model.layers[_layer_name(model, params)]
        with torch.inference_mode(), model.capture(layer.module, False, layer.layout) as capture:
            logits = model.model(images)
            activations = capture.take()
            means = activations.mean(dim=(2, 3))
            if params.channel is not None:
                chosen = torch.full((len(images), 1), params.channel, dtype=torch.long, device=images.device)
            else:
                chosen = means.topk(min(params.channels, means.shape[1]), dim=1).indices
            slots = TargetSlots.per_row(chosen)
            n, c, h, w = activations.shape  # rows of the N*C maps: one contiguous copy each
            maps = activations.reshape(n * c, h, w).index_select(0, (slots.rows * c + slots.targets))
            stats = torch.stack([means.gather(1, chosen).flatten(), maps.amax(dim=(1, 2))], dim=1)
        return MethodOutput(logits, slots, maps, stats)
