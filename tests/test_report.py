"""bench-report on hand-written result files: the numbers, the failure lists, determinism, escaping,
and (when Chromium is installed) that index.html renders every plot offline."""
import csv
import html
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.report import build as report
from bench.report.aggregate import pareto_front
from bench.report.build import build_report
from bench.report.read import variant_of

FIXTURE = Path(__file__).parent / "fixtures" / "report"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "results" / "test-artifacts"  # git-ignored (results/*)
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

# what the fixture holds, worked out by hand: sst2 accuracy per (method, variant) over finished seeds
#   full   0.85 0.87 0.86 -> 0.8600 ± 0.0100 n=3
#   lora   0.80 0.82      -> 0.8100 ± 0.0141 n=2 (seed 2 failed, not averaged)
#   lora method.lr=0.001 0.83 -> n=1
#   prefix 0.70           -> n=1 (seed 0 diverged)
#   prompt 0.60 0.64 0.62 -> 0.6200 ± 0.0200 n=3
# Pareto vs trainable params: full, lora(lr), prompt; vs stored bytes: full, lora(lr), prefix.
EXPECTED_SST2 = {
    ("full", "–"): ("0.8600 ± 0.0100", "3", "0", "yes", "yes"),
    ("lora", "–"): ("0.8100 ± 0.0141", "2", "1", "no", "no"),
    ("lora", "method.lr=0.001"): ("0.8300 ± –", "1", "0", "yes", "yes"),
    ("prefix", "–"): ("0.7000 ± –", "1", "1", "no", "yes"),
    ("prompt", "–"): ("0.6200 ± 0.0200", "3", "0", "yes", "no"),
}
# points each plot must show: (task, plot) -> count
EXPECTED_POINTS = {
    ("sst2", "metric-vs-params"): 5, ("sst2", "metric-vs-bytes"): 5, ("sst2", "throughput"): 5,
    ("sst2", "memory"): 5, ("rte", "metric-vs-params"): 1, ("rte", "metric-vs-bytes"): 0,
    ("rte", "throughput"): 0, ("rte", "memory"): 0,
}


def _copy_fixture(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest)
    # a W&B folder inside a run (wandb/ is git-ignored, so it is made here): its result.json must be ignored
    decoy = dest / "_hydra" / "2026-11-23" / "12-00-00" / "result.json"
    wandb = dest / "main" / "sst2-minilm-full-s0" / "wandb" / "offline-run-1"
    wandb.mkdir(parents=True)
    shutil.copy(decoy, wandb / "result.json")
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    results = _copy_fixture(base / "results")
    written = build_report(results, base / "out")
    return results, written


def md_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """{heading: rows as dicts} for every pipe table under a '## ' or '### ' heading (several tables under
    one heading are concatenated)."""
    tables, heading, header = {}, None, None
    for line in text.splitlines():
        if line.startswith(("## ", "### ")):
            heading, header = line.split(" ", 1)[1], None
        elif line.startswith("| ") and heading is not None:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                tables.setdefault(heading, []).append(dict(zip(header, cells)))
        elif line.strip():
            header = None  # any other text ends the table
    return tables


