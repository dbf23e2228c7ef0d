import dataclasses

import numpy as np
import pytest

from jax_i2v.data.moving_shapes import (
    BLUR_SIGMA,
    COLOUR_NAMES,
    COLOURS,
    DIRECTION_NAMES,
    DIRECTIONS,
    NOISE_STD,
    SHAPES,
    WATERMARK_OPACITY,
    MovingShapesConfig,
    clip_caption,
    gaussian_blur,
    generate_example,
    reverse_directions,
    watermark,
)
from jax_i2v.data.moving_shapes_tfds import build_moving_shapes, builder_config, load_moving_shapes
from jax_i2v.data.video_pipeline import ClipConfig, make_clip, sample_frame_indices, swap_left_right, training_dataset

SMALL = MovingShapesConfig(num_frames=12, resolution=24)


def test_examples_are_deterministic_and_distinct():
    a, b, c = generate_example(0, 5, SMALL), generate_example(0, 5, SMALL), generate_example(0, 6, SMALL)
    np.testing.assert_array_equal(a["video"], b["video"])
    assert a["caption"] == b["caption"]
    assert not np.array_equal(a["video"], c["video"])


@pytest.mark.parametrize("index", range(20))
def test_ground_truth_agrees_with_the_pixels_and_the_caption(index):
    e = generate_example(3, index, SMALL)
    n = int(e["num_objects"])
    assert 1 <= n <= 3 and (e["shapes"][n:] == -1).all()
    for i in range(n):
        phrase = f"{COLOUR_NAMES[e['colours'][i]]} {SHAPES[e['shapes'][i]]} moves {DIRECTION_NAMES[e['directions'][i]]}"
        assert phrase in e["caption"]
        for t in range(SMALL.num_frames):
            mask = e["masks"][t, i].astype(bool)
            if mask.any():  # visible pixels have the object's colour
                np.testing.assert_array_equal(e["video"][t][mask], np.broadcast_to(COLOURS[COLOUR_NAMES[e["colours"][i]]], (mask.sum(), 3)))
        x, y = e["positions"][:, i].T
        assert (x >= 0).all() and (x <= SMALL.resolution - 1).all() and (y >= 0).all() and (y <= SMALL.resolution - 1).all()
        # Initial motion follows the captioned direction.
        dx, dy = x[1] - x[0], y[1] - y[0]
        assert {"left": dx < 0, "right": dx > 0, "up": dy < 0, "down": dy > 0}[DIRECTION_NAMES[e["directions"][i]]]


def test_clip_captions_name_the_motion_of_each_clip():
    # Fast objects in a long video bounce several times, so many clips move against the video's caption.
    config = MovingShapesConfig(num_frames=40, resolution=24, min_speed=0.05, max_speed=0.08)
    reversed_clips = 0
    for index in range(10):
        e = generate_example(1, index, config)
        n = int(e["num_objects"])
        assert clip_caption(e, np.arange(8)) == e["caption"]
        for start in range(0, 36, 3):
            indices = np.array([start, start + 2, start + 4])
            words = clip_caption(e, indices).replace(",", "").split()
            assert words[1::5] == [COLOUR_NAMES[c] for c in e["colours"][:n]]
            assert words[2::5] == [SHAPES[s] for s in e["shapes"][:n]]
            named = words[4::5]
            for i, direction in enumerate(named):
                step = e["positions"][start + 2, i] - e["positions"][start, i]
                assert np.dot(step, DIRECTIONS[direction]) >= 0, (index, start, i, direction)
            reversed_clips += named != [DIRECTION_NAMES[d] for d in e["directions"][:n]]
    assert reversed_clips > 10


def test_reverse_directions():
    assert reverse_directions("a red circle moves left, a blue square moves up") == "a red circle moves right, a blue square moves down"
    assert reverse_directions("upright, leftover: down right") == "upright, leftover: up left"


def test_make_clip_captions_the_sampled_clip():
    example = {"video": np.zeros((10, 8, 8, 3), np.uint8), "caption": "unused"}
    config = ClipConfig(num_frames=3, resolution=8, stride_range=(1, 3))
    for seed in range(6):
        clip = make_clip(example, config, np.random.default_rng(seed), clip_caption=lambda e, idx: f"moves left from {idx[0]}")
        start = clip["frame_indices"][0]
        assert clip["caption"] == (f"moves right from {start}" if clip["flipped"] else f"moves left from {start}")


