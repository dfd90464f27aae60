#!/usr/bin/env python3
"""Write tests/golden/eval_<model>.json: per-layer scores of `harness eval` on a small fixed
subset of each shipped task kind, computed independently with transformers, scikit-learn,
SciPy and a plain nDCG (tests/reference.rs compares harness against them).

Run from the repository root with the reference environment (scripts/reference/README.md):

    /work/venv/ref/bin/python scripts/reference/eval_reference.py            # smollm2, ~3 min
    /work/venv/ref/bin/python scripts/reference/eval_reference.py --model gemma3

Everything is restated here rather than read from harness, so that a bug in harness's item
selection, pooling, layer indexing, probe or logit lens shows as a difference:

  selection   the seeded subset of harness::sampling (SplitMix64, Fisher-Yates, first `limit`
              of the shuffle, sorted), seed 0, taken after the task's row filter / threshold.
  layers      layer 0 = the embeddings as block 1 receives them, layer l = block l's output;
              the last layer is taken BEFORE the final norm (a forward hook on the last block).
  tokens      transformers' tokenizer from the same GGUF, no special tokens, BOS prepended when
              the GGUF metadata asks for it (harness `--bos auto`); each text run alone.
  pooling     mean over all tokens (classification: `mr` says pool = "mean"); mean over all but
              the first token for the cosine tasks (`mean-skip-first`); no centring.
  mr          texts with score > 0 positive, < 0 negative, = 0 dropped; 5 outer stratified folds
              dealt as harness::probe::stratified_folds does (each class shuffled with SplitMix64
              seeded 0, dealt round-robin continuing across classes); on each training fold C is
              chosen from [0.01, 0.1, 1, 10] by 3 inner folds (seed 0 ^ 0x9E3779B97F4A7C15 *
              (fold + 1)), each standardised on its own fit part, ties to the smaller C; refit on
              the standardised training fold; accuracy of the out-of-fold predictions.
              StandardScaler + LogisticRegression(lbfgs, tol 1e-6, max_iter 20000): the optimum
              itself, not harness's stopping point.
  boolq-retrieval  questions as queries, the distinct passages of the same rows as corpus (in
              order of first appearance), cosine ranking, nDCG@10 with the row's passage as the
              only relevant document: 1 / log2(rank + 1) when it ranks in the top 10, else 0.
  lee-sts     cosine of the two documents' embeddings (float64), Spearman (scipy) against the
              human score over the subset of pairs.
  austen      Persuasion paragraphs, tokens cut to max_tokens = 128, documents under 2 tokens
              dropped; logit lens = the model's final norm then its LM head on each layer's
              hidden state; perplexity = exp(sum of next-token NLL / tokens scored).
  boolq       prompt "{passage}\\nQuestion: {question}?\\nAnswer:", options " no" / " yes", each
              option's log-probability summed over its tokens through the lens; the first
              highest option wins; also the mean margin (right option minus best other).

Output: one key per line; per task the settings, the item counts and, per layer, the score
(and the extra metric compared, where there is one).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")  # before transformers: no GGUF progress bars
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

MODELS = {
    # alias: (directory under $HARNESS_HOME/models, GGUF file)
    "smollm2": ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3": ("gemma3", "gemma-3-270m-q4_k_m.gguf"),
}
# Subset sizes: big enough that the scores move between layers, small enough that the Rust
# test runs in well under a minute on two cores.
LIMITS = {"mr": 150, "boolq-retrieval": 100, "lee-sts": 150, "austen": 8, "boolq": 40}
SEED = 0
MASK64 = (1 << 64) - 1
C_GRID = [0.01, 0.1, 1.0, 10.0]
FOLDS, INNER_FOLDS = 5, 3
AUSTEN_WINDOW = 128
BOOLQ_PROMPT = "{passage}\nQuestion: {question}?\nAnswer:"
BOOLQ_CHOICES = [" no", " yes"]


def harness_home() -> Path:
    env = os.environ.get("HARNESS_HOME")
    return Path(env) if env else Path.home() / ".cache" / "harness"


# ---- harness::sampling, restated -------------------------------------------------------

def splitmix(state):
    """Returns (new state, next value) of SplitMix64."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def shuffle(items, state):
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        state, r = splitmix(state)
        j = r % (i + 1)
        items[i], items[j] = items[j], items[i]
    return items, state


def subset(n, limit, seed=SEED):
    if limit is None or limit >= n:
        return list(range(n))
    idx, _ = shuffle(range(n), seed)
    return sorted(idx[:limit])


def stratified_folds(labels, k, seed):
    state = seed
    members = [[i for i, l in enumerate(labels) if l == c] for c in range(max(labels) + 1)]
    folds = [[] for _ in range(k)]
    position = 0
    for cls in members:
        cls, state = shuffle(cls, state)
        for i in cls:
            folds[position % k].append(i)
            position += 1
    return [sorted(f) for f in folds]


