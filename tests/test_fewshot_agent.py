"""Issue #9 at the agent level, cheaply: a held-out CartPole position task added to a pretrained model from few
labels gives a LEARNED reward on which PPO earns a high TRUE return (the task's own reward, applied online).

The full version, with three seeds, 100k steps and a true-reward baseline, is ``benchmarks/fewshot_agent.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlrm import model as rm
from rlrm.data.behaviour import builtin_policy
from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.rl.evaluation import random_returns
from rlrm.rl.folder import RunSpec
from rlrm.rl.hyperparams import load_spec
from rlrm.rl.runs import train_run
from rlrm.tasks import Catalog, Task
from rlrm.train import TrainConfig, train_reward_model
from rlrm.train.fewshot import extend_model
from rlrm.train.heldout import predict_dataset

pytestmark = pytest.mark.slow

NEW_TASK = "CartPole-v1/x0.75"
LABELS = 128
PPO_STEPS = 20_000
# Measured once with these settings (2-core AMD EPYC, Nov 27 2026): random policy 20.2; PPO with PPO_STEPS steps
# on the TRUE reward, seeds 0/1/2: 156.2 / 415.7 / 406.8; on this test's learned reward: 189.4 / 423.2 / 363.4
# (the learned head: out-of-fold r2 0.96, max |learned - true| 0.13 on the pool). 120 is 0.74 of the way from
# random to the seed-0 true-reward run, and below every learned-reward seed measured.
# At this budget agents of either reward mostly balance (0.77-0.87 reward per step; 0.80 is balancing at x=0):
# the test checks learning from the few-shot reward; reaching x=0.75 is benchmarks/fewshot_agent.py's job.
MIN_TRUE_RETURN = 120.0


def _wander(task: Task, steps: int, seed: int) -> TransitionDataset:
    policy = builtin_policy("rlrm:cartpole_wander", task, 8, seed)
    return collect(task, steps, policy, n_envs=8, seed=seed, progress=False)


def _random_return(task: Task, episodes: int = 50, seed: int = 0) -> float:
    return float(random_returns(task, episodes, seed).mean())


def test_agent_on_few_shot_learned_reward_earns_true_return(catalog: Catalog, tmp_path: Path) -> None:
    task = catalog.task(NEW_TASK)
    pretrain = [_wander(t, 2_000, 100 + i) for i, t in enumerate(catalog.suite("cartpole_position"))]
    base = train_reward_model(pretrain, TrainConfig(epochs=8, seed=0), progress=False).model
    pool = _wander(task, 4_000, 7)
    few = pool.subset(np.sort(np.random.default_rng(0).choice(len(pool), LABELS, replace=False)))
    model = extend_model(base, [few], TrainConfig(epochs=10, seed=0), "auto", progress=False).model
    assert NEW_TASK in model.tasks

    # the learned reward is a fitted function, not the task's reward copied through
    pred = predict_dataset(model, pool)
    assert np.max(np.abs(pred - pool.label)) > 1e-3
    assert np.corrcoef(pred, pool.label)[0, 1] > 0.9

    path = rm.save(model, tmp_path / "model.safetensors")
    spec = RunSpec(task, load_spec("ppo", task, {"n_timesteps": PPO_STEPS}), 0, "learned", str(path),
                   eval_freq=0, eval_episodes=10)
    result = train_run(spec, tmp_path / "runs", progress=False)
    random = _random_return(task)
    assert random < MIN_TRUE_RETURN / 5  # the threshold is far above what random actions earn
    assert result["true_mean"] >= MIN_TRUE_RETURN, (result["true_mean"], random)
