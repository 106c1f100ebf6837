"""The reference suites are real asv benchmarks: `asv run --python=same --quick` runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# One benchmark of each kind (time_, track_, peakmem_) from the loader and training suites:
# the whole quick suite under asv takes minutes and was checked by hand (docs/performance.md).
SUBSET = r"training\.Step\.(time_step|peakmem_step)\(.*mlp|loader\.FirstBatch"


@pytest.mark.slow
def test_asv_runs_the_reference_suites(tmp_path):
    asv = shutil.which("asv") or pytest.fail("asv is in the test extra: pip install -e '.[test]'")
    config = json.loads((ROOT / "asv.conf.json").read_text())
    config.update(repo=str(ROOT), benchmark_dir=str(ROOT / "suites"), env_dir=str(tmp_path / "env"),
                  results_dir=str(tmp_path / "results"), html_dir=str(tmp_path / "html"))
    conf = tmp_path / "asv.conf.json"
    conf.write_text(json.dumps(config))
    env = {**os.environ, "HOME": str(tmp_path)}  # asv keeps its machine file in ~
    subprocess.run([asv, "machine", "--yes", "--config", str(conf)], env=env, check=True, capture_output=True, cwd=tmp_path)

    proc = subprocess.run(
        [asv, "run", "--config", str(conf), "--python=same", "--quick", "--show-stderr", "-b", SUBSET],
        check=False, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    for name in ("training.Step.time_step", "training.Step.peakmem_step", "loader.FirstBatch.track_first_batch_seconds"):
        assert name in output, output[-3000:]
    assert "failed" not in output.lower(), output[-3000:]
