#!/usr/bin/env python3
"""Python reference for `harness embed`: transformers fp32 with eager attention (or
bf16 with SDPA, what transformers v5 picks for a bf16 model, with --dtype bf16),
output_hidden_states=True, mean pooling over real tokens at every layer.

Batches are sorted by length (longest first) so padding stays small, the way a
careful researcher would batch; the thread count is fixed. Layer L is the last
block's output before the final norm, as in harness, so the two outputs can be
compared value for value.

Usage: embed_reference.py --input texts.txt --out ref.safetensors [--batch-size 32] [--threads 2]
                          [--dtype f32|bf16]
Prints one JSON line: {"tokens": N, "seconds": S, "tokens_per_s": R, "load_seconds": L}.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    home = Path(os.environ.get("HARNESS_HOME", Path.home() / ".cache" / "harness"))
    model_dir = home / "models" / "smollm2"
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf)
    model = AutoModel.from_pretrained(
        model_dir,
        gguf_file=gguf,
        dtype=torch.float32 if args.dtype == "f32" else torch.bfloat16,
        attn_implementation="eager" if args.dtype == "f32" else "sdpa",
    ).eval()
    load_seconds = time.perf_counter() - t0

    texts = [l.rstrip("\n") for l in open(args.input, encoding="utf-8") if l.strip()]
    start = time.perf_counter()
    ids = [tok(t).input_ids for t in texts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    layers = model.config.num_hidden_layers + 1
    out = torch.zeros(len(ids), layers, model.config.hidden_size)
    last_block = {}
    model.layers[-1].register_forward_hook(
        lambda m, i, o: last_block.__setitem__("h", o[0] if isinstance(o, tuple) else o)
    )
    with torch.inference_mode():
        for s in range(0, len(order), args.batch_size):
            rows = order[s : s + args.batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in rows])
            mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in rows])
            result = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            states = list(result.hidden_states[:-1]) + [last_block["h"]]
            m = mask[:, :, None].float()
            for l, h in enumerate(states):
                out[rows, l] = (h.float() * m).sum(1) / m.sum(1)
    seconds = time.perf_counter() - start
    tokens = sum(len(i) for i in ids)
    save_file({"embeddings": out.contiguous()}, args.out)
    print(json.dumps({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                      "load_seconds": load_seconds}))


if __name__ == "__main__":
    main()
