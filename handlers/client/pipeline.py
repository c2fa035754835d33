"""Explain one image end to end: request(s), then the overlay PNGs, the JSON and the sheet.

``<stem>.json`` is the server's answer with each base64 ``png`` (overlay, grayscale map or
channel mosaic) replaced by ``file``, the name of the PNG written next to it (the JSON stays
small and readable). With ``--on original`` the server sends grids and the client draws each
map over the original picture itself (``original.py``); ``file`` names that PNG.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .api import ApiError, ExplainClient, ServerUnreachable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What to ask for every image: method, targets (labels or indices; empty = top prediction), top-k,
    the answer's format and the method's own options (``layer``, ``channel``, ``window``, ...)."""

    method: str = "gradcam"
    targets: tuple[str, ...] = ()
    top_k: int | None = None
    format: str = "overlay"
    options: dict[str, str] = field(default_factory=dict)
    faithfulness: str | None = None  # "drop" or "full": each map's faithfulness in the answer

    def fields(
        self, method: str | None = None, targets: tuple[str, ...] | None = None, fmt: str | None = None
    ) -> dict[str, str]:
        """Multipart option fields, with ``method``/``targets``/``fmt`` overridden where given.

        The method options go only with this request's own method: they would not apply to another.
        """
        chosen_method = method or self.method
        fields = {"method": chosen_method, "format": fmt or self.format}
        chosen = self.targets if targets is None else targets
        if chosen:
            fields["target"] = ",".join(chosen)
        if self.top_k is not None:
            fields["top_k"] = str(self.top_k)
        if chosen_method == self.method:
            fields.update(self.options)
        if self.faithfulness:
            fields["faithfulness"] = self.faithfulness
        return fields


@dataclass
class Result:
    """The outcome of one image: the server's answer (overlays replaced by file names) or the error."""

    path: Path
    answer: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "target"


def explained(entry: dict[str, Any]) -> str:
    """What one explanation is of, in words: its class label, a channel, a channel mosaic or the image.

    Class-agnostic answers (``target`` null) are named by what they show instead of a class.
    """
    if entry.get("target"):
        return str(entry["target"]["label"])
    if entry.get("format") == "tiles":
        return f"{len(entry.get('channels', []))} channels"
    if entry.get("channel") is not None:
        return f"channel {entry['channel']}"
    return "image"


def picture_name(stem: str, entry: dict[str, Any]) -> str:
    """The file of one explanation's PNG: ``<stem>.<method>.<label>.png`` for a class;
    ``<stem>.activations.<layer>.ch<N>.png`` / ``.tiles.png`` for channels; ``<stem>.<method>.png``
    for a class-agnostic map of the whole image (EigenCAM)."""
    method = entry["method"]
    if entry.get("target"):
        return f"{stem}.{method}.{_slug(str(entry['target']['label']))}.png"
    layer = _slug(str(entry.get("layer") or "input"))
    if entry.get("format") == "tiles":
        return f"{stem}.{method}.{layer}.tiles.png"
    if entry.get("channel") is not None:
        return f"{stem}.{method}.{layer}.ch{int(entry['channel'])}.png"
    return f"{stem}.{method}.png"


