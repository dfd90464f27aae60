//! Linear probes and metrics against scikit-learn / SciPy (tests/golden/probe_reference.json,
//! written by scripts/reference/probe_reference.py), plus the properties the layer-by-layer
//! comparison relies on: identical stratified folds, determinism, sane accuracy on easy and
//! on hopeless labels, and clear errors.

use std::time::Instant;

use harness::probe::{self, LogisticParams, ProbeConfig, Standardizer};
use harness::stats::metrics;
use linfa::prelude::*;
use linfa_logistic::{LogisticRegression, MultiLogisticRegression};
use ndarray::{Array1, Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn golden() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/probe_reference.json"
    ))
    .expect("tests/golden/probe_reference.json (scripts/reference/probe_reference.py writes it)");
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn matrix(v: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = v.as_array().unwrap().iter().map(floats).collect();
    Array2::from_shape_fn((rows.len(), rows[0].len()), |(i, j)| rows[i][j])
}

/// The golden features (exact in f32 by construction), standardised on the training rows.
struct Split {
    train_x: Array2<f32>,
    test_x: Array2<f32>,
    train_y: Vec<usize>,
    test_y: Vec<usize>,
}

fn split(g: &Value, labels: &str) -> Split {
    let features = matrix(&g["features"]).mapv(|v| v as f32);
    let labels = indices(&g[labels]);
    let (train, test) = (indices(&g["train"]), indices(&g["test"]));
    let scaler = Standardizer::fit(features.view(), &train);
    Split {
        train_x: scaler.transform(features.view(), &train),
        test_x: scaler.transform(features.view(), &test),
        train_y: train.iter().map(|&i| labels[i]).collect(),
        test_y: test.iter().map(|&i| labels[i]).collect(),
    }
}

/// Largest absolute difference relative to the largest reference magnitude.
fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale
}

