"""Trains the benchmark's video feature encoder (jax_i2v/eval/video_features.py) on moving-shapes
clips and writes its weights (by default the copy shipped with the package).

  python launch/train_video_features.py --steps 1000 --out jax_i2v/eval/weights/video_features.safetensors

Clips are the first F frames at a random stride 1-3 of freshly generated videos (seed 0 for
training, the test split's seed stream for the reported held-out accuracy). Half the videos follow
the generator's defaults (1-3 objects crossing the frame), half the `data.dataset` settings of
each `--dataset-configs` file (by default configs/tiny.py: one object moving about its radius), so
the features tell small motions from none. Prints one JSON line with the held-out accuracy of each
attribute head, overall and per dataset setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jax_i2v.cli import exit_on_user_error
from jax_i2v.config_utils import load_config
from jax_i2v.data.moving_shapes import MovingShapesConfig, generate_example
from jax_i2v.eval.video_features import INPUT_SIZE, MAX_OBJECTS, WEIGHTS, VideoFeatureNet, attribute_labels, save_weights, to_model_input

TEST_SEED = 1_000_003
MAX_STRIDE = 3


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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-videos", type=int, default=2000)
    p.add_argument("--test-videos", type=int, default=256)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=WEIGHTS)
    p.add_argument(
        "--dataset-configs", nargs="*", default=["configs/tiny.py"], help="config files whose data.dataset settings make half the clips"
    )
    args = p.parse_args(argv)

    with exit_on_user_error():
        settings = generator_settings(args.frames, args.dataset_configs)
    rng = np.random.default_rng(args.seed)
    train_videos, train_labels, _ = make_clips(args.seed, args.train_videos, args.frames, rng, settings)
    test_videos, test_labels, test_kinds = make_clips(TEST_SEED, args.test_videos, args.frames, rng, settings)

    model = VideoFeatureNet()
    params = model.init(jax.random.key(args.seed), to_model_input(train_videos[:1]))["params"]
    optimizer = optax.adamw(optax.cosine_decay_schedule(args.lr, args.steps), weight_decay=1e-4)
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
    bar = tqdm.trange(args.steps, desc="training", unit="step")
    for step in bar:
        index = rng.integers(0, len(train_videos), args.batch_size)
        batch = {k: jnp.asarray(v[index]) for k, v in train_labels.items()}
        params, opt_state, loss = train_step(params, opt_state, to_model_input(train_videos[index]), batch)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    predictions = predict(params, to_model_input(test_videos))
    correct = {k: np.asarray(v) == test_labels[k] for k, v in predictions.items()}
    accuracy = {k: float(v.mean()) for k, v in correct.items()}
    by_setting = {
        ("defaults", *args.dataset_configs)[i]: {k: float(v[test_kinds == i].mean()) for k, v in correct.items()}
        for i in range(len(settings))
    }
    save_weights(args.out, params)
    result = {
        "weights": args.out,
        "held_out_accuracy": accuracy,
        "held_out_accuracy_by_setting": by_setting,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
