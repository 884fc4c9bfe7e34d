"""How the losses of several tasks make one update of the shared weights (``--task-weighting``).

The default is ``uncertainty``: on the three task families it gave the best held-out r2 of the training tasks, by
a small margin (benchmarks/RESULTS.md, "Label efficiency"); PCGrad was no better and 1.1-1.7x slower.

- ``equal``: the sum of the per-task losses, each on standardized labels (so tasks of different reward scales
  weigh alike) and weighted by its share of the batch (equal shares by default).
- ``uncertainty`` (Kendall, Gal & Cipolla 2018): learned per-task weights, ``sum_t exp(-s_t) L_t + s_t``, with
  ``s_t`` a log-variance trained with the model: a noisy or hard task lowers its own weight.
- ``pcgrad`` (Yu et al. 2020, gradient surgery): per-task gradients of the shared weights (stems and encoder);
  where two conflict (negative dot product) one is projected onto the other's normal plane before summing. Costs
  one backward pass per task.

Heads are per task and get their own task's gradient in every strategy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn

from rlrm.errors import ConfigError

TASK_WEIGHTING = ("equal", "uncertainty", "pcgrad")


class TaskWeighting:
    """Turns per-task losses into gradients (``backward``); subclasses change how."""

    name = "equal"

    def parameters(self) -> list[nn.Parameter]:
        """Extra parameters the optimizer must train (uncertainty's log-variances)."""
        return []

    def combine(self, losses: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        """The scalar loss whose gradient is the update (``weights``: each task's share of the batch)."""
        return sum(w * loss for w, loss in zip(weights, losses))  # type: ignore[return-value]

    def backward(self, losses: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        """Write the gradients of one step into ``.grad``; returns the combined loss (for logging)."""
        total = self.combine(losses, weights)
        total.backward()
        return total

    def state(self) -> dict[str, float]:
        """What to record about the weighting (e.g. the learned task weights)."""
        return {}


class UncertaintyWeighting(TaskWeighting):
    """Kendall et al. 2018: ``sum_t exp(-s_t) * L_t + s_t`` with learned ``s_t`` (one per trained task)."""

    name = "uncertainty"

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def combine(self, losses: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        # The batch shares still weigh the tasks (equal shares: equal weights); the learned factor comes on top.
        n = len(losses)
        return sum(w * n * (torch.exp(-s) * loss + s) for w, s, loss in zip(weights, self.log_vars, losses)) / n

    def state(self) -> dict[str, float]:
        return {f"weight/{t}": float(torch.exp(-s)) for t, s in zip(self.tasks, self.log_vars.detach())}


class PCGrad(TaskWeighting):
    """Yu et al. 2020: project conflicting per-task gradients of the shared weights before summing them."""

    name = "pcgrad"

    def __init__(self, shared: Sequence[nn.Parameter], seed: int = 0) -> None:
        self.shared = [p for p in shared if p.requires_grad]
        self.rng = random.Random(seed)
        self.conflicts = 0
        self.pairs = 0

    def backward(self, losses: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        total = self.combine(losses, weights)
        if len(losses) < 2 or not self.shared:
            total.backward()
            return total
        grads = []
        for w, loss in zip(weights, losses):
            g = torch.autograd.grad(w * loss, self.shared, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                                    for x, p in zip(g, self.shared)]))
        total.backward()  # heads (and anything not shared) get their plain gradients
        projected = []
        for i, g in enumerate(grads):
            g = g.clone()
            others = [j for j in range(len(grads)) if j != i]
            self.rng.shuffle(others)
            for j in others:
                dot = torch.dot(g, grads[j])
                self.pairs += 1
                if dot < 0:
                    self.conflicts += 1
                    g -= dot / grads[j].square().sum().clamp_min(1e-20) * grads[j]
            projected.append(g)
        flat = torch.stack(projected).sum(0)
        offset = 0
        for p in self.shared:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n
        return total

    def state(self) -> dict[str, float]:
        return {"pcgrad/conflict_rate": self.conflicts / self.pairs if self.pairs else 0.0}


def make_weighting(name: str, tasks: Sequence[str], shared: Sequence[nn.Parameter], seed: int = 0) -> TaskWeighting:
    """The strategy called ``name`` for the trained ``tasks``; ``shared``: the weights every task moves. One task
    is always trained on its plain loss (there is nothing to balance)."""
    if name not in TASK_WEIGHTING:
        raise ConfigError(f"task_weighting {name!r}: expected one of {', '.join(TASK_WEIGHTING)}")
    if name == "equal" or len(tasks) < 2:
        return TaskWeighting()
    if name == "uncertainty":
        return UncertaintyWeighting(tasks)
    if name == "pcgrad":
        return PCGrad(shared, seed)
    raise ConfigError(f"task_weighting {name!r}: expected one of {', '.join(TASK_WEIGHTING)}")
