"""inherit: `KIND NAME from BASE { ... }` -> one block holding BASE's lines overridden by its own.

Runs on the AST before resolving, so every inherited line keeps the span it was written at and
a bad value in BASE is reported where it is. What overrides what:
- key/value lines: a key set in the block replaces BASE's (`link` per kind: intra, inter);
- `mesh` and the objective: the block's own replaces BASE's;
- `shard`: a BASE line is dropped when the block shards any of its dimensions;
- `require`: a BASE line is dropped when the block limits the same metric in the same direction;
- `compress`: BASE's lines and the block's both apply.
A device's BASE may also be a preset (the resolver fills those in); any other unknown BASE, and
a chain of `from` that comes back to itself, is an error at the `from` name.
"""

from __future__ import annotations

from planc.diagnostics import Diagnostics, Related, did_you_mean, one_of
from planc.grammar import ast


def inherit(blocks: dict[tuple[str, str], ast.Block], presets: tuple[str, ...],
            diags: Diagnostics) -> dict[tuple[str, str], ast.Block]:
    """Blocks with their bases merged in; a block with an unknown base or in a cycle is left
    out (with an error), and so is one whose base is left out (its base's error explains)."""
    merged: dict[tuple[str, str], ast.Block] = {}
    failed: set[tuple[str, str]] = set()

    def visit(key: tuple[str, str], chain: tuple[tuple[str, str], ...]) -> ast.Block | None:
        if key in merged:
            return merged[key]
        if key in failed:
            return None
        b = blocks[key]
        base = b.base if isinstance(b.base, ast.Ident) else None
        if base is None:
            merged[key] = b
            return b
        base_key = (b.kind, base.name)
        if base_key not in blocks:
            if b.kind == "device" and base.name in presets:
                merged[key] = b  # the resolver starts it from the preset
                return b
            declared = sorted(n for k, n in blocks if k == b.kind and n != b.name.name)
            guess = did_you_mean(base.name, declared + (list(presets) if b.kind == "device"
                                                        else []))
            code = "E002" if b.kind == "device" else "E006"  # E002: every unknown device
            diags.error(code, f"unknown {b.kind} {base.name!r} after `from`", base.span,
                        f"did you mean {guess!r}?" if guess else
                        (f"declared {b.kind}s: {one_of(declared)}" if declared else
                         f"declare `{b.kind} {base.name} {{ ... }}` in this file"))
            failed.add(key)
            return None
        if base_key in chain or base_key == key:
            loop = " -> ".join(n for _, n in (*chain[chain.index(base_key):], key, base_key)) \
                if base_key in chain else f"{key[1]} -> {key[1]}"
            diags.error("E007", f"{b.kind} {key[1]!r} inherits from itself: {loop}", base.span,
                        "break the cycle: one of these blocks must not use `from`",
                        tuple(Related(blocks[k].name.span, f"{k[1]} declared here")
                              for k in chain if k != key))
            failed.add(key)
            return None
        parent = visit(base_key, (*chain, key))
        if parent is None:
            failed.add(key)
            return None
        # a device's chain ends at a preset: keep it so the resolver fills the preset's values
        root = parent.base if parent.base is not None else (
            parent.name if b.kind == "device" and parent.name.name in presets else None)
        merged[key] = ast.Block(b.kind, b.name, root, _merge(parent.body, b.body), b.span)
        return merged[key]

    for key in blocks:
        visit(key, ())
    return merged


def _merge(base: tuple[ast.Statement, ...], own: tuple[ast.Statement, ...]
           ) -> tuple[ast.Statement, ...]:
    keep = tuple(s for s in base if not any(_overrides(o, s) for o in own))
    return keep + own


def _overrides(own: ast.Statement, inherited: ast.Statement) -> bool:
    if isinstance(own, ast.Prop) and isinstance(inherited, ast.Prop):
        return own.key.name == inherited.key.name and _link_kind(own) == _link_kind(inherited)
    if isinstance(own, ast.Shard) and isinstance(inherited, ast.Shard):
        return bool({d.name for d in own.dims} & {d.name for d in inherited.dims})
    if isinstance(own, ast.Require) and isinstance(inherited, ast.Require):
        return own.metric.name == inherited.metric.name and own.op[0] == inherited.op[0]
    if isinstance(own, ast.Compress) and isinstance(inherited, ast.Compress):
        return [w.name for w in own.words] == [w.name for w in inherited.words]
    return type(own) is type(inherited) and isinstance(own, (ast.Mesh, ast.Objective))


def _link_kind(p: ast.Prop) -> str | None:
    return p.value.name.name if isinstance(p.value, ast.NamedQuantity) else None
