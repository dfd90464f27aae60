#!/usr/bin/env python3
"""Write tests/golden/tokenizer.json: the token ids transformers gives for the GGUF tokenizers.

transformers is the reference for what a model was trained on, so `tests/tokenizer.rs` checks
that harness's Rust tokenizer (`src/model/tokenizer/`) reproduces these ids exactly, and that the
tokenizer it rebuilds from GGUF metadata has the same vocabulary, merges and added tokens
(compared through digests, the merges alone being half a million pairs for Gemma 3).

Besides the two real models, the file covers variants that exercise code paths no shipped
model uses: the SmolLM2 vocabulary split by the llama-3 and qwen2 pre-tokenizers, and the
Gemma 3 vocabulary read as a generic (non-Gemma) SentencePiece model. Each variant is the
real file with a few metadata keys changed, written to a temporary GGUF without tensors;
the Rust test applies the same changes to the metadata it reads.

Run with the reference virtual environment (transformers, tokenizers, gguf), after
`scripts/fetch_assets.py`; it takes a few minutes and writes the same file every time:

    /path/to/venv/bin/python scripts/reference/tokenizer_golden.py
"""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "tests" / "golden" / "tokenizer.json"

# (alias, GGUF path under $HARNESS_HOME, metadata overrides, metadata keys removed)
MODELS = [
    ("smollm2", "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", {}, []),
    ("gemma3", "models/gemma3/gemma-3-270m-q4_k_m.gguf", {}, []),
    ("smollm2+llama-bpe", "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", {"tokenizer.ggml.pre": "llama-bpe"}, []),
    ("smollm2+qwen2", "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", {"tokenizer.ggml.pre": "qwen2"}, []),
    # transformers' generic SentencePiece tokenizer ignores add_space_prefix and always adds the
    # prefix space; harness honours the key, so it is removed to compare the two on equal terms.
    (
        "gemma3+llama",
        "models/gemma3/gemma-3-270m-q4_k_m.gguf",
        {"general.architecture": "llama"},
        ["tokenizer.ggml.add_space_prefix"],
    ),
]

