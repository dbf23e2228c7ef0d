"""JAX's persistent compilation cache: a restarted run loads its compiled programs from disk
instead of compiling them again. And XLA's optimisation level, which trades compile time against
the compiled program's speed.

The launch commands switch it on before their first compilation: training and distillation in
WORKDIR/compilation_cache (config key `compilation_cache_dir`), sampling and evaluation in a user
cache folder (`--compilation-cache`). A setting of "none" turns the cache off; "" is the default
folder, or $JAX_COMPILATION_CACHE_DIR when that is set. Programs that call back into Python (e.g.
the sampler's progress bar) are never cached: JAX cannot serialise their callbacks.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache

OFF = "none"
# What JAX records for each XLA compilation, or its load from the persistent cache.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


# XLA's effort levels (openxla.org/xla/effort_levels); "" leaves the platform's default.
OPTIMIZATION_LEVELS = ("", "O0", "O1", "O2", "O3")


def set_optimization_level(level: str | None) -> str:
    """Sets XLA's optimisation level for the process's compilations (config key
    `xla_optimization_level`): "" (or None) the platform's default; "O1" compiles the released
    train step for TPU in about half the time and host memory (docs/scaling.md), at a step speed
    not measured on a TPU. Part of the persistent cache's key. Returns the level set."""
    level = (level or "").strip()
    if level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"xla_optimization_level must be one of {OPTIMIZATION_LEVELS}, got {level!r}")
    jax.config.update("jax_optimization_level", level or "UNKNOWN")
    return level


def configure_run_compilation(config, workdir: str) -> None:
    """A training or distillation run's settings: the cache in the config's `compilation_cache_dir`
    (WORKDIR/compilation_cache by default) and its `xla_optimization_level`."""
    enable_compilation_cache(config.get("compilation_cache_dir", ""), os.path.join(workdir, "compilation_cache"))
    set_optimization_level(config.get("xla_optimization_level", ""))


def user_cache_dir() -> str:
    """$XDG_CACHE_HOME/jax_i2v/compilation, or ~/.cache/jax_i2v/compilation."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jax_i2v", "compilation")


def resolve_cache_dir(setting: str | None, default: str) -> str | None:
    """The folder a setting names: None for "none" (off); for "" (or None), $JAX_COMPILATION_CACHE_DIR
    if set, else `default`; otherwise the setting itself."""
    setting = (setting or "").strip()
    if setting.lower() == OFF:
        return None
    path = setting or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default
    return os.path.abspath(os.path.expanduser(path))


def enable_compilation_cache(setting: str | None, default: str) -> str | None:
    """Points JAX's persistent compilation cache at the folder `setting` names (see
    `resolve_cache_dir`), caching every program however small or quick to compile, or turns the
    cache off. Call it before the process's first compilation. Returns the folder, or None."""
    path = resolve_cache_dir(setting, default)
    was_enabled, was_dir = jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", path)
        # JAX's defaults skip programs compiled in under a second, as most of ours are on CPU; cache
        # them all unless JAX's environment variables say otherwise (as $JAX_COMPILATION_CACHE_DIR does).
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size limit
    changed = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir) != (was_enabled, was_dir)
    if changed and (was_dir is not None or not was_enabled):
        # What an earlier compilation in this process found (a cache opened, or none used) would stick.
        compilation_cache.reset_cache()
    return path


@contextlib.contextmanager
def compile_time() -> Iterator[list[float]]:
    """Sums the seconds XLA spends compiling (or loading from the cache) inside the block:
    `with compile_time() as seconds: ...`, then `seconds[0]`. Tracing and lowering are not included."""
    seconds = [0.0]

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            seconds[0] += duration

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seconds
    finally:
        monitoring.unregister_event_duration_listener(listener)


@contextlib.contextmanager
def cache_hits() -> Iterator[list[int]]:
    """Counts the programs loaded from the persistent cache inside the block (`counts[0]`)."""
    counts = [0]

    def listener(event: str, **kwargs) -> None:
        if event == CACHE_HIT_EVENT:
            counts[0] += 1

    monitoring.register_event_listener(listener)
    try:
        yield counts
    finally:
        monitoring.unregister_event_listener(listener)
