"""Every launcher given a missing input file or folder ends with one `error:` line and status 2,
not a traceback."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE = str(ROOT / "assets" / "red_circle_blue_square.png")
MICRO, MCM_MICRO = str(ROOT / "configs" / "micro.py"), str(ROOT / "configs" / "mcm_micro.py")
MISSING = "/missing/input"
# launcher -> arguments naming one missing input
CASES = {
    "train": ["--config=/missing/config.py", "--workdir=WORK"],
    "distill": [f"--config={MCM_MICRO}", "--workdir=WORK", f"--config.teacher={MISSING}"],
    "sample": [f"--checkpoint={MISSING}", f"--image={IMAGE}", "--prompt=x", "--out=WORK/o"],
    "evaluate": [f"--checkpoint={MISSING}"],
    "export_params": [f"--checkpoint={MISSING}", "--out=WORK/e"],
    "build_dataset": ["--data_dir=WORK/d", "--name=x", "--layout=jsonl", f"--jsonl={MISSING}", f"--video_folder={MISSING}"],
    "cache_latents": [f"--config={MICRO}", "--out=WORK/c", "--config.data.source=videos", f"--config.data.dir={MISSING}"],
    "convert_backbone": [f"--transformers={MISSING}", "--out=WORK/b"],
    "denoising_profile": [f"--checkpoint={MISSING}"],
    "aot_compile": ["--config=/missing/config.py", "--topology=v5e:2x2"],
    "compile_kernels": [f"--log={MISSING}", f"--hlo={MISSING}"],
    "benchmark": [f"--unet_config={MISSING}"],
    "benchmark_data": [f"--config={MICRO}", "--config.data.source=videos", f"--config.data.dir={MISSING}"],
    "sweep": ["--workdir=WORK/s", "--configs=/missing/config.py"],
    "train_video_features": ["--dataset_configs=/missing/config.py", "--out=WORK/f"],
}


def test_every_launcher_reports_a_missing_input_in_one_line(tmp_path):
    launchers = {path.stem for path in (ROOT / "launch").glob("*.py")} - {"__init__"}
    assert launchers == set(CASES), launchers ^ set(CASES)  # a new launcher gets a case here
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    running = {}
    for name, args in CASES.items():  # started together: each spends most of its time importing
        args = [a.replace("WORK", str(tmp_path / name)) for a in args]
        command = [sys.executable, str(ROOT / "launch" / f"{name}.py"), *args]
        running[name] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    failures = {}
    for name, process in running.items():
        _, stderr = process.communicate(timeout=600)
        errors = [line for line in stderr.splitlines() if "error: " in line]
        if process.returncode != 2 or len(errors) != 1 or "Traceback" in stderr:
            failures[name] = (process.returncode, stderr[-1500:])
    assert not failures, failures
