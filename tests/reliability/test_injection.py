"""No user string becomes code. Names are ASCII identifiers: quotes, parentheses, newlines, `#`
and `; import os` cannot be part of one (each is a syntax error or a comment), and look-alike
Unicode letters are refused, never NFKC-normalised. Names that are Python keywords, builtins or
planc's own words are fine as planc names, and `planc emit` writes them only as string
literals: the program's code (every identifier, import and call) is the same whatever the
names, which the tests check on the Python AST and on its tokens."""

from __future__ import annotations

import ast
import io
import json
import tokenize
from collections import Counter

import pytest

from tests.reliability.common import TP2, no_traceback, planc, write

GOOD = TP2.read_text()
NEUTRAL = ("pa", "mo", "cl", "wo", "ax")


def named(plan: str, model: str, cluster: str, workload: str, axis: str) -> str:
    text = GOOD
    for old, new in (("plan tp2", f"plan {plan}"), ("model tiny", f"model {model}"),
                     ("model    tiny", f"model    {model}"), ("cluster cpu2", f"cluster {cluster}"),
                     ("cluster  cpu2", f"cluster  {cluster}"),
                     ("workload small", f"workload {workload}"), ("tp=2", f"{axis}=2"),
                     ("over tp", f"over {axis}")):
        text = text.replace(old, new)
    return text


def code_shape(src: str) -> list[str]:
    """The program with every string constant blanked: what it does, not what it says."""
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = "<str>"
    return [ast.dump(n) for n in tree.body]


def identifiers(src: str) -> Counter[str]:
    """Every name the program binds, reads, imports or passes as a keyword."""
    found: Counter[str] = Counter()
    for node in ast.walk(ast.parse(src)):
        for attr in ("id", "attr", "name", "asname", "arg", "module"):
            value = getattr(node, attr, None)
            if isinstance(value, str):
                found[value] += 1
    return found


def name_tokens(src: str) -> Counter[str]:
    toks = tokenize.generate_tokens(io.StringIO(src).readline)
    return Counter(t.string for t in toks if t.type == tokenize.NAME)


