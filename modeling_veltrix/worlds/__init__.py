"""Built-in Veltrix worlds: seeded simulators of small physical scenes and their `datasets.Dataset` builders.

Each world produces trajectories in the Veltrix data contract (DESIGN.md §2):

    pixel_values  (N, T, 3, H, W)  float32 in [-1, 1]  RGB frames, black background
    timestamps    (N, T)           float32 seconds     from 0, strictly increasing (optionally irregular)
    actions       (N, T, A)        float32             sparse impulses; the action at step t acts right after
                                                       frame t is observed, so it first shows in frame t+1
    physics       (N, T, P)        float32             ground-truth state (positions, velocities, energy)

Opt-in (``audio=True`` / ``captions=True`` in the world config), per step ``t``, describing what happened since frame
``t - 1`` (step 0: nothing):

    audio_values    (N, T, S)      float32 in [-1, 1]  16 kHz mono window of ``S = frame_interval * sample_rate``
                                                       samples ending at frame t: a decaying tone per event, its
                                                       pitch set by the object (ball colour; the pendulum's bob)
    captions        (N, T)         str                 templated: "<events>. <where the objects are>." e.g.
                                                       "the red ball hits the left wall. red is top left, ..."
    input_ids       (N, T, L)      int64               UTF-8 bytes of the caption, 0-padded (`byte_tokenize`)
    attention_mask  (N, T, L)      int64               1 on caption bytes, 0 on padding

Events are collisions (ball–wall, ball–ball) for the balls and swing extremes (the angular velocity changes sign)
for the pendulum, detected at integrator sub-step resolution.

Worlds:

- ``"bouncing_balls"`` — `BouncingBallsWorld`: equal-mass discs in a square box with elastic collisions
  against the walls and each other; the action is a velocity impulse on ball 0.
- ``"pendulum"`` — `PendulumWorld`: a frictionless rigid pendulum integrated with RK4; the action is an
  angular velocity impulse.

Lengths are in pixels and times in seconds. The box spans ``[0, image_size]`` on both axes, ``x`` grows to
the right (column) and ``y`` downwards (row); pixel ``(row, col)`` is centred at ``(col + 0.5, row + 0.5)``.
Shapes are drawn with a linear coverage ramp at their edge, so sub-pixel motion changes pixels continuously.

Trajectory ``i`` of ``generate(..., seed=s)`` depends on ``(s, i)`` only: generating 10 or 100 trajectories
gives the same first 10.

>>> world = get_world("bouncing_balls", num_balls=2)
>>> batch = world.generate(num_trajectories=4, num_steps=16, seed=0)
>>> batch["pixel_values"].shape, batch["physics"].shape
((4, 16, 3, 32, 32), (4, 16, 9))
"""

from .base import World, WorldConfig, WorldMetadata, caption_event
from .bouncing_balls import BouncingBallsWorld, BouncingBallsWorldConfig
from .dataset import WORLDS, build_world_dataset, get_world, world_features, world_metadata
from .pendulum import PendulumWorld, PendulumWorldConfig

__all__ = [
    "WORLDS",
    "BouncingBallsWorld",
    "BouncingBallsWorldConfig",
    "PendulumWorld",
    "PendulumWorldConfig",
    "World",
    "WorldConfig",
    "WorldMetadata",
    "build_world_dataset",
    "caption_event",
    "get_world",
    "world_features",
    "world_metadata",
]
