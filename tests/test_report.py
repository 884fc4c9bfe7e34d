"""``python -m rlrm.report`` on a real output folder of train_agent (PPO on CartPole, 2 seeds, a learned reward
paid for cart speed and the true reward), the numbers checked by hand; the statistics on known arrays; bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import trim_mean

from rlrm import model as rm
from rlrm.data import labels
from rlrm.data.rollout import collect
from rlrm.report import entry
from rlrm.rl import quality
from rlrm.rl.evaluation import random_returns
from rlrm.tasks import Task
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.train_agent import entry as train_agent

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

PROG = "python -m rlrm.report"
FAST = ["--reps", "300", "--random-episodes", "20"]
CARTPOLE = Task("CartPole-v1", "CartPole-v1")


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = entry(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder: PPO on CartPole-v1 for 1,024 steps, seeds 0 and 1, on a learned reward (a model of cart
    speed |x_dot|, so its agents differ from the true reward's) and on the true reward; 4 evaluations each."""
    root = tmp_path_factory.mktemp("report")
    ds = collect(CARTPOLE, 600, n_envs=4, seed=0, progress=False)
    speed = labels.label_with(ds, lambda d: np.abs(d.next_obs[:, 1]).astype(np.float64), "python:test:speed")
    model = rm.save(train_reward_model([speed], TrainConfig(epochs=3, patience=0), progress=False).model,
                    root / "speed.safetensors")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = train_agent(["--env", "CartPole-v1", "--n-envs", "2", "--params", "n_steps:64", "batch_size:64",
                          "-n", "1024", "--eval-freq", "256", "--eval-episodes", "2", "--seed", "0", "--seed", "1",
                          "--baseline", "--reward-model", str(model), "--no-progress", "--output-dir",
                          str(root / "runs")])
    assert rc == 0
    return root / "runs"


@pytest.fixture(scope="module")
def report(runs: Path) -> dict[str, Any]:
    """The report with its defaults (into RUNS_DIR/report): report.json, and what was printed."""
    rc, out, err = _run([str(runs), *FAST])
    assert rc == 0, err
    return {"doc": json.loads((runs / "report" / "report.json").read_text()), "out": out, "err": err}


def _results(runs: Path) -> list[dict[str, Any]]:
    return json.loads((runs / "results.json").read_text())


def _scores_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- on a real output folder
def test_tables_come_first_and_the_files_are_written(runs: Path, report: dict[str, Any]) -> None:
    out = report["out"]
    assert out.startswith("Agent quality in"), out[:200]
    assert "Aggregate normalized score" in out and "Reward hacking: " in out
    folder = runs / "report"
    for name in ("scores.csv", "report.json", "random_returns.json", "aggregate.png", "performance_profile.png",
                 "learning_curves.png"):
        assert (folder / name).is_file(), name
    figures = sorted((folder / "hacking").glob("*.png"))
    assert len(figures) == 2 and all(f.read_bytes()[:4] == b"\x89PNG" for f in figures)
    assert "report in " in report["err"]


def test_normalized_scores_equal_the_formula_on_results_json(runs: Path, report: dict[str, Any]) -> None:
    rows = _results(runs)
    assert sorted((r["reward"], r["seed"]) for r in rows) == [("learned", 0), ("learned", 1), ("true", 0),
                                                              ("true", 1)]
    random = float(random_returns(CARTPOLE, 20, 0).mean())  # what --random-episodes 20 --seed 0 means
    cached = json.loads((runs / "report" / "random_returns.json").read_text())["CartPole-v1"]
    assert cached["mean"] == pytest.approx(random) and cached["episodes"] == 20
    baseline = np.mean([r["true_mean"] for r in rows if r["reward"] == "true"])
    scores = {(s["source"], int(s["seed"])): s for s in _scores_csv(runs / "report" / "scores.csv")}
    assert len(scores) == 4
    for r in rows:
        s = scores[(r["reward"], r["seed"])]
        expected = (r["true_mean"] - random) / (baseline - random)
        assert float(s["normalized_score"]) == pytest.approx(expected, rel=1e-9)
        assert float(s["true_return"]) == pytest.approx(r["true_mean"])
        assert float(s["baseline_return"]) == pytest.approx(baseline) and s["baseline"] == "mean of 2 seed(s)"
    # the true-reward runs average 1 by construction
    assert np.mean([float(scores[("true", k)]["normalized_score"]) for k in (0, 1)]) == pytest.approx(1.0)
    [group] = [g for g in report["doc"]["groups"] if g["source"] == "learned"]
    assert group["normalized_score"] == pytest.approx(np.mean([float(scores[("learned", k)]["normalized_score"])
                                                               for k in (0, 1)]))


