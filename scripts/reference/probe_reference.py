"""Write tests/golden/probe_reference.json: scikit-learn / SciPy answers that the Rust
probe and metrics must reproduce (tests/probe.rs).

Run from the repository root with the reference environment (scikit-learn 1.9, SciPy,
NumPy; see scripts/reference/README.md):

    /work/venv/ref/bin/python scripts/reference/probe_reference.py

With --bench PREFIX it instead times scikit-learn doing the same work as one layer of
harness::probe::evaluate, on the files the Rust benchmark writes:

    PROBE_BENCH_DUMP=/tmp/probe-bench cargo test --release --test probe -- \
        --ignored --nocapture bench
    /work/venv/ref/bin/python scripts/reference/probe_reference.py --bench /tmp/probe-bench

(5 stratified outer folds; per outer fold 3 inner folds x 4 values of C, each with its own
StandardScaler, then a refit on the training fold; LogisticRegression(C, solver="lbfgs",
max_iter=300, tol=1e-4); BLAS limited to --threads threads.)

Deterministic: fixed seeds, fixed literal inputs, and feature values on a 1/256 grid
below 2**16 in magnitude, so every value is exact in float32, float64 and JSON and the
Rust side reads precisely the matrix scikit-learn saw.

Contents:
  features      300 x 40 matrix shaped like pooled LLM features: low-rank signal, a
                per-column offset, columns 3 and 17 scaled x1000, column 29 constant.
  labels3       three-class labels; labels2: binary labels (same features).
  train, test   fixed index sets (240 / 60).
  fits          for each label set: C, StandardScaler fitted on `train`, then
                LogisticRegression(C, solver="lbfgs", tol=1e-10, max_iter=10000):
                coef_ and intercept_ (standardised-feature space), predict_proba and
                predict on `test`, n_iter_.
  metrics       f1_score(average="macro"), spearmanr, pearsonr, ndcg_score (binary
                relevance, ranking given by descending scores), and MRR / recall@k by
                their textbook definitions, on small literal inputs.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy
import sklearn
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, ndcg_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

OUT = Path("tests/golden/probe_reference.json")
N, D = 300, 40
GRID = 256.0


def make_problem():
    rng = np.random.default_rng(20240611)
    latent = rng.normal(size=(N, 6))
    mix = rng.normal(size=(6, D))
    x = latent @ mix + 0.7 * rng.normal(size=(N, D))
    x += rng.normal(0.0, 5.0, size=D)
    x[:, [3, 17]] *= 1000.0
    x[:, 29] = 3.5
    x = np.round(x * GRID) / GRID
    assert np.abs(x).max() * GRID < 2**24, "values must stay exact in float32"
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)

    noise3 = rng.normal(scale=0.8, size=(N, 3))
    labels3 = np.argmax(latent[:, :3] * np.array([1.5, 1.2, 1.0]) + noise3, axis=1)
    labels2 = (latent[:, 0] - 0.5 * latent[:, 3] + rng.normal(scale=0.8, size=N) > 0).astype(int)
    order = rng.permutation(N)
    train, test = np.sort(order[:240]), np.sort(order[240:])
    return x, labels3, labels2, train, test


def fit(x, y, train, test, c):
    scaler = StandardScaler().fit(x[train])
    model = LogisticRegression(C=c, solver="lbfgs", tol=1e-10, max_iter=10000)
    model.fit(scaler.transform(x[train]), y[train])
    xt = scaler.transform(x[test])
    return {
        "c": c,
        "coef": model.coef_.tolist(),
        "intercept": model.intercept_.tolist(),
        "proba": model.predict_proba(xt).tolist(),
        "predict": model.predict(xt).tolist(),
        "n_iter": int(model.n_iter_[0]),
        "train_accuracy": float(model.score(scaler.transform(x[train]), y[train])),
        "test_accuracy": float(model.score(xt, y[test])),
    }


def ndcg_case(ranking, relevant, k):
    """sklearn's ndcg_score on the items of the ranking plus the relevant ones, scored so
    that the ranking's order is the score order (relevant items outside it come last)."""
    items = list(ranking) + [r for r in sorted(set(relevant)) if r not in ranking]
    scores = [float(len(items) - i) for i in range(len(items))]
    truth = [1.0 if item in relevant else 0.0 for item in items]
    value = ndcg_score([truth], [scores], k=k)
    return {"ranking": ranking, "relevant": relevant, "k": k, "value": float(value)}


def mrr(ranking, relevant, k):
    for i, item in enumerate(ranking[:k]):
        if item in relevant:
            return 1.0 / (i + 1)
    return 0.0


def recall(ranking, relevant, k):
    rel = set(relevant)
    return len(rel & set(ranking[:k])) / len(rel)