def test_report_md_numbers_and_pareto(built):
    _, written = built
    tables = md_tables(written["markdown"].read_text(encoding="utf-8"))
    sst2 = tables["sst2: accuracy (higher is better)"]
    assert len(sst2) == len(EXPECTED_SST2)
    for row in sst2:
        metric = row["accuracy (mean ± std)"].strip("*")
        got = (metric, row["n"], row["failed/diverged"], row["Pareto (params)"], row["Pareto (bytes)"])
        assert got == EXPECTED_SST2[(row["method"], row["variant"])], row
    by_method = {(r["method"], r["variant"]): r for r in sst2}
    # best per column is bold: highest accuracy, fewest trainable params, fewest stored bytes, most tokens/s
    assert by_method[("full", "–")]["accuracy (mean ± std)"] == "**0.8600 ± 0.0100**"
    assert by_method[("prompt", "–")]["trainable params"] == "**8,450**"
    assert by_method[("prefix", "–")]["stored"] == "**29.3 KiB**"
    assert by_method[("lora", "–")]["train tokens/s"] == "**2,800**"  # mean of 2700 and 2900
    assert by_method[("full", "–")]["trainable %"] == "100.00%"
    assert by_method[("full", "–")]["train time"] == "590.0 s"
    # 95 % t-interval over seeds: 0.86 ± t(0.975, 2) * 0.01 / sqrt(3); one seed: n/a
    assert by_method[("full", "–")]["95% CI (seeds)"] == "[0.8352, 0.8848]"
    assert by_method[("prefix", "–")]["95% CI (seeds)"] == "n/a"
    # these older files recorded the absolute peak only: shown, and labelled as such
    assert by_method[("full", "–")]["memory (added)"] == "1.8 GiB (peak)"
    # no predictions files: the best row is named, the others cannot be tested against it
    assert by_method[("full", "–")]["vs best"] == "best" and by_method[("prompt", "–")]["vs best"] == "n/a"
    # an older partial file: missing sections read as "–", MFU appears because it is present
    (rte,) = tables["rte: accuracy (higher is better)"]
    assert rte["accuracy (mean ± std)"] == "0.5500 ± –" and rte["n"] == "1"
    assert rte["stored"] == rte["train tokens/s"] == rte["memory (added)"] == rte["train time"] == "–"
    assert rte["MFU"] == "0.12" and rte["Pareto (params)"] == "yes" and rte["Pareto (bytes)"] == "–"


def test_failed_diverged_incomplete_and_unreadable_are_listed_not_averaged(built):
    _, written = built
    text = written["markdown"].read_text(encoding="utf-8")
    tables = md_tables(text)
    failed = {(r["method"], r["seed"]): r for r in tables["Failed and diverged runs"]}
    assert set(failed) == {("lora", "2"), ("prefix", "0")}
    assert failed[("prefix", "0")]["status"] == "diverged" and failed[("prefix", "0")]["step"] == "12"
    assert failed[("lora", "2")]["error"].startswith("ValueError: bad label &lt;img")
    assert [r["result file"] for r in tables["Incomplete runs"]] == ["main/sst2-minilm-full-s3/result.json"]
    (bad,) = tables["Unreadable result files"]
    assert bad["result file"] == "broken/sst2-minilm-lora-s7/result.json" and "invalid JSON" in bad["problem"]
    assert text.startswith("# Benchmark report\n\n15 result files, 11 finished, 1 failed, 1 diverged, "
                           "1 incomplete, 1 unreadable.")
    # the decoys under _hydra/ and wandb/ (accuracy 0.99) are never read
    assert "0.99" not in text and "_hydra" not in text and "wandb" not in text


def test_environment_and_commands(built):
    _, written = built
    text = written["markdown"].read_text(encoding="utf-8")
    env = text.split("### Packages, code and device", 1)[1].split("### Commands", 1)[0]
    assert "| git_sha | 1ebc066e1448c93fbdd1df4840871e782c7af809 | 13 |" in env
    assert "| torch | 2.13.0+cpu | 13 |" in env
    commands = text.split("### Commands", 1)[1]
    assert "| bench -m method=full,lora,prefix,prompt seed=0,1,2 sweep=main | 12 |" in commands
    assert "&lt;script&gt;alert" in commands and "<script>" not in commands
    assert "| (not recorded) | 1 |" in commands


