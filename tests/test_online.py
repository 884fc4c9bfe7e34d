"""The online feedback loop (issue #11) through ``python -m rlrm.train_agent --feedback labels``: rounds, the budget,
the query log against the answers on disk, the model versions swapped into the running wrapper, and (SAC) the
replay buffer relabelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlrm import model as rm
from rlrm.data.dataset import TransitionDataset
from rlrm.rewards import known_env_reward
from rlrm.train_agent import entry

# VecNormalize on: the loop must record the raw observations the reward model sees, not the normalized ones
PPO = ["--task", "Pendulum-v1", "--algo", "ppo", "-n", "4096", "--params", "n_steps:256", "n_envs:4", "n_epochs:2",
       "normalize:true", "--eval-freq", "2048", "--eval-episodes", "2", "--no-progress"]


def _run_dir(out: Path, algo: str) -> Path:
    (run,) = (out / algo).glob("Pendulum-v1_*")
    return run


def _log(run: Path) -> tuple[dict[int, dict], dict[int, float]]:
    queries, answers = {}, {}
    for line in (run / "feedback" / "queries.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "query":
            assert rec["id"] not in queries
            queries[rec["id"]] = rec
        else:
            assert rec["kind"] == "answer" and rec["id"] not in answers
            answers[rec["id"]] = rec["label"]
    return queries, answers


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("online_ppo")
    assert entry([*PPO, "--feedback", "labels", "--budget", "200", "--feedback-every", "1024",
                  "--feedback-epochs", "5", "--output-dir", str(out)]) == 0
    return _run_dir(out, "ppo")


def test_rounds_budget_and_versions(ppo_run: Path) -> None:
    fb = json.loads((ppo_run / "feedback" / "feedback.json").read_text())
    rows = fb["history"]
    # 50 random-policy labels first (a quarter of the budget), then a round at 1024, 2048 and 3072 steps (none at
    # the end: nothing would train on it), the other 150 labels split evenly
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert [r["timesteps"] for r in rows] == [0, 1024, 2048, 3072]
    assert [r["queries"] for r in rows] == [50, 100, 150, 200]
    assert fb["queries"] == fb["budget"] == 200 and fb["version"] == 3 and fb["rounds"] == 3
    # each round's model was swapped into the running wrapper under its round number
    assert [r["reward_version"] for r in rows[1:]] == [1, 2, 3]
    assert fb["model"] == "models/reward_model_v3.safetensors"
    first, last = (rm.load(ppo_run / "feedback" / "models" / f"reward_model_v{v}.safetensors") for v in (0, 3))
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(first.state_dict().values(), last.state_dict().values()))
    for r in rows[1:]:  # held-out metrics on the agent's newest states, EPIC against Pendulum's known reward
        assert np.isfinite(r["heldout"]["r2"]) and 0.0 <= r["heldout"]["epic"] <= 1.0
        assert r["relabel"] is None  # PPO has no replay buffer
    assert rows[-1]["eval"]["timesteps"] == 2048  # the newest evaluation before round 3
    result = json.loads((ppo_run / "result.json").read_text())
    assert result["feedback"]["queries"] == 200 and result["feedback"]["version"] == 3


def test_log_and_dataset_hold_exactly_the_answers(ppo_run: Path) -> None:
    queries, answers = _log(ppo_run)
    assert len(answers) == 200 and set(answers) <= set(queries)  # every answer answers a query
    ds = TransitionDataset.load(ppo_run / "feedback" / "labels")
    on_disk = {(int(e), int(s)): float(x) for e, s, x in zip(ds.episode, ds.step, ds.label)}
    asked = {(queries[i]["episode"], queries[i]["step"]): answers[i] for i in answers}
    assert len(on_disk) == len(ds) == 200
    assert on_disk.keys() == asked.keys()
    assert np.allclose([on_disk[k] for k in asked], list(asked.values()), atol=1e-6)
    # the env teacher's answers are Pendulum's reward of the transitions as recorded: raw observations (from below
    # VecNormalize) and the action sent
    truth = known_env_reward("Pendulum-v1")(ds.obs, ds.action, ds.next_obs, ds.terminated)
    assert np.allclose(ds.label, truth, atol=1e-4)
    # the agent's transitions (150) have episode ids after the 8 pretraining episodes (50 steps on 8 envs)
    assert (ds.episode >= 8).sum() == 150 and ds.info.get("policy") == "random"


def test_start_from_a_reward_model(ppo_run: Path, tmp_path: Path) -> None:
    start = ppo_run / "feedback" / "models" / "reward_model_v0.safetensors"
    assert entry([*PPO, "-n", "2048", "--reward-model", str(start), "--feedback", "labels", "--budget", "40",
                  "--feedback-every", "1024", "--feedback-epochs", "3", "--output-dir", str(tmp_path)]) == 0
    run = _run_dir(tmp_path, "ppo")
    rows = json.loads((run / "feedback" / "feedback.json").read_text())["history"]
    # no pretraining: version 0 is the given model, the whole budget goes to the one round (at 1024 steps)
    assert [(r["timesteps"], r["queries"], r["version"]) for r in rows] == [(0, 0, 0), (1024, 40, 1)]
    assert (run / "feedback" / "models" / "reward_model_v0.safetensors").read_bytes() == start.read_bytes()
    assert len(TransitionDataset.load(run / "feedback" / "labels")) == 40


def test_disagreement_queries(tmp_path: Path) -> None:
    assert entry([*PPO, "-n", "2048", "--feedback", "labels", "--query", "disagreement", "--budget", "100",
                  "--feedback-every", "1024", "--feedback-epochs", "3", "--output-dir", str(tmp_path)]) == 0
    rows = json.loads((_run_dir(tmp_path, "ppo") / "feedback" / "feedback.json").read_text())["history"]
    assert [(r["timesteps"], r["queries"]) for r in rows] == [(0, 25), (1024, 100)]
    sel = rows[1]["selection"]
    # the 75 asked of the 1024 candidates are those a 3-member ensemble disagrees on most
    assert sel["method"] == "disagreement" and sel["candidates"] == 1024
    assert sel["chosen_std"] > 1.5 * sel["candidate_std"]


def test_sac_buffer_relabelled(tmp_path: Path) -> None:
    assert entry(["--task", "Pendulum-v1", "--algo", "sac", "-n", "300", "--params", "learning_starts:50",
                  "batch_size:32", "--eval-freq", "0", "--eval-episodes", "1", "--no-progress", "--feedback", "labels",
                  "--budget", "60", "--pretrain-steps", "20", "--feedback-every", "100", "--feedback-epochs", "3",
                  "--output-dir", str(tmp_path)]) == 0
    rows = json.loads((_run_dir(tmp_path, "sac") / "feedback" / "feedback.json").read_text())["history"]
    assert [(r["timesteps"], r["queries"]) for r in rows] == [(0, 20), (100, 40), (200, 60)]
    # the whole buffer (one env: a row per step so far) now holds the rewards of the round's model
    assert [r["relabel"]["rows"] for r in rows[1:]] == [100, 200]
    assert [r["relabel"]["version"] for r in rows[1:]] == [r["reward_version"] for r in rows[1:]] == [1, 2]


@pytest.mark.parametrize("extra, expected", [
    (["--feedback", "labels"], "needs --budget"),
    (["--feedback", "labels", "--budget", "0"], "--budget: 0 means the teacher is never asked"),
    (["--feedback", "labels", "--budget", "-3"], "--budget: expected a positive integer, got -3"),
    (["--feedback", "labels", "--budget", "10", "--teacher", "rlrm:no_such_reward"], "rlrm:no_such_reward"),
    (["--feedback", "labels", "--budget", "10", "--teacher", "nonsense"], "teacher 'nonsense'"),
    (["--feedback", "labels", "--budget", "10", "--reward", "true"], "needs a learned reward"),
    (["--budget", "10"], "only with --feedback"),
    (["--feedback", "preferences", "--budget", "10", "--teacher", "oracel"], "unknown teacher 'oracel'"),
])
def test_bad_input_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                            expected: str) -> None:
    base = ["--task", "Pendulum-v1", "--algo", "ppo", "-n", "1000", "--no-progress"]
    assert entry([*base, "--output-dir", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_preferences_online(tmp_path: Path) -> None:
    from rlrm.data.preferences import LABELS, PreferenceDataset

    assert entry([*PPO, "--feedback", "preferences", "--budget", "60", "--feedback-every", "1024",
                  "--feedback-epochs", "3", "--segment-length", "20", "--output-dir", str(tmp_path)]) == 0
    run = _run_dir(tmp_path, "ppo")
    fb = json.loads((run / "feedback" / "feedback.json").read_text())
    assert [(r["timesteps"], r["queries"]) for r in fb["history"]] == [(0, 15), (1024, 30), (2048, 45), (3072, 60)]
    assert [r["reward_version"] for r in fb["history"][1:]] == [1, 2, 3] and fb["teacher"] == "oracle"
    queries, answers = _log(run)
    assert len(queries) == len(answers) == 60 and set(answers) == set(queries)
    ds = TransitionDataset.load(run / "feedback" / "transitions")
    prefs = PreferenceDataset.load(run / "feedback" / "preferences")
    left, right = prefs.segment_rows(ds)
    # the pairs on disk are the answered queries, with the teacher's words
    asked = {((q["left"]["episode"], q["left"]["step"]), (q["right"]["episode"], q["right"]["step"])): answers[i]
             for i, q in queries.items() if answers[i] != "skip"}
    on_disk = {((int(ds.episode[a]), int(ds.step[a])), (int(ds.episode[b]), int(ds.step[b]))): LABELS[c]
               for a, b, c in zip(left[:, 0], right[:, 0], prefs.label)}
    assert len(prefs) == len(asked) == 60 and on_disk == asked
    # the transitions on disk are exactly the asked segments' steps, labeled with Pendulum's reward (the oracle's)
    assert len(ds) == len(np.unique(np.concatenate([left.ravel(), right.ravel()])))
    truth = known_env_reward("Pendulum-v1")(ds.obs, ds.action, ds.next_obs, ds.terminated)
    assert np.allclose(ds.label, truth, atol=1e-4)
    lret, rret = prefs.segment_returns(ds.label)
    assert np.all(np.where(prefs.label == 0, lret > rret, rret > lret))  # oracle: the larger return wins


def test_evaluate_reports_the_learned_return_of_the_newest_model(ppo_run: Path) -> None:
    """A feedback run's agent was last paid by the loop's newest model: evaluate uses it, not the starting one."""
    from rlrm.rl.folder import RunFolder
    from rlrm.rl.saved import load_agent_for_eval

    fb = json.loads((ppo_run / "feedback" / "feedback.json").read_text())
    newest = ppo_run / "feedback" / fb["model"]
    assert fb["version"] > 0 and newest.is_file()
    folder = RunFolder.of_agent(ppo_run / "agent.zip")
    loaded = load_agent_for_eval(ppo_run / "agent.zip", folder, n_episodes=1)
    try:
        fn = loaded.venv.venv.reward_fn if hasattr(loaded.venv, "venv") else loaded.venv.reward_fn
    finally:
        loaded.venv.close()
    ds = TransitionDataset.load(ppo_run / "feedback" / "labels")
    expected = rm.load(newest).predict("Pendulum-v1", ds.obs, ds.action, ds.next_obs, ds.terminated)
    assert np.allclose(fn(ds.obs, ds.action, ds.next_obs, ds.terminated), expected, atol=1e-5)


# --------------------------------------------------------------------------- the label scale
def constant_then_env(ds: TransitionDataset) -> np.ndarray:
    """A teacher (``python:test_online:constant_then_env``) whose labels are constant on the random-policy episodes
    (ids below 8) and the env reward on the agent's: the scale of the first labels says nothing of the later ones."""
    return np.where(ds.episode < 8, -1.0, ds.env_reward).astype(np.float32)


