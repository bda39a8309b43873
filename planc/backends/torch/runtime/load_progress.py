"""A progress bar while a rank reads its layers from a checkpoint: rich, on rank 0's stderr, on a
terminal only (rich decides: TTY_COMPATIBLE=1 forces it where stderr is a file), gone when the
weights are in.

A large checkpoint takes minutes to read; the bar counts the layers of rank 0's own stage as their
first tensor is read (ShardReader.on_read), so it moves with the reads themselves and needs no
list of the tensors a rank will read. Other ranks read their own stages at the same time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from planc.backends.torch.runtime.dist import RankContext
from planc.backends.torch.weights import ShardReader

M = TypeVar("M")
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def with_progress(build: Callable[[RankContext, ShardReader], M]
                  ) -> Callable[[RankContext, ShardReader], M]:
    """`build` (a load_with builder), with a bar of its layers on rank 0's terminal."""

    def built(ctx: RankContext, reader: ShardReader) -> M:
        if ctx.rank != 0:
            return build(ctx, reader)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            return build(ctx, reader)
        layers = list(ctx.layout.stage_layers())
        seen: set[int] = set()
        what = f"rank 0: loading layers {layers[0]}..{layers[-1]} from {reader.path}"
        with Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                      MofNCompleteColumn(), console=console, transient=True) as bar:
            task = bar.add_task(what, total=len(layers))

            def on_read(name: str) -> None:
                m = LAYER.search(name)
                if m and int(m.group(1)) in layers and int(m.group(1)) not in seen:
                    seen.add(int(m.group(1)))
                    bar.update(task, completed=len(seen) - 1)  # the newest is being read

            reader.on_read = on_read
            try:
                model = build(ctx, reader)
                bar.update(task, completed=len(layers))
            finally:
                reader.on_read = None
        console.print(f"{what}: done", highlight=False, markup=False)
        return model

    return built
