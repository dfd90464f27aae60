//! Tasks: what to measure at every layer, described declaratively in TOML files.
//!
//! A task file names its kind, its data and how to read it; the kind decides how it
//! is scored (MTEB's split between what a task *is* and how a kind is *scored*).
//! Kinds: `classification` (a linear probe per layer), `retrieval` (cosine ranking),
//! `similarity` (cosine against human scores) and `generation` (the logit lens).
//! The format is documented in `docs/tasks.md`.

pub mod classification;
pub mod generation;
pub mod retrieval;
pub mod similarity;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::datasets::{DataSpec, Table};
use crate::embeddings::pool::Pool;
use crate::embeddings::session::Session;
use crate::stats::scores::Scored;

/// The shipped tasks, compiled in so `--task mr` works from any directory.
const SHIPPED: &[(&str, &str)] = &[
    ("austen", include_str!("../../tasks/austen.toml")),
    ("boolq", include_str!("../../tasks/boolq.toml")),
    (
        "boolq-retrieval",
        include_str!("../../tasks/boolq-retrieval.toml"),
    ),
    ("imdb", include_str!("../../tasks/imdb.toml")),
    ("lee-sts", include_str!("../../tasks/lee-sts.toml")),
    ("mr", include_str!("../../tasks/mr.toml")),
    ("sst2", include_str!("../../tasks/sst2.toml")),
    ("topics", include_str!("../../tasks/topics.toml")),
    ("tweets", include_str!("../../tasks/tweets.toml")),
];

/// The four kinds of task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Classification,
    Retrieval,
    Similarity,
    Generation,
}

impl Kind {
    /// Whether the task reads pooled embeddings (and so whether the paper predicts a
    /// peak at intermediate depth rather than at the end).
    pub fn is_embedding(self) -> bool {
        !matches!(self, Kind::Generation)
    }
}

impl fmt::Display for Kind {
    /// The kind as task files spell it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Kind::Classification => "classification",
            Kind::Retrieval => "retrieval",
            Kind::Similarity => "similarity",
            Kind::Generation => "generation",
        })
    }
}

/// A task file as written: every section optional, checked against the kind by
/// [`parse`]. Read as one flat table rather than as a serde enum tagged by `kind`,
/// because serde's tagged enums lose TOML's line numbers and name the wrong keys in
/// their messages; [`parse`] turns it into a [`TaskSpec`] in one match.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    name: String,
    kind: Kind,
    #[serde(default)]
    description: String,
    #[serde(default)]
    license: String,
    pool: Option<Pool>,
    center: Option<bool>,
    limit: Option<usize>,
    data: DataSpec,
    labels: Option<classification::LabelSpec>,
    probe: Option<classification::ProbeSpec>,
    retrieval: Option<retrieval::RetrievalSpec>,
    similarity: Option<similarity::SimilaritySpec>,
    generation: Option<generation::GenerationSpec>,
}

/// A task's definition, its sections checked against its kind.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub name: String,
    pub description: String,
    /// Licence of the data, recorded with every result.
    pub license: String,
    /// Examples used when `--limit` is not given (heavy tasks set a default).
    pub limit: Option<usize>,
    pub data: DataSpec,
    /// The kind and the sections it reads.
    pub body: Body,
}

/// A kind of task with its own sections. `pool` is the token pooling of embedding
/// tasks (default: `mean` for probes, `mean-skip-first` for cosine tasks, where the
/// first token's massive activation would otherwise dominate every mean); `center`
/// subtracts the per-layer mean over the task's texts before cosine similarity.
#[derive(Debug, Clone)]
pub enum Body {
    Classification {
        labels: classification::LabelSpec,
        probe: Option<classification::ProbeSpec>,
        pool: Option<Pool>,
    },
    Retrieval {
        retrieval: retrieval::RetrievalSpec,
        pool: Option<Pool>,
        center: Option<bool>,
    },
    Similarity {
        similarity: similarity::SimilaritySpec,
        pool: Option<Pool>,
        center: Option<bool>,
    },
    Generation(generation::GenerationSpec),
}

