"""The synthetic image-to-video benchmark: held-out moving-shapes first frames + captions ->
sampled videos -> consistency metrics, beside two references scored the same way: the ground-truth
clip and a static clip (the first frame repeated).

Clips are the first F frames of held-out videos at stride 1 (the generator leaves every object room
to move in its captioned direction for that long), at the dataset's resolution.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import ml_collections
import numpy as np
import tqdm

from jax_i2v import media
from jax_i2v.data.moving_shapes_tfds import load_moving_shapes
from jax_i2v.eval.consistency import average, video_metrics
from jax_i2v.eval.frame_quality import frame_quality
from jax_i2v.pipeline import I2VPipeline, SamplingConfig
from jax_i2v.text import caption_text

# A generator: (first frames (B, S, S, 3) uint8, captions, seed) -> videos (B, F, S, S, 3) uint8.
VideoGenerator = Callable[[np.ndarray, list[str], int], np.ndarray]
REFERENCES = ("ground_truth", "static", "ground_truth_coded")


@dataclasses.dataclass(frozen=True)
class BenchmarkClip:
    video: np.ndarray  # (F, S, S, 3) uint8
    caption: str
    masks: np.ndarray  # (F, N, S, S) visible masks of the N objects
    directions: np.ndarray  # (N,) captioned directions


def benchmark_clips(test_source, num_frames: int, num_videos: int, seed: int) -> list[BenchmarkClip]:
    """`num_videos` held-out examples drawn without replacement by `seed`, cut to F frames."""
    if num_videos > len(test_source):
        raise ValueError(f"asked for {num_videos} videos but the test split has {len(test_source)}")
    indices = np.random.default_rng(seed).permutation(len(test_source))[:num_videos]
    clips = []
    for index in indices:
        example = test_source[int(index)]
        if example["video"].shape[0] < num_frames:
            raise ValueError(f"test videos have {example['video'].shape[0]} frames, fewer than F = {num_frames}")
        n = int(example["num_objects"])
        clips.append(
            BenchmarkClip(
                video=np.asarray(example["video"][:num_frames]),
                caption=caption_text(example["caption"]),
                masks=np.asarray(example["masks"][:num_frames, :n]),
                directions=np.asarray(example["directions"][:n]),
            )
        )
    return clips


def load_run_and_clips(
    checkpoint: str,
    num_videos: int,
    seed: int,
    data_config: Optional[ml_collections.ConfigDict] = None,
    use_ema: bool = True,
    attention: Optional[str] = None,
):
    """(pipeline, config, clips): a trained model (training workdir, checkpoint or export) and
    `num_videos` held-out clips of its dataset. `data_config`: a config whose `data` section
    replaces the saved one (e.g. the dataset has moved); `attention` overrides the run's kernels."""
    pipe, config = I2VPipeline.from_checkpoint(checkpoint, use_ema=use_ema, attention=attention)
    if data_config is not None:
        config.data = ml_collections.ConfigDict(data_config.data.to_dict())
    data = config.data
    if data.dataset.resolution != data.resolution:
        raise ValueError(
            f"the benchmark runs at the dataset's resolution ({data.dataset.resolution}), but the model samples {data.resolution}"
        )
    source = load_moving_shapes(data.dir, "test", **data.dataset.to_dict())
    return pipe, config, benchmark_clips(source, data.frames, num_videos, seed)


def pipeline_generator(pipe: I2VPipeline, num_frames: int, size: int, sampling: SamplingConfig) -> VideoGenerator:
    """A `VideoGenerator` sampling each batch with `pipe` in one call: clip i of a batch drawn
    with seed `seed` gets the seed seed + i, as it would in any other batch."""

    def generate(first_frames: np.ndarray, captions: list[str], seed: int) -> np.ndarray:
        videos = pipe(
            list(first_frames),
            list(captions),
            seed=seed,
            num_frames=num_frames,
            height=size,
            width=size,
            sampling=sampling,
            show_progress=False,
        )
        return media.to_uint8(videos)

    return generate


def _score(videos: list[np.ndarray], clips: list[BenchmarkClip]) -> list[dict[str, float]]:
    return [
        {**video_metrics(video, clip.video[0], clip.masks, clip.directions), **frame_quality(video, clip.masks)}
        for video, clip in zip(videos, clips)
    ]