def string_constants(src: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
    return out


def emit(tmp_path, filename: str, text: str, sub: str = "a") -> str:
    (tmp_path / sub).mkdir(exist_ok=True)
    f = write(tmp_path / sub / filename, text)
    r = planc("emit", f)
    no_traceback(r)
    assert r.code == 0, r.err
    return r.out


HOSTILE = [
    ("class", "None", "torch", "os", "import"),  # keywords and modules
    ("__import__", "exec", "print", "main", "args"),  # builtins and the template's own names
    ("x", "over", "from", "mesh", "shard"),  # planc's own words
    ("plan", "model", "cluster", "workload", "device"),
    ("CONFIG", "PLAN", "program", "rank_dist", "RunConfig"),  # names the program assigns
]


@pytest.mark.parametrize("names", HOSTILE, ids=lambda n: "-".join(n))
def test_hostile_names_are_only_string_literals_in_the_emitted_program(names, tmp_path):
    neutral = emit(tmp_path, "p.plan", named(*NEUTRAL), "neutral")
    hostile = emit(tmp_path, "p.plan", named(*names), "hostile")
    assert code_shape(hostile) == code_shape(neutral)
    assert identifiers(hostile) == identifiers(neutral)
    assert name_tokens(hostile) == name_tokens(neutral)  # comments and strings aside
    consts = string_constants(hostile)
    assert names[0] in consts  # PLAN = 'class'
    assert names[4] in consts  # the mesh axis, inside CONFIG
    # The comments differ only inside the quoted names (the plan's and the axis's).
    assert comments(hostile, names) == comments(neutral, NEUTRAL)


def comments(src: str, names: tuple[str, ...]) -> list[str]:
    toks = tokenize.generate_tokens(io.StringIO(src).readline)
    out = []
    for t in toks:
        if t.type == tokenize.COMMENT:
            text = t.string
            for i in (0, 4):  # only the plan and axis names reach the program
                text = text.replace(repr(names[i]), f"<name {i}>")
            out.append(text)
    return out


def test_a_hostile_file_name_stays_inside_a_comment_string(tmp_path):
    filename = "x'\")\n#; import os; os.system('echo pwned') \u2028\x85.plan"
    src = emit(tmp_path, filename, named(*NEUTRAL))
    neutral = emit(tmp_path, "plain.plan", named(*NEUTRAL))
    assert code_shape(src) == code_shape(neutral)
    assert name_tokens(src) == name_tokens(neutral)
    [header] = [ln for ln in src.splitlines() if ln.startswith("# plan ")]
    assert header == f"# plan 'pa', from {filename!r}"
    assert ast.literal_eval(header.split("from ", 1)[1]) == filename


# Strings that are not names: each is refused by the parser with a code and a position.
NOT_NAMES = {
    "quote": ('plan "p" {\n}\n', "P100", 1, 6),
    "single_quote": ("model 'm' {\n}\n", "P100", 1, 7),
    "parentheses": ("plan p() {\n}\n", "P100", 1, 7),
    "newline": ("plan p\nq {\n}\n", "P110", 1, 7),
    "hash": ("plan p#q {\n}\n", "P110", 1, 11),  # the comment ate the '{': the line ends
    "semicolon_import": ("plan p; import os {\n}\n", "P110", 1, 7),
    "import_line": ("import os\n", "P105", 1, 1),
    "dunder_call": ("plan __import__('os') {\n}\n", "P100", 1, 16),
    "fullwidth": ("model \uff54iny {\n}\n", "P100", 1, 7),
    "ligature": ("model \ufb01le {\n}\n", "P100", 1, 7),
    "cyrillic_a": ("model t\u0430 {\n}\n", "P100", 1, 8),
    "non_breaking_space": ("model\u00a0m {\n}\n", "P100", 1, 6),
}


@pytest.mark.parametrize("name", sorted(NOT_NAMES))
def test_strings_that_are_not_names_are_refused_where_they_start(name, tmp_path):
    text, code, line, col = NOT_NAMES[name]
    r = planc("check", write(tmp_path / "x.plan", text), "--format", "json")
    no_traceback(r)
    assert r.code == 1
    d = json.loads(r.out)["diagnostics"][0]
    assert (d["code"], d["line"], d["column"]) == (code, line, col), d
    out = write(tmp_path / "prog.py", "previous\n")
    assert planc("emit", tmp_path / "x.plan", "-o", out).code == 1
    assert out.read_text() == "previous\n"


def test_look_alike_letters_are_refused_never_normalised_into_another_name(tmp_path):
    # `ｔiny` (fullwidth t) NFKC-normalises to `tiny`, a declared name. planc refuses it and
    # says which ASCII letter it looks like, instead of silently binding it to `tiny`.
    text = GOOD.replace("  model    tiny", "  model    \uff54iny")
    r = planc("check", write(tmp_path / "twin.plan", text), "--format", "json")
    [d] = json.loads(r.out)["diagnostics"]
    assert r.code == 1 and (d["code"], d["line"], d["column"]) == ("P100", 26, 12)
    assert "FULLWIDTH LATIN SMALL LETTER T" in d["message"]
    assert "looks like 't'" in d["hint"] and "does not normalise" in d["hint"]
    r = planc("check", write(tmp_path / "lig.plan", GOOD.replace("model tiny", "model \ufb01ne")))
    assert r.code == 1 and "looks like 'fi'" in r.out
    # Comments may hold any Unicode: only names and numbers are ASCII.
    ok = planc("check", write(tmp_path / "c.plan", "# ｔｉｎｙ ﬁne ✓ 模型\n" + GOOD))
    assert ok.code == 0, ok.text
