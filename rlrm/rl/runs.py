"""Training one run: a (task, algo, seed, reward source) unit that an experiment schedules, resumes or reuses.
Its files belong to its :class:`~rlrm.rl.folder.RunFolder`, which this module locks while it trains in it.

Stopping: ``train_run(stop=...)`` polls ``stop()`` at every env step. Once it is true the run stops at the next
step, saves its checkpoint and raises :class:`RunInterrupted` (resumable). A run whose training is complete
finishes its final save and evaluation first: its result is then written, and the stop applies to the runs
after it. A ``KeyboardInterrupt`` stops at once; the last checkpoint stays as it was (checkpoints are replaced
whole), and :class:`RunInterrupted` says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from rlrm import atomic
from rlrm.errors import ConfigError
from rlrm.reward_fn import RewardFn
from rlrm.rl.callbacks import (
    AtUpdate,
    LearnedReturnLogger,
    ProgressCSV,
    StopOnRequest,
    TrueRewardEval,
    WandbOutput,
    every,
)
from rlrm.rl.envs import make_vec_env, sync_normalization
from rlrm.rl.evaluation import evaluate_agent
from rlrm.rl.folder import RunFolder, RunSpec, learned_reward, normalize_options
from rlrm.rl.hacking import save_true_peak, write_run_report
from rlrm.rl.hyperparams import ALGOS, build_kwargs
from rlrm.rl.online import FeedbackLoop, FeedbackState, RecordingReward, needs_true_rewards, open_feedback
from rlrm.rl.relabel import keep_true_rewards
from rlrm.tracking import NullTracker, Tracker, WandbOptions, WandbTracker, init_wandb


class RunInterrupted(Exception):
    """A run stopped before its end. ``resumable``: resuming continues it (from its checkpoint, or from the start
    when nothing was trained yet); otherwise it must be started over."""

    def __init__(self, message: str, resumable: bool = True) -> None:
        super().__init__(message)
        self.resumable = resumable


def _never() -> bool:
    return False


def train_run(spec: RunSpec, output_dir: str | os.PathLike, *, resume: bool = False,
              wandb: WandbOptions | None = None, progress: bool = True, command: str | None = None,
              stop: Callable[[], bool] = _never, callbacks: Sequence[BaseCallback] = ()) -> dict[str, Any]:
    """Train (or resume, or reuse) one run and evaluate it on the true reward.

    :param resume: continue the newest folder of the same run from its checkpoint; a finished one is
        reused as it is (its ``result.json`` returned).
    :param stop: polled at every env step; true asks the run to stop resumably (see the module docstring).
    :param callbacks: extra SB3 callbacks for the agent's training (e.g. a grid worker's progress report).
    :return: the run's result row (also written to ``result.json``).
    :raise RunInterrupted: when stopped before its end.
    """
    learned = learned_reward(spec)  # a model that does not load stops the run before its folder exists
    folder = RunFolder.find(Path(output_dir), spec) if resume else None
    if folder is not None and (done := folder.result()) is not None:
        return done
    folder = folder.lock() if folder is not None else RunFolder.create(Path(output_dir), spec, command)
    try:
        if (done := folder.result()) is not None:  # finished by another process since `find`
            return done
        start = folder.resume_point()
        feedback = None
        if spec.feedback is not None:  # the loop's starting model, or where it stands (a resumed run)
            feedback = open_feedback(spec, folder, folder.checkpoint_state() if start is not None else None, progress)
            learned = feedback.model.reward_fn(spec.task.name)
        return _train(spec, folder, _Setup(learned, start, progress, stop, wandb, feedback, list(callbacks)))
    finally:
        folder.unlock()


@dataclass
class _Setup:
    """What a run is started with: its learned reward, where it resumes (``None``: from scratch), and how."""

    learned: RewardFn | None
    start: int | None
    progress: bool
    stop: Callable[[], bool]
    wandb: WandbOptions | None
    feedback: FeedbackState | None = None
    extra: list[BaseCallback] = field(default_factory=list)


@dataclass
class _Session:
    """A run's live objects: its env, agent, callbacks and tracker."""

    venv: VecEnv
    agent: BaseAlgorithm
    evaluator: TrueRewardEval
    make_eval_env: Callable[[], VecEnv]
    callbacks: list[BaseCallback] = field(default_factory=list)
    tracker: Tracker = field(default_factory=NullTracker)
    feedback: FeedbackLoop | None = None

    def close(self) -> None:
        self.evaluator.close()
        self.venv.close()
        self.tracker.finish()