def metrics():
    f1_cases = [
        # (pred, gold, num_classes): a class never predicted, a class only predicted,
        # a class absent from both (num_classes 5), and a perfect score.
        ([0, 1, 1, 1, 1, 2, 0, 2], [0, 0, 1, 1, 2, 2, 2, 1], 3),
        ([0, 0, 0, 1, 1, 1, 0, 1, 3], [0, 1, 2, 1, 1, 2, 0, 0, 0], 5),
        ([2, 2, 2, 2], [2, 2, 0, 2], 3),
        ([1, 0, 1, 0], [1, 0, 1, 0], 2),
    ]
    f1 = [
        {
            "pred": p,
            "gold": g,
            "num_classes": k,
            "value": float(f1_score(g, p, average="macro", zero_division=0)),
        }
        for p, g, k in f1_cases
    ]
    corr_cases = [
        ([1.0, 5.0, 5.0, 9.0, 2.0, 2.0, 2.0, 7.5], [10.0, 20.0, 30.0, 40.0, 5.0, 6.0, 5.0, 1.0]),
        ([0.31, -1.2, 4.4, 0.0, 2.25, 3.5], [0.5, 0.1, 0.9, 0.2, 0.6, 0.7]),
        ([3.0, 1.0, 2.0, 5.0, 4.0], [-1.0, -3.0, 2.0, 2.0, 0.0]),
    ]
    corr = [
        {
            "a": a,
            "b": b,
            "spearman": float(spearmanr(a, b).statistic),
            "pearson": float(pearsonr(a, b).statistic),
        }
        for a, b in corr_cases
    ]
    ranking_cases = [
        ([3, 7, 9, 1, 4], [7, 9], 10),
        ([3, 7, 9, 1, 4], [7, 9], 1),
        ([3, 7, 9, 1, 4], [4, 8, 3], 3),
        ([5, 2, 8, 6, 0, 1], [2, 0, 11], 5),
        ([5, 2, 8, 6, 0, 1], [5], 1),
    ]
    ndcg = [ndcg_case(r, rel, k) for r, rel, k in ranking_cases]
    for case in ndcg:
        case["mrr"] = mrr(case["ranking"], case["relevant"], case["k"])
        case["recall"] = recall(case["ranking"], case["relevant"], case["k"])
    return {"f1": f1, "correlation": corr, "retrieval": ndcg}


def dump(obj):
    """One top-level key per line, values compact: small diffs, no 12000-line file."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in obj.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def probe_layer(x, y, grid=(0.01, 0.1, 1.0, 10.0), max_iter=300):
    """The work of one harness::probe::evaluate call, done with scikit-learn."""
    predictions = np.zeros_like(y)
    outer = StratifiedKFold(5, shuffle=True, random_state=0)
    for fold, (train, test) in enumerate(outer.split(x, y)):
        xt, yt = x[train], y[train]
        scores = np.zeros(len(grid))
        inner = StratifiedKFold(3, shuffle=True, random_state=fold + 1)
        for fit_rows, val_rows in inner.split(xt, yt):
            scaler = StandardScaler().fit(xt[fit_rows])
            xf, xv = scaler.transform(xt[fit_rows]), scaler.transform(xt[val_rows])
            for g, c in enumerate(grid):
                model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=1e-4)
                scores[g] += model.fit(xf, yt[fit_rows]).score(xv, yt[val_rows])
        c = grid[int(np.argmax(scores))]
        scaler = StandardScaler().fit(xt)
        model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=1e-4)
        model.fit(scaler.transform(xt), yt)
        predictions[test] = model.predict(scaler.transform(x[test]))
    return float(np.mean(predictions == y))


def bench(prefix, threads, dtype, n=2000, d=576):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    warnings.simplefilter("ignore", ConvergenceWarning)
    layer = 0
    while Path(f"{prefix}.{layer}").exists():
        raw = Path(f"{prefix}.{layer}").read_bytes()
        x = np.frombuffer(raw[: n * d * 4], dtype="<f4").reshape(n, d).astype(dtype)
        y = np.frombuffer(raw[n * d * 4 :], dtype="<u4").astype(np.int64)
        with threadpool_limits(threads):
            wall, cpu = time.perf_counter(), time.process_time()
            accuracy = probe_layer(x, y)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"layer {layer}: {wall:.2f} s wall, {cpu:.2f} s CPU, accuracy {accuracy:.3f}")
        layer += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", metavar="PREFIX", help="time scikit-learn on PREFIX.0, PREFIX.1, ...")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads for --bench")
    parser.add_argument("--float64", action="store_true", help="--bench on float64 copies")
    args = parser.parse_args()
    if args.bench:
        bench(args.bench, args.threads, np.float64 if args.float64 else np.float32)
        return
    x, labels3, labels2, train, test = make_problem()
    out = {
        "versions": {
            "sklearn": sklearn.__version__,
            "scipy": scipy.__version__,
            "numpy": np.__version__,
        },
        "features": x.tolist(),
        "labels3": labels3.tolist(),
        "labels2": labels2.tolist(),
        "train": train.tolist(),
        "test": test.tolist(),
        "fit3": fit(x, labels3, train, test, 0.5),
        "fit2": fit(x, labels2, train, test, 0.2),
        "metrics": metrics(),
    }
    OUT.write_text(dump(out))
    for key in ("fit3", "fit2"):
        f = out[key]
        print(f"{key}: n_iter {f['n_iter']}, train acc {f['train_accuracy']:.3f}, test acc {f['test_accuracy']:.3f}")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
