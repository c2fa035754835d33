"""The TorchServe handler: thin glue between requests and the explanation engine.

Every request of a batch is answered on its own: a bad image or option gets its own
4xx with ``{"error": ...}`` while the rest of the batch is explained in one pass per
method, outside ``torch.inference_mode()`` (gradients are needed).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

from ..engine import METHODS, Explainer, Job, SampleResult
from ..models import build_model, read_labels, read_state_dict
from ..preprocess import Preprocessor
from .config import ServingConfig
from .decode import decode_image
from .errors import RequestError
from .options import OptionParser, RequestOptions
from .payload import extract_payload
from .response import answer

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A request that decoded: its tensor, the picture the model sees, its options."""

    tensor: torch.Tensor
    view: Image.Image
    options: RequestOptions


Outcome = SampleResult | RequestError


def _headers(context: Any, idx: int) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in (context.get_all_request_header(idx) or {}).items()}


class GradCamHandler(BaseHandler):
    """Image classification with Grad-CAM / Guided Grad-CAM attached to every prediction."""

    def initialize(self, context: Any) -> None:
        self.context = context
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        self.manifest = context.manifest
        model_dir = properties.get("model_dir")
        try:
            self.config = ServingConfig.from_yaml(context.model_yaml_config)
            weights = self.manifest["model"].get("serializedFile")
            state = read_state_dict(os.path.join(model_dir, weights), self.device) if weights else None
            model = build_model(self.config.model, model_dir, state)
            self.explainer = Explainer(model, self.config.input.size, self.config.target_layer, self.device)
            self.model = self.explainer.view.model
            self.labels = read_labels(os.path.join(model_dir, "index_to_name.json"), self.explainer.num_classes)
            self.option_parser = OptionParser(self.labels, list(METHODS), self.config.defaults, self.config.max_targets)
        except Exception as error:
            logger.error("model %s failed to load: %s", context.model_name, error)
            raise
        threads = self.config.threads(os.environ)
        if threads is not None:
            torch.set_num_threads(threads)
        self.preprocessor = Preprocessor(self.config.input)
        Image.MAX_IMAGE_PIXELS = self.config.max_image_pixels
        self.initialized = True
        logger.info(
            "model %s ready on %s with %d torch thread(s): layer %s, %d classes, Grad-CAM via %s",
            context.model_name,
            self.device,
            torch.get_num_threads(),
            self.explainer.layer_name,
            self.explainer.num_classes,
            "CAM (pool + linear head)" if self.explainer.uses_cam_fast_path else "autograd",
        )

    def _prepare(self, row: dict[str, Any], headers: dict[str, Any]) -> Prepared:
        payload = extract_payload(row)
        options = self.option_parser.for_request(headers, payload.fields, explain=headers.get("explain") == "True")
        image = decode_image(payload.image, self.config.max_image_pixels)
        view = self.preprocessor.view(image)
        return Prepared(self.preprocessor.tensor(view), view, options)

    def preprocess(self, data: list[dict[str, Any]]) -> list[Prepared | RequestError]:
        """Decode each request on its own; a failure becomes that request's error."""
        prepared: list[Prepared | RequestError] = []
        for idx, row in enumerate(data):
            try:
                prepared.append(self._prepare(row, _headers(self.context, idx)))
            except RequestError as error:
                # Kept without its traceback: its frames (this one included, which holds
                # `prepared`) would make a cycle that keeps decoder state alive.
                error.__context__ = None
                prepared.append(error.with_traceback(None))
        return prepared

    def inference(self, prepared: list[Prepared | RequestError]) -> list[Outcome]:
        """One engine call for every request that decoded (one forward per method)."""
        valid = [item for item in prepared if isinstance(item, Prepared)]
        methods = Counter(p.options.method for p in valid)
        logger.info("batch of %d: %s, %d refused", len(prepared), dict(methods), len(prepared) - len(valid))
        if not valid:
            return [item for item in prepared if isinstance(item, RequestError)]
        jobs = [Job(p.options.method, p.options.targets, p.options.top_k_explanations) for p in valid]
        results = iter(self.explainer.explain(torch.stack([p.tensor for p in valid]), jobs))
        return [next(results) if isinstance(item, Prepared) else item for item in prepared]

    def postprocess(self, outcomes: list[Outcome], prepared: list[Prepared | RequestError]) -> list[bytes]:
        """Compact JSON per request; errors get their status via ``set_response_status``."""
        responses: list[bytes] = []
        for idx, (outcome, item) in enumerate(zip(outcomes, prepared, strict=True)):
            if isinstance(outcome, RequestError):
                logger.info("request %d refused with %d: %s", idx, outcome.status, outcome.message)
                self.context.set_response_status(outcome.status, outcome.phrase, idx)
                body: dict[str, Any] = outcome.body()
            else:
                assert isinstance(item, Prepared)
                body = answer(outcome, item.options, self.labels, self.explainer.layer_name, item.view)
            self.context.set_response_content_type(idx, "application/json")
            responses.append(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return responses

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """Entry point for every batch; always one answer per request."""
        start = time.perf_counter()
        self.context = context
        prepared = self.preprocess(data)
        outcomes = self.inference(prepared)
        output = self.postprocess(outcomes, prepared)
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return output
