"""MCM's two inputs in one checkpointable Grain stream: training clips (the teacher's videos, in
the CPU demo the degraded moving shapes) and, for the frame discriminator, real images from a
separate high-quality set (an image-text dataset, or the frames of clean moving-shapes videos).

Batches leave the input threads ready for the devices: uint8 pixels and captions as the step
takes them (token ids, or embeddings of a host-side encoder); the step encodes them."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import grain
import numpy as np

from jax_i2v.data.video_pipeline import ClipCaption, ClipConfig, batched_stream, make_clip, make_image, read_options, video_frames
from jax_i2v.text import caption_text
from jax_i2v.train.encoders import pixels_to_uint8


class FramesAsImages:
    """Frame i % T of video i // T of a video source, as a captioned image source."""

    def __init__(self, videos: Sequence[dict], num_frames: int):
        self.videos, self.num_frames = videos, num_frames

    def __len__(self) -> int:
        return len(self.videos) * self.num_frames

    def __getitem__(self, index: int) -> dict:
        example = self.videos[index // self.num_frames]
        return {"image": video_frames(example, [index % self.num_frames])[0], "caption": caption_text(example["caption"])}


def distill_dataset(
    videos: Sequence[dict],
    images: Sequence[dict],
    clips: ClipConfig,
    image_resolution: int,
    global_batch_size: int,
    seed: int,
    real_per_clip: int,
    image_crop_scale: tuple[float, float] = (0.5, 1.0),
    shard_index: int = 0,
    shard_count: int = 1,
    clip_caption: Optional[ClipCaption] = None,
    read_threads: int = 16,
    caption_transform: Optional[Callable[[Sequence[str]], np.ndarray]] = None,
    caption_key: str = "tokens",
) -> grain.IterDataset:
    """This host's rows of global batches: each clip (as `make_clip` gives it, its "video"
    (F, H, W, 3) as uint8) with `real_per_clip` images drawn from `images` by the clip's own
    generator: "real_images" (k, R, R, 3) uint8 and their "real_captions" (k strings).

    With `caption_transform` (prompts -> (n, ...) array; host-side: a tokenizer or a numpy
    encoder, as it runs in the read threads), the captions become `caption_key` (...) and
    "real_" + `caption_key` (k, ...) instead."""
    if len(images) == 0:
        raise ValueError("the real-image source for the discriminator is empty")

    def element(example, rng):
        clip = make_clip(example, clips, rng, clip_caption)
        real = [make_image(images[int(i)], image_resolution, rng, image_crop_scale) for i in rng.integers(len(images), size=real_per_clip)]
        row = {
            **clip,
            "video": pixels_to_uint8(clip["video"]),
            "real_images": pixels_to_uint8(np.stack([r["image"] for r in real])),
            "real_captions": tuple(r["caption"] for r in real),
        }
        if caption_transform is not None:
            row[caption_key] = np.asarray(caption_transform([row.pop("caption")]))[0]
            row["real_" + caption_key] = np.asarray(caption_transform(list(row.pop("real_captions"))))
        return row

    stream = batched_stream(videos, element, global_batch_size, seed, shard_index, shard_count, read_threads)
    return stream.to_iter_dataset(read_options(read_threads))
