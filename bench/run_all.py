"""`make bench`: run every benchmark in one go and print one line per ratio.

Each ``bench/bench_<area>.py`` prints its own ratio lines (``name value (goal ...)``); this
runner calls them in turn as subprocesses (so one crash does not hide the others) and repeats
their ratio lines together at the end.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

RATIO_LINE = re.compile(r"^\S+\.\S+\s+[-+0-9.eE]+x?\b.*$")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = parser.parse_args(argv)
    benches = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    lines, failed = [], []
    for name in benches:
        cmd = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if args.quick else [])
        print(f"== {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            sys.stdout.write(proc.stderr[-4000:])
            failed.append(name)
        lines += [ln for ln in proc.stdout.splitlines() if RATIO_LINE.match(ln.strip())]
    print("\n== summary")
    for ln in lines:
        print(ln)
    for name in failed:
        print(f"{name} FAILED (see its output above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
