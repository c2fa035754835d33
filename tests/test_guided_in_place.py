"""Guided backprop must not change what a model predicts, whatever ReLU idiom it uses.

In-place activations used as statements (``x.relu_()``, ``F.relu(x, inplace=True)`` without
using the result) only act through their side effect: the guided forward must keep it, so
the prediction of every method is the one of ``method=none``, and the guided rule still
applies (the map equals the one of the same network written out of place).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from handlers.engine import METHODS, Explainer, Job


class StatementActivations(nn.Module):
    """Every in-place idiom used as a statement; ``out_of_place`` computes the same with return values."""

    def __init__(self, out_of_place: bool = False, linear_head: bool = True) -> None:
        super().__init__()
        self.out_of_place = out_of_place
        self.linear_head = linear_head
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in ((3, 8), (8, 8), (8, 8)))
        self.last = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs[0](x)
        if self.out_of_place:
            x = F.relu(x)
        else:
            x.relu_()
        x = self.convs[1](x)
        if self.out_of_place:
            x = F.relu6(x)
        else:
            F.relu6(x, inplace=True)
        x = self.convs[2](x)
        if self.out_of_place:
            x = torch.relu(x)
        else:
            F.relu(x, inplace=True)
        x = self.last(x)
        if self.out_of_place:
            x = F.hardtanh(x, 0.0, 3.0)
        else:
            F.hardtanh(x, 0.0, 3.0, True)
        pooled = x.mean((2, 3))
        return self.fc(pooled if self.linear_head else torch.tanh(pooled))


def twins(linear_head: bool) -> tuple[Explainer, Explainer]:
    torch.manual_seed(0)
    statements = StatementActivations(linear_head=linear_head)
    returned = StatementActivations(out_of_place=True, linear_head=linear_head)
    returned.load_state_dict(statements.state_dict())
    return Explainer(statements, (24, 24), "last"), Explainer(returned, (24, 24), "last")


@pytest.mark.parametrize("linear_head", [True, False], ids=["cam-path", "autograd-path"])
def test_every_method_predicts_what_none_predicts(linear_head):
    explainer, _ = twins(linear_head)
    images = torch.randn(6, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    reference = explainer.explain(images, [Job("none")] * 6)
    for name, method in METHODS.items():
        if not method.available(explainer.explained):
            continue
        targets = [(i % 4,) if method.class_specific else () for i in range(6)]
        results = explainer.explain(images, [Job(name, t) for t in targets])
        for ours, expected in zip(results, reference, strict=True):
            assert torch.equal(ours.probabilities, expected.probabilities), name


@pytest.mark.parametrize("linear_head", [True, False], ids=["cam-path", "autograd-path"])
def test_the_guided_rule_still_applies_to_in_place_statements(linear_head):
    statements, returned = twins(linear_head)
    images = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    jobs = [Job("guided_gradcam", (t,)) for t in (0, 1, 3)]
    ours = statements.explain(images, jobs)
    theirs = returned.explain(images, jobs)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a.explanations[0].values, b.explanations[0].values, atol=1e-7)
        assert torch.equal(a.probabilities, b.probabilities)
    # and the rule changes the map: without it the input gradient passes negative values through
    plain = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    assert statements.explain(plain, [Job("guided_gradcam", (0,))])[0].explanations[0].values.abs().sum() > 0
