"""Builds a TFDS dataset (array_record) from local video or image files; prints its folder.

  # ConsistI2V's layout: a JSONL file of {"text", "time", "file", "fps"} and a video folder
  python launch/build_dataset.py --data-dir data --name webvid --layout jsonl \
      --jsonl /data/webvid/train.jsonl --video-folder /data/webvid/videos --workers 16
  # MCM's: webdataset .tar shards of KEY.mp4 + KEY.json {"caption"} (folders are searched for .tar)
  python launch/build_dataset.py --data-dir data --name webvid_mcm --layout webdataset \
      --paths /data/webvid_shards --min-frames 121 --workers 16
  # MCM's appearance images: folders or shards of KEY.jpg|png|webp + KEY.txt|caption
  python launch/build_dataset.py --data-dir data --name laion_aes --layout images --paths /data/laion_aes

Every video is decoded once, over --workers processes with a progress bar; inputs that cannot be
used (corrupt, truncated, empty, too short or unreadable files, missing captions, bad JSONL lines)
are skipped and listed with their reason in the dataset's manifest.json, and the counts printed.
A build that was interrupted is simply run again (it restarts; nothing half-built is ever read).
Train on the printed folder with --config.data.source=videos --config.data.dir=FOLDER.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from jax_i2v.cli import exit_on_user_error
from jax_i2v.data.media_tfds import LAYOUTS, build_media_dataset, read_manifest


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="TFDS data dir: the dataset goes to DATA_DIR/{video_text,image_text}/NAME/1.0.0")
    p.add_argument("--name", required=True, help="the dataset's name (one build per name)")
    p.add_argument("--layout", required=True, choices=LAYOUTS)
    p.add_argument("--jsonl", default="", help="jsonl layout: the JSONL file")
    p.add_argument("--video-folder", default="", help="jsonl layout: the folder its 'file' paths are relative to")
    p.add_argument("--paths", nargs="*", default=[], help="webdataset / images layouts: .tar shards or folders")
    p.add_argument("--min-frames", type=int, default=2, help="skip videos with fewer decodable frames (MCM's 16 frames at stride 8: 121)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="decoding processes (0: this process)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with exit_on_user_error():
        builder = build_media_dataset(
            args.data_dir,
            args.name,
            args.layout,
            jsonl=args.jsonl,
            video_folder=args.video_folder,
            paths=args.paths,
            min_frames=args.min_frames,
            num_workers=args.workers,
        )
        manifest = read_manifest(builder.data_dir)
        summary = {k: manifest[k] for k in ("name", "kept", "skipped", "skipped_by_reason")}
        print(json.dumps({"dataset_dir": os.fspath(builder.data_dir), **summary}))


if __name__ == "__main__":
    main()
