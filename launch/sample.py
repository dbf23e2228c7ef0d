"""Samples videos from a first image and a caption; writes GIF and MP4.

  python launch/sample.py --config configs/tiny.py --random-params \
      --image first.png --prompt "a red circle moves left" --out samples/demo

  python launch/sample.py --checkpoint runs/tiny --image first.png --prompt "a red circle moves left" --out samples/tiny

  python launch/sample.py --pretrained /data/ConsistI2V --image first.png --prompt "a dog runs" --out samples/dog

Params come from a diffusers pipeline folder (`--pretrained DIR`: the released ConsistI2V's
layout, with its VAE, CLIP text encoder and scheduler settings), a training run (`--checkpoint
WORKDIR`, or one `WORKDIR/checkpoints/STEP`, or a `export_params` folder; the model and caption
encoder are rebuilt from the config saved with it, EMA params preferred), a diffusers-layout UNet
folder alone (`--unet path/to/unet`; captions then go through the parameter-free hashed word
encoder), or, for smoke runs, are random (`--random-params`). Sampling settings not given as flags
come from the config's `sampling` section (a run's, or `--config`'s), as launch/evaluate.py takes
them, else the release's. A progress bar counts denoising steps; the files written, the seconds
taken and those spent compiling (`compile_s`) are printed as JSON on the last line. Compiled
programs are kept in `--compilation-cache` (JAX's persistent cache), so a second run skips
compiling them; the sampler with the progress bar is not among them (its host callback cannot be
cached): pass --no-progress for that.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import ml_collections

from jax_i2v import media
from jax_i2v.cli import add_sampling_flags, exit_on_user_error, quiet_library_logs
from jax_i2v.compilation_cache import compile_time, enable_compilation_cache, user_cache_dir
from jax_i2v.config_utils import attention_setting, latent_codec, load_config, unet_config
from jax_i2v.convert import load_unet
from jax_i2v.diffusion.camera_motion import CAMERA_MOTIONS
from jax_i2v.diffusion.ddim import DDIMConfig
from jax_i2v.diffusion.lcm import LCMConfig
from jax_i2v.models.attention import IMPLEMENTATIONS
from jax_i2v.models.unet import build_unet, random_params
from jax_i2v.pipeline import (
    SAMPLING_DEFAULTS,
    I2VPipeline,
    check_guidance_was_trained,
    frame_stride_from_config,
    noise_alpha_from_config,
    sampling_kwargs,
    sampling_settings,
    save_videos,
    scheduler_from_config,
)
from jax_i2v.text import HashedWordEncoder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument("--config", help="ml_collections config (configs/*.py); gives the UNet and default sizes")
    weights = src.add_mutually_exclusive_group(required=True)
    weights.add_argument("--pretrained", help="diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, ...)")
    weights.add_argument("--checkpoint", help="training workdir, one of its checkpoints/STEP folders, or a params export")
    weights.add_argument("--unet", help="diffusers-layout unet/ folder (config.json + safetensors)")
    weights.add_argument("--random-params", action="store_true", help="random weights (smoke tests only)")
    src.add_argument("--no-ema", action="store_true", help="with --checkpoint: the raw params even if EMA params were kept")
    src.add_argument("--attention", choices=IMPLEMENTATIONS, help="attention kernels (default: the config's model.attention, else auto)")
    src.add_argument("--text-len", type=int, help="caption length in tokens (default: config data.text_len, else 77)")

    io = p.add_argument_group("input / output")
    io.add_argument("--image", required=True, help="first frame (any image file PIL reads)")
    io.add_argument("--prompt", default="")
    io.add_argument("--negative-prompt", default="")
    io.add_argument("--out", required=True, help="output prefix: writes PREFIX.gif and PREFIX.mp4")
    io.add_argument("--formats", nargs="+", choices=media.VIDEO_FORMATS, default=list(media.VIDEO_FORMATS))
    io.add_argument("--fps", type=float, default=8.0)

    s = p.add_argument_group("sampling")
    s.add_argument("--frames", type=int, help="frames per chunk including the first (default: config, else 16)")
    s.add_argument("--height", type=int)
    s.add_argument("--width", type=int)
    s.add_argument(
        "--sampler",
        choices=("ddim", "lcm"),
        help="lcm: the multistep consistency sampler of distilled "
        "students (default: the model's, DDIM unless its scheduler config is an LCMScheduler's)",
    )
    s.add_argument("--lcm-timestep-scaling", type=float, default=4.0, help="with --sampler lcm (MCM trains with 4)")
    add_sampling_flags(s, fallbacks={"steps": "50 with DDIM, 4 with LCM", "text_guidance": "7.5 with DDIM, 1 (none) with LCM"})
    s.add_argument("--frame-stride", type=float, help="default: the middle of the config's data.stride_range, else 3")
    s.add_argument("--camera-motion", choices=CAMERA_MOTIONS)
    s.add_argument("--chunks", type=int, default=1, help="autoregressive chunks; each adds frames - 1 frames")
    s.add_argument("--num-videos", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true", help="no progress bar (a sampler with one is compiled every run)")
    s.add_argument(
        "--compilation-cache",
        default="",
        metavar="DIR",
        help=f"JAX's persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR, else {user_cache_dir()}; none: off)",
    )
    args = p.parse_args(argv)
    if args.random_params and not args.config:
        p.error("--random-params needs --config for the architecture")
    if (args.checkpoint or args.pretrained) and (args.config or args.text_len):
        p.error("--checkpoint and --pretrained bring their own config; drop --config / --text-len")
    if args.camera_motion and args.frameinit == "none":
        p.error("--camera-motion works through FrameInit; choose a --frameinit filter")
    return args


def build_pipeline(args) -> tuple[I2VPipeline, ml_collections.ConfigDict | None, bool]:
    """The pipeline, the config that gives its defaults (if any), and whether that config is the
    one the weights were trained with (run checkpoints)."""
    if args.pretrained:
        return I2VPipeline.from_pretrained(args.pretrained, attention=args.attention or "auto"), None, False
    if args.checkpoint:
        pipe, config = I2VPipeline.from_checkpoint(args.checkpoint, use_ema=not args.no_ema, attention=args.attention)
        return pipe, config, True
    config = load_config(args.config) if args.config else None
    if args.unet:
        unet, params = load_unet(args.unet, attention=args.attention or "auto")
    else:
        unet = build_unet(unet_config(config), attention=args.attention or attention_setting(config))
        params = random_params(unet, args.seed)
    text_len = args.text_len or (config.get("data", {}).get("text_len", 77) if config is not None else 77)
    encoder = HashedWordEncoder(text_len, unet.config.cross_attention_dim)
    if config is None:
        return I2VPipeline(unet, params, text_encoder=encoder), None, False
    return I2VPipeline(unet, params, text_encoder=encoder, vae=latent_codec(config), scheduler=scheduler_from_config(config)), config, False


def resolve_sampling(args, pipe: I2VPipeline, config, trained: bool) -> dict:
    """Flags over the config's `sampling` section over the sampler's defaults. A config written
    for the other sampler (`--sampler` switched) gives only its noise alpha."""
    consistency = isinstance(pipe.scheduler, LCMConfig)
    defaults = dict(SAMPLING_DEFAULTS, steps=4 if consistency else 50, text_guidance=1.0 if consistency else 7.5)
    flags = {key: getattr(args, key) for key in SAMPLING_DEFAULTS}
    sampling_config = config
    if config is not None and (config.get("sampling", {}).get("sampler", "ddim") == "lcm") != consistency:
        flags["noise_alpha"] = flags["noise_alpha"] if flags["noise_alpha"] is not None else noise_alpha_from_config(config)
        sampling_config = None
    settings = sampling_settings(sampling_config, flags, defaults)
    if trained:
        check_guidance_was_trained(config, settings["text_guidance"], settings["image_guidance"])
    return settings


def run(args) -> dict:
    pipe, config, trained = build_pipeline(args)
    if args.sampler == "lcm" and not isinstance(pipe.scheduler, LCMConfig):
        pipe = dataclasses.replace(pipe, scheduler=LCMConfig.with_schedule_of(pipe.scheduler, timestep_scaling=args.lcm_timestep_scaling))
    elif args.sampler == "ddim" and isinstance(pipe.scheduler, LCMConfig):
        pipe = dataclasses.replace(pipe, scheduler=DDIMConfig(**pipe.scheduler.schedule_settings()))
    settings = resolve_sampling(args, pipe, config, trained)
    data = config.get("data", {}) if config is not None else {}
    frames = args.frames or data.get("frames") or pipe.unet.config.n_frames or 16
    height = args.height or data.get("resolution") or pipe.default_size
    width = args.width or data.get("resolution") or pipe.default_size
    frame_stride = args.frame_stride or (frame_stride_from_config(config) if "stride_range" in data else 3)
    media.check_video_size(height, width, args.formats)
    if args.camera_motion and settings["frameinit"] == "none":
        raise ValueError("--camera-motion works through FrameInit, which this config's sampling switches off; pass --frameinit")
    start = time.perf_counter()
    video = pipe(
        args.image,
        args.prompt,
        args.negative_prompt,
        num_frames=frames,
        height=height,
        width=width,
        frame_stride=frame_stride,
        camera_motion=args.camera_motion,
        chunks=args.chunks,
        num_videos=args.num_videos,
        seed=args.seed,
        show_progress=not args.no_progress,
        **sampling_kwargs(settings),
    )
    seconds = time.perf_counter() - start
    paths = save_videos(video, args.out, args.formats, args.fps)
    return {
        "files": paths,
        "shape": list(video.shape),
        "seconds": round(seconds, 2),
        "attention": pipe.unet.attention_implementation.as_dict(),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    quiet_library_logs()
    enable_compilation_cache(args.compilation_cache, user_cache_dir())
    with compile_time() as compile_seconds, exit_on_user_error():
        result = run(args)
    result["compile_s"] = round(compile_seconds[0], 2)
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
