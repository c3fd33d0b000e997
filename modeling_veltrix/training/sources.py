"""Your own trajectories as training data: a `datasets` dataset, a `.npz` / `.npy` array file or a folder of videos,
converted into the rows the built-in worlds give (`worlds.build_world_dataset`):

    pixel_values (T, C, H, W) float32 in [-1, 1]    timestamps (T,) float32 seconds, strictly increasing
    actions (T, A) float32                           only when the source has actions (else no column at all)

`load_trajectory_source` checks everything it reads (ranks, channel counts, frame sizes, finite values, ranges,
increasing timestamps, action lengths, trajectory lengths against the recipe's windows) and raises a `ValueError`
naming the file or column, what was expected and what was found. Trajectories are read one at a time (`.npy` memory-
mapped, `.npz` members streamed from the archive, videos decoded frame by frame) and written with a `datasets`
generator, so memory does not grow with the dataset. The converted Arrow files go to the `datasets` cache, under a
fingerprint of the source files (path, size, modification time) and every option.

Videos are decoded with PyAV (`pip install av`, the `video` extra): torchvision's video reader is deprecated, and
torchvision from PyPI does not import beside this project's torch build.
"""

import hashlib
import json
import logging
import os
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".avi", ".mov", ".mkv", ".m4v")
SOURCE_KINDS = ("datasets", "npz", "npy", "video")
# Rows per Arrow record batch: a few trajectories, so the writer's buffer stays small whatever the dataset's size.
WRITER_BATCH_SIZE = 8


