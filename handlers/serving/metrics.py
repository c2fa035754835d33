"""Prometheus metrics of the handler, declared in ``metrics.yaml`` next to this module.

One call per batch (``ServingMetrics.record``) reports, per request: its method and HTTP
status, its worker latency (the batch's, in seconds), how many classes it had explained,
why it was refused (a small fixed set of reasons, never free text) and what the cost policy
decided; and the batch size once. Emission goes through TorchServe's metrics cache (one
``[METRICS]`` log line each, which the frontend parses and exports when the YAML declares the
metric): counters are added up over the batch and emitted once per label set (8 requests of
one method and status: one line of 8, the same total), histograms once per observation. The
batch's lines are written as one log record, each line exactly as TorchServe's ``CachingMetric``
writes it (the worker logs bare messages and the frontend parses its output line by line): a
record per line cost the worker a log record, a caller lookup and a pipe write each.
A failure to emit is logged once and never fails a request.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ts.metrics.caching_metric import CachingMetric
from ts.metrics.caching_metric import logger as torchserve_metrics_log
from ts.metrics.metric_type_enum import MetricTypes

from ..engine import METHODS, SampleResult
from .errors import RequestError

logger = logging.getLogger(__name__)

# Why a request was refused: each refusal maps to exactly one of these label values.
REASONS = (
    "payload",  # empty body, malformed JSON, bad base64, a form where an image was expected
    "option",  # unknown option or value, target outside the classes, a method's cap exceeded
    "image_too_large",  # more pixels than the model's cap (413)
    "unsupported_format",  # not an accepted image format (415)
    "corrupt_image",  # corrupt or truncated image (422)
    "decode_limit",  # too many JPEG scans or marker segments, past the decode deadline (422)
    "response_too_large",  # the answer would exceed max_response_bytes
    "out_of_memory",  # 507
    "internal_error",  # this request failed in the engine or renderer (500)
    "missing_package",  # the worker lacks a package this model needs (503)
    "batch_budget",  # no room left in the batch's budget of forward passes (503: retry)
    "other",
)
_REASON_OF_STATUS = {
    400: "payload",
    413: "image_too_large",
    415: "unsupported_format",
    422: "corrupt_image",
    500: "internal_error",
    503: "missing_package",
    507: "out_of_memory",
}
UNKNOWN_METHOD = "unknown"  # label of a request whose options did not parse

# name: (unit, dimensions after ModelName, type); the same as metrics.yaml declares.
SPECS: dict[str, tuple[str, tuple[str, ...], MetricTypes]] = {
    "ExplainRequests": ("Count", ("Method", "Status"), MetricTypes.COUNTER),
    "RefusedRequests": ("Count", ("Reason",), MetricTypes.COUNTER),
    "ExplainDecisions": ("Count", ("Method", "Decision", "Reason"), MetricTypes.COUNTER),
    "ExplanationLatencySeconds": ("s", ("Method",), MetricTypes.HISTOGRAM),
    "ExplainTargets": ("Count", ("Method",), MetricTypes.HISTOGRAM),
    "BatchSize": ("Count", (), MetricTypes.HISTOGRAM),
}


def refusal_reason(refusal: RequestError) -> str:
    """The label of why ``refusal`` happened: its own reason when it was tagged, else by status."""
    reason = getattr(refusal, "reason", None)
    return reason if reason in REASONS else _REASON_OF_STATUS.get(refusal.status, "other")


class ServingMetrics:
    """Emits the handler's metrics through a worker's metrics cache (``context.metrics``)."""

    def __init__(self, cache: Any, model_name: str) -> None:
        self.cache = cache
        self.model_name = model_name
        self._metrics: dict[str, Any] = {}
        self._failed = False

    def _metric(self, name: str) -> Any:
        """The cached metric ``name``: declared by the YAML, or added as declared here when the
        server's YAML lacks it (exported then only with ``model_metrics_auto_detect=true``)."""
        if name not in self._metrics:
            unit, dimensions, kind = SPECS[name]
            try:
                self._metrics[name] = self.cache.get_metric(name, kind)
            except Exception:  # noqa: BLE001 - not declared: TorchServe raises its own key error
                self._metrics[name] = self.cache.add_metric_to_cache(name, unit, ["ModelName", *dimensions], kind)
        return self._metrics[name]

    def _emit(self, name: str, value: float, *labels: str) -> None:
        self._emit_all([(name, value, labels)])

    def _emit_all(self, updates: Sequence[tuple[str, float, Sequence[str]]]) -> None:
        """Each (name, value, labels) update: one log record of TorchServe's metric lines, or, for
        another cache (a test's recorder), each through its metric's ``add_or_update``."""
        metrics = [(self._metric(name), value, [self.model_name, *labels]) for name, value, labels in updates]
        if not all(type(metric) is CachingMetric for metric, _, _ in metrics):
            for metric, value, dimensions in metrics:
                metric.add_or_update(value, dimensions)
            return
        stamp = f"#hostname:{socket.gethostname()},{int(time.time())}"
        lines = []
        for metric, value, dimensions in metrics:
            if len(dimensions) != len(metric.dimension_names):  # as CachingMetric refuses it
                raise ValueError(
                    f"{metric.metric_name}: {len(dimensions)} dimension values, not {metric.dimension_names}"
                )
            named = ",".join(f"{name}:{label}" for name, label in zip(metric.dimension_names, dimensions, strict=True))
            lines.append(
                f"[METRICS]{metric.metric_name}.{metric.unit}:{value}|#{named}|#type:{metric.metric_type.name}|{stamp}"
            )
        torchserve_metrics_log.info("\n".join(lines))

    def record(
        self,
        prepared: Sequence[Any],
        outcomes: Sequence[Any],
        refusals: Sequence[RequestError | None],
        seconds: float,
    ) -> None:
        """Report one batch: ``prepared`` items (with ``options``) or errors, the engine's outcomes,
        each request's refusal (None when answered) and the worker's seconds for the batch."""
        try:
            self._record(prepared, outcomes, refusals, seconds)
        except Exception:  # metrics must never fail a request
            if not self._failed:
                logger.exception("emitting metrics failed; requests are answered regardless")
            self._failed = True

    def _record(
        self,
        prepared: Sequence[Any],
        outcomes: Sequence[Any],
        refusals: Sequence[RequestError | None],
        seconds: float,
    ) -> None:
        updates: list[tuple[str, float, Sequence[str]]] = [("BatchSize", len(prepared), ())]
        counts: Counter[tuple[str, ...]] = Counter()  # (counter name, *labels): requests of the batch
        for item, outcome, refusal in zip(prepared, outcomes, refusals, strict=True):
            options = getattr(item, "options", None)
            method = options.method if options is not None else UNKNOWN_METHOD
            counts["ExplainRequests", method, str(refusal.status if refusal else 200)] += 1
            if refusal is not None:
                counts["RefusedRequests", refusal_reason(refusal)] += 1
                continue
            updates.append(("ExplanationLatencySeconds", seconds, (method,)))
            if not isinstance(outcome, SampleResult):
                continue
            if METHODS[method].class_specific:
                updates.append(("ExplainTargets", len(outcome.explanations), (method,)))
            if outcome.decision is not None:
                decision = "explained" if outcome.decision.explained else "skipped"
                counts["ExplainDecisions", method, decision, outcome.decision.reason] += 1
        updates += [(name, count, labels) for (name, *labels), count in counts.items()]
        self._emit_all(updates)
