"""What a labels round asks about first (``--ask-first ends top``) and what a retraining of the loop validates on
(a share of the agent's own transitions, not only the random pretraining episodes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError
from rlrm.rl.feedback_files import FeedbackFiles
from rlrm.rl.feedback_rounds import FeedbackState, choose, validation_rows
from rlrm.rl.folder import FeedbackSpec
from rlrm.train.heldout import predict_dataset
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.train_agent import entry

CFG = TrainConfig(epochs=2, min_epoch_steps=5, patience=0)


def _state(model, spec: FeedbackSpec, tmp_path: Path, data: TransitionDataset | None = None) -> FeedbackState:
    return FeedbackState(spec, "env", FeedbackFiles(tmp_path / "feedback"), model, data=data)


def _with_terminal_labels(ds: TransitionDataset) -> TransitionDataset:
    """CartPole with a label that is not constant: -1 on the step that ends the episode by a fall, else the cart's
    position (so the model's rewards differ from row to row)."""
    return ds.with_labels(np.where(ds.terminated, -1.0, ds.obs[:, 0]).astype(np.float32), "test")


def test_ends_then_top_then_the_rule(cartpole_ds: TransitionDataset, tmp_path: Path) -> None:
    ds = _with_terminal_labels(cartpole_ds)
    model = train_reward_model([ds], CFG, progress=False).model.eval()
    cand = ds.subset(np.arange(1000))
    n_ends = int(cand.terminated.sum())
    assert n_ends > 10  # random CartPole episodes are short: more falls than a quarter of 40
    query = choose(_state(model, FeedbackSpec(budget=100), tmp_path), cand, 40, np.random.default_rng(0), round_=1,
                   timesteps=1000)
    asked = query.transitions
    sel = query.selection
    assert sel["method"] == "uniform" and sel["ends"] == 10 and sel["top"] == 10 and len(asked) == 40
    assert int(asked.terminated.sum()) >= 10  # a quarter of the round: episode ends
    # a quarter: the highest rewards of the current model among the rows the ends did not take
    paid = predict_dataset(model, cand)
    key = {(int(e), int(s)) for e, s in zip(asked.episode, asked.step)}
    chosen = np.array([(int(e), int(s)) in key for e, s in zip(cand.episode, cand.step)])
    rest = ~(chosen & cand.terminated)
    tenth = np.sort(paid[rest])[-10]
    assert int((chosen & rest & (paid >= tenth)).sum()) >= 10
    # without strata, the same round is uniform: about 1000/n_ends as many ends
    plain = choose(_state(model, FeedbackSpec(budget=100, ask_first=()), tmp_path), cand, 40,
                   np.random.default_rng(0), round_=1, timesteps=1000)
    assert "ends" not in plain.selection and "top" not in plain.selection
    assert int(plain.transitions.terminated.sum()) < 10


def test_strata_never_exceed_the_round(cartpole_ds: TransitionDataset, tmp_path: Path) -> None:
    ds = _with_terminal_labels(cartpole_ds)
    model = train_reward_model([ds], CFG, progress=False).model.eval()
    cand = ds.subset(np.arange(300))
    for n in (1, 2, 3, 7, 300):
        q = choose(_state(model, FeedbackSpec(budget=500), tmp_path), cand, n, np.random.default_rng(n), round_=1,
                   timesteps=300)
        keys = list(zip(q.transitions.episode.tolist(), q.transitions.step.tolist()))
        assert len(keys) == len(set(keys)) == n  # each asked once, exactly n
        if n == 300:  # everything is asked: no strata to fill
            assert "ends" not in q.selection


def test_validation_rows_hold_agent_states_but_no_terminal(cartpole_ds: TransitionDataset, tmp_path: Path) -> None:
    ds = _with_terminal_labels(cartpole_ds)
    model = train_reward_model([ds.subset(np.flatnonzero(ds.episode < 20))], CFG, progress=False).model
    stored = model.meta["training"]["validation_episodes"]["CartPole-v1"]
    assert stored  # the pretraining's held-out episodes
    state = _state(model, FeedbackSpec(budget=100), tmp_path, data=ds)
    mask = validation_rows(state, 0.1, seed=0)
    later = ds.episode >= 20  # the "agent's" episodes: never seen by the first training
    assert np.isin(ds.episode, stored)[~later].sum() == mask[~later & np.isin(ds.episode, stored)].sum()
    share = mask[later & ~ds.terminated].mean()
    assert 0.06 < share < 0.14  # ~10% of the agent's transitions
    assert not mask[later & ds.terminated].any()  # terminal transitions always train
    assert np.array_equal(mask, validation_rows(state, 0.1, seed=0))  # the same rows every round
    assert not np.array_equal(mask, validation_rows(state, 0.1, seed=1))
    # a retraining on that mask validates on exactly those rows, across the agent's episodes
    result = train_reward_model([ds], CFG, model=model, progress=False, validation={"CartPole-v1": mask})
    assert result.metrics["CartPole-v1"]["n_val"] == int(mask.sum())
    with pytest.raises(ConfigError, match="validation mask of shape"):
        train_reward_model([ds], CFG, model=model, progress=False, validation={"CartPole-v1": mask[:-1]})


def test_spec_strata() -> None:
    assert FeedbackSpec(budget=10).ask_first == ("ends", "top")
    assert FeedbackSpec("preferences", budget=10).ask_first == ()
    with pytest.raises(ConfigError, match="only for scalar labels"):
        FeedbackSpec("preferences", budget=10, ask_first=("ends",))
    with pytest.raises(ConfigError, match="expected some of"):
        FeedbackSpec(budget=10, ask_first=("ends", "ends"))
    spec = FeedbackSpec(budget=10, ask_first=("top",))
    assert FeedbackSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "ask_first"}  # a run recorded before strata
    assert FeedbackSpec.from_dict(old).ask_first == ()


