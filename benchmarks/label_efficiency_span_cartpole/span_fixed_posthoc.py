"""Post hoc: span heads (leave-one-out penalty, as fixed in 7c63143) on the very draws of this folder's run.

The run (code 62d5b51) fitted span with the smallest penalty always. This refits span alone, on the same family data
and pretrained model (both deterministic: the pretrained test r2 reproduce to the last digit), for every held-out
task, seed and N, and writes test r2 and the chosen penalty. Auto is not recomputed.

    python benchmarks/label_efficiency_span_cartpole/span_fixed_posthoc.py cartpole 4,6,8,12,16,32,64,128,256 3 OUT.csv
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import label_efficiency as le

from rlrm.train.span import span_model


def main() -> None:
    torch.set_num_threads(1)
    family, ns, seeds, out = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3]), sys.argv[4]
    budget = le.Budget(library_defaults=True, efficiency_only=True)
    data = le.collect_family(le.FAMILIES[family], budget)
    base, pre = le.pretrain(data, budget)
    print("pretrain r2", [round(r["r2"], 6) for r in pre], flush=True)
    rows = []
    for task in data.heldout_tasks:
        pool, test = data.labeled(task, "pool"), data.labeled(task, "test")
        for seed in range(seeds):
            for n in ns:
                model = span_model(base, le.draw(pool, n, seed))
                rows.append({"task": task.name, "seed": seed, "n": n,
                             "r2": le.test_metrics(model, test, epic=False)["r2"],
                             "penalty": model.tasks[task.name].info["span"]["penalty"]})
                print(rows[-1], flush=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
