#!/usr/bin/env python3
"""Write a random-weight model of a real model's shape: config.json, model.safetensors (bf16) and a tokenizer.

The real-scale checks (scripts/reference/scale_check.py) and the GPU benchmark (scripts/bench/throughput.py)
need models as large as the ones researchers run, on machines that cannot download them. The shape is
what costs time and memory, not the trained values, so this writes the exact configuration of

    smollm2-135m   LlamaForCausalLM     HuggingFaceTB/SmolLM2-135M  (30 layers, 576 wide, GQA 9/3, tied)
    pythia-1.4b    GPTNeoXForCausalLM   EleutherAI/pythia-1.4b       (24 layers, 2048 wide, partial rotary)
    llama-3.1-8b   LlamaForCausalLM     meta-llama/Llama-3.1-8B      (32 layers, 4096 wide, GQA 32/8, llama3 rope)

through transformers' own config classes, with seeded random weights, offline (nothing is downloaded):

    matrices and embeddings   N(0, initializer_range^2)   (transformers' own init for these)
    norm weights              1 + N(0, 0.1^2)             (transformers: exactly 1; perturbed so that a
    biases                    N(0, initializer_range^2)    missing norm weight or bias changes the output)

Tensors are drawn from one torch.Generator seeded with --seed, in the order of the model's parameters, as
float32, then rounded to bf16. With --device cuda the draws come from the GPU's generator (seconds instead
of a minute for the 8B shape); its bytes differ from the CPU's, so both sides of a comparison must read the
same files, which they do.

The tokenizer is the 384-entry byte-level BPE of tests/fixtures/tiny-gpt_neox: every text becomes ids below
384, valid for every shape's vocabulary. The checks feed token ids directly; the tokenizer is there so that
the directory loads as a model anywhere (and `harness eval` can run on text).

Usage: random_model.py SHAPE OUT_DIR [--seed 0] [--device cpu|cuda]
Prints the directory and its size. Weights alone: 0.27 GB (135M), 2.8 GB (1.4B), 16 GB (8B).
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests" / "fixtures" / "tiny-gpt_neox"


def padded(seqs: list, device: str):
    """Token id lists right-padded with 0 into ids and attention mask [B, T] on `device`."""
    longest = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
    return ids.to(device), mask.to(device)


def config(shape: str):
    from transformers import GPTNeoXConfig, LlamaConfig

    if shape == "smollm2-135m":
        return LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            hidden_act="silu",
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
            tie_word_embeddings=True,
            initializer_range=0.041666666666666664,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            architectures=["LlamaForCausalLM"],
        )
    if shape == "pythia-1.4b":
        return GPTNeoXConfig(
            vocab_size=50304,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=16,
            hidden_act="gelu",
            max_position_embeddings=2048,
            layer_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            use_parallel_residual=True,
            attention_bias=True,
            tie_word_embeddings=False,
            initializer_range=0.02,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            architectures=["GPTNeoXForCausalLM"],
        )
    if shape == "llama-3.1-8b":
        return LlamaConfig(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            hidden_act="silu",
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            tie_word_embeddings=False,
            initializer_range=0.02,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            architectures=["LlamaForCausalLM"],
        )
    raise SystemExit(f"error: unknown shape '{shape}' (expected {', '.join(SHAPES)})")


SHAPES = ["smollm2-135m", "pythia-1.4b", "llama-3.1-8b"]
# transformers 5 names GPT-NeoX's head `lm_head` in the module but `embed_out` in checkpoints (its
# save_pretrained renames it; this script writes the file without building the model).
CHECKPOINT_NAMES = {"gpt_neox": {"lm_head.weight": "embed_out.weight"}}


def write(shape: str, out: Path, seed: int = 0, device: str = "cpu") -> Path:
    """Writes the model directory and returns it."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    cfg = config(shape)
    out.mkdir(parents=True, exist_ok=True)
    # Shapes and names only: a meta-device model allocates nothing.
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    sigma = cfg.initializer_range
    tensors = {}
    # named_parameters lists a tied LM head once (as the embeddings), as save_pretrained writes it.
    for name, p in skeleton.named_parameters():
        x = torch.randn(tuple(p.shape), generator=gen, device=device, dtype=torch.float32)
        if p.dim() == 1 and "norm" in name and name.endswith("weight"):
            x = 1.0 + 0.1 * x
        else:
            x = sigma * x
        name = CHECKPOINT_NAMES.get(cfg.model_type, {}).get(name, name)
        tensors[name] = x.to(torch.bfloat16).cpu().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(out)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copyfile(TOKENIZER / f, out / f)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shape", choices=SHAPES)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where to draw the weights: cpu (default) or cuda")
    args = ap.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device} but torch sees no GPU")
    start = time.time()
    out = write(args.shape, args.out, args.seed, args.device)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {args.shape}, {size / 1e9:.2f} GB, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
