"""The memory trace's replay (planc/backends/torch/memory_trace.py): the live set at the peak
of a record in torch's snapshot format, grouped by where each buffer was allocated. The
recording itself needs CUDA (round 10 of benchmarks/results/h200_decode_issue15.md ran it)."""

from __future__ import annotations

import json
import pickle

from planc.backends.torch import memory_trace as mt


def frame(file: str, line: int, name: str) -> dict:
    return {"filename": file, "line": line, "name": name}


STEP = [frame("/x/planc/backends/torch/runtime/decode_step.py", 380, "_attention"),
        frame("/usr/lib/python3/dist-packages/torch/nn/modules/module.py", 1775, "_call_impl")]
FLUSH = [frame("/x/triton/backends/nvidia/driver.py", 761, "get_empty_cache_for_benchmark"),
         frame("/x/triton/testing.py", 152, "do_bench")]


def ev(action: str, addr: int, size: int, frames: list) -> dict:
    return {"action": action, "addr": addr, "size": size, "frames": frames, "stream": 0}


EVENTS = [
    ev("alloc", 1, 100, STEP),
    ev("free_requested", 99, 40, STEP),  # a buffer from before the record: out of the base
    ev("free_completed", 99, 40, STEP),
    ev("alloc", 2, 1000, FLUSH),
    ev("alloc", 3, 10, STEP),
    ev("free_requested", 2, 1000, FLUSH),
    ev("alloc", 4, 500, STEP),
]


def test_replay_finds_the_largest_live_set_and_what_was_in_it():
    p = mt.replay(EVENTS, base=5000)
    # 5000 + 100 - 40 + 1000 + 10 = 6070 at event 4; after the flush goes, 6070 - 1000 + 500
    assert (p.bytes, p.event, p.events, p.base) == (6070, 4, len(EVENTS), 5000)
    assert sorted(e["addr"] for e in p.live) == [1, 2, 3]


def test_a_record_that_only_frees_peaks_at_its_base():
    p = mt.replay([ev("free_requested", 7, 64, STEP)], base=128)
    assert (p.bytes, p.event, p.live) == (128, -1, ())


def test_sites_skip_torchs_own_frames_and_group_the_live_set():
    rows = mt.by_site(mt.replay(EVENTS, base=0).live)
    assert rows[0] == (1000, 1, ("driver.py:761 get_empty_cache_for_benchmark"
                                " < testing.py:152 do_bench"))
    assert rows[1] == (110, 2, "decode_step.py:380 _attention")
    assert mt.site({"frames": []}) == "(no Python frame)"
    assert mt.site({"frames": STEP[::-1]}) == "decode_step.py:380 _attention"  # planc's torch/


def test_the_report_reads_a_ranks_files(tmp_path, capsys):
    (tmp_path / "rank0.pickle").write_bytes(pickle.dumps({"device_traces": [EVENTS],
                                                          "segments": []}))
    (tmp_path / "rank0.json").write_text(json.dumps(
        {"rank": 0, "allocated_at_start": 5000, "peak_allocated": 6072}))
    assert mt.main([str(tmp_path), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "peaks at 6,070 B, event 4 of 7" in out and "6,072 B" in out
    assert "do_bench" in out and "110 B in 1 more sites" in out


def test_no_record_is_a_clear_message(tmp_path, capsys):
    assert mt.main([str(tmp_path)]) == 2
    assert "no rank*.pickle" in capsys.readouterr().out


def test_an_unreadable_record_is_a_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "rank0.pickle").write_bytes(b"not a pickle")  # and no rank0.json beside it
    assert mt.main([str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "rank0.pickle: not a record this can read" in out and "rank0.json" in out


def test_the_record_of_the_ranks_device_is_replayed():
    other = [ev("alloc", 9, 10**6, STEP)]
    snapshot = {"device_traces": [other, EVENTS]}
    assert mt.device_events(snapshot, 1) is EVENTS
    try:
        mt.device_events(snapshot)
    except ValueError as e:
        assert "2 devices" in str(e)
    else:
        raise AssertionError("two devices' events without an index")


def test_nothing_is_recorded_off_cuda_or_unasked(monkeypatch, tmp_path):
    import torch

    monkeypatch.delenv(mt.ENV, raising=False)
    assert not mt.start(torch.device("cpu"), 0)
    monkeypatch.setenv(mt.ENV, str(tmp_path))
    assert not mt.start(torch.device("cpu"), 0)
    assert mt.finish(None) is None
    mt.finish_at_exit()  # nothing active: writes nothing
    assert list(tmp_path.iterdir()) == []
