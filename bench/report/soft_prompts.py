"""The soft prompt section under a results table: for each row whose runs recorded `soft_prompt` (prompt tuning,
P-tuning), each virtual token's nearest vocabulary tokens, one column per seed. Nothing for other rows."""
from __future__ import annotations

from bench.report.fmt import DASH, text
from bench.report.model import Group, Section, Table, cells, seed_key

SOFT_PROMPT_NOTE = ("Nearest vocabulary tokens of each trained virtual token (cosine similarity with the frozen input "
                    "embedding table, special tokens left out; P-tuning: the prompt encoder's output), best first, "
                    "with the best one's cosine. Recorded at the end of each run.")


def _nearest(run) -> list | None:
    found = run.data.get("soft_prompt")
    tokens = found.get("nearest_tokens") if isinstance(found, dict) else None
    return tokens if isinstance(tokens, list) else None


def _word(pair) -> str:
    word = text(pair[0]) if isinstance(pair, list) and pair else ""
    return word.strip() or repr(word)


def _cell(pairs) -> str:
    if not isinstance(pairs, list) or not pairs:
        return DASH
    best = pairs[0][1] if isinstance(pairs[0], list) and len(pairs[0]) > 1 else None
    words = ", ".join(_word(p) for p in pairs)
    return f"{words} ({best:.2f})" if isinstance(best, (int, float)) else words


def nearest_table(group: Group) -> Table | None:
    runs = sorted((r for r in group.runs if _nearest(r) is not None), key=lambda r: (seed_key(r.seed), r.path))
    if not runs:
        return None
    tokens = [_nearest(r) for r in runs]
    rows = [cells(str(i), *(_cell(t[i]) if i < len(t) else DASH for t in tokens))
            for i in range(max(len(t) for t in tokens))]
    return Table(["virtual token"] + [f"seed {text(r.seed) or DASH}" for r in runs], rows, {0})


def soft_prompt_blocks(section: Section) -> list:
    blocks: list = []
    for g in section.groups:
        table = nearest_table(g)
        if table is not None:
            blocks += [("h3", f"Soft prompt, nearest words: {g.label}"), ("table", table)]
    return blocks + [("p", SOFT_PROMPT_NOTE)] if blocks else []
