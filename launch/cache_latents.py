"""Encodes an experiment's training videos once into a latent cache; training then reads latents.

  python launch/cache_latents.py --config=configs/consisti2v_256.py --out=data/webvid_latents \
      --config.data.source=videos --config.data.dir=data/video_text/webvid/1.0.0 --clips_per_video=2
  python launch/train.py --config=configs/consisti2v_256.py --workdir=runs/x \
      --config.data.source=latents --config.data.dir=data/webvid_latents

The codec (VAE) and caption encoder are the config's, the clips are sampled with its data settings
(stride, flip, crop drawn here, clips_per_video times per video) and encoded over the local devices.
Each record holds the clip's latents, its caption conditioning (CLIP embeddings for a frozen
encoder, token ids for a trainable one), the first-frame latent and the stride; training checks that
its config matches what the cache was written with. Multi-host: run on every host (--distributed);
each writes its own file.
"""

from __future__ import annotations

import json
import logging

from absl import app, flags
from ml_collections import config_flags

from jax_i2v.cli import exit_on_user_error, parse_flags_with_config
from jax_i2v.data.encode_latents import encode_latents
from jax_i2v.data.latent_cache import LATENT_DTYPES

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py)", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "the cache folder to write")
_CLIPS = flags.DEFINE_integer("clips_per_video", 1, "clips drawn from each video (each with its own stride, start, flip, crop)")
_SEED = flags.DEFINE_integer("seed", 0, "seeds the clip draws and the VAE posterior samples")
_BATCH = flags.DEFINE_integer("batch_size", 8, "clips encoded at once on this host")
_DTYPE = flags.DEFINE_enum("dtype", "float16", LATENT_DTYPES, "storage dtype of the latents")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (one process per host)")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if _DISTRIBUTED.value:
        import jax

        jax.distributed.initialize()
    with exit_on_user_error():
        metadata = encode_latents(
            _CONFIG.value, _OUT.value, clips_per_video=_CLIPS.value, seed=_SEED.value, batch_size=_BATCH.value, dtype=_DTYPE.value
        )
    print(json.dumps({"out": _OUT.value, "count": metadata["count"], "latent_shape": metadata["latent_shape"], "dtype": metadata["dtype"]}))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_with_config)
