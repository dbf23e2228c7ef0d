"""The run skeleton shared by pretraining and MCM distillation: compile the step once (timed, from
the persistent cache when it can), then step, log, save, preview and stop, with preemption, the
time limit and non-finite steps handled the same way for both.

A loop hands `run_steps` how to make its first state, a step (`step(state, batch, *extra) ->
(state, metrics)` with a `.lower` of the same arguments) and a batch source; its own code stays its
step and its batches. The runner restores the newest good checkpoint or initialises, and owns the
checkpoints (WORKDIR/checkpoints) and the metrics log (WORKDIR/metrics.jsonl, TensorBoard).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterator, Optional

import jax
import tqdm

from jax_i2v.compilation_cache import cache_hits
from jax_i2v.parallel.hosts import wait_for_all_processes
from jax_i2v.train.checkpoint import Checkpointer
from jax_i2v.train.runtime import Cadence, MetricsLog, Preemption, RunError
from jax_i2v.train.step import NONFINITE_METRIC, compiled_flops

log = logging.getLogger(__name__)
# Record keys that measure the run rather than the model (they differ between equal runs).
TIMING_METRICS = ("steps_per_sec", "examples_per_sec", "tflops_per_sec", "compile_s", "compile_cache_hit")


class NonFiniteError(RunError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What the runner reads from a loop's config section."""

    steps: int
    log_every: int
    checkpoint_every: int
    time_limit_minutes: float
    max_nonfinite_steps: int
    keep_checkpoints: int
    examples_per_step: int

    @classmethod
    def of(cls, section: Any) -> "RunSettings":
        """From a loop's config section (`train` or `distill`)."""
        return cls(
            section.steps,
            section.log_every,
            section.checkpoint_every,
            section.time_limit_minutes,
            section.max_nonfinite_steps,
            section.keep_checkpoints,
            section.batch_size,
        )


@dataclasses.dataclass
class RunResult:
    state: Any
    step: int
    last_metrics: dict[str, Any]


def _progress_bar(settings: RunSettings, step: int, desc: str, enabled: bool) -> tqdm.tqdm:
    """Steps against `steps`; with a time limit, elapsed time against the limit (the step count would
    promise hours the limit will not give)."""
    if settings.time_limit_minutes:
        limit = 60.0 * settings.time_limit_minutes
        return tqdm.tqdm(
            total=limit,
            desc=f"{desc} (time limit)",
            unit="s",
            disable=not enabled,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} of " + tqdm.tqdm.format_interval(limit) + "{postfix}",
        )
    return tqdm.tqdm(total=settings.steps, initial=step, desc=desc, unit="step", disable=not enabled)


def state_bytes(state: Any) -> tuple[int, int]:
    """(bytes of the shards this process holds, counting each replicated piece once across the
    processes; the state's total bytes): how the state is split between processes."""
    leaves = [x for x in jax.tree_util.tree_leaves(state) if isinstance(x, jax.Array)]
    local = sum(shard.data.nbytes for x in leaves for shard in x.addressable_shards if shard.replica_id == 0)
    return local, sum(x.nbytes for x in leaves)


def _megabytes(count: int) -> str:
    return f"{count / 2**20:.1f} MB"


