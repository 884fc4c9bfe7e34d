"""Resuming runs with online feedback (issue #11) through ``python -m rlrm.train_agent --resume``: a PPO run stopped
by Ctrl-C (checkpoint, exit 130), or killed mid-round (a second Ctrl-C), goes on to the queries and rounds its budget
and schedule give, with one query per id in the log; a SAC run killed after a round that its last checkpoint
predates resumes with its replay buffer relabelled by the loop's newest model (``reward_alpha`` 0.5 included: the
true rewards the buffer keeps survive the checkpoint).

Ctrl-C lands deterministically, as in test_runs_hardening: a wrapped function sends SIGINT to this process."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlrm import model as rm
from rlrm.data.dataset import TransitionDataset
from rlrm.rl import feedback_rounds
from rlrm.rl.folder import RunFolder
from rlrm.rl.online import FeedbackLoop
from rlrm.train_agent import entry

# 4 envs x 64 steps: a rollout (and a feedback round, and a checkpoint) every 256 steps; 20 labels first, then 20 a
# round at 256, 512 and 768
PPO = ["--task", "Pendulum-v1", "--algo", "ppo", "-n", "1024", "--params", "n_steps:64", "n_envs:4", "n_epochs:1",
       "batch_size:64", "--checkpoint-freq", "256", "--eval-freq", "0", "--eval-episodes", "1", "--no-progress",
       "--feedback", "labels", "--budget", "80", "--feedback-every", "256", "--feedback-epochs", "2"]
SCHEDULE = [(0, 20, 0), (256, 40, 1), (512, 60, 2), (768, 80, 3)]  # (timesteps, queries so far, version) per round


def _sigint_at(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int, signals: int = 1) -> None:
    """Send SIGINT ``signals`` times to this process when ``owner.name`` is called the ``call``-th time (before it
    runs): one asks the run to stop (checkpoint), two stop it at once (a kill, as far as the files know)."""
    original, calls = getattr(owner, name), [0]

    def hooked(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == call:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, hooked)


def _feedback(run: Path) -> dict[str, Any]:
    return json.loads((run / "feedback" / "feedback.json").read_text())


def _check_log(run: Path, queries: int) -> None:
    """Ids 0 to queries - 1, each asked once and answered once; the labels on disk are those answers."""
    records = [json.loads(line) for line in (run / "feedback" / "queries.jsonl").read_text().splitlines()]
    asked = Counter(r["id"] for r in records if r["kind"] == "query")
    answered = Counter(r["id"] for r in records if r["kind"] == "answer")
    assert sorted(asked) == sorted(answered) == list(range(queries))
    assert set(asked.values()) == set(answered.values()) == {1}
    keys = {(r["episode"], r["step"]) for r in records if r["kind"] == "query"}
    ds = TransitionDataset.load(run / "feedback" / "labels")
    assert len(ds) == queries and set(zip(ds.episode.tolist(), ds.step.tolist())) == keys
    assert not (run / "feedback" / "pending").exists()


def _check_finished(run: Path) -> dict[str, Any]:
    fb = _feedback(run)
    assert [(r["timesteps"], r["queries"], r["version"]) for r in fb["history"]] == SCHEDULE
    assert fb["queries"] == fb["budget"] == 80 and fb["version"] == 3 and fb["rounds"] == 3
    assert fb["model"] == "models/reward_model_v3.safetensors" and fb["rows"] == 80
    _check_log(run, 80)
    assert json.loads((run / "result.json").read_text())["timesteps"] == 1024
    return fb


def test_stopped_ppo_run_resumes_to_the_same_schedule(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:  # Ctrl-C in the checkpoint after the round at 512 steps
        _sigint_at(m, RunFolder, "save_checkpoint", call=2)
        assert entry(PPO) == 130
    (run,) = (workdir / "runs" / "ppo").glob("Pendulum-v1_*")
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state == {**state, "num_timesteps": 512, "reward_version": 2}  # the checkpoint says who paid the agent
    assert [r["timesteps"] for r in _feedback(run)["history"]] == [0, 256, 512]
    _check_log(run, 60)

    assert entry(["--resume", *PPO]) == 0
    fb = _check_finished(run)
    (resumed,) = fb["resumes"]
    assert resumed == {"timesteps": 512, "checkpoint_version": 2, "version": 2, "queries": 60, "asked_again": None,
                       "relabel": None}


def test_ppo_run_killed_mid_round_asks_that_round_again(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while retraining in the round at 512 steps: its queries and answers are logged and its answers saved,
    feedback.json is not; the last checkpoint (256 steps) predates the round."""
    with monkeypatch.context() as m:
        _sigint_at(m, feedback_rounds, "train_reward_model", call=3, signals=2)
        assert entry(PPO) == 130
    (run,) = (workdir / "runs" / "ppo").glob("Pendulum-v1_*")
    assert _feedback(run)["queries"] == 40 and (run / "feedback" / "pending" / "query.json").is_file()
    log = (run / "feedback" / "queries.jsonl").read_text().splitlines()
    assert sum('"kind": "answer"' in line for line in log) == 60  # round 2's answers are in the log
    assert len(TransitionDataset.load(run / "feedback" / "labels")) == 60  # and on disk
    assert json.loads((run / "checkpoint" / "state.json").read_text())["reward_version"] == 1

    assert entry(["--resume", *PPO]) == 0
    fb = _check_finished(run)  # the round at 512 once, under its ids 40-59: nothing lost, nothing counted twice
    (resumed,) = fb["resumes"]
    assert resumed["timesteps"] == 256 and resumed["checkpoint_version"] == 1
    assert resumed["version"] == 2 and resumed["asked_again"] == 2 and resumed["queries"] == 60


