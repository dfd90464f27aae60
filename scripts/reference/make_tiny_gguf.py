#!/usr/bin/env python3
"""Convert the tiny qwen2 and mistral fixtures into GGUF files, the way llama.cpp's converter would.

Reads tests/fixtures/tiny-<arch>/ (written by make_tiny_models.py) and writes
tests/fixtures/tiny-<arch>.gguf with f32 tensors, so the harness's GGUF path for these two
architectures can be checked against the same transformers activations (tests/golden/tiny-<arch>.*)
as the safetensors fixtures.

What it reproduces from llama.cpp's convert_hf_to_gguf.py:
  - tensor names token_embd / output_norm / output / blk.N.{attn_norm,attn_q,attn_k,attn_v,
    attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}; a tied lm_head (qwen2) is not written;
  - Q and K of Llama-family models (mistral) permuted for llama.cpp's adjacent-pair rope; Qwen2's
    are stored as Hugging Face has them;
  - the metadata <arch>.context_length, embedding_length, block_count, feed_forward_length,
    attention.head_count(_kv), attention.key_length, attention.layer_norm_rms_epsilon,
    rope.freq_base, and attention.sliding_window where the config has one;
  - the byte-level BPE tokenizer as tokenizer.ggml.model "gpt2": tokens by id, merges as "a b",
    token types (3 = control for the special tokens, 1 = normal), bos/eos/padding ids and
    add_bos_token from tokenizer_config.json. The fixtures split text with GPT-2's own regex,
    so tokenizer.ggml.pre is "gpt2".

Deterministic: the same fixtures give the same bytes.

Usage: make_tiny_gguf.py [--fixtures tests/fixtures]
"""

import argparse
import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]

ARCHS = ["qwen2", "mistral"]

LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def permute(w, n_head):
    """llama.cpp's LlamaModel.permute: halves of each head's rows interleaved into pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf):
    stem, suffix = hf.rsplit(".", 1)
    if stem.startswith("model.layers."):
        layer, part = stem[len("model.layers."):].split(".", 1)
        return f"blk.{layer}.{LAYER_NAMES[part]}.{suffix}"
    return f"{TOP_NAMES[stem]}.{suffix}"


def write_tokenizer(w, src):
    tok = json.loads((src / "tokenizer.json").read_text())
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    special = {t["id"] for t in tok["added_tokens"] if t["special"]}
    for t in tok["added_tokens"]:
        vocab[t["content"]] = t["id"]
    tokens = [None] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    assert None not in tokens, "token ids are not contiguous"
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    by_text = {t["content"]: t["id"] for t in tok["added_tokens"]}

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_bos_token_id(by_text[tok_config["bos_token"]])
    w.add_eos_token_id(by_text[tok_config["eos_token"]])
    w.add_pad_token_id(by_text[tok_config["pad_token"]])
    w.add_add_bos_token(bool(tok_config["add_bos_token"]))


def convert(arch, fixtures):
    src = fixtures / f"tiny-{arch}"
    out = fixtures / f"tiny-{arch}.gguf"
    c = json.loads((src / "config.json").read_text())
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads

    w = gguf.GGUFWriter(out, arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    if c.get("sliding_window") and (arch == "mistral" or c.get("use_sliding_window")):
        w.add_sliding_window(c["sliding_window"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    write_tokenizer(w, src)

    weights = load_file(src / "model.safetensors")
    for name in sorted(weights):
        t = weights[name].astype(np.float32)
        # Qwen2 keeps the Hugging Face layout and rotates halves; Llama-family files are
        # permuted so llama.cpp can rotate adjacent pairs.
        if arch != "qwen2" and name.endswith("q_proj.weight"):
            t = permute(t, heads)
        elif arch != "qwen2" and name.endswith("k_proj.weight"):
            t = permute(t, kv_heads)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(t))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({out.stat().st_size} bytes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=ROOT / "tests" / "fixtures")
    args = ap.parse_args()
    for arch in ARCHS:
        convert(arch, args.fixtures)


if __name__ == "__main__":
    main()
