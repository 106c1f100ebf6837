"""Import cost of perfwatch's light entry points, before and after a change, side by side.

For each probe (a bare interpreter as the anchor, ``from perfwatch import StepTimer`` as in
a user's training loop, and ``import perfwatch.worker`` as every benchmark worker process
starts) a fresh interpreter runs with one source tree first on ``sys.path``, and reports
its own peak RSS, the heavy packages it loaded and the number of modules. Trees alternate
within every round (ABBA), so drift on a shared machine hits both alike.

    python scripts/import_cost.py BEFORE_TREE AFTER_TREE [--rounds 20]

BEFORE_TREE is e.g. a ``git worktree add /tmp/before <commit>`` of the old code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("prometheus_client", "psutil", "pandas", "matplotlib", "rich", "click", "pyarrow", "torch")
PROBES = {
    "bare interpreter": "pass",
    "from perfwatch import StepTimer": "from perfwatch import StepTimer",
    "import perfwatch.worker": "import perfwatch.worker",
}
REPORT = ("import json, resource, sys; print(json.dumps({'rss_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
          "'modules': len(sys.modules), 'heavy': sorted({m.split('.')[0] for m in sys.modules} & set(%r))}))" % (HEAVY,))


def probe(tree: str, code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", f"{code}\n{REPORT}"], env=env, cwd="/", capture_output=True,
                         text=True, check=True).stdout
    return {**json.loads(out.splitlines()[-1]), "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    samples: dict[tuple[str, str], list[dict]] = {(p, t): [] for p in PROBES for t in trees}
    for round_ in range(args.rounds):
        order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
        for name, code in PROBES.items():
            for tree in order:
                samples[(name, tree)].append(probe(trees[tree], code))
    print("| probe | tree | wall ms (median, IQR) | peak RSS MiB | modules | heavy packages loaded |")
    print("|---|---|---|---|---|---|")
    for (name, tree), runs in samples.items():
        wall = sorted(r["seconds"] * 1e3 for r in runs)
        q1, q3 = statistics.quantiles(wall, n=4)[0], statistics.quantiles(wall, n=4)[2]
        rss = statistics.median(r["rss_kib"] for r in runs) / 1024
        print(f"| {name} | {tree} | {statistics.median(wall):.0f} ({q1:.0f}-{q3:.0f}) | {rss:.1f} | "
              f"{runs[0]['modules']} | {', '.join(runs[0]['heavy']) or '-'} |")
    print(f"\nratios after/before, per round (median, min-max), {args.rounds} rounds:")
    for name in PROBES:
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(samples[(name, "after")], samples[(name, "before")])]
        print(f"  {name}: wall {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
