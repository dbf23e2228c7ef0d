"""configs/tiny.py without first-frame spatial attention: the first frame is still prepended to the
noisy frames (the UNet input), but spatial self-attention no longer gets the first frame's keys."""

import os

from jax_i2v.config_utils import load_config


def get_config():
    config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tiny.py"))
    config.unet.first_frame_condition_mode = "input_only"
    return config
