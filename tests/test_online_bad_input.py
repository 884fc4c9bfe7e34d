"""Teachers that fail the online feedback loop (issue #11, "Bad input"), met through ``python -m rlrm.train_agent``:
one that raises or answers NaN stops the run with an error naming it, the agent checkpointed and the round pending;
a ``file:`` teacher without the answers gets the asked transitions listed in a CSV to fill in; ``--resume`` then
goes on, each query asked once under its id. (``--budget 0`` and ``--reward true`` are refused in test_online.)"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlrm.data.dataset import TransitionDataset
from rlrm.train_agent import entry

# 4 envs x 64 steps: a rollout, a round and a checkpoint every 256 steps; 20 labels first, then 20 at 256, 512, 768
PPO = ["--task", "Pendulum-v1", "--algo", "ppo", "-n", "1024", "--params", "n_steps:64", "n_envs:4", "n_epochs:1",
       "batch_size:64", "--checkpoint-freq", "256", "--eval-freq", "0", "--eval-episodes", "1", "--no-progress",
       "--feedback", "labels", "--budget", "80", "--feedback-every", "256", "--feedback-epochs", "2"]
TEACHER = "python:test_online_bad_input:flaky"
#: how :func:`flaky` fails on its third call (the round at 512 steps): "raise", "nan" or None (it answers)
FLAKY: dict[str, Any] = {"mode": None, "calls": 0}


def flaky(ds: TransitionDataset) -> np.ndarray:
    """The env's reward, unless told to fail on the third call."""
    FLAKY["calls"] += 1
    if FLAKY["calls"] == 3 and FLAKY["mode"] == "raise":
        raise RuntimeError("labeling service down")
    if FLAKY["calls"] == 3 and FLAKY["mode"] == "nan":
        return np.full(len(ds), np.nan, np.float32)
    return ds.env_reward.copy()


def _error(capsys: pytest.CaptureFixture[str], start: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if start in line]
    assert len(lines) == 1, err
    return lines[0]


def _log_ids(run: Path) -> tuple[Counter[int], Counter[int]]:
    records = [json.loads(line) for line in (run / "feedback" / "queries.jsonl").read_text().splitlines()]
    return (Counter(r["id"] for r in records if r["kind"] == "query"),
            Counter(r["id"] for r in records if r["kind"] == "answer"))


@pytest.mark.parametrize("mode, reason", [("raise", "(RuntimeError: labeling service down)"), ("nan", "finite")])
def test_a_failing_teacher_stops_the_run_resumably(mode: str, reason: str, workdir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    FLAKY.update(mode=mode, calls=0)
    assert entry([*PPO, "--teacher", TEACHER]) != 0
    line = _error(capsys, "teacher 'python:")
    assert f"teacher '{TEACHER}' failed on the 20 queries of round 2" in line and reason in line, line
    # PPO collected the rollout up to 512 steps but did not learn from it: the checkpoint is the one before it
    assert "checkpointed at 256 steps" in line and line.endswith("continue with --resume once the teacher answers")
    (run,) = (workdir / "runs" / "ppo").glob("Pendulum-v1_*")
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["num_timesteps"] == 256 and state["reward_version"] == 1
    fb = json.loads((run / "feedback" / "feedback.json").read_text())
    assert fb["queries"] == 40 and fb["version"] == 1
    assert json.loads((run / "feedback" / "pending" / "query.json").read_text())["first"] == 40
    if mode == "nan":
        return

    FLAKY.update(mode=None)  # the teacher is fixed
    assert entry(["--resume", *PPO, "--teacher", TEACHER]) == 0
    fb = json.loads((run / "feedback" / "feedback.json").read_text())
    assert [(r["timesteps"], r["queries"], r["version"]) for r in fb["history"]] == [
        (0, 20, 0), (256, 40, 1), (512, 60, 2), (768, 80, 3)]
    asked, answered = _log_ids(run)
    assert sorted(asked) == sorted(answered) == list(range(80)) and set(asked.values()) == {1}
    assert fb["resumes"][0]["asked_again"] == 2 and not (run / "feedback" / "pending").exists()


# a rollout (4 x 128 steps) and a round at 512 steps; 16 random-policy labels first, 16 at 512
FILE_RUN = [*PPO, "--params", "n_steps:128", "--budget", "32", "--pretrain-steps", "16", "--feedback-every", "512"]


def _label_unanswered(csv_path: Path, answers: Path) -> int:
    """Answer the listed transitions as a person would: Pendulum's reward of each row's numbers, appended to the
    teacher's file; how many."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["label"] == "" for r in rows)
    with open(answers, "a") as f:
        for r in rows:
            cos, sin, speed, torque = (float(r[k]) for k in ("obs[0]", "obs[1]", "obs[2]", "action"))
            reward = -float(np.arctan2(sin, cos) ** 2 + 0.1 * speed ** 2 + 0.001 * torque ** 2)
            f.write(f"{r['episode']},{r['step']},{reward!r}\n")
    return len(rows)


def test_file_teacher_without_answers_lists_them_and_resume_goes_on(workdir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    answers = workdir / "answers.csv"
    answers.write_text("episode,step,label\n")
    args = [*FILE_RUN, "--teacher", f"file:{answers}"]
    assert entry(args) != 0  # nothing to label the random-policy transitions with
    line = _error(capsys, "teacher 'file:")
    (run,) = (workdir / "runs" / "ppo").glob("Pendulum-v1_*")
    listed = run / "feedback" / "pending" / "unanswered.csv"
    assert "has no answers for 16 of the 16 transitions asked in round 0: they are listed in " in line
    assert Path(line.split("they are listed in ")[1].split(";")[0]).resolve() == listed.resolve()
    assert f"add their labels to {answers}" in line and line.endswith("continue with --resume once it answers")
    assert _label_unanswered(listed, answers) == 16

    assert entry(["--resume", *args]) != 0  # pretrained, trained to 512 steps, asked about the agent's transitions
    line = _error(capsys, "teacher 'file:")
    assert "has no answers for 16 of the 16 transitions asked in round 1" in line and "checkpointed at 0 steps" in line
    with open(answers, "a") as f:
        f.write("99999,0,1.0\n")  # a row for no transition asked: refused, the round stays pending
    assert entry(["--resume", *args]) != 0
    line = _error(capsys, "teacher 'file:")
    assert "failed on the 16 queries of round 1" in line and "episode 99999 step 0 matches no transition" in line
    answers.write_text(answers.read_text().replace("99999,0,1.0\n", ""))
    assert _label_unanswered(listed, answers) == 16  # the file keeps round 0's rows: they are allowed

    assert entry(["--resume", *args]) == 0
    fb = json.loads((run / "feedback" / "feedback.json").read_text())
    assert [(r["timesteps"], r["queries"], r["version"]) for r in fb["history"]] == [(0, 16, 0), (512, 32, 1)]
    asked, answered = _log_ids(run)
    assert sorted(asked) == sorted(answered) == list(range(32)) and set(asked.values()) == {1}
    ds = TransitionDataset.load(run / "feedback" / "labels")
    with open(answers, newline="") as f:
        given = {(int(r["episode"]), int(r["step"])): float(r["label"]) for r in csv.DictReader(f)}
    assert {(int(e), int(s)): float(x) for e, s, x in zip(ds.episode, ds.step, ds.label)} == pytest.approx(given)
    np.testing.assert_allclose(ds.label, ds.env_reward, atol=1e-4)  # the person's labels were Pendulum's reward