@dataclass(frozen=True)
class TrajectorySourceOptions:
    """How a source is read and converted (every field is checked by `check`).

    image_size: side of the square frames the model reads (the encoder's `image_size`); frames are centre-cropped to
        a square and resized to it.
    num_channels: channels the model reads (the encoder's `num_channels`, 1 or 3); grey frames are repeated to 3
        channels, colour ones turned into luma for 1.
    clip_length: frames per training trajectory; longer trajectories are cut into consecutive clips of this length
        (the tail shorter than a clip is dropped), shorter ones are refused.
    min_length: the fewest frames a clip may have (the recipe's `context_length + rollout_window`).
    fps: frame rate in Hz that gives the timestamps `i / fps`; it replaces the source's own timestamps (a warning says
        so). Without it, the source must carry timestamps (videos always do).
    held_out: the held-out trajectories, whole source trajectories before clipping: a fraction in (0, 1) or a count.
    frames_column, actions_column, timestamps_column: the columns of a `datasets` source; `None` takes
        `pixel_values`, and `actions` / `timestamps` when present.
    seed: seeds the choice of held-out trajectories.
    """

    image_size: int
    num_channels: int = 3
    clip_length: int = 32
    min_length: int = 2
    fps: float | None = None
    held_out: float = 0.1
    frames_column: str | None = None
    actions_column: str | None = None
    timestamps_column: str | None = None
    seed: int = 0

    def check(self) -> None:
        """Raises a `ValueError` naming the first bad option."""
        for name in ("image_size", "clip_length", "min_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if self.num_channels not in (1, 3):
            raise ValueError(f"`num_channels` must be 1 or 3, got {self.num_channels!r}.")
        if self.clip_length < max(self.min_length, 2):
            raise ValueError(
                f"`clip_length` ({self.clip_length}) must be >= {max(self.min_length, 2)}: the recipe's windows "
                f"(`context_length + rollout_window`) need that many frames per trajectory."
            )
        if self.fps is not None and (isinstance(self.fps, bool) or not np.isfinite(self.fps) or self.fps <= 0):
            raise ValueError(f"`fps` must be a finite number > 0, got {self.fps!r}.")
        held = self.held_out
        if isinstance(held, bool) or not isinstance(held, (int, float)) or not np.isfinite(held) or held < 0:
            raise ValueError(f"`held_out` must be a fraction in (0, 1) or a count >= 1, got {held!r}.")
        if isinstance(held, int) and held < 1:
            raise ValueError(f"`held_out` as a count must be >= 1, got {held!r}.")
        if isinstance(held, float) and not 0 < held < 1:
            raise ValueError(f"`held_out` as a fraction must lie in (0, 1), got {held!r}; give a count as an int.")

    def held_out_count(self, num_trajectories: int, source: str) -> int:
        """How many of the `num_trajectories` trajectories of `source` are held out (at least 1, leaving at least 1)."""
        count = round(self.held_out * num_trajectories) if isinstance(self.held_out, float) else self.held_out
        count = max(count, 1)
        if count >= num_trajectories:
            raise ValueError(
                f"{source}: the source has {num_trajectories} trajectories, too few to hold out {count} and train on "
                f"the rest: lower `held_out` or add trajectories."
            )
        return count


@dataclass(frozen=True)
class TrajectorySourceInfo:
    """What a converted source holds: its kind, the source trajectories (before clipping) in each split, the clips
    (dataset rows) in each split, the action width (0: no actions) and the options used."""

    source: str
    kind: str
    num_source_trajectories: int
    held_out_indices: tuple[int, ...]
    num_train_clips: int
    num_held_out_clips: int
    action_dim: int
    options: TrajectorySourceOptions

    def to_dict(self) -> dict:
        return asdict(self)


def source_kind(source: str) -> str:
    """The kind of `source`: `npz` / `npy` by extension, `datasets` for a folder saved with `save_to_disk` or any
    other folder without videos (loaded with `datasets.load_dataset`), `video` for a folder of video files."""
    path = Path(source)
    if path.is_file():
        if path.suffix in (".npz", ".npy"):
            return path.suffix[1:]
        raise ValueError(
            f"Unknown source kind: {source} is a file ending in {path.suffix!r}; expected a .npz or .npy file, a "
            f"`datasets` folder or a folder of videos ({', '.join(VIDEO_EXTENSIONS)})."
        )
    if not path.is_dir():
        raise ValueError(f"Source {source} does not exist.")
    if any(child.suffix.lower() in VIDEO_EXTENSIONS for child in path.iterdir()):
        return "video"
    return "datasets"


# --- frames -------------------------------------------------------------------------------------------------------


def _check_finite(values: np.ndarray, what: str) -> None:
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(f"{what} must be finite, found NaN or Inf.")


def convert_frames(frames: np.ndarray, options: TrajectorySourceOptions, what: str, layout: str) -> np.ndarray:
    """Frames of one trajectory as the model reads them.

    Args:
        frames: `(T, H, W, C)` uint8 (or other integers) in [0, 255] (`layout="channels_last"`) or `(T, C, H, W)`
            float in [-1, 1] (`layout="channels_first"`, the built-in worlds' format), C 1 or 3.
        what: the file or column, for error messages.
    Returns:
        `(T, num_channels, image_size, image_size)` float32 in [-1, 1], centre-cropped to a square and resized.
    """
    if frames.ndim != 4:
        expected = "(T, H, W, C)" if layout == "channels_last" else "(T, C, H, W)"
        raise ValueError(f"{what}: frames must have rank 4 {expected}, found shape {tuple(frames.shape)}.")
    if layout == "channels_last":
        if not np.issubdtype(frames.dtype, np.integer):
            raise ValueError(f"{what}: frames must be uint8 in [0, 255] (T, H, W, C), found dtype {frames.dtype}.")
        if frames.dtype != np.uint8 and frames.size and (frames.min() < 0 or frames.max() > 255):
            low, high = int(frames.min()), int(frames.max())
            raise ValueError(f"{what}: frame values must lie in [0, 255], found [{low}, {high}].")
        channels = frames.shape[-1]
        pixels = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (T, C, H, W)
    else:
        if not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"{what}: frames (T, C, H, W) must be float in [-1, 1], found dtype {frames.dtype}.")
        channels = frames.shape[1]
        _check_finite(frames, f"{what}: frames")
        low, high = float(frames.min()), float(frames.max())
        if low < -1 - 1e-3 or high > 1 + 1e-3:
            raise ValueError(f"{what}: frame values must lie in [-1, 1], found [{low:.4g}, {high:.4g}].")
        pixels = torch.from_numpy(np.asarray(frames, dtype=np.float32))
    if channels not in (1, 3):
        raise ValueError(f"{what}: frames must have 1 or 3 channels, found {channels} (shape {tuple(frames.shape)}).")
    if frames.shape[0] == 0 or min(pixels.shape[-2:]) == 0:
        raise ValueError(f"{what}: frames must not be empty, found shape {tuple(frames.shape)}.")
    h, w = pixels.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    pixels = pixels[..., top : top + side, left : left + side]
    if side != options.image_size:
        size = (options.image_size, options.image_size)
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=side > options.image_size)
    if channels == 1 and options.num_channels == 3:
        pixels = pixels.expand(-1, 3, -1, -1)
    elif channels == 3 and options.num_channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114])[:, None, None]  # ITU-R 601
        pixels = (pixels * luma).sum(dim=1, keepdim=True)
    return pixels.clamp(-1, 1).numpy().astype(np.float32, copy=False)


