"""Prompts in, text out: `planc generate` and the emitted decode program's --prompts, on a tiny
random Llama checkpoint with a BPE tokenizer trained here (scripts/make_tiny_checkpoint.py), under
torchrun on CPU ranks (gloo).

Greedy tokens equal Hugging Face generate's on the same prompts (left padding and an attention
mask: planc pads on the right, each sequence computed as if alone), on one device, on tensor
parallel 2 and on a ring over 4 sequence ranks; five prompts of different lengths run as two
batches of the plans' 4 (three filler rows); the stop token is one the model produces on its
third step for the first prompt, so that sequence stops early ("stop") while others run to
max_new_tokens ("length"). Sampling with a seed gives the same text on one device, on tensor
parallel 2 (also with the vocabulary split) and on a two-stage pipeline. Bad input is a
diagnostic and exit 1, before anything is launched.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from planc.backends.torch.runtime.textgen import sample, uniform
from planc.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs" / "local"
PROMPTS = ["the cat sat", "a quick dog ran to the mat", "we", "tensor parallel", "the lazy fox"]
NEW = 6  # the decode plans' generate
SINGLE = """
cluster cpu1 {
  device CPU x 1
}
model tiny {
  arch llama
  layers 4
  hidden 64
  heads 8
  kv_heads 4
  head_dim 8
  ffn 128
  vocab 128
  dtype fp32
}
workload chat {
  batch 4
  phase decode
  context 12
  generate 6
}
plan single {
  model tiny
  cluster cpu1
  workload chat
  mesh tp=1
  shard heads, kv_heads, ffn over tp
}
"""


def _make_tiny_checkpoint() -> Any:
    spec = importlib.util.spec_from_file_location("make_tiny", ROOT / "scripts" /
                                                  "make_tiny_checkpoint.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_tiny_checkpoint


def hf_generate(path: Path, prompts: list[str], eos: int | None) -> list[list[int]]:
    """Hugging Face generate, greedy, left padding: each row's new tokens up to its stop."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=NEW, eos_token_id=eos,
                             pad_token_id=tok.pad_token_id)
    rows = out[:, enc["input_ids"].shape[1]:].tolist()
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[int]]]:
    """The tiny checkpoint, with a stop token the first prompt reaches on its third step; and
    HF generate's tokens for PROMPTS under that stop token."""
    path = _make_tiny_checkpoint()(tmp_path_factory.mktemp("tiny") / "ckpt")
    free = hf_generate(path, PROMPTS, eos=None)
    eos = free[0][2]
    assert eos not in free[0][:2]
    gen = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": eos}))
    want = hf_generate(path, PROMPTS, eos=eos)
    assert len(want[0]) == 3 and any(len(r) == NEW for r in want)  # "stop" and "length" rows
    return path, want


def generate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_equals_hf(records: list[dict[str, Any]], want: list[list[int]]) -> None:
    assert [r["prompt"] for r in records] == PROMPTS
    assert [r["tokens"] for r in records] == want
    eos = want[0][-1]  # the first prompt stops at its third token
    assert [r["finish_reason"] for r in records] == [
        "stop" if w[-1] == eos else "length" for w in want]
    assert all(isinstance(r["text"], str) for r in records)


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return f


# --- greedy: equal to Hugging Face generate -------------------------------------------------------


@pytest.mark.distributed
@pytest.mark.parametrize("plan", ["decode_tp2", "decode_ring4", "decode_pp2"])
def test_generate_greedy_equals_hf_generate_on_prompts_of_different_lengths(
    plan, checkpoint, prompts_file, tmp_path, capsys
):
    """Tensor parallel 2, and a ring over 4 sequence ranks (zig-zag prompt chunks: each row's
    last prompt token on the rank that holds it, padded slots masked in flash-decoding)."""
    path, want = checkpoint
    out = tmp_path / "out.jsonl"
    code, _, err = generate(capsys, str(SPECS / f"{plan}.plan"), "--weights", str(path),
                            "--prompts", str(prompts_file), "-o", str(out),
                            "--max-new-tokens", str(NEW))
    assert code == 0, err
    assert_equals_hf(read_jsonl(out), want)
    assert "5 prompts" in err


