"""Trains the benchmark's video feature encoder (jax_i2v/eval/video_features.py) on moving-shapes
clips and writes its weights (by default the copy shipped with the package).

  python launch/train_video_features.py --steps 600 --out jax_i2v/eval/weights/video_features.safetensors

Clips are the first F frames at a random stride 1-3 of freshly generated videos (seed 0 for
training, the test split's seed stream for the reported held-out accuracy); about five minutes on
two CPU cores. Prints one JSON line with the held-out accuracy of each attribute head.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jax_i2v.data.moving_shapes import MovingShapesConfig, generate_example
from jax_i2v.eval.video_features import WEIGHTS, VideoFeatureNet, attribute_labels, save_weights, to_model_input

TEST_SEED = 1_000_003


def make_clips(seed: int, count: int, frames: int, rng: np.random.Generator, config: MovingShapesConfig):
    videos, labels = [], []
    for index in tqdm.trange(count, desc=f"generating (seed {seed})", unit="video"):
        example = generate_example(seed, index, config)
        stride = int(rng.integers(1, 4))
        videos.append(example["video"][: (frames - 1) * stride + 1 : stride])
        labels.append((example["shapes"], example["colours"], example["directions"]))
    shapes, colours, directions = (np.stack(x) for x in zip(*labels))
    return np.stack(videos), attribute_labels(shapes, colours, directions)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-videos", type=int, default=2000)
    p.add_argument("--test-videos", type=int, default=256)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=WEIGHTS)
    args = p.parse_args(argv)

    config = MovingShapesConfig(num_frames=(args.frames - 1) * 3 + 1, resolution=32)
    rng = np.random.default_rng(args.seed)
    train_videos, train_labels = make_clips(args.seed, args.train_videos, args.frames, rng, config)
    test_videos, test_labels = make_clips(TEST_SEED, args.test_videos, args.frames, rng, config)

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
    accuracy = {k: float((np.asarray(v) == test_labels[k]).mean()) for k, v in predictions.items()}
    save_weights(args.out, params)
    result = {"weights": args.out, "held_out_accuracy": accuracy, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
