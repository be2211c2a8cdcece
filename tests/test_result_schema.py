"""result.json's schema in code (bench.result_schema): a real tiny run's record passes the writer's check, the
readers refuse a newer schema version and a wrong type naming the file and the key, older versions stay
readable, and the W&B summary keys are the schema's mirrored sections of a real result."""
import copy
import json
from pathlib import Path

import pytest

from bench import record
from bench import result_schema as schema
from bench.report.build import build_report, collect
from bench.result_schema import ResultError, check_result
from bench.run import execute
from bench.serve.runs import scan

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference" / "compare-cpu-2026-11-23"  # schema 1: the reference before this round
# every committed reference report: a folder holding runs/ and the report built from them
REFERENCES = sorted(p.parent for p in (ROOT / "results" / "reference").rglob("runs") if p.is_dir())
OLD_FIXTURE = Path(__file__).parent / "fixtures" / "report" / "old" / "rte-minilm-lora-s0" / "result.json"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One finished LoRA run (tiny BERT, smoke trainer), with every result.json write bench.run made."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bench.config import CONF_DIR, register_resolvers, run_dir

    register_resolvers()
    results = tmp_path_factory.mktemp("schema") / "results"
    overrides = [f"paths.results_dir={results}", "logger=none", "trainer=smoke", "model=tiny-bert", "method=lora"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    writes = []
    real_write = record.write_result

    def spy(folder, result):
        writes.append(result["status"])
        real_write(folder, result)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(record, "write_result", spy)
        result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    folder = run_dir(cfg)
    return folder, json.loads((folder / record.RESULT_FILE).read_text()), writes


def _write(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / record.RESULT_FILE
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_real_run_is_written_through_the_check_and_passes_it(real_run):
    folder, on_disk, writes = real_run
    assert writes == ["running", "finished"]  # the first record and the final one both go through write_result
    # complete: every key this version writes for a finished run is there, of its type, and none unknown
    assert check_result(on_disk, folder, complete=True) is on_disk
    assert record.read_result(folder) == on_disk
    assert on_disk["schema_version"] == schema.SCHEMA_VERSION == 2
    # every section the schema marks FINISHED is in a finished run
    assert set(schema.marked(schema.FINISHED)) <= set(on_disk)


def test_the_writer_check_refuses_a_writer_bug_and_still_keeps_the_measurements(real_run, tmp_path):
    _, on_disk, _ = real_run
    bad = copy.deepcopy(on_disk)
    bad["memory"]["figure"] = "peak"
    with pytest.raises(ResultError) as err:
        record.write_result(tmp_path, bad)
    assert str(err.value) == (f"{tmp_path / 'result.json'}: memory.figure: expected one of 'added', 'allocated', "
                              f"got str 'peak'")
    assert json.loads((tmp_path / "result.json").read_text())["memory"]["figure"] == "peak"  # written anyway

    missing = copy.deepcopy(on_disk)
    del missing["conditions"]
    with pytest.raises(ResultError, match=r"result\.json: conditions: missing \(a finished run has it\)$"):
        check_result(missing, tmp_path / "result.json", complete=True)
    del missing["memory"]["added_bytes"]
    missing["conditions"] = on_disk["conditions"]
    with pytest.raises(ResultError, match=r": memory\.added_bytes: missing$"):
        check_result(missing, "x", complete=True)
    typo = copy.deepcopy(on_disk)
    typo["memory"]["peek_bytes"] = 1
    with pytest.raises(ResultError, match=r"x: memory\.peek_bytes: not in the schema \(Memory in "):
        check_result(typo, "x", complete=True)
    check_result(typo, "x")  # a reader passes keys it does not know (hand-written or later files)

    # the first record, written before any compute: only the keys known then are required
    running = {k: on_disk[k] for k in schema.Result.__required_keys__} | {"status": "running"}
    check_result(running, "x", complete=True)
    with pytest.raises(ResultError, match=r"^x: identity: missing$"):
        check_result({k: v for k, v in running.items() if k != "identity"}, "x", complete=True)


def test_a_newer_schema_version_is_refused_naming_the_file(real_run, tmp_path):
    _, on_disk, _ = real_run
    path = _write(tmp_path / "results" / "run-a", {**on_disk, "schema_version": 99})
    with pytest.raises(ResultError) as err:
        record.read_result(path.parent)
    assert str(err.value) == f"{path}: schema_version: 99 is newer than this bench reads (up to 2); " \
                             "update bench to read it"
    # the report lists it as unreadable (the row names the file), serve-eval leaves it out with the reason
    (unreadable,) = collect(tmp_path / "results").unreadable
    assert unreadable.path == "run-a/result.json"
    assert unreadable.reason.startswith("schema_version: 99 is newer")
    found, refused = scan(tmp_path / "results")
    assert found == {} and refused[0]["run"] == "run-a" and "schema_version: 99" in refused[0]["reason"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["memory"].update(added_bytes="1024"), "memory.added_bytes: expected int or None, got str"),
    (lambda d: d["params"].update(trainable=True), "params.trainable: expected int, got bool"),
    (lambda d: d["train_loss_curve"]["loss"].__setitem__(2, "x"), "train_loss_curve.loss[2]: expected float, got str"),
    (lambda d: d["metrics"].update(accuracy=None), "metrics.accuracy: expected float, got None"),
    (lambda d: d.update(status="done"), "status: expected one of 'running', 'finished', 'failed', 'diverged', "
                                        "'preempted', 'interrupted', got str 'done'"),
    (lambda d: d.pop("status"), "status: missing"),
    (lambda d: d.update(conditions=None), "conditions: expected object, got None"),
])
def test_a_wrong_type_is_refused_naming_the_key_path(real_run, tmp_path, edit, message):
    _, on_disk, _ = real_run
    data = copy.deepcopy(on_disk)
    edit(data)
    path = _write(tmp_path / "run", data)
    with pytest.raises(ResultError) as err:
        record.read_result(path.parent)
    assert str(err.value) == f"{path}: {message}"
    assert err.value.reason == message