def run_steps(
    workdir: str,
    settings: RunSettings,
    abstract_state: Any,
    state_shardings: Any,
    init_state: Callable[[], Any],
    step_fn: Callable,
    next_batch: Callable[[], Any],
    *,
    extra_args: tuple = (),
    data_iterator: Optional[Iterator] = None,
    config_dict: Optional[dict] = None,
    tensorboard: bool = True,
    started: float,
    desc: str = "training",
    postfix: Callable[[dict], dict] = lambda metrics: {},
    after_step: Optional[Callable[[int, Any, bool], bool]] = None,
    host_metrics: Callable[[], dict] = dict,
    loop_iterations: int = 1,
) -> RunResult:
    """Restores the newest good checkpoint (into `state_shardings`, with `data_iterator`'s position)
    or calls `init_state()`, then runs `step_fn` to `settings.steps`, the time limit or a preemption.

    The step is compiled once, explicitly, so its compile time, cache hit and XLA FLOP count go
    into the first metrics record of this invocation; steps are timed from then on, per log window.
    Each step's metrics must hold `NONFINITE_METRIC`; the flag is read one step late (the next step
    is already queued, so the host never waits on it). `after_step(step, state, out_of_time)` runs
    extra work (previews) and returns whether it took time the step timer should not count.
    `host_metrics()` adds this host's counters (e.g. videos that failed to decode) to each record.
    `loop_iterations`: how many times the step runs its loop body (gradient accumulation), as XLA's
    FLOP count holds a loop body once. Saves at the cadence and on stopping; `NonFiniteError`
    stops without saving.
    """
    with contextlib.ExitStack() as cleanup:
        checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=settings.keep_checkpoints)
        cleanup.callback(checkpointer.close)
        state = checkpointer.restore_newest_good(abstract_state, state_shardings, data_iterator)
        if state is None:
            state = init_state()
        else:
            log.info("resumed from step %d", int(state.step))
        log.info("state: %s on this process (unique shards) of %s in all", *map(_megabytes, state_bytes(state)))
        metrics_log = MetricsLog(workdir, int(state.step), tensorboard)
        cleanup.callback(metrics_log.close)
        step = int(state.step)
        preemption = Preemption()
        cleanup.callback(preemption.restore)
        bar = _progress_bar(settings, step, desc, jax.process_index() == 0)
        cleanup.callback(bar.close)
        cadence = Cadence(settings.steps, settings.log_every, settings.checkpoint_every, settings.time_limit_minutes, started)
        last: dict[str, Any] = {}
        compiled, flops_per_step, first_record = None, float("nan"), {}
        window_start, window_steps = time.perf_counter(), 0
        pending_flag, nonfinite_run, nonfinite_in_window, nonfinite_total = None, 0, 0, 0

        def save():
            checkpointer.save(step, state, data_iterator, config_dict)

        def count_nonfinite(flag) -> None:
            nonlocal nonfinite_run, nonfinite_in_window, nonfinite_total
            if not float(flag):
                nonfinite_run = 0
                return
            nonfinite_run += 1
            nonfinite_in_window += 1
            nonfinite_total += 1
            log.warning("non-finite loss or gradient norm: update skipped (%d in a row)", nonfinite_run)

        def stop_if_too_many_nonfinite() -> None:
            if nonfinite_run >= settings.max_nonfinite_steps:
                raise NonFiniteError(
                    f"{nonfinite_run} consecutive steps had a non-finite loss or gradient norm (max_nonfinite_steps="
                    f"{settings.max_nonfinite_steps}); stopped without saving, the newest checkpoint is untouched"
                )

        while step < settings.steps:
            batch = next_batch()
            if compiled is None:
                lowered = step_fn.lower(state, batch, *extra_args)
                compile_start = time.perf_counter()
                with cache_hits() as hits:
                    compiled = lowered.compile()  # a restart loads it from the persistent compilation cache
                compile_s = time.perf_counter() - compile_start
                first_record = {"compile_s": compile_s, "compile_cache_hit": int(hits[0] > 0)}
                log.info(
                    "%s step compiled in %.1f s%s", desc, compile_s, " (from the compilation cache)" * first_record["compile_cache_hit"]
                )
                flops_per_step = compiled_flops(compiled) * jax.device_count() * loop_iterations
                wait_for_all_processes("step compiled")
                window_start = time.perf_counter()
            state, metrics = compiled(state, batch, *extra_args)
            if pending_flag is not None:
                count_nonfinite(pending_flag)
                stop_if_too_many_nonfinite()
            pending_flag = metrics[NONFINITE_METRIC]
            step += 1
            window_steps += 1
            log_now, save_now, out_of_time = cadence.after(step)
            if log_now:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                count_nonfinite(pending_flag)
                pending_flag = None
                elapsed = time.perf_counter() - window_start
                metrics["steps_per_sec"] = window_steps / elapsed
                metrics["examples_per_sec"] = metrics["steps_per_sec"] * settings.examples_per_step
                metrics["tflops_per_sec"] = metrics["steps_per_sec"] * flops_per_step / 1e12
                metrics["nonfinite_steps"] = nonfinite_in_window
                metrics["nonfinite_steps_total"] = nonfinite_total
                metrics.pop(NONFINITE_METRIC)
                metrics.update(host_metrics())
                metrics.update(first_record)
                first_record, nonfinite_in_window = {}, 0
                last = {"step": step, **metrics}
                window_start, window_steps = time.perf_counter(), 0
                bar.set_postfix(postfix(metrics))
                metrics_log.write(step, metrics)
                stop_if_too_many_nonfinite()
            if settings.time_limit_minutes:
                bar.n = min(time.perf_counter() - started, bar.total)
                bar.refresh()
            else:
                bar.update(1)
            if save_now:
                save()
            if after_step is not None and after_step(step, state, out_of_time):
                window_start, window_steps = time.perf_counter(), 0
            if cadence.should_stop(step, out_of_time, preemption):
                save()
                break
        return RunResult(state=state, step=step, last_metrics=last)
