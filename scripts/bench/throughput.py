#!/usr/bin/env python3
"""Throughput of harness and transformers side by side on the benchmark workload (../shared/CUDA.md).

Workload, per shape: a random-weight model of a real shape (scripts/reference/random_model.py, seed 0),
N random sequences of 8-64 tokens (seed 0, uniform lengths and ids), sorted by length; every layer of every
sequence mean-pooled over its real tokens on the device and copied to the host; one untimed warm-up pass, then
timed passes; tokens/s counts real tokens. The ids go to a JSON file both sides read.

    transformers  AutoModel (no LM head), SDPA attention, batches of --batch-size in sorted order,
                  output_hidden_states=True, masked mean per layer on the device, then .cpu()
    harness       examples/throughput.rs: capture::run with the embeddings' mean-pooling capture over every
                  layer, its own length-sorted batches (--max-batch-tokens / --max-batch-size)

Agreement: both sides' pooled vectors of --check-rows sequences spread over the set (layers 0..L-1 and the last
block before the final norm, which harness's layer L is), worst relative L2 error per vector. The figure
reported for each side is its best timed pass; every pass's is in the JSON. It fails (exit 1,
after all figures) above 1e-4 in f32 and 5e-2 in bf16 (the golden tolerances, tests/golden.rs).

Usage (from the repository root, after `cargo build --release --example throughput`):
    throughput.py --shapes smollm2-135m --sequences 256 --dtype f32            # a CPU-sized run
    throughput.py --shapes smollm2-135m,pythia-1.4b,llama-3.1-8b --device cuda --dtype bf16 --models DIR
--models keeps the generated models (reused when present); by default they go to a temporary directory.
Prints a table and writes one JSON object per shape to --out.
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

ROOT = Path(__file__).resolve().parents[2]
# Importing a sibling script would leave __pycache__ folders in the repository.
sys.dont_write_bytecode = True
sys.path.insert(0, str(ROOT / "scripts" / "reference"))
import random_model  # noqa: E402

TOLERANCE = {"f32": 1e-4, "bf16": 5e-2}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def workload(n: int, vocab: int, seed: int, low: int = 8, high: int = 64) -> list:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (n,), generator=gen).tolist()
    seqs = [torch.randint(3, vocab, (k,), generator=gen).tolist() for k in lengths]
    return sorted(seqs, key=len)


def check_rows(n: int, rows: int) -> list:
    """Row indices spread over the length-sorted set; examples/throughput.rs picks the same."""
    rows = min(rows, n)
    return [i * n // rows for i in range(rows)]


def pooled_pass(model, seqs: list, batch: int, device: str, states=None) -> float:
    """One pass over `seqs`, every layer mean-pooled on the device and copied to the host; tokens/s."""
    tokens = sum(len(s) for s in seqs)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(seqs), batch):
            ids, mask = random_model.padded(seqs[i : i + batch], device)
            hs = states(ids, mask) if states else model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            m = mask[:, :, None].to(hs[0].dtype)
            n = mask.sum(1, keepdim=True).to(hs[0].dtype)
            pooled = torch.stack([(h * m).sum(1) / n for h in hs], 1).float().cpu()
    sync(device)
    return tokens / (time.perf_counter() - start), pooled


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def transformers_side(model_dir: Path, seqs: list, args, rows: list) -> dict:
    from transformers import AutoModel

    start = time.perf_counter()
    model = AutoModel.from_pretrained(model_dir, dtype=DTYPES[args.dtype], attn_implementation="sdpa").to(args.device)
    model.eval()
    load_s = time.perf_counter() - start
    warmup, _ = pooled_pass(model, seqs, args.batch_size, args.device)
    rates = [pooled_pass(model, seqs, args.batch_size, args.device)[0] for _ in range(args.passes)]

    # The agreement subset, with the last block's output before the final norm (a hook), as harness keeps it.
    captured = {}
    last = model.layers[-1]
    hook = last.register_forward_hook(lambda _m, _i, out: captured.update(h=out[0] if isinstance(out, tuple) else out))

    def states(ids, mask):
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        return list(hs[:-1]) + [captured["h"]]

    subset = [seqs[i] for i in rows]
    _, check = pooled_pass(model, subset, len(subset), args.device, states)
    hook.remove()
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {
        "side": "transformers",
        "load_s": load_s,
        "warmup_tokens_per_s": warmup,
        "tokens_per_s": max(rates),
        "passes_tokens_per_s": rates,
        "threads": torch.get_num_threads(),
        "peak_gib": peak,
        "check": check,
    }


def harness_side(model_dir: Path, ids: Path, args, rows: int, work: Path) -> dict:
    from safetensors.torch import load_file

    out = work / "harness-pooled.safetensors"
    cmd = [str(args.example), "--model", str(model_dir), "--ids", str(ids), "--dtype", args.dtype,
           "--device", args.harness_device or args.device, "--passes", str(args.passes),
           "--out", str(out), "--out-rows", str(rows)]
    if args.max_batch_tokens:
        cmd += ["--max-batch-tokens", str(args.max_batch_tokens)]
    if args.max_batch_size:
        cmd += ["--max-batch-size", str(args.max_batch_size)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        return {"side": "harness", "error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["check"] = load_file(str(out))["pooled"]
    return result


def agreement(ours: torch.Tensor, ref: torch.Tensor) -> list:
    """Worst relative L2 error over the rows, per layer."""
    err = (ours - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)
    return err.max(0).values.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="smollm2-135m", help=f"comma-separated: {', '.join(random_model.SHAPES)}")
    ap.add_argument("--sequences", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--device", default="cpu", help="transformers' device (and harness's unless --harness-device)")
    ap.add_argument("--harness-device", help="harness's --device when it is spelled differently (default: --device)")
    ap.add_argument("--batch-size", type=int, default=128, help="transformers' batch size")
    ap.add_argument("--max-batch-tokens", type=int, help="harness's padded-token budget per batch")
    ap.add_argument("--max-batch-size", type=int, help="harness's most sequences per batch")
    ap.add_argument("--passes", type=int, default=2, help="timed passes after the warm-up")
    ap.add_argument("--check-rows", type=int, default=64)
    ap.add_argument("--models", type=Path, help="keep generated models here (reused when present)")
    ap.add_argument("--example", type=Path, default=ROOT / "target" / "release" / "examples" / "throughput")
    ap.add_argument("--out", type=Path, help="append one JSON line per shape here")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in random_model.SHAPES]
    if unknown:
        sys.exit(f"error: unknown shape(s) {unknown}: expected {random_model.SHAPES}")
    if not args.example.is_file():
        sys.exit(f"error: {args.example} is missing: cargo build --release --example throughput")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device} but torch sees no GPU")

    failed = False
    rows_all = []
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        work = Path(tmp)
        for shape in shapes:
            model_dir = (args.models or work) / shape
            if not (model_dir / "model.safetensors").is_file():
                start = time.perf_counter()
                random_model.write(shape, model_dir, 0, "cuda" if args.device.startswith("cuda") else "cpu")
                print(f"{shape}: weights written in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
            seqs = workload(args.sequences, vocab, args.seed)
            ids = work / f"{shape}.ids.json"
            ids.write_text(json.dumps(seqs))
            rows = check_rows(len(seqs), args.check_rows)
            ours = harness_side(model_dir, ids, args, args.check_rows, work)
            ref = transformers_side(model_dir, seqs, args, rows)
            errors = agreement(ours.pop("check"), ref.pop("check")) if "check" in ours else None
            worst = max(errors) if errors else None
            agree = worst is not None and worst <= TOLERANCE[args.dtype]
            failed |= not agree
            record = {
                "shape": shape, "dtype": args.dtype, "device": args.device, "sequences": len(seqs),
                "tokens": sum(len(s) for s in seqs), "transformers_batch_size": args.batch_size,
                "harness": ours, "transformers": ref, "worst_pooled_error": worst,
                "pooled_error_per_layer": errors, "tolerance": TOLERANCE[args.dtype], "agree": agree,
            }
            rows_all.append(record)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if args.models is None:
                for f in model_dir.iterdir():
                    f.unlink()
                model_dir.rmdir()

    print(f"{'shape':14} {'dtype':5} {'device':7} {'seqs':>5} {'harness tok/s':>14} {'transformers tok/s':>19} {'ratio':>6} {'worst err':>10}")
    for r in rows_all:
        h, t = r["harness"], r["transformers"]
        ht = f"{h['tokens_per_s']:.0f}" if "tokens_per_s" in h else "error"
        ratio = f"{h['tokens_per_s'] / t['tokens_per_s']:.2f}" if "tokens_per_s" in h else "-"
        err = f"{r['worst_pooled_error']:.1e}" if r["worst_pooled_error"] is not None else "-"
        print(f"{r['shape']:14} {r['dtype']:5} {r['device']:7} {r['sequences']:5} {ht:>14} {t['tokens_per_s']:19.0f} {ratio:>6} {err:>10}")
        if "error" in h:
            print(f"  harness: {h['error']}")
        elif not r["agree"]:
            print(f"  the pooled vectors differ by {r['worst_pooled_error']:.2e}, above {r['tolerance']:.0e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
