"""Prediction only: the baseline every method's cost is measured against."""

from __future__ import annotations

import torch

from .base import ExplainedModel, Method, MethodOutput, MethodParams, Resolver, TargetSlots, predict


class NoExplanation(Method):
    """Prediction only: no explanation cost at all."""

    name = "none"
    summary = "no explanation: the prediction only"
    explains = "nothing"
    resolution = "none"
    passes = "1 forward"
    uses_layer = False

    def run(self, model: ExplainedModel, images: torch.Tensor, resolve: Resolver, params: MethodParams) -> MethodOutput:
        logits = predict(model, images)
        return MethodOutput(logits, TargetSlots.build([[] for _ in range(len(images))], images.device), None)