def test_aggregates_are_the_iqm_and_mean_of_the_scores(report: dict[str, Any]) -> None:
    doc = report["doc"]
    learned = np.array([s["normalized_score"] for s in doc["scores"] if s["source"] == "learned"])
    agg = doc["aggregate"]["learned"]
    assert agg["runs"] == 2 and agg["groups"] == 1
    assert agg["iqm"]["point"] == pytest.approx(trim_mean(learned, 0.25))
    assert agg["mean"]["point"] == pytest.approx(learned.mean())
    for metric in ("iqm", "mean"):
        assert agg[metric]["low"] <= agg[metric]["point"] <= agg[metric]["high"]
    assert list(doc["aggregate"]) == ["learned", "true"]
    profile = doc["profiles"]["learned"]
    taus = np.array(profile["taus"])
    assert profile["fraction"] == pytest.approx(list((learned[:, None] > taus).mean(axis=0)))
    # curves: 4 runs with 4 evaluations each, in one group; the hacking table covers the 2 learned-reward runs
    [(group, curves)] = doc["curves"].items()
    assert group == "CartPole-v1 · ppo · 1,024 steps"
    assert len(curves) == 4 and all(c["timesteps"] == [256, 512, 768, 1024] for c in curves)
    assert sorted(r["seed"] for r in doc["hacking"]) == [0, 1]
    assert all(isinstance(r["flagged"], bool) and r["evaluations"] == 4 for r in doc["hacking"])


def test_pair_seeds_and_json_output(runs: Path, tmp_path: Path) -> None:
    rc, out, _ = _run([str(runs), "--out", str(tmp_path / "paired"), "--pair-seeds", "--json", *FAST])
    assert rc == 0
    doc = json.loads(out)  # only the JSON on stdout, strict (NaN as null)
    random = doc["random"]["mean"]["CartPole-v1"]
    rows = _results(runs)
    true = {r["seed"]: r["true_mean"] for r in rows if r["reward"] == "true"}
    scored = 0
    for s in doc["scores"]:
        r = next(r for r in rows if r["reward"] == s["source"] and r["seed"] == s["seed"])
        assert s["baseline"] == f"seed {s['seed']}"
        if true[r["seed"]] > random:
            assert s["normalized_score"] == pytest.approx((r["true_mean"] - random) / (true[r["seed"]] - random))
            scored += 1
        else:  # that seed's true-reward agent is no better than random: no score, and the reason
            assert s["normalized_score"] is None and "do not beat a random policy" in s["note"]
    assert scored >= 2  # seed 0's true-reward agent learned (this folder: 500 vs random ~23)
    assert (tmp_path / "paired" / "report.json").is_file() and not (runs / "report" / "paired").exists()


def test_a_copied_folder_without_true_reward_runs_is_reported_without_scores(runs: Path, tmp_path: Path) -> None:
    """The folder moved to another machine (each row's run_dir points nowhere), and its true-reward runs gone: the
    task is reported without a normalized score and the reason said; curves and the hacking table remain."""
    copy = tmp_path / "copied"
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns("report"))
    kept = []
    for r in _results(runs):
        if r["reward"] == "true":
            shutil.rmtree(copy / "ppo" / Path(r["run_dir"]).name)
        else:
            kept.append({**r, "run_dir": f"/elsewhere/ppo/{Path(r['run_dir']).name}"})
    (copy / "results.json").write_text(json.dumps(kept))
    rc, out, _ = _run([str(copy), *FAST])
    assert rc == 0
    text = " ".join(out.split())
    assert "no normalized scores: nothing to aggregate" in text
    assert "note: CartPole-v1 · ppo · 1,024 steps: no true-reward run of CartPole-v1 with ppo at 1,024 steps" in text
    scores = _scores_csv(copy / "report" / "scores.csv")
    assert len(scores) == 2 and all(s["normalized_score"] == "" for s in scores)
    doc = json.loads((copy / "report" / "report.json").read_text())
    assert doc["aggregate"] == {} and "profiles" not in doc
    assert len(doc["curves"]["CartPole-v1 · ppo · 1,024 steps"]) == 2  # found in the copy by algo and folder name
    assert all(r["figure"] and Path(r["figure"]).is_file() for r in doc["hacking"])
    assert not (copy / "report" / "aggregate.png").exists()