@pytest.mark.distributed
def test_emitted_program_under_torchrun_writes_the_jsonl_of_hf_generate(
    checkpoint, prompts_file, tmp_path, capsys
):
    """One device: `planc emit`, then the program itself with --prompts and -o; rank 0's
    stderr (a terminal for rich, by TTY_COMPATIBLE) shows the checkpoint's loading bar."""
    from planc.backends.torch.launch import run_program

    path, want = checkpoint
    plan, prog, out = tmp_path / "single.plan", tmp_path / "prog.py", tmp_path / "out.jsonl"
    plan.write_text(SINGLE)
    assert main(["emit", str(plan), "-o", str(prog)]) == 0
    m = run_program(prog, nproc=1, device="cpu", weights=path, timeout_s=240,
                    program_args=[f"--prompts={prompts_file}", "-o", str(out)],
                    extra_env={"TTY_COMPATIBLE": "1"}, log_dir=tmp_path / "run")
    assert m is not None
    assert_equals_hf(read_jsonl(out), want)
    assert m["results"] == read_jsonl(out) and m["prompts"] == 5 and m["batches"] == 2
    assert m["steps"] == [NEW, NEW]  # some sequences of each batch ran to max_new_tokens
    (log,) = (tmp_path / "run").glob("logs/*/attempt_*/0/stderr.log")
    assert f"rank 0: loading layers 0..3 from {path}: done" in log.read_text()


@pytest.mark.distributed
@pytest.mark.parametrize("plan", ["decode_pp2", "single"])
def test_the_run_stops_when_every_sequence_has_stopped(plan, checkpoint, tmp_path, capsys):
    """The first prompt alone stops at its third token: three steps run, on a pipeline (every
    stage leaves at the same round) as on one device, not max_new_tokens."""
    path, want = checkpoint
    plan_file = SPECS / f"{plan}.plan"
    if plan == "single":
        plan_file = tmp_path / "single.plan"
        plan_file.write_text(SINGLE)
    out = tmp_path / "out.jsonl"
    code, _, err = generate(capsys, str(plan_file), "--weights", str(path), "--prompt",
                            PROMPTS[0], "-o", str(out), "--timeout", "180")
    assert code == 0, err
    (record,) = read_jsonl(out)
    assert record["tokens"] == want[0] and record["finish_reason"] == "stop"
    assert "1 prompt, 3 new tokens (1 stopped at a stop token), 3 steps in" in err


# --- sampling: seeded, the same text whatever the plan ------------------------------------------


@pytest.mark.distributed
def test_seeded_sampling_gives_the_same_text_on_one_device_tensor_parallel_and_a_pipeline(
    checkpoint, prompts_file, tmp_path, capsys
):
    path, _ = checkpoint
    plan, vocab = tmp_path / "single.plan", tmp_path / "vocab_tp2.plan"
    plan.write_text(SINGLE)
    vocab.write_text(SINGLE.replace("CPU x 1", "CPU x 2").replace("tp=1", "tp=2")
                     .replace("ffn over tp", "ffn, vocab over tp"))  # logits gathered to sample
    texts = []
    for p in (plan, SPECS / "decode_tp2.plan", SPECS / "decode_pp2.plan", vocab):
        out = tmp_path / f"{p.stem}.jsonl"
        code, _, err = generate(capsys, str(p), "--weights", str(path), "--prompts",
                                str(prompts_file), "--temperature", "1.5", "--top-p", "0.95",
                                "--seed", "11", "-o", str(out))
        assert code == 0, err
        texts.append(read_jsonl(out))
    assert texts[0] == texts[1] == texts[2] == texts[3]
    greedy = hf_generate(path, PROMPTS, eos=json.loads(
        (path / "generation_config.json").read_text())["eos_token_id"])
    assert [r["tokens"] for r in texts[0]] != greedy  # it did sample


def test_sampling_draws_from_seed_prompt_and_step_only():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    a = sample(logits, [0, 1, 2], 4, 1.0, 1.0, seed=7)
    assert torch.equal(a, sample(logits, [0, 1, 2], 4, 1.0, 1.0, seed=7))
    # Row order and batch size do not matter: row 1 alone draws what it drew beside the others.
    assert torch.equal(sample(logits[1:2], [1], 4, 1.0, 1.0, seed=7), a[1:2])
    draws = {tuple(sample(logits, [0, 1, 2], 4, 1.0, 1.0, seed=s).tolist()) for s in range(8)}
    assert len(draws) > 1
    assert uniform(7, 1, 4) != uniform(7, 1, 5)


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(sample(logits, [0], t, 1.0, 0.7, seed=3)) for t in range(200)}
    assert seen == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    assert {int(sample(logits, [0], t, 1.0, 0.01, seed=3)) for t in range(20)} == {0}


def test_headdim_attention_of_a_decode_step_ignores_the_masked_slots():
    """A head x head_dim plan's decode step over a padded cache: equal to attention over the
    slots each row keeps (here without the padding at all)."""
    from planc.backends.torch.runtime.headdim_attention import headdim_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, s, 8, generator=g) for n, s in ((4, 1), (2, 6), (2, 6)))
    keys = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    keys[0, ..., 2:4] = False  # row 0: a prompt of 2 tokens padded to 4, then 2 generated
    got = headdim_attention(q, k, v, None, causal=False, scale=8**-0.5, keys=keys)
    kept = [0, 1, 4, 5]
    want0 = torch.nn.functional.scaled_dot_product_attention(
        q[:1], k[:1, :, kept], v[:1, :, kept], enable_gqa=True)
    want1 = torch.nn.functional.scaled_dot_product_attention(q[1:], k[1:], v[1:], enable_gqa=True)
    assert torch.allclose(got, torch.cat((want0, want1)), atol=1e-6)


