"""Planning with a world model, around the action search of the model itself (`VeltrixEvolverModel.plan`,
`VeltrixPipeline.plan`): `mpc`, the closed loop (plan, act, observe, replan with the cache carried over); `reach`, the
built-in control task (push the bouncing-balls world's red ball to a goal frame) with its true simulator as a planning
model; `pusht`, the Push-T benchmark's data, its true simulator (the planner's upper bound) and DINO-WM's success
criterion; `viewer`, what the demo app's Plan tab shows (a reach episode planned and executed, side by side)."""

from .mpc import MPCResult, run_mpc
from .pusht import (
    SUCCESS_ANGLE_THRESHOLD,
    SUCCESS_POSITION_THRESHOLD,
    PushTDataConfig,
    PushTExplorationPolicy,
    PushTSimulator,
    collect_pusht_episodes,
    denormalise_pusht_actions,
    normalise_pusht_actions,
    pusht_config_dict,
    pusht_exploration_stats,
    pusht_success,
    pusht_success_batch,
    read_pusht_npz,
    sample_pusht_episodes,
    write_pusht_npz,
)
from .reach import (
    REACH_ACTION_BOUND,
    REACH_INITIAL_STD,
    ReachEnvironment,
    ReachEpisode,
    ReachSimulatorCandidates,
    ReachTaskConfig,
    integrate_from,
    reach_success,
    reach_world,
    sample_reach_episodes,
)
from .viewer import PlanView, check_reach_pipeline, goal_preview, view_plan

__all__ = [
    "MPCResult",
    "ReachEnvironment",
    "ReachEpisode",
    "ReachSimulatorCandidates",
    "ReachTaskConfig",
    "integrate_from",
    "reach_success",
    "reach_world",
    "run_mpc",
    "sample_reach_episodes",
    "PushTDataConfig",
    "PushTExplorationPolicy",
    "PushTSimulator",
    "SUCCESS_ANGLE_THRESHOLD",
    "SUCCESS_POSITION_THRESHOLD",
    "collect_pusht_episodes",
    "denormalise_pusht_actions",
    "normalise_pusht_actions",
    "pusht_config_dict",
    "pusht_exploration_stats",
    "pusht_success",
    "pusht_success_batch",
    "read_pusht_npz",
    "sample_pusht_episodes",
    "write_pusht_npz",
    "PlanView",
    "REACH_ACTION_BOUND",
    "REACH_INITIAL_STD",
    "check_reach_pipeline",
    "goal_preview",
    "view_plan",
]