def check_timestamps(timestamps: np.ndarray, num_frames: int, what: str) -> np.ndarray:
    """`timestamps (T,)` as float64, checked: finite, strictly increasing, one per frame."""
    timestamps = np.asarray(timestamps)
    if timestamps.shape != (num_frames,):
        raise ValueError(f"{what}: timestamps must have shape ({num_frames},), one per frame, found {timestamps.shape}")
    if not np.issubdtype(timestamps.dtype, np.number):
        raise ValueError(f"{what}: timestamps must be numbers, found dtype {timestamps.dtype}.")
    timestamps = timestamps.astype(np.float64)
    _check_finite(timestamps, f"{what}: timestamps")
    steps = np.diff(timestamps)
    if (steps <= 0).any():
        index = int(np.argmax(steps <= 0))
        raise ValueError(
            f"{what}: timestamps must be strictly increasing, found {timestamps[index]} then {timestamps[index + 1]} "
            f"at frames {index} and {index + 1}."
        )
    return timestamps


def check_actions(actions: np.ndarray, num_frames: int, what: str) -> np.ndarray:
    """`actions (T, A)` as float32, checked: rank 2, one row per frame, finite."""
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[0] != num_frames:
        raise ValueError(f"{what}: actions must have shape ({num_frames}, A), one per frame, found {actions.shape}.")
    if not np.issubdtype(actions.dtype, np.number):
        raise ValueError(f"{what}: actions must be numbers, found dtype {actions.dtype}.")
    _check_finite(actions, f"{what}: actions")
    return actions.astype(np.float32)


@dataclass
class _Trajectory:
    """One source trajectory, converted: frames `(T, C, S, S)`, timestamps `(T,)` (or None), actions `(T, A)` (or
    None)."""

    frames: np.ndarray
    timestamps: np.ndarray | None
    actions: np.ndarray | None


def _clips(trajectory: _Trajectory, options: TrajectorySourceOptions, what: str) -> Iterator[dict[str, np.ndarray]]:
    """The dataset rows of one trajectory: consecutive clips of `clip_length` frames, timestamps from 0 in each."""
    num_frames = len(trajectory.frames)
    if num_frames < options.clip_length:
        raise ValueError(
            f"{what}: the trajectory has {num_frames} frames, fewer than the clip length {options.clip_length} "
            f"(the recipe's windows need at least {options.min_length}); lower `--clip-length` or drop it."
        )
    timestamps = trajectory.timestamps
    if options.fps is not None:
        timestamps = np.arange(num_frames, dtype=np.float64) / options.fps
    elif timestamps is None:
        raise ValueError(f"{what}: the source has no timestamps; give the frame rate with `--fps` (`fps=`).")
    timestamps = check_timestamps(timestamps, num_frames, what)
    for start in range(0, num_frames - options.clip_length + 1, options.clip_length):
        steps = slice(start, start + options.clip_length)
        row = {
            "pixel_values": trajectory.frames[steps],
            "timestamps": (timestamps[steps] - timestamps[start]).astype(np.float32),
        }
        if trajectory.actions is not None:
            row["actions"] = trajectory.actions[steps]
        yield row


# --- readers: each yields (what, _Trajectory) for the source's trajectories, in order -------------------------------