def test_several_output_folders_are_reported_as_one_grid(runs: Path, report: dict[str, Any], tmp_path: Path) -> None:
    """The learned-reward runs in one output folder, the true-reward runs in another (two commands): one report over
    both normalizes each learned run by the other folder's true-reward agents, exactly as the single folder's
    report does; a folder named twice, or a run both folders list, counts once; --out is required."""
    parts = {"learned": tmp_path / "learned", "true": tmp_path / "true"}
    for source, folder in parts.items():
        rows = [r for r in _results(runs) if (r["reward"] == "true") == (source == "true")]
        for r in rows:
            shutil.copytree(Path(r["run_dir"]), folder / "ppo" / Path(r["run_dir"]).name)
        (folder / "results.json").write_text(json.dumps([{**r, "run_dir": str(folder / "ppo" / Path(r["run_dir"]).name)}
                                                         for r in rows]))
    rc, _, err = _run([str(parts["learned"]), str(parts["true"]), str(parts["learned"]), "--out",
                       str(tmp_path / "both"), *FAST])
    assert rc == 0, err
    doc = json.loads((tmp_path / "both" / "report.json").read_text())
    assert doc["runs"] == len(_results(runs)) == 4
    assert doc["runs_dirs"] == [str(parts["learned"]), str(parts["true"])]
    single = report["doc"]
    assert {src: a["iqm"]["point"] for src, a in doc["aggregate"].items()} == {
        src: a["iqm"]["point"] for src, a in single["aggregate"].items()}
    key = ("task", "seed", "source", "normalized_score")
    assert sorted(tuple(s[k] for k in key) for s in doc["scores"]) == sorted(
        tuple(s[k] for k in key) for s in single["scores"])
    # the true-reward folder's runs copied into the learned one too: still 4 runs
    shutil.copytree(parts["true"] / "ppo", parts["learned"] / "ppo", dirs_exist_ok=True)
    rc, _, err = _run([str(parts["learned"]), str(parts["true"]), "--out", str(tmp_path / "again"), *FAST])
    assert rc == 0, err
    assert json.loads((tmp_path / "again" / "report.json").read_text())["runs"] == 4
    line = _one_line_error(*_run([str(parts["learned"]), str(parts["true"])]))
    assert "--out: required with several RUNS_DIR (2 given)" in line


def test_learned_rewards_that_differ_only_in_loop_settings_are_told_apart() -> None:
    """Online-feedback runs have no model file: two loops alike but for one setting (symlog labels or not) are two
    sources, named by that setting, and runs of one loop stay one source."""
    from rlrm.rl.scorecard import FoundRun, _label_sources

    def run(seed: int, transform: str | None) -> FoundRun:
        feedback = {"kind": "labels", "budget": 2000, "teacher": None, "query": "uniform"}
        if transform is not None:
            feedback["label_transform"] = transform
        row = {"task": "MountainCarContinuous-v0", "algo": "sac", "seed": seed, "reward": "learned",
               "timesteps": 50_000, "true_mean": 0.0}
        return FoundRun(row, None, {"reward_model": None, "reward_model_sha256": None, "feedback": feedback})

    runs = [run(0, None), run(1, None), run(0, "symlog"), run(1, "symlog")]
    _label_sources(runs)
    assert runs[0].source == runs[1].source != runs[2].source == runs[3].source
    assert runs[0].source.endswith("label_transform=None)") and runs[2].source.endswith("label_transform=symlog)")


# --------------------------------------------------------------------------- bad input
def _one_line_error(rc: int, out: str, err: str) -> str:
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: ") and "Traceback" not in err, err
    return lines[0]


def test_a_folder_with_no_runs_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    line = _one_line_error(*_run([str(tmp_path / "empty")]))
    assert f"RUNS_DIR {tmp_path / 'empty'}: no finished runs" in line
    assert "not a folder" in _one_line_error(*_run([str(tmp_path / "missing")]))
    assert not (tmp_path / "empty" / "report").exists()


