"""Take any Gymnasium env, learn its reward from labels, wrap the env, train PPO, compare true and learned return.

    python examples/wrap_any_env.py [ENV_ID]      (default: CartPole-v1; any Box/Discrete env works)
"""

import sys

import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from rlrm.data.rollout import collect
from rlrm.rl.evaluation import evaluate_agent
from rlrm.tasks import Task
from rlrm.train import TrainConfig, train_reward_model
from rlrm.wrappers import VecLearnedReward

env_id = sys.argv[1] if len(sys.argv) > 1 else "CartPole-v1"
task = Task(name=env_id, env_id=env_id)  # labels: the env's own reward (the oracle)

# 1. Labeled transitions from a random policy, and a reward model trained on them.
data = collect(task, steps=10_000, n_envs=8, seed=0)
model = train_reward_model([data], TrainConfig(epochs=15)).model


# 2. Monitor inside (it records the TRUE return), the learned reward outside: the agent sees only the latter.
def make_env() -> gym.Env:
    return Monitor(gym.make(env_id))


venv = VecLearnedReward(DummyVecEnv([make_env] * 8), model, task=env_id)

# 3. PPO on the learned reward.
agent = PPO("MlpPolicy", venv, n_steps=64, batch_size=256, seed=0, verbose=0)
agent.learn(30_000)

# 4. Evaluate: true return (Monitor) and learned return side by side.
eval_env = VecLearnedReward(DummyVecEnv([make_env] * 2), model, task=env_id)
summary = evaluate_agent(agent, eval_env, n_episodes=10).summary()
print(f"{env_id}: true return {summary['true_mean']:.1f} ± {summary['true_std']:.1f}, "
      f"learned return {summary['learned_mean']:.1f}")
