#!/usr/bin/env python3
"""Real-scale check: harness against transformers, layer by layer, in bf16, on a random model of a real shape.

The committed goldens cover tiny models (hidden 64, 3 layers). This checks that the same engine holds at the
scale of the models researchers run: it writes a random-weight model of a real shape (random_model.py, fixed
seed; Pythia-1.4B by default, 2.8 GB), runs transformers in bf16 (`model.to(bfloat16)`, eager attention, as the
bf16 goldens are made; `--attn sdpa` for the other) with output_hidden_states on a few fixed token sequences
in one right-padded batch, runs harness in bf16 on the same token ids (examples/hidden_states.rs), and compares
every layer 0..L (L: the last block's output before the final norm) and the final norm:

    per token:   relative L2 error |ours - ref| / |ref| of each real token's vector, worst over all tokens
    mean-pooled: the same for each sequence's mean over its real tokens, worst over the sequences

and fails when any layer's worst error is above --tolerance (default 5e-2, the bf16 goldens' tolerance: bf16
keeps 8 significant bits, a step of 0.4 %, and the two engines round at the same boundaries but sum in other
orders, so single values land a bf16 step apart and the differences grow through the blocks; README.md in this
folder has the figures measured). The check tests itself: the same comparison of our layer l against the
reference's layer l + 1 (our last block against the final norm, what a missing final norm would look like)
must exceed the tolerance at every layer, or the check fails as unable to tell a wrong layer apart.

Usage (from the repository root, after `cargo build --release --example hidden_states`):
    scale_check.py [--shape pythia-1.4b] [--tolerance 5e-2] [--attn eager|sdpa] [--keep DIR] [--json FILE]
Memory: about twice the bf16 weights (transformers' copy and harness's memory map), 6 GB for Pythia-1.4B.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Importing a sibling script would leave __pycache__ folders in the repository.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import random_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEED = 1234
# Different lengths, so padding and per-sequence positions are exercised; short enough for a 2-core machine.
LENGTHS = [7, 16, 25, 32]


def token_ids(vocab: int) -> list:
    gen = torch.Generator().manual_seed(SEED)
    # Ids from 3 up: 0-2 are the special tokens of the bundled tokenizer.
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in LENGTHS]


def reference(model_dir: Path, seqs: list, attn: str) -> dict:
    """transformers' hidden.{l} [B, T, D] (l = L before the final norm) and final_norm, f32, padding zeroed."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation=attn, output_loading_info=True
    )
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        sys.exit(f"error: transformers read {model_dir} with {info}")
    model.eval()
    ids, mask = random_model.padded(seqs, "cpu")
    base = model.base_model
    blocks = base.layers
    captured = {}
    # transformers' hidden_states[L] is after the final norm; the last block's own output needs a hook.
    hook = blocks[-1].register_forward_hook(lambda _m, _i, out: captured.update(last=out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    hook.remove()
    layers = len(blocks)
    states = [h.float() for h in out.hidden_states[:layers]] + [captured["last"].float(), out.hidden_states[layers].float()]
    keep = mask[:, :, None].float()
    result = {f"hidden.{l}": states[l] * keep for l in range(layers + 1)}
    result["final_norm"] = states[layers + 1] * keep
    return result


def ours(model_dir: Path, seqs: list, work: Path, example: Path) -> dict:
    from safetensors.torch import load_file

    ids = work / "ids.json"
    ids.write_text(json.dumps(seqs))
    out = work / "harness.safetensors"
    subprocess.run(
        [str(example), "--model", str(model_dir), "--ids", str(ids), "--out", str(out), "--dtype", "bf16"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return load_file(str(out))


def errors(a: dict, b: dict, lengths: list, shift: int) -> list:
    """Per layer (0..L, then final_norm as L + 1): worst (per-token, mean-pooled) relative L2 error of our
    layer l against the reference's layer l + shift; None where l + shift is past the final norm."""
    names = sorted((k for k in a if k.startswith("hidden.")), key=lambda k: int(k.split(".")[1])) + ["final_norm"]
    rows = []
    for l, name in enumerate(names):
        if l + shift >= len(names):
            rows.append(None)
            continue
        x, y = a[name].float(), b[names[l + shift]].float()
        token, pooled = 0.0, 0.0
        for s, n in enumerate(lengths):
            xs, ys = x[s, :n], y[s, :n]
            per_token = (xs - ys).norm(dim=-1) / ys.norm(dim=-1).clamp_min(1e-12)
            token = max(token, per_token.max().item())
            xm, ym = xs.mean(0), ys.mean(0)
            pooled = max(pooled, ((xm - ym).norm() / ym.norm().clamp_min(1e-12)).item())
        rows.append((token, pooled))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="pythia-1.4b", choices=random_model.SHAPES)
    ap.add_argument("--tolerance", type=float, default=5e-2)
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    ap.add_argument("--example", type=Path, default=ROOT / "target" / "release" / "examples" / "hidden_states")
    ap.add_argument("--keep", type=Path, help="write the model here and keep it (default: a temporary directory)")
    ap.add_argument("--json", type=Path, help="also write the per-layer errors here")
    args = ap.parse_args()
    if not args.example.is_file():
        sys.exit(f"error: {args.example} is missing: cargo build --release --example hidden_states")
    torch.manual_seed(0)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="harness-scale-") as tmp:
        work = Path(tmp)
        model_dir = args.keep or work / "model"
        if not (model_dir / "model.safetensors").is_file():
            random_model.write(args.shape, model_dir)
        written = time.time()
        cfg = json.loads((model_dir / "config.json").read_text())
        seqs = token_ids(cfg["vocab_size"])
        mine = ours(model_dir, seqs, work, args.example)
        harness_s = time.time() - written
        ref = reference(model_dir, seqs, args.attn)
        reference_s = time.time() - written - harness_s
    lengths = [len(s) for s in seqs]
    right = errors(mine, ref, lengths, 0)
    wrong = errors(mine, ref, lengths, 1)

    failures = []
    print(f"{args.shape}, bf16, transformers attention {args.attn}, sequences of {lengths} tokens")
    print("layer   per-token  mean-pooled  | against layer + 1: per-token  mean-pooled")
    for l, (r, w) in enumerate(zip(right, wrong)):
        name = "norm" if l == len(right) - 1 else str(l)
        shown = f"{w[0]:10.2e} {w[1]:12.2e}" if w else f"{'-':>10} {'-':>12}"
        print(f"{name:>5} {r[0]:11.2e} {r[1]:12.2e}  | {shown}")
        if max(r) > args.tolerance or any(v != v for v in r):
            failures.append(f"layer {name}: error {max(r):.2e} above {args.tolerance:.0e}")
        if w and min(w) <= args.tolerance:
            failures.append(f"layer {name} passes as layer {l + 1} ({min(w):.2e}): the tolerance cannot tell them apart")
    total = time.time() - started
    worst = max(max(r) for r in right)
    closest_wrong = min(min(w) for w in wrong if w)
    print(
        f"worst error {worst:.2e} (tolerance {args.tolerance:.0e}); closest wrong layer {closest_wrong:.2e}; "
        f"harness {harness_s:.0f} s, transformers {reference_s:.0f} s, {total:.0f} s in all"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "shape": args.shape,
                    "attn": args.attn,
                    "lengths": lengths,
                    "tolerance": args.tolerance,
                    "per_layer": [{"token": r[0], "pooled": r[1]} for r in right],
                    "against_next_layer": [({"token": w[0], "pooled": w[1]} if w else None) for w in wrong],
                    "seconds": {"harness": harness_s, "transformers": reference_s, "total": total},
                },
                indent=1,
            )
        )
    if failures:
        print("FAIL\n" + "\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
