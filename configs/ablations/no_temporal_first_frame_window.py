"""configs/tiny.py without the temporal first-frame window: temporal attention sees only the
frames at the same pixel, not the 3x3 first-frame neighbourhood."""

import os

from jax_i2v.config_utils import load_config


def get_config():
    config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tiny.py"))
    config.unet.augment_temporal_attention = False
    return config
