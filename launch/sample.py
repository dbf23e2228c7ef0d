"""Samples videos from a first image and a caption; writes GIF and MP4.

  python launch/sample.py --config=configs/tiny.py --random_params \
      --image=first.png --prompt="a red circle moves left" --out=samples/demo

  python launch/sample.py --checkpoint=runs/tiny --image=first.png --prompt="a red circle moves left" --out=samples/tiny

  python launch/sample.py --pretrained=/data/ConsistI2V --image=first.png --prompt="a dog runs" --out=samples/dog \
      --sampling.steps=25

Params come from a diffusers pipeline folder (`--pretrained DIR`: the released ConsistI2V's
layout, with its VAE, CLIP text encoder and scheduler settings), a training run (`--checkpoint
WORKDIR`, or one `WORKDIR/checkpoints/STEP`, or a `export_params` folder; the model and caption
encoder are rebuilt from the config saved with it, EMA params preferred), a diffusers-layout UNet
folder alone (`--unet path/to/unet`; captions then go through the parameter-free hashed word
encoder), or, for smoke runs, are random (`--random_params`, with `--config` for the
architecture and --config.KEY=VALUE overrides). Sampling settings (`jax_i2v.pipeline.SamplingConfig`)
not given as --sampling.KEY=VALUE flags come from the config's `sampling` section (a run's, or
`--config`'s), as launch/evaluate.py takes them, else the defaults of the model's sampler;
`--sampling.sampler=lcm` samples a DDIM model with the consistency sampler (4 steps, no guidance
unless given). A progress bar counts denoising steps; the files written, the seconds taken and
those spent compiling (`compile_s`) are printed as JSON on the last line. Compiled programs are
kept in `--compilation_cache` (JAX's persistent cache), so a second run skips compiling them; the
sampler with the progress bar is not among them (its host callback cannot be cached): pass
--noprogress for that.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import ml_collections
from absl import flags
from ml_collections import config_flags

from jax_i2v import media
from jax_i2v.cli import (
    define_attention_flag,
    define_compilation_cache_flag,
    define_sampling_flags,
    define_seed_flag,
    exit_on_user_error,
    parse_launcher_flags,
    quiet_library_logs,
)
from jax_i2v.compilation_cache import compile_time, enable_compilation_cache, user_cache_dir
from jax_i2v.config_utils import attention_setting, latent_codec
from jax_i2v.config_utils import unet_config as unet_config_of
from jax_i2v.convert import load_unet
from jax_i2v.diffusion.camera_motion import CAMERA_MOTIONS
from jax_i2v.models.unet import build_unet, random_params
from jax_i2v.pipeline import I2VPipeline, SamplingConfig, check_guidance_was_trained, save_videos, scheduler_from_config
from jax_i2v.pipeline.i2v import FIRST_FRAME_ENCODINGS
from jax_i2v.text import HashedWordEncoder

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config (configs/*.py) giving the UNet and sizes of --random_params / --unet", flag_values=FLAGS
)
_PRETRAINED = flags.DEFINE_string("pretrained", None, "diffusers pipeline folder (model_index.json, unet/, vae/, ...)", flag_values=FLAGS)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "training workdir, one of its checkpoints/STEP folders, or a params export", flag_values=FLAGS
)
_UNET = flags.DEFINE_string("unet", None, "diffusers-layout unet/ folder (config.json + safetensors)", flag_values=FLAGS)
_RANDOM_PARAMS = flags.DEFINE_bool("random_params", False, "random weights (smoke tests only; needs --config)", flag_values=FLAGS)
_EMA = flags.DEFINE_bool(
    "ema", True, "with --checkpoint: the EMA params when the run kept them (--noema: the raw params)", flag_values=FLAGS
)
_ATTENTION = define_attention_flag(FLAGS, fallback="the config's model.attention, else auto")
_TEXT_LEN = flags.DEFINE_integer("text_len", None, "caption length in tokens (default: config data.text_len, else 77)", flag_values=FLAGS)
_IMAGE = flags.DEFINE_string("image", None, "first frame (any image file PIL reads)", flag_values=FLAGS)
_PROMPT = flags.DEFINE_string("prompt", "", "the caption", flag_values=FLAGS)
_NEGATIVE_PROMPT = flags.DEFINE_string("negative_prompt", "", "the caption guidance steers away from", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "output prefix: writes PREFIX.gif and PREFIX.mp4", flag_values=FLAGS)
_FORMATS = flags.DEFINE_multi_enum("formats", list(media.VIDEO_FORMATS), media.VIDEO_FORMATS, "video formats to write", flag_values=FLAGS)
_FPS = flags.DEFINE_float("fps", 8.0, "frames per second of the written videos", flag_values=FLAGS)
_FRAMES = flags.DEFINE_integer("frames", None, "frames per chunk including the first (default: config, else the UNet's)", flag_values=FLAGS)
_HEIGHT = flags.DEFINE_integer("height", None, "default: config data.resolution, else the UNet's size", flag_values=FLAGS)
_WIDTH = flags.DEFINE_integer("width", None, "default: config data.resolution, else the UNet's size", flag_values=FLAGS)
_CAMERA_MOTION = flags.DEFINE_enum("camera_motion", None, CAMERA_MOTIONS, "camera motion through FrameInit", flag_values=FLAGS)
_CHUNKS = flags.DEFINE_integer("chunks", 1, "autoregressive chunks; each adds frames - 1 frames", lower_bound=1, flag_values=FLAGS)
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 1, "videos, seeds seed, seed + 1, ...", lower_bound=1, flag_values=FLAGS)
_SEED = define_seed_flag("video i's seed is seed + i", FLAGS)
_FIRST_FRAME = flags.DEFINE_enum(
    "first_frame_sample", "sample", FIRST_FRAME_ENCODINGS, "encode the first frame as a posterior sample or its mode", flag_values=FLAGS
)
_SAMPLING = define_sampling_flags(FLAGS)
_PROGRESS = flags.DEFINE_bool("progress", True, "a progress bar (a sampler with one is compiled every run)", flag_values=FLAGS)
_COMPILATION_CACHE = define_compilation_cache_flag(FLAGS)
flags.mark_flags_as_required(["image", "out"], flag_values=FLAGS)


def _check_sources() -> None:
    sources = [
        name for name, value in (("pretrained", _PRETRAINED.value), ("checkpoint", _CHECKPOINT.value), ("unet", _UNET.value)) if value
    ]
    sources += ["random_params"] if _RANDOM_PARAMS.value else []
    if len(sources) != 1:
        raise ValueError(f"give the weights as one of --pretrained, --checkpoint, --unet, --random_params; got {sources or 'none'}")
    if _RANDOM_PARAMS.value and _CONFIG.value is None:
        raise ValueError("--random_params needs --config for the architecture")
    if (_CHECKPOINT.value or _PRETRAINED.value) and (_CONFIG.value is not None or _TEXT_LEN.value):
        raise ValueError("--checkpoint and --pretrained bring their own config; drop --config / --text_len")


def build_pipeline() -> tuple[I2VPipeline, ml_collections.ConfigDict | None, bool]:
    """The pipeline, the config that gives its defaults (if any), and whether that config is the
    one the weights were trained with (run checkpoints)."""
    if _PRETRAINED.value:
        return I2VPipeline.from_pretrained(_PRETRAINED.value, attention=_ATTENTION.value or "auto"), None, False
    if _CHECKPOINT.value:
        pipe, config = I2VPipeline.from_checkpoint(_CHECKPOINT.value, use_ema=_EMA.value, attention=_ATTENTION.value)
        return pipe, config, True
    config = _CONFIG.value
    if _UNET.value:
        unet, params = load_unet(_UNET.value, attention=_ATTENTION.value or "auto")
    else:
        unet = build_unet(unet_config_of(config), attention=_ATTENTION.value or attention_setting(config))
        params = random_params(unet, _SEED.value)
    text_len = _TEXT_LEN.value or (config.get("data", {}).get("text_len", 77) if config is not None else 77)
    encoder = HashedWordEncoder(text_len, unet.config.cross_attention_dim)
    if config is None:
        return I2VPipeline(unet, params, text_encoder=encoder), None, False
    sampling = SamplingConfig.from_config(config)
    pipe = I2VPipeline(unet, params, encoder, vae=latent_codec(config), scheduler=scheduler_from_config(config), sampling=sampling)
    return pipe, config, False


def resolve_sampling(pipe: I2VPipeline, config, trained: bool, given: dict) -> SamplingConfig:
    """The --sampling flags `given` over the pipeline's settings (its config's `sampling` section,
    else its scheduler's defaults); refuses guidance a run was not trained for."""
    sampling = pipe.resolve_sampling(**given)
    if trained:
        check_guidance_was_trained(config, sampling)
    return sampling


