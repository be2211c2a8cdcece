"""Task data: every task file loads, and bad data fails with file, line, field and value named."""
import json
import subprocess
import sys

import pytest

from bench import checks, config, tasks

GOOD = {"sentence": "a fine film ", "label": 1, "idx": 0}


def _write(folder, rows_or_lines):
    (folder / "sst2").mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows_or_lines]
    (folder / "sst2" / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "sst2" / "validation.jsonl").write_text(json.dumps(GOOD) + "\n")
    return folder / "sst2" / "train.jsonl"


def _load(compose, data_dir):
    cfg = compose(f"paths.data_dir={data_dir}")
    return tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)


def test_malformed_json_names_file_and_line(compose, tmp_path):
    path = _write(tmp_path, [GOOD, GOOD, '{"sentence": "oops", "label": 1'])
    with pytest.raises(tasks.DataError, match=rf"^{path}:3: malformed JSON \(.* at column \d+\)$"):
        _load(compose, tmp_path)


def test_missing_field_names_the_field_and_the_fields_present(compose, tmp_path):
    path = _write(tmp_path, [GOOD, {"text": "no sentence here", "label": 0, "idx": 1}])
    with pytest.raises(tasks.DataError) as err:
        _load(compose, tmp_path)
    assert str(err.value) == f"{path}:2: missing field 'sentence'; fields present: ['idx', 'label', 'text']"


def test_label_outside_the_label_set_names_value_and_row(compose, tmp_path):
    path = _write(tmp_path, [GOOD, GOOD, GOOD, {"sentence": "x", "label": 7, "idx": 3}])
    with pytest.raises(tasks.DataError) as err:
        _load(compose, tmp_path)
    assert str(err.value) == f"{path}:4: label 7 is not in the task's label set (0=negative, 1=positive)"


@pytest.mark.parametrize("group,name", [("task", "sst3"), ("model", "bert-huge"), ("method", "adapterz")])
def test_unknown_task_model_or_method_lists_the_available_ones(tmp_path, group, name):
    out = subprocess.run([sys.executable, "-m", "bench.cli", f"{group}={name}", f"paths.results_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"Could not find '{group}/{name}'" in out.stderr
    for option in config.available(group)[:3]:
        assert option in out.stderr


@pytest.mark.parametrize("task", ["sst2", "cola", "mrpc", "rte", "stsb", "cb", "trec"])
def test_every_shipped_task_loads_from_the_shared_data(compose, task):
    cfg = compose(f"task={task}")
    checks.validate(cfg)
    data = tasks.load_task(cfg.task, cfg.paths.data_dir, cfg.trainer)
    assert data.source["kind"] == "local"
    assert len(data.train) == cfg.trainer.train_samples
    assert len(data.validation) == min(cfg.trainer.eval_samples, data.source["files"]["validation"]["rows"])
    row = data.train[0]
    assert all(isinstance(row[f], str) for f in cfg.task.text_fields)


def test_a_new_task_of_an_existing_shape_is_one_yaml_file(compose):
    """TREC is not GLUE: it has its own text and label field names, and no code knows about it."""
    cfg = compose("task=trec", "method=prompt")
    from bench.run import execute

    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    assert "accuracy" in result["metrics"]
