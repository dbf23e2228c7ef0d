"""`launch/sample.py` end to end with the tiny config's UNet (random weights)."""

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from launch import sample

FRAMES, SIZE, STEPS = 4, 16, 3


@pytest.fixture(scope="module")
def first_image(tmp_path_factory):
    """A wide image (room to pan) with a bright disc."""
    y, x = np.mgrid[0:24, 0:48]
    image = np.zeros((24, 48, 3), np.uint8)
    image[..., 0], image[..., 1] = x * 5, y * 10
    image[(x - 16) ** 2 + (y - 12) ** 2 < 30] = 255
    path = tmp_path_factory.mktemp("inputs") / "first.png"
    Image.fromarray(image).save(path)
    return str(path)


SCENARIOS = {
    "frameinit": [],
    "no_frameinit": ["--sampling.frameinit=none", "--attention=xla"],
    "camera_motion": ["--camera_motion=pan_right"],
    "three_chunks": ["--chunks=3"],
    "image_guidance": ["--sampling.image_guidance=1.5", "--sampling.frameinit=butterworth"],
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_writes_playable_gif_and_mp4_of_the_requested_shape(scenario, first_image, tmp_path, capsys):
    out = tmp_path / scenario
    argv = [
        "--config=configs/tiny.py",
        "--random_params",
        f"--image={first_image}",
        "--prompt=a red circle moves left",
        f"--frames={FRAMES}",
        f"--height={SIZE}",
        f"--width={SIZE}",
        f"--sampling.steps={STEPS}",
        f"--out={out}",
    ]
    result = sample.main(argv + SCENARIOS[scenario])
    chunks = 3 if scenario == "three_chunks" else 1
    length = FRAMES + (chunks - 1) * (FRAMES - 1)
    assert result["shape"] == [1, length, SIZE, SIZE, 3]
    assert result["files"] == [f"{out}.gif", f"{out}.mp4"]
    gif = iio.imread(f"{out}.gif", index=None)
    mp4 = iio.imread(f"{out}.mp4", plugin="pyav")
    assert gif.shape == mp4.shape == (length, SIZE, SIZE, 3)
    assert "denoising" in capsys.readouterr().err  # the progress bar
    # The config's model.attention ("auto": the CPU kernel), or the flag's.
    kernel = "xla" if scenario == "no_frameinit" else "blocked"
    assert result["attention"] == {"spatial": kernel, "cross": kernel, "temporal": kernel}


def test_bad_arguments_fail_before_sampling(first_image, tmp_path, capsys):
    base = ["--config=configs/tiny.py", "--random_params", f"--image={first_image}", f"--out={tmp_path / 'x'}"]
    for argv in (
        base + ["--camera_motion=zoom_in", "--sampling.frameinit=none"],
        ["--random_params", f"--image={first_image}", "--out=x"],
        base + ["--height=15", "--width=16"],
        base + ["--unet=/missing/unet"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            sample.main(argv)
        assert exit_info.value.code == 2, argv
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, (argv, errors)


def test_guidance_the_checkpoint_was_not_trained_for_is_refused(micro_run, first_image, tmp_path, capsys):
    # configs/micro.py, like tiny, trains without first-frame dropout: no image-free prediction.
    argv = [f"--checkpoint={micro_run}", f"--image={first_image}", f"--out={tmp_path / 'x'}", "--sampling.image_guidance=1.5"]
    with pytest.raises(SystemExit):
        sample.main(argv)
    assert "first_frame_dropout" in capsys.readouterr().err
