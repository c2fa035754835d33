"""``python -m handlers.evaluation``: measure the explanations and write docs/evaluation.md.

Runs the reference agreement on every subject, the localisation metrics and the
randomisation test on the default model, draws the example pictures, scores the ViT of
``inspection/vit.py`` on the same images (default layer and layer by layer), checks the served
faithfulness score (section 6; ``--only faithfulness`` reruns just that section), then writes
the report. Seeded throughout; a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..engine import Explainer
from ..engine.methods import METHODS
from ..inspection import INPUT_SIZE, WEIGHTS_FILE
from ..inspection.synthetic import Sample, to_tensor
from ..inspection.train import sha256_of
from .agreement import SUBJECTS, agreement
from .data import EVALUATION_SEED, default_model, held_out_samples
from .examples import pick_examples, write_examples
from .faithfulness import evaluate_faithfulness
from .family import FAMILY_SUBJECTS, costly, family_agreement
from .localisation import COSTLY_PARAMS, DEFECTS, family_localisation, localisation
from .report import Setup, render_report
from .report_faithfulness import HEADING as FAITHFULNESS_HEADING
from .report_faithfulness import SUMMARY_LEAD, faithfulness_section, summary_bullet
from .sanity import randomisation_test
from .transformer import evaluate_vit, vit_training_report

logger = logging.getLogger(__name__)
REPOSITORY = Path(__file__).resolve().parents[2]
COUNTS = {"scratch": 500, "dent": 500, "scratch+dent": 500}
SANITY_PER_DEFECT = 50  # images of each defect kind in the randomisation test
# Occlusion and integrated gradients cost many passes per map: localisation scores them on
# this many defect images, the randomisation test on this many (the first, kinds alternating).
COSTLY_LOCALISATION_IMAGES = 100
COSTLY_SANITY_IMAGES = 10
# The faithfulness section's deletion / insertion curves cost 2 x (steps - 1) forwards per map.
FAITHFULNESS_CURVE_IMAGES = 100


def with_faithfulness(page: str, model: torch.nn.Module, samples: Sequence[Sample]) -> str:
    """``page`` with section 6 (the served faithfulness score, checked on the same held-out images)
    and its bullet in the opening summary, written or rewritten."""
    sanity_images = SANITY_PER_DEFECT * len(DEFECTS)
    result = evaluate_faithfulness(model, samples, sanity_images, COSTLY_LOCALISATION_IMAGES, FAITHFULNESS_CURVE_IMAGES)
    rows = replace_section(page, FAITHFULNESS_HEADING, faithfulness_section(result)).split("\n")
    rows = [row for row in rows if not row.startswith(SUMMARY_LEAD)]
    summary_end = rows.index("## How this was measured") - 1  # the blank line closing the summary
    rows.insert(summary_end, summary_bullet(result))
    return "\n".join(rows)


def replace_section(page: str, heading: str, lines: Sequence[str]) -> str:
    """``page`` with its section ``heading`` (up to the next "## " heading) replaced by ``lines``, or them appended."""
    rows = page.rstrip("\n").split("\n")
    start = rows.index(heading) if heading in rows else len(rows)
    end = next((i for i in range(start + 1, len(rows)) if rows[i].startswith("## ")), len(rows))
    return "\n".join([*rows[:start], *lines, *rows[end:]]).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m handlers.evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPOSITORY / "docs" / "evaluation.md", help="the Markdown report")
    parser.add_argument(
        "--images", type=Path, default=REPOSITORY / "docs" / "images" / "evaluation", help="folder for the example PNGs"
    )
    parser.add_argument(
        "--subjects", nargs="+", default=list(SUBJECTS), choices=SUBJECTS, help="models of the agreement table"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a busy 2-core machine two threads stall at every op)",
    )
    parser.add_argument(
        "--only",
        choices=["faithfulness"],
        help="recompute this section alone and replace it in the existing report (the rest is kept)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.only == "faithfulness":
        page = args.out.read_text(encoding="utf-8")
        args.out.write_text(with_faithfulness(page, default_model(), held_out_samples(COUNTS, EVALUATION_SEED)))
        logger.info("rewrote section 6 of %s in %.0f s", args.out, time.perf_counter() - started)
        return

    agreements = [agreement(subject, as_shipped=True) for subject in args.subjects]
    family = [family_agreement(subject) for subject in args.subjects if subject in FAMILY_SUBJECTS]
    model = default_model()
    samples = held_out_samples(COUNTS, EVALUATION_SEED)
    outcome = localisation(model, samples)
    scores = family_localisation(model, samples, outcome, COSTLY_LOCALISATION_IMAGES)
    by_kind = [[x for x in samples if x.kind == kind][:SANITY_PER_DEFECT] for kind in DEFECTS]
    sanity = [s for group in zip(*by_kind, strict=True) for s in group]  # kinds alternate: any prefix is balanced
    limit = {name: COSTLY_SANITY_IMAGES for name, method in METHODS.items() if costly(method)}
    steps = randomisation_test(model, to_tensor([s.image for s in sanity]), params=COSTLY_PARAMS, limit=limit)
    written = write_examples(model, pick_examples(samples, outcome), args.images)
    vit = evaluate_vit(samples, vit_training_report())

    explainer = Explainer(model, (INPUT_SIZE, INPUT_SIZE))
    grid = "x".join(map(str, explainer.explained.layers[explainer.layer_name].shape[2:]))
    setup = Setup(EVALUATION_SEED, COUNTS, len(sanity), sha256_of(WEIGHTS_FILE), explainer.layer_name, grid)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(agreements, family, outcome, scores, steps, written, setup, args.out, vit)
    page = with_faithfulness(page, model, samples)
    args.out.write_text(page, encoding="utf-8")
    logger.info(
        "wrote %s and %d pictures in %s in %.0f s",
        args.out,
        len(written),
        args.images,
        time.perf_counter() - started,
    )


if __name__ == "__main__":
    main()
