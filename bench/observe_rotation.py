"""What metrics and tracing cost on workload 1, side by side in one session.

Each repetition is ``python -m bench.workloads throughput memory RUNS`` in its own process with
``STATESTREAM_BENCH_OBSERVE`` set to one configuration; the configurations alternate within
each round, so that a change of the machine's load hits them all alike. Prints, per
configuration, the median CPU µs per transition (with the range), the median of the per-round
ratios against that round's ``none``, and runs/s::

    PYTHONPATH=src .venv/bin/python -m bench.observe_rotation --rounds 5
    # the same rotation against another tree's sources, as extra rows:
    PYTHONPATH=src .venv/bin/python -m bench.observe_rotation --other /tmp/main/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CONFIGS = (
    "none",
    "null",
    "metrics",
    "tracing@0.01",
    "tracing@0.1",
    "tracing",
    "metrics,tracing@0.01",
)
OTHER_CONFIGS = ("none", "metrics", "tracing-sampled", "tracing")


def _once(src: str, config: str, runs: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=src, STATESTREAM_BENCH_OBSERVE=config.replace("none", ""))
    out = subprocess.run(
        [sys.executable, "-m", "bench.workloads", "throughput", "memory", str(runs)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {"cpu": result["cpu_us_per_transition"], "runs_per_s": result["runs_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--configs", default=";".join(CONFIGS), help="separated by ';'")
    parser.add_argument("--other", help="another tree's src directory, rotated alongside")
    args = parser.parse_args()
    src = os.environ.get("PYTHONPATH", "src")
    rows = [("this", src, c) for c in args.configs.split(";")]
    if args.other:
        rows += [("other", args.other, c) for c in OTHER_CONFIGS]
    seen: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for tree, path, config in rows:
            result = _once(path, config, args.runs)
            seen.setdefault((tree, config), []).append(result)
            print(f"round {round_ + 1} {tree} {config}: {result['cpu']:.1f}", file=sys.stderr)
    print("| tree | observer | CPU µs / transition, median (range) | vs none | runs/s |")
    print("|---|---|---:|---:|---:|")
    for tree, _, config in rows:
        results = seen[(tree, config)]
        base = seen.get((tree, "none"))
        cpu = [r["cpu"] for r in results]
        ratio = (
            statistics.median(r["cpu"] / b["cpu"] for r, b in zip(results, base, strict=True))
            if base
            else float("nan")
        )
        print(
            f"| {tree} | {config} | {statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f})"
            f" | {ratio:.2f} | {statistics.median(r['runs_per_s'] for r in results):,.0f} |"
        )


if __name__ == "__main__":
    main()
