"""The V500 hint lists each weight format's bytes from the dense weights, also for a plan that
already compresses (it used to compress twice and label int8 + 2:4 as 2:4)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import check_text, plan_text, verdict

STAGES = "  mesh stage=16\n  shard layers over stage fit cache microbatches 128\n"
FORMATS = ("dense", "int8", "2:4 MLP", "int8 + 2:4")


def cache_hint(compress: str) -> dict[str, str]:
    result, _ = check_text(plan_text(STAGES + compress))
    hint = verdict(result, "V500").obligation.hint
    own = re.search(r"one layer's weights are ([\d.]+ [KMG]?B)(?: \(([^)]+)\))?", hint)
    listed = re.search(r"of L2 \((?:compressed: )?([^)]*)\)", hint).group(1)
    sizes = {fmt: size for fmt, size in (re.fullmatch(r"(.+) ([\d.]+ [KMG]?B)", part).groups()
                                         for part in listed.split(", "))}
    sizes[own.group(2) or "dense"] = own.group(1)
    return sizes


@pytest.mark.parametrize("compress", ["  compress weights int8\n",
                                      "  compress mlp sparse 2:4\n"])
def test_the_cache_hint_of_a_compressed_plan_gives_each_format_the_dense_plans_bytes(compress):
    dense = cache_hint("")
    compressed = cache_hint(compress)
    assert "dense" in compressed
    for fmt in FORMATS:
        if fmt in dense and fmt in compressed:
            assert compressed[fmt] == dense[fmt], (fmt, dense, compressed)
    assert set(dense) | set(compressed) == set(FORMATS)
