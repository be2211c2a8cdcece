"""bench-report's verdicts on hand-made result and predictions files: the majority baseline, paired
comparisons, Pareto points not distinguishable from the front, conditions, code versions, selection."""
import gzip
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from bench.report.build import REPORT_FILES, build_report, collect
from test_report import md_tables

N = 200
REFS = [1] * 120 + [0] * 80  # 60 % ones: the majority baseline (predicts 1) scores 0.6000


def flipped(*indexes) -> list[int]:
    """The majority prediction (1 everywhere) with the given examples flipped to 0."""
    out = [1] * N
    for i in indexes:
        out[i] = 0
    return out


# accuracy on REFS, by hand: a flip in 120..199 turns a miss into a hit, a flip in 0..119 a hit into a miss
PREDICTIONS = {
    "full": flipped(*range(120, 180)),               # 120 + 60 = 180 -> 0.9000
    "lora": flipped(*range(120, 128)),               # 128 -> 0.6400: +8 vs majority, consistently
    "ia3": flipped(*range(120, 129), 0),             # 128 -> 0.6400: = lora but for 2 examples
    "prefix": flipped(*range(120, 160), *range(30)),  # 130 -> 0.6500: +40 -30, too noisy to beat majority
    "prompt": flipped(),                             # 120 -> 0.6000: the majority baseline itself
}
SEEDS = (0, 1, 2)
PARAMS = {"full": 22_713_986, "lora": 74_498, "ia3": 80_000, "prefix": 100_000, "prompt": 8_450}