def _tracker(spec: RunSpec, folder: RunFolder, wandb: WandbOptions | None) -> Tracker:
    """The run's W&B tracker: the same W&B run as before when the folder has one (a resumed run)."""
    run_id = folder.wandb_run_id()
    tracker = init_wandb(wandb, job_type="train_agent", directory=folder.path, run_id=run_id,
                         name=f"{spec.task.name}-{spec.agent.algo}-s{spec.seed}-{spec.reward}",
                         config={"run_dir": str(folder.path), **spec.to_dict()})
    if tracker.run_id and tracker.run_id != run_id:
        folder.write_wandb_run_id(tracker.run_id)
    return tracker


def _train(spec: RunSpec, folder: RunFolder, setup: _Setup) -> dict[str, Any]:
    """Set up (nothing logged until the agent is there), learn, save and evaluate, write the result."""
    try:
        session = _start(spec, folder, setup)
        try:
            session.tracker = _tracker(spec, folder, setup.wandb)
            session.agent.set_logger(_logger(folder, session.tracker))
            seconds = _learn(spec, folder, session, setup)
            final = _final_evaluation(spec, folder, session)
            result = {"task": spec.task.name, "algo": spec.agent.algo, "seed": spec.seed, "reward": spec.reward,
                      "timesteps": int(session.agent.num_timesteps), "true_mean": final["true_mean"],
                      "true_std": final["true_std"], "learned_mean": final["learned_mean"],
                      "episodes": final["episodes"], "train_seconds": round(seconds, 2), "run_dir": str(folder.path),
                      "key": spec.key()}
            if session.feedback is not None:
                result["feedback"] = session.feedback.state.summary()
            if spec.reward == "learned":  # proxy vs true: <run>/reward_hacking.json + proxy_vs_true.png
                result["reward_hacking"] = write_run_report(
                    folder, {"timesteps": int(session.agent.num_timesteps), **final})
            folder.write_result(result)
            _log_final(spec, folder, session.tracker, final)
            if "reward_hacking" in result:
                session.tracker.summary({f"reward_hacking/{k}": v for k, v in result["reward_hacking"].items()
                                         if isinstance(v, (bool, int, float))})
                if (figure := folder.path / "proxy_vs_true.png").is_file():
                    session.tracker.image("reward_hacking/proxy_vs_true", figure)
        finally:
            session.close()
    except KeyboardInterrupt:
        if folder.has_checkpoint():
            raise RunInterrupted(f"{spec.name}: stopped at once; {folder.path} keeps its last checkpoint") from None
        raise RunInterrupted(f"{spec.name}: stopped at once, before its first checkpoint ({folder.path})",
                             resumable=not folder.history()) from None
    return result


def _new_agent(spec: RunSpec, venv: VecEnv) -> BaseAlgorithm:
    n_actions = int(np.prod(venv.action_space.shape)) if venv.action_space.shape else None
    try:
        return ALGOS[spec.agent.algo](spec.agent.policy, venv, seed=spec.seed, device="cpu", verbose=0,
                                      **build_kwargs(spec.agent, n_actions))
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"{spec.agent.algo} hyperparameters for {spec.task.name}: "
                          f"{str(err).splitlines()[0]}") from None