def test_results_csv_one_row_per_run(built):
    _, written = built
    with open(written["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 14  # 15 files minus the unreadable one; decoys excluded
    assert sorted(r["status"] for r in rows).count("finished") == 11
    by_key = {(r["sweep"] or r["path"].split("/")[0], r["method"], r["seed"]): r for r in rows}
    assert float(by_key[("main", "lora", "1")]["primary_value"]) == 0.82
    assert by_key[("lr", "lora", "0")]["variant"] == "method.lr=0.001"
    assert by_key[("main", "prefix", "0")]["diverged_step"] == "12"
    assert by_key[("main", "lora", "2")]["primary_value"] == ""
    assert by_key[("main", "full", "0")]["params.trainable"] == "22713986"
    assert by_key[("old", "lora", "0")]["metrics.f1"] == "0.5"
    # the table's means and stds are reproducible from the CSV alone
    import statistics
    full = [float(r["primary_value"]) for r in rows
            if r["task"] == "sst2" and r["method"] == "full" and r["status"] == "finished"]
    assert len(full) == 3
    assert f"{statistics.fmean(full):.4f}" == "0.8600" and f"{statistics.stdev(full):.4f}" == "0.0100"


def test_byte_identical_across_builds_and_locations(built, tmp_path):
    _, first = built
    elsewhere = _copy_fixture(tmp_path / "somewhere" / "else")
    second = build_report(elsewhere, tmp_path / "out2")
    for kind in report.REPORT_FILES:
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind


def test_html_is_escaped_and_self_contained(built):
    _, written = built
    page = written["html"].read_text(encoding="utf-8")
    assert "<img src=x" not in page and "alert('cmd')</script>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "note=&quot;&lt;script&gt;alert(" in page and "<script>alert" not in page
    assert page.count("<script") == 1  # ours, at the end
    # nothing that could make a request: no http(s) anywhere, every src/href is an in-page anchor
    assert "http://" not in page and "https://" not in page
    for value in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        assert value.startswith("#"), value
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1))
    assert csp.startswith("default-src 'none';") and "unsafe-inline" not in csp
    plots = _plots(page)
    assert plots == {k: (v, None) for k, v in EXPECTED_POINTS.items()}
    # Pareto membership is drawn: circles flagged on the front match the table
    sst2 = page.split('data-task="sst2"', 1)[1]
    params_svg = sst2.split('data-plot="metric-vs-params"', 1)[1].split("</svg>", 1)[0]
    on_front = re.findall(r'data-group="([^"]*)"[^>]*data-pareto="1"', params_svg)
    assert sorted(on_front) == ["minilm · full", "minilm · lora · method.lr=0.001", "minilm · prompt"]


def test_cli_prints_where_the_report_is(tmp_path, capsys):
    results = _copy_fixture(tmp_path / "results")
    assert report.main([str(results), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "r" / "index.html") in out and "15 result files" in out
    # default output folder is RESULTS_DIR/report, and a second run does not read its own output
    assert report.main([str(results)]) == 0
    assert (results / "report" / "report.md").read_bytes() == (tmp_path / "r" / "report.md").read_bytes()
    assert report.main([str(tmp_path / "missing")]) == 2


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "bench-report"
    if not script.exists():
        pytest.skip("bench-report console script not installed: run `pip install --no-deps -e .`")
    proc = subprocess.run([str(script), str(FIXTURE), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "index.html").exists() and "bench-report:" in proc.stdout


def test_empty_results_folder(tmp_path):
    (tmp_path / "results").mkdir()
    written = build_report(tmp_path / "results", tmp_path / "out")
    assert "No finished, failed or diverged runs found." in written["markdown"].read_text(encoding="utf-8")
    assert written["csv"].read_text(encoding="utf-8").count("\n") == 1  # header only
    assert "<svg data-plot" not in written["html"].read_text(encoding="utf-8")
    assert "Serving" not in written["markdown"].read_text(encoding="utf-8")  # only with serve-eval files


def test_pareto_front_and_variant_helpers():
    # (metric, cost): b dominates a; c and d tie exactly (both stay); e is cheapest
    pts = [(0.5, 10.0), (0.6, 10.0), (0.7, 20.0), (0.7, 20.0), (0.1, 1.0), (0.65, 30.0)]
    assert pareto_front(pts) == [False, True, True, True, True, False]
    assert pareto_front([(1.0, 5.0), (0.5, 5.0)], maximise=False) == [False, True]
    assert variant_of(["method=lora", "seed=1", "+trainer.data_seed=1", "paths.results_dir=/x",
                       "method.lr=0.1", "trainer=paper"]) == "method.lr=0.1,trainer=paper"
    assert variant_of(None) == "" and variant_of("method=lora") == ""


# ---------------------------------------------------------------------------- headless Chromium

class _PlotParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.task, self.plots, self.body = None, {}, {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-task" in a:
            self.task = a["data-task"]
        elif tag == "svg" and "data-plot" in a:
            rendered = a.get("data-rendered")
            self.plots[(self.task, a["data-plot"])] = (int(a["data-expected"]),
                                                        int(rendered) if rendered is not None else None)
        elif tag == "body":
            self.body = a


def _plots(page: str) -> dict:
    parser = _PlotParser()
    parser.feed(page)
    return parser.plots


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return _check_module().chromium(CHROMIUM, tmp / "profile", *args)


def _page_requests(net_log: Path) -> list[str]:
    return _check_module().page_requests(net_log)


def _check_module():
    """scripts/check_report_in_chromium.py: the Chromium command line and the net-log reading live there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_report_in_chromium",
                                                  ROOT / "scripts" / "check_report_in_chromium.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png_size_and_variety(path: Path) -> tuple[int, int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (bash scripts/setup.sh --test installs "
                                              "the Debian packages chromium and chromium-driver)")
def test_index_html_renders_every_plot_offline_in_headless_chromium(built, tmp_path):
    _, written = built
    url = written["html"].resolve().as_uri()

    # the detector works: a page with a remote image is caught (nothing leaves: names cannot resolve)
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>', encoding="utf-8")
    _chromium(tmp_path, f"--log-net-log={tmp_path / 'control.json'}", "--dump-dom", control.as_uri())
    assert "http://example.invalid/x.png" in _page_requests(tmp_path / "control.json")

    proc = _chromium(tmp_path, f"--log-net-log={tmp_path / 'net.json'}", "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parser = _PlotParser()
    parser.feed(proc.stdout)
    assert set(parser.plots) == set(EXPECTED_POINTS)
    for key, expected in EXPECTED_POINTS.items():
        # data-rendered is set by the page's script from the laid-out boxes of the marks
        assert parser.plots[key] == (expected, expected), key
    assert parser.body.get("data-points-rendered") == str(sum(EXPECTED_POINTS.values()))
    remote = [u for u in _page_requests(tmp_path / "net.json") if not u.startswith(("file:", "data:", "about:"))]
    assert remote == []

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "index.png"
    proc = _chromium(tmp_path, "--window-size=1400,1800", f"--screenshot={shot}", url)
    assert shot.exists(), proc.stderr[-2000:]
    width, height, variety = _png_size_and_variety(shot)
    assert (width, height) == (1400, 1800) and variety > 10  # not a blank page
    shutil.copy(shot, ARTIFACTS / "report-index.png")


def _speed_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_report_speed", ROOT / "scripts" / "bench_report_speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed


def test_200_result_files_build_a_report(tmp_path):
    import time

    # the walk, the parsing and the rendering: older-style files without predictions (no bootstrap)
    _speed_module().make_results(tmp_path / "results", 200, predictions=False)
    started = time.perf_counter()
    written = build_report(tmp_path / "results", tmp_path / "out")
    elapsed = time.perf_counter() - started
    assert written["summary"].startswith("200 result files")
    print(f"200 result files: {elapsed:.2f} s (figures: scripts/bench_report_speed.py)")


def test_protocol_sized_report_with_bootstraps_builds(tmp_path):
    import time

    # 5 tasks x 4 methods x 3 seeds with predictions files and majority baselines: every row against the
    # baseline and the best row, seeds pooled, 2000 resamples each; CPU time, so other load on the machine
    # matters less (about 2 s on a busy 2-core machine; a jackknife-based interval would take minutes)
    _speed_module().make_results(tmp_path / "results", 60)
    started = time.process_time()
    written = build_report(tmp_path / "results", tmp_path / "out")
    elapsed = time.process_time() - started
    assert "Paired differences on validation (seeds and examples)" in written["markdown"].read_text(encoding="utf-8")
    print(f"60 runs with bootstraps: {elapsed:.2f} s of CPU (figures: scripts/bench_report_speed.py)")


# ---------------------------------------------------------------------------- serving (bench-serve-eval output)

# fixtures/report/serve/serve-prompt.json is a real `bench-serve-eval --method prompt` output (3 minilm soft
# prompts on CPU); it holds no result.json, so the run counts the tests above check are unchanged
SERVE_FIXTURE = FIXTURE / "serve" / "serve-prompt.json"


def _serving_md(text: str) -> str:
    return text.split("## Serving: one base, many adapters", 1)[1].split("\n## ", 1)[0]


def test_serving_section_shows_the_serve_eval_numbers(built, tmp_path):
    _, written = built
    md = written["markdown"].read_text(encoding="utf-8")
    serving = _serving_md(md)
    assert "### serve/serve-prompt.json" in serving
    assert "Method prompt: 3 adapters on 1 base(s) (minilm; device cpu). All served metrics equal those at " \
           "training: yes." in serving
    # per task: the primary metric at training vs served, and whether they are equal
    for task, acc, rows, load in (("mrpc", "0.6838", "408", "4.545 ms"), ("rte", "0.5235", "277", "2.295 ms"),
                                  ("sst2", "0.6433", "872", "2.069 ms")):
        assert (f"| {task} | {task} | 0 | accuracy | {acc} | {acc} | yes | 0 | {rows} | 39.0 KiB | {load} | "
                f"{task}-minilm-prompt-s0-") in serving, task
    # latency medians; storage and memory of 1 base + 3 adapters vs 3 models, with the ratios
    assert "| minilm · encoder | 2 | 3 | cpu | 0.083 ms | 0.303 ms | 2.205 ms | 20 |" in serving
    assert "| stored bytes (3 adapters vs 3 full copies) | 117.0 KiB | 260.0 MiB | 2,275x |" in serving
    assert "| memory: parameter bytes | 86.7 MiB | 259.9 MiB | 3.00x |" in serving
    assert "| memory: RSS growth (3 models estimated) | 93.3 MiB | 277.3 MiB | 2.97x |" in serving
    # mixed-task batches: predictions equal, throughput mixed vs per task
    assert "Predictions equal to the per-task passes: 1,557/1,557 rows (length-sorted), 1,557/1,557 (arrival " \
           "order); all equal: yes. Throughput mixed vs per task: 66.6 vs 62.7 samples/s (1.06x)." in serving
    assert "| mixed, length-sorted | 66.6 | 23.4 s | 25 | 2.32 | 0.953 |" in serving
    assert "| task by task | 62.7 | 24.8 s | 26 | – | 0.912 |" in serving
    assert "| mrpc | 408 | 408 | 408 | 3.28e-07 | accuracy=0.6838, f1=0.8122 |" in serving
    # no clock and no absolute path from the file leak into the report
    assert "2026-11-23" not in md and "/tmp/serve-results" not in md

    page = written["html"].read_text(encoding="utf-8")
    section = page.split('<section id="serving">', 1)[1].split("</section>", 1)[0]
    assert '<a href="#serving">' in page and "<h3>serve/serve-prompt.json</h3>" in section
    for text in ("<td>mrpc</td><td>mrpc</td><td>0</td><td>accuracy</td><td class=\"num\">0.6838</td>"
                 "<td class=\"num\">0.6838</td><td>yes</td>",
                 '<td class="num">0.083 ms</td>', '<td class="num">2.205 ms</td>',
                 '<td class="num">117.0 KiB</td><td class="num">260.0 MiB</td><td class="num">2,275x</td>',
                 '<td class="num">93.3 MiB</td><td class="num">277.3 MiB</td>', "1,557/1,557 rows",
                 '<td>mixed, length-sorted</td><td class="num">66.6</td>',
                 '<td>task by task</td><td class="num">62.7</td>', "minilm · encoder"):
        assert text in section, text

    # byte-identical across two builds, from a copy of the serving fixture alone
    only = tmp_path / "only" / "serve"
    only.mkdir(parents=True)
    shutil.copy(SERVE_FIXTURE, only / "serve-prompt.json")
    one = build_report(only.parent, tmp_path / "one")
    two = build_report(only.parent, tmp_path / "two")
    for kind in report.REPORT_FILES:
        assert one[kind].read_bytes() == two[kind].read_bytes(), kind
    assert _serving_md(one["markdown"].read_text(encoding="utf-8")) == serving


def test_serving_files_missing_keys_unreadable_and_ignored_folders(tmp_path):
    results = tmp_path / "results"
    (results / "a").mkdir(parents=True)
    (results / "b" / "_hydra").mkdir(parents=True)
    (results / "b" / "wandb").mkdir(parents=True)
    (results / "a" / "serve-lora.json").write_text("{not json", encoding="utf-8")
    (results / "a" / "serve-prefix.json").write_text("[1, 2]", encoding="utf-8")
    # an old or cut-down file: most keys missing, some of the wrong type, a mixed section that was skipped
    (results / "b" / "serve-prompt.json").write_text(json.dumps({
        "method": "prompt", "runs": [{"task": "rte<b>", "primary_metric": "accuracy",
                                      "recorded_metrics": {"accuracy": 0.5}, "served_metrics": "x"}, 7],
        "storage": {"adapters_bytes": 1000, "full_copies_bytes": 5000}, "memory": [],
        "latency": {"switch_ms_median": 0.5}, "mixed_batch": {"skipped": "prefix is not <prompt>"}}),
        encoding="utf-8")
    for skipped in ("_hydra", "wandb"):
        shutil.copy(SERVE_FIXTURE, results / "b" / skipped / "serve-prompt.json")
    (results / "serve_notes.json").write_text("{}", encoding="utf-8")  # not serve-<method>.json: not a serve-eval file
    written = build_report(results, tmp_path / "out")
    md = written["markdown"].read_text(encoding="utf-8")
    serving = _serving_md(md)
    headings = [line[4:] for line in serving.splitlines() if line.startswith("### ")]
    assert headings == ["a/serve-lora.json", "a/serve-prefix.json", "b/serve-prompt.json"]  # sorted by path
    assert "Unreadable: invalid JSON: Expecting property name enclosed in double quotes" in serving
    assert "Unreadable: not a serve-eval object (top level is list)." in serving
    assert ("Method prompt: 1 adapters on – base(s) (–; device –). All served metrics equal those at "
            "training: –.") in serving
    assert "| rte&lt;b&gt; | – | – | accuracy | 0.5000 | – | – | – | – | – | – | – |" in serving
    assert "| all groups | – | – | – | 0.500 ms | – | – | – |" in serving
    assert "| stored bytes (1 adapters vs 1 full copies) | 1000 B | 4.9 KiB | 5.00x |" in serving
    assert "| memory: parameter bytes | – | – | – |" in serving
    assert "Skipped: prefix is not &lt;prompt&gt;." in serving
    assert "0.6838" not in md and "serve-other" not in md  # _hydra/, wandb/ and other names are not read
    page = written["html"].read_text(encoding="utf-8")
    assert "<td>rte&lt;b&gt;</td>" in page and "<b>" not in page
    assert "<p>Unreadable: not a serve-eval object (top level is list).</p>" in page
    # the run counts are unchanged: serve-eval files are not result files
    assert md.startswith("# Benchmark report\n\n0 result files,")
