"""Goal-conditioned action search on the evolver: which actions bring the evolved state closest to a goal state.

The context is read once into the evolver's recurrent cache; every candidate action sequence then rolls forward from
copies of that cache in one batched recurrent pass per iteration (`num_samples` candidates per context, no
re-encoding), and is scored by the mean squared distance of its last predicted state to the goal, both projected by
`goal_projection` (the pipeline passes the encoder's frame subspace), plus `action_cost` times the sequence's mean
squared action. Three searches share that objective:

- `"cem"`, the cross-entropy method (Rubinstein 1999; how V-JEPA 2-AC and DINO-WM plan): Gaussian candidates, refit
  to the `top_k` best each iteration.
- `"mppi"`, model-predictive path integral (Williams et al. 2017): the mean moves to the candidates' average weighted
  by `exp(-objective / temperature)`, the temperature in units of the iteration's objective spread.
- `"gradient"`: `num_samples` sequences descend the objective's gradient through the differentiable recurrent rollout
  with Adam, `num_iterations` steps (each a forward and a backward pass, about three CEM iterations' compute).

Candidates are clamped to `action_bounds`. The best sequence found in any iteration is returned with its predicted
states, so `objective_per_iteration` never increases.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .input_validation import (
    MAX_ROLLOUT_STEPS,
    check_count,
    check_finite,
    check_generator,
    check_shape,
    input_device,
)

PLANNING_METHODS = ("cem", "mppi", "gradient")
MAX_CANDIDATES = 65_536
"""The most candidate sequences per context and iteration (`num_samples`)."""
MAX_ITERATIONS = 10_000


@dataclass
class VeltrixPlanOutput(ModelOutput):
    """
    The result of `VeltrixEvolverModel.plan` (and, with `frames`, of `VeltrixPipeline.plan`).

    Args:
        actions (`torch.Tensor` of shape `(B, horizon, A)`): the best action sequence per context; `actions[:, k]` is
            applied at future step k (the first at the last context step).
        units (`torch.Tensor` of shape `(B, horizon, U, D)`): the states it is predicted to reach.
        timestamps (`torch.Tensor` of shape `(B, horizon)`): their times in seconds.
        objective (`torch.Tensor` of shape `(B,)`): its objective (goal distance plus action cost).
        objective_per_iteration (`torch.Tensor` of shape `(B, num_iterations)`): the best objective found up to and
            including each iteration (non-increasing).
        frames (`torch.Tensor` or list, *optional*): `units` rendered by the pipeline's decoder.
    """

    actions: torch.Tensor | None = None
    units: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None
    objective: torch.Tensor | None = None
    objective_per_iteration: torch.Tensor | None = None
    frames: torch.Tensor | list | None = None


@dataclass(frozen=True)
class VeltrixPlannerSettings:
    """The search's hyper-parameters (checked by `check`).

    method: `"cem"`, `"mppi"` or `"gradient"`.
    num_samples: candidate sequences per context and iteration.
    num_iterations: refits (CEM, MPPI) or gradient steps.
    top_k: CEM's elite count, in [1, num_samples] (unused by the others).
    initial_std: the candidates' initial standard deviation per action component, in units of the half-width of
        `action_bounds` when bounds are given, else absolute.
    action_cost: weight of the mean squared action in the objective (>= 0).
    temperature: MPPI's temperature, in units of the standard deviation of the iteration's objectives (> 0).
    learning_rate: the gradient search's Adam step, in units of the bounds' half-width when bounds are given.
    min_std: the smallest standard deviation a CEM refit keeps, relative to `initial_std` (stops early collapse).
    """

    method: str = "cem"
    num_samples: int = 300
    num_iterations: int = 3
    top_k: int = 30
    initial_std: float = 0.5
    action_cost: float = 0.0
    temperature: float = 0.5
    learning_rate: float = 0.1
    min_std: float = 0.05

    def check(self) -> None:
        if self.method not in PLANNING_METHODS:
            raise ValueError(f"`method` must be one of {PLANNING_METHODS}, got {self.method!r}.")
        check_count("num_samples", self.num_samples, MAX_CANDIDATES)
        check_count("num_iterations", self.num_iterations, MAX_ITERATIONS)
        check_count("top_k", self.top_k, self.num_samples)
        for name, allow_zero in (
            ("initial_std", False),
            ("action_cost", True),
            ("temperature", False),
            ("learning_rate", False),
            ("min_std", True),
        ):
            value = getattr(self, name)
            valid = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
            valid = valid and value != float("inf") and (value >= 0 if allow_zero else value > 0)
            if not valid:
                raise ValueError(f"`{name}` must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}.")


def action_bounds_tensors(
    action_bounds: tuple | None, action_dim: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(low, high)` as tensors `(A,)` in `like`'s dtype and device: each a number or a sequence / tensor of `A`
    numbers, finite, with low <= high everywhere; None stays None."""
    if action_bounds is None:
        return None
    if not isinstance(action_bounds, (tuple, list)) or len(action_bounds) != 2:
        raise ValueError(f"`action_bounds` must be a pair (low, high), got {action_bounds!r}.")
    tensors = []
    for name, value in zip(("low", "high"), action_bounds, strict=True):
        tensor = torch.as_tensor(value, dtype=like.dtype).to(like.device)
        if tensor.ndim == 0:
            tensor = tensor.expand(action_dim)
        if tensor.shape != (action_dim,):
            raise ValueError(
                f"`action_bounds` {name} must be a number or hold A = {action_dim} numbers, got shape "
                f"{tuple(tensor.shape)}."
            )
        check_finite(f"action_bounds {name}", tensor)
        tensors.append(tensor)
    low, high = tensors
    if (low > high).any():
        raise ValueError(f"`action_bounds` must have low <= high, got low {low.tolist()} and high {high.tolist()}.")
    return low, high