def codec_round_trip(codec) -> Callable[[np.ndarray], np.ndarray]:
    """(F, S, S, 3) uint8 -> the same through `codec`'s encode and decode, uint8."""

    def round_trip(video: np.ndarray) -> np.ndarray:
        decoded = np.asarray(codec.decode(codec.encode(media.to_model_range(video))))
        return media.to_uint8(decoded / 2.0 + 0.5)

    return round_trip


def sample_clips(
    generate: VideoGenerator, clips: list[BenchmarkClip], seed: int = 0, batch_size: int = 8
) -> tuple[list[np.ndarray], Optional[float]]:
    """`generate`'s videos for `clips`, batch k drawn with seed `seed + k * batch_size` (so two
    generators given the same clips and seed start from the same noise), and the sampling seconds
    per video over the batches after the first, which compiles (None with one batch)."""
    videos: list[np.ndarray] = []
    timed_seconds, timed_videos = 0.0, 0
    for start in tqdm.trange(0, len(clips), batch_size, desc="benchmark", unit="batch"):
        batch = clips[start : start + batch_size]
        began = time.perf_counter()
        out = generate(np.stack([c.video[0] for c in batch]), [c.caption for c in batch], seed + start)
        if start:
            timed_seconds, timed_videos = timed_seconds + time.perf_counter() - began, timed_videos + len(batch)
        if out.shape[1:] != batch[0].video.shape or out.dtype != np.uint8:
            raise ValueError(f"the generator returned {out.shape} {out.dtype}, expected (B,) + {batch[0].video.shape} uint8")
        videos += list(out)
    return videos, (timed_seconds / timed_videos if timed_videos else None)


def video_distance(video: np.ndarray, reference: np.ndarray) -> float:
    """RMS difference / 255 of two (F, S, S, 3) uint8 videos over frames 1.. (frame 0 is given)."""
    return float(np.sqrt(np.mean(np.square(video[1:].astype(np.float32) - reference[1:].astype(np.float32)))) / 255.0)


def run_benchmark(
    generate: Optional[VideoGenerator],
    clips: list[BenchmarkClip],
    seed: int = 0,
    batch_size: int = 8,
    features: Optional[Any] = None,
    round_trip: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    reference_videos: Optional[list[np.ndarray]] = None,
) -> dict[str, Any]:
    """{"model": averages, "ground_truth": ..., "static": ..., "per_video": [...]}.

    `generate` None scores only the references; the model's entry also has its sampling time per
    video (`sampling_seconds_per_video`). `features` (a `VideoFeatures`) adds `fvd_proxy`, the
    Frechet distance of each set of clips to the ground-truth clips in its feature space.
    `round_trip` (see `codec_round_trip`) adds the reference "ground_truth_coded": the ground truth
    through the model's latent codec, the best a model that decodes through it can score.
    `reference_videos` (another generator's `sample_clips` for the same clips and seed) adds the
    model's `reference_distance` to them (`video_distance`).
    """
    truth = [clip.video for clip in clips]
    videos = {"ground_truth": truth, "static": [np.repeat(v[:1], len(v), axis=0) for v in truth]}
    if round_trip is not None:
        videos["ground_truth_coded"] = [round_trip(v) for v in truth]
    seconds_per_video = None
    if generate is not None:
        generated, seconds_per_video = sample_clips(generate, clips, seed, batch_size)
        videos = {"model": generated, **videos}
    result: dict[str, Any] = {}
    per_video = {name: _score(vs, clips) for name, vs in videos.items()}
    if reference_videos is not None:
        if generate is None or len(reference_videos) != len(clips):
            raise ValueError(f"reference videos need a model to compare and one video per clip ({len(clips)}), got {len(reference_videos)}")
        for scores, video, reference in zip(per_video["model"], videos["model"], reference_videos):
            scores["reference_distance"] = video_distance(video, reference)
    for name, scores in per_video.items():
        result[name] = average(scores)
        if features is not None:
            result[name]["fvd_proxy"] = features.frechet_distance(np.stack(videos[name]), np.stack(truth))
    if seconds_per_video is not None:
        result["model"]["sampling_seconds_per_video"] = seconds_per_video
    result["per_video"] = [{"caption": clip.caption, **{name: per_video[name][i] for name in per_video}} for i, clip in enumerate(clips)]
    return result
