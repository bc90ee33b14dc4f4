"""Video loading (arrays, frame lists, encoded files via PyAV) and the per-modality seam."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from mmcore.multimodal.video import VideoClip, encode_video, load_video, uniform_indices


def _frames(num: int, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mp4_bytes() -> bytes:
    """A 12-frame 4-fps (3 s) clip whose frames get brighter over time."""
    ramp = np.linspace(20, 235, 12).astype(np.uint8)
    frames = np.broadcast_to(ramp[:, None, None, None], (12, 32, 48, 3)).copy()
    return encode_video(frames, fps=4)


def test_array_and_frame_list_are_taken_as_given():
    frames = _frames(5)
    clip = load_video(frames)
    assert clip.num_frames == 5 and clip.size == (32, 48) and clip.fps is None
    assert np.array_equal(clip.frames, frames)
    as_list = load_video([Image.fromarray(f) for f in frames], fps=3)
    assert np.array_equal(as_list.frames, frames) and as_list.fps == 3


def test_num_frames_and_max_frames_sample_uniformly():
    frames = _frames(9)
    clip = load_video(frames, num_frames=3)
    assert np.array_equal(clip.frames, frames[[0, 4, 8]])
    assert load_video(frames, max_frames=4).num_frames == 4
    assert uniform_indices(10, 4).tolist() == [0, 3, 6, 9]


def test_file_is_decoded_and_sampled_at_fps(mp4_bytes):
    default = load_video(mp4_bytes)  # 3 s at 2 fps
    assert default.num_frames == 6 and default.fps == pytest.approx(2.0)
    means = default.frames.reshape(6, -1).mean(axis=1)
    assert np.all(np.diff(means) > 0)  # time order kept
    assert load_video(mp4_bytes, fps=4).num_frames == 12
    assert load_video(mp4_bytes, num_frames=4).num_frames == 4
    assert load_video(mp4_bytes, max_frames=3).num_frames == 3
    url = "data:video/mp4;base64," + base64.b64encode(mp4_bytes).decode()
    assert np.array_equal(load_video(url).frames, default.frames)


def test_local_video_file_follows_the_media_policy(mp4_bytes, tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(mp4_bytes)
    assert load_video(str(path), allowed_local_media_path=str(tmp_path)).num_frames == 6
    with pytest.raises(ValueError, match="local"):
        load_video(str(path))


@pytest.mark.parametrize(
    "video,match",
    [
        (np.zeros((0, 8, 8, 3), np.uint8), "0 frames"),
        (np.zeros((2, 8, 8), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        ([], "0 frames"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 4, 3), np.uint8)], "differ in size"),
        (b"\x00not a video at all" * 8, "could not be decoded"),
        (b"", "empty"),
        (3.5, "cannot load a video"),
    ],
)
def test_bad_videos_are_refused(video, match):
    with pytest.raises(ValueError, match=match):
        load_video(video)


def test_bad_sampling_options_are_refused(mp4_bytes):
    with pytest.raises(ValueError, match="mutually exclusive"):
        load_video(mp4_bytes, fps=2, num_frames=4)
    with pytest.raises(ValueError, match="more than the video"):
        load_video(_frames(3), num_frames=5)
    with pytest.raises(ValueError, match="positive"):
        load_video(_frames(3), max_frames=0)


def test_clip_passes_through():
    clip = VideoClip(_frames(2), 2.0)
    assert load_video(clip) is clip
