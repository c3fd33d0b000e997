"""What the demo app shows (`rollout_viewer`): rollouts from a built-in world or from uploaded frames, in both
modes, with and without ground truth; and what the app allows: uploads checked before decoding (images only, size,
pixel count), its host (`GRADIO_SERVER_NAME`, `--host`), its upload limit when served, and its temporary files."""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
import torch
from hub_helpers import tiny_pipeline

from modeling_veltrix.evaluation.viewer import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_FILES,
    OutputFolders,
    frames_from_images,
    view_rollout,
    world_trajectory,
)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(image_size=32)


@pytest.mark.parametrize("mode", ["conditional", "free"])
def test_world_rollout_against_ground_truth(pipe, tmp_path, mode):
    data = world_trajectory("bouncing_balls", seed=3, num_steps=7, image_size=32)
    assert data["pixel_values"].shape == (7, 3, 32, 32) and data["actions"].shape == (7, 2)
    view = view_rollout(
        pipe, data["pixel_values"], 4, 3, mode, str(tmp_path), actions=data["actions"], timestamps=data["timestamps"]
    )
    gif = PIL.Image.open(view.gif_path)
    assert gif.n_frames == 3 and gif.size == (3 * 32 * 4, 32 * 4)
    assert PIL.Image.open(view.plot_path).size[0] > 200
    assert set(view.pixel_mse) == {"veltrix", "copy_last", "mean_frame"}
    assert all(values.shape == (3,) and np.isfinite(values).all() for values in view.pixel_mse.values())


def test_modes_differ_when_actions_matter(pipe, tmp_path):
    data = world_trajectory("bouncing_balls", seed=3, num_steps=7, image_size=32)
    data["actions"] = torch.full_like(data["actions"], 3.0)
    errors = {
        mode: view_rollout(
            pipe, data["pixel_values"], 4, 3, mode, str(tmp_path / mode), actions=data["actions"]
        ).pixel_mse["veltrix"]
        for mode in ("conditional", "free")
    }
    assert not np.allclose(errors["conditional"], errors["free"])


def test_uploaded_frames_without_ground_truth(pipe, tmp_path):
    paths = []
    for index in range(3):
        path = tmp_path / f"frame{index}.png"
        PIL.Image.fromarray(np.full((40, 40, 3), 60 * index, dtype=np.uint8)).save(path)
        paths.append(str(path))
    frames = frames_from_images(paths, image_size=32)
    assert frames.shape == (3, 3, 32, 32) and frames.min() >= -1 and frames.max() <= 1
    torch.testing.assert_close(frames[1], torch.full((3, 32, 32), 60 / 127.5 - 1))
    view = view_rollout(pipe, frames, 3, 4, "free", str(tmp_path / "out"))
    gif = PIL.Image.open(view.gif_path)
    assert gif.n_frames == 4 and gif.size == (32 * 4, 32 * 4)  # the prediction alone
    assert view.plot_path is None and view.pixel_mse == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "counterfactual"}, "mode"),
        ({"mode": "conditional"}, "actions"),
        ({"context_length": 9}, "context_length"),
    ],
)
def test_bad_requests(pipe, tmp_path, kwargs, message):
    request = {"context_length": 3, "horizon": 2, "mode": "free", **kwargs}
    with pytest.raises(ValueError, match=message):
        view_rollout(pipe, torch.zeros(4, 3, 32, 32), output_dir=str(tmp_path), **request)
    with pytest.raises(ValueError, match="paths"):
        frames_from_images([], image_size=32)


# -- the app's limits, host and temporary files ----------------------------------------------------------------------

REPO = Path(__file__).parent.parent


def load_app_module():
    """`scripts/app.py` as a module (its `main` is not run)."""
    spec = importlib.util.spec_from_file_location("veltrix_app", REPO / "scripts" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uploads_are_checked_before_they_are_decoded(tmp_path, monkeypatch):
    executable = tmp_path / "tool.png"
    executable.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(4096))
    oversized = tmp_path / "big.png"
    with open(oversized, "wb") as handle:
        handle.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: no disk used
    huge = tmp_path / "huge.png"
    PIL.Image.new("1", (2049, 2049)).save(huge)  # a few hundred bytes on disk, 4.2 megapixels
    assert huge.stat().st_size < 10_000
    # Decoding any pixel of these fails the test: the checks read headers only.
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: pytest.fail("an image was decoded"))
    for path, message in ((executable, "must be images"), (oversized, "at most"), (huge, "pixels")):
        with pytest.raises(ValueError, match=message) as caught:
            frames_from_images([str(path)], image_size=32)
        assert path.name in str(caught.value)
    with pytest.raises(ValueError, match="at most"):
        frames_from_images([str(huge)] * (MAX_UPLOAD_FILES + 1), image_size=32)


def test_output_folders_keep_the_newest_and_clean_up():
    outputs = OutputFolders(keep=2)
    made = [outputs.new() for _ in range(4)]
    assert [os.path.isdir(f) for f in made] == [False, False, True, True]
    assert sorted(os.listdir(outputs.root)) == sorted(os.path.basename(f) for f in made[2:])
    outputs.cleanup()
    assert not os.path.exists(outputs.root)
    with pytest.raises(ValueError, match="keep"):
        OutputFolders(keep=0)


def test_app_host_and_requests(pipe, tmp_path, monkeypatch):
    app = load_app_module()
    monkeypatch.setattr(sys, "argv", ["app.py"])
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert app.parse_args().host == "0.0.0.0"  # a Space sets it
    monkeypatch.setattr(sys, "argv", ["app.py", "--host", "127.0.0.5"])
    assert app.parse_args().host == "127.0.0.5"
    monkeypatch.delenv("GRADIO_SERVER_NAME")
    monkeypatch.setattr(sys, "argv", ["app.py"])
    assert app.parse_args().host == "127.0.0.1"

    outputs = OutputFolders(keep=2)
    roll_out = app.make_roll_out(pipe, outputs)
    frame = tmp_path / "frame.png"
    PIL.Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(frame)
    results = [roll_out("uploaded frames", "bouncing_balls", 0, [str(frame)] * 2, 2, 1, "free", 1) for _ in range(3)]
    assert os.path.isfile(results[-1][0]) and not os.path.exists(results[0][0])  # only the newest two kept
    assert len(os.listdir(outputs.root)) == 2
    with pytest.raises(app.gr.Error, match="must be images"):
        roll_out("uploaded frames", "bouncing_balls", 0, [__file__], 2, 1, "free", 1)
    outputs.cleanup()


def test_served_app_honours_gradio_server_name_limits_uploads_and_cleans_up(tmp_path):
    folder, temp = tmp_path / "pipeline", tmp_path / "temp"
    tiny_pipeline(image_size=32).save_pretrained(folder)
    temp.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_NAME": "127.0.0.2", "TMPDIR": str(temp)}
    env.update(GRADIO_TEMP_DIR=str(tmp_path / "gradio"), GRADIO_ANALYTICS_ENABLED="False")
    command = [sys.executable, str(REPO / "scripts" / "app.py"), "--model", str(folder), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.2:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the app did not serve on 127.0.0.2"
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert [name for name in os.listdir(temp) if name.startswith("veltrix-app-")]
        boundary = "veltrixboundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + bytes(MAX_UPLOAD_BYTES + 1024)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"{url}/gradio_api/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 413
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert not [name for name in os.listdir(temp) if name.startswith("veltrix-app-")]
