#!/usr/bin/env python3
"""Write the golden activations the Rust tests compare against: tests/golden/<case>.{safetensors,json}.

For every case (two real GGUF models and the six tiny safetensors fixtures) this runs Hugging Face
`transformers` in float32 with eager attention on PROMPTS, tokenised by transformers' own tokenizer
with its default special tokens, right-padded into one batch, and records:

    input_ids       int64   [B, T]       right-padded; pad positions hold the tokenizer's pad id (or 0)
    attention_mask  int64   [B, T]       1 = real token, 0 = padding
    hidden.{l}      float32 [B, T, D]    l = 0..L. l = 0: the embeddings exactly as the first block receives
                                         them (after any embedding scale; gpt2: token + position embeddings).
                                         l = 1..L: the output of block l (1-based). l = L is the last block's
                                         output BEFORE the final norm.
    final_norm      float32 [B, T, D]    the final norm applied to hidden.{L} (transformers' hidden_states[-1])
    attn.{l}        float32 [B, H, T, T] l = 1..L: block l's attention probabilities [batch, head, query, key]
    next_logprob    float32 [B, T-1]     log_softmax(logits[b, t])[input_ids[b, t+1]], 0 where t+1 is padding
    logits_last     float32 [B, min(V, 4096)]  logits at each sequence's last real token, first 4096 entries

Padded positions (rows of hidden/final_norm, query rows of attn) are set to 0.

Every prompt is also run alone (no padding); the script asserts that the batched run equals the single
runs on the real tokens (max relative error < 1e-5 for every tensor) and prints the figures, so a golden
file is valid for single and batched inputs alike.

bf16 goldens (tiny cases only, `--dtypes bf16`): the same model cast with model.to(torch.bfloat16) and run
on the same padded batch; <case>.bf16.safetensors holds input_ids, attention_mask, hidden.{l} and final_norm,
upcast to float32 (padding rows 0). No batched-vs-single check: bf16 rounding differs between them.

Usage: make_goldens.py [--cases smollm2,gemma3,tiny-llama,...] [--dtypes f32,bf16] [--out tests/golden]
GGUF models are looked up in $HARNESS_HOME/models (default ~/.cache/harness); fetch them with
scripts/fetch_assets.py.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

# Fixed prompts: clearly different lengths (smollm2: 4, 7, 11 tokens; gemma3 5, 8, 13 with BOS; tiny BPE
# 4, 8, 11, +1 with BOS), the last one with unicode and punctuation. Do not edit without regenerating.
PROMPTS = [
    "Hello, world!",
    "The cat sat on the mat.",
    "Wow! Naïve café, €5 — really?",
]

GGUF_CASES = {
    # case / alias: (directory under $HARNESS_HOME/models, file name)
    "smollm2": ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3": ("gemma3", "gemma-3-270m-q4_k_m.gguf"),
}
TINY_ARCHS = ["llama", "mistral", "qwen2", "gemma3", "gpt_neox", "gpt2"]
ALL_CASES = list(GGUF_CASES) + [f"tiny-{a}" for a in TINY_ARCHS]

LOGITS_WIDTH = 4096
TOLERANCE = 1e-5


def harness_home() -> Path:
    env = os.environ.get("HARNESS_HOME")
    return Path(env) if env else Path.home() / ".cache" / "harness"


class MissingAsset(Exception):
    pass


def load(case: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if case in GGUF_CASES:
        sub, fname = GGUF_CASES[case]
        d = harness_home() / "models" / sub
        if not (d / fname).is_file():
            raise MissingAsset(
                f"{d / fname} not found. Run `python3 scripts/fetch_assets.py` first "
                f"(HARNESS_HOME={harness_home()})."
            )
        tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, **kw)
        model_ref = case
    else:
        d = ROOT / "tests" / "fixtures" / case
        if not (d / "model.safetensors").is_file():
            raise MissingAsset(f"{d} not found. Run scripts/reference/make_tiny_models.py first.")
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d, **kw)
        model_ref = f"tests/fixtures/{case}"
    model.eval()
    return tok, model, model_ref


def get_attr_path(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def blocks_and_norm(model):
    for layers, norm in (("model.layers", "model.norm"),
                         ("gpt_neox.layers", "gpt_neox.final_layer_norm"),
                         ("transformer.h", "transformer.ln_f")):
        lay, nrm = get_attr_path(model, layers), get_attr_path(model, norm)
        if lay is not None and nrm is not None:
            return lay, nrm
    raise RuntimeError(f"don't know where the blocks of {type(model).__name__} are")


@torch.no_grad()
def run(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """One forward pass; returns the raw (unmasked) tensors, hooks cross-checked against transformers."""
    blocks, final_norm = blocks_and_norm(model)
    captured = {}

    def pre_hook(_m, args, kwargs):
        captured["in0"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def out_hook(i):
        def hook(_m, _args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            captured[f"out{i}"] = out.detach().clone()
        return hook

    def norm_hook(_m, _args, output):
        captured["norm"] = output.detach().clone()

    handles = [blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True),
               final_norm.register_forward_hook(norm_hook)]
    handles += [b.register_forward_hook(out_hook(i)) for i, b in enumerate(blocks)]
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                    output_attentions=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()

    L = len(blocks)
    hs, attn = out.hidden_states, out.attentions
    assert len(hs) == L + 1 and len(attn) == L, (len(hs), len(attn), L)
    hidden = [captured["in0"]] + [captured[f"out{i}"] for i in range(L)]
    # Our hooks must agree with transformers: hidden_states[l] for l < L, hidden_states[L] = norm(block L out).
    for l in range(L):
        assert torch.equal(hidden[l], hs[l]), f"hook/hidden_states mismatch at layer {l}"
    assert torch.equal(captured["norm"], hs[L]), "hidden_states[-1] is not the final norm's output"
    assert not torch.equal(hidden[L], hs[L])
    return {"hidden": hidden, "final_norm": hs[L], "attn": list(attn), "logits": out.logits}


def to_golden(raw: dict, input_ids: torch.Tensor, mask: torch.Tensor) -> dict:
    B, T = input_ids.shape
    m = mask.to(torch.float32)
    t = {"input_ids": input_ids.to(torch.int64).contiguous(), "attention_mask": mask.to(torch.int64).contiguous()}
    for l, h in enumerate(raw["hidden"]):
        t[f"hidden.{l}"] = (h.float() * m[:, :, None]).contiguous()
    t["final_norm"] = (raw["final_norm"].float() * m[:, :, None]).contiguous()
    for l, a in enumerate(raw["attn"], start=1):
        t[f"attn.{l}"] = (a.float() * m[:, None, :, None]).contiguous()
    logits = raw["logits"].float()
    logp = torch.log_softmax(logits, dim=-1)
    nxt = logp[:, :-1, :].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    t["next_logprob"] = (nxt * m[:, 1:]).contiguous()
    last = mask.sum(1) - 1
    width = min(logits.shape[-1], LOGITS_WIDTH)
    t["logits_last"] = logits[torch.arange(B), last, :width].contiguous()
    return t


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    den = b.abs().max().item()
    return (a - b).abs().max().item() / (den if den > 0 else 1.0)


def row_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max over rows (last dimension = one token's vector / one attention row) of |a-b|_2 / |b|_2."""
    a, b = a.double(), b.double()
    num = (a - b).norm(dim=-1)
    den = b.norm(dim=-1).clamp_min(1e-30)
    return (num / den).max().item()


