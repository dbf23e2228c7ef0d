"""Trains the benchmark's video feature encoder (jax_i2v/eval/video_features.py) on moving-shapes
clips and writes its weights (by default the copy shipped with the package).

  python launch/train_video_features.py --steps=1000 --out=jax_i2v/eval/weights/video_features.safetensors

Clips are the first F frames at a random stride 1-3 of freshly generated videos (seed 0 for
training, the test split's seed stream for the reported held-out accuracy). Half the videos follow
the generator's defaults (1-3 objects crossing the frame), half the `data.dataset` settings of
each `--dataset_configs` file (comma-separated; by default configs/tiny.py: one object moving about its radius), so
the features tell small motions from none. Prints one JSON line with the held-out accuracy of each
attribute head, overall and per dataset setting.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import flags

from jax_i2v.cli import define_seed_flag, exit_on_user_error, parse_launcher_flags
from jax_i2v.config_utils import load_config
from jax_i2v.data.moving_shapes import MovingShapesConfig, generate_example
from jax_i2v.eval.video_features import INPUT_SIZE, MAX_OBJECTS, WEIGHTS, VideoFeatureNet, attribute_labels, save_weights, to_model_input

TEST_SEED = 1_000_003
MAX_STRIDE = 3

FLAGS = flags.FlagValues()
_STEPS = flags.DEFINE_integer("steps", 1000, "training steps", lower_bound=1, flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "clips per step", lower_bound=1, flag_values=FLAGS)
_TRAIN_VIDEOS = flags.DEFINE_integer("train_videos", 2000, "videos generated for training", lower_bound=1, flag_values=FLAGS)
_TEST_VIDEOS = flags.DEFINE_integer("test_videos", 256, "held-out videos the accuracy is measured on", lower_bound=1, flag_values=FLAGS)
_FRAMES = flags.DEFINE_integer("frames", 8, "frames per clip", lower_bound=2, flag_values=FLAGS)
_LR = flags.DEFINE_float("lr", 2e-3, "peak learning rate (cosine decay)", flag_values=FLAGS)
_SEED = define_seed_flag("picks the training videos, strides, batches and initial weights", FLAGS)
_OUT = flags.DEFINE_string("out", WEIGHTS, "the weights file to write", flag_values=FLAGS)
_DATASET_CONFIGS = flags.DEFINE_list(
    "dataset_configs", ["configs/tiny.py"], "config files whose data.dataset settings make half the clips", flag_values=FLAGS
)


def generator_settings(frames: int, dataset_configs: list[str]) -> list[MovingShapesConfig]:
    """The generator's defaults, then each config file's `data.dataset`, long enough for stride 3."""
    length = (frames - 1) * MAX_STRIDE + 1
    scene_fields = {f.name for f in dataclasses.fields(MovingShapesConfig)} - {"num_frames", "resolution"}
    settings = [MovingShapesConfig(num_frames=length, resolution=INPUT_SIZE)]
    for path in dataset_configs:
        dataset = load_config(path).data.dataset
        settings.append(
            MovingShapesConfig(num_frames=length, resolution=INPUT_SIZE, **{k: v for k, v in dataset.items() if k in scene_fields})
        )
    return settings


def _padded(values: np.ndarray) -> np.ndarray:
    """Per-object metadata of any max_objects -> MAX_OBJECTS slots (padding -1)."""
    values = values[:MAX_OBJECTS]
    return np.pad(values, (0, MAX_OBJECTS - len(values)), constant_values=-1)


def make_clips(seed: int, count: int, frames: int, rng: np.random.Generator, settings: list[MovingShapesConfig]):
    """(videos (count, F, S, S, 3) uint8, labels, setting index per video): half the videos from
    settings[0], the rest shared evenly by the others."""
    videos, labels, kinds = [], [], []
    for index in tqdm.trange(count, desc=f"generating (seed {seed})", unit="video"):
        kind = 0 if index % 2 == 0 or len(settings) == 1 else 1 + (index // 2) % (len(settings) - 1)
        example = generate_example(seed, index, settings[kind])
        stride = int(rng.integers(1, MAX_STRIDE + 1))
        videos.append(example["video"][: (frames - 1) * stride + 1 : stride])
        labels.append(tuple(_padded(example[k]) for k in ("shapes", "colours", "directions")))
        kinds.append(kind)
    shapes, colours, directions = (np.stack(x) for x in zip(*labels))
    return np.stack(videos), attribute_labels(shapes, colours, directions), np.array(kinds)


def train_features(
    settings: list[MovingShapesConfig],
    setting_names: list[str],
    steps: int = 1000,
    batch_size: int = 32,
    train_videos: int = 2000,
    test_videos: int = 256,
    frames: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    out: str = WEIGHTS,
) -> dict:
    """Trains the feature encoder on clips of `settings` (from `generator_settings(frames, ...)`),
    writes its weights to `out` and returns the held-out accuracies, per setting by name."""
    rng = np.random.default_rng(seed)
    train_clips, train_labels, _ = make_clips(seed, train_videos, frames, rng, settings)
    test_clips, test_labels, test_kinds = make_clips(TEST_SEED, test_videos, frames, rng, settings)

    model = VideoFeatureNet()
    params = model.init(jax.random.key(seed), to_model_input(train_clips[:1]))["params"]
    optimizer = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    opt_state = optimizer.init(params)

    def loss_fn(params, videos, labels):
        _, logits = model.apply({"params": params}, videos)
        losses = [optax.softmax_cross_entropy_with_integer_labels(logits[k], labels[k]).mean() for k in logits]
        return sum(losses)

    @jax.jit
    def train_step(params, opt_state, videos, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, videos, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, videos):
        _, logits = model.apply({"params": params}, videos)
        return {k: v.argmax(-1) for k, v in logits.items()}

    start = time.perf_counter()
    bar = tqdm.trange(steps, desc="training", unit="step")
    for step in bar:
        index = rng.integers(0, len(train_clips), batch_size)
        batch = {k: jnp.asarray(v[index]) for k, v in train_labels.items()}
        params, opt_state, loss = train_step(params, opt_state, to_model_input(train_clips[index]), batch)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    predictions = predict(params, to_model_input(test_clips))
    correct = {k: np.asarray(v) == test_labels[k] for k, v in predictions.items()}
    accuracy = {k: float(v.mean()) for k, v in correct.items()}
    by_setting = {name: {k: float(v[test_kinds == i].mean()) for k, v in correct.items()} for i, name in enumerate(setting_names)}
    save_weights(out, params)
    return {
        "weights": out,
        "held_out_accuracy": accuracy,
        "held_out_accuracy_by_setting": by_setting,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv=None) -> dict:
    """Trains for the command-line arguments `argv` (default: sys.argv[1:])."""
    parse_launcher_flags(FLAGS, argv, __doc__)
    with exit_on_user_error():
        settings = generator_settings(_FRAMES.value, _DATASET_CONFIGS.value)
    result = train_features(
        settings,
        ["defaults", *_DATASET_CONFIGS.value],
        steps=_STEPS.value,
        batch_size=_BATCH_SIZE.value,
        train_videos=_TRAIN_VIDEOS.value,
        test_videos=_TEST_VIDEOS.value,
        frames=_FRAMES.value,
        lr=_LR.value,
        seed=_SEED.value,
        out=_OUT.value,
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
