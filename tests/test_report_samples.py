"""The report's generated samples: under a generation task's table, the lowest shared example ids, the first
reference and each row's lowest-seed output, read from the predictions files; nothing for label predictions."""
import gzip
import json

from bench.report.build import build_report


def _run(root, name, method, seed, ids, outputs, refs, metric="bleu", value=0.5):
    folder = root / name
    folder.mkdir(parents=True)
    data = {"schema_version": 2, "status": "finished", "task": "e2e_nlg", "model": "m", "method": method,
            "seed": seed, "primary_metric": metric, "metrics": {metric: value}, "overrides": [],
            "predictions": {"validation": "predictions-validation.json.gz"}}
    (folder / "result.json").write_text(json.dumps(data))
    with gzip.open(folder / "predictions-validation.json.gz", "wt") as f:
        json.dump({"ids": ids, "predictions": outputs, "references": refs, "primary_metric": metric,
                   "split": "validation"}, f)


def test_generated_samples_show_the_lowest_shared_ids_and_each_rows_lowest_seed(tmp_path):
    refs = {3: ["three a", "three b"], 7: ["seven"], 9: ["nine"], 11: ["eleven"]}
    # full evaluated ids 9, 3, 7 (any order); lora 3, 7, 11: shared 3 and 7
    _run(tmp_path, "full1", "full", 1, [9, 3, 7], ["f1-9", "f1-3", "f1-7"], [refs[9], refs[3], refs[7]])
    _run(tmp_path, "full0", "full", 0, [9, 3, 7], ["f0-9", "f0-3", "f0-7"], [refs[9], refs[3], refs[7]])
    _run(tmp_path, "lora0", "lora", 0, [11, 7, 3], ["l-11", "l-7", "l-3"], [refs[11], refs[7], refs[3]])
    md = build_report(tmp_path, tmp_path / "out")["markdown"].read_text()
    samples = md.split("### Generated samples", 1)[1].split("\n\n", 2)[1]
    assert samples.splitlines()[2:] == [
        "| 3 | reference | three a |", "| 3 | full (seed 0) | f0-3 |", "| 3 | lora (seed 0) | l-3 |",
        "| 7 | reference | seven |", "| 7 | full (seed 0) | f0-7 |", "| 7 | lora (seed 0) | l-7 |"]


def test_no_samples_for_label_predictions(tmp_path):
    _run(tmp_path, "a", "full", 0, [1, 2], [0, 1], [0, 1], metric="accuracy")
    assert "Generated samples" not in build_report(tmp_path, tmp_path / "out")["markdown"].read_text()
