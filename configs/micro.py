"""The smallest end-to-end setup (one UNet level, 16x16 pixels as 8x8x12 latents, 4 frames): for
tests and smoke runs of the training loop, where compile time matters more than capacity."""

import os

from jax_i2v.config_utils import load_config
from jax_i2v.data.moving_shapes import MovingShapesConfig


def get_config():
    config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py"))
    config.codec.factor = 2
    config.unet.update(
        in_channels=12,
        out_channels=12,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        block_out_channels=(32,),
        attention_head_dim=(2,),
        sample_size=8,
        n_frames=4,
    )
    config.data.update(frames=4, resolution=16, latent_size=8, latent_channels=12, text_len=6)
    # The generator's default sizes and speeds: tiny's slow objects move under a pixel in 16x16 clips,
    # too little for the benchmark's ground-truth checks.
    generator_defaults = {k: getattr(MovingShapesConfig, k) for k in ("min_radius", "max_radius", "min_speed", "max_speed")}
    config.data.dataset.update(num_frames=8, resolution=16, train_examples=64, test_examples=4, **generator_defaults)
    config.train.update(
        batch_size=4, steps=20, log_every=1, checkpoint_every=5, sample_every=0, sample_steps=3, ema_decay=0.0, time_limit_minutes=0.0
    )
    config.optim.update(warmup_steps=0, schedule="constant", learning_rate=1e-3)
    return config
