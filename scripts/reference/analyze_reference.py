#!/usr/bin/env python3
"""Reference for `harness analyze`: the per-layer diagnostics of docs/analyze.md, computed with
Hugging Face transformers (float32, eager attention) and numpy in float64.

It serves two purposes:

* golden files: `--golden` writes tests/golden/analyze_<model>.json (three fixed prompts, the
  baseline run and the run with the automatically chosen ablation), which tests/analyze.rs
  compares against;
* benchmark: the same diagnostics on the default Austen prompts (or `--input`), timed against
  `harness analyze` by scripts/bench/analyze_bench.sh.

The metric code is deliberately independent of the Rust one: singular values come from numpy's
SVD of X (LAPACK) rather than the eigenvalues of a Gram matrix, and every definition is written
out from PAPER.md / docs/analyze.md.

Usage:
    analyze_reference.py --model smollm2 --golden
    analyze_reference.py --model smollm2 [--input FILE] [--limit 64] [--max-tokens 128]
                         [--ablate auto|l1,l2] [--batch-size 16] [--out FILE]
"""

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

# numpy's OpenBLAS threads make the many small SVDs here 30-100x slower on two cores
# (contention with torch's threads); one thread is its fastest setting. Must precede
# the numpy import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

GGUF = {
    "smollm2": ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3": ("gemma3", "gemma-3-270m-q4_k_m.gguf"),
}

# Golden prompts: three Austen sentences of 24-40 tokens in both tokenizers.
GOLDEN_PROMPTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "The family of Dashwood had long been settled in Sussex. Their estate was large, and their "
    "residence was at Norland Park, in the centre of their property.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, "
    "seemed to unite some of the best blessings of existence.",
]

TAU = 0.3
MASSIVE_ABS = 100.0
MASSIVE_REL = 1000.0
RANK_TOL = 1e-12
BOUND_SLACK_BITS = 1e-9
CHARS_PER_TOKEN = 8

RESID = ["first_norm", "norm_ratio", "first_over_median", "massive_count", "anisotropy",
         "dominance", "entropy_bits", "entropy_normalized", "entropy_centered_bits",
         "entropy_bound_bits", "anisotropy_bound", "bound_holds"]
ATTN = ["sink_rate", "sink_rate_gu", "mixing", "colsum"]


def harness_home() -> Path:
    env = os.environ.get("HARNESS_HOME")
    return Path(env) if env else Path.home() / ".cache" / "harness"


