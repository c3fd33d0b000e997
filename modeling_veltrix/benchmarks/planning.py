"""The planning benchmark behind `scripts/benchmark_planning.py`: goal-conditioned planning with Veltrix on the built-in
reach task (`planning.reach`) and on Push-T (`planning.pusht`), against a random-action baseline and the same planner
with the true simulator as its model (the upper bound).

Per task: the encoder and evolver are trained (or loaded from the output folder), then `num_episodes` held-out
episodes, start and goal `gap` steps apart, are planned open loop (one plan of `gap` actions from the context, then
executed in the true simulator) with each method at the evaluation budget (`num_samples` candidates × `gap` steps ×
`num_iterations`); success is the task's criterion on the final true state. Also measured: milliseconds per planning
call of every method at the evaluation budget (timed during the evaluation) and of CEM at the timing budget
(`timing_samples` × `gap` × `timing_iterations`, the issue's 300 × 25 × 3; median of `timing_repeats` calls after a
warm-up), and the objective's landscape: on each episode, whether the sequence that
reached the goal in the data scores best under the model among perturbations of it.

CEM also runs closed loop (`planning.mpc.run_mpc`: replan every `replan_every` steps from the carried cache,
observing the true world in between; on Push-T each replan starts from the previous plan's unapplied actions).

The evaluation budget is smaller than the timing budget so that 50 episodes of both tasks with four searches fit in
the time. With `compiled_step` (the default) the evolver plans with `compile_step()`: the sampling searches' steps run
compiled (one compile per batch shape, in the first call of that shape, which the timing's warm-up call absorbs); the
gradient search, which needs autograd, steps eagerly.
"""

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..action_search import PLANNING_METHODS, ActionSearch, VeltrixPlannerSettings, action_bounds_tensors
from ..modeling_veltrix_encoder import VeltrixEncoderModel
from ..modeling_veltrix_evolver import VeltrixEvolverModel
from ..planning.mpc import run_mpc
from ..planning.pusht import (
    SUCCESS_ANGLE_THRESHOLD,
    SUCCESS_POSITION_THRESHOLD,
    PushTDataConfig,
    PushTSimulator,
    collect_pusht_episodes,
    pusht_success_batch,
    read_pusht_npz,
    sample_pusht_episodes,
    write_pusht_npz,
)
from ..planning.reach import (
    REACH_ACTION_BOUND,
    REACH_INITIAL_STD,
    ReachEnvironment,
    ReachSimulatorCandidates,
    ReachTaskConfig,
    reach_success,
    reach_world,
    sample_reach_episodes,
)
from ..training import VeltrixTrainingRecipe, build_datasets, load_or_create_models, train_stages, world_action_dim
from ..training.overrides import recipe_with_overrides
from ..training.sources import TrajectorySourceOptions, load_trajectory_source

TASKS = ("reach", "pusht")
PLANNING_STAGES = ("encoder", "evolver")  # planning reads states; the frame decoder is not needed
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUCCESS_OVER_RANDOM_TARGET = 3.0
SUCCESS_OVER_ORACLE_TARGET = 0.7
MS_PER_PLAN_TARGET = 1000.0