def test_refit_label_scale_keeps_the_rewards(pendulum_ds: TransitionDataset, cartpole_ds: TransitionDataset) -> None:
    from rlrm.rl.feedback_rounds import refit_label_scale
    from rlrm.train.loop import TrainConfig, train_reward_model

    cfg = TrainConfig(epochs=1, min_epoch_steps=5, patience=0)
    for ds in (pendulum_ds, cartpole_ds):  # CartPole's labels are constant: label_std 0
        model = train_reward_model([ds], cfg, progress=False).model.eval()
        task = ds.task.name
        before = model.predict(task, ds.obs, ds.action, ds.next_obs, ds.terminated)
        labels = 10.0 * np.random.default_rng(0).standard_normal(len(ds)) + 3.0
        refit_label_scale(model, task, labels)
        info = model.head_info(task)
        assert info.label_mean == pytest.approx(labels.mean()) and info.label_std == pytest.approx(labels.std())
        after = model.predict(task, ds.obs, ds.action, ds.next_obs, ds.terminated)
        np.testing.assert_allclose(after, before, atol=1e-4)  # the swap alone does not change the agent's reward


def test_labels_beyond_the_first_scale_are_learned(tmp_path: Path) -> None:
    """Decided: the label scale is re-estimated from every label before each retraining (the head re-expressed).
    With the scale fixed at the first training, constant random-policy labels would fix the reward for good."""
    assert entry([*PPO, "-n", "1024", "--params", "n_steps:128", "--feedback", "labels", "--teacher",
                  "python:test_online:constant_then_env", "--budget", "120", "--pretrain-steps", "40",
                  "--feedback-every", "512", "--feedback-epochs", "5", "--output-dir", str(tmp_path)]) == 0
    run = _run_dir(tmp_path, "ppo")
    rows = json.loads((run / "feedback" / "feedback.json").read_text())["history"]
    ds = TransitionDataset.load(run / "feedback" / "labels")
    assert [r["timesteps"] for r in rows] == [0, 512] and len(ds) == 120
    assert rows[0]["label_scale"] == {"mean": -1.0, "std": 0.0}  # constant labels first: a constant head
    assert rows[1]["label_scale"]["std"] == pytest.approx(float(ds.label.std()), rel=1e-4)  # every label so far
    model = rm.load(run / "feedback" / "models" / "reward_model_v1.safetensors")
    agent = ds.episode >= 8
    predicted = model.predict("Pendulum-v1", ds.obs, ds.action, ds.next_obs, ds.terminated)
    assert np.corrcoef(predicted[agent], ds.label[agent])[0, 1] > 0.5  # it follows the agent's labels