def _start(spec: RunSpec, folder: RunFolder, setup: _Setup) -> _Session:
    """The env stack, the agent (new, or from the checkpoint) and the callbacks; if that fails, the monitor logs are
    as they were."""
    normalize = normalize_options(spec.agent)
    shaping = spec.shaping if spec.reward == "learned" else None

    def make_eval_env() -> VecEnv:
        # Evaluation always reads the TRUE return (Monitor); the learned return is reported beside it.
        return make_vec_env(spec.task, min(spec.eval_episodes, 5), spec.eval_seed, setup.learned, normalize,
                            training=False, shaping=shaping.for_evaluation() if shaping is not None else None)

    kept = folder.keep_monitor_logs()
    venv: VecEnv | None = None
    recorder = RecordingReward(setup.learned) if setup.feedback is not None and setup.learned is not None else None
    try:
        venv = make_vec_env(spec.task, spec.agent.n_envs, spec.seed,
                            (recorder or setup.learned) if spec.reward == "learned" else None, normalize,
                            folder.monitor_dir, shaping=shaping)
        resumed = setup.start is not None
        agent = folder.load_checkpoint(venv, spec.agent.algo) if resumed else _new_agent(spec, venv)
        if needs_true_rewards(spec):  # relabelling mixes the true reward back in (a checkpoint's buffer keeps it)
            keep_true_rewards(agent)
        steps = agent.num_timesteps if resumed else 0
        # evaluations after the checkpoint belong to steps that are trained again (a run killed, not stopped)
        history = [r for r in folder.evaluations() if r.get("timesteps", 0) <= steps] if resumed else []
        # the evaluator keeps the agent of the true peak in <run>/best_true/ (a reward-hacked run's best agent)
        evaluator = TrueRewardEval(make_eval_env, spec.eval_episodes, folder.write_evaluations,
                                   sync_normalization, history,
                                   save_best=lambda model, env, row: save_true_peak(folder, model, env, row))
    except BaseException:
        if venv is not None:
            venv.close()
        folder.restore_monitor_logs(kept)
        raise
    train_env = venv
    checkpoint_freq = spec.checkpoint_freq or max(spec.agent.n_timesteps // 10, 1000)
    callbacks = [StopOnRequest(setup.stop), LearnedReturnLogger(),
                 *([every(spec.eval_freq, evaluator, steps)] if spec.eval_freq > 0 else []),
                 AtUpdate(checkpoint_freq, lambda: folder.save_checkpoint(agent, train_env), steps), *setup.extra]
    loop = None
    if setup.feedback is not None and recorder is not None:
        def on_swap(fn: RewardFn) -> None:  # evaluations report the learned return of the current model
            setup.learned = fn
            evaluator.close()

        loop = FeedbackLoop(spec, setup.feedback, recorder, evaluations=lambda: evaluator.history, on_swap=on_swap,
                            checkpoint=lambda: folder.save_checkpoint(agent, train_env))
        # its rows are dumped before the learned return is recorded, the evaluation and checkpoint come after it
        callbacks.insert(1, loop)
    return _Session(train_env, agent, evaluator, make_eval_env, callbacks, feedback=loop)


def _logger(folder: RunFolder, tracker: Tracker) -> Logger:
    """SB3's logger writing ``progress.csv`` (appended to by a resumed run) and, with W&B, the W&B run."""
    outputs: list[Any] = [ProgressCSV(folder.progress_path)]
    if isinstance(tracker, WandbTracker):
        tracker.step_metric("global_step")
        outputs.append(WandbOutput(tracker))
    return Logger(str(folder.path), outputs)


def _learn(spec: RunSpec, folder: RunFolder, session: _Session, setup: _Setup) -> float:
    """Train up to ``n_timesteps``; on a stop request, checkpoint and raise :class:`RunInterrupted`.

    :return: the training time in seconds.
    """
    agent, target = session.agent, spec.agent.n_timesteps
    if setup.stop():
        raise RunInterrupted(f"{spec.name}: stopped before training")
    start = time.perf_counter()
    if agent.num_timesteps < target:
        agent.learn(target - agent.num_timesteps, callback=session.callbacks, reset_num_timesteps=setup.start is None,
                    progress_bar=setup.progress, tb_log_name=folder.path.name)
    if agent.num_timesteps < target:  # StopOnRequest ended it
        steps = _checkpoint_after_stop(folder, agent, session.venv)
        raise RunInterrupted(f"{spec.name}: stopped at {steps:,} of {target:,} steps; checkpoint saved in "
                             f"{folder.checkpoint_dir}")
    return time.perf_counter() - start


def _checkpoint_after_stop(folder: RunFolder, agent: BaseAlgorithm, venv: VecEnv) -> int:
    """Checkpoint an agent that :class:`StopOnRequest` stopped inside ``learn``; returns its step count.

    The last env step was counted but not stored, and an on-policy agent never learned from its partial
    rollout: the checkpoint counts neither, so a resumed run takes those steps again and ends where a run never
    stopped does.
    """
    if isinstance(agent, OnPolicyAlgorithm):
        agent.num_timesteps -= (agent.rollout_buffer.pos + 1) * agent.n_envs
    else:
        agent.num_timesteps -= agent.n_envs
    folder.save_checkpoint(agent, venv)
    return agent.num_timesteps


def _final_evaluation(spec: RunSpec, folder: RunFolder, session: _Session) -> dict[str, Any]:
    """Save the final agent, then evaluate it on the true reward."""
    folder.save_final(session.agent, session.venv)
    eval_env = session.make_eval_env()
    try:
        sync_normalization(session.venv, eval_env)
        return evaluate_agent(session.agent, eval_env, spec.eval_episodes).summary()
    finally:
        eval_env.close()


def _log_final(spec: RunSpec, folder: RunFolder, tracker: Tracker, final: dict[str, Any]) -> None:
    tracker.log({"final/true_return_mean": final["true_mean"], "final/true_return_std": final["true_std"],
                 **({"final/learned_return_mean": final["learned_mean"]} if not np.isnan(final["learned_mean"])
                    else {})})
    tracker.summary({f"final/{k}": v for k, v in final.items()})
    if spec.reward_model and spec.reward_model_sha256:
        tracker.artifact(spec.reward_model, name=f"reward-model-{spec.reward_model_sha256[:12]}",
                         type="reward_model", role="input")
    tracker.artifact(folder.agent_path, name=f"agent-{atomic.slug(spec.task.name)}-{spec.agent.algo}-s{spec.seed}",
                     type="agent")
