"""The smallest MCM setup (a `configs/micro.py` teacher): for tests and smoke runs of launch/distill.py."""

import os

from jax_i2v.config_utils import load_config


def get_config():
    config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mcm_tiny.py"))
    config.images.dataset.update(train_examples=8, test_examples=2)
    config.backbone.update(image_size=16, patch_size=4, width=32, depth=2, heads=2, hooks=(0, 1))
    config.mcm.update(lora_rank=4, lora_alpha=4.0)
    config.distill.update(batch_size=4, steps=4, log_every=1, checkpoint_every=2)
    return config