class _Reader(ABC):
    """A source's trajectories, read one at a time; `action_dim` (0: none) and `has_timestamps` are known up front."""

    num_trajectories: int
    action_dim: int
    has_timestamps: bool

    @abstractmethod
    def trajectories(self, options: TrajectorySourceOptions, indices: list[int]) -> Iterator[tuple[str, _Trajectory]]:
        """(file or column, trajectory) for each of the sorted `indices`, read and converted; the others skipped."""


def _npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of a `.npy` stream; an object dtype (pickled data) is refused."""
    version = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(handle)
    if dtype.hasobject or fortran_order:
        raise ValueError("arrays must be plain C-ordered numbers (no objects, no Fortran order)")
    return shape, dtype


class _ArrayReader(_Reader):
    """`.npz` (`frames (N, T, H, W, C)` uint8, optional `actions (N, T, A)`, `timestamps (N, T)` or `(T,)`) or `.npy`
    (frames only). `.npy` is memory-mapped; `.npz` members are read trajectory by trajectory from the archive."""

    def __init__(self, path: str):
        self.path = path
        self.actions = self.timestamps = None
        try:
            if path.endswith(".npy"):
                self.frames = np.load(path, mmap_mode="r", allow_pickle=False)
                shape = self.frames.shape
            else:
                with zipfile.ZipFile(path) as archive:
                    names = set(archive.namelist())
                    if "frames.npy" not in names:
                        found = sorted(name.removesuffix(".npy") for name in names)
                        raise ValueError(f"{path}: missing array `frames` (N, T, H, W, C), found arrays {found}.")
                    with archive.open("frames.npy") as handle:
                        shape, dtype = _npy_header(handle)
                    if dtype != np.uint8:
                        raise ValueError(f"{path}: `frames` must be uint8 (N, T, H, W, C), found dtype {dtype}.")
                with np.load(path, allow_pickle=False) as arrays:  # the small arrays, whole
                    self.actions = arrays["actions"] if "actions" in arrays.files else None
                    self.timestamps = arrays["timestamps"] if "timestamps" in arrays.files else None
        except (OSError, zipfile.BadZipFile, ValueError) as error:
            if str(error).startswith(path):
                raise
            raise ValueError(f"{path}: cannot be read as a {Path(path).suffix} array file: {error}") from None
        if len(shape) != 5:
            raise ValueError(f"{path}: `frames` must have rank 5 (N, T, H, W, C), found shape {tuple(shape)}.")
        if shape[-1] not in (1, 3):
            raise ValueError(f"{path}: `frames` must have 1 or 3 channels (last axis), found {shape[-1]} in {shape}.")
        self.shape = shape
        self.num_trajectories, num_frames = shape[:2]
        if self.actions is not None:
            if self.actions.ndim != 3 or self.actions.shape[:2] != (self.num_trajectories, num_frames):
                raise ValueError(
                    f"{path}: `actions` must have shape ({self.num_trajectories}, {num_frames}, A), one per frame, "
                    f"found {self.actions.shape}."
                )
        if self.timestamps is not None and self.timestamps.shape not in ((num_frames,), shape[:2]):
            raise ValueError(
                f"{path}: `timestamps` must have shape ({num_frames},) or {tuple(shape[:2])}, found "
                f"{self.timestamps.shape}."
            )
        self.action_dim = 0 if self.actions is None else self.actions.shape[-1]
        self.has_timestamps = self.timestamps is not None

    def _frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(index, frames `(T, H, W, C)`) of the sorted `indices`: `.npy` rows of the memory map, `.npz` rows read
        in order from the archive's stream (the others read past)."""
        if self.path.endswith(".npy"):
            yield from ((index, self.frames[index]) for index in indices)
            return
        per_trajectory = int(np.prod(self.shape[1:]))
        wanted = set(indices)
        with zipfile.ZipFile(self.path) as archive, archive.open("frames.npy") as handle:
            _npy_header(handle)
            for index in range(max(indices, default=-1) + 1):
                data = handle.read(per_trajectory)
                if index in wanted:
                    yield index, np.frombuffer(data, dtype=np.uint8).reshape(self.shape[1:])

    def trajectories(self, options: TrajectorySourceOptions, indices: list[int]) -> Iterator[tuple[str, _Trajectory]]:
        for index, frames in self._frames(indices):
            what = f"{self.path} trajectory {index}"
            if self.timestamps is None:
                timestamps = None
            else:
                timestamps = self.timestamps if self.timestamps.ndim == 1 else self.timestamps[index]
            actions = None if self.actions is None else check_actions(self.actions[index], len(frames), what)
            converted = convert_frames(frames, options, what, "channels_last")
            yield what, _Trajectory(converted, timestamps, actions)


