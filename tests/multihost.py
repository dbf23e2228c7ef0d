"""A multi-host harness on one machine: N localhost processes with CPU collectives (gloo), each
with several host devices, so a mesh's `fsdp` axis spans processes and parameters are split
between them as on a pod."""

from __future__ import annotations

import os
import socket
import subprocess

PROCESSES, DEVICES_PER_PROCESS = 2, 2
DEVICES = PROCESSES * DEVICES_PER_PROCESS
# The mesh every run of the harness uses, in one process or several: parameters split 4 ways.
FSDP_MESH = ["--config.mesh.ici.data=1", f"--config.mesh.ici.fsdp={DEVICES}"]


def device_env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(command: list[str], order=None) -> list[subprocess.Popen]:
    """`command` with the multi-process flags, once per process (in `order` of process ids, e.g.
    (1, 0) to start process 1 first); returned in process-id order, stderr piped."""
    port = _free_port()
    started = {}
    for i in order or range(PROCESSES):
        flags = [
            "--distributed",
            "--cpu_collectives",
            f"--coordinator_address=localhost:{port}",
            f"--num_processes={PROCESSES}",
            f"--process_id={i}",
        ]
        started[i] = subprocess.Popen(
            command + flags, env=device_env(DEVICES_PER_PROCESS), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return [started[i] for i in range(PROCESSES)]


def finish(processes: list[subprocess.Popen], timeout: float = 900) -> list[tuple[str, str]]:
    """Waits for every process; (stdout, stderr) of each; fails naming the first that failed."""
    outputs = [p.communicate(timeout=timeout) for p in processes]
    for i, (process, (_, stderr)) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"process {i} exited with {process.returncode}:\n{stderr[-3000:]}"
    return outputs


def run_one_process(command: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """`command` in one process holding all the harness's devices."""
    result = subprocess.run(command, env=device_env(DEVICES), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
