#!/usr/bin/env python3
"""Create the tiny random-initialised test models in tests/fixtures/tiny-<arch>/.

One model per safetensors architecture the harness supports:

    llama     GQA (4 query heads, 2 KV heads), untied lm_head
    mistral   sliding_window = 6 (shorter than the test prompts), GQA, untied lm_head
    qwen2     q/k/v biases (no o bias), GQA, tied embeddings
    gemma3    Gemma3ForCausalLM / gemma3_text: layer_types [sliding, sliding, full], sliding_window 6,
              head_dim 32 != hidden/heads, query_pre_attn_scalar 20 (!= head_dim), q/k norms,
              (1 + w) RMSNorm weights, sqrt(hidden) embedding scale, different rope theta per layer type
    gpt_neox  partial rotary (rotary_pct 0.25 -> rope_parameters.partial_rotary_factor), parallel residual,
              untied embed_out, biases everywhere
    gpt2      learned positions (n_positions 64), Conv1D weights ([in, out]), tied embeddings

Each directory holds config.json, model.safetensors (f32, as transformers' save_pretrained writes it),
tokenizer.json and tokenizer_config.json. Every parameter is overwritten from a seeded torch.Generator
with deliberately large values (matrices std 0.15, embeddings std 0.5, biases std 0.2, norm weights
uniform around their neutral value), so that a wrong norm offset, a missing bias or a wrong rope layout
changes the outputs clearly instead of disappearing in the noise of a near-identity network.

The tokenizer is a small byte-level BPE (384 entries) trained with the `tokenizers` library on the
fixed text below. llama and gemma3 prepend BOS (<s>) through a TemplateProcessing post-processor and
`add_bos_token: true`; the other four add no special tokens.

Deterministic: running it twice writes identical bytes (the script checks the tokenizer itself; use
--check to rebuild into a temporary directory and compare sha256 of every file).

Usage: make_tiny_models.py [--out tests/fixtures] [--check]
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

SEED = 20240611
VOCAB_SIZE = 384
HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 3
HEADS = 4
MAX_POS = 128

PAD, BOS, EOS = "<pad>", "<s>", "</s>"  # ids 0, 1, 2

# Training text for the byte-level BPE. Fixed; do not edit without regenerating every golden file.
CORPUS = [
    "Hello, world! Hello again, world. The world says hello back to you.",
    "The cat sat on the mat. The cat is on the mat, and the mat is on the floor.",
    "Once upon a time, a small robot learned to paint the sea, the sky and the cat.",
    "Wow! Naïve café, €5 — really? Yes, really: the naïve café charges €5 for a coffee.",
    "In the café the robot said: \"Wow, that is really naïve!\" — and then it left.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024; prices €3.50, €5, $7 and ¥600.",
    "Grüße aus Köln! Ça va? Très bien, merci. Señor, ¿qué tal? Smörgåsbord, déjà vu.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the mat.",
    "Why does the sun rise in the east? Because the world turns toward the east.",
    "Tokens, layers, heads and logits: the model reads the text and predicts the next token.",
]

# name -> (tokenizer adds BOS, build config)
ARCHS = ["llama", "mistral", "qwen2", "gemma3", "gpt_neox", "gpt2"]
BOS_ARCHS = {"llama", "gemma3"}


def build_tokenizer(add_bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    assert [tok.token_to_id(t) for t in (PAD, BOS, EOS)] == [0, 1, 2]
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, 1)]
        )
    return tok


def tokenizer_config(add_bos: bool) -> dict:
    return {
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": 64,
        "pad_token": PAD,
        "padding_side": "right",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


def build_config(arch: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB_SIZE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=MAX_POS,
            rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False, **common,
        )
    if arch == "mistral":
        return tf.MistralConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HIDDEN // HEADS,
            max_position_embeddings=MAX_POS, sliding_window=6, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False, **common,
        )
    if arch == "qwen2":
        return tf.Qwen2Config(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=MAX_POS,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            use_sliding_window=False, tie_word_embeddings=True, **common,
        )
    if arch == "gemma3":
        return tf.Gemma3TextConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=2, head_dim=32,
            query_pre_attn_scalar=20, sliding_window=6,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            max_position_embeddings=MAX_POS, rms_norm_eps=1e-6,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
            hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, **common,
        )
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, rotary_pct=0.25, rotary_emb_base=10000,
            use_parallel_residual=True, max_position_embeddings=MAX_POS, layer_norm_eps=1e-5,
            hidden_act="gelu", tie_word_embeddings=False, **common,
        )
    if arch == "gpt2":
        return tf.GPT2Config(
            n_positions=64, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=INTERMEDIATE,
            layer_norm_epsilon=1e-5, activation_function="gelu_new", tie_word_embeddings=True, **common,
        )
    raise ValueError(arch)


def is_norm_weight(name: str) -> bool:
    leaf = name.rsplit(".", 1)
    return len(leaf) == 2 and leaf[1] == "weight" and ("norm" in leaf[0] or leaf[0].split(".")[-1].startswith("ln_"))


def randomise(model, arch: str, seed: int) -> None:
    """Overwrite every parameter from a seeded generator (independent of transformers' init code)."""
    g = torch.Generator().manual_seed(seed)
    # Gemma RMSNorm computes x * (1 + w): its neutral weight is 0, everyone else's is 1.
    norm_centre = 0.0 if arch == "gemma3" else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            shape = p.shape
            if p.ndim == 1 and is_norm_weight(name):
                v = norm_centre + (torch.rand(shape, generator=g) - 0.5)  # centre +- 0.5
            elif p.ndim == 1:  # biases (attention, mlp, layernorm)
                v = 0.2 * torch.randn(shape, generator=g)
            elif any(k in name for k in ("embed_tokens", "embed_in", "wte", "wpe")):
                v = 0.5 * torch.randn(shape, generator=g)
            else:
                v = 0.15 * torch.randn(shape, generator=g)
            p.copy_(v.to(p.dtype))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_all(out: Path) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    tok_bos = build_tokenizer(True)
    tok_plain = build_tokenizer(False)
    # The BPE trainer must be deterministic, or the fixtures would change on every run.
    assert build_tokenizer(True).to_str() == tok_bos.to_str(), "tokenizer training is not deterministic"

    digests = {}
    for i, arch in enumerate(ARCHS):
        d = out / f"tiny-{arch}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        config = build_config(arch)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
        randomise(model, arch, SEED + i)
        model.eval()
        model.save_pretrained(d)
        gen = d / "generation_config.json"
        if gen.exists():
            gen.unlink()
        add_bos = arch in BOS_ARCHS
        tok = tok_bos if add_bos else tok_plain
        tok.save(str(d / "tokenizer.json"), pretty=True)
        (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(add_bos), indent=2, sort_keys=True) + "\n")
        files = sorted(p for p in d.iterdir())
        for p in files:
            os.chmod(p, 0o644)  # safetensors creates 0600 files
        expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
        assert {p.name for p in files} == expected, [p.name for p in files]
        nparams = sum(p.numel() for p in model.parameters())
        print(f"tiny-{arch}: {type(model).__name__}, {nparams} params, "
              + ", ".join(f"{p.name} {p.stat().st_size} B" for p in files))
        for p in files:
            digests[f"tiny-{arch}/{p.name}"] = sha256(p)
    return digests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    ap.add_argument("--check", action="store_true",
                    help="also rebuild into a temporary directory and compare sha256 of every file")
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    digests = make_all(args.out)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            again = make_all(Path(tmp))
        bad = [k for k in digests if digests[k] != again.get(k)]
        if bad or set(digests) != set(again):
            print("NOT deterministic:", bad, file=sys.stderr)
            return 1
        print(f"deterministic: {len(digests)} files identical on rebuild")
    for k, v in digests.items():
        print(f"{v}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