@dataclass(frozen=True)
class PlanningBenchmarkSettings:
    """Everything the benchmark does. `reach_bound` and the Push-T bound of 1 bound every action component (reach:
    impulses in pixels per second; Push-T: normalised agent targets); `initial_std` is relative to the bound.
    `replan_every`: closed-loop CEM replans after this many applied actions, at the evaluation budget."""

    tasks: tuple[str, ...] = TASKS
    num_episodes: int = 50
    gap: int = 25
    methods: tuple[str, ...] = PLANNING_METHODS
    num_samples: int = 64
    num_iterations: int = 3
    top_k: int = 8
    timing_samples: int = 300
    timing_iterations: int = 3
    initial_std: float = REACH_INITIAL_STD
    reach_bound: float = REACH_ACTION_BOUND
    num_perturbations: int = 16
    perturbation_scale: float = 0.3
    timing_repeats: int = 3
    replan_every: int = 5
    compiled_step: bool = True
    seed: int = 0
    reach_preset: str = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny-reach")
    reach_recipe: str = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny-reach", "recipe.json")
    pusht_preset: str = os.path.join(REPO_ROOT, "configuration", "veltrix-tiny-pusht")
    pusht_data: PushTDataConfig = field(default_factory=PushTDataConfig)
    quick: bool = False

    def check(self) -> None:
        unknown = [task for task in self.tasks if task not in TASKS]
        if not self.tasks or unknown:
            raise ValueError(f"`tasks` must be a non-empty subset of {TASKS}, got {self.tasks!r}.")
        unknown = [method for method in self.methods if method not in PLANNING_METHODS]
        if not self.methods or unknown:
            raise ValueError(f"`methods` must be a non-empty subset of {PLANNING_METHODS}, got {self.methods!r}.")
        for name in (
            "num_episodes",
            "gap",
            "num_perturbations",
            "timing_repeats",
            "timing_samples",
            "timing_iterations",
            "replan_every",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
        if not self.reach_bound > 0 or not self.perturbation_scale > 0:
            raise ValueError(
                f"`reach_bound` and `perturbation_scale` must be > 0, got {self.reach_bound} and "
                f"{self.perturbation_scale}."
            )
        if self.replan_every > self.gap:
            raise ValueError(f"`replan_every` must be at most gap={self.gap}, got {self.replan_every}.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.num_samples:
            raise ValueError(f"`top_k` must be an int in [1, num_samples={self.num_samples}], got {self.top_k!r}.")
        self.planner("cem").check()
        self.pusht_data.check()

    def planner(self, method: str, timing: bool = False) -> VeltrixPlannerSettings:
        """The search at the evaluation budget, or at the timing budget (`top_k` scaled with the candidates). The
        gradient search descends a third as many sequences: a forward and a backward pass cost about three forward
        passes, so each method spends about the same compute per plan."""
        samples, iterations = (
            (self.timing_samples, self.timing_iterations) if timing else (self.num_samples, self.num_iterations)
        )
        return VeltrixPlannerSettings(
            method=method,
            num_samples=max(1, samples // 3) if method == "gradient" else samples,
            num_iterations=iterations,
            top_k=max(
                1, min(self.top_k * samples // self.num_samples, samples // 3 if method == "gradient" else samples)
            ),
            initial_std=self.initial_std,
        )


@dataclass
class PlanningProblem:
    """One episode of a task, as the planners see it: context frames `(T, C, S, S)` in [-1, 1] with the actions
    `(T - 1, A)` that drove them, the goal frame `(C, S, S)`, the actions `(gap, A)` that reached the goal in the data,
    `start`, what the task's simulator restarts from, and where the searches start (`initial_actions (gap, A)`; None:
    the centre of the bounds)."""

    context_frames: torch.Tensor
    context_actions: torch.Tensor
    goal_frame: torch.Tensor
    true_actions: torch.Tensor
    start: object
    initial_actions: torch.Tensor | None = None


class ReachTask:
    """The built-in reach task (`planning.reach`) on the planning recipe's world."""

    name = "reach"

    def __init__(self, settings: PlanningBenchmarkSettings, recipe: VeltrixTrainingRecipe):
        self.config = ReachTaskConfig(
            num_episodes=settings.num_episodes,
            context_length=recipe.context_length,
            gap=settings.gap,
            world=tuple(sorted(recipe.world_options.items())),
        )
        self.world = reach_world(self.config)
        self.bound = settings.reach_bound
        self.radius = self.world.config.ball_radius
        self.episodes = sample_reach_episodes(self.config)

    def problems(self) -> list[PlanningProblem]:
        return [
            PlanningProblem(e.context_frames, e.context_actions, e.goal_frame, torch.from_numpy(e.true_actions), e)
            for e in self.episodes
        ]

    def outcome(self, problem: PlanningProblem, actions: torch.Tensor) -> tuple[bool, float]:
        """Whether executing `actions` reaches the goal, and ball 0's final distance to it in pixels."""
        environment = ReachEnvironment(self.world, problem.start)
        environment.step(actions)
        goal = problem.start.goal_position
        return reach_success(environment.position, goal, self.radius), float(
            np.linalg.norm(environment.position - goal)
        )

    def oracle(self, problem: PlanningProblem) -> ReachSimulatorCandidates:
        return ReachSimulatorCandidates(self.world, problem.start.start_state, problem.start.goal_position, 0.0)

    def environment_step(self, problem: PlanningProblem) -> Callable[[torch.Tensor], torch.Tensor]:
        """The true world from the episode's start, stepped by closed-loop planning (`planning.mpc.run_mpc`)."""
        return ReachEnvironment(self.world, problem.start).step

    def random_actions(self, rng: np.random.Generator) -> torch.Tensor:
        """The data's own actions: the world's sparse impulses, as the goals were reached."""
        return torch.from_numpy(self.world.sample_actions(rng, self.config.gap).astype(np.float64))

    def description(self) -> dict:
        return {
            "world": "bouncing_balls",
            "world_options": dict(self.config.world),
            "episodes": f"held-out world seed {self.config.seed}, trajectories 0 … {self.config.num_episodes - 1}",
            "success": f"ball 0 within {self.radius} px (one ball radius) of its goal position after {self.config.gap}"
            " steps",
            "action_bounds": [-self.bound, self.bound],
            "random_baseline": "the world's own sparse impulses (what reached the goals in the data)",
            "oracle": "the true simulator scoring ball 0's squared distance to the goal position",
        }


class PushTTask:
    """Push-T (`planning.pusht`): held-out trajectories of the collected data; DINO-WM's success criterion."""

    name = "pusht"

    def __init__(self, settings: PlanningBenchmarkSettings, data: dict, held_out: tuple[int, ...], context: int):
        self.data, self.gap, self.context = data, settings.gap, context
        self.bound = 1.0
        sampled = sample_pusht_episodes(
            data,
            settings.num_episodes,
            gap=settings.gap,
            seed=settings.seed,
            episode_indices=held_out,
            context_length=context,
        )
        self.sampled = sampled
        self.simulator = PushTSimulator(image_size=settings.pusht_data.image_size)

    def problems(self) -> list[PlanningProblem]:
        frames = torch.from_numpy(self.data["frames"]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        actions = torch.from_numpy(self.data["actions"]).double()
        problems = []
        for index, (episode, step) in enumerate(
            zip(self.sampled["episode_indices"], self.sampled["start_steps"], strict=True)
        ):
            first = step - self.context + 1
            problems.append(
                PlanningProblem(
                    frames[episode, first : step + 1],
                    actions[episode, first:step],
                    frames[episode, step + self.gap],
                    actions[episode, step : step + self.gap],
                    index,
                    # Push-T's actions are absolute agent targets: the searches start by holding the last target.
                    actions[episode, step - 1].expand(self.gap, -1).clone(),
                )
            )
        return problems

    def trajectories(self, index: int, actions: torch.Tensor) -> np.ndarray:
        """True states `(N, H, 5)` after each of the candidate actions `(N, H, 2)` from problem `index`'s start."""
        n = len(actions)
        states = np.repeat(self.sampled["start_states"][index][None], n, axis=0)
        velocities = np.repeat(self.sampled["start_velocities"][index][None], n, axis=0)
        actions = np.asarray(actions.detach().cpu(), dtype=np.float64).clip(-1.0, 1.0)
        return self.simulator.rollout(states, actions, velocities)[:, 1:]

    def final_states(self, index: int, actions: torch.Tensor) -> np.ndarray:
        """Final true states `(N, 5)` of candidate actions `(N, gap, 2)` from problem `index`'s start."""
        return self.trajectories(index, actions)[:, -1]

    def outcome(self, problem: PlanningProblem, actions: torch.Tensor) -> tuple[bool, float]:
        """Whether executing `actions` meets DINO-WM's criterion, and the final agent-and-block position error (px)."""
        final = self.final_states(problem.start, actions[None])
        goal = self.sampled["goal_states"][problem.start]
        distance = float(np.linalg.norm(final[0, :4] - goal[:4]))
        return bool(pusht_success_batch(final, goal[None])[0]), distance

    def oracle(self, problem: PlanningProblem):
        goal = self.sampled["goal_states"][problem.start]

        def evaluate(actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            final = self.final_states(problem.start, actions)
            position = np.linalg.norm(final[:, :4] - goal[:4], axis=-1) / SUCCESS_POSITION_THRESHOLD
            angle = np.abs((final[:, 4] - goal[4] + np.pi) % (2 * np.pi) - np.pi) / SUCCESS_ANGLE_THRESHOLD
            return torch.from_numpy(position**2 + angle**2).to(actions), torch.from_numpy(final).to(actions)

        return evaluate

    def environment_step(self, problem: PlanningProblem) -> Callable[[torch.Tensor], torch.Tensor]:
        """The true simulator from the episode's start, stepped by closed-loop planning: each call applies actions
        `(k, 2)` and returns the `k` frames seen after them `(k, 3, S, S)` in [-1, 1], rendered as the data were. The
        physics is deterministic, so every call replays all actions applied so far from the start (at most `gap`)."""
        applied = []

        def step(actions: torch.Tensor) -> torch.Tensor:
            applied.append(actions.detach().cpu().double())
            states = self.trajectories(problem.start, torch.cat(applied)[None])[0, -len(actions) :]
            frames = torch.from_numpy(self.simulator.render(states)).permute(0, 3, 1, 2)
            return frames.float() / 127.5 - 1.0

        return step

    def random_actions(self, rng: np.random.Generator) -> torch.Tensor:
        """Uniform agent targets in the bounds, one per step."""
        return torch.from_numpy(rng.uniform(-1.0, 1.0, size=(self.gap, 2)))

    def description(self) -> dict:
        return {
            "env": "gym-pusht PushT-v0 (pymunk), offline data of `planning.pusht.PushTExplorationPolicy`",
            "episodes": "start and goal `gap` steps apart on held-out trajectories (DINO-WM's protocol)",
            "success": f"|agent xy, block xy - goal|_2 < {SUCCESS_POSITION_THRESHOLD} and block angle within "
            f"{SUCCESS_ANGLE_THRESHOLD:.4f} rad (DINO-WM's eval_state)",
            "action_bounds": [-1.0, 1.0],
            "random_baseline": "uniform agent targets in the bounds",
            "oracle": "the true simulator scoring the success criterion's normalised squared distances",
        }


def train_reach_model(
    settings: PlanningBenchmarkSettings, output_dir: str
) -> tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixTrainingRecipe]:
    """Trains (or loads) the reach task's encoder and evolver on the planning recipe's world."""
    recipe = recipe_with_overrides(settings.reach_recipe, settings.quick, {})
    train, _ = build_datasets(recipe)
    models = load_or_create_models(settings.reach_preset, output_dir, world_action_dim(recipe), seed=recipe.seed)
    train_stages(PLANNING_STAGES, models, settings.reach_preset, train, recipe, output_dir, skip_finished=True)
    return models[0].eval(), models[1].eval(), recipe


def train_pusht_model(
    settings: PlanningBenchmarkSettings, output_dir: str
) -> tuple[VeltrixEncoderModel, VeltrixEvolverModel, VeltrixTrainingRecipe, dict, tuple[int, ...]]:
    """Collects (or reads) the Push-T data into `<output_dir>/pusht.npz`, converts it through the own-data path
    (`load_trajectory_source`, clips of the recipe's length, a held-out split of whole episodes) and trains (or loads)
    the encoder and evolver. Returns them, the recipe, the data and the held-out episodes."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "pusht.npz")
    if not os.path.exists(path):
        write_pusht_npz(path, collect_pusht_episodes(settings.pusht_data))
    recipe = recipe_with_overrides(os.path.join(settings.pusht_preset, "recipe.json"), settings.quick, {})
    encoder_config = VeltrixEncoderModel.config_class.from_pretrained(os.path.join(settings.pusht_preset, "encoder"))
    options = TrajectorySourceOptions(
        image_size=encoder_config.image_size,
        num_channels=encoder_config.num_channels,
        clip_length=recipe.trajectory_length,
        min_length=recipe.context_length + recipe.rollout_window,
        held_out=0.1,
        seed=recipe.train_seed,
    )
    train, held_out, info = load_trajectory_source(path, options, cache_dir=os.path.join(output_dir, "cache"))
    recipe = dataclasses.replace(recipe, num_train_trajectories=len(train), num_eval_trajectories=len(held_out))
    models = load_or_create_models(settings.pusht_preset, output_dir, info.action_dim, seed=recipe.seed)
    train_stages(PLANNING_STAGES, models, settings.pusht_preset, train, recipe, output_dir, skip_finished=True)
    return models[0].eval(), models[1].eval(), recipe, read_pusht_npz(path), info.held_out_indices


class VeltrixPlanner:
    """Plans with a trained encoder and evolver: context and goal frames encoded once, the goal compared in the frame
    subspace (as `VeltrixPipeline.plan` does)."""

    def __init__(self, encoder: VeltrixEncoderModel, evolver: VeltrixEvolverModel, bound: float):
        self.encoder, self.evolver, self.bound = encoder, evolver, bound

    def encode(self, problem: PlanningProblem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frames = torch.cat([problem.context_frames, problem.goal_frame[None]])[None].to(self.encoder.dtype)
        units = self.encoder(frames).units.to(self.evolver.dtype)
        return units[:, :-1], units[:, -1], problem.context_actions[None].to(self.evolver.dtype)

    def project(self, units: torch.Tensor) -> torch.Tensor:
        return self.encoder.frame_subspace(units.to(self.encoder.dtype))

    def search_arguments(self, settings: VeltrixPlannerSettings, seed: int) -> dict:
        """The search's keyword arguments of `evolver.plan` (and `run_mpc`) for `settings`, seeded by `seed`."""
        return {
            "method": settings.method,
            "num_samples": settings.num_samples,
            "num_iterations": settings.num_iterations,
            "top_k": settings.top_k,
            "action_bounds": (-self.bound, self.bound),
            "generator": torch.Generator().manual_seed(seed),
            "initial_std": settings.initial_std,
        }

    def plan_closed_loop(
        self,
        problem: PlanningProblem,
        settings: VeltrixPlannerSettings,
        step: Callable[[torch.Tensor], torch.Tensor],
        replan_every: int,
        seed: int,
    ) -> torch.Tensor:
        """Model-predictive control (`planning.mpc.run_mpc`): plan to the goal's time, apply `replan_every` actions
        in the environment (`step`), observe, replan from the carried cache; returns the applied actions. Where the
        problem gives the searches a start (Push-T), replans start from the previous plan's unapplied actions."""
        initial = problem.initial_actions
        result = run_mpc(
            self,
            problem.context_frames[None].to(self.encoder.dtype),
            problem.goal_frame[None].to(self.encoder.dtype),
            step,
            len(problem.true_actions),
            replan_every=replan_every,
            context_actions=problem.context_actions[None].to(self.evolver.dtype),
            initial_actions=None if initial is None else initial[None].to(self.evolver.dtype),
            warm_start=initial is not None,
            **self.search_arguments(settings, seed),
        )
        return result.actions.double()

    def plan(self, problem: PlanningProblem, settings: VeltrixPlannerSettings, horizon: int, seed: int) -> torch.Tensor:
        context, goal, context_actions = self.encode(problem)
        out = self.evolver.plan(
            context,
            goal,
            horizon,
            context_actions=context_actions,
            goal_projection=self.project,
            **self.search_arguments(settings, seed),
            initial_actions=None if problem.initial_actions is None else problem.initial_actions[None].to(goal),
        )
        return out.actions[0].double()

    def landscape(self, problem: PlanningProblem, count: int, scale: float, seed: int) -> tuple[bool, int]:
        """Whether the data's actions score best among `count` perturbations of them (noise of `scale` times the
        bound, clamped), and their rank (0 = best)."""
        context, goal, context_actions = self.encode(problem)
        generator = torch.Generator().manual_seed(seed)
        true = problem.true_actions.to(self.evolver.dtype)
        noise = torch.randn(count, *true.shape, generator=generator, dtype=true.dtype) * scale * self.bound
        candidates = torch.cat([true[None], (true + noise).clamp(-self.bound, self.bound)])[None]
        scores = self.evolver.score_actions(
            context, goal, candidates, context_actions=context_actions, goal_projection=self.project
        )[0]
        rank = int((scores < scores[0]).sum())
        return rank == 0, rank


def plan_with_oracle(task, problem: PlanningProblem, settings: VeltrixPlannerSettings, seed: int) -> torch.Tensor:
    """The same search with the task's true simulator as the model (CEM / MPPI; the gradient search has no
    differentiable simulator and is replaced by CEM)."""
    if settings.method == "gradient":
        settings = dataclasses.replace(settings, method="cem")
    like = torch.zeros(1, dtype=torch.float64)
    search = ActionSearch(
        task.oracle(problem),
        1,
        len(problem.true_actions),
        problem.true_actions.shape[-1],
        settings,
        action_bounds_tensors((-task.bound, task.bound), problem.true_actions.shape[-1], like),
        torch.Generator().manual_seed(seed),
        like,
        None if problem.initial_actions is None else problem.initial_actions[None].to(like),
    )
    return search.run()[0][0]


def milliseconds_per_plan(
    planner: VeltrixPlanner, problem: PlanningProblem, settings: VeltrixPlannerSettings, horizon: int, repeats: int
) -> dict:
    """Median, min and max milliseconds of one planning call (encoding included), after one warm-up call."""
    planner.plan(problem, settings, horizon, seed=0)
    times = []
    for repeat in range(repeats):
        started = time.perf_counter()
        planner.plan(problem, settings, horizon, seed=repeat)
        times.append(1000.0 * (time.perf_counter() - started))
    return {"median": float(np.median(times)), "min": float(min(times)), "max": float(max(times))}


@torch.no_grad()
def evaluate_task(task, planner: VeltrixPlanner, settings: PlanningBenchmarkSettings) -> dict:
    """Success rates of Veltrix per method, the random baseline and the oracle (CEM); ms per plan; the landscape."""
    problems = task.problems()
    rng = np.random.default_rng(settings.seed)
    # Closed loop (CEM, replanning every `replan_every` steps) where the task's environment can be stepped.
    closed_loop = hasattr(task, "environment_step")
    names = [f"veltrix_{method}" for method in settings.methods] + ["veltrix_cem_mpc"] * closed_loop
    names += ["random", "oracle_cem"]
    methods = list(settings.methods) + ["cem_mpc"] * closed_loop
    outcomes, seconds, landscape = {name: [] for name in names}, {method: [] for method in methods}, []
    for index, problem in enumerate(tqdm(problems, desc=f"planning {task.name}")):
        for method in settings.methods:
            started = time.perf_counter()
            actions = planner.plan(problem, settings.planner(method), settings.gap, seed=settings.seed + index)
            seconds[method].append(time.perf_counter() - started)
            outcomes[f"veltrix_{method}"].append(task.outcome(problem, actions))
        if closed_loop:
            started = time.perf_counter()
            step = task.environment_step(problem)
            actions = planner.plan_closed_loop(
                problem, settings.planner("cem"), step, settings.replan_every, seed=settings.seed + index
            )
            seconds["cem_mpc"].append(time.perf_counter() - started)
            outcomes["veltrix_cem_mpc"].append(task.outcome(problem, actions))
        outcomes["random"].append(task.outcome(problem, task.random_actions(rng)))
        oracle = plan_with_oracle(task, problem, settings.planner("cem"), seed=settings.seed + index)
        outcomes["oracle_cem"].append(task.outcome(problem, oracle))
        landscape.append(planner.landscape(problem, settings.num_perturbations, settings.perturbation_scale, index))
    # The target's timing: CEM at the timing budget (after a warm-up call), on the first episode.
    timing = milliseconds_per_plan(
        planner, problems[0], settings.planner("cem", timing=True), settings.gap, settings.timing_repeats
    )
    best, ranks = zip(*landscape, strict=True)
    return {
        "task": task.description(),
        "num_episodes": len(problems),
        "gap": settings.gap,
        "success_rate": {name: float(np.mean([ok for ok, _ in values])) for name, values in outcomes.items()},
        "median_final_distance": {name: float(np.median([d for _, d in values])) for name, values in outcomes.items()},
        "ms_per_plan_cem_timing_budget": timing,
        "ms_per_plan_evaluation_budget": {
            method: {"median": 1000 * float(np.median(values)), "min": 1000 * float(min(values))}
            for method, values in seconds.items()
        },
        "budget": {
            "evaluation": f"{settings.num_samples} candidates x {settings.gap} steps x {settings.num_iterations} "
            "iterations",
            "timing": f"{settings.timing_samples} candidates x {settings.gap} steps x {settings.timing_iterations} "
            "iterations",
            **(
                {
                    "closed_loop": f"CEM at the evaluation budget, replanning every {settings.replan_every} steps "
                    "(its ms_per_plan_evaluation_budget entry is per episode, all replans)"
                }
                if closed_loop
                else {}
            ),
        },
        "landscape": {
            "true_actions_score_best": float(np.mean(best)),
            "mean_rank_of_true_actions": float(np.mean(ranks)),
            "num_perturbations": settings.num_perturbations,
            "perturbation_scale_of_bound": settings.perturbation_scale,
        },
    }


def task_targets(task: str, result: dict, episodes: int) -> list[dict]:
    """`success_rate_over_random_<task>` and `success_rate_over_oracle_<task>` of Veltrix with CEM, closed loop where
    the task has it (how a planner is deployed: `veltrix_cem_mpc`), else open loop (without CEM: the best method),
    the random rate floored at one episode, 1 / num_episodes, so that a zero stays a finite ratio; and
    `ms_per_plan_<task>`."""
    rates = result["success_rate"]
    measured = [name for name in ("veltrix_cem_mpc", "veltrix_cem") if name in rates]
    figure = measured[0] if measured else max((k for k in rates if k.startswith("veltrix_")), key=rates.get)
    veltrix = rates[figure]
    floor = 1.0 / episodes
    timing = result["ms_per_plan_cem_timing_budget"]["median"]
    return [
        {
            "name": f"success_rate_over_random_{task}",
            "veltrix": figure,
            "value": veltrix / max(rates["random"], floor),
            "op": ">=",
            "target": SUCCESS_OVER_RANDOM_TARGET,
        },
        {
            "name": f"success_rate_over_oracle_{task}",
            "veltrix": figure,
            "value": veltrix / max(rates["oracle_cem"], floor),
            "op": ">=",
            "target": SUCCESS_OVER_ORACLE_TARGET,
        },
        {"name": f"ms_per_plan_{task}", "value": timing, "op": "<", "target": MS_PER_PLAN_TARGET},
    ]


def run_planning_benchmark(settings: PlanningBenchmarkSettings, output_dir: str) -> dict:
    """Trains (or loads) each task's model under `<output_dir>/<task>`, evaluates it and returns the report's
    `results` and `targets`."""
    settings.check()
    results, targets = {}, []
    for name in settings.tasks:
        task_dir = os.path.join(output_dir, name)
        if name == "reach":
            encoder, evolver, recipe = train_reach_model(settings, task_dir)
            task = ReachTask(settings, recipe)
        else:
            encoder, evolver, recipe, data, held_out = train_pusht_model(settings, task_dir)
            task = PushTTask(settings, data, held_out, recipe.context_length)
        if settings.compiled_step:
            evolver.compile_step()
        planner = VeltrixPlanner(encoder, evolver, task.bound)
        results[name] = evaluate_task(task, planner, settings)
        results[name]["compiled_step_calls"] = evolver.compiled_step_calls
        results[name]["parameters"] = {
            "encoder": sum(p.numel() for p in encoder.parameters()),
            "evolver": sum(p.numel() for p in evolver.parameters()),
        }
        targets += task_targets(name, results[name], settings.num_episodes)
    return {"results": results, "targets": targets}
