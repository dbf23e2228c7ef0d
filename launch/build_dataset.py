"""Builds a TFDS dataset (array_record) from local video or image files; prints its folder.

  # ConsistI2V's layout: a JSONL file of {"text", "time", "file", "fps"} and a video folder
  python launch/build_dataset.py --data_dir=data --name=webvid --layout=jsonl \\
      --jsonl=/data/webvid/train.jsonl --video_folder=/data/webvid/videos --workers=16
  # MCM's: webdataset .tar shards of KEY.mp4 + KEY.json {"caption"} (folders are searched for .tar)
  python launch/build_dataset.py --data_dir=data --name=webvid_mcm --layout=webdataset \\
      --paths=/data/webvid_shards --min_frames=121 --workers=16
  # MCM's appearance images: folders or shards of KEY.jpg|png|webp + KEY.txt|caption
  python launch/build_dataset.py --data_dir=data --name=laion_aes --layout=images --paths=/data/laion_aes

`--paths` takes several shards or folders, comma-separated. Every video is decoded once, over
--workers processes with a progress bar; inputs that cannot be used (corrupt, truncated, empty,
too short or unreadable files, missing captions, bad JSONL lines) are skipped and listed with their
reason in the dataset's manifest.json, and the counts printed. A build that was interrupted is
simply run again (it restarts; nothing half-built is ever read).
Train on the printed folder with --config.data.source=videos --config.data.dir=FOLDER.
"""

from __future__ import annotations

import json
import logging
import os

from absl import flags

from jax_i2v.cli import exit_on_user_error, parse_launcher_flags
from jax_i2v.data.media_tfds import LAYOUTS, build_media_dataset, read_manifest

FLAGS = flags.FlagValues()
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data dir: the dataset goes to DATA_DIR/{video_text,image_text}/NAME/1.0.0", flag_values=FLAGS
)
_NAME = flags.DEFINE_string("name", None, "the dataset's name (one build per name)", flag_values=FLAGS)
_LAYOUT = flags.DEFINE_enum("layout", None, LAYOUTS, "how the inputs are laid out", flag_values=FLAGS)
_JSONL = flags.DEFINE_string("jsonl", "", "jsonl layout: the JSONL file", flag_values=FLAGS)
_VIDEO_FOLDER = flags.DEFINE_string("video_folder", "", "jsonl layout: the folder its 'file' paths are relative to", flag_values=FLAGS)
_PATHS = flags.DEFINE_list("paths", [], "webdataset / images layouts: .tar shards or folders", flag_values=FLAGS)
_MIN_FRAMES = flags.DEFINE_integer(
    "min_frames", 2, "skip videos with fewer decodable frames (MCM's 16 frames at stride 8: 121)", lower_bound=1, flag_values=FLAGS
)
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count(), "decoding processes (0: this process)", lower_bound=0, flag_values=FLAGS)
flags.mark_flags_as_required(["data_dir", "name", "layout"], flag_values=FLAGS)


def main(argv=None) -> dict:
    """Builds the dataset for the command-line arguments `argv` (default: sys.argv[1:])."""
    parse_launcher_flags(FLAGS, argv, __doc__)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with exit_on_user_error():
        builder = build_media_dataset(
            _DATA_DIR.value,
            _NAME.value,
            _LAYOUT.value,
            jsonl=_JSONL.value,
            video_folder=_VIDEO_FOLDER.value,
            paths=_PATHS.value,
            min_frames=_MIN_FRAMES.value,
            num_workers=_WORKERS.value,
        )
        manifest = read_manifest(builder.data_dir)
    summary = {"dataset_dir": os.fspath(builder.data_dir), **{k: manifest[k] for k in ("name", "kept", "skipped", "skipped_by_reason")}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
