"""Segments as clips a person can watch: replay each stored episode from its reset seed and actions in an env that
renders ``rgb_array`` frames, check the replay reproduces the stored observations, and write each segment as a
small looping animated GIF (Pillow).

A segment of ``length`` steps starting at ``start`` shows ``length + 1`` frames: the state before each of its
steps and the state after its last one.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from PIL import Image

from rlrm import atomic
from rlrm import spaces as sp
from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import SegmentPairs
from rlrm.data.rollout import replay_episode
from rlrm.errors import DatasetError, TaskError
from rlrm.tasks import Task, ensure_registered

#: replayed float observations must match the stored ones this closely (float32 round-off, not a different state)
RTOL, ATOL = 1e-5, 1e-6
HOLD_LAST = 3  # the last frame stays this many frame times, so a viewer sees where the loop restarts


class _FrameRecorder(gym.Wrapper):
    """Keeps the (downscaled) rendered frame after ``reset`` (index 0) and after each step (index t) for the
    indices in ``keep``."""

    def __init__(self, env: gym.Env, keep: set[int], width: int, task: str) -> None:
        super().__init__(env)
        self.keep, self.width, self.task = keep, width, task
        self.frames: dict[int, Image.Image] = {}
        self.t = 0

    def reset(self, **kwargs: Any) -> Any:
        out = self.env.reset(**kwargs)
        self.t, self.frames = 0, {}
        self._record()
        return out

    def step(self, action: Any) -> Any:
        out = self.env.step(action)
        self.t += 1
        self._record()
        return out

    def _record(self) -> None:
        if self.t not in self.keep:
            return
        try:
            frame = self.env.render()
        except Exception as err:  # a renderer's own failure (no display library, GL context...)
            raise TaskError(f"task {self.task!r}: the env cannot render rgb_array frames: {type(err).__name__}: "
                            f"{err}") from None
        frame = np.asarray(frame) if frame is not None else None
        if frame is None or frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.dtype != np.uint8:
            found = "None" if frame is None else f"{frame.dtype} {frame.shape}"
            raise TaskError(f"task {self.task!r}: env.render() returned {found}; expected an rgb_array frame "
                            "(uint8, height x width x 3)")
        image = Image.fromarray(frame[..., :3])
        if image.width > self.width:
            image = image.resize((self.width, max(1, round(image.height * self.width / image.width))),
                                 Image.Resampling.BILINEAR)
        self.frames[self.t] = image


def render_env(ds: TransitionDataset) -> gym.Env:
    """The dataset's task env made with ``render_mode="rgb_array"``.

    :raises TaskError: the env cannot be made that way or does not list ``rgb_array`` among its render modes
        (names the task and Gymnasium's reason).
    """
    task = ds.task
    modes = _declared_render_modes(task)
    if modes is not None and "rgb_array" not in modes:  # before make: Gymnasium would only warn, or fail later
        raise TaskError(f"task {task.name!r} ({task.env_id}) cannot render rgb_array frames: Gymnasium lists its "
                        f"render modes as {modes}; expected an env that renders 'rgb_array'")
    # pygame-drawn envs initialise SDL audio too; without a sound device it prints errors nobody can act on
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    try:
        env = task.make_env(render_mode="rgb_array")
    except Exception as err:  # Gymnasium's reason: a missing renderer dependency, an unknown keyword...
        raise TaskError(f"task {task.name!r} ({task.env_id}): cannot make the env with render_mode='rgb_array': "
                        f"{type(err).__name__}: {err}") from None
    modes = list(env.metadata.get("render_modes") or [])
    if "rgb_array" not in modes:
        env.close()
        raise TaskError(f"task {task.name!r} ({task.env_id}) cannot render rgb_array frames: Gymnasium lists its "
                        f"render modes as {modes}; expected an env that renders 'rgb_array'")
    return env


def _declared_render_modes(task: Task) -> list[str] | None:
    """The render modes the env's class declares in its metadata (``None``: unknown until it is made)."""
    try:
        ensure_registered(task.env_id)
        creator = gym.spec(task.env_id).entry_point
        creator = load_env_creator(creator) if isinstance(creator, str) else creator
        return list((getattr(creator, "metadata", None) or {}).get("render_modes") or [])
    except Exception:  # an id make_env resolves another way: it reports its own reason
        return None


def check_replay(ds: TransitionDataset, episode: int, obs: sp.Batch, next_obs: sp.Batch) -> None:
    """Check a replay of ``episode`` reproduced its stored observations.

    :raises DatasetError: the first step where they differ (the env is not deterministic given seed + actions).
    """
    rows = np.flatnonzero(ds.episode == episode)
    for prefix, replayed, stored in (("obs", obs, sp.select(ds.obs, rows)),
                                     ("next_obs", next_obs, sp.select(ds.next_obs, rows))):
        mine = sp.split(ds.obs_space, replayed, prefix)
        for name, arr in sp.split(ds.obs_space, stored, prefix).items():
            new = mine[name]
            flat_old, flat_new = arr.reshape(len(rows), -1), new.reshape(len(rows), -1)
            if arr.dtype.kind == "f":
                same = np.isclose(flat_new, flat_old, rtol=RTOL, atol=ATOL).all(axis=1)
            else:
                same = (flat_new == flat_old).all(axis=1)
            if not same.all():
                k = int(np.argmin(same))
                raise DatasetError(
                    f"task {ds.task.name!r}: replaying episode {episode} from its seed "
                    f"{int(ds.episode_seed[rows[0]])} and stored actions does not reproduce the stored observations "
                    f"(field {name!r} differs at step {int(ds.step[rows[k]])}): the env {ds.task.env_id} is not "
                    "deterministic given its reset seed and actions, so its segments cannot be rendered")


def write_clips(ds: TransitionDataset, pairs: SegmentPairs, folder: str | os.PathLike, width: int = 160,
                fps: float = 10.0) -> list[tuple[str, str]]:
    """Render both sides of every pair as a looping GIF in ``folder`` (``pair0007_left.gif``, ``..._right.gif``).

    Each episode is replayed once (in ``ds`` order) and its replay checked against the stored observations.

    :param width: frames wider than this are downscaled to it (height in proportion).
    :param fps: frames per second of the clips.
    :return: the clip file names (relative to ``folder``) of each pair, ``(left, right)``.
    :raises DatasetError: no episode seeds, an episode that misses steps, or a replay that differs from the data.
    :raises TaskError: the env cannot render ``rgb_array`` frames.
    """
    if ds.episode_seed is None:
        raise DatasetError(f"task {ds.task.name!r}: the dataset has no episode seeds (collected before rlrm recorded "
                           "episode seeds): re-collect it with python -m rlrm.collect to render its segments")
    if width < 16 or not 0 < fps <= 100:
        raise DatasetError(f"write_clips: width {width}, fps {fps}; expected width >= 16 and 0 < fps <= 100")
    pairs.first_rows(ds)  # every segment inside one episode of ds
    folder = Path(folder)
    names = [(f"pair{i:04d}_left.gif", f"pair{i:04d}_right.gif") for i in range(len(pairs))]
    wanted: dict[int, list[tuple[int, int, str]]] = defaultdict(list)  # episode -> (start, length, file)
    for i in range(len(pairs)):
        length = int(pairs.length[i])
        wanted[int(pairs.left_episode[i])].append((int(pairs.left_start[i]), length, names[i][0]))
        wanted[int(pairs.right_episode[i])].append((int(pairs.right_start[i]), length, names[i][1]))
    env = render_env(ds)
    try:
        for episode in sorted(wanted):
            keep = {start + k for start, length, _ in wanted[episode] for k in range(length + 1)}
            frames = _replay_frames(ds, episode, env, keep, width)
            for start, length, name in wanted[episode]:
                atomic.write_bytes(folder / name, gif_bytes([frames[start + k] for k in range(length + 1)], fps))
    finally:
        env.close()
    return names


def _replay_frames(ds: TransitionDataset, episode: int, env: gym.Env, keep: set[int],
                   width: int) -> dict[int, Image.Image]:
    rows = np.flatnonzero(ds.episode == episode)
    if not np.array_equal(ds.step[rows], np.arange(len(rows))):
        raise DatasetError(f"task {ds.task.name!r}: episode {episode} misses steps in the dataset (steps "
                           f"{int(ds.step[rows[0]])}..{int(ds.step[rows[-1]])} in {len(rows)} rows); expected every "
                           "step from 0 to replay it")
    recorder = _FrameRecorder(env, keep, width, ds.task.name)
    obs, next_obs = replay_episode(ds, episode, recorder)
    check_replay(ds, episode, obs, next_obs)
    return recorder.frames


def gif_bytes(frames: list[Image.Image], fps: float) -> bytes:
    """An animated GIF that loops forever, each frame ``1/fps`` seconds (the last held a little longer)."""
    ms = max(20, round(1000 / fps))
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], loop=0, optimize=False,
                   duration=[ms] * (len(frames) - 1) + [ms * HOLD_LAST], disposal=1)
    return buf.getvalue()
