"""A new task from a few dozen labels on a pretrained reward model, and an agent trained on it.

The CartPole position family: every task keeps the pole up and the cart near a target x*. A model pretrained on
seven targets learns a held-out one (x* = 0.75) from 48 labeled transitions, then PPO trains on that learned
reward. The agent is scored on the task's TRUE reward, beside a random policy and the same PPO trained on the
true reward.

    python examples/few_shot_new_task.py
"""

import numpy as np
import torch
from stable_baselines3 import PPO

from rlrm.data.behaviour import builtin_policy
from rlrm.data.rollout import collect
from rlrm.rl.envs import make_vec_env
from rlrm.rl.evaluation import evaluate_agent
from rlrm.rl.hyperparams import build_kwargs, load_spec
from rlrm.tasks import load_catalog
from rlrm.train import TrainConfig, train_reward_model
from rlrm.train.fewshot import extend_model

torch.set_num_threads(1)
catalog = load_catalog()
STEPS = 30_000  # PPO budget of each agent


def wander(task, steps, seed):
    """Transitions from a controller that steers the cart around x in [-2, 2] (random actions stay near 0)."""
    return collect(task, steps, builtin_policy("rlrm:cartpole_wander", task, 8, seed), seed=seed, progress=False)


# 1. Pretrain one multi-task reward model on the family's training targets (-1.5 ... 1.5).
pretrain = [wander(t, 5_000, seed=i) for i, t in enumerate(catalog.suite("cartpole_position"))]
base = train_reward_model(pretrain, TrainConfig(epochs=20), progress=False).model

# 2. The held-out task, from 48 labeled transitions; "auto" picks a frozen encoder or fine-tuning by
#    cross-validation.
task = catalog.task("CartPole-v1/x0.75")
pool = wander(task, 2_000, seed=100)
few = pool.subset(np.sort(np.random.default_rng(0).choice(len(pool), 48, replace=False)))
result = extend_model(base, [few], TrainConfig(epochs=20), "auto", progress=False)
model = result.model
print(f"added {task.name} from {len(few)} labels by {model.meta['adaptation']['mode']}: "
      f"out-of-fold r2 {result.metrics[task.name]['r2']:.3f}")


# 3. PPO with the CartPole-v1 hyperparameters, on the learned reward and on the true one. Monitor sits under the
#    learned-reward wrapper, so evaluation reads the TRUE return either way.
def train_and_evaluate(reward_fn):
    spec = load_spec("ppo", task, {"n_timesteps": STEPS})
    agent = PPO(spec.policy, make_vec_env(task, spec.n_envs, seed=0, reward=reward_fn), seed=0, device="cpu",
                **build_kwargs(spec))
    agent.learn(STEPS)
    return evaluate_agent(agent, make_vec_env(task, 5, seed=1000), n_episodes=10).summary()["true_mean"]


learned = train_and_evaluate(model.reward_fn(task.name))
true = train_and_evaluate(None)

# 4. A random policy, on the same true reward.
env = task.make_env()
env.action_space.seed(0)
returns = []
for ep in range(20):
    env.reset(seed=ep)
    total, done = 0.0, False
    while not done:
        _, r, terminated, truncated, _ = env.step(env.action_space.sample())
        total, done = total + r, terminated or truncated
    returns.append(total)
random = float(np.mean(returns))

print(f"true return on {task.name} after {STEPS:,} PPO steps: learned reward {learned:.1f}, "
      f"true reward {true:.1f}, random policy {random:.1f}")
print(f"normalized (learned - random) / (true - random): {(learned - random) / (true - random):.2f}")