class EvolverCandidates:
    """The evolver as the search's model: candidates roll out from copies of one context's recurrent cache, and
    score by the goal distance of their last state (after `goal_projection`) plus the action cost."""

    def __init__(
        self,
        evolver: torch.nn.Module,
        start_units: torch.Tensor,
        cache: object,
        time_at: Callable[[int], torch.Tensor],
        goal: torch.Tensor,
        horizon: int,
        num_samples: int,
        action_cost: float,
        goal_projection: Callable[[torch.Tensor], torch.Tensor] | None,
    ):
        self.evolver, self.horizon, self.action_cost = evolver, horizon, action_cost
        self.project = goal_projection or (lambda units: units)
        rows = torch.arange(start_units.shape[0], device=start_units.device).repeat_interleave(num_samples)
        self.start_units = start_units[rows]
        # Laid out before the rows are repeated (indexing keeps the layout): one copy of the repeated states, not two.
        self.cache = cache.in_step_layout().select(rows, evolver.config.num_units_per_step)
        self.times = [time_at(k)[rows] for k in range(horizon + 1)]
        self.goal = self.project(goal)[rows]
        self._working_cache = None

    def _start_cache(self) -> object:
        """The candidates' start cache for a rollout: itself under autograd (steps then make new states), else a
        working copy that in-place steps overwrite, its buffers made once and refilled on every later rollout."""
        if torch.is_grad_enabled():
            return self.cache
        if self._working_cache is None:
            self._working_cache = self.cache.in_step_layout()
            return self._working_cache
        return self._working_cache.copy_(self.cache)

    def rollout(self, actions: torch.Tensor) -> torch.Tensor:
        """Candidates `(B·N, H, A)` -> their predicted states `(B·N, H, U, D)`, from the shared cache (without
        gradients, every step updates a working copy of it in place)."""
        state, cache, states = self.start_units, self._start_cache(), []
        in_place = not torch.is_grad_enabled()
        for k in range(self.horizon):
            state, cache = self.evolver._step(
                state, cache, self.times[k], self.times[k + 1], actions[:, k], in_place=in_place
            )
            states.append(state)
        return torch.stack(states, dim=1)

    def __call__(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B·N, H, A)` -> objectives `(B·N,)` and predicted states `(B·N, H, U, D)`."""
        states = self.rollout(actions)
        return action_objective(self.project(states[:, -1]), self.goal, actions, self.action_cost), states


def action_objective(
    reached: torch.Tensor, goal: torch.Tensor, actions: torch.Tensor, action_cost: float
) -> torch.Tensor:
    """Mean squared distance of what the candidates reach `(N, ...)` to the goal `(N, ...)`, plus `action_cost` times
    the mean squared action of `(N, H, A)`; -> `(N,)`."""
    distance = (reached - goal).pow(2).flatten(1).mean(-1)
    if action_cost == 0:
        return distance
    return distance + action_cost * actions.pow(2).flatten(1).mean(-1)


class ActionSearch:
    """The three searches over action sequences `(B, horizon, A)`, `settings.num_samples` candidates per context,
    against any model `score_candidates(actions (B·N, H, A)) -> (objectives (B·N,), trajectories (B·N, ...))`: the
    evolver (`EvolverCandidates`) or, in the planning benchmark, the true simulator (CEM and MPPI; the gradient search
    needs a differentiable model). Candidates of context b are rows `b·N … b·N + N − 1`."""

    def __init__(
        self,
        score_candidates: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        batch_size: int,
        horizon: int,
        action_dim: int,
        settings: VeltrixPlannerSettings,
        bounds: tuple[torch.Tensor, torch.Tensor] | None,
        generator: torch.Generator | None,
        like: torch.Tensor,
        initial_actions: torch.Tensor | None = None,
    ):
        self.score_candidates, self.settings, self.bounds, self.generator = (
            score_candidates,
            settings,
            bounds,
            generator,
        )
        self.shape = (batch_size, settings.num_samples, horizon, action_dim)
        if bounds is None:
            center = like.new_zeros(action_dim)
            self.scale = torch.ones_like(center)
        else:
            center, self.scale = (bounds[0] + bounds[1]) / 2, (bounds[1] - bounds[0]) / 2
        # The search starts at `initial_actions` (B, H, A), else at the centre of the bounds (zero without bounds).
        start = center.expand(batch_size, horizon, action_dim) if initial_actions is None else initial_actions
        self.start = self.clamp(start.to(center))

    def clamp(self, actions: torch.Tensor) -> torch.Tensor:
        return actions if self.bounds is None else actions.clamp(self.bounds[0], self.bounds[1])

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        noise = torch.randn(shape, generator=self.generator, dtype=self.start.dtype, device="cpu")
        return noise.to(self.start.device)

    def run(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best actions `(B, H, A)`, their trajectories `(B, ...)`, objectives `(B,)` and the best objective after
        each iteration `(B, num_iterations)`."""
        b, n = self.shape[:2]
        best_actions = best_trajectories = None
        best = torch.full((b,), float("inf"), dtype=self.start.dtype, device=self.start.device)
        history = []
        for actions, trajectories, scores in self.iterations():
            scores = scores.view(b, n).to(best.dtype)
            value, index = scores.min(-1)
            rows = torch.arange(b, device=index.device) * n + index
            if best_actions is None:
                best_actions, best_trajectories = actions[rows], trajectories[rows]
            better = value < best
            best = torch.where(better, value, best)
            best_actions = torch.where(better.view(b, 1, 1), actions[rows], best_actions)
            mask = better.view(b, *[1] * (trajectories.dim() - 1))
            best_trajectories = torch.where(mask, trajectories[rows], best_trajectories)
            history.append(best)
        return best_actions, best_trajectories, best, torch.stack(history, dim=1)

    def iterations(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yields each iteration's candidates `(B·N, H, A)`, trajectories and objectives `(B·N,)` (detached)."""
        if self.settings.method == "gradient":
            yield from self._gradient_iterations()
        else:
            yield from self._sampling_iterations()

    def _sampling_iterations(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        settings = self.settings
        b, n, h, a = self.shape
        mean = self.start.clone()
        std = (settings.initial_std * self.scale).expand(b, h, a).clone()
        floor = settings.min_std * settings.initial_std * self.scale
        for _ in range(settings.num_iterations):
            candidates = mean[:, None] + std[:, None] * self.noise((b, n, h, a))
            candidates[:, 0] = mean  # the current mean competes too
            candidates = self.clamp(candidates).flatten(0, 1)
            scores, trajectories = self.score_candidates(candidates)
            yield candidates, trajectories, scores
            grouped, per_context = candidates.view(b, n, h, a), scores.view(b, n).to(candidates.dtype)
            if settings.method == "cem":
                elite = per_context.topk(settings.top_k, dim=-1, largest=False).indices
                elites = grouped.gather(1, elite[:, :, None, None].expand(-1, -1, h, a))
                mean, std = elites.mean(1), elites.std(1, unbiased=False).maximum(floor)
            else:
                spread = per_context.std(-1, keepdim=True).clamp_min(torch.finfo(per_context.dtype).tiny)
                excess = per_context - per_context.min(-1, keepdim=True).values
                weights = torch.softmax(-excess / spread / settings.temperature, dim=-1)
                mean = (weights[:, :, None, None] * grouped).sum(1)

    def _gradient_iterations(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        settings = self.settings
        b, n, h, a = self.shape
        start = self.start.repeat_interleave(n, dim=0) + settings.initial_std * self.scale * self.noise((b * n, h, a))
        start[::n] = self.start  # one sequence per context starts at the search's start
        actions = self.clamp(start).requires_grad_(True)
        optimizer = torch.optim.Adam([actions], lr=settings.learning_rate * float(self.scale.mean()))
        with torch.enable_grad():
            for _ in range(settings.num_iterations):
                scores, trajectories = self.score_candidates(actions)
                yield actions.detach().clone(), trajectories.detach(), scores.detach()
                (actions.grad,) = torch.autograd.grad(scores.sum(), actions)
                optimizer.step()
                with torch.no_grad():
                    actions.copy_(self.clamp(actions))


def check_plan_inputs(
    evolver: torch.nn.Module,
    context: torch.Tensor,
    goal: torch.Tensor,
    horizon: int,
    context_actions: torch.Tensor | None,
    timestamps: torch.Tensor | None,
    generator: torch.Generator | None,
    goal_shape: tuple[int, ...] | None = None,
) -> None:
    """Checks `plan`'s tensors: the context `(B, T, U, D)` (via the evolver's checks), the goal `(B, U, D)` (or
    `goal_shape`), the horizon, `context_actions (B, T - 1, A)`, `timestamps (B, T + horizon)` and the generator."""
    config = evolver.config
    if config.action_dim == 0:
        raise ValueError(
            "`plan` searches over actions, but this evolver takes none (`action_dim=0`, trained without actions)."
        )
    evolver._check_units("context", context, steps=True)
    b, t = context.shape[:2]
    check_count("horizon", horizon, MAX_ROLLOUT_STEPS)
    expected = goal_shape or (b, config.num_units_per_step, config.unit_dim)
    check_shape("goal", goal, expected, dtype=evolver.dtype, device=input_device(evolver))
    check_finite("goal", goal)
    if context_actions is not None:
        if t == 1:
            raise ValueError(
                f"`context_actions` must be None for a one-step context (no action precedes it), got shape "
                f"{tuple(context_actions.shape)}."
            )
        evolver._check_actions("context_actions", context_actions, (b, t - 1))
    if timestamps is not None:
        evolver._check_timestamps("timestamps", timestamps, (b, t + horizon), increasing=True)
    check_generator("generator", generator, None)