def decode_png(text: str) -> tuple[bytes, Image.Image]:
    """A PNG sent as base64 text: its bytes and the decoded picture; ApiError when it is not one."""
    try:
        data = base64.b64decode(text, validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (binascii.Error, ValueError, OSError) as error:
        raise ApiError(f"answer carries an unreadable PNG: {error}") from None
    return data, image


class Pipeline:
    """Everything done per image, shared by the worker threads (it holds no per-image state)."""

    def __init__(
        self, client: ExplainClient, request: Request, out_dir: Path, sheet: bool, original_alpha: float | None = None
    ) -> None:
        """``original_alpha``: draw the maps (grids) over the original picture at this alpha (``--on original``)."""
        self.client = client
        self.request = request
        self.out_dir = out_dir
        self.sheet = sheet
        self.original_alpha = original_alpha
        self.unreachable: str | None = None  # the connection error, once the server could not be reached

    def run(self, path: Path, stem: str) -> Result:
        """Explain ``path``; every failure ends up in ``Result.error``, never raised.

        Once the server is unreachable, later images are not sent: they fail with the same error.
        """
        result = Result(path)
        if self.unreachable:
            result.error = self.unreachable
            return result
        try:
            image = path.read_bytes()
            result.answer = self.client.explain(image, path.name, self.request.fields())
            overlays = self._write_overlays(result.answer, stem)
            if self.original_alpha is not None:
                self._write_on_original(result.answer, image, stem, self.original_alpha)
            self._write(f"{stem}.json", json.dumps(result.answer, indent=2).encode())
            if self.sheet:
                self._write_sheet(image, path, stem, result.answer, overlays)
        except ServerUnreachable as error:
            result.error = self.unreachable = str(error)
        except ApiError as error:
            result.error = str(error)
        except OSError as error:
            result.error = f"{error.strerror or error}: {error.filename or path}"
        except (KeyError, IndexError, TypeError) as error:
            result.error = f"unexpected answer from the server ({type(error).__name__}: {error})"
        logger.debug("%s: %s", path, result.error or "ok")
        return result

    def _write(self, name: str, data: bytes) -> None:
        (self.out_dir / name).write_bytes(data)
        logger.debug("wrote %s", self.out_dir / name)

    def _write_overlays(self, answer: dict[str, Any], stem: str) -> dict[int, Image.Image]:
        """One PNG per explanation (``picture_name``); the class-specific ones by target index."""
        overlays: dict[int, Image.Image] = {}
        for entry in answer.get("explanations", []):
            if "png" not in entry:
                continue
            data, overlay = decode_png(entry.pop("png"))
            name = picture_name(stem, entry)
            self._write(name, data)
            entry["file"] = name
            if entry.get("target"):
                overlays[int(entry["target"]["index"])] = overlay
        return overlays

    def _write_on_original(self, answer: dict[str, Any], image: bytes, stem: str, alpha: float) -> None:
        """One PNG per explanation: its map drawn over the original picture (``picture_name``)."""
        from .original import draw, open_upright  # imports numpy and the renderer: only for --on original

        picture = open_upright(image)
        for entry in answer.get("explanations", []):
            buffer = io.BytesIO()
            draw(picture, answer, entry, alpha).save(buffer, format="PNG")
            name = picture_name(stem, entry)
            self._write(name, buffer.getvalue())
            entry["file"] = name

    def _write_sheet(
        self, image: bytes, path: Path, stem: str, answer: dict[str, Any], overlays: dict[int, Image.Image]
    ) -> None:
        """Grad-CAM overlay and Guided Grad-CAM map of every explained target, then the sheet.

        At most two more requests whatever the number of targets: one for the Grad-CAM overlays
        (unless the answer already has them), one for the raw Guided Grad-CAM maps.
        """
        from .sheet import Panels, TargetMaps, render_sheet  # imports torch (through handlers.render): only for --sheet

        explanations = answer.get("explanations", [])
        targets = [e["target"] for e in explanations if e.get("target")] or [
            {"index": answer["predictions"][0]["index"], "label": answer["predictions"][0]["label"]}
        ]
        pinned = tuple(str(target["index"]) for target in targets)
        fresh = self.request.method != "gradcam" or self.request.format != "overlay"
        if fresh or not all(int(t["index"]) in overlays for t in targets):
            reply = self.client.explain(image, path.name, self.request.fields("gradcam", pinned, fmt="overlay"))
            overlays = {int(e["target"]["index"]): decode_png(e["png"])[1] for e in reply["explanations"]}
        guided = self.client.explain(image, path.name, self.request.fields("guided_gradcam", pinned, fmt="raw"))
        raw = {int(e["target"]["index"]): e["values"] for e in guided["explanations"]}
        panels = Panels(
            source=Image.open(io.BytesIO(image)),
            title=path.name,
            predictions=answer["predictions"],
            targets=[TargetMaps(str(t["label"]), overlays[int(t["index"])], raw[int(t["index"])]) for t in targets],
        )
        buffer = io.BytesIO()
        render_sheet(panels).save(buffer, format="PNG")
        self._write(f"{stem}.sheet.png", buffer.getvalue())
