"""Collect transitions, label them with your own Python function, train a reward model, read its metrics.

    python examples/label_your_own_transitions.py

The reward here: "keep the pendulum still" (penalize angular velocity), a task the env does not have.
"""

from pathlib import Path

import numpy as np

from rlrm.data import labels
from rlrm.data.rollout import collect
from rlrm.tasks import Task
from rlrm.train import TrainConfig, train_reward_model

out = Path("runs/examples/label_your_own")


def keep_still(ds):
    """Label a whole batch at once: -(angular velocity)^2 of the next observation (obs = cos, sin, thdot)."""
    return -np.square(ds.next_obs[:, 2])


# 1. Collect 10k transitions with a random policy (labels start as the env's own reward).
task = Task(name="Pendulum-v1/keep-still", env_id="Pendulum-v1")
ds = collect(task, steps=10_000, n_envs=8, seed=0)

# 2. Label them with our function and save the dataset (a folder: manifest.json + one .npy per field).
ds = labels.label_with(ds, keep_still, source="python:examples:keep_still")
ds.save(out / "data")
print(f"{len(ds)} transitions, {ds.n_episodes} episodes, label mean {ds.label.mean():.2f}")

# 3. Train a reward model; metrics are on held-out episodes.
result = train_reward_model([ds], TrainConfig(epochs=20, seed=0))
for name, m in result.metrics.items():
    print(f"{name}: r2={m['r2']:.3f}  spearman={m['spearman']:.3f}  return-ranking accuracy={m['ranking_acc']:.3f}")

# 4. Save it: one safetensors file, loadable without executing code.
from rlrm import model as rm  # noqa: E402

rm.save(result.model, out / "reward_model.safetensors")
print(f"saved {out / 'reward_model.safetensors'}")
