"""Training one run: a (task, algo, seed, reward source) unit that an experiment schedules, resumes or reuses.
Its files belong to its :class:`~rlrm.rl.folder.RunFolder`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv

from rlrm import atomic
from rlrm.errors import ConfigError
from rlrm.rl.callbacks import CallFn, LearnedReturnLogger, TrueRewardEval, WandbOutput, every
from rlrm.rl.envs import make_vec_env, sync_normalization
from rlrm.rl.evaluation import evaluate_agent
from rlrm.rl.folder import RunFolder, RunSpec, learned_reward, normalize_options
from rlrm.rl.hyperparams import ALGOS, build_kwargs
from rlrm.tracking import Tracker, WandbOptions, WandbTracker, init_wandb


class RunInterrupted(Exception):
    """Raised when a run is stopped by Ctrl-C/SIGTERM (after its checkpoint is saved)."""


def train_run(spec: RunSpec, output_dir: str | os.PathLike, *, resume: bool = False,
              wandb: WandbOptions | None = None, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one run and evaluate it on the true reward.

    :param resume: continue the newest folder of the same run from its checkpoint; a finished one is
        reused as it is (its ``result.json`` returned).
    :return: the run's result row (also written to ``result.json``).
    """
    output_dir = Path(output_dir)
    folder = RunFolder.find(output_dir, spec) if resume else None
    if folder is not None and (done := folder.result()) is not None:
        return done
    resumed = folder is not None and folder.has_checkpoint()
    if folder is None:
        folder = RunFolder.create(output_dir, spec, command)
    tracker = init_wandb(wandb, job_type="train_agent", directory=folder.path,
                         name=f"{spec.task.name}-{spec.agent.algo}-s{spec.seed}-{spec.reward}",
                         config={"run_dir": str(folder.path), **spec.to_dict()})
    try:
        return _train(spec, folder, resumed, tracker, progress)
    finally:
        tracker.finish()


def _new_agent(spec: RunSpec, venv: VecEnv) -> BaseAlgorithm:
    n_actions = int(np.prod(venv.action_space.shape)) if venv.action_space.shape else None
    try:
        return ALGOS[spec.agent.algo](spec.agent.policy, venv, seed=spec.seed, device="cpu", verbose=0,
                                      **build_kwargs(spec.agent, n_actions))
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"{spec.agent.algo} hyperparameters for {spec.task.name}: "
                          f"{str(err).splitlines()[0]}") from None


def _attach_logger(agent: BaseAlgorithm, folder: RunFolder, tracker: Tracker) -> None:
    logger = configure(str(folder.path), ["csv"])
    if isinstance(tracker, WandbTracker):
        tracker.run.define_metric("global_step")
        tracker.run.define_metric("*", step_metric="global_step")
        logger.output_formats.append(WandbOutput(tracker.run))
    agent.set_logger(logger)


def _train(spec: RunSpec, folder: RunFolder, resumed: bool, tracker: Tracker, progress: bool) -> dict[str, Any]:
    learned = learned_reward(spec)
    normalize = normalize_options(spec.agent)
    shaping = spec.shaping if spec.reward == "learned" else None
    venv = make_vec_env(spec.task, spec.agent.n_envs, spec.seed, learned if spec.reward == "learned" else None,
                        normalize, folder.monitor_dir, shaping=shaping)

    def make_eval_env() -> VecEnv:
        # Evaluation always reads the TRUE return (Monitor); the learned return is reported beside it.
        return make_vec_env(spec.task, min(spec.eval_episodes, 5), spec.eval_seed, learned, normalize,
                            training=False, shaping=shaping)

    try:
        agent = folder.load_checkpoint(venv, spec.agent.algo) if resumed else _new_agent(spec, venv)
        _attach_logger(agent, folder, tracker)
        start_steps = agent.num_timesteps if resumed else 0
        evaluator = TrueRewardEval(make_eval_env, spec.eval_episodes, folder.write_evaluations,
                                   sync_normalization, folder.evaluations() if resumed else [])
        callbacks = [LearnedReturnLogger(),
                     every(spec.eval_freq, evaluator, start_steps) if spec.eval_freq > 0 else None,
                     every(spec.checkpoint_freq or max(spec.agent.n_timesteps // 10, 1000),
                           CallFn(lambda: folder.save_checkpoint(agent, venv)), start_steps)]
        remaining = spec.agent.n_timesteps - start_steps
        start = time.perf_counter()
        try:
            if remaining > 0:
                agent.learn(remaining, callback=[c for c in callbacks if c is not None],
                            reset_num_timesteps=not resumed, progress_bar=progress, tb_log_name=folder.path.name)
        except KeyboardInterrupt:
            folder.save_checkpoint(agent, venv)
            raise RunInterrupted(f"{spec.name}: interrupted at {agent.num_timesteps} steps; checkpoint saved in "
                                 f"{folder.checkpoint_dir} (continue with --resume)") from None
        finally:
            evaluator.close()
        seconds = time.perf_counter() - start
        folder.save_final(agent, venv)
        eval_env = make_eval_env()
        sync_normalization(venv, eval_env)
        final = evaluate_agent(agent, eval_env, spec.eval_episodes).summary()
        eval_env.close()
    finally:
        venv.close()
    result = {"task": spec.task.name, "algo": spec.agent.algo, "seed": spec.seed, "reward": spec.reward,
              "timesteps": int(agent.num_timesteps), "true_mean": final["true_mean"], "true_std": final["true_std"],
              "learned_mean": final["learned_mean"], "episodes": final["episodes"],
              "train_seconds": round(seconds, 2), "run_dir": str(folder.path), "key": spec.key()}
    folder.write_result(result)
    _log_final(spec, folder, tracker, final)
    return result


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
