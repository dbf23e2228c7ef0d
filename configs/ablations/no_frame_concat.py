"""configs/tiny.py without frame-concat conditioning: the UNet never sees the first frame (no
prepended frame, so no first-frame attention either); the image reaches the video only through
FrameInit at sampling."""

import os

from jax_i2v.config_utils import load_config


def get_config():
    config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tiny.py"))
    config.unet.first_frame_condition_mode = "none"
    return config
