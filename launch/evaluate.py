"""Scores a trained model on the synthetic image-to-video benchmark; prints one JSON object.

  python launch/evaluate.py --checkpoint=runs/tiny --bench=synthetic --num_videos=64 --seed=1

The model (and the caption encoder) come from `--checkpoint` (a training workdir, one of its
checkpoints, or a params export) with the config saved beside it; `--config` replaces that config's
`data` section (e.g. to read the dataset from elsewhere; --config.KEY=VALUE overrides apply).
Videos are sampled in batches of `--batch_size` from held-out first frames + captions (video i with
seed seed + i, whatever the batch size) and scored against the moving-shapes ground truth, next to
the ground-truth clips and static clips (jax_i2v/eval/) and, with `--codec_reference`, the ground
truth through the model's latent codec (what a lossy codec alone costs); `fvd_proxy` is the
Frechet distance to the ground-truth clips in the feature space of the shipped moving-shapes video
encoder. Sampling settings not given as --sampling.KEY=VALUE flags come from the run's `sampling`
section, then `jax_i2v.pipeline.SamplingConfig`'s defaults; the frame stride is 1, the clips'.
`--out FILE` also writes the JSON (with per-video scores) there; `--gif FILE` writes the first 8
sampled videos (left) beside their ground truth (right), one row each, magnified 4x.

`--ode_reference=TEACHER` adds the model's `reference_distance`: per video, the RMS pixel
difference (/255, frames after the first) to TEACHER's deterministic DDIM video (eta 0,
`--ode_reference_steps`, TEACHER's config guidance) from the same first frame, caption and noise.
For a distilled student that is how far it lands from the probability-flow ODE's end it is
trained to reach; it needs the two configs to draw the same initial noise (noise alpha, FrameInit).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
from absl import flags

from jax_i2v import media
from jax_i2v.cli import (
    define_attention_flag,
    define_compilation_cache_flag,
    define_sampling_flags,
    define_seed_flag,
    define_trained_run_flags,
    exit_on_user_error,
    parse_launcher_flags,
    quiet_library_logs,
)
from jax_i2v.compilation_cache import enable_compilation_cache, user_cache_dir
from jax_i2v.eval.synthetic_benchmark import codec_round_trip, load_run_and_clips, pipeline_generator, run_benchmark, sample_clips
from jax_i2v.eval.video_features import VideoFeatures
from jax_i2v.pipeline import SamplingConfig, check_guidance_was_trained

BENCHES = ("synthetic",)
GIF_ROWS = 8
# The benchmark's clips are consecutive frames: the model is conditioned on that frame rate.
BENCHMARK_FRAME_STRIDE = 1.0

FLAGS = flags.FlagValues()
_CHECKPOINT, _EMA, _CONFIG = define_trained_run_flags(FLAGS)
_BENCH = flags.DEFINE_enum("bench", "synthetic", BENCHES, "the benchmark", flag_values=FLAGS)
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 64, "held-out videos", lower_bound=1, flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "videos sampled in one call", lower_bound=1, flag_values=FLAGS)
_SEED = define_seed_flag("picks the held-out videos and the sampling noise", FLAGS)
_SAMPLING = define_sampling_flags(FLAGS)
_ATTENTION = define_attention_flag(FLAGS, fallback="the run's model.attention, else auto")
_REFERENCES_ONLY = flags.DEFINE_bool("references_only", False, "score only the references, no model samples", flag_values=FLAGS)
_CODEC_REFERENCE = flags.DEFINE_bool(
    "codec_reference",
    False,
    "also score the ground truth through the model's latent codec (ground_truth_coded: the ceiling of a lossy codec)",
    flag_values=FLAGS,
)
_ODE_REFERENCE = flags.DEFINE_string(
    "ode_reference", None, "also score reference_distance to this run's deterministic DDIM videos", flag_values=FLAGS
)
_ODE_REFERENCE_STEPS = flags.DEFINE_integer(
    "ode_reference_steps", 50, "DDIM steps of the --ode_reference videos (MCM's solver grid: 50)", lower_bound=1, flag_values=FLAGS
)
_OUT = flags.DEFINE_string("out", None, "also write the result (with per-video scores) to this JSON file", flag_values=FLAGS)
_GIF = flags.DEFINE_string("gif", None, "also write the first 8 sampled videos beside their ground truth to this GIF", flag_values=FLAGS)
_COMPILATION_CACHE = define_compilation_cache_flag(FLAGS)


def trained_sampling(config, **overrides) -> SamplingConfig:
    """`overrides` over the benchmark's frame stride over the run's `sampling` section over the
    defaults; raises for guidance the run was not trained for."""
    sampling = SamplingConfig.from_config(config, **{"frame_stride": BENCHMARK_FRAME_STRIDE, **overrides})
    check_guidance_was_trained(config, sampling)
    return sampling


def _recording(generate, sink: list):
    def recorded(*args):
        videos = generate(*args)
        sink.append(videos)
        return videos

    return recorded


def ode_reference_videos(clips: list) -> list[np.ndarray]:
    """`--ode_reference`'s DDIM (eta 0) videos of `clips`, drawn from the benchmark's seeds."""
    teacher = _ODE_REFERENCE.value
    pipe, config, reference_clips = load_run_and_clips(teacher, _NUM_VIDEOS.value, _SEED.value, _CONFIG.value, use_ema=_EMA.value)
    if pipe.sampling.sampler != "ddim":
        raise ValueError(f"--ode_reference {teacher} samples with the consistency sampler; give the DDIM teacher")
    if [c.caption for c in reference_clips] != [c.caption for c in clips]:
        raise ValueError(f"--ode_reference {teacher} reads other benchmark clips than --checkpoint (its data config differs)")
    sampling = trained_sampling(config, steps=_ODE_REFERENCE_STEPS.value, eta=0.0)
    generate = pipeline_generator(pipe, config.data.frames, config.data.resolution, sampling)
    return sample_clips(generate, reference_clips, seed=_SEED.value, batch_size=_BATCH_SIZE.value)[0]


def run() -> dict:
    if _ODE_REFERENCE.value and _REFERENCES_ONLY.value:
        raise ValueError("--ode_reference needs a model to compare (no --references_only)")
    if _GIF.value and (_REFERENCES_ONLY.value or not _GIF.value.endswith(".gif")):
        raise ValueError("--gif needs a model to sample (no --references_only) and a path ending in .gif")
    pipe, config, clips = load_run_and_clips(
        _CHECKPOINT.value, _NUM_VIDEOS.value, _SEED.value, _CONFIG.value, use_ema=_EMA.value, attention=_ATTENTION.value
    )
    data = config.data
    sampling = trained_sampling(config, **_SAMPLING())
    generate = None if _REFERENCES_ONLY.value else pipeline_generator(pipe, data.frames, data.resolution, sampling)
    sampled = []
    if _GIF.value:
        generate = _recording(generate, sampled)
    round_trip = codec_round_trip(pipe.vae) if _CODEC_REFERENCE.value else None
    reference = ode_reference_videos(clips) if _ODE_REFERENCE.value else None
    result = run_benchmark(
        generate,
        clips,
        seed=_SEED.value,
        batch_size=_BATCH_SIZE.value,
        features=VideoFeatures.load(),
        round_trip=round_trip,
        reference_videos=reference,
    )
    if _GIF.value:
        rows = [(video, clip.video) for video, clip in zip(np.concatenate(sampled), clips[:GIF_ROWS])]
        media.write_video(_GIF.value, media.video_grid(rows, scale=4), fps=4)
    result["settings"] = {
        "checkpoint": os.path.abspath(_CHECKPOINT.value),
        "num_videos": _NUM_VIDEOS.value,
        "seed": _SEED.value,
        "ode_reference": _ODE_REFERENCE.value and os.path.abspath(_ODE_REFERENCE.value),
        "ode_reference_steps": _ODE_REFERENCE_STEPS.value,
        **dataclasses.asdict(sampling),
        "frames": data.frames,
        "resolution": data.resolution,
    }
    return result


def main(argv=None) -> dict:
    """Evaluates for the command-line arguments `argv` (default: sys.argv[1:])."""
    parse_launcher_flags(FLAGS, argv, __doc__)
    quiet_library_logs()
    enable_compilation_cache(_COMPILATION_CACHE.value, user_cache_dir())
    with exit_on_user_error():
        result = run()
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "per_video"}))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
