"""The pipelined decode's rounds (planc/layout/schedule.stage_rounds), checked as a message-passing
simulation: every send has its receive on the peer in the same round (what NCCL needs to make
progress), every input arrives before its item runs, and full pipelines have no idle rounds."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planc.layout.schedule import pipeline_rounds, stage_rounds

shapes = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 5))


@given(shapes)
def test_every_send_meets_its_receive_in_the_same_round(shape):
    nmb, steps, p = shape
    rounds = [stage_rounds(nmb, steps, p, k) for k in range(p)]
    assert len({len(r) for r in rounds}) == 1  # every stage walks the same rounds
    for k in range(p):
        dst = (k + 1) % p
        for rnd, (mine, theirs) in enumerate(zip(rounds[k], rounds[dst])):
            if mine.send:
                assert mine.run is not None
                target = mine.run if k < p - 1 else mine.run + nmb  # tokens feed the next step
                assert theirs.recv == target, (k, rnd)
            else:  # nothing comes from this stage: the peer expects nothing
                assert theirs.recv is None, (k, rnd)


@given(shapes)
def test_each_item_runs_once_per_stage_after_its_input_arrived(shape):
    nmb, steps, p = shape
    n = nmb * steps
    for k in range(p):
        got: dict[int, int] = {}  # item -> round its input arrived
        ran = []
        for rnd, r in enumerate(stage_rounds(nmb, steps, p, k)):
            if r.run is not None:
                needs_input = k > 0 or (r.run >= nmb and p > 1)
                if needs_input:
                    assert got.pop(r.run) < rnd, (k, r.run)
                ran.append(r.run)
            if r.recv is not None:
                got[r.recv] = rnd
        assert ran == list(range(n)) and not got


@given(shapes)
def test_the_first_stage_never_idles_when_microbatches_cover_the_stages(shape):
    nmb, steps, p = shape
    rounds = pipeline_rounds(nmb, steps, p)
    if nmb >= p:
        assert rounds == list(range(nmb * steps))
    else:  # each step after the first waits for its fill: p - nmb idle rounds
        assert rounds[-1] == nmb * steps - 1 + (steps - 1) * (p - nmb)


@pytest.mark.parametrize("microbatches,stages", [(1, 2), (2, 2), (4, 2), (2, 4), (3, 3), (1, 1)])
def test_a_pipelined_text_decode_asks_whether_to_stop_once_a_step(microbatches, stages):
    """checks_stop: the rounds that ask are a step's rounds apart (steady_step_rounds), and
    after the last stage chooses any item's tokens, a round that asks comes before it has run
    another step of every microbatch."""
    from planc.layout.schedule import checks_stop, steady_step_rounds

    per_step = len(steady_step_rounds(microbatches, stages))
    rounds = stage_rounds(microbatches, 8, stages, stages - 1)
    asked = [i for i in range(len(rounds)) if checks_stop(i, microbatches, stages)]
    assert asked[0] == 0 and all(b - a == per_step for a, b in pairwise(asked))
    for r, rnd in enumerate(rounds):
        if rnd.run is not None and r + per_step < len(rounds):
            later = [a for a in asked if a > r]
            assert later and later[0] <= r + per_step
