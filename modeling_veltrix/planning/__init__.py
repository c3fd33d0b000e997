"""Planning with a world model: goal-conditioned action search. `pusht`: the Push-T benchmark's data, its true
simulator (the planner's upper bound) and DINO-WM's success criterion."""

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

__all__ = [
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
]
