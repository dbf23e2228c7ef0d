import numpy as np
import pytest

from jax_i2v.diffusion.camera_motion import camera_motion_frames


def _ramp(height, width):
    """Each column holds its own x coordinate, so crops reveal where they start."""
    x = np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None], (height, width, 3))
    return np.ascontiguousarray(x)


def test_pan_right_moves_the_window_right_by_equal_steps():
    frames = camera_motion_frames(_ramp(32, 96), "pan_right", 8, 32, 32)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    starts = frames[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(starts, [(96 - 32) * i // 8 for i in range(8)])
    np.testing.assert_array_equal(frames[0], _ramp(32, 96)[:, :32])


def test_pan_left_starts_at_the_right_edge():
    frames = camera_motion_frames(_ramp(32, 96), "pan_left", 8, 32, 32)
    starts = frames[:, 0, 0, 0].astype(int)
    assert starts[0] == 64 and (np.diff(starts) < 0).all()


def _centre_square(size, side):
    image = np.zeros((size, size, 3), np.uint8)
    lo = (size - side) // 2
    image[lo : lo + side, lo : lo + side] = 255
    return image


@pytest.mark.parametrize("motion,grows", [("zoom_in", True), ("zoom_out", False)])
def test_zoom_changes_the_apparent_size_monotonically(motion, grows):
    frames = camera_motion_frames(_centre_square(64, 16), motion, 8, 32, 32)
    assert frames.shape == (8, 32, 32, 3)
    area = (frames[..., 0] > 127).sum(axis=(1, 2))
    steps = np.diff(area)
    assert (steps >= 0).all() if grows else (steps <= 0).all()
    assert area[-1] != area[0]


def test_zoom_in_starts_from_the_whole_view_and_ends_at_two_thirds():
    frames = camera_motion_frames(_centre_square(64, 16), "zoom_in", 16, 32, 32)
    area = (frames[..., 0] > 127).sum(axis=(1, 2))
    # Frame 0 shows the full (resized) image: the 16 px square is 8 px at 32 px output.
    assert abs(area[0] - 64) <= 8
    # Side shrinks to ~ (1 - (1 - 1/1.5) * 15/16) of the view: the square grows by ~1.45x per side.
    assert 64 * 1.3**2 < area[-1] < 64 * 1.6**2


def test_square_image_cannot_pan_and_says_so():
    with pytest.warns(UserWarning, match="no room to pan"):
        frames = camera_motion_frames(_ramp(32, 32), "pan_right", 4, 32, 32)
    assert (frames == frames[:1]).all()


def test_unknown_motion_raises():
    with pytest.raises(ValueError, match="camera motion"):
        camera_motion_frames(_ramp(8, 8), "tilt_up", 4, 8, 8)
