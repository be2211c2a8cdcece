"""Energy per phase from a counter: a fake RAPL tree (with the counter wrapping around) checked by hand, no
counter -> source None, and a real run's `energy` section from a fake counter."""
import json
from pathlib import Path

import pytest
import torch

from bench import config
from bench.measure import energy
from bench.run import execute


def _zone(path: Path, name: str, uj: int, max_uj: int) -> Path:
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path / "energy_uj"


@pytest.fixture
def rapl(tmp_path):
    """package-0 (max 1 J, near the top), its core sub-zone (inside the package: not summed), its DRAM sub-zone
    (outside the package: summed), and psys (overlaps the packages: not summed)."""
    root = tmp_path / "powercap"
    files = {"package": _zone(root / "intel-rapl:0", "package-0", 900_000, 1_000_000),
             "core": _zone(root / "intel-rapl:0" / "intel-rapl:0:0", "core", 5, 1_000_000),
             "dram": _zone(root / "intel-rapl:0" / "intel-rapl:0:1", "dram", 10, 10**12),
             "psys": _zone(root / "intel-rapl:1", "psys", 7, 10**12)}
    for path in list(root.iterdir()):  # the kernel lists sub-zones at the top level too
        for sub in path.glob("intel-rapl:*:*"):
            (root / sub.name).symlink_to(sub)
    return root, files


def test_rapl_energy_per_phase_with_a_wrap(rapl):
    root, files = rapl
    counter, why = energy.rapl_counter(root)
    assert why == "" and counter.source == "rapl" and counter.domains == ["package-0", "dram"] and counter.wraps
    meter = energy.EnergyMeter(counter, poll_s=None)
    with meter.phase("train"):
        files["package"].write_text("300000\n")      # wrapped: 900,000 -> 1,000,000 -> 0 -> 300,000 = 400,000 µJ
        files["core"].write_text("999\n")            # never read
        files["psys"].write_text("123456789\n")      # never read
        meter.sample()                               # what the poller does every POLL_S seconds
        files["package"].write_text("800000\n")      # + 500,000 µJ
        files["dram"].write_text("2000010\n")        # + 2,000,000 µJ
    with meter.phase("eval"):
        files["package"].write_text("900000\n")      # + 100,000 µJ
    section = meter.section(train_tokens=1450, eval_examples=50)
    assert section["train_j"] == pytest.approx(0.4 + 0.5 + 2.0)         # 2.9 J
    assert section["eval_j"] == pytest.approx(0.1)
    assert section["j_per_1k_train_tokens"] == pytest.approx(2.9 * 1000 / 1450)  # 2.0
    assert section["j_per_1k_eval_examples"] == pytest.approx(0.1 * 1000 / 50)   # 2.0
    assert section["source"] == "rapl" and section["domains"] == ["package-0", "dram"] and section["note"] is None


def test_a_wrap_between_two_readings_by_hand():
    assert energy.rapl_delta_uj(900, 100, 1000) == 200  # 900 -> 1000 (100) then 0 -> 100 (100)
    assert energy.rapl_delta_uj(100, 900, 1000) == 800
    assert energy.rapl_delta_uj(5, 5, 1000) == 0


def test_no_counter_records_source_none(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "RAPL_ROOT", tmp_path / "no-powercap")
    meter = energy.meter_for(torch.device("cpu"))
    with meter.phase("train"):
        pass
    with meter.phase("eval"):
        pass
    section = meter.section(train_tokens=1000, eval_examples=10)
    assert section["source"] is None
    assert section["train_j"] is section["eval_j"] is section["j_per_1k_train_tokens"] is None
    assert section["j_per_1k_eval_examples"] is None and section["domains"] == []
    assert "no-powercap" in section["note"]
    (tmp_path / "powercap" / "intel-rapl:1").mkdir(parents=True)
    (tmp_path / "powercap" / "intel-rapl:1" / "name").write_text("psys\n")
    assert energy.rapl_counter(tmp_path / "powercap") == (None, f"no RAPL package zone under {tmp_path / 'powercap'}")


def test_a_real_run_records_the_counter_per_phase(compose, monkeypatch):
    reads = []

    def read():  # 1 J (1,000 mJ) more at every reading; read at the start and end of each phase only
        reads.append(len(reads))
        return [1000 * len(reads)]

    fake = energy.Counter("nvml", ["fake GPU"], "a fake counter", read, lambda a, b: (b[0] - a[0]) / 1e3)
    monkeypatch.setattr(energy, "counter_for", lambda device: (fake, ""))
    cfg = compose("method=lora", "sweep=energy")
    result = execute(cfg)
    assert result["status"] == "finished", result.get("error")
    on_disk = json.loads((config.run_dir(cfg) / "result.json").read_text())["energy"]
    assert len(reads) == 4  # train start/end, eval start/end
    tput = result["throughput"]
    assert on_disk["source"] == "nvml" and on_disk["train_j"] == 1.0 and on_disk["eval_j"] == 1.0
    assert on_disk["train_tokens"] == tput["train_tokens"]  # every step's real tokens (nothing resumed)
    assert on_disk["eval_examples"] == result["truncation"]["validation"]["rows"]
    assert on_disk["j_per_1k_train_tokens"] == pytest.approx(1000.0 / tput["train_tokens"])
    assert on_disk["j_per_1k_eval_examples"] == pytest.approx(1000.0 / on_disk["eval_examples"])
