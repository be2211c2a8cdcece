"""Generated samples under a generation task's table: for the first rows (by example id) that every row of the
section evaluated, the reference and what each method wrote (its lowest seed), so that a metric like BLEU can be
read against the text behind it. Nothing for tasks whose predictions are labels."""
from __future__ import annotations

from bench.report.fmt import DASH, text
from bench.report.model import Run, Section, Table, cells, seed_key

SAMPLES = 2
SAMPLES_NOTE = ("Validation rows with the lowest example ids that every row of the table evaluated; each row's "
                "output is its lowest seed's, as recorded in its predictions file; the reference is the first of "
                "the row's references.")


def _texts(run: Run) -> dict | None:
    """example id -> (prediction, first reference) when the run's predictions are text."""
    p = run.predictions
    if p is None or not p.predictions or not isinstance(p.predictions[0], str):
        return None
    out = {}
    for i, pred, ref in zip(p.ids, p.predictions, p.references):
        first = ref[0] if isinstance(ref, list) and ref else ref
        out[i] = (pred, text(first))
    return out


def sample_blocks(section: Section) -> list:
    chosen = []  # (group label, its lowest seed's texts)
    for g in section.groups:
        found = sorted(((r, _texts(r)) for r in g.runs), key=lambda rt: (seed_key(rt[0].seed), rt[0].path))
        found = [(r, t) for r, t in found if t is not None]
        if found:
            chosen.append((g.short or g.label, text(found[0][0].seed), found[0][1]))
    if not chosen:
        return []
    shared = set.intersection(*(set(t) for _, _, t in chosen))
    ids = sorted(shared, key=lambda i: (not isinstance(i, int), i if isinstance(i, int) else text(i)))[:SAMPLES]
    if not ids:
        return []
    rows = []
    for i in ids:
        rows.append(cells(text(i), "reference", chosen[0][2][i][1] or DASH))
        rows += [cells(text(i), f"{label} (seed {seed or DASH})", texts[i][0] or DASH) for label, seed, texts in chosen]
    return [("h3", "Generated samples"), ("table", Table(["example id", "who", "text"], rows)),
            ("p", SAMPLES_NOTE)]
