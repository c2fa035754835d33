"""The ``faithfulness`` option's values and the object it adds to each explanation of an answer.

``off`` (default), ``drop`` (confidence drop and increase, evidence kept, coverage and the
score: one extra forward for the whole batch) or ``full`` (also deletion and insertion AUC
in ``faithfulness_steps`` steps, at most the model's ``max_faithfulness_steps``). The
measures are defined in ``handlers/engine/faithfulness.py``.
"""

from __future__ import annotations

from typing import Any

from ..engine import METHODS, Explanation, FaithfulnessParams
from ..engine.faithfulness import DEFAULT_STEPS

__all__ = ["DEFAULT_STEPS", "LEVELS", "STEPS_RANGE", "applies_to", "faithfulness_entry", "level_params"]

LEVELS = ("off", "drop", "full")
STEPS_RANGE = (2, 100_000)  # the model's max_faithfulness_steps caps it further (engine check)
DIGITS = 4  # decimals of every measure in the answer

NO_CLASS_NOTE = "method {method!r} maps no class, so no class confidence can test it: faithfulness does not apply"
NO_EVIDENCE_NOTE = (
    "the model is no more confident of this class on the image than on a blank one: "
    "there is no evidence for a map to keep, so no score"
)


def level_params(level: str, steps: int) -> FaithfulnessParams | None:
    """The engine's parameters for a validated level (None for off)."""
    return None if level == "off" else FaithfulnessParams(curves=level == "full", steps=steps)


def applies_to(method: str) -> bool:
    """Whether faithfulness can be measured for ``method``'s maps: only maps of a class can be."""
    return METHODS[method].class_specific


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)


def faithfulness_entry(item: Explanation) -> dict[str, Any]:
    """The ``faithfulness`` object of one explanation; ``score`` null with a ``note`` saying why when undefined."""
    measured = item.faithfulness
    if measured is None:
        return {"score": None, "note": NO_CLASS_NOTE.format(method=item.method)}
    entry: dict[str, Any] = {
        "score": _rounded(measured.score),
        "confidence_drop": _rounded(measured.confidence_drop),
        "confidence_increase": measured.confidence_increase,
        "evidence_kept": _rounded(measured.evidence_kept),
        "coverage": _rounded(measured.coverage),
    }
    if measured.deletion_auc is not None:
        entry.update(deletion_auc=_rounded(measured.deletion_auc), insertion_auc=_rounded(measured.insertion_auc))
    if measured.score is None:
        entry["note"] = NO_EVIDENCE_NOTE
    return entry
