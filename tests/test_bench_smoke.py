"""bench/http_load.py runs end to end, and a system that loses writes is reported FAIL.

The benchmark's numbers are not checked (no timing assertions); what is checked
is that its verification holds: a healthy run exits 0 with a number in every
cell, and a run where one system's server answers some writes 200 without
writing (``--drop-writes``, a test hook of the script) exits 1 with that
system's write cells FAIL, never a number. The smallest settings, no store
server needed (bare WSGI, wsgi_kvsession on memory and on SQLite); the load
generator is the script's Python one, so the tests run wherever the project's
tests do; the ``ab`` variant (the benchmark's real client) needs ApacheBench
(``apt-get install -y apache2-utils``) and is skipped without it, also under
CI (it is a benchmark tool, not a test dependency).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "http_load.py"
#: Bounds a hang of the whole run (gunicorn start, load, stop); not a speed check.
RUN_TIMEOUT = 180
SMALLEST = ["--repeats", "1", "--requests", "40", "--connections", "2", "--count-requests", "0"]


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    out = tmp_path / "out"
    process = subprocess.run(
        [sys.executable, str(SCRIPT), *SMALLEST, "--output", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    results = json.loads((out / "http.json").read_text()) if (out / "http.json").exists() else None
    return process, results


def cells(results: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (system["name"], key): cell
        for system in results["systems"]
        for key, cell in system["results"].items()
    }


def test_healthy_systems_get_a_number_in_every_cell(tmp_path: Path) -> None:
    systems = ["bare-wsgi", "kvsession-memory", "kvsession-sqlite"]
    process, results = run_bench(tmp_path, "--load-tool", "python", "--systems", *systems)
    report = process.stdout + process.stderr
    assert process.returncode == 0, report
    assert "FAIL" not in process.stdout, report
    assert results is not None, report
    assert [s["name"] for s in results["systems"]] == systems
    by_name = {s["name"]: s for s in results["systems"]}
    assert by_name["kvsession-memory"]["workers"] == 1  # its store lives in the worker
    assert by_name["kvsession-sqlite"]["workers"] == 2
    got = cells(results)
    assert len(got) == 2 + 6 + 6  # bare: untouched only; kvsession: 3 modes x 2 payloads
    for key, cell in got.items():
        assert cell["status"] == "ok", (key, cell)
        assert cell["median_rps"] > 0, (key, cell)
    assert (tmp_path / "out" / "http.png").stat().st_size > 10_000


@pytest.mark.parametrize("tool", ["python", "ab"])
def test_a_system_that_drops_writes_is_fail_not_a_number(tmp_path: Path, tool: str) -> None:
    if tool == "ab" and shutil.which("ab") is None:
        pytest.skip("ab is not installed (apt-get install -y apache2-utils): bench-only tool")
    process, results = run_bench(
        tmp_path,
        "--load-tool",
        tool,
        "--systems",
        "kvsession-sqlite",
        "--drop-writes",
        "kvsession-sqlite",
    )
    report = process.stdout + process.stderr
    assert process.returncode == 1, report
    assert "FAIL kvsession-sqlite write small: " in process.stdout, report
    assert "counter read back" in process.stdout, report
    got = cells(results)
    assert got[("kvsession-sqlite", "write/small")]["status"] == "FAIL"
    assert "median_rps" not in got[("kvsession-sqlite", "write/small")]
    row = next(line for line in process.stdout.splitlines() if "SQLite" in line)
    assert "FAIL" in row, report


def test_a_missing_load_tool_says_how_to_install_it(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no ab on this PATH
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--load-tool", "ab", "--output", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert process.returncode == 2, process.stderr
    assert "apt-get install -y apache2-utils" in process.stderr
    assert "--load-tool python" in process.stderr
    assert not (tmp_path / "http.json").exists()
