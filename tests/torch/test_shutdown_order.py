"""runtime/dist.shutdown: what was registered with before_shutdown runs first, last registered
first, once, and only then is the process group destroyed (a CUDA graph holding NCCL
collectives must be reset before the destroy, pytorch/pytorch#115388)."""

from __future__ import annotations

import gc
import weakref

from planc.backends.torch.runtime import dist as rank_dist


class _Holder:
    """Stands for a StaticStep: what it registers is its bound method."""

    def __init__(self, name: str, events: list[str], fail: bool = False) -> None:
        self.name, self.events, self.fail = name, events, fail

    def release(self) -> None:
        self.events.append(self.name)
        if self.fail:
            raise RuntimeError("CUDA error: an illegal memory access")


def test_before_shutdown_runs_before_the_process_group_is_destroyed(monkeypatch, capsys):
    """Last registered first; a release that raises is reported and the others and the destroy
    still run; a holder dropped before shutdown is not kept alive by its registration."""
    events: list[str] = []
    monkeypatch.setattr(rank_dist.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(rank_dist.dist, "destroy_process_group", lambda: events.append("destroy"))
    first, second = _Holder("first", events), _Holder("second", events, fail=True)
    dropped = _Holder("dropped", events)
    ref = weakref.ref(dropped)
    for h in (first, dropped, second):
        rank_dist.before_shutdown(h.release)
    del dropped
    gc.collect()
    assert ref() is None
    rank_dist.shutdown()
    rank_dist.shutdown()
    assert events == ["second", "first", "destroy", "destroy"]
    assert "illegal memory access" in capsys.readouterr().err