def test_older_schema_versions_stay_readable_and_the_reference_report_rebuilds_byte_identically(tmp_path):
    runs = sorted((REFERENCE / "runs").rglob("result.json"))
    assert len(runs) == 12
    for path in runs:  # schema 1: no dev split, conditions, predictions, git_dirty; memory without added_bytes
        data = json.loads(path.read_text())
        assert data["schema_version"] == 1 and "added_bytes" not in data["memory"]
        assert check_result(data, path) is data
        with pytest.raises(ResultError, match="schema_version: the writer writes 2, got 1"):
            check_result(data, path, complete=True)
    unversioned = json.loads(OLD_FIXTURE.read_text())  # the first bench wrote no schema_version
    assert "schema_version" not in unversioned and check_result(unversioned, OLD_FIXTURE) is unversioned

    written = build_report(REFERENCE / "runs", tmp_path / "report")
    for kind, name in (("markdown", "report.md"), ("csv", "results.csv"), ("html", "index.html"),
                       ("verdicts", "verdicts.csv")):
        assert written[kind].read_bytes() == (REFERENCE / name).read_bytes(), name


def test_the_committed_references_are_found():
    names = {str(p.relative_to(ROOT / "results" / "reference")) for p in REFERENCES}
    assert {"compare-cpu", "compare-cpu-2026-11-23", "protocol-cpu", "protocol-cpu-2026-11-27",
            "gpu-h200/compare", "shapes-cpu", "experiments-cpu/scale", "experiments-cpu/ensemble-sst2"} <= names


@pytest.mark.parametrize("folder", REFERENCES, ids=lambda p: p.name if p.parent.name == "reference" else
                         f"{p.parent.name}/{p.name}")
def test_every_committed_reference_report_rebuilds_byte_identically(folder, tmp_path):
    written = build_report(folder / "runs", tmp_path / "report")
    for kind, name in (("markdown", "report.md"), ("csv", "results.csv"), ("html", "index.html"),
                       ("verdicts", "verdicts.csv")):
        assert written[kind].read_bytes() == (folder / name).read_bytes(), f"{folder.name}/{name}"


def test_wandb_summary_keys_are_the_flattened_schema_sections_of_a_real_result(real_run):
    _, on_disk, _ = real_run
    assert set(record.SUMMARY_SECTIONS) == {"metrics", "dev_metrics", "params", "storage", "throughput", "memory",
                                            "time", "energy"}
    flat = record.flatten(on_disk)
    # by hand: every scalar leaf of the mirrored sections the run wrote (metrics: every metric), and the status
    expected = {"status": "finished", "metrics/accuracy": on_disk["metrics"]["accuracy"]}
    for section in ("params", "storage", "throughput", "memory", "time", "energy"):
        for key, value in on_disk[section].items():
            if not isinstance(value, (dict, list)):
                expected[f"{section}/{key}"] = value
    assert flat == expected
    assert {"memory/added_bytes", "params/stored", "storage/bytes", "time/train_s",
            "throughput/train_tokens_per_s"} <= set(flat)
    assert not {k for k in flat if k.startswith(("storage/files", "storage/counted", "env/", "conditions/"))}


def test_a_refused_result_file_stops_the_run_unless_force_overwrites_it(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bench.config import CONF_DIR, register_resolvers, run_dir

    register_resolvers()
    overrides = [f"paths.results_dir={tmp_path / 'results'}", "logger=none", "trainer=smoke", "model=tiny-bert",
                 "method=prompt"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
        forced = hydra_compose(config_name="config", overrides=overrides + ["force=true"])
    path = _write(run_dir(cfg), {"schema_version": 99, "status": "finished"})  # written by a newer bench
    with pytest.raises(ResultError, match="schema_version"):
        execute(cfg)
    assert json.loads(path.read_text())["schema_version"] == 99  # not overwritten without force
    assert execute(forced)["status"] == "finished"
    assert json.loads(path.read_text())["schema_version"] == record.SCHEMA_VERSION
