"""SB3 callbacks and logger outputs: learned-return logging, true-reward evaluation, checkpoints, W&B."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EveryNTimesteps
from stable_baselines3.common.logger import KVWriter
from stable_baselines3.common.vec_env import VecEnv

from rlrm.rl.evaluation import evaluate_agent


class LearnedReturnLogger(BaseCallback):
    """Logs ``rollout/ep_learned_rew_mean`` (SB3's own ``rollout/ep_rew_mean`` is the true return)."""

    def __init__(self, window: int = 100) -> None:
        super().__init__()
        self.returns: deque[float] = deque(maxlen=window)

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            ep = info.get("learned_episode")
            if ep is not None:
                self.returns.append(ep["r"])
        return True

    def _on_rollout_end(self) -> None:
        if self.returns:
            self.logger.record("rollout/ep_learned_rew_mean", float(np.mean(self.returns)))


class TrueRewardEval(BaseCallback):
    """Evaluate on the true reward each time it is called; log ``eval/*`` and save the history.

    Schedule it with SB3's ``EveryNTimesteps(eval_freq, TrueRewardEval(...))`` (see :func:`every`).

    :param make_eval_env: builds the evaluation VecEnv (Monitor inside; learned reward optional).
    :param n_episodes: episodes per evaluation.
    :param save: stores the history (a list of rows) after each evaluation.
    :param sync: copies normalization statistics from the training env into the evaluation env.
    """

    def __init__(self, make_eval_env: Callable[[], VecEnv], n_episodes: int,
                 save: Callable[[list[dict[str, Any]]], None], sync: Callable[[VecEnv, VecEnv], None],
                 history: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.make_eval_env, self.n_episodes, self.save, self.sync = make_eval_env, n_episodes, save, sync
        self.history: list[dict[str, Any]] = list(history or [])
        self._env: VecEnv | None = None

    def _on_step(self) -> bool:
        self.run_eval()
        return True

    def run_eval(self) -> dict[str, Any]:
        """One evaluation now (also the callback's step)."""
        if self._env is None:
            self._env = self.make_eval_env()
        self.sync(self.training_env, self._env)
        res = evaluate_agent(self.model, self._env, self.n_episodes).summary()
        row = {"timesteps": int(self.num_timesteps), "time": time.time(), **res}
        self.history.append(row)
        self.save(self.history)
        self.logger.record("eval/true_return_mean", res["true_mean"])
        self.logger.record("eval/true_return_std", res["true_std"])
        if not np.isnan(res["learned_mean"]):
            self.logger.record("eval/learned_return_mean", res["learned_mean"])
        self.logger.record("eval/ep_length_mean", res["length_mean"])
        self.logger.dump(self.num_timesteps)
        return row

    def close(self) -> None:
        """Close the evaluation env (if one was made)."""
        if self._env is not None:
            self._env.close()
            self._env = None


class CallFn(BaseCallback):
    """Calls ``fn()`` each time it is called: with :func:`every`, a periodic checkpoint."""

    def __init__(self, fn: Callable[[], None]) -> None:
        super().__init__()
        self.fn = fn

    def _on_step(self) -> bool:
        self.fn()
        return True


def every(n_steps: int, callback: BaseCallback, start: int = 0) -> EveryNTimesteps:
    """SB3's ``EveryNTimesteps`` on the grid ``k * n_steps``, also when a resumed run starts at ``start``."""
    scheduled = EveryNTimesteps(n_steps, callback)
    scheduled.last_time_trigger = (start // n_steps) * n_steps if n_steps > 0 else 0
    return scheduled


class WandbOutput(KVWriter):
    """An SB3 logger output that sends every dumped key/value straight to a W&B run (no tensorboard sync)."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        metrics = {}
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            if "wandb" in excluded:
                continue
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                metrics[key] = float(value)
        if metrics:
            metrics["global_step"] = step
            self.run.log(metrics)

    def close(self) -> None:
        pass