# ---- data -------------------------------------------------------------------------------

def rows(dataset, file):
    path = harness_home() / "data" / dataset / file
    if not path.is_file():
        sys.exit(f"{path} not found; run `python3 scripts/fetch_assets.py --only {dataset}`")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cell_text(value):
    """harness's Table::text: strings as they are, other JSON values written out."""
    return value if isinstance(value, str) else json.dumps(value)


# ---- model ------------------------------------------------------------------------------

class Model:
    def __init__(self, alias):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        sub, fname = MODELS[alias]
        d = harness_home() / "models" / sub
        if not (d / fname).is_file():
            sys.exit(f"{d / fname} not found; run `python3 scripts/fetch_assets.py` first")
        self.tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
        self.model = AutoModelForCausalLM.from_pretrained(
            d, gguf_file=fname, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        # harness --bos auto follows the GGUF's tokenizer.ggml.add_bos_token.
        from gguf import GGUFReader

        field = GGUFReader(d / fname).fields.get("tokenizer.ggml.add_bos_token")
        self.add_bos = bool(field.parts[field.data[0]][0]) if field else False
        self.layers = self.model.config.num_hidden_layers

    def encode(self, text):
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ([self.tok.bos_token_id] if self.add_bos else []) + ids

    @torch.no_grad()
    def hidden(self, ids):
        """Every layer's hidden states [L + 1, T, D], the last one before the final norm."""
        last = {}
        hook = self.model.model.layers[-1].register_forward_hook(
            lambda _m, _a, out: last.__setitem__("h", out[0] if isinstance(out, tuple) else out)
        )
        try:
            out = self.model(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
        finally:
            hook.remove()
        states = list(out.hidden_states[: self.layers]) + [last["h"]]
        return torch.stack([s[0] for s in states])

    @torch.no_grad()
    def lens_logprobs(self, hidden):
        """Logit lens: log-softmax of the LM head applied to the final norm of each layer."""
        logits = self.model.lm_head(self.model.model.norm(hidden))
        return torch.log_softmax(logits.double(), dim=-1)

    def pooled(self, texts, skip_first):
        """[n, L + 1, D] float64 pooled embeddings."""
        out = []
        for t in texts:
            h = self.hidden(self.encode(t)).double()
            start = 1 if skip_first and h.shape[1] > 1 else 0
            out.append(h[:, start:, :].mean(dim=1).numpy())
        return np.stack(out)


# ---- tasks ------------------------------------------------------------------------------

def probe_accuracy(x, y):
    """Out-of-fold accuracy of harness's nested cross-validated probe on one layer."""
    pred = np.zeros_like(y)
    for fold, test in enumerate(stratified_folds(list(y), FOLDS, SEED)):
        train = np.setdiff1d(np.arange(len(y)), test)
        inner_seed = SEED ^ ((0x9E3779B97F4A7C15 * (fold + 1)) & MASK64)
        scores = np.zeros(len(C_GRID))
        for held in stratified_folds(list(y[train]), INNER_FOLDS, inner_seed):
            fit = train[np.setdiff1d(np.arange(len(train)), held)]
            val = train[held]
            scaler = StandardScaler().fit(x[fit])
            for g, c in enumerate(C_GRID):
                m = logistic(c).fit(scaler.transform(x[fit]), y[fit])
                scores[g] += m.score(scaler.transform(x[val]), y[val])
        c = C_GRID[int(np.argmax(scores))]  # first best: ties go to the smaller C
        scaler = StandardScaler().fit(x[train])
        m = logistic(c).fit(scaler.transform(x[train]), y[train])
        pred[test] = m.predict(scaler.transform(x[test]))
    return float(np.mean(pred == y))


def logistic(c):
    return LogisticRegression(C=c, solver="lbfgs", tol=1e-6, max_iter=20000)


def mr(model):
    data = [r for r in rows("mr", "train.jsonl") if float(r["score"]) != 0.0]
    keep = subset(len(data), LIMITS["mr"])
    texts = [data[i]["text"] for i in keep]
    y = np.array([int(float(data[i]["score"]) > 0) for i in keep])
    x = model.pooled(texts, skip_first=False).astype(np.float32)
    # The probes dominate the run time (65 fits a layer), so only a few layers: the
    # embeddings, the first blocks, the middle and the end.
    last = x.shape[1] - 1
    layers = [0, 1, 2, last // 2, last - 1, last]
    return {"items": len(texts), "layers": layers, "scores": [probe_accuracy(x[:, l, :], y) for l in layers]}


def cosine_matrix(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def boolq_retrieval(model):
    data = rows("boolq", "dev.jsonl")
    queries, corpus, relevant = [], [], []
    for i in subset(len(data), LIMITS["boolq-retrieval"]):
        doc = data[i]["passage"]
        if doc not in corpus:
            corpus.append(doc)
        relevant.append(corpus.index(doc))
        queries.append(data[i]["question"])
    x = model.pooled(queries + corpus, skip_first=True)
    q, d = x[: len(queries)], x[len(queries):]
    scores = []
    for l in range(x.shape[1]):
        sims = cosine_matrix(q[:, l, :], d[:, l, :])
        ndcg = []
        for row, rel in zip(sims, relevant):
            rank = 1 + int(np.sum(row > row[rel]))
            ndcg.append(1.0 / np.log2(rank + 1) if rank <= 10 else 0.0)
        scores.append(float(np.mean(ndcg)))
    return {"items": len(queries), "corpus": len(corpus), "scores": scores}


def lee_sts(model):
    data = rows("lee", "pairs.jsonl")
    texts, pairs, gold = [], [], []
    for i in subset(len(data), LIMITS["lee-sts"]):
        ids = []
        for t in (data[i]["text_a"], data[i]["text_b"]):
            if t not in texts:
                texts.append(t)
            ids.append(texts.index(t))
        pairs.append(ids)
        gold.append(float(data[i]["score"]))
    x = model.pooled(texts, skip_first=True)
    scores = []
    for l in range(x.shape[1]):
        cos = [float(cosine_matrix(x[[a], l, :], x[[b], l, :])[0, 0]) for a, b in pairs]
        scores.append(float(spearmanr(cos, gold).statistic))
    return {"items": len(pairs), "texts": len(texts), "scores": scores}


def austen(model):
    data = [r for r in rows("austen", "paragraphs.jsonl") if r["book"] == "Persuasion"]
    seqs = [model.encode(data[i]["text"])[:AUSTEN_WINDOW] for i in subset(len(data), LIMITS["austen"])]
    seqs = [s for s in seqs if len(s) >= 2]
    nll = np.zeros(model.layers + 1)
    tokens = 0
    for s in seqs:
        lp = model.lens_logprobs(model.hidden(s)[:, :-1, :])
        targets = torch.tensor(s[1:])
        nll -= lp[:, torch.arange(len(s) - 1), targets].sum(dim=1).numpy()
        tokens += len(s) - 1
    return {"items": len(seqs), "tokens": tokens, "scores": np.exp(nll / tokens).tolist()}


def option_logprobs(model, head, conts):
    """[layers, options]: each option's summed log-probability after `head`."""
    if all(len(c) == 1 for c in conts):
        lp = model.lens_logprobs(model.hidden(head)[:, -1, :])
        return lp[:, [c[0] for c in conts]].numpy()
    out = []
    for c in conts:
        lp = model.lens_logprobs(model.hidden(head + c)[:, len(head) - 1 : -1, :])
        out.append(lp[:, torch.arange(len(c)), torch.tensor(c)].sum(dim=1).numpy())
    return np.stack(out, axis=1)


def boolq(model):
    data = rows("boolq", "dev.jsonl")
    right, margin = [], []
    for i in subset(len(data), LIMITS["boolq"]):
        r = data[i]
        text = BOOLQ_PROMPT.format(passage=cell_text(r["passage"]), question=cell_text(r["question"]))
        gold = {"false": 0, "true": 1}[cell_text(r["answer"])]
        head = model.encode(text)
        conts = []
        for c in BOOLQ_CHOICES:
            full = model.encode(text + c)
            assert full[: len(head)] == head and len(full) > len(head), "option is no continuation"
            conts.append(full[len(head):])
        s = option_logprobs(model, head, conts)
        right.append(np.argmax(s, axis=1) == gold)  # argmax: the first highest wins
        margin.append(s[:, gold] - np.max(np.delete(s, gold, axis=1), axis=1))
    return {
        "items": len(right),
        "scores": np.mean(right, axis=0).tolist(),
        "mean_margin": np.mean(margin, axis=0).tolist(),
    }


TASKS = {"mr": mr, "boolq-retrieval": boolq_retrieval, "lee-sts": lee_sts, "austen": austen, "boolq": boolq}


def dump(obj):
    """One top-level key per line, values compact: small, reviewable diffs."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in obj.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of the tasks")
    parser.add_argument("--out", default=None, help="default tests/golden/eval_<model>.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = Model(args.model)
    out = {
        "model": args.model,
        "seed": SEED,
        "layers": model.layers + 1,
        "versions": {
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "scipy": scipy.__version__,
            "numpy": np.__version__,
        },
    }
    for name in args.tasks.split(","):
        result = TASKS[name](model)
        out[name] = {"limit": LIMITS[name], **result}
        print(f"{name}: {result['items']} items; scores " + " ".join(f"{v:.4g}" for v in result["scores"]), flush=True)
    path = Path(args.out or f"tests/golden/eval_{args.model}.json")
    path.write_text(dump(out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