def test_flash_decode_of_masked_slots_weighs_a_rank_that_sees_none_zero():
    """Sequence-sharded cache: rank parts of the slots, some masked, one part wholly masked
    for a row; merged, equal to attention over the visible slots only."""
    from planc.backends.torch.runtime.decode_attention import lse_merge, masked_attention_with_lse

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, s, 8, generator=g) for n, s in ((4, 1), (2, 9), (2, 9)))
    keys = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    keys[0, ..., 3:6] = False  # row 0 sees nothing of the middle part
    keys[1, ..., [0, 7]] = False
    parts = [masked_attention_with_lse(q, k[:, :, a:b], v[:, :, a:b], keys[..., a:b], 8**-0.5)
             for a, b in ((0, 3), (3, 6), (6, 9))]
    got = lse_merge(torch.stack([o for o, _ in parts]), torch.stack([lse for _, lse in parts]))
    for row, seen in enumerate(keys[:, 0, 0]):
        want = torch.nn.functional.scaled_dot_product_attention(
            q[row:row + 1], k[row:row + 1, :, seen], v[row:row + 1, :, seen], enable_gqa=True)
        assert torch.allclose(got[row:row + 1], want, atol=1e-6)


# --- bad input: a diagnostic and exit 1, nothing launched ------------------------------------


def test_a_checkpoint_without_a_tokenizer_is_refused(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(path / f, bare / f)
    code, _, err = generate(capsys, str(SPECS / "decode_tp2.plan"), "--weights", str(bare),
                            "--prompt", "the cat")
    assert code == 1 and "error[R020]" in err and "no tokenizer" in err
    assert "Traceback" not in err and "running plan" not in err


def test_a_weights_path_that_is_not_a_directory_is_named_as_such(tmp_path, capsys):
    """A mistyped --weights is R010 (as `planc run` says it), not a missing tokenizer."""
    code, _, err = generate(capsys, str(SPECS / "decode_tp2.plan"), "--weights",
                            str(tmp_path / "tiny-lama"), "--prompt", "the cat")
    assert code == 1 and "error[R010]" in err and "is not a directory" in err, err
    assert "R020" not in err and "Traceback" not in err and "running plan" not in err


@pytest.mark.parametrize(("prompt", "code", "words"), [
    ("", "R021", "--prompt is empty"),
    ("the cat sat on the mat and looked at the dog " * 3, "R022", "the plan's context is 12"),
])
def test_an_empty_or_too_long_prompt_is_refused(checkpoint, capsys, prompt, code, words):
    path, _ = checkpoint
    rc, _, err = generate(capsys, str(SPECS / "decode_tp2.plan"), "--weights", str(path),
                          "--prompt", prompt)
    assert rc == 1 and f"error[{code}]" in err and words in err, err
    assert "running plan" not in err


def test_malformed_jsonl_is_refused_with_its_line(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "the cat"}\n\n{"prompt": "a dog",\n{"text": "x"}\n')
    code, _, err = generate(capsys, str(SPECS / "decode_tp2.plan"), "--weights", str(path),
                            "--prompts", str(f))
    assert code == 1 and "error[R024]" in err and "line 3" in err, err
    assert f"--> {f}:3:" in err
    f.write_text('{"prompt": "the cat"}\n{"text": "x"}\n')
    code, _, err = generate(capsys, str(SPECS / "decode_tp2.plan"), "--weights", str(path),
                            "--prompts", str(f))
    assert code == 1 and 'line 2' in err and 'no "prompt" string' in err, err


@pytest.mark.parametrize(("plan", "args", "words"), [
    ("tp2.plan", [], "workload is prefill, not decode"),
    ("decode_tp2.plan", ["--max-new-tokens", "7"], "--max-new-tokens 7 is outside 1..6"),
    ("decode_tp2.plan", ["--top-p", "0"], "--top-p 0.0 is outside (0, 1]"),
])
def test_a_plan_or_option_that_cannot_generate_is_refused(checkpoint, capsys, plan, args, words):
    path, _ = checkpoint
    code, _, err = generate(capsys, str(SPECS / plan), "--weights", str(path),
                            "--prompt", "the cat", *args)
    assert code == 1 and words in err, err
    assert "Traceback" not in err and "running plan" not in err
