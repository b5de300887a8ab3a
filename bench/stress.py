"""Run the fault and resume tests many times in a row and print n/N passes for each test.

Not part of `make test` (a round takes about 13 minutes on 2 cores, longer under --load):

    .venv/bin/python bench/stress.py                 # 20 rounds
    .venv/bin/python bench/stress.py --rounds 5 --out /tmp/stress.json
    .venv/bin/python bench/stress.py --rounds 5 --load 2   # beside 2 busy CPU-bound processes

A test that fails even once in N is a defect to find, not bad luck; each failing round's
pytest output is kept under --keep (default: /tmp/clustune-stress).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/search/test_faults.py", "tests/search/test_resume.py", "tests/search/test_cloud.py",
         "tests/search/test_lease.py"]


def _spin() -> None:
    """A CPU-bound process at normal priority in a session of its own, as other work on the
    machine is (the kernel shares the CPU between sessions first, then by nice within one:
    inside the tests' session it would starve their nice-15 trial workers)."""
    os.setsid()
    while True:
        sum(i * i for i in range(10_000))


def _round(index: int, keep: Path) -> dict[str, bool]:
    """One pytest run of TESTS: test id -> passed."""
    report = keep / f"round-{index:02d}.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         *TESTS], cwd=ROOT, capture_output=True, text=True)
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcomes[name] = not any(child.tag in ("failure", "error") for child in case)
    if proc.returncode != 0:
        (keep / f"round-{index:02d}.log").write_text(proc.stdout + proc.stderr)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="runs of the tests (default 20)")
    parser.add_argument("--keep", type=Path, default=Path("/tmp/clustune-stress"),
                        help="folder for the rounds' reports and failing logs")
    parser.add_argument("--out", type=Path, help="also write the counts as JSON")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="run beside N busy CPU-bound processes (a loaded machine)")
    args = parser.parse_args()
    args.keep.mkdir(parents=True, exist_ok=True)
    load = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for proc in load:
        proc.start()
    passes: dict[str, int] = {}
    start = time.perf_counter()
    for i in range(1, args.rounds + 1):
        for name, ok in _round(i, args.keep).items():
            passes[name] = passes.get(name, 0) + ok
        print(f"round {i}/{args.rounds} done, {time.perf_counter() - start:.0f} s", flush=True)
    width = max(len(n) for n in passes)
    print(f"\n{'test'.ljust(width)}  passed")
    for name, n in sorted(passes.items()):
        print(f"{name.ljust(width)}  {n}/{args.rounds}")
    if args.out:
        args.out.write_text(json.dumps({"rounds": args.rounds, "load": args.load,
                                        "passed": passes,
                                        "seconds": time.perf_counter() - start}, indent=2))
    for proc in load:
        proc.terminate()
    return 0 if all(n == args.rounds for n in passes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