def write_run(root: Path, task: str, method: str, seed: int = 0, *, preds=None, refs=None, primary="accuracy",
              value=None, majority=1, majority_value=None, predictions=True, **extra) -> Path:
    run_dir = root / "sweep" / f"{task}-minilm-{method}-s{seed}"
    run_dir.mkdir(parents=True)
    refs = REFS if refs is None else refs
    preds = PREDICTIONS.get(method) if preds is None else preds
    if value is None:
        value = sum(p == r for p, r in zip(preds, refs)) / len(refs)
    result = {
        "schema_version": 2, "status": "finished", "task": task, "model": "minilm", "method": method, "seed": seed,
        "primary_metric": primary, "metrics": {primary: value}, "eval_split": "validation",
        "params": {"trainable": PARAMS.get(method, 1000), "total": 22_713_986},
        "storage": {"bytes": 4 * PARAMS.get(method, 1000)},
        "throughput": {"train_tokens_per_s": 1000.0}, "memory": {"added_bytes": 2**30, "peak_bytes": 2**31},
        "time": {"train_s": 10.0},
        "env": {"git_sha": "a" * 40, "git_dirty": False, "device": "cpu"},
        "conditions": {"device": "cpu", "device_name": "AMD EPYC", "torch_threads": 1, "launcher": "basic",
                       "processes": 1, "precision": "fp32"},
        "overrides": [f"method={method}", f"seed={seed}"],
    }
    if majority is not None:
        base = majority_value if majority_value is not None else sum(r == majority for r in refs) / len(refs)
        result["baselines"] = {"majority": {"prediction": majority, "metrics": {primary: base}}}
    if predictions:
        result["predictions"] = {"validation": "predictions-validation.json.gz"}
        payload = {"split": "validation", "ids": list(range(len(refs))), "predictions": preds,
                   "references": refs, "primary_metric": primary}
        payload.update(extra.pop("payload", {}))
        with gzip.open(run_dir / "predictions-validation.json.gz", "wt", encoding="utf-8") as fh:
            json.dump(payload, fh)
    for key, val in extra.items():
        if isinstance(val, dict) and isinstance(result.get(key), dict):
            result[key].update(val)
        else:
            result[key] = val
    (run_dir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
    return run_dir


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdicts") / "results"
    for seed in SEEDS:  # the same predictions on every seed: no spread over seeds, so the examples decide
        for method in PREDICTIONS:
            write_run(root, "sst2", method, seed)
        # the flagged row has the higher mean: it must not be ranked best
        for method in ("prefix", "lora"):
            write_run(root, "rte", method, seed)
    return root


@pytest.fixture(scope="module")
def built(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("verdicts-out")
    written = build_report(results, out)
    return written, md_tables(written["markdown"].read_text(encoding="utf-8"))


def _rows(tables, heading):
    return {r["method"]: r for r in tables[heading] if "method" in r}


def test_majority_baseline_row_and_flags(built):
    _, tables = built
    sst2 = _rows(tables, "sst2: accuracy (higher is better)")
    assert sst2["majority baseline"]["accuracy (mean ± std)"] == "0.6000"
    assert sst2["majority baseline"]["trainable params"] == "–"
    # identical to the baseline, and +40 -30 on 200 examples: not significantly better -> flagged
    for method in ("prompt", "prefix"):
        assert sst2[method]["vs majority"] == "≤ majority" and "≤ majority" in sst2[method]["flags"], method
    # +8 on 200 (every difference in its favour) and +60: better, not flagged
    for method in ("lora", "ia3", "full"):
        assert sst2[method]["vs majority"] == "better" and sst2[method]["flags"] == "–", method
    assert sst2["full"]["accuracy (mean ± std)"] == "**0.9000 ± 0.0000**" and sst2["full"]["vs best"] == "best"
    assert sst2["lora"]["vs best"] == "worse"
    # prompt has the fewest trainable params but is not better than a constant: no front, no bold for it
    assert sst2["prompt"]["Pareto (params)"] == "no (≤ majority)" and sst2["prompt"]["trainable params"] == "8,450"
    assert sst2["lora"]["trainable params"] == "**74,498**"
    assert sst2["lora"]["Pareto (params)"] == "yes" and sst2["full"]["Pareto (params)"] == "yes"
    # ia3 ties lora's accuracy with more parameters: off the front, but not distinguishable from lora
    assert sst2["ia3"]["Pareto (params)"] == "no, ≈ lora"  # short labels: one model, so the method
    rte = _rows(tables, "rte: accuracy (higher is better)")
    assert rte["prefix"]["accuracy (mean ± std)"] == "0.6500 ± 0.0000" and rte["prefix"]["vs majority"] == "≤ majority"
    assert rte["lora"]["accuracy (mean ± std)"] == "**0.6400 ± 0.0000**" and rte["lora"]["vs best"] == "best"
    assert rte["prefix"]["vs best"] == "not distinguishable"


def test_paired_differences_table(built):
    _, tables = built
    rows = {(r["row"], r["compared with"]): r
            for r in tables["Paired differences on validation (seeds and examples)"]}
    full = rows[("full", "majority baseline")]
    assert full["difference in accuracy"] == "+0.3000" and full["verdict"] == "better"
    assert (full["per seed"], full["example ids"]) == ("+0.300, +0.300, +0.300", "200")
    same = rows[("prompt", "majority baseline")]
    assert same["difference in accuracy"] == "+0.0000"
    assert same["95% CI over examples (bootstrap)"] == "[+0.0000, +0.0000]"
    assert same["verdict"] == "not distinguishable"
    worse = rows[("lora", "full")]
    assert worse["difference in accuracy"] == "-0.2600" and worse["verdict"] == "worse"
    # the Pareto check behind "≈ minilm · lora": one win and one loss out of 200
    near = rows[("ia3", "lora")]
    assert near["difference in accuracy"] == "+0.0000" and near["verdict"] == "not distinguishable"


def test_plots_mark_the_baseline_flagged_and_near_front_points(built):
    written, _ = built
    page = written["html"].read_text(encoding="utf-8")
    sst2 = page.split('data-task="sst2"', 1)[1].split("</section>", 1)[0]
    params = sst2.split('data-plot="metric-vs-params"', 1)[1].split("</svg>", 1)[0]
    assert params.count('data-baseline="majority"') == 1 and "majority baseline 0.6000" in params
    mark = r'<circle data-point="scatter" data-group="minilm · (\w+)"[^>]*?(?: class="([^"]*)")? cx'
    circles = dict(re.findall(mark, params))
    assert circles == {"full": "on-front", "ia3": "near-front", "lora": "on-front", "prefix": "flagged",
                       "prompt": "flagged"}
    assert 'data-expected="5"' in params


def test_seeds_pair_and_pool(tmp_path):
    # two seeds each; b's seed 2 has no partner and is left out; ids matched, not positions
    root = tmp_path / "results"
    for seed in (0, 1):
        write_run(root, "sst2", "full", seed)
        write_run(root, "sst2", "lora", seed)
    write_run(root, "sst2", "lora", 2)
    shuffled = write_run(root, "sst2", "prompt", 0, preds=PREDICTIONS["full"])
    with gzip.open(shuffled / "predictions-validation.json.gz", "rt", encoding="utf-8") as fh:
        payload = json.load(fh)
    order = list(reversed(range(N)))  # same examples, reversed order: pairing by id makes it identical to full
    payload.update({k: [payload[k][i] for i in order] for k in ("ids", "predictions", "references")})
    with gzip.open(shuffled / "predictions-validation.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(payload, fh)
    report = collect(root)
    (section,) = report.sections
    groups = {g.method: g for g in section.groups}
    assert (groups["lora"].vs_best.seeds, groups["lora"].vs_best.examples) == (2, 200)  # ids, all seeds each
    assert groups["lora"].vs_best.diff == pytest.approx(-0.26)
    assert groups["lora"].vs_best.per_seed == pytest.approx([-0.26, -0.26])
    assert "seed(s) 2 without a partner" in groups["lora"].vs_best.reason  # never left out silently
    # one seed in common: the difference is shown, but training randomness is unmeasured, so no verdict
    assert (groups["prompt"].vs_best.seeds, groups["prompt"].vs_best.diff) == (1, 0.0)
    assert groups["prompt"].vs_best.verdict == "n/a" and "1 seed" in groups["prompt"].vs_best.reason
    assert groups["lora"].interval == pytest.approx((0.64, 0.64)) and groups["lora"].values["std"] == 0.0


def test_conditions_are_shown_and_not_compared_across(tmp_path):
    root = tmp_path / "results"
    for method, threads, tps, added in (("full", 1, 500.0, 3 * 2**30), ("lora", 2, 3000.0, 2**30),
                                        ("prompt", 1, 1000.0, 2 * 2**30)):
        write_run(root, "mrpc", method, predictions=False, majority=None,
                  conditions={"torch_threads": threads}, throughput={"train_tokens_per_s": tps},
                  memory={"added_bytes": added})
    written = build_report(root, tmp_path / "out")
    text = written["markdown"].read_text(encoding="utf-8")
    rows = _rows(md_tables(text), "mrpc: accuracy (higher is better)")
    # lora's 3000 tokens/s and 1 GiB ran with 2 threads: alone in its conditions, never bold;
    # among the 1-thread rows prompt is fastest and smallest
    assert rows["lora"]["train tokens/s"] == "3,000" and rows["lora"]["memory (added)"] == "1.0 GiB"
    assert rows["prompt"]["train tokens/s"] == "**1,000**" and rows["prompt"]["memory (added)"] == "**2.0 GiB**"
    assert rows["full"]["train tokens/s"] == "500"
    assert (rows["full"]["conditions"], rows["lora"]["conditions"], rows["prompt"]["conditions"]) == ("A", "B", "A")
    keys = {r["conditions"]: r for r in md_tables(text)["mrpc: accuracy (higher is better)"] if "torch threads" in r}
    assert keys["A"]["torch threads"] == "1" and keys["B"]["torch threads"] == "2"
    assert keys["A"]["launcher"] == "basic" and keys["A"]["device name"] == "AMD EPYC"


def test_code_versions_dirty_trees_bias_and_memory_fallback(tmp_path):
    root = tmp_path / "results"
    write_run(root, "cola", "lora", 0, predictions=False, majority=None)
    write_run(root, "cola", "lora", 1, predictions=False, majority=None, env={"git_sha": "b" * 40})
    write_run(root, "cola", "full", predictions=False, majority=None, env={"git_dirty": True})
    write_run(root, "cola", "prompt", predictions=False, majority=None, env={"git_sha": "a" * 40 + "-dirty"},
              memory={"added_bytes": None, "peak_bytes": 2**29})  # an older file: the absolute peak only
    write_run(root, "cola", "prefix", predictions=False, majority=None, selection_biased=True)
    written = build_report(root, tmp_path / "out")
    text = written["markdown"].read_text(encoding="utf-8")
    rows = _rows(md_tables(text), "cola: accuracy (higher is better)")
    assert rows["lora"]["flags"] == "code aaaaaaa, bbbbbbb"
    assert rows["full"]["flags"] == "code aaaaaaa; dirty tree"
    assert rows["prompt"]["flags"] == "code aaaaaaa; dirty tree"  # old-style "-dirty" suffix
    assert rows["prefix"]["flags"] == "selected on validation (biased); code aaaaaaa"
    assert "come from 2 code versions (aaaaaaa, bbbbbbb)" in text
    assert "selected on validation (biased): its configuration was chosen on the validation split shown here" in text
    # a peak figure is labelled and never compared with the added figures, even when it is the smallest
    assert rows["prompt"]["memory (added)"] == "512.0 MiB (peak)" and rows["full"]["memory (added)"] == "**1.0 GiB**"
    # one clean code version: no flags column at all
    clean = tmp_path / "clean"
    write_run(clean, "cola", "lora", predictions=False, majority=None)
    write_run(clean, "cola", "full", predictions=False, majority=None)
    rows = md_tables(build_report(clean, tmp_path / "out2")["markdown"].read_text(encoding="utf-8"))
    assert "flags" not in rows["cola: accuracy (higher is better)"][0]


def test_grid_edges_by_hand():
    from bench.report.tables import grid_edges

    space = {"method.lr": [1e-4, 3e-4, 1e-3], "method.peft.r": [4, 8]}
    assert grid_edges(space, {"method.lr": 3e-4, "method.peft.r": 8}) == []  # inside; a 2-point grid has no inside
    assert grid_edges(space, {"method.lr": 1e-4}) == ["method.lr"]
    assert grid_edges(space, {"method.lr": 1e-3}) == ["method.lr"]
    assert grid_edges({"method.lr": {"low": 1e-4, "high": 1e-2}}, {"method.lr": 1e-4}) == []  # optuna: no grid


def test_selection_table_trials_and_recomputation_note(tmp_path):
    root = tmp_path / "results"
    # the layout bench-protocol writes (bench.result_schema.Selection): search.space, winner.values
    selection = {"split": "dev", "metric": "accuracy",
                 "search": {"mode": "grid", "n_trials": 3, "seed": 0, "space": {"method.lr": [0.001, 0.003, 0.01]}},
                 "trials": [{"values": {"method.lr": 0.001}, "dev_score": 0.71, "identity": "x1"},
                            {"values": {"method.lr": 0.003}, "dev_score": 0.72, "identity": "x3"},
                            {"values": {"method.lr": 0.01}, "dev_score": 0.74, "identity": "x2"}],
                 "winner": {"values": {"method.lr": 0.01}, "dev_score": 0.74, "index": 2, "identity": "x2",
                            "run": "search/sst2-minilm-lora-s0-x2"}}
    write_run(root, "sst2", "lora", selection=selection)
    write_run(root, "sst2", "full", value=0.95)  # recorded 0.95, its predictions give 0.90
    trial = write_run(root, "sst2", "prompt", predictions=False, eval_split="dev", dev_metrics={"accuracy": 0.7})
    data = json.loads((trial / "result.json").read_text(encoding="utf-8"))
    del data["metrics"]
    (trial / "result.json").write_text(json.dumps(data), encoding="utf-8")
    written = build_report(root, tmp_path / "out")
    text = written["markdown"].read_text(encoding="utf-8")
    (row,) = md_tables(text)["How each row was selected"]
    assert row["row"] == "lora" and row["selected on"] == "dev" and row["trials"] == "3"
    assert row["search space"] == 'method.lr=[0.001, 0.003, 0.01]'
    assert row["winner"] == "method.lr=0.01 (at the edge of the grid: method.lr; the best value may lie outside it)"
    assert row["dev scores"] == "method.lr=0.001: 0.7100; method.lr=0.003: 0.7200; method.lr=0.01: 0.7400"
    assert "sweep/sst2-minilm-full-s0/result.json: accuracy recomputed from its predictions file is 0.900000, " \
           "recorded 0.950000" in text
    # the dev-only trial is counted and listed, not averaged into a row
    assert "3 result files, 3 finished, 0 failed, 0 diverged, 0 incomplete, 0 unreadable, 1 dev-only selection " \
           "trials." in text
    assert {r["method"] for r in md_tables(text)["sst2: accuracy (higher is better)"]} == {
        "full", "lora", "majority baseline"}
    assert "dev accuracy=0.7000" in text


def test_generation_and_regression_metrics(tmp_path):
    root = tmp_path / "results"
    answers = [str(i) for i in range(100)]
    good = [a if i < 60 else "?" for i, a in enumerate(answers)]
    poor = [a if i < 20 else "?" for i, a in enumerate(answers)]
    for seed in (0, 1):  # two seeds with equal predictions: no spread over seeds, the examples decide
        write_run(root, "gsm8k", "lora", seed, preds=good, refs=answers, primary="exact_match", majority=None)
        write_run(root, "gsm8k", "hard_prompt", seed, preds=poor, refs=answers, primary="exact_match",
                  majority=None)
        # ROUGE-L is scored per example elsewhere: resampled from the predictions file's scores
        scores = {"scores": {"rouge_l": [1.0] * 60 + [0.0] * 40}}
        write_run(root, "e2e_r", "lora", seed, preds=good, refs=answers, primary="rouge_l", value=0.6,
                  majority=None, payload=scores)
        write_run(root, "e2e_r", "prompt", seed, preds=poor, refs=answers, primary="rouge_l", value=0.2,
                  majority=None, payload={"scores": {"rouge_l": [1.0] * 20 + [0.0] * 80}})
        # Pearson by hand: t = i/10 (var 0.01 * (50^2 - 1) / 12 = 2.0825), noise +-0.3 alternating (var 0.09,
        # cov with t 0.3 * 2.5 / 50 = 0.015): r = (2.0825 + 0.015) / sqrt(2.0825 * (2.0825 + 0.09 + 0.03))
        pearson = 2.0975 / math.sqrt(2.0825 * 2.2025)
        target = [i / 10 for i in range(50)]
        write_run(root, "stsb", "full", seed, preds=[t + (0.3 if i % 2 else -0.3) for i, t in enumerate(target)],
                  refs=target, primary="pearsonr", value=pearson, majority=2.45, majority_value=0.0)
    # BLEU is recomputed from sacrebleu's per-sentence statistics: the recorded value must match them
    write_run(root, "e2e", "lora", preds=good, refs=answers, primary="bleu", value=0.5, majority=None)
    report = collect(root)
    sections = {s.task: s for s in report.sections}
    groups = {g.method: g for g in sections["gsm8k"].groups}
    assert groups["lora"].values["mean"] == 0.6 and groups["hard_prompt"].vs_best.verdict == "worse"
    assert groups["hard_prompt"].vs_best.diff == pytest.approx(-0.4)
    assert any("bleu recomputed from its predictions file" in note for note in sections["e2e"].notes)
    rouge = {g.method: g for g in sections["e2e_r"].groups}["prompt"].vs_best
    assert rouge.verdict == "worse" and rouge.diff == pytest.approx(-0.4)
    (full,) = sections["stsb"].groups
    assert full.vs_majority.verdict == "better" and full.vs_majority.diff == pytest.approx(pearson)
    assert sections["stsb"].baseline.value == 0.0


def test_byte_identical_from_copies_with_predictions(results, built, tmp_path):
    first, _ = built
    copy = shutil.copytree(results, tmp_path / "elsewhere" / "results")
    second = build_report(copy, tmp_path / "out")
    for kind in REPORT_FILES:
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind


def test_predictions_files_that_cannot_be_used(tmp_path):
    root = tmp_path / "results"
    escape = write_run(root, "sst2", "lora", predictions=False)
    data = json.loads((escape / "result.json").read_text(encoding="utf-8"))
    data["predictions"] = {"validation": "../../../etc/passwd"}
    (escape / "result.json").write_text(json.dumps(data), encoding="utf-8")
    broken = write_run(root, "sst2", "full")
    (broken / "predictions-validation.json.gz").write_bytes(b"not gzip")
    runs = {r.method: r for r in collect(root).runs}
    assert runs["lora"].predictions is None and "leaves the run folder" in runs["lora"].predictions_problem
    assert runs["full"].predictions is None and "not a readable gzip file" in runs["full"].predictions_problem


def test_gradient_checkpointing_or_compile_is_a_condition_speed_and_memory_are_not_compared_across(tmp_path):
    root = tmp_path / "results"
    for method, options, added in (("full", "gradient checkpointing", 2**30), ("lora", "", 3 * 2**30),
                                   ("prompt", "", 2 * 2**30)):
        write_run(root, "mrpc", method, predictions=False, majority=None, conditions={"options": options},
                  memory={"added_bytes": added})
    text = build_report(root, tmp_path / "out")["markdown"].read_text(encoding="utf-8")
    rows = _rows(md_tables(text), "mrpc: accuracy (higher is better)")
    # full's 1 GiB was bought with recomputation: not bold against lora and prompt, which ran without it
    assert rows["full"]["memory (added)"] == "1.0 GiB" and rows["prompt"]["memory (added)"] == "**2.0 GiB**"
    assert rows["full"]["conditions"] != rows["prompt"]["conditions"] == rows["lora"]["conditions"]
    keys = {r["conditions"]: r for r in md_tables(text)["mrpc: accuracy (higher is better)"] if "options" in r}
    assert keys[rows["full"]["conditions"]]["options"] == "gradient checkpointing"
    assert keys[rows["lora"]["conditions"]]["options"] == "–"
