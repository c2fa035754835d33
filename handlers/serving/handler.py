"""The TorchServe handler: thin glue between requests and the explanation engine.

Every request of a batch is answered on its own: a bad image or option gets its own
4xx with ``{"error": ...}`` while the rest of the batch is explained in one pass per
method, outside ``torch.inference_mode()`` (gradients are needed). Whatever one request
raises, at any step, becomes that request's answer: the batch and the worker go on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

from ..engine import METHODS, Job, MethodError, SampleResult
from ..memory import reuse_freed_buffers
from ..preprocess import Preprocessor
from .budget import DEFAULT_RESPONSE_TIMEOUT_S, admitted, measured_budget
from .config import LIMIT_DEFAULTS, model_builder
from .decode import DecodeLimits, SharedDeadline, decode
from .dependencies import MissingPackagesHandler, missing_packages
from .errors import RequestError
from .kserve import owner_of, unfold
from .loading import load_served_model
from .metrics import ServingMetrics
from .options import FORMATS, RequestOptions
from .payload import extract_payload
from .response import answer, encode, geometry

logger = logging.getLogger(__name__)
# An upload this large takes milliseconds to decode (a 12 MP JPEG: ~14 ms), far more than handing it to a thread.
PARALLEL_DECODE_BYTES = 256 * 1024


@dataclass
class Prepared:
    """A request that decoded: the picture the model sees (its tensor is made with the batch's), its
    options and engine job."""

    picture: Image.Image
    options: RequestOptions
    job: Job
    geometry: dict[str, Any]  # the answer's ``geometry``: original size and the box the model saw
    forward_rows: int  # forward passes its image costs (Explainer.forward_rows), against the batch's budget


Outcome = SampleResult | RequestError


def _headers(context: Any, idx: int) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in (context.get_all_request_header(idx) or {}).items()}


def _upload_bytes(row: Any) -> int:
    """The size of a request's upload as TorchServe hands it over (raw body, or a JSON body's field;
    an envelope in front may hand over the payload itself). Never raises: it only picks the path."""
    body = row.get("body", row.get("data")) if isinstance(row, dict) else row
    if isinstance(body, dict):
        body = body.get("data")
    return len(body) if isinstance(body, (bytes, bytearray, str)) else 0


def _refusal(error: Exception, step: str) -> RequestError:
    """The answer for what one request raised at ``step``: its own RequestError, or a stated failure.

    Kept without traceback or context: their frames (the batch's lists among them) would
    form cycles that keep decoder state alive until a full garbage collection.
    """
    if isinstance(error, RequestError):
        refusal = error
    elif isinstance(error, MemoryError):
        refusal = RequestError(507, f"not enough memory to {step} this request; try a smaller image")
    else:
        logger.exception("request failed while trying to %s it", step)
        status = 400 if step == "read" else 500
        refusal = RequestError(status, f"could not {step} this request ({type(error).__name__}: {str(error)[:200]})")
    refusal.__context__ = None
    refusal.__cause__ = None
    return refusal.with_traceback(None)


def _too_large(size: int, limit: int, options: RequestOptions) -> RequestError:
    """The refusal of an answer over the model's response limit, saying what to ask for instead."""
    asks = []
    if options.format in ("raw", "overlay", "png"):
        asks.append("format=grid")
    if options.size == "input":
        asks.append("size=feature")
    if len(options.targets) > 1 or options.top_k_explanations > 1:
        asks.append("fewer targets")
    if options.top_k > 10:
        asks.append("a smaller top_k")
    instead = ", ".join(asks) or "fewer or smaller explanations"
    return RequestError(
        400,
        f"the answer would be {size} bytes, over this model's limit of {limit} (max_response_bytes); ask for {instead}",
        "response_too_large",
    )


def _over_budget(rows: int, budget: int) -> str:
    """The 400 of a request that alone needs more forward passes than a whole batch may cost."""
    return (
        f"this request needs {rows} forward passes per image (its method, targets and faithfulness steps); this "
        f"model runs at most {budget} per batch within its response timeout (max_batch_forwards): ask for fewer "
        "targets or steps, or a larger occlusion window or stride"
    )


def _batch_full(budget: int) -> str:
    """The 503 of a request that no longer fits beside its batch-mates: it would fit alone, so retry."""
    return (
        f"this request's explanation does not fit beside the rest of its batch in the model's budget of {budget} "
        "forward passes per batch (max_batch_forwards, sized to its response timeout): retry"
    )


class GradCamHandler(BaseHandler):
    """Image classification with Grad-CAM / Guided Grad-CAM attached to every prediction."""

    # Set at load when a package only this MAR's model needs (timm) is missing: it answers instead.
    stand_in: MissingPackagesHandler | None = None
    batch_start = 0.0  # perf_counter() when the batch being handled arrived (its latency metric)

    def initialize(self, context: Any) -> None:
        self.context = context
        self.metrics = ServingMetrics(context.metrics, context.model_name)
        missing = missing_packages(model_builder(context.model_yaml_config))
        if missing:  # a failed load would crash-loop the worker: load, and say what to install
            self.stand_in = MissingPackagesHandler(missing)
            self.stand_in.initialize(context)
            self.initialized = True
            return
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        self.manifest = context.manifest
        model_dir = properties.get("model_dir")
        weights = self.manifest["model"].get("serializedFile")
        try:
            served = load_served_model(
                context.model_yaml_config, model_dir, os.path.join(model_dir, weights) if weights else None, self.device
            )
        except Exception as error:
            logger.error("model %s failed to load: %s", context.model_name, error)
            raise
        self.config, self.explainer = served.config, served.explainer
        self.labels, self.option_parser = served.labels, served.options
        self.model = self.explainer.model
        threads = self.config.threads(os.environ)
        if threads is not None:
            torch.set_num_threads(threads)
        if reuse_freed_buffers():  # the worker is ours: its batches' activations stay mapped
            logger.info("freed buffers reused: glibc's mmap and trim thresholds raised in this worker")
        # Images per engine call: KServe requests carry up to 64 images each, so a batch may hold far more
        # images than requests; the engine never takes more at once than a batch of plain requests.
        self.engine_batch = max(1, int(properties.get("batch_size") or 1))
        timeout = float((context.model_yaml_config or {}).get("responseTimeout") or DEFAULT_RESPONSE_TIMEOUT_S)
        self.batch_budget = self.config.max_batch_forwards or measured_budget(self.explainer, timeout)
        self.preprocessor = Preprocessor(self.config.input)
        self.decode_size = self.preprocessor.decode_size()
        self.decode_limits = DecodeLimits(self.config.max_jpeg_scans, self.config.decode_timeout_s)
        threads = self.config.decode_threads
        self.decode_pool = ThreadPoolExecutor(threads, "decode") if threads > 1 else None
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

    def _prepare(
        self, row: dict[str, Any], headers: dict[str, Any], request_id: str = "", limits: DecodeLimits | None = None
    ) -> Prepared:
        payload = extract_payload(row, str(headers.get("content-type", "")))
        options = self.option_parser.for_request(headers, payload.fields, explain=headers.get("explain") == "True")
        job = Job(
            options.method,
            options.targets,
            options.top_k_explanations,
            options.params,
            faithfulness=options.faithfulness,
            policy=options.policy,
            sample_key=options.explain_key or request_id,
        )
        try:
            self.explainer.check(job)  # refused here, the request is alone in failing
        except MethodError as error:
            raise RequestError(400, str(error), "option") from None
        rows = self.explainer.forward_rows(job)
        if rows > self.batch_budget:
            raise RequestError(400, _over_budget(rows, self.batch_budget), "option")
        decoded = decode(
            payload.image, self.config.max_image_pixels, reduce_to=self.decode_size, limits=limits or self.decode_limits
        )
        picture = self.preprocessor.view(decoded.image)
        placed = geometry(decoded.original_size, self.preprocessor.box(decoded.original_size))
        return Prepared(picture, options, job, placed, rows)

    def preprocess(self, data: list[dict[str, Any]]) -> list[Prepared | RequestError]:
        """Read and decode each request on its own; anything it raises becomes its own answer.

        With two or more large uploads in the batch (camera pictures), ``decode_threads`` of them
        are decoded at a time; small ones are not worth a thread's hand-over.
        """
        owners = [owner_of(self.context, idx) for idx in range(len(data))]
        timeout = self.decode_limits.timeout_s
        shared = {  # a KServe request's images: together no longer than a batch of plain requests
            owner: replace(self.decode_limits, shared=SharedDeadline(min(count, self.engine_batch) * timeout))
            for owner, count in Counter(owners).items()
            if count > 1
        }
        rows = [
            (row, _headers(self.context, idx), self.context.get_request_id(idx) or "", shared.get(owner))
            for idx, (row, owner) in enumerate(zip(data, owners, strict=True))
        ]
        large = sum(_upload_bytes(row) >= PARALLEL_DECODE_BYTES for row in data)
        if self.decode_pool is not None and large > 1:
            return list(self.decode_pool.map(self._prepare_or_refuse, rows))
        return [self._prepare_or_refuse(args) for args in rows]

    def _prepare_or_refuse(
        self, args: tuple[dict[str, Any], dict[str, Any], str, DecodeLimits | None]
    ) -> Prepared | RequestError:
        try:
            return self._prepare(*args)
        except Exception as error:  # noqa: BLE001 - one request's failure must not fail its batch
            return _refusal(error, "read")

    def _explain(self, items: list[Prepared]) -> list[SampleResult]:
        """The engine's results for ``items``, at most ``engine_batch`` images per call (memory as for one batch)."""
        results: list[SampleResult] = []
        for start in range(0, len(items), self.engine_batch):
            part = items[start : start + self.engine_batch]
            results.extend(
                self.explainer.explain(self.preprocessor.batch([p.picture for p in part]), [p.job for p in part])
            )
        return results

    def _within_budget(self, prepared: list[Prepared | RequestError]) -> list[Prepared | RequestError]:
        """The batch with each request that no longer fits in the batch's budget of forward passes
        answered 503 instead (budget.py): the rest of the batch is explained, the worker stays alive."""
        costs = [item.forward_rows for item in prepared if isinstance(item, Prepared)]
        if sum(costs) <= self.batch_budget:  # the usual case
            return prepared
        fits = iter(admitted(costs, self.batch_budget))
        busy = RequestError(503, _batch_full(self.batch_budget), "batch_budget")
        return [item if not isinstance(item, Prepared) or next(fits) else busy for item in prepared]

    def inference(self, prepared: list[Prepared | RequestError]) -> list[Outcome]:
        """One engine call for every request that decoded (one forward per method).

        Should that call fail, each request is explained alone, so only the one that
        fails gets an error.
        """
        prepared = self._within_budget(prepared)
        valid = [item for item in prepared if isinstance(item, Prepared)]
        methods = Counter(p.options.method for p in valid)  # one line per batch: how requests were batched
        logger.info("batch of %d: %s, %d refused", len(prepared), dict(methods), len(prepared) - len(valid))
        if not valid:
            return [item for item in prepared if isinstance(item, RequestError)]
        try:
            results: list[Outcome] = list(self._explain(valid))
        except Exception:  # find the request at fault instead of failing all
            logger.exception("explaining a batch of %d failed: explaining each request alone", len(valid))
            results = []
            for item in valid:
                try:
                    results.extend(self._explain([item]))
                except Exception as error:  # noqa: BLE001 - that request's own answer
                    results.append(_refusal(error, "explain"))
        outcomes = iter(results)
        return [next(outcomes) if isinstance(item, Prepared) else item for item in prepared]

    def _body(self, outcome: Outcome, item: Prepared | RequestError) -> tuple[RequestError | None, bytes]:
        """The JSON bytes of one answer, or the refusal to send instead (failed or too large)."""
        if isinstance(outcome, RequestError):
            return outcome, b""
        assert isinstance(item, Prepared)
        try:
            body = answer(outcome, item.options, self.labels, self.explainer.layer_name, item.picture, item.geometry)
            if METHODS[item.options.method].guided and self.explainer.guided_note:
                for entry in body["explanations"]:
                    entry["note"] = self.explainer.guided_note
            encoded = encode(body)
        except Exception as error:  # noqa: BLE001 - one answer's failure must not fail its batch
            return _refusal(error, "render"), b""
        if len(encoded) > self.config.max_response_bytes:
            return _too_large(len(encoded), self.config.max_response_bytes, item.options), b""
        return None, encoded

    def postprocess(self, outcomes: list[Outcome], prepared: list[Prepared | RequestError]) -> list[bytes]:
        """Compact JSON per request; errors get their status via ``set_response_status``."""
        responses: list[bytes] = []
        refusals: list[RequestError | None] = []
        for idx, (outcome, item) in enumerate(zip(outcomes, prepared, strict=True)):
            refusal, encoded = self._body(outcome, item)
            refusals.append(refusal)
            if refusal is not None:
                logger.info("request %d refused with %d: %s", idx, refusal.status, refusal.message)
                self.context.set_response_status(refusal.status, refusal.phrase, idx)
                encoded = json.dumps(refusal.body(), separators=(",", ":")).encode("utf-8")
            self.context.set_response_content_type(idx, "application/json")
            responses.append(encoded)
        self.metrics.record(prepared, outcomes, refusals, time.perf_counter() - self.batch_start)
        return responses

    def describe_handle(self) -> str:
        """What this model serves, for ``GET /models/{name}?customized=true`` on the management API."""
        return json.dumps(self.description(), separators=(",", ":"))

    def description(self) -> dict[str, Any]:
        """Methods, labels, layers, options and limits: what a client needs to ask without guessing."""
        explainer = self.explainer
        methods = [
            {
                "name": name,
                "summary": METHODS[name].summary,
                "class_specific": METHODS[name].class_specific,
                "resolution": METHODS[name].resolution,
                "passes": METHODS[name].passes,
                "options": list(METHODS[name].params),
            }
            for name in explainer.methods
        ]
        limits = {key: getattr(self.config, key) for key in LIMIT_DEFAULTS}
        limits["max_batch_forwards"] = self.batch_budget
        return {
            "model": self.context.model_name,
            "input_size": list(explainer.input_size),
            "target_layer": explainer.layer_name,
            "cam_fast_path": explainer.uses_cam_fast_path,
            "guided_note": explainer.guided_note,
            "labels": self.labels,
            "methods": methods,
            "layers": explainer.layer_names,
            "formats": list(FORMATS),
            "defaults": self.option_parser.defaults_as_fields(),
            "limits": limits,
        }

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """Entry point for every batch; always one answer per request (a description when asked)."""
        if self.stand_in is not None:
            return self.stand_in.handle(data, context)
        start = self.batch_start = time.perf_counter()
        self.context = context
        # The management API's describe call carries this header; so may any inference request (TorchServe
        # passes client headers on), and answering its whole batch with one description would fail the batch.
        describe = [context.get_request_header(idx, "describe") == "True" for idx in range(len(data))]
        if all(describe):
            return [self.describe_handle().encode("utf-8")] * len(data)
        batch = unfold(data, context)  # KServe v1/v2 requests: one plain row per image
        self.context = batch.context
        prepared = self.preprocess(batch.rows)
        outcomes = self.inference(prepared)
        output = batch.fold(self.postprocess(outcomes, prepared), context, self.config.max_response_bytes)
        self.context = context
        for idx in (idx for idx, asked in enumerate(describe) if asked):  # in a batch with others: its own answer
            output[idx] = self.describe_handle().encode("utf-8")
            context.set_response_status(200, "OK", idx)
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return output
