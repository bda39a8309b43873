"""Friendly labels for syntax errors, matched by example (lark's `match_examples`).

Each entry: (code, message, hint, examples). An example is a small bad input that fails in the
same parser state as the user's input; lark picks the label whose example fails the same way.
"""

from __future__ import annotations

SYNTAX_ERRORS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "P110",
        "a block needs a kind, a name and '{'",
        "blocks look like `model NAME { ... }`; kinds: device, cluster, model, workload, plan",
        ("model {\n}", "plan\n", "model m\n}", "model m layers 2\n", "model m from {\n}"),
    ),
    (
        "P111",
        "a key needs a value on the same line",
        "write `key value`, e.g. `layers 16` or `memory 80 GB`",
        ("model m {\nlayers\n}", "model m {\nlayers }", "plan p {\nmodel\n}"),
    ),
    (
        "P112",
        "one value per line",
        "put each `key value` on its own line (or separate them with ';')",
        (
            "model m {\nlayers 2 3\n}",
            "model m {\nlayers 2 heads 4\n}",
            "model m {\narch llama heads\n}",
            "model m {\nlayers 2 GB GB\n}",
        ),
    ),
    (
        "P113",
        "a mesh axis needs a size: `name=SIZE` (or `name=?` to let planc choose)",
        "e.g. `mesh pp=2, tp=8`",
        ("plan p {\nmesh tp\n}", "plan p {\nmesh tp=\n}", "plan p {\nmesh tp=2 pp=2\n}", "plan p {\nmesh\n}"),
    ),
    (
        "P114",
        "shard needs `DIM[, DIM] over AXIS[, AXIS]`",
        "e.g. `shard heads, kv_heads, ffn over tp`",
        (
            "plan p {\nshard heads tp\n}",
            "plan p {\nshard heads over\n}",
            "plan p {\nshard over tp\n}",
            "plan p {\nshard\n}",
            "plan p {\nshard heads over tp foo\n}",
            "plan p {\nshard heads over tp microbatches\n}",
        ),
    ),
    (
        "P115",
        "require needs `METRIC OP VALUE` with OP one of <=, >=, ==, <, >",
        "e.g. `require memory <= 90%` or `require throughput >= 12800 tokens/s`",
        ("plan p {\nrequire memory 90%\n}", "plan p {\nrequire memory <=\n}", "plan p {\nrequire\n}"),
    ),
    (
        "P116",
        "stage ranges are written `[FIRST..LAST]`, separated by commas",
        "e.g. `shard layers over pp stages [0..3], [4..15]`",
        (
            "plan p {\nshard layers over pp stages\n}",
            "plan p {\nshard layers over pp stages [0..3\n}",
            "plan p {\nshard layers over pp stages [0-3]\n}",
        ),
    ),
)