def run() -> dict:
    _check_sources()
    pipe, config, trained = build_pipeline()
    sampling = resolve_sampling(pipe, config, trained, _SAMPLING())
    data = config.get("data", {}) if config is not None else {}
    frames = _FRAMES.value or data.get("frames") or pipe.default_num_frames
    height = _HEIGHT.value or data.get("resolution") or pipe.default_size
    width = _WIDTH.value or data.get("resolution") or pipe.default_size
    media.check_video_size(height, width, _FORMATS.value)
    if _CAMERA_MOTION.value and sampling.frameinit == "none":
        raise ValueError("--camera_motion works through FrameInit, which these sampling settings switch off; pass --sampling.frameinit")
    start = time.perf_counter()
    video = pipe(
        _IMAGE.value,
        _PROMPT.value,
        _NEGATIVE_PROMPT.value,
        num_frames=frames,
        height=height,
        width=width,
        camera_motion=_CAMERA_MOTION.value,
        chunks=_CHUNKS.value,
        num_videos_per_prompt=_NUM_VIDEOS.value,
        seed=_SEED.value,
        first_frame_sample=_FIRST_FRAME.value,
        sampling=sampling,
        show_progress=_PROGRESS.value,
    )
    seconds = time.perf_counter() - start
    paths = save_videos(video, _OUT.value, _FORMATS.value, _FPS.value)
    return {
        "files": paths,
        "shape": list(video.shape),
        "seconds": round(seconds, 2),
        "sampling": dataclasses.asdict(sampling),
        "attention": pipe.unet.attention_implementation.as_dict(),
    }


def main(argv=None) -> dict:
    """Samples for the command-line arguments `argv` (default: sys.argv[1:])."""
    parse_launcher_flags(FLAGS, argv, __doc__)
    quiet_library_logs()
    enable_compilation_cache(_COMPILATION_CACHE.value, user_cache_dir())
    with compile_time() as compile_seconds, exit_on_user_error():
        result = run()
    result["compile_s"] = round(compile_seconds[0], 2)
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