# One env, a round every 100 steps (rounds at 100, 200, 300; 20 labels each after 20 random-policy ones). No
# gradient steps (learning_starts past the end): the buffer is the point, and they would take most of the time.
SAC = ["--task", "Pendulum-v1", "--algo", "sac", "-n", "400", "--params", "learning_starts:1000",
       "policy_kwargs:{net_arch: [16]}", "--checkpoint-freq", "100", "--eval-freq", "0", "--eval-episodes", "1",
       "--no-progress", "--feedback", "labels", "--budget", "80", "--pretrain-steps", "20", "--feedback-every", "100",
       "--feedback-epochs", "2"]


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_killed_sac_run_resumes_with_its_buffer_relabelled(alpha: float, workdir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    args = [*SAC, "--reward-alpha", str(alpha)]
    with monkeypatch.context() as m:  # killed in the checkpoint after the round at 200 steps: the last one is at 100
        _sigint_at(m, RunFolder, "save_checkpoint", call=2, signals=2)
        assert entry(args) == 130
    (run,) = (workdir / "runs" / "sac").glob("Pendulum-v1_*")
    assert json.loads((run / "checkpoint" / "state.json").read_text())["reward_version"] == 1
    assert _feedback(run)["version"] == 2

    seen: dict[str, Any] = {}
    original = FeedbackLoop._on_training_start

    def look(self: FeedbackLoop) -> None:
        original(self)
        buf = self.model.replay_buffer
        seen.update(version=self.state.version, pos=buf.pos, obs=buf.observations[:buf.pos, 0].copy(),
                    actions=buf.actions[:buf.pos, 0].copy(), next_obs=buf.next_observations[:buf.pos, 0].copy(),
                    dones=buf.dones[:buf.pos, 0].copy(), timeouts=buf.timeouts[:buf.pos, 0].copy(),
                    rewards=buf.rewards[:buf.pos, 0].copy(),
                    true=buf.true_rewards[:buf.pos, 0].copy() if hasattr(buf, "true_rewards") else None)

    with monkeypatch.context() as m:
        m.setattr(FeedbackLoop, "_on_training_start", look)
        assert entry(["--resume", *args]) == 0
    assert seen["version"] == 2 and seen["pos"] == 100
    model = rm.load(run / "feedback" / "models" / "reward_model_v2.safetensors")
    action = 2.0 * seen["actions"]  # Pendulum's actions are in [-2, 2]
    terminated = (seen["dones"] > 0.5) & ~(seen["timeouts"] > 0.5)
    learned = model.predict("Pendulum-v1", seen["obs"], action, seen["next_obs"], terminated)
    if alpha == 1.0:
        assert seen["true"] is None  # a plain buffer: nothing kept beside it
        np.testing.assert_allclose(seen["rewards"], learned, atol=1e-5)
    else:  # the env's rewards came back from the checkpoint, and are mixed in
        obs, u = seen["obs"], action[:, 0]
        true = -(np.arctan2(obs[:, 1], obs[:, 0]) ** 2 + 0.1 * obs[:, 2] ** 2 + 0.001 * u ** 2)
        np.testing.assert_allclose(seen["true"], true, atol=1e-4)
        np.testing.assert_allclose(seen["rewards"], 0.5 * learned + 0.5 * seen["true"], atol=1e-5)
    fb = _feedback(run)
    assert [(r["timesteps"], r["queries"]) for r in fb["history"]] == [(0, 20), (100, 40), (200, 60), (300, 80)]
    (resumed,) = fb["resumes"]
    assert resumed["checkpoint_version"] == 1 and resumed["version"] == 2
    assert resumed["relabel"] == {**resumed["relabel"], "rows": 100, "version": 2}
    assert [r["relabel"]["rows"] for r in fb["history"][1:]] == [100, 200, 300]


def test_preference_run_killed_mid_round_resumes_with_the_pairs_it_was_answered(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Preferences: the transitions and pairs on disk are cut back to what the log answers, the round cut off is
    asked again (its pairs under their ids), and the preference set on disk is the log's answered pairs."""
    from rlrm.data.preferences import LABELS, PreferenceDataset

    args = [*PPO, "--feedback", "preferences", "--budget", "40", "--segment-length", "10"]
    with monkeypatch.context() as m:  # killed while retraining in the round at 512 steps
        _sigint_at(m, feedback_rounds, "train_reward_model", call=3, signals=2)
        assert entry(args) == 130
    (run,) = (workdir / "runs" / "ppo").glob("Pendulum-v1_*")
    assert _feedback(run)["queries"] == 20  # 10 pairs on random-policy segments, 10 at 256 steps
    assert entry(["--resume", *args]) == 0
    fb = _feedback(run)
    assert [(r["timesteps"], r["queries"]) for r in fb["history"]] == [(0, 10), (256, 20), (512, 30), (768, 40)]
    records = [json.loads(line) for line in (run / "feedback" / "queries.jsonl").read_text().splitlines()]
    queries = {r["id"]: r for r in records if r["kind"] == "query"}
    answers = {r["id"]: r["label"] for r in records if r["kind"] == "answer"}
    assert len(queries) == len(answers) == 40 and sorted(queries) == list(range(40))
    ds = TransitionDataset.load(run / "feedback" / "transitions")
    prefs = PreferenceDataset.load(run / "feedback" / "preferences")
    left, right = prefs.segment_rows(ds)
    on_disk = [((int(ds.episode[a]), int(ds.step[a])), (int(ds.episode[b]), int(ds.step[b])), LABELS[c])
               for a, b, c in zip(left[:, 0], right[:, 0], prefs.label)]
    logged = [((q["left"]["episode"], q["left"]["step"]), (q["right"]["episode"], q["right"]["step"]), answers[i])
              for i, q in sorted(queries.items()) if answers[i] != "skip"]
    assert on_disk == logged and fb["pairs"] == len(logged) == 40
    steps = {(q[side]["episode"], q[side]["step"] + j) for q in queries.values() for side in ("left", "right")
             for j in range(10)}
    assert set(zip(ds.episode.tolist(), ds.step.tolist())) == steps  # every asked segment's step, nothing else


def test_the_query_log_is_read_back_as_feedback_json_counts(tmp_path: Path) -> None:
    from rlrm.errors import ConfigError
    from rlrm.rl.feedback_files import read_log, settled

    log = tmp_path / "queries.jsonl"
    lines = [{"kind": "query", "id": 0, "episode": 0, "step": 0}, {"kind": "answer", "id": 0, "label": 1.0},
             {"kind": "query", "id": 1, "episode": 0, "step": 1}]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    log.write_text(text + '{"kind": "answer", "id": 1, "lab')  # a process killed mid-write
    assert read_log(log) == lines
    assert settled(log, read_log(log), 1) == lines[:2]  # query 1 belongs to a round feedback.json does not count
    with pytest.raises(ConfigError, match="expected ids 0 to 1 asked once each"):
        settled(log, [*lines, lines[0]], 2)  # query 0 twice
    with pytest.raises(ConfigError, match="expected ids 0 to 2"):
        settled(log, lines, 3)  # a query missing
    log.write_text(text.replace('"id": 1,', '"id": "one",') + json.dumps(lines[1]) + "\n")
    with pytest.raises(ConfigError, match=r"queries.jsonl:3: expected a query log record"):
        read_log(log)  # a damaged line before the end
