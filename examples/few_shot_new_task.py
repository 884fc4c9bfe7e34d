"""Add a new task to a trained multi-task reward model by fitting only its head (the encoder stays frozen).

    python examples/few_shot_new_task.py
"""

import numpy as np

from rlrm.data import labels
from rlrm.data.rollout import collect
from rlrm.tasks import Task
from rlrm.train import TrainConfig, train_reward_model

# 1. A model trained on two Pendulum tasks (a task family: same dynamics, different rewards).
swing = Task("Pendulum-v1", "Pendulum-v1")
still = Task("Pendulum-v1/still", "Pendulum-v1")
base = collect(swing, 20_000, seed=0)
still_ds = labels.label_with(collect(still, 20_000, seed=1), lambda ds: -np.square(ds.next_obs[:, 2]))
model = train_reward_model([base, still_ds], TrainConfig(epochs=20)).model
encoder_before = [p.detach().clone() for p in model.encoder.parameters()]

# 2. A new task with only 1,000 labeled transitions: "keep the pendulum on the right" (sin(theta) > 0).
right = Task("Pendulum-v1/right", "Pendulum-v1")
few = labels.label_with(collect(right, 1_000, seed=2), lambda ds: ds.next_obs[:, 1].astype(np.float64))

# 3. Fit only its head: the shared encoder is not touched.
result = train_reward_model([few], TrainConfig(epochs=200, lr=3e-3, freeze_encoder=True), model=model)
unchanged = all(np.array_equal(a.numpy(), b.detach().numpy())
                for a, b in zip(encoder_before, result.model.encoder.parameters()))
print(f"tasks in the model: {list(result.model.tasks)}; encoder unchanged: {unchanged}")
print(f"few-shot head on held-out episodes: r2={result.metrics['Pendulum-v1/right']['r2']:.3f}")
