"""Documentation of the method family written from the engine's registry, so it can't drift.

``python -m handlers.client.methods_docs`` rewrites, from ``METHODS``:

- the methods table in README.md (between ``<!-- methods:start -->`` and ``<!-- methods:end -->``),
  with the measured cost of each method taken from the latest benchmark report with section 5
  (RESULTS.md of a full run or RESULTS-methods.md of ``--only methods``; the inspection model),
  else a pointer to RESULTS.md;
- handlers/viewer/methods.json, the list the viewer falls back to when it can't read the
  model's description.

``--check`` only says whether they are current (exit 1 if not; a test runs it). ``--images``
also draws docs/images/methods/scratch.png: every method on the same sample through the
default model served by a real TorchServe (own TMPDIR and ports, stopped by process group).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
METHODS_RESULTS = ROOT / "benchmarks" / "RESULTS-methods.md"  # section 5 alone (python -m benchmarks --only methods)
VIEWER_METHODS = ROOT / "handlers" / "viewer" / "methods.json"
IMAGES = ROOT / "docs" / "images" / "methods"
SAMPLE = ROOT / "handlers" / "inspection" / "samples" / "scratch.png"
START, END = "<!-- methods:start -->", "<!-- methods:end -->"
COST_MODEL = "inspection"  # the benchmark case whose ratios the table shows
NO_COST = "see [benchmarks/RESULTS.md](benchmarks/RESULTS.md)"
PANEL, MARGIN, TITLE, COLUMNS = 160, 10, 34, 7


def registry_methods() -> list[dict[str, Any]]:
    """Every registry method as the model description lists it (name, summary, ..., options)."""
    from ..engine.methods import METHODS

    return [
        {
            "name": name,
            "summary": method.summary,
            "class_specific": method.class_specific,
            "resolution": method.resolution,
            "passes": method.passes,
            "options": list(method.params),
        }
        for name, method in METHODS.items()
    ]


def captum_at_run_time() -> set[str]:
    """The methods whose attributions Captum computes while serving (the rest is our own code)."""
    from ..engine.methods import METHODS
    from ..engine.methods.captum_methods import CaptumMethod

    return {name for name, method in METHODS.items() if isinstance(method, CaptumMethod)}


def latest_report(paths: tuple[Path, ...]) -> str:
    """The text of the most recent report (by its ``Date:`` line) among ``paths`` that exist; "" if none."""
    reports = [path.read_text() for path in paths if path.exists()]
    dated = [
        (match.group(1) if (match := re.search(r"^Date: (\S+ \S+) UTC", text, re.MULTILINE)) else "", text)
        for text in reports
    ]
    return max(dated)[1] if dated else ""


def measured_costs(results: str, model: str = COST_MODEL) -> dict[str, str]:
    """Best-time ratio to a plain prediction per method, from RESULTS.md section 5 on ``model``.

    The first row of a method in the model's tables is the path a request takes (the CAM path
    on a pool + linear head). Empty when the section has not been published yet.
    """
    section = re.search(r"^## 5\. .*?(?=^## |\Z)", results, flags=re.MULTILINE | re.DOTALL)
    if section is None:
        return {}
    costs: dict[str, str] = {}
    for block in re.findall(rf"^### {re.escape(model)} \(.*?(?=^### |\Z)", section.group(0), re.MULTILINE | re.DOTALL):
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block.splitlines()]
        rows = [row for row in rows if len(row) > 1 and not set(row[0]) <= set("-:")]
        if not rows:
            continue
        header, *body = rows
        column = next((i for i, name in enumerate(header) if name.startswith("best-time ratio")), None)
        if column is None:
            continue
        for row in body:
            costs.setdefault(row[0], row[column])
    return costs


def methods_table(methods: list[dict[str, Any]], costs: Mapping[str, str], captum: set[str]) -> str:
    """The README's methods table (markdown)."""
    lines = [
        "| method | what it shows | class-specific | resolution | passes | options | implementation "
        f"| cost vs a prediction ({COST_MODEL}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        options = ", ".join(f"`{o}`" for o in m["options"]) or "-"
        implementation = "Captum, at run time" if m["name"] in captum else "ours"
        lines.append(
            f"| `{m['name']}` | {m['summary']} | {'yes' if m['class_specific'] else 'no'} | {m['resolution']} "
            f"| {m['passes']} | {options} | {implementation} | {costs.get(m['name'], NO_COST)} |"
        )
    return "\n".join(lines)


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``."""
    if START not in readme or END not in readme:
        raise ValueError(f"README.md has no {START} ... {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def generated() -> dict[Path, str]:
    """The generated files' expected contents."""
    methods = registry_methods()
    costs = measured_costs(latest_report((RESULTS, METHODS_RESULTS)))
    table = methods_table(methods, costs, captum_at_run_time())
    return {
        README: with_table(README.read_text(), table),
        VIEWER_METHODS: json.dumps({"methods": methods}, indent=1) + "\n",
    }


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _panel(picture: Image.Image) -> Image.Image:
    """``picture`` fitted to a PANEL square (mosaics and small maps without smoothing)."""
    resample = Image.Resampling.NEAREST if picture.width < PANEL else Image.Resampling.BILINEAR
    return ImageOps.pad(picture.convert("RGB"), (PANEL, PANEL), method=resample, color=(255, 255, 255))


def contact_sheet(panels: list[tuple[str, str, Image.Image]]) -> Image.Image:
    """Titled panels (title, subtitle, picture) in rows of COLUMNS."""
    rows = -(-len(panels) // COLUMNS)
    width = COLUMNS * PANEL + (COLUMNS + 1) * MARGIN
    sheet = Image.new("RGB", (width, MARGIN + rows * (TITLE + PANEL + MARGIN)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (title, subtitle, picture) in enumerate(panels):
        row, column = divmod(i, COLUMNS)
        left, top = MARGIN + column * (PANEL + MARGIN), MARGIN + row * (TITLE + PANEL + MARGIN)
        draw.text((left + PANEL // 2, top + 9), title, fill=(20, 20, 20), font=_font(14), anchor="mm")
        draw.text((left + PANEL // 2, top + 25), subtitle, fill=(90, 90, 90), font=_font(11), anchor="mm")
        sheet.paste(_panel(picture), (left, top + TITLE))
    return sheet


def draw_methods(out: Path) -> Path:
    """Every method on SAMPLE through the default model on a real TorchServe; the contact sheet's path."""
    from ..archive import main as archive_main
    from ..testing.torchserve import TorchServe
    from .api import ExplainClient, fetch_description
    from .pipeline import decode_png, explained

    image = SAMPLE.read_bytes()
    panels: list[tuple[str, str, Image.Image]] = [("input", SAMPLE.name, Image.open(io.BytesIO(image)))]
    with tempfile.TemporaryDirectory(prefix="methods-docs-") as scratch:
        store = Path(scratch) / "store"
        archive_main(["inspection", "--export-path", str(store)])
        with TorchServe(store, {"inspection": "inspection.mar"}, Path(scratch) / "server") as server:
            description = fetch_description(server.url("management"), "inspection")
            client = ExplainClient(server.url(), "inspection")
            try:
                for method in description["methods"]:
                    if method["name"] == "none":
                        continue
                    fmt = "tiles" if method["name"] == "activations" else "overlay"
                    answer = client.explain(image, SAMPLE.name, {"method": method["name"], "format": fmt})
                    (entry,) = answer["explanations"]
                    panels.append((method["name"], explained(entry), decode_png(entry["png"])[1]))
            finally:
                client.close()
    out.mkdir(parents=True, exist_ok=True)
    path = out / SAMPLE.name
    contact_sheet(panels).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with --check compare) the generated files; --images also draws the pictures."""
    cli = argparse.ArgumentParser(prog="python -m handlers.client.methods_docs", description=__doc__.split("\n")[0])
    cli.add_argument("--check", action="store_true", help="exit 1 when a generated file is not current")
    cli.add_argument("--images", action="store_true", help=f"also draw {IMAGES.relative_to(ROOT)}/ (starts TorchServe)")
    args = cli.parse_args(argv)
    stale = [path for path, text in generated().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            sys.stderr.write(f"{path.relative_to(ROOT)} is not current: run python -m handlers.client.methods_docs\n")
        return 1 if stale else 0
    for path, text in generated().items():
        if path in stale:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.images:
        print(f"wrote {draw_methods(IMAGES).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
