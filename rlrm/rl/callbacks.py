"""SB3 callbacks and logger outputs: learned-return logging, true-reward evaluation, checkpoints, stopping on
request, progress.csv (appending), W&B."""

from __future__ import annotations

import csv
import io
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EveryNTimesteps
from stable_baselines3.common.logger import KVWriter, filter_excluded_keys
from stable_baselines3.common.vec_env import VecEnv

from rlrm import atomic
from rlrm.rl.evaluation import evaluate_agent
from rlrm.tracking import Tracker


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
    :param history: the evaluations of the run so far (a resumed run); the best true return is counted from them.
    :param save_best: called as ``save_best(model, training_env, row)`` after an evaluation whose true mean is
        higher than every earlier one (the first evaluation included; ties keep the earlier one), so the run keeps
        the agent of its true peak (:func:`rlrm.rl.hacking.save_true_peak`).
    """

    def __init__(self, make_eval_env: Callable[[], VecEnv], n_episodes: int,
                 save: Callable[[list[dict[str, Any]]], None], sync: Callable[[VecEnv, VecEnv], None],
                 history: list[dict[str, Any]] | None = None,
                 save_best: Callable[[BaseAlgorithm, VecEnv, dict[str, Any]], None] | None = None) -> None:
        super().__init__()
        self.make_eval_env, self.n_episodes, self.save, self.sync = make_eval_env, n_episodes, save, sync
        self.history: list[dict[str, Any]] = list(history or [])
        self.save_best = save_best
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
        best = self.best_true_mean()
        self.history.append(row)
        self.save(self.history)
        if self.save_best is not None and np.isfinite(res["true_mean"]) and (best is None or res["true_mean"] > best):
            self.save_best(self.model, self.training_env, row)
        self.logger.record("eval/true_return_mean", res["true_mean"])
        self.logger.record("eval/true_return_std", res["true_std"])
        if not np.isnan(res["learned_mean"]):
            self.logger.record("eval/learned_return_mean", res["learned_mean"])
        self.logger.record("eval/ep_length_mean", res["length_mean"])
        self.logger.dump(self.num_timesteps)
        return row

    def best_true_mean(self) -> float | None:
        """The highest true mean of the evaluations so far (``None`` before the first; JSON nulls skipped)."""
        means = [float(r["true_mean"]) for r in self.history if isinstance(r.get("true_mean"), (int, float))
                 and np.isfinite(r["true_mean"])]
        return max(means) if means else None

    def close(self) -> None:
        """Close the evaluation env (if one was made)."""
        if self._env is not None:
            self._env.close()
            self._env = None


class AtUpdate(BaseCallback):
    """Calls ``fn()`` every ``n_steps`` env steps (on the grid ``k * n_steps``, also for a run resumed at ``start``)
    at the first rollout start on or after each grid point: there the agent has learned from every step it
    counts and stored every transition, so a checkpoint taken there resumes exactly."""

    def __init__(self, n_steps: int, fn: Callable[[], object], start: int = 0) -> None:
        super().__init__()
        self.n_steps, self.fn = n_steps, fn
        self.next = (start // n_steps + 1) * n_steps

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next:
            self.fn()
            self.next = (self.num_timesteps // self.n_steps + 1) * self.n_steps

    def _on_step(self) -> bool:
        return True


class StopOnRequest(BaseCallback):
    """Ends ``learn`` at the next env step once ``requested()`` is true (set from a signal handler): the agent
    stops between steps, in a state that can be checkpointed and resumed."""

    def __init__(self, requested: Callable[[], bool]) -> None:
        super().__init__()
        self.requested = requested

    def _on_step(self) -> bool:
        return not self.requested()


def every(n_steps: int, callback: BaseCallback, start: int = 0) -> EveryNTimesteps:
    """SB3's ``EveryNTimesteps`` on the grid ``k * n_steps``, also when a resumed run starts at ``start``."""
    scheduled = EveryNTimesteps(n_steps, callback)
    scheduled.last_time_trigger = (start // n_steps) * n_steps if n_steps > 0 else 0
    return scheduled


class WandbOutput(KVWriter):
    """An SB3 logger output that sends every dumped key/value straight to W&B (no tensorboard sync), through the
    tracker, which never lets a W&B failure stop training."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

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
            self.tracker.log(metrics)

    def close(self) -> None:
        pass


class ProgressCSV(KVWriter):
    """SB3's CSV output, appending to an existing file (a resumed run continues its ``progress.csv``).

    One header, the union of all keys: a row with a new key rewrites the file atomically with the wider header
    (SB3's CSV output rewrites it in place); any other row is appended in one write. A torn last line (a process
    killed mid-write) is dropped when the file is opened.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.keys: list[str] = []
        if self.path.exists():
            text = self.path.read_text(errors="replace")
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]
                atomic.write_bytes(self.path, text.encode())
            rows = list(csv.reader(io.StringIO(text)))
            self.keys = rows[0] if rows else []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        values = filter_excluded_keys(key_values, key_excluded, "csv")
        new = [k for k in values if k not in self.keys]
        if new:
            self._widen(new)
        with open(self.path, "a", newline="") as f:
            f.write(_csv_line([_cell(values.get(k)) for k in self.keys]))

    def _widen(self, new: list[str]) -> None:
        rows = list(csv.reader(io.StringIO(self.path.read_text(errors="replace")))) if self.path.exists() else []
        self.keys += new
        lines = [_csv_line(self.keys)] + [_csv_line(r + [""] * (len(self.keys) - len(r))) for r in rows[1:]]
        atomic.write_bytes(self.path, "".join(lines).encode())

    def close(self) -> None:
        pass


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()