class _DatasetReader(_Reader):
    """A `datasets` dataset saved with `save_to_disk` (a `Dataset`, or the `train` split of a `DatasetDict`) or a
    local folder `datasets.load_dataset` reads (its `train` split). Frames are `(T, H, W, C)` integers in [0, 255]
    or `(T, C, H, W)` floats in [-1, 1]."""

    def __init__(self, path: str, options: TrajectorySourceOptions):
        self.path = path
        try:
            saved = any(os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json"))
            data = datasets.load_from_disk(path) if saved else datasets.load_dataset(path)
        except Exception as error:  # `datasets` raises many kinds; all mean the folder is not a dataset
            raise ValueError(f"{path}: cannot be loaded as a `datasets` dataset: {error}") from None
        if isinstance(data, datasets.DatasetDict):
            if "train" not in data:
                raise ValueError(f"{path}: a DatasetDict needs a `train` split, found splits {sorted(data)}.")
            data = data["train"]
        columns = data.column_names

        def column(given: str | None, default: str, required: bool) -> str | None:
            name = given or default
            if name in columns:
                return name
            if given is not None or required:
                raise ValueError(f"{path}: missing column {name!r}, found columns {columns}.")
            return None

        self.frames_column = column(options.frames_column, "pixel_values", required=True)
        self.actions_column = column(options.actions_column, "actions", required=False)
        self.timestamps_column = column(options.timestamps_column, "timestamps", required=False)
        self.data = data.with_format("numpy")
        self.num_trajectories = len(data)
        if self.num_trajectories == 0:
            raise ValueError(f"{path}: the dataset is empty (0 rows).")
        first = self.data[0][self.actions_column] if self.actions_column else None
        self.action_dim = 0 if first is None else (np.asarray(first).shape[-1] if np.ndim(first) == 2 else -1)
        if self.action_dim < 0:
            raise ValueError(
                f"{path} column {self.actions_column!r} row 0: actions must have shape (T, A), found {np.shape(first)}."
            )
        self.has_timestamps = self.timestamps_column is not None

    def trajectories(self, options: TrajectorySourceOptions, indices: list[int]) -> Iterator[tuple[str, _Trajectory]]:
        for index in indices:
            row = self.data[index]
            what = f"{self.path} column {self.frames_column!r} row {index}"
            try:
                frames = np.asarray(row[self.frames_column])
            except ValueError:
                frames = np.asarray(row[self.frames_column], dtype=object)
            if frames.dtype == object:
                raise ValueError(f"{what}: all frames of a trajectory must have one size, found mixed frame sizes.")
            layout = "channels_last" if np.issubdtype(frames.dtype, np.integer) else "channels_first"
            converted = convert_frames(frames, options, what, layout)
            actions = None
            if self.actions_column:
                actions_what = f"{self.path} column {self.actions_column!r} row {index}"
                actions = check_actions(row[self.actions_column], len(frames), actions_what)
                if actions.shape[1] != self.action_dim:
                    raise ValueError(
                        f"{actions_what}: actions must have width {self.action_dim} as in row 0, found "
                        f"{actions.shape[1]}."
                    )
            timestamps = row[self.timestamps_column] if self.timestamps_column else None
            yield what, _Trajectory(converted, timestamps, actions)


class _VideoReader(_Reader):
    """A folder of videos, one trajectory per file (sorted by name), decoded with PyAV; optional sidecars
    `<name>.actions.npy` `(T, A)` and `<name>.timestamps.npy` `(T,)` next to `<name>.<ext>`. Without a sidecar the
    timestamps are the frames' presentation times (`--fps` replaces them)."""

    def __init__(self, path: str):
        try:
            import av  # noqa: F401  # optional: the `video` extra
        except ImportError:
            raise ValueError(f"{path} is a folder of videos, which needs PyAV: `pip install av`.") from None
        self.path = path
        self.files = sorted(child for child in Path(path).iterdir() if child.suffix.lower() in VIDEO_EXTENSIONS)
        self.num_trajectories = len(self.files)
        sidecars = [self._sidecar(file, "actions") for file in self.files]
        present = [sidecar for sidecar in sidecars if sidecar.is_file()]
        if present and len(present) != len(sidecars):
            missing = next(sidecar for sidecar in sidecars if not sidecar.is_file())
            raise ValueError(f"{path}: some videos have an actions sidecar and some not: missing {missing}.")
        widths = {self._load(sidecar, "actions").shape[-1:] for sidecar in present}
        if len(widths) > 1:
            raise ValueError(f"{path}: the actions sidecars have different widths {sorted(widths)}.")
        self.action_dim = int(widths.pop()[0]) if widths else 0
        self.has_timestamps = True

    @staticmethod
    def _sidecar(file: Path, name: str) -> Path:
        return file.with_name(f"{file.stem}.{name}.npy")

    @staticmethod
    def _load(path: Path, name: str) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: cannot read the {name} sidecar: {error}") from None

    def _decode(self, file: Path, options: TrajectorySourceOptions) -> tuple[np.ndarray, np.ndarray]:
        """Frames `(T, C, S, S)` converted frame by frame, and their presentation times `(T,)` in seconds."""
        import av

        frames, times = [], []
        try:
            with av.open(str(file)) as container:
                if not container.streams.video:
                    raise ValueError(f"{file}: unreadable video: it has no video stream.")
                for frame in container.decode(video=0):
                    image = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
                    frames.append(convert_frames(image[None], options, str(file), "channels_last")[0])
                    times.append(np.nan if frame.time is None else frame.time)
        except av.FFmpegError as error:
            raise ValueError(f"{file}: unreadable video: {error}") from None
        if not frames:
            raise ValueError(f"{file}: unreadable video: no frames decoded.")
        return np.stack(frames), np.asarray(times, dtype=np.float64)

    def trajectories(self, options: TrajectorySourceOptions, indices: list[int]) -> Iterator[tuple[str, _Trajectory]]:
        for file in (self.files[index] for index in indices):
            what = str(file)
            frames, times = self._decode(file, options)
            actions_file, timestamps_file = self._sidecar(file, "actions"), self._sidecar(file, "timestamps")
            actions = None
            if actions_file.is_file():
                actions = check_actions(self._load(actions_file, "actions"), len(frames), str(actions_file))
            if timestamps_file.is_file():
                times = check_timestamps(self._load(timestamps_file, "timestamps"), len(frames), str(timestamps_file))
            yield what, _Trajectory(frames, times, actions)


# --- conversion ---------------------------------------------------------------------------------------------------


def _reader(source: str, kind: str, options: TrajectorySourceOptions) -> _Reader:
    if kind == "video":
        return _VideoReader(source)
    if kind == "datasets":
        return _DatasetReader(source, options)
    return _ArrayReader(source)


def _split_examples(source: str, kind: str, options: dict, indices: list[int]) -> Iterator[dict[str, np.ndarray]]:
    """The clips of the source trajectories `indices` (module level for `datasets.Dataset.from_generator`)."""
    options = TrajectorySourceOptions(**options)
    for what, trajectory in _reader(source, kind, options).trajectories(options, indices):
        yield from _clips(trajectory, options, what)


def _fingerprint(source: str, kind: str, options: TrajectorySourceOptions, split: str, indices: list[int]) -> str:
    """A hash of the source files (path, size, modification time), the options, the split and this module's code."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    path = Path(source).resolve()
    files = [path] if path.is_file() else sorted(child for child in path.rglob("*") if child.is_file())
    for file in files:
        stat = file.stat()
        digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps([kind, asdict(options), split, indices], sort_keys=True).encode())
    return digest.hexdigest()[:32]


def load_trajectory_source(
    source: str, options: TrajectorySourceOptions, cache_dir: str | None = None
) -> tuple[datasets.Dataset, datasets.Dataset, TrajectorySourceInfo]:
    """Reads, checks and converts a source of trajectories into (train, held-out) `datasets.Dataset`s in torch format,
    with the built-in worlds' keys: `pixel_values (T, C, S, S)` float32 in [-1, 1], `timestamps (T,)` float32
    (from 0 in each clip) and, when the source has actions, `actions (T, A)` float32; `T` is `options.clip_length`,
    `S` `options.image_size`, `C` `options.num_channels`.

    `source` is a `.npz` file (`frames (N, T, H, W, C)` uint8, optional `actions (N, T, A)` and `timestamps (N, T)`
    or `(T,)`), a `.npy` file of frames `(N, T, H, W, C)` uint8, a `datasets` folder (`save_to_disk`, or a folder
    `datasets.load_dataset` reads; frames `(T, H, W, C)` uint8 or `(T, C, H, W)` float in [-1, 1]), or a folder of
    videos (see `_VideoReader`). The held-out split holds whole source trajectories, drawn with `options.seed`.

    Everything is checked while converting, before the caller writes anything: a bad source raises a `ValueError`
    naming the file or column, what was expected and what was found. Returns the two datasets and a
    `TrajectorySourceInfo`.

    >>> options = TrajectorySourceOptions(image_size=32, clip_length=16, fps=10.0)
    >>> train, held_out, info = load_trajectory_source("my_frames.npz", options)
    >>> train[0]["pixel_values"].shape
    torch.Size([16, 3, 32, 32])
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"`source` must be a path, got {type(source).__name__}.")
    if not isinstance(options, TrajectorySourceOptions):
        raise ValueError(f"`options` must be a TrajectorySourceOptions, got {type(options).__name__}.")
    options.check()
    source = str(source)
    kind = source_kind(source)
    reader = _reader(source, kind, options)
    if reader.num_trajectories == 0:
        raise ValueError(f"{source}: the source is empty (no trajectories).")
    if options.fps is None and not reader.has_timestamps:
        raise ValueError(f"{source}: the source has no timestamps; give the frame rate with `--fps` (`fps=`).")
    if options.fps is not None and reader.has_timestamps:
        logger.warning("%s: `fps`=%s replaces the source's own timestamps.", source, options.fps)
    count = options.held_out_count(reader.num_trajectories, source)
    order = np.random.default_rng(options.seed).permutation(reader.num_trajectories)
    held_indices = sorted(int(index) for index in order[:count])
    train_indices = sorted(int(index) for index in order[count:])
    size, channels = options.image_size, options.num_channels
    features = {
        "pixel_values": datasets.Array4D((options.clip_length, channels, size, size), "float32"),
        "timestamps": datasets.List(datasets.Value("float32"), length=options.clip_length),
    }
    if reader.action_dim:
        features["actions"] = datasets.Array2D((options.clip_length, reader.action_dim), "float32")
    splits = []
    for split, indices in (("train", train_indices), ("held_out", held_indices)):
        gen_kwargs = {
            "source": source,
            "kind": kind,
            "options": asdict(options),
            "indices": indices,
        }
        try:
            dataset = datasets.Dataset.from_generator(
                _split_examples,
                features=datasets.Features(features),
                cache_dir=cache_dir,
                gen_kwargs=gen_kwargs,
                fingerprint=_fingerprint(source, kind, options, split, indices),
                writer_batch_size=WRITER_BATCH_SIZE,
            )
        except datasets.exceptions.DatasetGenerationError as error:
            cause = error.__cause__
            if isinstance(cause, ValueError):
                raise ValueError(str(cause)) from None
            raise
        splits.append(dataset.with_format("torch"))
    train, held_out = splits
    info = TrajectorySourceInfo(
        source=source,
        kind=kind,
        num_source_trajectories=reader.num_trajectories,
        held_out_indices=tuple(held_indices),
        num_train_clips=len(train),
        num_held_out_clips=len(held_out),
        action_dim=reader.action_dim,
        options=options,
    )
    return train, held_out, info
