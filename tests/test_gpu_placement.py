"""GPU placement: the handler puts the model and the maps on the GPU TorchServe assigns."""

from __future__ import annotations

import pytest
import torch

from handlers.engine import Explainer, Job
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, unpack_mar, with_requests
from handlers.testing.images import image_bytes
from handlers.testing.mars import build_custom_mar

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")


def test_engine_keeps_model_and_maps_on_the_device(random_model):
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    explainer = Explainer(random_model("resnet18"), (112, 112), device=device)
    assert all(p.device == device for p in explainer.model.parameters())
    results = explainer.explain(torch.randn(2, 3, 112, 112), [Job("gradcam"), Job("guided_gradcam")])
    for result in results:
        assert result.probabilities.device == device
        assert all(e.values.device == device for e in result.explanations)


def test_handler_uses_the_assigned_gpu_id(tmp_path):
    gpu_id = torch.cuda.device_count() - 1
    context = load_context(unpack_mar(build_custom_mar(tmp_path), tmp_path / "model"), "tiny", gpu=gpu_id)
    handler = GradCamHandler()
    handler.initialize(context)
    assert handler.device == torch.device("cuda", gpu_id)
    assert all(p.device == handler.device for p in handler.model.parameters())
    output = handler.handle(
        [{"body": bytearray(image_bytes(1))}, {"body": bytearray(image_bytes(2))}],
        with_requests(context, [{}, {"X-Explain-Method": "guided_gradcam"}]),
    )
    assert [context.get_response_status(i)[0] for i in range(2)] == [200, 200] and len(output) == 2
