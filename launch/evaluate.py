"""Scores a trained model on the synthetic image-to-video benchmark; prints one JSON object.

  python launch/evaluate.py --checkpoint runs/tiny --bench synthetic --num-videos 64 --seed 1

The model (and the caption encoder) come from `--checkpoint` (a training workdir, one of its
checkpoints, or a params export) with the config saved beside it; `--config` replaces that config's
`data` section (e.g. to read the dataset from elsewhere). Videos are sampled from held-out first
frames + captions and scored against the moving-shapes ground truth, next to the ground-truth clips
and static clips (jax_i2v/eval/) and, with `--codec-reference`, the ground truth through the model's
latent codec (what a lossy codec alone costs); `fvd_proxy` is the Frechet distance to the ground-truth clips in
the feature space of the shipped moving-shapes video encoder. `--out FILE` also writes the JSON
(with per-video scores) there; `--gif FILE` writes the first 8 sampled videos (left) beside their
ground truth (right), one row each, magnified 4x.

`--ode-reference TEACHER` adds the model's `reference_distance`: per video, the RMS pixel
difference (/255, frames after the first) to TEACHER's deterministic DDIM video (eta 0,
`--ode-reference-steps`, TEACHER's config guidance) from the same first frame, caption and noise.
For a distilled student that is how far it lands from the probability-flow ODE's end it is
trained to reach; it needs the two configs to draw the same initial noise (noise alpha, FrameInit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from jax_i2v import media
from jax_i2v.cli import add_sampling_flags, exit_on_user_error, quiet_library_logs
from jax_i2v.compilation_cache import enable_compilation_cache, user_cache_dir
from jax_i2v.diffusion.lcm import LCMConfig
from jax_i2v.eval.synthetic_benchmark import codec_round_trip, load_run_and_clips, run_benchmark, sample_clips
from jax_i2v.eval.video_features import VideoFeatures
from jax_i2v.models.attention import IMPLEMENTATIONS
from jax_i2v.pipeline import SAMPLING_DEFAULTS, I2VPipeline, check_guidance_was_trained, sampling_kwargs
from jax_i2v.pipeline import sampling_settings as pipeline_sampling_settings

BENCHES = ("synthetic",)
GIF_ROWS = 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training workdir, checkpoints/STEP folder or params export")
    p.add_argument("--config", help="config file whose data section replaces the checkpoint's (dataset location)")
    p.add_argument("--bench", choices=BENCHES, default="synthetic")
    p.add_argument("--num-videos", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="picks the held-out videos and the sampling noise")
    add_sampling_flags(p)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--attention", choices=IMPLEMENTATIONS, help="attention kernels (default: the run's model.attention, else auto)")
    p.add_argument("--no-model", action="store_true", help="score only the references")
    p.add_argument(
        "--codec-reference",
        action="store_true",
        help="also score the ground truth through the model's latent codec (ground_truth_coded: the ceiling of a lossy codec)",
    )
    p.add_argument("--ode-reference", metavar="TEACHER", help="also score reference_distance to this run's deterministic DDIM videos")
    p.add_argument("--ode-reference-steps", type=int, default=50, help="DDIM steps of the --ode-reference videos (MCM's solver grid: 50)")
    p.add_argument("--out", help="also write the result (with per-video scores) to this JSON file")
    p.add_argument("--gif", help="also write the first 8 sampled videos beside their ground truth to this GIF")
    p.add_argument(
        "--compilation-cache",
        default="",
        metavar="DIR",
        help=f"JAX's persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR, else {user_cache_dir()}; none: off)",
    )
    args = p.parse_args(argv)
    if args.num_videos < 1:
        p.error("--num-videos must be >= 1")
    if args.ode_reference and (args.no_model or args.ode_reference_steps < 1):
        p.error("--ode-reference needs a model to compare (no --no-model) and --ode-reference-steps >= 1")
    if args.gif and (args.no_model or not args.gif.endswith(".gif")):
        p.error("--gif needs a model to sample (no --no-model) and a path ending in .gif")
    return args


def sampling_settings(config, args) -> dict:
    """Flags over the config's `sampling` section over the defaults; guidance the run was trained for."""
    return trained_sampling_settings(config, {k: getattr(args, k) for k in SAMPLING_DEFAULTS})


