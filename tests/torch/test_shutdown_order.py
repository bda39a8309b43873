"""runtime/dist.shutdown: what was registered with before_shutdown runs first, last registered
first, once, and only then is the process group destroyed (a CUDA graph holding NCCL
collectives must be reset before the destroy, pytorch/pytorch#115388)."""

from __future__ import annotations

from planc.backends.torch.runtime import dist as rank_dist


def test_before_shutdown_runs_before_the_process_group_is_destroyed(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(rank_dist.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(rank_dist.dist, "destroy_process_group", lambda: events.append("destroy"))
    rank_dist.before_shutdown(lambda: events.append("first"))
    rank_dist.before_shutdown(lambda: events.append("second"))
    rank_dist.shutdown()
    rank_dist.shutdown()
    assert events == ["second", "first", "destroy", "destroy"]
