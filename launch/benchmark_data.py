"""Input-pipeline throughput of an experiment config on this process: one JSON line.

  python launch/benchmark_data.py --config=configs/tiny.py --batches=50 \
      --config.data.source=videos --config.data.dir=data/video_text/webvid/1.0.0 --config.data.read_threads=8

Reads `--batches` batches of this host's rows (after `--warmup` batches, which also start Grain's
threads and workers) exactly as training would, without the model, and reports clips/s, the MB/s
of the clips it delivers (float32 pixels, or latents from a cache) and, for a built video dataset,
the MB/s of encoded video read (the mean file size of the first 256 videos times clips/s: every
clip reads its whole file).
"""

from __future__ import annotations

import json
import logging
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jax_i2v.cli import exit_on_user_error, parse_flags_with_config
from jax_i2v.config_utils import latent_codec, text_conditioning
from jax_i2v.data.media_tfds import load_media_dataset
from jax_i2v.train.inputs import training_inputs

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py)", lock_config=True)
_BATCHES = flags.DEFINE_integer("batches", 20, "batches timed")
_WARMUP = flags.DEFINE_integer("warmup", 2, "batches read before timing")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "global batch size (default: config train.batch_size)")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    config = _CONFIG.value
    with exit_on_user_error():
        if _BATCHES.value < 1 or _WARMUP.value < 0:
            raise ValueError(f"need --batches >= 1 and --warmup >= 0, got {_BATCHES.value}, {_WARMUP.value}")
        batch_size = _BATCH_SIZE.value or config.train.batch_size
        text = text_conditioning(config.get("text_encoder"), config.data.text_len, config.unet.cross_attention_dim)
        inputs = training_inputs(config, batch_size, config.train.seed, text, latent_codec(config))
        for _ in range(_WARMUP.value):
            next(inputs.iterator)
        clips, delivered = 0, 0
        started = time.perf_counter()
        for _ in range(_BATCHES.value):
            batch = next(inputs.iterator)
            arrays = batch["latents"] if inputs.encoded else batch["video"]
            clips += len(arrays)
            delivered += np.asarray(arrays).nbytes
        seconds = time.perf_counter() - started
        result = {
            "process": jax.process_index(),
            "source": config.data.get("source", "moving_shapes"),
            "clips": clips,
            "seconds": round(seconds, 3),
            "clips_per_sec": clips / seconds,
            "delivered_mb_per_sec": delivered / seconds / 1e6,
            "read_threads": config.data.get("read_threads", 16),
            "num_workers": config.data.get("num_workers", 0),
        }
        if result["source"] == "videos":
            source = load_media_dataset(config.data.dir)
            sizes = [len(source[i]["video"]) for i in range(min(len(source), 256))]
            result["encoded_mb_per_sec"] = float(np.mean(sizes)) * clips / seconds / 1e6
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_with_config)