def trained_sampling_settings(config, overrides: dict) -> dict:
    """`overrides` over the config's `sampling` section over the defaults; raises for guidance the
    run was not trained for."""
    settings = pipeline_sampling_settings(config, overrides)
    check_guidance_was_trained(config, settings["text_guidance"], settings["image_guidance"])
    return settings


def pipeline_generator(pipe: I2VPipeline, num_frames: int, size: int, settings: dict):
    def generate(first_frames: np.ndarray, captions: list[str], seed: int) -> np.ndarray:
        videos = pipe.sample_each(
            first_frames,
            captions,
            seed=seed,
            num_frames=num_frames,
            height=size,
            width=size,
            frame_stride=1,
            show_progress=False,
            **sampling_kwargs(settings),
        )
        return media.to_uint8(videos)

    return generate


def _recording(generate, sink: list):
    def recorded(*args):
        videos = generate(*args)
        sink.append(videos)
        return videos

    return recorded


def ode_reference_videos(args, clips: list) -> list[np.ndarray]:
    """`args.ode_reference`'s DDIM (eta 0) videos of `clips`, drawn from the benchmark's seeds."""
    pipe, config, reference_clips = load_run_and_clips(args.ode_reference, args.num_videos, args.seed, args.config, use_ema=not args.no_ema)
    if isinstance(pipe.scheduler, LCMConfig):
        raise ValueError(f"--ode-reference {args.ode_reference} samples with the consistency sampler; give the DDIM teacher")
    if [c.caption for c in reference_clips] != [c.caption for c in clips]:
        raise ValueError(f"--ode-reference {args.ode_reference} reads other benchmark clips than --checkpoint (its data config differs)")
    settings = trained_sampling_settings(config, {"steps": args.ode_reference_steps, "eta": 0.0})
    generate = pipeline_generator(pipe, config.data.frames, config.data.resolution, settings)
    return sample_clips(generate, reference_clips, seed=args.seed)[0]


def run(args) -> dict:
    pipe, config, clips = load_run_and_clips(
        args.checkpoint, args.num_videos, args.seed, args.config, use_ema=not args.no_ema, attention=args.attention
    )
    data = config.data
    settings = sampling_settings(config, args)
    generate = None if args.no_model else pipeline_generator(pipe, data.frames, data.resolution, settings)
    sampled = []
    if args.gif:
        generate = _recording(generate, sampled)
    round_trip = codec_round_trip(pipe.vae) if args.codec_reference else None
    reference = ode_reference_videos(args, clips) if args.ode_reference else None
    result = run_benchmark(
        generate, clips, seed=args.seed, features=VideoFeatures.load(), round_trip=round_trip, reference_videos=reference
    )
    if args.gif:
        rows = [(video, clip.video) for video, clip in zip(np.concatenate(sampled), clips[:GIF_ROWS])]
        media.write_video(args.gif, media.video_grid(rows, scale=4), fps=4)
    result["settings"] = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "num_videos": args.num_videos,
        "seed": args.seed,
        "sampler": "lcm" if isinstance(pipe.scheduler, LCMConfig) else "ddim",
        "ode_reference": args.ode_reference and os.path.abspath(args.ode_reference),
        "ode_reference_steps": args.ode_reference_steps,
        **settings,
        "frames": data.frames,
        "resolution": data.resolution,
    }
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    quiet_library_logs()
    enable_compilation_cache(args.compilation_cache, user_cache_dir())
    with exit_on_user_error():
        result = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "per_video"}))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
