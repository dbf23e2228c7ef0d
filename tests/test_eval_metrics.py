"""The consistency metrics on ground-truth, static and perturbed moving-shapes clips."""

import pathlib

import numpy as np
import pytest

from jax_i2v.data.moving_shapes import MovingShapesConfig, generate_example
from jax_i2v.eval.consistency import average, video_metrics
from jax_i2v.eval.video_features import frechet_distance

ROOT = pathlib.Path(__file__).resolve().parents[1]
FRAMES = 8
CONFIG = MovingShapesConfig(num_frames=32, resolution=32)


def _tiny_codec():
    """configs/tiny.py's latent codec (a block DCT that keeps each 4x4 block's lowest frequencies)."""
    from jax_i2v.config_utils import latent_codec, load_config

    return latent_codec(load_config(str(ROOT / "configs" / "tiny.py")))


def _clips(count=100, seed=1_000_003):
    for index in range(count):
        example = generate_example(seed, index, CONFIG)
        n = int(example["num_objects"])
        yield example["video"][:FRAMES], example["masks"][:FRAMES, :n], example["directions"][:n]


def _score(transform, count=100):
    return average([video_metrics(transform(video), video[0], masks, directions) for video, masks, directions in _clips(count)])


def test_ground_truth_scores_perfectly():
    scores = _score(lambda video: video)
    assert scores["appearance_drift"] == 0.0
    assert scores["motion_error"] == 0.0
    assert scores["background_psnr"] == 100.0
    assert scores["direction_accuracy"] == 1.0


def test_a_static_clip_has_no_motion():
    scores = _score(lambda video: np.repeat(video[:1], len(video), axis=0))
    assert scores["direction_accuracy"] == 0.0
    assert scores["smoothness"] == 0.0
    assert scores["appearance_drift"] == 0.0
    assert scores["motion_error"] > 0.05  # the objects really moved away from where they started


def test_reversed_motion_is_wrong_and_colour_shifts_are_drift():
    reversed_scores = _score(lambda video: np.concatenate([video[:1], video[1:][::-1]]), count=30)
    assert reversed_scores["motion_error"] > 0
    shifted = _score(lambda video: np.concatenate([video[:1], np.clip(video[1:].astype(int) + 20, 0, 255).astype(np.uint8)]), count=30)
    assert shifted["appearance_drift"] == pytest.approx(np.sqrt(3) * 20 / 255, abs=0.02)  # some channels clip at 255
    assert shifted["background_psnr"] == pytest.approx(10 * np.log10(255**2 / 400), abs=0.5)
    assert shifted["motion_error"] == 0.0


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-6)
    assert frechet_distance(a, 2 * a) == pytest.approx(3.0, rel=0.05)  # tr(1 + 4 - 2 * 2) per dim
    with pytest.raises(ValueError):
        frechet_distance(a[:1], a)


def test_the_codec_reference_is_the_ground_truth_through_the_codec():
    from jax_i2v.eval.synthetic_benchmark import BenchmarkClip, codec_round_trip, run_benchmark
    from jax_i2v.models.vae import PixelSpace

    clips = [BenchmarkClip(video, "", masks, directions) for video, masks, directions in _clips(24)]
    exact = run_benchmark(None, clips, round_trip=codec_round_trip(PixelSpace()))
    assert exact["ground_truth_coded"] == exact["ground_truth"]
    # configs/tiny.py's block DCT low-passes edges: colours and background suffer a little, the motion survives.
    coded = run_benchmark(None, clips, round_trip=codec_round_trip(_tiny_codec()))["ground_truth_coded"]
    assert 20.0 < coded["background_psnr"] < 100.0 and 0.0 < coded["appearance_drift"] < 0.1
    assert coded["motion_error"] < 0.02 and coded["direction_accuracy"] > 0.9


def test_frame_quality_sees_the_degradations_of_mcm_low_quality_videos():
    import dataclasses

    from jax_i2v.data.moving_shapes import BLUR_SIGMA, WATERMARK_OPACITY, gaussian_blur
    from jax_i2v.eval.frame_quality import frame_quality
    from jax_i2v.eval.synthetic_benchmark import codec_round_trip

    config = MovingShapesConfig(num_frames=8, resolution=32, max_objects=2, min_radius=0.1, max_radius=0.18)
    # The tiny models' codec keeps only each 4x4 block's lowest frequencies: the blur must still
    # show through it, or no model decoding through it could be measured sharper than another.
    coded = codec_round_trip(_tiny_codec())
    scores = {name: [] for name in ("clean", "degraded", "blurred", "clean_coded", "degraded_coded")}
    for index in range(40):
        example = generate_example(1, index, config)
        worse = generate_example(1, index, dataclasses.replace(config, quality="degraded"))
        blur = np.round(gaussian_blur(example["video"].astype(float), BLUR_SIGMA)).astype(np.uint8)
        videos = dict(
            clean=example["video"],
            degraded=worse["video"],
            blurred=blur,
            clean_coded=coded(example["video"]),
            degraded_coded=coded(worse["video"]),
        )
        for name, video in videos.items():
            scores[name].append(frame_quality(video, example["masks"]))
    s = {name: average(values) for name, values in scores.items()}
    assert abs(s["clean"]["watermark"]) < 0.005 and abs(s["blurred"]["watermark"]) < 0.01
    assert 0.5 * WATERMARK_OPACITY < s["degraded"]["watermark"] < WATERMARK_OPACITY  # white at 40% over dark backgrounds
    assert s["degraded"]["sharpness"] < s["clean"]["sharpness"] - 0.03 and s["blurred"]["sharpness"] < s["clean"]["sharpness"] - 0.03
    assert s["degraded_coded"]["sharpness"] < s["clean_coded"]["sharpness"] - 0.03
    assert s["degraded_coded"]["watermark"] > 0.5 * s["degraded"]["watermark"]