def austen_prompts(limit: int, max_tokens: int) -> list:
    """Same rule as harness: paragraphs of at least 8 characters per wanted token, `limit` of
    them evenly spaced through the file (all of them when there are fewer)."""
    path = harness_home() / "data" / "austen" / "paragraphs.jsonl"
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    long = [t for t in texts if len(t) >= CHARS_PER_TOKEN * max_tokens]
    if len(long) <= limit:
        return long
    return [long[i * len(long) // limit] for i in range(limit)]


# ---------------------------------------------------------------------------------------------
# Metrics, per prompt, float64.

def lower_median(v: np.ndarray) -> float:
    s = np.sort(v, axis=None)
    return float(s[(s.size - 1) // 2])


def entropy_nats(sv: np.ndarray) -> float:
    lam = sv.astype(np.float64) ** 2
    p = lam / lam.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def resid_metrics(x: np.ndarray) -> dict:
    t, d = x.shape
    sq = (x * x).sum(1)
    m, r = sq[0], sq[1:].sum()
    norms = np.sqrt(sq)
    a = np.abs(x)
    massive = int(((a > MASSIVE_ABS) & (a > MASSIVE_REL * lower_median(a))).sum())
    sv = np.linalg.svd(x, compute_uv=False)
    lam = sv ** 2
    total = lam.sum()
    h = entropy_nats(sv)
    y = x - x.mean(0)
    yn = np.linalg.norm(y, axis=1, keepdims=True)
    y = np.divide(y, yn, out=np.zeros_like(y), where=yn > 0)
    hc = entropy_nats(np.linalg.svd(y, compute_uv=False))
    c = m / r
    alpha = float(((x[1:] @ x[0]) ** 2).sum() / (m * r)) if m > 0 else 0.0
    p = min(max((c + alpha) / (c + 1), 0.0), 1.0)
    rank = int((lam > RANK_TOL * lam[0]).sum())
    bound = 0.0
    for q in (p, 1 - p):
        if q > 0:
            bound -= q * math.log(q)
    if rank > 1:
        bound += (1 - p) * math.log(rank - 1)
    bits = h / math.log(2)
    bound_bits = bound / math.log(2)
    return {
        "first_norm": float(norms[0]),
        "norm_ratio": float(c),
        "first_over_median": float(norms[0] / np.median(norms[1:])),
        "massive_count": float(massive),
        "anisotropy": float(lam[0] / total),
        "dominance": float(lam[0] / lam[1:].sum()),
        "entropy_bits": bits,
        "entropy_normalized": h / math.log(min(t, d)),
        "entropy_centered_bits": hc / math.log(2),
        "entropy_bound_bits": bound_bits,
        "anisotropy_bound": p,
        "bound_holds": float(bits <= bound_bits + BOUND_SLACK_BITS),
    }


def attn_metrics(a: np.ndarray, window) -> dict:
    """a: [heads, T, T] probabilities of one prompt's real tokens, float64."""
    heads, t, _ = a.shape
    q = np.arange(t)
    first = np.zeros(t, dtype=int) if window is None else np.maximum(q + 1 - window, 0)
    visible = q + 1 - first
    sees_first = int((first == 0).sum())
    a0 = a[:, :, 0].sum(1)
    rows = visible >= 2
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)
    row_h = -plogp.sum(2)  # [heads, T]
    mixing = (row_h[:, rows] / np.log(visible[rows])).mean()
    col = a.sum(1) / t  # [heads, T]
    with np.errstate(divide="ignore", invalid="ignore"):
        clogc = np.where(col > 0, col * np.log(np.where(col > 0, col, 1.0)), 0.0).sum(1)
    colsum = (1 + clogc / math.log(t)).mean()
    return {
        "sink_rate": float((a0 / t >= TAU).mean()),
        "sink_rate_gu": float((a0 / sees_first >= TAU).mean()),
        "mixing": float(mixing),
        "colsum": float(colsum),
    }


# ---------------------------------------------------------------------------------------------
# Model runs.

def load(model_name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sub, fname = GGUF[model_name]
    d = harness_home() / "models" / sub
    if not (d / fname).is_file():
        sys.exit(f"error: {d / fname} not found; run scripts/fetch_assets.py")
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=fname, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return tok, model


def layer_windows(model) -> list:
    """Per block, how many keys back a query sees (None: the whole causal prefix)."""
    cfg = model.config
    types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    n = cfg.num_hidden_layers
    if types is None or window is None:
        return [None] * n
    return [window if t == "sliding_attention" else None for t in types]


@torch.no_grad()
def analyze(model, seqs: list, ablate: list, batch_size: int, want_loss: bool) -> tuple:
    """Per-prompt metrics [prompt][layer] -> dict, and the per-prompt mean next-token NLL."""
    blocks = model.model.layers
    n_layers = len(blocks)
    windows = layer_windows(model)
    captured = {}

    def last_hook(_m, _args, out):
        captured["last"] = out[0] if isinstance(out, (tuple, list)) else out

    def zero_first(_m, _args, out):
        out = out.clone()
        out[:, 0, :] = 0
        return out

    handles = [blocks[-1].register_forward_hook(last_hook)]
    handles += [blocks[l - 1].mlp.register_forward_hook(zero_first) for l in ablate]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    per_prompt = [None] * len(seqs)
    losses = [None] * len(seqs)
    pad = 0
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            lens = [len(seqs[i]) for i in idx]
            t = max(lens)
            ids = torch.full((len(idx), t), pad, dtype=torch.int64)
            mask = torch.zeros((len(idx), t), dtype=torch.int64)
            for b, i in enumerate(idx):
                ids[b, :lens[b]] = torch.tensor(seqs[i])
                mask[b, :lens[b]] = 1
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                        output_attentions=True, use_cache=False)
            hidden = list(out.hidden_states[:n_layers]) + [captured["last"]]
            if want_loss:
                logp = torch.log_softmax(out.logits.float(), dim=-1)
            for b, i in enumerate(idx):
                n = lens[b]
                layers = []
                for l in range(n_layers + 1):
                    m = resid_metrics(hidden[l][b, :n].double().numpy())
                    if l >= 1:
                        a = out.attentions[l - 1][b, :, :n, :n].double().numpy()
                        m.update(attn_metrics(a, windows[l - 1]))
                    layers.append(m)
                per_prompt[i] = layers
                if want_loss:
                    nll = -logp[b, :n - 1].gather(-1, ids[b, 1:n, None]).squeeze(-1)
                    losses[i] = float(nll.double().mean())
    finally:
        for h in handles:
            h.remove()
    return per_prompt, losses


def summarize(per_prompt: list) -> list:
    out = []
    for l in range(len(per_prompt[0])):
        row = {"layer": l}
        for name in RESID + ATTN:
            if name not in per_prompt[0][l]:
                row[name] = None
                row[f"{name}_std"] = None
                continue
            v = np.array([p[l][name] for p in per_prompt], dtype=np.float64)
            row[name] = float(v.mean())
            row[f"{name}_std"] = float(v.std())
        out.append(row)
    return out


def auto_ablate(layers: list) -> list:
    """The block whose output's first-token norm grows most over its input's."""
    ratios = [layers[l]["first_norm"] / layers[l - 1]["first_norm"] for l in range(1, len(layers))]
    return [int(np.argmax(ratios)) + 1]


def dump(result: dict) -> str:
    """JSON with ten significant digits and one line per layer, to keep golden files small."""
    def rounded(v):
        if isinstance(v, float):
            return float(f"{v:.10g}")
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        if isinstance(v, list):
            return [rounded(x) for x in v]
        return v

    def block(d: dict, indent: str) -> str:
        lines = []
        for k, v in d.items():
            if k == "layers":
                rows = ",\n".join(f"{indent}  {json.dumps(r)}" for r in v)
                lines.append(f'{indent}"{k}": [\n{rows}\n{indent}]')
            elif isinstance(v, dict):
                lines.append(f'{indent}"{k}": {block(v, indent + "  ")}')
            else:
                lines.append(f"{indent}{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}")
        return "{\n" + ",\n".join(lines) + "\n" + indent[:-2] + "}"

    return block(rounded(result), "  ") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(GGUF))
    ap.add_argument("--golden", action="store_true", help="write tests/golden/analyze_<model>.json")
    ap.add_argument("--input", type=Path, help="one prompt per line (default: Austen paragraphs)")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ablate", default=None, help="auto or comma-separated blocks")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()

    if args.golden:
        prompts, args.ablate = GOLDEN_PROMPTS, "auto"
        args.out = args.out or ROOT / "tests" / "golden" / f"analyze_{args.model}.json"
    elif args.input:
        prompts = [l.rstrip("\r") for l in args.input.read_text(encoding="utf-8").split("\n")]
        prompts = [p for p in prompts if p][: args.limit]
    else:
        prompts = austen_prompts(args.limit, args.max_tokens)

    tok, model = load(args.model)
    loaded = time.perf_counter()
    seqs = [tok(p)["input_ids"][: args.max_tokens] for p in prompts]
    per_prompt, losses = analyze(model, seqs, [], args.batch_size, args.ablate is not None)
    layers = summarize(per_prompt)
    result = {
        "model": args.model,
        "prompts": prompts if args.golden else len(prompts),
        "num_tokens": [len(s) for s in seqs],
        "max_tokens": args.max_tokens,
        "bos": "auto",
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
        "layers": layers,
    }
    if args.ablate is not None:
        blocks = auto_ablate(layers) if args.ablate == "auto" else [int(x) for x in args.ablate.split(",")]
        per_ablated, losses_ablated = analyze(model, seqs, blocks, args.batch_size, True)
        base, abl = float(np.mean(losses)), float(np.mean(losses_ablated))
        result["ablation"] = {
            "layers_ablated": blocks,
            "layers": summarize(per_ablated),
            "loss_baseline": base,
            "loss_ablated": abl,
            "loss_change": abl - base,
        }
    end = time.perf_counter()
    seconds, analysis = end - start, end - loaded
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not args.golden:
        result["seconds"], result["analysis_seconds"] = seconds, analysis
        result["peak_rss_mib"] = peak_mib
    text = dump(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(f"{args.model}: {len(prompts)} prompts, tokens {min(result['num_tokens'])}-"
          f"{max(result['num_tokens'])}, {seconds:.1f}s ({analysis:.1f}s after loading), "
          f"peak RSS {peak_mib:.0f} MiB",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