fn check_against_sklearn(labels: &str, fit: &str, num_classes: usize) {
    let g = golden();
    let reference = &g[fit];
    let data = split(&g, labels);
    let training = Dataset::new(data.train_x.clone(), Array1::from(data.train_y.clone()));
    let model = LogisticParams::default()
        .c(reference["c"].as_f64().unwrap())
        .max_iterations(10_000)
        .gradient_tolerance(1e-10)
        .fit(&training)
        .unwrap();
    assert_eq!(
        model.intercept.len(),
        if num_classes == 2 { 1 } else { num_classes }
    );
    assert!(model.report.converged(), "{:?}", model.report);

    let want_coef: Vec<f64> = reference["coef"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(floats)
        .collect();
    let coef_error = relative_error(model.coef.as_slice().unwrap(), &want_coef);
    let intercept_error = relative_error(&model.intercept, &floats(&reference["intercept"]));
    let proba = model.predict_proba(data.test_x.view());
    let want_proba = matrix(&reference["proba"]);
    let proba_error = (&proba - &want_proba).fold(0.0f64, |m, v| m.max(v.abs()));
    eprintln!(
        "{fit}: {} iterations (sklearn {}), coef rel err {coef_error:.1e}, intercept rel err \
         {intercept_error:.1e}, max |proba diff| {proba_error:.1e}",
        model.report.iterations, reference["n_iter"]
    );
    assert!(
        coef_error < 1e-5,
        "coefficients differ from scikit-learn: {coef_error:e}"
    );
    assert!(
        intercept_error < 1e-5,
        "intercepts differ from scikit-learn: {intercept_error:e}"
    );
    assert!(
        proba_error < 1e-6,
        "probabilities differ from scikit-learn: {proba_error:e}"
    );
    let predictions: Array1<usize> = model.predict(&data.test_x);
    assert_eq!(predictions.to_vec(), indices(&reference["predict"]));
    let accuracy = metrics::accuracy(&predictions.to_vec(), &data.test_y);
    assert!((accuracy - reference["test_accuracy"].as_f64().unwrap()).abs() < 1e-12);
}

#[test]
fn multinomial_fit_matches_sklearn() {
    check_against_sklearn("labels3", "fit3", 3);
}

#[test]
fn binary_fit_matches_sklearn() {
    check_against_sklearn("labels2", "fit2", 2);
}

/// linfa-logistic minimises `sum loss + alpha/2 ||W||^2` (intercept free); with
/// `alpha = 1/C` that is n times scikit-learn's objective, so both land on the same
/// coefficients. This pins down the mapping src/probe/logistic.rs documents.
#[test]
fn linfa_with_alpha_one_over_c_matches_sklearn() {
    let g = golden();
    for (labels, fit) in [("labels3", "fit3"), ("labels2", "fit2")] {
        let reference = &g[fit];
        let data = split(&g, labels);
        let alpha = 1.0 / reference["c"].as_f64().unwrap();
        let x = data.train_x.mapv(f64::from);
        let dataset = Dataset::new(x, Array1::from(data.train_y.clone()));
        let coef: Vec<f64> = if fit == "fit3" {
            let model = MultiLogisticRegression::default()
                .alpha(alpha)
                .max_iterations(10_000)
                .gradient_tolerance(1e-8)
                .fit(&dataset)
                .unwrap();
            // linfa stores [d, classes]; scikit-learn [classes, d].
            model.params().t().iter().copied().collect()
        } else {
            let model = LogisticRegression::default()
                .alpha(alpha)
                .max_iterations(10_000)
                .gradient_tolerance(1e-8)
                .fit(&dataset)
                .unwrap();
            // linfa's positive class is the more frequent one; scikit-learn's is class 1.
            let sign = if model.labels().pos.class == 1 {
                1.0
            } else {
                -1.0
            };
            model.params().iter().map(|w| sign * w).collect()
        };
        let want: Vec<f64> = reference["coef"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        let error = relative_error(&coef, &want);
        eprintln!("linfa {fit}: coef rel err {error:.1e}");
        assert!(
            error < 1e-4,
            "{fit}: linfa with alpha = 1/C is off by {error:e}"
        );
        // With alpha = 1/(2C) the penalty would be halved and the fit visibly different.
        let halved = LogisticRegression::default()
            .alpha(alpha / 2.0)
            .max_iterations(10_000)
            .gradient_tolerance(1e-8);
        if fit == "fit2" {
            let model = halved.fit(&dataset).unwrap();
            let sign = if model.labels().pos.class == 1 {
                1.0
            } else {
                -1.0
            };
            let other: Vec<f64> = model.params().iter().map(|w| sign * w).collect();
            assert!(relative_error(&other, &want) > 1e-2);
        }
    }
}

/// Fits `params` on the training split and predicts the test split, in f64 as linfa
/// users hold their data. One code path for any linfa classifier of class indices.
fn fit_and_predict<P, E>(params: P, data: &Split) -> Vec<usize>
where
    P: Fit<Array2<f64>, Array1<usize>, E>,
    P::Object: for<'a> Predict<&'a Array2<f64>, Array1<usize>>,
    E: std::error::Error + From<linfa::Error>,
{
    let training = Dataset::new(
        data.train_x.mapv(f64::from),
        Array1::from(data.train_y.clone()),
    );
    let model = params.fit(&training).unwrap();
    model.predict(&data.test_x.mapv(f64::from)).to_vec()
}

/// The probe's estimator is a linfa estimator: swapping it for linfa-logistic's
/// (`alpha = 1/C`) is one line, and both predict the held-out rows alike.
#[test]
fn probe_and_linfa_logistic_fit_through_one_generic_path() {
    let g = golden();
    for (labels, fit) in [("labels3", "fit3"), ("labels2", "fit2")] {
        let reference = &g[fit];
        let data = split(&g, labels);
        let c = reference["c"].as_f64().unwrap();
        let ours = fit_and_predict(
            LogisticParams::default()
                .c(c)
                .max_iterations(10_000)
                .gradient_tolerance(1e-10),
            &data,
        );
        let theirs = if fit == "fit3" {
            fit_and_predict(
                MultiLogisticRegression::default()
                    .alpha(1.0 / c)
                    .max_iterations(10_000)
                    .gradient_tolerance(1e-8),
                &data,
            )
        } else {
            fit_and_predict(
                LogisticRegression::default()
                    .alpha(1.0 / c)
                    .max_iterations(10_000)
                    .gradient_tolerance(1e-8),
                &data,
            )
        };
        let (ours_accuracy, theirs_accuracy) = (
            metrics::accuracy(&ours, &data.test_y),
            metrics::accuracy(&theirs, &data.test_y),
        );
        eprintln!("{fit}: accuracy {ours_accuracy} (probe), {theirs_accuracy} (linfa-logistic)");
        assert_eq!(
            ours,
            indices(&reference["predict"]),
            "{fit}: probe vs scikit-learn"
        );
        assert_eq!(ours, theirs, "{fit}: probe vs linfa-logistic");
    }
}

#[test]
fn metrics_match_sklearn_and_scipy() {
    let g = golden();
    let m = &g["metrics"];
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() < 1e-9,
            "{what}: got {got}, reference {want}"
        );
    };
    for case in m["f1"].as_array().unwrap() {
        let k = case["num_classes"].as_u64().unwrap() as usize;
        let got = metrics::macro_f1(&indices(&case["pred"]), &indices(&case["gold"]), k);
        close(got, case["value"].as_f64().unwrap(), "macro_f1");
    }
    for case in m["correlation"].as_array().unwrap() {
        let (a, b) = (floats(&case["a"]), floats(&case["b"]));
        close(
            metrics::spearman(&a, &b),
            case["spearman"].as_f64().unwrap(),
            "spearman",
        );
        close(
            metrics::pearson(&a, &b),
            case["pearson"].as_f64().unwrap(),
            "pearson",
        );
    }
    for case in m["retrieval"].as_array().unwrap() {
        let (ranking, relevant) = (indices(&case["ranking"]), indices(&case["relevant"]));
        let k = case["k"].as_u64().unwrap() as usize;
        close(
            metrics::ndcg_at_k(&ranking, &relevant, k),
            case["value"].as_f64().unwrap(),
            "ndcg",
        );
        close(
            metrics::mrr_at_k(&ranking, &relevant, k),
            case["mrr"].as_f64().unwrap(),
            "mrr",
        );
        close(
            metrics::recall_at_k(&ranking, &relevant, k),
            case["recall"].as_f64().unwrap(),
            "recall",
        );
    }
}