TEXTS = [
    "Hello",
    "Hello world, this is  a test\n😀 123",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading and two trailing  ",
    "a  b   c    d     e      f       g        h         i          j",
    "          ",
    "tab\tseparated\t\tvalues\t",
    "\t\t\tthree tabs first",
    "line one\nline two\n\nline four\n",
    "windows\r\nline endings\r\n\r\n",
    "\n\n\n",
    "  \n \t\n",
    "Numbers: 7 42 123 2024 3.14159 1,000,000 -0.5e10",
    "12345678901234567890",
    "Punctuation!!! Really?! (yes) [no] {maybe} \"quoted\" 'single' ... --- ;: @#$%^&*",
    "don't can't won't I'm you're they've we'd she'll it's",
    "I'LL DON'T WE'RE THEY'VE",
    "ALL CAPS, lowercase and MiXeD CaSe",
    "Café naïve résumé façade Ångström Straße œuvre",
    "中文分词测试：我们今天去公园。",
    "日本語のテキストとカタカナ、ひらがな",
    "한국어 텍스트입니다",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Ελληνικά και русский текст",
    "emoji 😀😃😄 thumbs 👍🏽👍",
    "family 👨\u200d👩\u200d👧\u200d👦 flags 🇫🇷🇯🇵 🏳️\u200d🌈",
    "Math: ∑ x² ≤ ∞, α β γ → ∂f/∂x",
    "zero\u200bwidth no\u00a0break\u3000ideographic space",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more",
    "<bos>Hello<eos>",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<html><body><h1>Title</h1><table><tr><td>1</td></tr></table></body></html>",
    "",
    "Supercalifragilisticexpialidocious" + "abcdefghijklmnopqrstuvwxyz" * 4,
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tprintln!(\"hi {}\", 1);\n}\n",
    "https://example.com/path/to/page?query=value&other=1#frag",
    "mail me@example.org or visit http://localhost:8080/api/v1/items",
    "bell\x07 nul\x00 del\x7f",
]


def harness_home() -> Path:
    env = os.environ.get("HARNESS_HOME")
    return Path(env) if env else Path.home() / ".cache" / "harness"


def digest(items) -> dict:
    """Count and sha256 of strings, each length-prefixed so no separator can be ambiguous."""
    h = hashlib.sha256()
    count = 0
    for item in items:
        data = item.encode("utf-8")
        h.update(f"{len(data)}:".encode())
        h.update(data)
        count += 1
    return {"count": count, "sha256": h.hexdigest()}


def backend_digests(tok) -> dict:
    """What the tokenizer is made of, in the form `tests/tokenizer.rs` recomputes from Rust."""
    backend = json.loads(tok.backend_tokenizer.to_str())
    model = backend["model"]
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
    return {
        "vocab": digest(f"{i}:{t}" for t, i in sorted(model["vocab"].items(), key=lambda kv: kv[1])),
        "merges": digest(f"{a}\u0000{b}" for a, b in merges),
        "added_tokens": digest(
            f"{t['id']}:{int(t['special'])}{int(t['normalized'])}{int(t['lstrip'])}"
            f"{int(t['rstrip'])}{int(t['single_word'])}:{t['content']}"
            for t in sorted(backend["added_tokens"], key=lambda t: t["id"])
        ),
    }


def write_variant(src: Path, dst: Path, overrides: dict, removed: list) -> None:
    """The tokenizer metadata of `src`, with `overrides` and without `removed`, as a GGUF."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    arch = overrides.get("general.architecture", reader.fields["general.architecture"].contents())
    writer = GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key in removed:
            continue
        if key in overrides:
            writer.add_key_value(key, overrides[key], GGUFValueType.STRING)
        elif field.types[0] == GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), field.types[0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def golden_for(tok) -> dict:
    cases = []
    for text in TEXTS:
        ids = tok(text).input_ids
        plain = tok(text, add_special_tokens=False).input_ids
        decoded = tok.decode(plain, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        cases.append({"text": text, "ids": ids, "ids_no_special": plain, "decoded": decoded})
    return {
        "vocab_size": len(tok),
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "backend": backend_digests(tok),
        "cases": cases,
    }


def dump(golden: dict) -> str:
    """JSON with one case per line, so a diff shows which text changed."""
    lines = ["{"]
    lines.append(f' "generator": {json.dumps(golden["generator"])},')
    lines.append(f' "versions": {json.dumps(golden["versions"], sort_keys=True)},')
    lines.append(' "models": {')
    models = list(golden["models"].items())
    for m, (alias, entry) in enumerate(models):
        lines.append(f"  {json.dumps(alias)}: {{")
        for key in [k for k in entry if k != "cases"]:
            lines.append(f"   {json.dumps(key)}: {json.dumps(entry[key], ensure_ascii=False, sort_keys=True)},")
        lines.append('   "cases": [')
        cases = entry["cases"]
        for c, case in enumerate(cases):
            comma = "," if c + 1 < len(cases) else ""
            lines.append(f"    {json.dumps(case, ensure_ascii=False)}{comma}")
        lines.append("   ]")
        lines.append("  }" + ("," if m + 1 < len(models) else ""))
    lines.append(" }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    home = harness_home()
    golden = {
        "generator": "scripts/reference/tokenizer_golden.py",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for alias, rel, overrides, removed in MODELS:
            path = home / rel
            if not path.is_file():
                print(f"golden: {path} is missing; run scripts/fetch_assets.py first", file=sys.stderr)
                return 1
            if overrides or removed:
                variant = Path(tmp) / f"{alias}.gguf"
                write_variant(path, variant, overrides, removed)
                path = variant
            print(f"golden: {alias}", file=sys.stderr)
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            entry = {"gguf": rel, "metadata_overrides": overrides, "metadata_removed": removed}
            entry.update(golden_for(tok))
            golden["models"][alias] = entry
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(dump(golden), encoding="utf-8")
    print(f"golden: wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
