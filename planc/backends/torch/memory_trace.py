"""Where a run's peak memory went: every CUDA allocation of a run, and the live set at its peak.

`PLANC_MEMORY_TRACE=DIR planc run ... --device cuda` makes each rank record its allocations
(torch.cuda.memory._record_memory_history, Python stacks) from the moment its memory peaks
restart (after the weights load: metrics.reset_peaks) until its numbers are collected, before
the reference check (program.report), or until it exits where it fails before that (an OOM:
runtime/dist.run_and_leave). Each rank writes DIR/rank<r>.pickle (torch's snapshot)
and DIR/rank<r>.json (what was allocated when the record began, and torch's peak).

    python -m planc.backends.torch.memory_trace DIR [--top 30]

replays a rank's record and prints the largest live set, grouped by where each buffer was
allocated (the innermost frames outside torch), so a gap between a predicted and a measured
peak can be traced to a line. That is how the decode step's first-warm-up moment
(cost/memory.first_step_tuning_bytes: Triton's autotuner's 256 MiB L2-flush buffer) was found
(benchmarks/results/h200_decode_issue15.md, round 10).

The replay sums requested sizes; torch's `max_memory_allocated` counts the allocator's rounded
blocks, so the two differ by a few KB (7.2 KB of 1.97 GB in run 47).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ENV = "PLANC_MEMORY_TRACE"
# torch's own modules, installed (not planc/backends/torch, which is planc's)
TORCH_FILE = re.compile(r"[/\\](site|dist)-packages[/\\]torch[/\\]")
MAX_ENTRIES = 2_000_000  # events kept (a 32-layer decode run made about 21,000)


def directory() -> Path | None:
    d = os.environ.get(ENV)
    return Path(d) if d else None


# the record in progress in this process: (device, rank, base), or None
_active: tuple[Any, int, int] | None = None


def start(device: Any, rank: int) -> bool:
    """Begin recording `device`'s allocations where the run asks for it (CUDA only), with the
    bytes allocated at that moment as the record's base; whether a record is in progress. A
    record in progress goes on (its base stays the one it began with)."""
    global _active
    if directory() is None or getattr(device, "type", "cpu") != "cuda":
        return False
    if _active is None:
        torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES, stacks="python",
                                                 device=device)
        _active = (device, rank, torch.cuda.memory_allocated(device))
    return True


def finish(peak_allocated: int | None) -> str | None:
    """Write the record in progress (if any) and stop recording; the pickle's path, or None."""
    global _active
    out = directory()
    if out is None or _active is None:
        return None
    device, rank, base = _active
    _active = None
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"rank{rank}.pickle"
    torch.cuda.memory._dump_snapshot(str(path))
    torch.cuda.memory._record_memory_history(enabled=None, device=device)
    meta = {"rank": rank, "device": getattr(device, "index", None), "allocated_at_start": base,
            "peak_allocated": peak_allocated}
    (out / f"rank{rank}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return str(path)


def finish_at_exit() -> None:
    """Write the record of a run that ends before its numbers were collected (an OOM, say:
    where a predicted and a measured peak differ most); runtime/dist.run_and_leave calls it."""
    if _active is not None:
        finish(torch.cuda.max_memory_allocated(_active[0]))


# ---------------------------------------------------------------------------------------------
# The replay (a snapshot is a dict of lists: it needs no GPU)


@dataclass(frozen=True)
class Peak:
    bytes: int  # the largest sum: the base plus what the record allocated and had not freed
    event: int  # the index of the event that reached it (-1: the base itself)
    events: int
    base: int
    live: tuple[dict[str, Any], ...]  # the record's allocations live then


def replay(events: list[dict[str, Any]], base: int) -> Peak:
    """The largest live sum over the record. An allocation adds its size and its free request
    takes it away (torch's allocated-bytes statistic drops at the request); the free of a
    buffer allocated before the record began takes its size out of the base."""
    live: dict[int, dict[str, Any]] = {}
    cur = best = base
    best_i = -1
    best_live: tuple[dict[str, Any], ...] = ()
    for i, e in enumerate(events):
        if e["action"] == "alloc":
            live[e["addr"]] = e
            cur += e["size"]
        elif e["action"] == "free_requested":
            live.pop(e["addr"], None)
            cur -= e["size"]
        if cur > best:
            best, best_i, best_live = cur, i, tuple(live.values())
    return Peak(best, best_i, len(events), base, best_live)


def site(event: dict[str, Any], depth: int = 4) -> str:
    """Where a buffer was allocated: its innermost `depth` Python frames outside torch's own
    modules (file:line function, innermost first)."""
    frames = [f for f in event.get("frames") or [] if not TORCH_FILE.search(f["filename"])]
    return " < ".join(f"{Path(f['filename']).name}:{f['line']} {f['name']}"
                      for f in frames[:depth]) or "(no Python frame)"


def by_site(live: Iterable[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """(bytes, buffers, site) of the live set, largest first."""
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in live:
        g = groups[site(e)]
        g[0] += e["size"]
        g[1] += 1
    return sorted(((b, n, s) for s, (b, n) in groups.items()), reverse=True)


def device_events(snapshot: dict[str, Any], device: int | None = None) -> list[dict[str, Any]]:
    """The record's events of the device a rank used (its index, where the record says)."""
    all_traces = snapshot.get("device_traces", [])
    if device is not None and 0 <= device < len(all_traces):
        return all_traces[device]
    traces = [t for t in all_traces if t]
    if len(traces) > 1:
        raise ValueError(f"events of {len(traces)} devices and no device index")
    return traces[0] if traces else []


def report(pickle_path: Path, top: int) -> str:
    meta = json.loads(pickle_path.with_suffix(".json").read_text())
    with pickle_path.open("rb") as f:
        snapshot = pickle.load(f)
    events = device_events(snapshot, meta.get("device"))
    p = replay(events, meta["allocated_at_start"])
    lines = [(f"{pickle_path}: the live set peaks at {p.bytes:,} B, event {p.event} of "
             f"{p.events} (torch's max_memory_allocated: {meta['peak_allocated']:,} B)"),
             (f"{p.base:,} B allocated when the record began (weights, caches, inputs); "
             f"above it, by where it was allocated:")]
    if len(events) >= MAX_ENTRIES:
        lines.append(f"  warning: the record kept only its last {MAX_ENTRIES:,} events; the "
                     "replay misses the earlier ones, so this peak may be wrong")
    rows = by_site(p.live)
    for b, n, s in rows[:top]:
        lines.append(f"  {b:>15,} B {n:>5} x  {s}")
    if len(rows) > top:
        rest = sum(b for b, _, _ in rows[top:])
        lines.append(f"  {rest:>15,} B in {len(rows) - top} more sites")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m planc.backends.torch.memory_trace",
                                 description="the live set at each rank's memory peak")
    ap.add_argument("dir", type=Path, help=f"the directory {ENV} named")
    ap.add_argument("--top", type=int, default=30, help="sites to list per rank")
    args = ap.parse_args(argv)
    paths = sorted(args.dir.glob("rank*.pickle"))
    if not paths:
        print(f"planc: no rank*.pickle in {args.dir} (run with {ENV}={args.dir} --device cuda)")
        return 2
    status, out = 0, []
    for path in paths:
        try:
            out.append(report(path, args.top))
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, KeyError, TypeError) as e:
            out.append(f"planc: {path}: not a record this can read ({type(e).__name__}: {e}); "
                       f"it needs the {path.with_suffix('.json').name} beside it, both "
                       f"written by a run with {ENV}")
            status = 2
    print("\n\n".join(out))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
