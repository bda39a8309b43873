"""run_program: launch an emitted program with torchrun, wait, and return its metrics.

One node: `torchrun --standalone`. Several: one call per node with --nnodes / --node-rank and a
c10d rendezvous at `rdzv_endpoint`. Ranks' stdout/stderr go to per-rank log files
(`--redirects 3`); a failure raises LaunchError naming the failing rank with the tail of its
stderr. On timeout or Ctrl-C the whole tree is stopped: torchrun and its workers (which torchrun
starts in sessions of their own) get SIGTERM, then SIGKILL after a grace period: no orphans.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import planc

# NVLink multicast stays off on shared hosts (it can take their GPUs out of service): NCCL,
# PyTorch symmetric memory and NVSHMEM each have their own switch.
NO_MULTICAST_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
GRACE_S = 10.0
TAIL_LINES = 30


class LaunchError(RuntimeError):
    """The program failed, timed out or wrote no metrics; the message says which rank and why."""


class OutputDiffers(LaunchError):
    """The program ran and wrote its metrics, but its output differs from the Hugging Face
    reference (rank 0 exited with status 1); `metrics` holds them, the message says where."""

    def __init__(self, message: str, metrics: dict[str, Any]) -> None:
        super().__init__(message)
        self.metrics = metrics


def visible_gpus() -> int:
    """CUDA devices this process sees (planc run checks them before it starts any rank)."""
    import torch

    return torch.cuda.device_count()


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) for every process we can see (Linux /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and parens
        table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every descendant of `root` (start time guards against pid reuse)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = table[child][1]
            todo.append(child)
    return found


def _signal_tree(root: int, procs: dict[int, str], sig: signal.Signals) -> None:
    live = _proc_table()
    for pid, start in procs.items():
        if pid in live and live[pid][1] == start:
            try:
                os.killpg(pid, sig) if os.getpgid(pid) == pid else os.kill(pid, sig)
            except ProcessLookupError:
                pass
    try:
        os.killpg(root, sig)
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM torchrun and every worker, wait, then SIGKILL whatever is left."""
    procs = _descendants(proc.pid)
    _signal_tree(proc.pid, procs, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        procs.update(_descendants(proc.pid))
        live = _proc_table()
        if proc.poll() is not None and not any(
            p in live and live[p][1] == s for p, s in procs.items()
        ):
            return
        time.sleep(0.2)
    _signal_tree(proc.pid, procs, signal.SIGKILL)
    proc.wait()


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) if lines else "(empty)"


def _rank_logs(log_dir: Path) -> dict[int, Path]:
    """local rank -> its stderr log (layout: <log_dir>/<run>/attempt_<k>/<local_rank>/)."""
    logs = {}
    for p in sorted(log_dir.glob("*/attempt_*/*/stderr.log")):
        logs[int(p.parent.name)] = p
    return logs


def _failure(torchrun_log: Path, log_dir: Path, rc: int) -> str:
    text = torchrun_log.read_text(errors="replace") if torchrun_log.exists() else ""
    logs = _rank_logs(log_dir)
    root = re.search(
        r"Root Cause.*?rank\s*:\s*(\d+) \(local_rank: (\d+)\).*?exitcode\s*:\s*(-?\d+)",
        text,
        re.DOTALL,
    )
    if root:
        rank, local, code = (int(g) for g in root.groups())
        return (
            f"rank {rank} (local rank {local}) failed with exit code {code}; "
            f"its stderr ends with:\n{_tail(logs[local]) if local in logs else '(no log)'}"
        )
    crashed = [(lr, p) for lr, p in logs.items() if "Traceback" in _tail(p, 10**6)]
    if crashed:
        local, p = crashed[0]
        return f"local rank {local} failed; its stderr ends with:\n{_tail(p)}"
    return f"torchrun exited with {rc}; its output ends with:\n{_tail(torchrun_log)}"


def _reference_verdict(out: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(metrics, their `reference` verdict) when a failed run wrote them, else None."""
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError):
        return None
    verdict = data.get("reference") if isinstance(data, dict) else None
    return (data, verdict) if isinstance(verdict, dict) else None


def run_program(
    program_path: str | Path,
    *,
    nproc: int,
    device: str,
    weights: str | Path | None = None,
    timeout_s: float = 600.0,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    extra_env: dict[str, str] | None = None,
    out_path: str | Path | None = None,
    rdzv_id: str = "planc",
    log_dir: str | Path | None = None,
    program_args: list[str] | None = None,
) -> dict[str, Any] | None:
    """Run `program_path` under torchrun on this node and return rank 0's metrics.

    With several nodes, call once per node with the same `rdzv_endpoint`, `rdzv_id` and
    `out_path`; the node that hosts rank 0 writes the metrics and every call returns them if
    `out_path` is shared (otherwise the calls without rank 0 return None). Logs go to `log_dir`
    (default: a temporary directory, removed after a success and kept after a failure).
    `program_args` go to the program after the launcher's own (a decode program's prompts).
    """
    work = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="planc-run-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(out_path) if out_path is not None else work / "metrics.json"
    logs, torchrun_log = work / "logs", work / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd += ["--standalone"]
    else:
        if rdzv_endpoint is None:
            raise ValueError(f"{nnodes} nodes need rdzv_endpoint='host:port' (rank 0's node)")
        cmd += [
            "--nnodes",
            str(nnodes),
            "--node-rank",
            str(node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            rdzv_endpoint,
            "--rdzv-id",
            rdzv_id,
        ]
    cmd += [
        "--nproc-per-node",
        str(nproc),
        "--max-restarts",
        "0",
        "--log-dir",
        str(logs),
        "--redirects",
        "3",
        str(program_path),
        "--device",
        device,
        "--out",
        str(out),
    ]
    if weights is not None:
        cmd += ["--weights", str(weights)]
    cmd += program_args or []
    env = dict(os.environ)
    # The program imports planc; make this checkout importable even when it is not installed.
    root = str(Path(planc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # ranks share the cores; more threads only contend
    else:
        env.update(NO_MULTICAST_ENV)  # NVLink multicast stays off, whatever the caller's env
    env.update(extra_env or {})

    with open(torchrun_log, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            tails = "\n".join(
                f"-- local rank {lr} stderr:\n{_tail(p, 16)}" for lr, p in _rank_logs(logs).items()
            )
            raise LaunchError(
                f"{program_path}: timed out after {timeout_s:g} s on node "
                f"{node_rank}; stopped all ranks. Logs in {work}\n{tails}"
            ) from None
        except BaseException:
            _stop(proc)
            raise
    if rc != 0:
        verdict = _reference_verdict(out)
        if verdict is not None and not verdict[1].get("ok", True):
            raise OutputDiffers(verdict[1].get("message", "the output differs"), verdict[0])
        raise LaunchError(
            f"{program_path} on node {node_rank}: "
            f"{_failure(torchrun_log, logs, rc)}\n(logs in {work})"
        )
    if out.exists():
        data = json.loads(out.read_text())
    elif nnodes > 1:
        data = None  # rank 0 ran on another node and wrote its metrics there
    else:
        raise LaunchError(
            f"{program_path} exited cleanly but wrote no metrics to {out}; "
            f"torchrun output ends with:\n{_tail(torchrun_log)}"
        )
    if log_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return data
