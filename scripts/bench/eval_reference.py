#!/usr/bin/env python3
"""Python pipeline doing the work of `harness eval --task mr --model smollm2 --limit N`.

transformers (fp32, eager attention, output_hidden_states=True) gives every layer's
hidden states; mean pooling over real tokens; then at every layer scikit-learn's
StandardScaler + LogisticRegression with stratified 5-fold cross-validation and C
chosen from [0.01, 0.1, 1, 10] by 3-fold inner cross-validation on each training
fold. The subset of examples and every fold are the ones harness uses (SplitMix64,
restated below), so per-layer accuracies can be compared one to one.

Usage: eval_reference.py --limit 2000 --seed 0 --out reference.json [--threads 2]
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from transformers import AutoModel, AutoTokenizer

MASK = (1 << 64) - 1
GRID = [0.01, 0.1, 1.0, 10.0]


def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def shuffle(items, state):
    for i in range(len(items) - 1, 0, -1):
        state, r = splitmix(state)
        j = r % (i + 1)
        items[i], items[j] = items[j], items[i]
    return state


def subset(n, limit, seed):
    idx = list(range(n))
    if limit is None or limit >= n:
        return idx
    shuffle(idx, seed)
    return sorted(idx[:limit])


def stratified_folds(labels, k, seed):
    members = [[] for _ in range(max(labels) + 1)]
    for i, y in enumerate(labels):
        members[y].append(i)
    state, position = seed, 0
    folds = [[] for _ in range(k)]
    for cls in members:
        state = shuffle(cls, state)
        for i in cls:
            folds[position % k].append(i)
            position += 1
    return [sorted(f) for f in folds]


def fit_predict(x, y, train, test, c):
    scaler = StandardScaler().fit(x[train])
    model = LogisticRegression(C=c, max_iter=300, tol=1e-4).fit(scaler.transform(x[train]), y[train])
    return model.predict(scaler.transform(x[test]))


def probe(x, y, seed):
    """Out-of-fold predictions with C chosen by inner cross-validation."""
    pred = np.zeros_like(y)
    for f, test in enumerate(stratified_folds(list(y), 5, seed)):
        train = np.setdiff1d(np.arange(len(y)), test)
        inner_seed = seed ^ ((0x9E3779B97F4A7C15 * (f + 1)) & MASK)
        inner = stratified_folds(list(y[train]), 3, inner_seed)
        scores = []
        for c in GRID:
            acc = []
            for held in inner:
                fit = train[np.setdiff1d(np.arange(len(train)), held)]
                val = train[held]
                acc.append(np.mean(fit_predict(x, y, fit, val, c) == y[val]))
            scores.append(np.mean(acc))
        best = GRID[int(np.argmax(scores))]
        pred[test] = fit_predict(x, y, train, np.array(test), best)
    return pred


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    home = Path(os.environ.get("HARNESS_HOME", Path.home() / ".cache" / "harness"))

    rows = [json.loads(l) for l in open(home / "data" / "mr" / "train.jsonl", encoding="utf-8")]
    rows = [r for r in rows if float(r["score"]) != 0.0]
    keep = subset(len(rows), args.limit, args.seed)
    texts = [rows[i]["text"] for i in keep]
    y = np.array([1 if float(rows[i]["score"]) > 0 else 0 for i in keep])

    model_dir, gguf = home / "models" / "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf)
    model = AutoModel.from_pretrained(model_dir, gguf_file=gguf, dtype=torch.float32,
                                      attn_implementation="eager").eval()
    last = {}
    model.layers[-1].register_forward_hook(lambda m, i, o: last.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    ids = [tok(t).input_ids for t in texts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    layers = model.config.num_hidden_layers + 1
    feats = np.zeros((layers, len(ids), model.config.hidden_size), dtype=np.float32)
    forward_start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), args.batch_size):
            batch = order[s:s + args.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.tensor([ids[i] + [tok.pad_token_id] * (width - len(ids[i])) for i in batch])
            mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in batch])
            out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            states = list(out.hidden_states[:-1]) + [last["h"]]
            m = mask[:, :, None].float()
            for l, h in enumerate(states):
                feats[l, batch] = ((h * m).sum(1) / m.sum(1)).numpy()
    forward_s = time.perf_counter() - forward_start

    probe_start = time.perf_counter()
    # One BLAS thread: on this 2-core machine scikit-learn's lbfgs is fastest so.
    with threadpool_limits(1):
        accuracy = [float(np.mean(probe(feats[l], y, args.seed) == y)) for l in range(layers)]
    probe_s = time.perf_counter() - probe_start
    json.dump({"accuracy": accuracy, "examples": len(y), "forward_s": forward_s, "probe_s": probe_s,
               "total_s": time.perf_counter() - start}, open(args.out, "w"))


if __name__ == "__main__":
    main()