def encode_prompts(tok):
    """PROMPTS with the tokenizer's default special tokens, right-padded: the ids per
    prompt, the padded ids and attention mask [B, T], and the pad id used."""
    encoded = [tok(p)["input_ids"] for p in PROMPTS]
    B, T = len(encoded), max(len(e) for e in encoded)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((B, T), pad_id, dtype=torch.int64)
    mask = torch.zeros((B, T), dtype=torch.int64)
    for b, e in enumerate(encoded):
        input_ids[b, : len(e)] = torch.tensor(e)
        mask[b, : len(e)] = 1
    return encoded, input_ids, mask, pad_id


def make_case(case: str, out_dir: Path) -> dict:
    import transformers
    from safetensors.torch import save_file

    tok, model, model_ref = load(case)
    cfg = model.config
    encoded, input_ids, mask, pad_id = encode_prompts(tok)
    lens = [len(e) for e in encoded]
    B, T = input_ids.shape
    if tok.pad_token_id is not None:  # same as transformers' own right padding
        enc = tok(PROMPTS, padding=True, padding_side="right", return_tensors="pt")
        assert torch.equal(enc["input_ids"], input_ids) and torch.equal(enc["attention_mask"], mask)

    print(f"\n=== {case}: {type(model).__name__}, model {model_ref}, tokenizer {type(tok).__name__}, pad id {pad_id}")
    for p, e in zip(PROMPTS, encoded):
        print(f"  {len(e):2d} tokens  {p!r}: {e}")

    raw = run(model, input_ids, mask)
    golden = to_golden(raw, input_ids, mask)
    L = len(raw["attn"])
    H = golden["attn.1"].shape[1]
    D = golden["hidden.0"].shape[-1]
    for name, v in golden.items():
        assert torch.isfinite(v.float()).all(), f"{case}: {name} is not finite"

    # Causality: a real query row puts exactly zero weight on later (and so on padded) keys.
    for l in range(1, L + 1):
        a = golden[f"attn.{l}"]
        assert torch.all(torch.triu(a, diagonal=1) == 0), f"attn.{l} has weight above the diagonal"

    # Single runs (no padding) must match the batch on the real tokens.
    worst, worst_row = {}, {}
    for b, e in enumerate(encoded):
        n = len(e)
        ids1 = torch.tensor([e], dtype=torch.int64)
        single = to_golden(run(model, ids1, torch.ones_like(ids1)), ids1, torch.ones_like(ids1))
        for name, v in single.items():
            if name in ("input_ids", "attention_mask"):
                assert torch.equal(golden[name][b : b + 1, :n], v)
                continue
            g = golden[name][b : b + 1]
            if name.startswith("attn."):
                g = g[:, :, :n, :n]
                assert torch.all(golden[name][b, :, :n, n:] == 0)
            elif name == "next_logprob":
                g = g[:, : n - 1]
            elif name != "logits_last":
                g = g[:, :n]
            worst[name] = max(worst.get(name, 0.0), rel_err(g, v))
            worst_row[name] = max(worst_row.get(name, 0.0), row_rel_err(g, v))

    print(f"  batched vs single, worst over the {B} prompts. tensor: max|diff|/max|single| over the tensor;"
          " row: max over tokens (attention: query rows) of |diff|_2/|single|_2")
    for l in range(L + 1):
        line = f"    layer {l:2d}: hidden tensor {worst[f'hidden.{l}']:.2e} row {worst_row[f'hidden.{l}']:.2e}"
        if l >= 1:
            line += f"   attn tensor {worst[f'attn.{l}']:.2e} row {worst_row[f'attn.{l}']:.2e}"
        print(line)
    for name in ("final_norm", "next_logprob", "logits_last"):
        print(f"    {name}: tensor {worst[name]:.2e} row {worst_row[name]:.2e}")
    bad = {k: v for k, v in list(worst.items()) + list(worst_row.items()) if not v < TOLERANCE}
    assert not bad, f"{case}: batched run differs from single runs: {bad}"

    out_dir.mkdir(parents=True, exist_ok=True)
    st_path = out_dir / f"{case}.safetensors"
    save_file(golden, str(st_path))
    os.chmod(st_path, 0o644)  # safetensors creates 0600 files
    meta = {
        "case": case,
        "model": model_ref,
        "prompts": PROMPTS,
        "num_tokens": lens,
        "num_layers": L,
        "hidden_size": D,
        "num_heads": H,
        "vocab_size": int(raw["logits"].shape[-1]),
        "pad_token_id": pad_id,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "bos": "auto",
    }
    assert L == cfg.num_hidden_layers
    json_path = out_dir / f"{case}.json"
    json_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # Stats that show the model is not degenerate (layers differ, attention not one-hot).
    hid_norms = [golden[f"hidden.{l}"][mask.bool()].norm(dim=-1).mean().item() for l in range(L + 1)]
    ent = []
    for l in range(1, L + 1):
        a = golden[f"attn.{l}"].permute(0, 2, 1, 3)[mask.bool()]  # [real queries, H, T]
        ent.append((-(a * a.clamp_min(1e-30).log()).sum(-1)).mean().item())
    print("  mean |hidden| per layer: " + " ".join(f"{x:.2f}" for x in hid_norms))
    print("  mean attention entropy per layer (nats): " + " ".join(f"{x:.2f}" for x in ent))
    print(f"  next_logprob mean {golden['next_logprob'][:, :][mask[:, 1:].bool()].mean().item():.3f}")
    print(f"  wrote {st_path.relative_to(ROOT) if st_path.is_relative_to(ROOT) else st_path} "
          f"({st_path.stat().st_size} B), {json_path.name} ({json_path.stat().st_size} B)")
    for name, v in golden.items():
        if name in ("input_ids", "attention_mask", "hidden.0", "final_norm", "attn.1",
                    "next_logprob", "logits_last"):
            print(f"    {name:15s} {str(v.dtype):14s} {list(v.shape)}")
    return meta