def test_a_broken_results_json_or_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("[{")
    assert "results.json: not valid JSON" in _one_line_error(*_run([str(tmp_path)]))
    (tmp_path / "results.json").write_text(json.dumps([{"task": "CartPole-v1", "algo": "ppo"}]))
    line = _one_line_error(*_run([str(tmp_path)]))
    assert "results.json: row 1: not a run result (missing 'seed', 'reward', 'timesteps', 'true_mean')" in line
    assert "--reps: expected a positive integer, got 0" in _one_line_error(*_run([str(tmp_path), "--reps", "0"]))


# --------------------------------------------------------------------------- the statistics on known arrays
def test_iqm_and_intervals_on_known_arrays() -> None:
    rng = np.random.default_rng(0)
    for x in (np.arange(8.0), rng.normal(size=13), np.array([0.0, 0.0, 1.0, 100.0])):
        assert quality.iqm(x) == pytest.approx(trim_mean(x, 0.25))
    groups = {"a": {"g1": np.array([0.1, 0.5, 0.9, 2.0]), "g2": np.array([1.0, 1.2])}}
    est = quality.interval_estimates(groups, reps=500, seed=3)["a"]
    pooled = np.concatenate(list(groups["a"].values()))
    assert est["iqm"]["point"] == pytest.approx(trim_mean(pooled, 0.25))
    assert est["mean"]["point"] == pytest.approx(np.mean([0.875, 1.1]))  # the mean of the groups' means
    assert est["runs"] == 6 and est["groups"] == 2
    for metric in ("iqm", "mean"):
        assert est[metric]["low"] <= est[metric]["point"] <= est[metric]["high"]
    # seeded: reproducible, whatever NumPy's global generator holds (rliable draws from it), which is left as it was
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        before = np.random.get_state()[1].copy()
        assert quality.interval_estimates(groups, reps=500, seed=3) == {"a": est}
        assert (np.random.get_state()[1] == before).all()
    assert quality.interval_estimates(groups, reps=500, seed=4) != {"a": est}  # and the seed is what decides
    # each group is resampled on its own: a group of one run cannot widen the interval
    one = quality.interval_estimates({"a": {"g": np.array([0.7])}}, reps=200)["a"]["mean"]
    assert one["low"] == one["point"] == one["high"] == pytest.approx(0.7)


def test_normalized_scores_pairing_and_notes() -> None:
    def row(task: str, source: str, seed: int, ret: float, steps: int = 100) -> dict[str, Any]:
        return {"task": task, "algo": "ppo", "seed": seed, "timesteps": steps, "true_mean": ret, "source": source,
                "run_dir": f"{task}-{source}-{seed}"}

    rows = [row("A", "true", 0, 110.0), row("A", "true", 1, 90.0), row("A", "learned", 0, 60.0),
            row("A", "learned", 2, 80.0), row("A", "learned", 0, 70.0, steps=50),
            row("B", "learned", 0, 5.0), row("C", "true", 0, -1.0), row("C", "learned", 0, 3.0),
            row("D", "true", 0, 10.0), row("D", "learned", 0, 3.0)]
    randoms = {"A": 10.0, "B": 0.0, "C": 0.0}
    by = {(s["task"], s["source"], s["seed"], s["timesteps"]): s for s in quality.normalized_scores(rows, randoms)}
    assert by[("A", "learned", 0, 100)]["normalized_score"] == pytest.approx((60 - 10) / (100 - 10))
    assert by[("A", "learned", 2, 100)]["normalized_score"] == pytest.approx((80 - 10) / (100 - 10))
    assert "no true-reward run of A with ppo at 50 steps" in by[("A", "learned", 0, 50)]["note"]
    assert "no true-reward run of B" in by[("B", "learned", 0, 100)]["note"]
    assert "do not beat a random policy" in by[("C", "learned", 0, 100)]["note"]
    assert "no random-policy return for D" in by[("D", "learned", 0, 100)]["note"]
    assert all(math.isnan(s["normalized_score"]) for s in by.values() if s["note"])
    paired = {(s["task"], s["source"], s["seed"], s["timesteps"]): s
              for s in quality.normalized_scores(rows, randoms, pair_seeds=True)}
    assert paired[("A", "learned", 0, 100)]["normalized_score"] == pytest.approx((60 - 10) / (110 - 10))
    # seed 2 has no true-reward run: the seeds' mean
    assert paired[("A", "learned", 2, 100)]["baseline"] == "mean of 2 seed(s)"
