"""Markdown tables from finished runs: ``python -m experiments.results_table NAME=WORKDIR ...``.

Prints test metrics (x100) at the best valid NDCG@200 evaluation, wall time, the per-evaluation
valid curve and the cold-start split, as in the README's results section.
"""

import json
import sys
from pathlib import Path

KEYS = ("recall@10", "recall@50", "recall@200", "ndcg@10", "ndcg@200")


def load(workdir):
    return json.loads((Path(workdir) / "metrics.json").read_text())


def main(argv):
    runs = [a.rsplit("=", 1) for a in argv]  # the name may hold "=" (e.g. a config argument)
    print("| run | " + " | ".join(k.replace("recall", "R").replace("ndcg", "N") for k in KEYS)
          + " | best epoch | epochs run | wall (min) |")
    print("|---" * (len(KEYS) + 4) + "|")
    for name, wd in runs:
        m = load(wd)
        t = m.get("test", {})
        best = m.get("best") or {}
        ep = next((e["epoch"] for e in m["evals"] if e["step"] == best.get("step")), float("nan"))
        print(f"| {name} | " + " | ".join(f"{100 * t.get(k, float('nan')):.2f}" for k in KEYS)
              + f" | {ep:.0f} | {m['step'] / m['steps_per_epoch']:.0f} | {m['wall_seconds'] / 60:.1f} |")
    print()
    for name, wd in runs:
        m = load(wd)
        curve = ", ".join(f"{e['epoch']:.0f}: {100 * e['valid/ndcg@200']:.2f}" for e in m["evals"])
        print(f"- {name} valid N@200 by epoch: {curve}")
    print()
    print("| run | target seen in training | users | R@10 | R@200 | N@10 |")
    print("|---|---|---|---|---|---|")
    for name, wd in runs:
        for bucket, v in load(wd).get("test", {}).get("cold_start", {}).items():
            f = lambda k: f"{100 * v[k]:.2f}" if v["users"] else "-"
            print(f"| {name} | {bucket} | {v['users']} | {f('recall@10')} | {f('recall@200')} | {f('ndcg@10')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
