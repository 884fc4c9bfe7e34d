"""SB3 callbacks and logger outputs: learned-return logging, true-reward evaluation, checkpoints, W&B."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter
from stable_baselines3.common.vec_env import VecEnv

from rlrm import atomic
from rlrm.evaluation import evaluate


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
    """Every ``eval_freq`` env steps, evaluate on the true reward; log ``eval/*`` and save ``evaluations.json``.

    :param make_eval_env: builds the evaluation VecEnv (Monitor inside; learned reward optional).
    :param sync: copies normalization statistics from the training env into the evaluation env.
    """

    def __init__(self, make_eval_env: Callable[[], VecEnv], eval_freq: int, n_episodes: int, path: Path,
                 sync: Callable[[VecEnv, VecEnv], None], history: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.make_eval_env, self.eval_freq, self.n_episodes = make_eval_env, eval_freq, n_episodes
        self.path, self.sync = path, sync
        self.history: list[dict[str, Any]] = list(history or [])
        self._next = None
        self._env: VecEnv | None = None

    def _on_training_start(self) -> None:
        if self.eval_freq > 0:
            self._next = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self._next is not None and self.num_timesteps >= self._next:
            self._next += self.eval_freq
            self.run_eval()
        return True

    def run_eval(self) -> dict[str, Any]:
        if self._env is None:
            self._env = self.make_eval_env()
        self.sync(self.training_env, self._env)
        res = evaluate(self.model, self._env, self.n_episodes).summary()
        row = {"timesteps": int(self.num_timesteps), "time": time.time(), **res}
        self.history.append(row)
        atomic.write_json(self.path, self.history)
        self.logger.record("eval/true_return_mean", res["true_mean"])
        self.logger.record("eval/true_return_std", res["true_std"])
        if not np.isnan(res["learned_mean"]):
            self.logger.record("eval/learned_return_mean", res["learned_mean"])
        self.logger.record("eval/ep_length_mean", res["length_mean"])
        self.logger.dump(self.num_timesteps)
        return row

    def _on_training_end(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class Checkpoint(BaseCallback):
    """Every ``freq`` env steps call ``save()`` (which writes atomically: a kill leaves the last one intact)."""

    def __init__(self, freq: int, save: Callable[[], None]) -> None:
        super().__init__()
        self.freq, self.save = freq, save
        self._next: int | None = None

    def _on_training_start(self) -> None:
        if self.freq > 0:
            self._next = (self.num_timesteps // self.freq + 1) * self.freq

    def _on_step(self) -> bool:
        if self._next is not None and self.num_timesteps >= self._next:
            self._next += self.freq
            self.save()
        return True


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


def save_agent_atomically(agent: Any, path: str | os.PathLike) -> None:
    """``agent.save`` into a temp file, then rename (SB3 writes zips in place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.zip")
    agent.save(str(tmp))
    os.replace(tmp, path)
