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
                                                       or the world (one tone for mass_spring and two_body)
    captions        (N, T)         str                 templated: "<events>. <where the objects are>." e.g.
                                                       "the red ball hits the left wall. red is top left, ..."
    input_ids       (N, T, L)      int64               UTF-8 bytes of the caption, 0-padded (`byte_tokenize`)
    attention_mask  (N, T, L)      int64               1 on caption bytes, 0 on padding

Events are collisions (ball–wall, ball–ball) for the balls, swing extremes (the angular velocity changes sign)
for the pendulum, the turn at the widest point for the mass-spring ball (the radial velocity goes from + to -) and
the closest approach for the two bodies (the separation's rate goes from - to +), detected at integrator sub-step
resolution.

Worlds:

- ``"bouncing_balls"`` — `BouncingBallsWorld`: equal-mass discs in a square box with elastic collisions
  against the walls and each other; the action is a velocity impulse on ball 0.
- ``"pendulum"`` — `PendulumWorld`: a frictionless rigid pendulum integrated with RK4; the action is an
  angular velocity impulse.
- ``"mass_spring"`` — `MassSpringWorld`: a ball on a zero-rest-length spring tied to the image centre (a 2-D
  harmonic oscillator) integrated with velocity Verlet; the action is a momentum impulse.
- ``"two_body"`` — `TwoBodyWorld`: two discs under softened gravity around a fixed centre of mass, integrated
  with velocity Verlet; the action is a relative-velocity impulse (equal and opposite momentum kicks).

Every world also gives ``probe_fields`` (the physics fields that determine its state: positions and velocities or
momenta) and ``energy(state)``, the energy of a ``(..., len(probe_fields))`` numpy array or torch tensor.

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
from .mass_spring import MassSpringWorld, MassSpringWorldConfig
from .pendulum import PendulumWorld, PendulumWorldConfig
from .two_body import TwoBodyWorld, TwoBodyWorldConfig

__all__ = [
    "WORLDS",
    "BouncingBallsWorld",
    "BouncingBallsWorldConfig",
    "MassSpringWorld",
    "MassSpringWorldConfig",
    "PendulumWorld",
    "PendulumWorldConfig",
    "TwoBodyWorld",
    "TwoBodyWorldConfig",
    "World",
    "WorldConfig",
    "WorldMetadata",
    "build_world_dataset",
    "caption_event",
    "get_world",
    "world_features",
    "world_metadata",
]