impl TaskSpec {
    /// This task's settings under `opts`, known without its data: what its results
    /// record.
    pub fn settings(&self, opts: &TaskOptions) -> Settings {
        let pool = |own: Option<Pool>, default| Some(opts.pool.or(own).unwrap_or(default));
        let center = |own: Option<bool>| Some(opts.center.or(own).unwrap_or(false));
        let (pool, center) = match &self.body {
            Body::Classification { pool: own, .. } => (pool(*own, Pool::Mean), None),
            Body::Retrieval {
                pool: p, center: c, ..
            }
            | Body::Similarity {
                pool: p, center: c, ..
            } => (pool(*p, Pool::MeanSkipFirst), center(*c)),
            Body::Generation(_) => (None, None),
        };
        Settings {
            limit: opts.limit.or(self.limit),
            seed: opts.seed,
            pool,
            center,
        }
    }

    /// The task's kind.
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Classification { .. } => Kind::Classification,
            Body::Retrieval { .. } => Kind::Retrieval,
            Body::Similarity { .. } => Kind::Similarity,
            Body::Generation(_) => Kind::Generation,
        }
    }
}

/// A task read from its file, its data loaded.
pub struct LoadedTask {
    pub spec: TaskSpec,
    /// The task file, or `<builtin>/<name>.toml`.
    pub origin: String,
    pub table: Table,
}

/// What a run asks of every task: the seed, and the command line's settings that
/// override the task files'.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskOptions {
    /// Examples per task (seeded subset); `None` uses the task's default or all.
    pub limit: Option<usize>,
    pub seed: u64,
    /// Pooling for every embedding task.
    pub pool: Option<Pool>,
    /// Centring for cosine tasks.
    pub center: Option<bool>,
    /// Cross-validation folds for probes.
    pub folds: Option<usize>,
}

/// One task's settings for a run: the command line's over the task file's over the
/// kind's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The example cap.
    pub limit: Option<usize>,
    pub seed: u64,
    /// The pooling, for embedding tasks.
    pub pool: Option<Pool>,
    /// Whether embeddings are centred, for cosine tasks.
    pub center: Option<bool>,
}

/// Names of the shipped tasks.
pub fn shipped_names() -> Vec<&'static str> {
    SHIPPED.iter().map(|(n, _)| *n).collect()
}

