"""Post-hoc: span (fixed leave-one-out) on the CartPole family's draws of benchmarks/label_efficiency_span_cartpole
(same data, same pretrained base: both deterministic), to set beside the run's span rows (pre-fix code)."""
import csv, sys, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
torch.set_num_threads(1)
import label_efficiency as le
from rlrm.train.span import span_model
fam = sys.argv[1]; ns = [int(x) for x in sys.argv[2].split(",")]; seeds = int(sys.argv[3])
b = le.Budget(library_defaults=True, efficiency_only=True)
fd = le.collect_family(le.FAMILIES[fam], b)
base, pre = le.pretrain(fd, b)
print("pretrain r2", [round(r["r2"], 6) for r in pre], flush=True)
out = []
for task in fd.heldout_tasks:
    pool, test = fd.labeled(task, "pool"), fd.labeled(task, "test")
    for seed in range(seeds):
        for n in ns:
            ds = le.draw(pool, n, seed)
            m = span_model(base, ds)
            r = le.test_metrics(m, test, epic=False)
            out.append({"task": task.name, "seed": seed, "n": n, "r2": r["r2"],
                        "penalty": m.tasks[task.name].info["span"]["penalty"]})
            print(out[-1], flush=True)
with open(sys.argv[4], "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(out[0])); w.writeheader(); w.writerows(out)