fn labels_with_counts(counts: &[usize], seed: u64) -> Vec<usize> {
    let mut labels: Vec<usize> = counts
        .iter()
        .enumerate()
        .flat_map(|(c, &m)| std::iter::repeat_n(c, m))
        .collect();
    // Interleave deterministically so classes are not in blocks.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..labels.len()).rev() {
        labels.swap(i, rng.gen_range(0..=i));
    }
    labels
}

#[test]
fn stratified_folds_keep_class_proportions_and_repeat() {
    let counts = [53, 20, 7, 120];
    let labels = labels_with_counts(&counts, 1);
    let folds = probe::stratified_folds(&labels, 5, 42);
    assert_eq!(folds.len(), 5);
    let mut seen = vec![false; labels.len()];
    for fold in &folds {
        assert!(fold.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        for &i in fold {
            assert!(!seen[i], "example {i} in two folds");
            seen[i] = true;
        }
        for (c, &m) in counts.iter().enumerate() {
            let in_fold = fold.iter().filter(|&&i| labels[i] == c).count();
            assert!(
                in_fold == m / 5 || in_fold == m.div_ceil(5),
                "class {c}: {in_fold} of {m}"
            );
        }
        assert!(fold.len() == labels.len() / 5 || fold.len() == labels.len().div_ceil(5));
    }
    assert!(seen.iter().all(|&s| s), "every example is held out once");
    assert_eq!(folds, probe::stratified_folds(&labels, 5, 42));
    assert_ne!(folds, probe::stratified_folds(&labels, 5, 43));
}

/// Features shaped like a model's pooled embeddings: a per-column offset, two columns a
/// thousand times larger than the rest, one constant column.
fn llm_like(n: usize, d: usize, signal: &[usize], strength: f32, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let offsets: Vec<f32> = (0..d).map(|_| rng.gen_range(-20.0..20.0)).collect();
    Array2::from_shape_fn((n, d), |(i, j)| {
        let noise: f32 = rng.gen_range(-1.0..1.0) + rng.gen_range(-1.0..1.0);
        let class_mean = if j % 7 == signal[i] % 7 {
            strength
        } else {
            0.0
        };
        let scale = if j == 3 || j == 11 { 1000.0 } else { 1.0 };
        if j == 5 {
            2.5
        } else {
            (noise + class_mean) * scale + offsets[j]
        }
    })
}

#[test]
fn separable_labels_are_probed_perfectly() {
    let labels = labels_with_counts(&[60, 60, 60], 2);
    let features = llm_like(180, 24, &labels, 6.0, 3);
    let outcome = probe::evaluate(features.view(), &labels, 3, &ProbeConfig::default()).unwrap();
    assert!(outcome.accuracy >= 0.99, "accuracy {}", outcome.accuracy);
    assert!(outcome.macro_f1 >= 0.99);
    assert_eq!(outcome.folds.len(), 5);
    assert_eq!(
        outcome.folds.iter().map(|f| f.test_size).sum::<usize>(),
        180
    );
}

#[test]
fn random_labels_are_probed_at_chance() {
    let labels = labels_with_counts(&[200, 200, 200], 4);
    // The features carry a signal for a different, independent labelling.
    let other = labels_with_counts(&[200, 200, 200], 5);
    let features = llm_like(600, 40, &other, 2.0, 6);
    let outcome = probe::evaluate(features.view(), &labels, 3, &ProbeConfig::default()).unwrap();
    // Chance is 1/3; the standard deviation of 600 coin flips at 1/3 is 0.019.
    assert!(
        (outcome.accuracy - 1.0 / 3.0).abs() < 0.08,
        "accuracy {}",
        outcome.accuracy
    );
    let binary: Vec<usize> = labels.iter().map(|&l| usize::from(l == 0)).collect();
    let outcome = probe::evaluate(features.view(), &binary, 2, &ProbeConfig::default()).unwrap();
    // A binary probe can at best predict the majority class (2/3) here.
    assert!(outcome.accuracy < 0.72, "accuracy {}", outcome.accuracy);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let labels = labels_with_counts(&[70, 50, 40], 7);
    let features = llm_like(160, 30, &labels, 0.8, 8);
    let cfg = ProbeConfig::default();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| probe::evaluate(features.view(), &labels, 3, &cfg).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    assert!(
        one.accuracy > 0.5 && one.accuracy < 1.0,
        "a task in between: {}",
        one.accuracy
    );
}

fn error(
    features: ArrayView2<f32>,
    labels: &[usize],
    num_classes: usize,
    cfg: &ProbeConfig,
) -> String {
    probe::evaluate(features, labels, num_classes, cfg)
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let cfg = ProbeConfig::default();
    let features = Array2::<f32>::zeros((30, 4));
    let msg = error(features.view(), &[1; 30], 2, &cfg);
    assert!(msg.contains("label column has one class"), "{msg}");

    let mut labels = vec![0; 30];
    labels[..3].fill(1);
    let msg = error(features.view(), &labels, 2, &cfg);
    assert!(
        msg.contains("class 1 has 3 examples, fewer than the 5 folds"),
        "{msg}"
    );
    assert!(msg.contains("use at most 3 folds"), "{msg}");

    let msg = error(features.view(), &[0, 1, 0], 2, &cfg);
    assert!(msg.contains("30 rows but there are 3 labels"), "{msg}");

    let small = Array2::<f32>::zeros((4, 2));
    let msg = error(small.view(), &[0, 1, 0, 1], 2, &cfg);
    assert!(
        msg.contains("4 examples cannot be split into 5 folds"),
        "{msg}"
    );

    let mut bad = Array2::<f32>::zeros((30, 4));
    bad[[17, 2]] = f32::NAN;
    let labels: Vec<usize> = (0..30).map(|i| i % 2).collect();
    let msg = error(bad.view(), &labels, 2, &cfg);
    assert!(msg.contains("feature [17, 2] is NaN"), "{msg}");

    let msg = error(features.view(), &labels, 3, &cfg);
    assert!(msg.contains("class 2 has no examples"), "{msg}");

    let labels: Vec<usize> = (0..30).map(|i| usize::from(i < 7)).collect();
    let msg = error(
        features.view(),
        &labels,
        2,
        &ProbeConfig {
            inner_folds: 6,
            ..cfg.clone()
        },
    );
    assert!(msg.contains("fewer than the 6 inner folds"), "{msg}");

    for msg in [
        error(
            features.view(),
            &labels,
            2,
            &ProbeConfig {
                c_grid: vec![],
                ..cfg.clone()
            },
        ),
        error(
            features.view(),
            &labels,
            2,
            &ProbeConfig {
                folds: 1,
                ..cfg.clone()
            },
        ),
    ] {
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
}

/// Per-layer time at the benchmark's size (n = 2000, d = 576, 5 folds, 4 C values, 3
/// inner folds). Run with
/// `cargo test --release --test probe -- --ignored --nocapture bench`;
/// `PROBE_BENCH_CLASSES` sets the number of classes (default 4), `PROBE_BENCH_LAYERS` the
/// number of synthetic layers (default 3, each with a stronger class signal), and
/// `PROBE_BENCH_DUMP` a path prefix: layer `l` is written to `PREFIX.l` (f32 features,
/// then u32 labels, little-endian) for `scripts/reference/probe_reference.py --bench`.
#[test]
#[ignore]
fn bench_probe_layer() {
    let classes: usize = std::env::var("PROBE_BENCH_CLASSES").map_or(4, |v| v.parse().unwrap());
    let layers: usize = std::env::var("PROBE_BENCH_LAYERS").map_or(3, |v| v.parse().unwrap());
    let (n, d) = (2000, 576);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let labels: Vec<usize> = (0..n).map(|_| rng.gen_range(0..classes)).collect();
    let cfg = ProbeConfig::default();
    for layer in 0..layers {
        // Later "layers" carry more signal, as a model's middle layers do.
        let features = llm_like_dense(
            n,
            d,
            &labels,
            0.004 * (layer + 1) as f32,
            100 + layer as u64,
        );
        if let Ok(path) = std::env::var("PROBE_BENCH_DUMP") {
            let mut bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
            bytes.extend(labels.iter().flat_map(|&l| (l as u32).to_le_bytes()));
            std::fs::write(format!("{path}.{layer}"), bytes).unwrap();
        }
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let outcome = probe::evaluate(features.view(), &labels, classes, &cfg).unwrap();
        let chosen: Vec<f64> = outcome.folds.iter().map(|f| f.c).collect();
        eprintln!(
            "layer {layer}: {:.2} s wall, {:.2} s CPU, accuracy {:.3}, macro-F1 {:.3}, C {chosen:?}; {}",
            start.elapsed().as_secs_f64(),
            cpu_seconds() - cpu,
            outcome.accuracy,
            outcome.macro_f1,
            outcome.convergence
        );
    }
}

/// CPU time of this process (all threads), which a busy shared machine distorts less than
/// wall time; NaN where /proc is missing. /proc counts in USER_HZ, 100 on Linux.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |k: usize| fields.get(k).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// Pooled-embedding-like features: class means and noise that live mostly in low-rank
/// subspaces (so columns are strongly correlated and the fit is ill-conditioned, as with
/// real embeddings), plus per-column offsets and a few columns 500x the others.
fn llm_like_dense(n: usize, d: usize, labels: &[usize], strength: f32, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Sum of three uniforms: close enough to a normal for test data.
    let mut normal = move || -> f32 { (0..3).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() };
    let classes = labels.iter().max().unwrap() + 1;
    let gaussian = |rows: usize, cols: usize, normal: &mut dyn FnMut() -> f32| {
        Array2::from_shape_fn((rows, cols), |_| normal())
    };
    let means = gaussian(classes, 32, &mut normal).dot(&gaussian(32, d, &mut normal)) * strength;
    let shared = gaussian(n, 64, &mut normal).dot(&gaussian(64, d, &mut normal)) * 0.15;
    let offsets: Vec<f32> = (0..d).map(|_| 3.0 * normal()).collect();
    let scales: Vec<f32> = (0..d)
        .map(|j| {
            if j % 97 == 3 {
                500.0
            } else {
                1.5 + normal() / 3.0
            }
        })
        .collect();
    Array2::from_shape_fn((n, d), |(i, j)| {
        (means[[labels[i], j]] + shared[[i, j]] + 0.5 * normal()) * scales[j] + offsets[j]
    })
}