def make_bf16_case(case: str, out_dir: Path) -> None:
    """hidden.{l} and final_norm of the tiny model in bf16, for tests/golden.rs's bf16 tolerance."""
    from safetensors.torch import save_file

    tok, model, _ = load(case)
    model = model.to(torch.bfloat16)
    _, input_ids, mask, _ = encode_prompts(tok)
    raw = run(model, input_ids, mask)
    m = mask.to(torch.float32)[:, :, None]
    t = {"input_ids": input_ids, "attention_mask": mask}
    for l, h in enumerate(raw["hidden"]):
        t[f"hidden.{l}"] = (h.float() * m).contiguous()
    t["final_norm"] = (raw["final_norm"].float() * m).contiguous()
    path = out_dir / f"{case}.bf16.safetensors"
    save_file(t, str(path))
    os.chmod(path, 0o644)
    print(f"  wrote {path.name} ({path.stat().st_size} B), bf16, {len(raw['hidden'])} hidden layers")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated subset of {ALL_CASES}")
    ap.add_argument("--dtypes", default="f32,bf16", help="f32 and/or bf16 (bf16: tiny cases only)")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "golden")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {ALL_CASES}", file=sys.stderr)
        return 2
    for case in cases:
        try:
            if "f32" in args.dtypes.split(","):
                make_case(case, args.out)
            if "bf16" in args.dtypes.split(",") and case.startswith("tiny-"):
                make_bf16_case(case, args.out)
        except MissingAsset as e:
            print(f"error: {case}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
