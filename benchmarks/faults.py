"""Reliability: the fault-injection end-to-end tests, repeated, as one table.

    .venv/bin/python benchmarks/faults.py [--repeats 3]
    NNTUNE_FAULT_LOG=/tmp/f.jsonl bash .ci/run
    .venv/bin/python benchmarks/faults.py --log /tmp/f.jsonl

The second form tables the records the same tests wrote during whole-suite runs (each
fresh-clone `make test` is then one repeat) without running anything.

Each repeat runs the e2e tests that kill things on purpose, on DVC's real queue in a fresh
temp project each time:

- search driver kill -9 x3: an ASHA study (4 trials, rungs 1 and 3 epochs) whose driver is
  SIGKILLed after its first experiment, mid-rung and during a promotion, each with a seeded
  random delay, and started again each time (tests/test_search_e2e.py);
- workers SIGKILLed mid-trial, with and without the trial's own process
  (tests/test_run_faults_e2e.py);
- Ctrl-C, then kill -9 of `nntune run` mid-trial, then the same command again.

Each test writes one record (``NNTUNE_FAULT_LOG``) before its assertions: trials expected,
saved as experiments, failed visibly, queued twice (distinct DVC task ids per name, polled
from `dvc queue status`), and lost (neither saved nor reported failed). The table sums them
per scenario over the repeats and counts the test runs that passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_search_e2e.py::"
    "test_asha_driver_killed_at_chosen_moments_and_restarted_runs_each_trial_once",
    "tests/test_run_faults_e2e.py",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log", type=Path, help="table these records; run nothing")
    args = parser.parse_args()
    if args.log is not None:
        print_table(args.log)
        return
    log = Path(tempfile.mkdtemp(prefix="nntune-faults-")) / "records.jsonl"
    env = {**os.environ, "NNTUNE_FAULT_LOG": str(log)}
    passed = failed = 0
    for repeat in range(args.repeats):
        report = log.with_name(f"junit-{repeat}.xml")
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        subprocess.run([*pytest, f"--junitxml={report}", *TESTS], cwd=ROOT, env=env, check=False)
        suite = ElementTree.parse(report).getroot().find("testsuite")
        assert suite is not None, report
        tests, bad = int(suite.get("tests", 0)), int(suite.get("failures", 0))
        bad += int(suite.get("errors", 0))
        passed, failed = passed + tests - bad - int(suite.get("skipped", 0)), failed + bad
        print(f"repeat {repeat + 1}: {tests - bad} of {tests} passed", flush=True)
    print_table(log)
    print(f"\ntest runs: {passed} passed, {failed} failed")


def print_table(log: Path) -> None:
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for line in log.read_text().splitlines() if log.exists() else []:
        record = json.loads(line)
        row = totals[record.pop("scenario")]
        row["runs"] += 1
        for key, value in record.items():
            row[key] += value
    print("\n| scenario | runs | trials expected | saved | failed visibly | duplicates | lost |")
    print("|---|---|---|---|---|---|---|")
    for scenario, row in totals.items():
        cells = [row[k] for k in ("runs", "expected", "saved", "failed", "duplicates", "lost")]
        print(f"| {scenario} | " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