/// Parses and checks a task file's text. `origin` names it in messages.
///
/// ```
/// let spec = harness::tasks::parse(
///     r#"
///     name = "reviews"
///     kind = "classification"
///     description = "Product reviews: good (4-5 stars) or bad (1-2 stars)"
///     license = "my own data"
///     [data]
///     source = "reviews.csv"
///     [labels]
///     text = "review"
///     column = "stars"
///     threshold = 3.0
///     "#,
///     "reviews.toml",
/// )?;
/// assert_eq!(spec.kind().to_string(), "classification");
///
/// let typo = harness::tasks::parse("name = \"x\"\nkind = \"clasification\"", "x.toml");
/// assert!(typo.unwrap_err().to_string().contains("x.toml"));
/// # anyhow::Ok(())
/// ```
pub fn parse(text: &str, origin: &str) -> Result<TaskSpec> {
    let file: TaskFile = toml::from_str(text)
        .map_err(|e| anyhow!("{origin}: {}", e.to_string().trim().replace('\n', " ")))?;
    let kind = file.kind;
    // `{:?}` names the kind capitalised in these messages, as they always have.
    let stray = [
        ("labels", file.labels.is_some(), Kind::Classification),
        ("probe", file.probe.is_some(), Kind::Classification),
        ("retrieval", file.retrieval.is_some(), Kind::Retrieval),
        ("similarity", file.similarity.is_some(), Kind::Similarity),
        ("generation", file.generation.is_some(), Kind::Generation),
    ];
    let needs = |name: &str| anyhow!("{origin}: a {kind:?} task needs a [{name}] section");
    let body = match kind {
        Kind::Classification => Body::Classification {
            labels: file.labels.ok_or_else(|| needs("labels"))?,
            probe: file.probe,
            pool: file.pool,
        },
        Kind::Retrieval => Body::Retrieval {
            retrieval: file.retrieval.ok_or_else(|| needs("retrieval"))?,
            pool: file.pool,
            center: file.center,
        },
        Kind::Similarity => Body::Similarity {
            similarity: file.similarity.ok_or_else(|| needs("similarity"))?,
            pool: file.pool,
            center: file.center,
        },
        Kind::Generation => Body::Generation(file.generation.ok_or_else(|| needs("generation"))?),
    };
    for (name, present, owner) in stray {
        if present && owner != kind {
            bail!("{origin}: [{name}] does not apply to a {kind:?} task");
        }
    }
    if kind == Kind::Generation && (file.pool.is_some() || file.center.is_some()) {
        bail!("{origin}: `pool` and `center` do not apply to a generation task");
    }
    if file.name.trim().is_empty() {
        bail!("{origin}: `name` is empty");
    }
    if file.limit == Some(0) {
        bail!("{origin}: `limit = 0` leaves no examples to score; give at least 1");
    }
    Ok(TaskSpec {
        name: file.name,
        description: file.description,
        license: file.license,
        limit: file.limit,
        data: file.data,
        body,
    })
}

/// A shipped task's definition, without loading its data.
pub fn describe(name: &str) -> Result<TaskSpec> {
    match SHIPPED.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => parse(text, &format!("<builtin>/{name}.toml")),
        None => bail!("unknown task '{name}'"),
    }
}

/// Finds a task by shipped name or path to a TOML file, and loads its data.
pub fn load(name_or_path: &str) -> Result<LoadedTask> {
    let (spec, origin, base) =
        if let Some((_, text)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            let origin = format!("<builtin>/{name_or_path}.toml");
            (parse(text, &origin)?, origin, PathBuf::from("."))
        } else if name_or_path.ends_with(".toml") || Path::new(name_or_path).is_file() {
            let path = Path::new(name_or_path);
            let text = crate::datasets::read_text(path)?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (parse(&text, name_or_path)?, name_or_path.to_string(), base)
        } else {
            bail!(
                "unknown task '{name_or_path}' (known: {}; or give a path to a .toml task file)",
                shipped_names().join(", ")
            );
        };
    let table = spec
        .data
        .load(&base)
        .with_context(|| format!("task {}", spec.name))?;
    Ok(LoadedTask {
        spec,
        origin,
        table,
    })
}

impl LoadedTask {
    /// This task's settings under `opts`.
    pub fn settings(&self, opts: &TaskOptions) -> Settings {
        self.spec.settings(opts)
    }

    /// Every text this task feeds the model under `opts`, in order: the texts it
    /// embeds (a probe's before the classes too rare for its folds are dropped), or
    /// a generation task's documents or rendered prompts. What `analyze --task` reads.
    pub fn texts(&self, opts: &TaskOptions) -> Result<Vec<String>> {
        let settings = self.settings(opts);
        match &self.spec.body {
            Body::Classification { labels, .. } => {
                Ok(classification::labelled(self, labels, &settings)?.texts)
            }
            Body::Retrieval { retrieval, .. } => {
                Ok(retrieval::examples(self, retrieval, &settings)?.texts)
            }
            Body::Similarity { similarity, .. } => {
                Ok(similarity::examples(self, similarity, &settings)?.texts)
            }
            Body::Generation(generation) => generation::texts(self, generation, &settings),
        }
    }

