"""JAX's persistent compilation cache in the launch commands: a second start loads what the first
compiled. (The trainer's resume is checked in test_train_cli.py's preemption test.)"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from jax_i2v.compilation_cache import resolve_cache_dir, set_optimization_level, user_cache_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_settings_name_the_folder_the_environment_or_the_default(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert resolve_cache_dir("", str(tmp_path / "default")) == str(tmp_path / "default")
    assert resolve_cache_dir(str(tmp_path / "mine"), str(tmp_path / "default")) == str(tmp_path / "mine")
    assert resolve_cache_dir("none", str(tmp_path / "default")) is None
    assert resolve_cache_dir("None", str(tmp_path / "default")) is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir("", str(tmp_path / "default")) == str(tmp_path / "env")
    assert resolve_cache_dir(str(tmp_path / "mine"), str(tmp_path / "default")) == str(tmp_path / "mine")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == str(tmp_path / "xdg" / "jax_i2v" / "compilation")


def test_the_optimization_level_setting_reaches_jax_and_bad_levels_are_one_line_errors():
    import jax

    try:
        assert set_optimization_level("O1") == "O1" and jax.config.jax_optimization_level == "O1"
        with pytest.raises(ValueError, match="xla_optimization_level must be one of"):
            set_optimization_level("fast")
    finally:
        assert set_optimization_level("") == "" and jax.config.jax_optimization_level == "UNKNOWN"


@pytest.mark.slow
def test_a_second_sample_run_loads_its_programs_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    # JAX's own settings left to the command (the suite's shared cache skips sub-0.5 s programs).
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE_")}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    command = [
        sys.executable,
        str(ROOT / "launch" / "sample.py"),
        f"--config={ROOT / 'configs' / 'micro.py'}",
        "--random_params",
        f"--image={ROOT / 'assets' / 'red_circle_blue_square.png'}",
        "--prompt=a red circle moves left",
        "--sampling.steps=2",
        "--formats=gif",
        "--noprogress",
        f"--compilation_cache={cache}",
    ]
    compile_seconds = []
    for run in ("first", "second"):
        result = subprocess.run(command + [f"--out={tmp_path / run}"], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        compile_seconds.append(json.loads(result.stdout.splitlines()[-1])["compile_s"])
    print("sample.py compile_s, first and second start:", compile_seconds)
    assert any(path.name.startswith("jit__sample_chunk") for path in cache.iterdir())
    assert compile_seconds[1] * 10 <= compile_seconds[0], compile_seconds
