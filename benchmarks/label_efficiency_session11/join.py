"""Join session 11's label-efficiency rows with session 8's (see README.md here).

    python benchmarks/label_efficiency_session11/join.py FAMILY OUT_DIR [EXTRA_RUNS.csv ...]

Writes ``OUT_DIR/runs.csv``: ``OUT_DIR/runs_session11_paired.csv`` (session 11's new-task methods at N <= 32, auto
rows chosen by the paired rule), session 8's rows that session 11 did not re-run (scratch at every N, every method
at N >= 64; same draws, scratch's code unchanged) and the extra files' rows (more seeds).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path | str) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write(path: Path, rows: list[dict[str, str]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    family, out, extra_files = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    session11 = read(out / "runs_session11_paired.csv")
    session8 = [r for r in read(ROOT / "label_efficiency_session8" / family / "runs.csv")
                if r["method"].startswith("scratch") or int(r["n"]) >= 64]
    extra = [{k: v for k, v in r.items() if k != "choice_errors"} for f in extra_files for r in read(f)]
    write(out / "runs.csv", session11 + session8 + extra)
    print(f"{len(session11)} session-11 rows, {len(session8)} session-8 rows, {len(extra)} extra rows")


if __name__ == "__main__":
    main()
