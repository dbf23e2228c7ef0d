"""configs/tiny.py sampled without FrameInit (training is unchanged): the initial noise carries no
low-frequency information from the first frame."""

import os

from jax_i2v.config_utils import load_config


def get_config():
    config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tiny.py"))
    config.sampling.frameinit = "none"
    return config
