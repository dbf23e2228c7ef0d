"""Sample videos written to `WORKDIR/samples/` during training, so a run can be watched.

The first frames and captions are held-out examples (`TrainingInputs.preview_examples`), sampled
as one batch; the sampling seeds are the same at every preview (example i's is seed + i), so
successive previews differ only by the training in between. The sampler runs under the training
mesh with the (EMA if kept) params as the state holds them, split across processes, never
gathered; every process takes part and process 0 writes the files.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from jax_i2v.pipeline import I2VPipeline, SamplingConfig, save_videos


class PreviewWriter:
    def __init__(
        self,
        config: ml_collections.ConfigDict,
        first_frames: list,
        captions: list[str],
        workdir: str,
        num_steps: int,
        seed: int,
        mesh: Mesh,
    ):
        self.first_frames, self.captions = first_frames, captions
        self.config = config
        self.seed = seed
        self.mesh = mesh
        self.directory = os.path.join(workdir, "samples")
        # The config's `sampling` section, as launch/evaluate.py samples the run, at fewer steps.
        self.sampling = SamplingConfig.from_config(config, steps=num_steps)
        if jax.process_index() == 0:
            os.makedirs(self.directory, exist_ok=True)
            with open(os.path.join(self.directory, "captions.json"), "w") as f:
                json.dump(self.captions, f, indent=1)

    def write(self, step: int, params: Any) -> list[str]:
        """Samples one video per held-out example, all in one batch, with `params` (the train
        state's, possibly sharded over hosts); returns the files written (on process 0; [] elsewhere)."""
        if not self.captions:
            return []
        pipe = I2VPipeline.from_config(self.config, params, mesh=self.mesh)
        data = self.config.data
        videos = pipe(
            list(self.first_frames),
            self.captions,
            seed=self.seed,
            num_frames=data.frames,
            height=data.resolution,
            width=data.resolution,
            sampling=self.sampling,
            show_progress=False,
        )
        paths = []
        if jax.process_index() == 0:
            for i, video in enumerate(videos):
                paths += save_videos(video[None], os.path.join(self.directory, f"step_{step:06d}_{i}"), formats=("gif",))
        return paths
