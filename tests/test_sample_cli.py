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
    "no_frameinit": ["--frameinit", "none", "--attention", "xla"],
    "camera_motion": ["--camera-motion", "pan_right"],
    "three_chunks": ["--chunks", "3"],
    "image_guidance": ["--image-guidance", "1.5", "--frameinit", "butterworth"],
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_writes_playable_gif_and_mp4_of_the_requested_shape(scenario, first_image, tmp_path, capsys):
    out = tmp_path / scenario
    argv = [
        "--config",
        "configs/tiny.py",
        "--random-params",
        "--image",
        first_image,
        "--prompt",
        "a red circle moves left",
        "--frames",
        str(FRAMES),
        "--height",
        str(SIZE),
        "--width",
        str(SIZE),
        "--steps",
        str(STEPS),
        "--out",
        str(out),
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


def test_bad_arguments_fail_before_sampling(first_image, tmp_path):
    base = ["--config", "configs/tiny.py", "--random-params", "--image", first_image, "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        sample.parse_args(base + ["--camera-motion", "zoom_in", "--frameinit", "none"])
    with pytest.raises(SystemExit):
        sample.parse_args(["--random-params", "--image", first_image, "--out", "x"])
    with pytest.raises(ValueError, match="even"):
        sample.run(sample.parse_args(base + ["--height", "15", "--width", "16"]))


def test_guidance_the_checkpoint_was_not_trained_for_is_refused(micro_run, first_image, tmp_path):
    # configs/micro.py, like tiny, trains without first-frame dropout: no image-free prediction.
    args = sample.parse_args(
        ["--checkpoint", str(micro_run), "--image", first_image, "--out", str(tmp_path / "x"), "--image-guidance", "1.5"]
    )
    with pytest.raises(ValueError, match="first_frame_dropout"):
        sample.run(args)


def test_sampling_defaults_come_from_the_config_the_model_was_benchmarked_with(first_image, tmp_path):
    from types import SimpleNamespace

    from jax_i2v.config_utils import load_config
    from jax_i2v.diffusion.ddim import DDIMConfig
    from jax_i2v.diffusion.lcm import LCMConfig
    from jax_i2v.train.previews import PreviewWriter

    config = load_config("configs/tiny.py")
    ddim, lcm = SimpleNamespace(scheduler=DDIMConfig()), SimpleNamespace(scheduler=LCMConfig())
    base = ["--config", "configs/tiny.py", "--random-params", "--image", first_image, "--out", str(tmp_path / "x")]
    settings = sample.resolve_sampling(sample.parse_args(base), ddim, config, trained=True)
    for key in ("steps", "text_guidance", "eta", "fresh_noise_alpha", "frameinit"):
        assert settings[key] == config.sampling[key], key
    assert settings["noise_alpha"] == config.objective.noise_alpha
    settings = sample.resolve_sampling(sample.parse_args(base + ["--eta", "0.5", "--noise-alpha", "2"]), ddim, config, trained=True)
    assert settings["eta"] == 0.5 and settings["noise_alpha"] == 2.0 and settings["text_guidance"] == config.sampling.text_guidance
    # The consistency sampler on a DDIM-benchmarked model: its own defaults, the training's noise.
    config.objective.noise_alpha = 0.5
    settings = sample.resolve_sampling(sample.parse_args(base), lcm, config, trained=True)
    assert (settings["steps"], settings["text_guidance"], settings["eta"], settings["noise_alpha"]) == (4, 1.0, 0.0, 0.5)
    # Without a config: the release's settings.
    settings = sample.resolve_sampling(sample.parse_args(base), ddim, None, trained=False)
    assert (settings["steps"], settings["text_guidance"], settings["eta"], settings["noise_alpha"]) == (50, 7.5, 0.0, 1.0)
    # Training previews follow the same section, at their own step count.
    previews = PreviewWriter(config, [], [], str(tmp_path / "run"), num_steps=5, seed=0, mesh=None)
    assert previews.sampling["num_steps"] == 5 and previews.sampling["eta"] == config.sampling.eta
    assert previews.sampling["text_guidance"] == config.sampling.text_guidance and previews.frame_stride == 1
