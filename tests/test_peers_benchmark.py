"""Smoke test of benchmarks/peers.py: the two zoo contestants (no litgpt needed), one tiny
paired window, and the JSON it writes. Slow (two worker processes load torch, Lightning and
the data): it runs in the slow pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"


@pytest.mark.slow
def test_peers_benchmark_writes_paired_windows(tmp_path: Path) -> None:
    out = tmp_path / "peers"
    cmd = [sys.executable, str(SCRIPT), "--sizes", "128", "--modes", "eager", "--windows", "1", "--steps", "2",
           "--warmup", "1", "--contestants", "zoo_lightning,zoo_plain", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "zoo Lightning / zoo plain" in proc.stdout
    data = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".md").read_text().startswith("`python benchmarks/peers.py")
    assert data["matmul_peak_flops"] > 0 and data["torch"] and "cpu_flags" in data
    # every figure names the CPU and its vector extensions, once
    assert data["machine"].count("vector extensions") == 1
    assert out.with_suffix(".md").read_text().count("vector extensions") == 1
    assert data["zoo_over_litgpt"] == {"d128_eager": None}  # litgpt was not a contestant
    (group,) = data["results"]
    assert (group["d_model"], group["n_layers"], group["mode"]) == (128, 4, "eager")
    assert "zoo_over_litgpt" in group and group["zoo_over_litgpt"] is None
    assert group["params"] > 0 and group["flops_per_token"] > 0
    for name in ("zoo_lightning", "zoo_plain"):
        c = group["contestants"][name]
        assert c["tokens_per_s"]["median"] > 0 and c["first_step_s"] > 0 and 0 < c["mfu"] < 1
        assert c["params"] == group["params"]
    (window,) = group["windows"]
    assert window["order"] == ["zoo_lightning", "zoo_plain"]
    for r in window["results"].values():
        assert r["tokens_per_s"] > 0 and r["cpu_share"] > 0 and len(r["loadavg_end"]) == 3
    ratio = group["ratios"]["zoo_lightning/zoo_plain"]
    assert ratio["per_window"] == [window["results"]["zoo_lightning"]["tokens_per_s"]
                                   / window["results"]["zoo_plain"]["tokens_per_s"]]