    /// Resolves this task's settings and draws its examples, once for the run.
    pub fn prepare(&self, opts: &TaskOptions) -> Result<PreparedTask<'_>> {
        let settings = self.settings(opts);
        let examples = self
            .examples(opts, &settings)
            .with_context(|| format!("task {}", self.spec.name))?;
        Ok(PreparedTask {
            task: self,
            settings,
            examples,
        })
    }

    fn examples(&self, opts: &TaskOptions, settings: &Settings) -> Result<Examples<'_>> {
        Ok(match &self.spec.body {
            Body::Classification { labels, probe, .. } => Examples::Classification(
                classification::prepare(self, labels, probe.as_ref(), settings, opts.folds)?,
            ),
            Body::Retrieval { retrieval, .. } => {
                Examples::Retrieval(retrieval::examples(self, retrieval, settings)?)
            }
            Body::Similarity { similarity, .. } => {
                Examples::Similarity(similarity::examples(self, similarity, settings)?)
            }
            Body::Generation(generation) => {
                Examples::Generation(generation::examples(self, generation, settings)?)
            }
        })
    }
}

/// Each kind's examples, drawn from the table under the run's settings.
enum Examples<'t> {
    Classification(classification::Prepared),
    Retrieval(retrieval::Examples),
    Similarity(similarity::Examples),
    Generation(generation::Examples<'t>),
}

/// A task ready to score: its settings resolved and its examples drawn.
pub struct PreparedTask<'t> {
    pub task: &'t LoadedTask,
    pub settings: Settings,
    examples: Examples<'t>,
}

impl PreparedTask<'_> {
    /// The texts this task embeds and their pooling, so that several tasks can share
    /// one forward pass; `None` for generation.
    pub fn embedding_request(&self) -> Option<(&[String], Pool)> {
        let texts = match &self.examples {
            Examples::Classification(p) => &p.examples.texts,
            Examples::Retrieval(ex) => &ex.texts,
            Examples::Similarity(ex) => &ex.texts,
            Examples::Generation(_) => return None,
        };
        Some((texts, self.pool()))
    }

    /// Every text this task feeds the model, as [`LoadedTask::texts`] lists them.
    pub fn texts(&self) -> &[String] {
        match &self.examples {
            Examples::Classification(p) => &p.texts,
            Examples::Retrieval(ex) => &ex.texts,
            Examples::Similarity(ex) => &ex.texts,
            Examples::Generation(ex) => &ex.texts,
        }
    }

    /// Scores the task at every layer.
    pub fn run(&self, session: &mut Session) -> Result<Scored> {
        let result = match &self.examples {
            Examples::Classification(p) => classification::run(p, self.pool(), session),
            Examples::Retrieval(ex) => retrieval::run(ex, self.pool(), self.center(), session),
            Examples::Similarity(ex) => similarity::run(ex, self.pool(), self.center(), session),
            Examples::Generation(ex) => generation::run(self.task, ex, session),
        };
        result.with_context(|| format!("task {}", self.task.spec.name))
    }

    fn pool(&self) -> Pool {
        self.settings.pool.expect("embedding tasks have a pooling")
    }

    fn center(&self) -> bool {
        self.settings.center.expect("cosine tasks have a centring")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_task_parses() {
        for (name, text) in SHIPPED {
            let spec = parse(text, name).unwrap();
            assert_eq!(&spec.name, name);
        }
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let err = parse(
            "name = \"x\"\nkind = \"classification\"\nfoo = 1\n[data]\nsource = \"a.csv\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.toml") && err.contains("foo"), "{err}");
        let err = parse(
            "name = \"x\"\nkind = \"classification\"\n[data]\nsource = \"a.csv\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("[labels]"), "{err}");
        let err = parse("name = 3\nkind = \"retrieval\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("name") && err.contains("string"), "{err}");
        let err = parse("name = \"x\"\nkind = \"regression\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("regression"), "{err}");
    }
}