def test_frame_indices_follow_the_reference_rule():
    rng = np.random.default_rng(0)
    idx = sample_frame_indices(100, 16, 3, rng)
    assert len(idx) == 16 and idx[-1] - idx[0] == 45 and (np.diff(idx) == 3).all()
    short = sample_frame_indices(10, 16, 5, rng)  # clip_len = min(10, 76): the whole video
    assert short[0] == 0 and short[-1] == 9


def test_flip_mirrors_the_clip_and_swaps_directions():
    example = {"video": generate_example(0, 1, SMALL)["video"], "caption": "a red circle moves left, a blue square moves right"}
    config = ClipConfig(num_frames=4, resolution=24, stride_range=(2, 2))
    for seed in range(10):
        clip = make_clip(example, config, np.random.default_rng(seed))
        frames = example["video"][clip["frame_indices"]]
        expected = frames[:, :, ::-1] if clip["flipped"] else frames
        np.testing.assert_allclose(clip["video"], expected / 127.5 - 1.0, atol=1e-6)
        flipped_caption = "a red circle moves right, a blue square moves left"
        assert clip["caption"] == (flipped_caption if clip["flipped"] else example["caption"])
        assert clip["frame_stride"] == 2
    assert swap_left_right("left, right, leftover") == "right, left, leftover"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("moving_shapes"))
    settings = dict(num_frames=8, resolution=16, train_examples=24, test_examples=4)
    build_moving_shapes(data_dir, **settings)
    return data_dir, settings


def test_tfds_build_and_load_round_trip(built):
    data_dir, settings = built
    source = load_moving_shapes(data_dir, "train", **settings)
    assert len(source) == 24
    expected = {generate_example(0, i, MovingShapesConfig(num_frames=8, resolution=16))["caption"] for i in range(24)}
    assert {source[i]["caption"].decode() for i in range(24)} == expected
    assert len(load_moving_shapes(data_dir, "test", **settings)) == 4
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_moving_shapes(data_dir + "/missing", **settings)
    with pytest.raises(FileNotFoundError, match="not built"):
        load_moving_shapes(data_dir, **{**settings, "seed": 7})


def test_object_sizes_and_speeds_are_dataset_settings(built):
    data_dir, settings = built
    slow = dict(settings, train_examples=6, min_speed=0.01, max_speed=0.02, min_radius=0.2, max_radius=0.25)
    build_moving_shapes(data_dir, **slow)
    source = load_moving_shapes(data_dir, "train", **slow)
    assert len(source) == 6 and len(load_moving_shapes(data_dir, "train", **settings)) == 24  # side by side
    for i in range(6):
        example = source[i]
        n = int(example["num_objects"])
        steps = np.abs(np.diff(example["positions"][:, :n], axis=0)).max(axis=-1)  # (T-1, n), one axis moves
        speeds = np.median(steps, axis=0) / 16  # bounces shorten a few steps
        assert np.all((speeds >= 0.01 - 1e-4) & (speeds <= 0.02 + 1e-4)), speeds
        assert example["masks"][0, :n].sum(axis=(-2, -1)).max() >= 0.2**2 * 16**2  # radius >= 0.2 * 16 px
    with pytest.raises(ValueError, match="bad radius or speed"):
        build_moving_shapes(data_dir, **dict(settings, min_speed=0.1, max_speed=0.05))