@pytest.mark.parametrize("extra, message", [
    (["--ask-first", "ends"], "--budget/--teacher/--ask-first/--label-transform: only with --feedback"),
    (["--feedback", "labels", "--budget", "10", "--ask-first", "none", "top"], "'none' stands alone"),
    (["--feedback", "preferences", "--budget", "10", "--ask-first", "top"], "only for scalar labels"),
])
def test_bad_ask_first(extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = entry(["--task", "Pendulum-v1", "--algo", "ppo", "-n", "256", *extra, "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_rounds_record_their_strata(tmp_path: Path) -> None:
    """CartPole under PPO: rounds ask about the falls first (each one labeled by the env), then the best-paid."""
    assert entry(["--task", "CartPole-v1", "--algo", "ppo", "-n", "3072", "--params", "n_steps:128", "n_envs:4",
                  "n_epochs:1", "--eval-freq", "3072", "--eval-episodes", "1", "--feedback", "labels", "--teacher",
                  "python:test_online_strata:fall_penalty", "--budget", "120", "--pretrain-steps", "40",
                  "--feedback-every", "1024", "--feedback-epochs", "2", "--no-progress", "--output-dir",
                  str(tmp_path)]) == 0
    (run,) = (tmp_path / "ppo").glob("CartPole-v1_*")
    rows = json.loads((run / "feedback" / "feedback.json").read_text())["history"]
    assert [r["queries"] for r in rows] == [40, 80, 120]
    for r in rows[1:]:  # 40 asked of 1024: 10 falls, 10 best-paid, 20 uniform
        assert (r["selection"]["ends"], r["selection"]["top"]) == (10, 10)
    ds = TransitionDataset.load(run / "feedback" / "labels")
    assert int(ds.terminated[ds.episode >= 4].sum()) >= 20 and np.all(ds.label[ds.terminated] == -1.0)


def fall_penalty(ds: TransitionDataset) -> np.ndarray:
    """A teacher (``python:test_online_strata:fall_penalty``): -1 for a fall, 1 - |x| otherwise."""
    return np.where(ds.terminated, -1.0, 1.0 - np.abs(ds.obs[:, 0])).astype(np.float32)


def test_widening_the_inputs_keeps_the_reward_and_shows_what_was_clipped(cartpole_ds: TransitionDataset) -> None:
    """A model first trained where ``done`` was never set (and the cart stayed near the centre) cannot tell a fall
    from the step before it: the flag is clipped to the one value it had. Widening shows it, and positions beyond the
    first bounds, without changing the reward of any input inside them."""
    from rlrm.rl.feedback_rounds import FeedbackState as State
    from rlrm.rl.feedback_rounds import widen_inputs

    ds = _with_terminal_labels(cartpole_ds)
    first = ds.subset(np.flatnonzero(~ds.terminated))
    model = train_reward_model([first], CFG, progress=False).model.eval()
    task, gid = "CartPole-v1", model.tasks["CartPole-v1"].group
    ends = ds.subset(np.flatnonzero(ds.terminated))

    def paid(d: TransitionDataset, done: np.ndarray | None = None) -> np.ndarray:
        return model.predict(task, d.obs, d.action, d.next_obs, d.terminated if done is None else done)

    assert np.allclose(paid(ends), paid(ends, np.zeros(len(ends), bool)))  # done is invisible
    far = ds.subset(np.arange(50))
    far_obs = far.obs.copy()
    far_obs[:, 0] = 1e3  # a cart position no bound of the first data allows
    far = TransitionDataset.from_arrays(ds.task, ds.obs_space, ds.action_space, obs=far_obs, action=far.action,
                                       next_obs=far.next_obs, terminated=far.terminated, truncated=far.truncated,
                                       episode=far.episode + 10_000, step=far.step, env_reward=far.env_reward,
                                       label=far.label, label_source="test")
    before_first, before_far = paid(first), paid(far)
    state = State(FeedbackSpec(budget=10), "env", None, model, data=ds)  # type: ignore[arg-type]
    widened = widen_inputs(state)
    dim = model.groups[gid].dim
    assert widened == [dim - 1]  # only the done flag: the rest of the data lies inside the first bounds
    np.testing.assert_allclose(paid(first), before_first, rtol=1e-5, atol=1e-5)
    assert not np.allclose(paid(ends), paid(ends, np.zeros(len(ends), bool)))  # a fall is now its own input
    state.data = far
    assert 0 in widen_inputs(state)  # obs[0], re-standardized
    np.testing.assert_allclose(paid(first), before_first, rtol=1e-4, atol=1e-4)
    assert not np.allclose(paid(far), before_far)
    fast = model.reward_fn(task)  # the wrappers' NumPy path folds the new standardization in
    np.testing.assert_allclose(fast(far.obs, far.action, far.next_obs, far.terminated), paid(far), rtol=1e-4,
                               atol=1e-4)
    assert widen_inputs(state) == []  # nothing outside the bounds any more


def test_the_loops_first_model_depends_on_the_seed_alone():
    """torch seeds its default generator per process; the loop's first model must not: the same seed gives the same
    weights in two processes (a run is reproducible), another seed others, and the caller's random stream is kept."""
    import subprocess
    import sys

    import torch

    from rlrm.rl.online import fresh_model

    code = ("from rlrm.rl.online import fresh_model; import torch; "
            "print(repr(sum(float(p.detach().double().sum()) for p in fresh_model({}).parameters())))")
    sums = [subprocess.run([sys.executable, "-c", code.format(seed)], capture_output=True, text=True, check=True)
            .stdout.strip() for seed in (4, 4, 5)]
    assert sums[0] == sums[1] != sums[2]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = fresh_model(4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    b = fresh_model(4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
