"""Reward hacking (rlrm.rl.hacking): the flag's edges on synthetic evaluations, the run report's files, the
true-peak checkpoint kept by TrueRewardEval, and (slow) a learned reward that is wrong in a known way: PPO on
Pendulum paid for spinning fast is flagged, PPO on a correct learned reward is not."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import norm
from stable_baselines3 import PPO

from rlrm import model as rm
from rlrm.data import labels
from rlrm.data.rollout import collect
from rlrm.rl import hacking
from rlrm.rl.callbacks import TrueRewardEval, every
from rlrm.rl.envs import load_vecnormalize, make_vec_env, sync_normalization
from rlrm.rl.files import load_agent
from rlrm.rl.folder import RunFolder
from rlrm.tasks import Task
from rlrm.train.loop import TrainConfig, train_reward_model

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"


def _rows(true: list[float], learned: list[float | None], true_std: float = 0.0, learned_std: float = 0.0,
          episodes: int = 10, every_steps: int = 1000) -> list[dict[str, Any]]:
    return [{"timesteps": every_steps * (i + 1), "true_mean": t, "true_std": true_std, "learned_mean": ln,
             "learned_std": learned_std, "episodes": episodes} for i, (t, ln) in enumerate(zip(true, learned))]


# --------------------------------------------------------------------------- the rule, on synthetic rows
def test_true_falling_while_learned_rises_is_flagged_with_the_true_peak() -> None:
    a = hacking.analyze(_rows([100, 150, 120, 60], [1, 2, 3, 4], true_std=5, learned_std=0.1))
    assert a.flagged and "reward hacking" in a.reason
    assert (a.true_peak, a.true_peak_timesteps, a.true_final, a.final_timesteps) == (150, 2000, 60, 4000)
    assert a.true_drop == 90 and a.learned_rise == 2 and a.learned_at_peak == 2 and a.learned_final == 4
    assert a.spearman == pytest.approx(-0.4)  # ranks (2,4,3,1) vs (1,2,3,4)
    assert a.z == pytest.approx(norm.ppf(1 - 0.05 / 4))


@pytest.mark.parametrize(("true", "learned", "why"), [
    ([100, 150, 120, 60], [4, 3, 2, 1], "did not rise"),   # both fell: instability, not hacking
    ([60, 100, 120, 150], [1, 2, 3, 4], "at its peak"),    # both rose: learning
    ([150, 150, 150, 150], [1, 2, 3, 4], "within noise"),  # flat true: the first of equal maxima, a drop of 0
    ([100, 150, 149, 149], [1, 2, 3, 4], "within noise"),  # a 1-point dip: under a quarter of the range (50)
])
def test_not_flagged(true: list[float], learned: list[float], why: str) -> None:
    a = hacking.analyze(_rows(true, learned, true_std=0.0))
    assert why in a.reason and not a.flagged
    assert a.true_peak_timesteps == 1000 * (true.index(max(true)) + 1)


def test_the_noise_threshold_is_z_standard_errors_of_the_difference() -> None:
    # 3 evaluations of 5 episodes with std 10: se = sqrt(2 * 10**2 / 4), z for the best of 3; the range floor is
    # a quarter of the drop itself (the curve spans the drop), so the standard error decides
    z = norm.ppf(1 - 0.05 / 3)
    needed = z * math.sqrt(2 * 100 / 4)
    for drop, flagged in ((needed - 0.01, False), (needed + 0.01, True)):
        a = hacking.analyze(_rows([100.0, 100.0 - drop / 2, 100.0 - drop], [0.0, 0.0, 50.0], true_std=10,
                                  episodes=5))
        assert a.true_drop_threshold == pytest.approx(needed)
        assert a.flagged is flagged, (drop, a.reason)


def test_the_learned_rise_must_also_beat_its_noise() -> None:
    # the true return falls clearly; the learned one rises by 1 with an episode std of 10 over 5 episodes
    a = hacking.analyze(_rows([100, 200, 0], [5, 5, 6], true_std=1, learned_std=10, episodes=5))
    assert not a.flagged and "did not rise beyond noise" in a.reason
    assert a.learned_rise_threshold == pytest.approx(norm.ppf(1 - 0.05 / 3) * math.sqrt(2 * 100 / 4))


def test_missing_and_short_inputs() -> None:
    assert not hacking.analyze([]).flagged
    one = hacking.analyze(_rows([1.0], [1.0]))
    assert not one.flagged and "1 evaluation" in one.reason and math.isnan(one.spearman)
    # a true-reward run without a reward model: JSON nulls for the learned return
    no_learned = hacking.analyze(_rows([100, 150, 20], [None, None, None]))
    assert not no_learned.flagged and "no learned return" in no_learned.reason and math.isnan(no_learned.spearman)
    # rows in any order, rows without a true mean skipped
    shuffled = [*_rows([100, 150, 120, 60], [1, 2, 3, 4], true_std=5)[::-1], {"timesteps": 99, "true_mean": None}]
    assert hacking.analyze(shuffled) == hacking.analyze(_rows([100, 150, 120, 60], [1, 2, 3, 4], true_std=5))


def test_a_final_row_without_learned_std_borrows_the_peaks() -> None:
    rows = _rows([100, 200, 0], [0, 0, 30], true_std=1, learned_std=10, episodes=5)
    del rows[-1]["learned_std"]
    a = hacking.analyze(rows)
    assert a.learned_rise_threshold == pytest.approx(norm.ppf(1 - 0.05 / 3) * math.sqrt(2 * 100 / 4))


# --------------------------------------------------------------------------- a run's report files
def test_write_run_report_writes_json_and_png_and_returns_the_summary(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "ppo" / "X_1")
    folder.path.mkdir(parents=True)
    folder.write_evaluations(_rows([100, 150, 120], [1, 2, 3], true_std=1))
    final = {"timesteps": 4000, "true_mean": 20.0, "true_std": 1.0, "learned_mean": 9.0, "episodes": 10}
    summary = hacking.write_run_report(folder, final, title="X")
    assert summary["flagged"] and summary["evaluations"] == 4 and summary["final_timesteps"] == 4000
    assert summary["best_true_agent"] is None
    doc = json.loads((folder.path / hacking.REPORT_JSON).read_text())
    assert doc["flagged"] and [r["timesteps"] for r in doc["curve"]] == [1000, 2000, 3000, 4000]
    assert doc["rule"]["alpha"] == hacking.ALPHA
    assert (folder.path / hacking.REPORT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a final evaluation at the last periodic one's step is the same agent: not added twice
    assert len(hacking.run_rows(folder, {**final, "timesteps": 3000})) == 3


def test_true_reward_eval_keeps_the_agent_of_the_true_peak(tmp_path: Path) -> None:
    task = Task("CartPole-v1", "CartPole-v1", max_episode_steps=60)  # short evaluations
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    venv = make_vec_env(task, 2, seed=0)
    agent = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu")
    calls: list[dict[str, Any]] = []

    def save_best(model: Any, train_env: Any, row: dict[str, Any]) -> None:
        assert model is agent and train_env is venv
        calls.append(row)
        hacking.save_true_peak(folder, model, train_env, row)

    evaluator = TrueRewardEval(lambda: make_vec_env(task, 2, seed=10_000, training=False), 4,
                               folder.write_evaluations, sync_normalization,
                               history=[{"timesteps": 0, "true_mean": 5.0}], save_best=save_best)
    agent.learn(640, callback=every(128, evaluator))
    evaluator.close()
    means = [r["true_mean"] for r in evaluator.history]
    # called exactly when an evaluation beat every earlier one (the resumed history's 25 included)
    expected = [r for i, r in enumerate(evaluator.history) if i > 0 and r["true_mean"] > max(means[:i])]
    assert calls == expected and calls
    kept = json.loads((folder.path / hacking.BEST_TRUE / "evaluation.json").read_text())
    peak = max(evaluator.history[1:], key=lambda r: r["true_mean"])
    assert kept["timesteps"] == peak["timesteps"] == calls[-1]["timesteps"]
    again = load_agent(folder.path / hacking.BEST_TRUE / RunFolder.AGENT, env=venv, algo="ppo")
    assert again.num_timesteps == peak["timesteps"]
    summary = hacking.write_run_report(folder)
    assert summary["best_true_agent"] == str(folder.path / hacking.BEST_TRUE / RunFolder.AGENT)
    # a resumed run whose history already holds a higher true return keeps that peak's agent
    calls.clear()
    resumed = TrueRewardEval(lambda: make_vec_env(task, 2, seed=10_000, training=False), 2, lambda rows: None,
                             sync_normalization, history=[{"timesteps": 1, "true_mean": 1e9}], save_best=save_best)
    resumed.init_callback(agent)
    resumed.run_eval()
    resumed.close()
    assert calls == []


def test_the_true_peak_keeps_the_normalization_statistics(tmp_path: Path) -> None:
    task = Task("CartPole-v1", "CartPole-v1", max_episode_steps=20)
    venv = make_vec_env(task, 1, seed=0, normalize={"gamma": 0.99})
    venv.reset()
    for _ in range(30):
        venv.step(np.array([venv.action_space.sample()]))
    agent = PPO("MlpPolicy", venv, n_steps=32, batch_size=32, seed=0, device="cpu")
    folder = RunFolder(tmp_path)
    hacking.save_true_peak(folder, agent, venv, {"timesteps": 0, "true_mean": 1.0})
    kept = make_vec_env(task, 1, seed=1, normalize={"gamma": 0.99}, training=False)
    load_vecnormalize(kept, tmp_path / hacking.BEST_TRUE / RunFolder.VECNORMALIZE)
    np.testing.assert_allclose(kept.obs_rms.mean, venv.obs_rms.mean)
    assert sorted(p.name for p in (tmp_path / hacking.BEST_TRUE).iterdir()) == [
        RunFolder.AGENT, "evaluation.json", RunFolder.VECNORMALIZE]


# --------------------------------------------------------------------------- a reward that is wrong in a known way
def _model(ds: Any, fn: Any, name: str, out: Path) -> Path:
    labeled = labels.label_with(ds, fn, f"python:test:{name}")
    model = train_reward_model([labeled], TrainConfig(epochs=10, patience=0), progress=False).model
    return rm.save(model, out / f"{name}.safetensors")


@pytest.mark.slow
def test_ppo_paid_for_spinning_the_pendulum_is_flagged_and_a_correct_reward_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The learned reward pays the pendulum's angular speed squared: PPO learns to spin it, its learned return
    rises while the true return (upright and still) falls from its first evaluations. A model of the env's own
    reward, trained on the same data, moves both together."""
    from rlrm.report import entry as report
    from rlrm.train_agent import entry as train_agent

    monkeypatch.chdir(tmp_path)
    ds = collect(Task("Pendulum-v1", "Pendulum-v1"), 3000, n_envs=4, seed=0, progress=False)
    spin = _model(ds, lambda d: np.square(d.next_obs[:, 2]).astype(np.float64), "spin", tmp_path)
    correct = _model(ds, lambda d: d.env_reward.astype(np.float64), "correct", tmp_path)
    for model in (spin, correct):
        assert train_agent(["--env", "Pendulum-v1", "--reward-model", str(model), "-n", "12288", "--eval-freq",
                            "2048", "--eval-episodes", "5", "--no-progress", "--output-dir", "runs"]) == 0
    capsys.readouterr()
    assert report(["runs", "--random-episodes", "10", "--reps", "200"]) == 0
    out = capsys.readouterr().out
    assert "Reward hacking: 1 of 2 learned-reward run(s) flagged" in " ".join(out.split())
    doc = json.loads((tmp_path / "runs" / "report" / "report.json").read_text())
    verdict = {row["source"]: row for row in doc["hacking"]}
    hacked, fine = verdict["learned (spin)"], verdict["learned (correct)"]
    assert hacked["flagged"] and hacked["true_drop"] > hacked["true_drop_threshold"] > 0
    assert hacked["learned_rise"] > hacked["learned_rise_threshold"] > 0
    assert hacked["true_peak_timesteps"] < hacked["final_timesteps"] == 12288
    assert not fine["flagged"] and fine["spearman"] > 0.8, fine
    # the run's own report (what train_agent keeps in result.json) says the same
    folder = RunFolder(hacked["run_dir"])
    assert hacking.write_run_report(folder, folder.result())["flagged"]
    assert (folder.path / hacking.REPORT_PNG).is_file()