def test_degraded_videos_are_the_clean_scene_blurred_noised_and_watermarked(built):
    config = MovingShapesConfig(num_frames=6, resolution=32)
    clean, degraded = (generate_example(3, 1, dataclasses.replace(config, quality=q)) for q in ("clean", "degraded"))
    assert degraded["caption"] == clean["caption"]
    np.testing.assert_array_equal(degraded["positions"], clean["positions"])
    np.testing.assert_array_equal(degraded["masks"], clean["masks"])
    np.testing.assert_array_equal(generate_example(3, 1, dataclasses.replace(config, quality="degraded"))["video"], degraded["video"])
    difference = degraded["video"].astype(float) - clean["video"].astype(float)
    mark = watermark(32).astype(bool)
    assert 0.05 < mark.mean() < 0.2
    free = ~clean["masks"].any(axis=1)  # pixels no object covers, (T, S, S)
    # Background without the watermark: zero-mean noise of about NOISE_STD (blur keeps flat regions).
    away = free & ~mark[None] & ~np.roll(mark, 2, axis=0)[None] & ~np.roll(mark, 2, axis=1)[None]
    assert abs(difference[away].mean()) < 1.5 and 0.7 * NOISE_STD < difference[away].std() < 1.3 * NOISE_STD
    # Under the watermark the frame moves towards white.
    assert difference[free & mark[None]].mean() > 0.25 * WATERMARK_OPACITY * 255
    # The blur softens edges (less gradient energy; total variation across a step edge stays).
    blurred = gaussian_blur(clean["video"].astype(float), BLUR_SIGMA)
    assert np.square(np.diff(blurred, axis=2)).mean() < 0.7 * np.square(np.diff(clean["video"].astype(float), axis=2)).mean()
    settings = dict(num_frames=8, resolution=16, train_examples=4, test_examples=2, quality="degraded")
    build_moving_shapes(built[0], **settings)
    assert load_moving_shapes(built[0], "train", **settings)[0]["video"].shape == (8, 16, 16, 3)
    with pytest.raises(ValueError, match="quality"):
        MovingShapesConfig(quality="blurry")
    # A stronger blur (blur_sigma) is a different dataset: its own name, softer edges, same scene.
    stronger = generate_example(3, 1, dataclasses.replace(config, quality="degraded", blur_sigma=2 * BLUR_SIGMA))
    np.testing.assert_array_equal(stronger["masks"], clean["masks"])
    edges = lambda video: np.square(np.diff(video.astype(float), axis=2))[:, ~mark[:, 1:] & ~mark[:, :-1]].mean()
    assert edges(stronger["video"]) < 0.8 * edges(degraded["video"])
    assert builder_config(**settings, blur_sigma=1.5).name == builder_config(**settings).name + "_blur1.5"
    with pytest.raises(ValueError, match="blur_sigma"):
        MovingShapesConfig(blur_sigma=0.0)


def test_hosts_see_their_rows_of_the_same_global_batches_and_resume_exactly(built):
    data_dir, settings = built
    source = load_moving_shapes(data_dir, "train", **settings)
    config = ClipConfig(num_frames=4, resolution=16)
    single = iter(training_dataset(source, config, 4, seed=1))
    hosts = [iter(training_dataset(source, config, 4, seed=1, shard_index=h, shard_count=2)) for h in range(2)]
    for _ in range(8):  # 32 clips: more than one epoch
        whole = next(single)
        parts = [next(h) for h in hosts]
        np.testing.assert_array_equal(np.concatenate([p["video"] for p in parts]), whole["video"])
        assert sum((p["caption"] for p in parts), []) == whole["caption"]
    state = hosts[0].get_state()
    following = [next(hosts[0])["video"] for _ in range(2)]
    resumed = iter(training_dataset(source, config, 4, seed=1, shard_index=0, shard_count=2))
    resumed.set_state(state)
    for want in following:
        np.testing.assert_array_equal(next(resumed)["video"], want)


def test_worker_processes_give_the_same_batches_and_resume(built):
    data_dir, settings = built
    source = load_moving_shapes(data_dir, "train", **settings)
    config = ClipConfig(num_frames=4, resolution=16)
    count_words = dict(caption_transform=lambda captions: np.array([len(c.split()) for c in captions]), caption_key="words")
    in_process = iter(training_dataset(source, config, 4, seed=1, **count_words))
    workers = iter(training_dataset(source, config, 4, seed=1, num_workers=2, **count_words))
    try:
        for _ in range(4):
            want, got = next(in_process), next(workers)
            np.testing.assert_array_equal(got["video"], want["video"])
            np.testing.assert_array_equal(got["words"], want["words"])
        state = workers.get_state()
        following = next(workers)["video"]
    finally:
        workers.close()
    resumed = iter(training_dataset(source, config, 4, seed=1, num_workers=2, **count_words))
    try:
        resumed.set_state(state)
        np.testing.assert_array_equal(next(resumed)["video"], following)
    finally:
        resumed.close()
