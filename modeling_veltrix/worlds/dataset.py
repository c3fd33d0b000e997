"""The registry of built-in worlds and their cached `datasets.Dataset` builder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .base import World, WorldMetadata, _is_int
from .bouncing_balls import BouncingBallsWorld
from .mass_spring import MassSpringWorld
from .pendulum import PendulumWorld
from .two_body import TwoBodyWorld

WORLDS: dict[str, type[World]] = {
    BouncingBallsWorld.name: BouncingBallsWorld,
    PendulumWorld.name: PendulumWorld,
    MassSpringWorld.name: MassSpringWorld,
    TwoBodyWorld.name: TwoBodyWorld,
}


def get_world(name: str, **overrides: Any) -> World:
    """Instantiate a built-in world by name, with config fields overridden by keyword.

    >>> world = get_world("pendulum", irregular_timestamps=True)
    """
    if name not in WORLDS:
        raise ValueError(f"world must be one of {sorted(WORLDS)}, got {name!r}")
    world_class = WORLDS[name]
    known = {field.name for field in dataclasses.fields(world_class.config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown {world_class.config_class.__name__} fields {unknown}; known fields are {sorted(known)}"
        )
    return world_class(world_class.config_class(**overrides))


def world_metadata(world: str | World, **overrides: Any) -> WorldMetadata:
    """Action and physics sizes and physics field names of a world given as a name (+ overrides) or object."""
    return (world if isinstance(world, World) else get_world(world, **overrides)).metadata


def world_features(world: World, num_steps: int) -> datasets.Features:
    """Typed `datasets.Features` of one trajectory of `num_steps` steps (float32, and with the world's opt-in
    captions, the caption strings and their int64 byte tokens)."""
    config = world.config
    size = config.image_size
    features = {
        "pixel_values": datasets.Array4D(shape=(num_steps, 3, size, size), dtype="float32"),
        "timestamps": datasets.List(datasets.Value("float32"), length=num_steps),
        "actions": datasets.Array2D(shape=(num_steps, world.action_dim), dtype="float32"),
        "physics": datasets.Array2D(shape=(num_steps, world.physics_dim), dtype="float32"),
    }
    if config.audio:
        features["audio_values"] = datasets.Array2D(shape=(num_steps, config.audio_window), dtype="float32")
    if config.captions:
        features["captions"] = datasets.List(datasets.Value("string"), length=num_steps)
        features["input_ids"] = datasets.Array2D(shape=(num_steps, config.caption_length), dtype="int64")
        features["attention_mask"] = datasets.Array2D(shape=(num_steps, config.caption_length), dtype="int64")
    return datasets.Features(features)


def _trajectory_examples(
    world: str, config: dict[str, Any], num_trajectories: int, num_steps: int, seed: int, chunk_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Yield trajectories one by one, simulated `chunk_size` at a time (module level for `datasets`)."""
    simulator = get_world(world, **config)
    for start in range(0, num_trajectories, chunk_size):
        batch = simulator.generate(min(chunk_size, num_trajectories - start), num_steps, seed, first_index=start)
        for i in range(len(batch["timestamps"])):
            # Caption strings come as an object array; `datasets` takes them as a list.
            yield {key: value[i].tolist() if value.dtype == object else value[i] for key, value in batch.items()}


def build_world_dataset(
    world: str = "bouncing_balls",
    num_trajectories: int = 256,
    num_steps: int = 32,
    seed: int = 0,
    irregular_timestamps: bool = False,
    cache_dir: str | None = None,
    **world_overrides: Any,
) -> datasets.Dataset:
    """Build a `datasets.Dataset` of `num_trajectories` trajectories of a built-in world.

    Each row holds one trajectory: `pixel_values (T, 3, H, W)`, `timestamps (T,)`, `actions (T, A)`,
    `physics (T, P)`, all float32, and with `audio=True` / `captions=True` among the overrides `audio_values (T, S)`,
    `captions (T,)`, `input_ids (T, L)` and `attention_mask (T, L)` (see `world_features`).
    Row `i` equals trajectory `i` of
    `get_world(world, irregular_timestamps=irregular_timestamps, **world_overrides)`
    `.generate(num_trajectories, num_steps, seed)`.

    The Arrow file is cached under `cache_dir` (default: the `datasets` cache) with a fingerprint of the
    worlds' source and every argument, so a rebuild is instant and a code or argument change regenerates.

    >>> dataset = build_world_dataset("bouncing_balls", num_trajectories=8, num_steps=16).with_format("torch")
    >>> dataset[0]["pixel_values"].shape
    torch.Size([16, 3, 32, 32])
    """
    simulator = get_world(world, irregular_timestamps=irregular_timestamps, **world_overrides)
    for name, value, minimum in (
        ("num_trajectories", num_trajectories, 1),
        ("num_steps", num_steps, 1),
        ("seed", seed, 0),
    ):
        if not _is_int(value) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    gen_kwargs = {
        "world": world,
        "config": simulator.config.to_dict(),
        "num_trajectories": num_trajectories,
        "num_steps": num_steps,
        "seed": seed,
        "chunk_size": 64,
    }
    digest = hashlib.sha256()
    # The worlds' code and the captions' byte tokenizer.
    for source in (*sorted(Path(__file__).parent.glob("*.py")), Path(__file__).parent.parent / "text_units.py"):
        digest.update(source.read_bytes())
    digest.update(json.dumps(gen_kwargs, sort_keys=True).encode())
    return datasets.Dataset.from_generator(
        _trajectory_examples,
        features=world_features(simulator, num_steps),
        cache_dir=cache_dir,
        gen_kwargs=gen_kwargs,
        fingerprint=digest.hexdigest()[:32],
    )
