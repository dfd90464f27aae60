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

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::commands::eval::{Env, EvalOptions};
use crate::datasets::{DataSpec, Table};
use crate::embeddings::pool::Pool;
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

/// The kind's name as task and result files write it.
impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.pad(match self {
            Kind::Classification => "classification",
            Kind::Retrieval => "retrieval",
            Kind::Similarity => "similarity",
            Kind::Generation => "generation",
        })
    }
}

impl Kind {
    /// Whether the task reads pooled embeddings (and so whether the paper predicts a
    /// peak at intermediate depth rather than at the end).
    pub fn is_embedding(self) -> bool {
        !matches!(self, Kind::Generation)
    }
}

/// A task file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub kind: Kind,
    #[serde(default)]
    pub description: String,
    /// Licence of the data, recorded with every result.
    #[serde(default)]
    pub license: String,
    /// Token pooling for embedding tasks (default: `mean` for probes,
    /// `mean-skip-first` for cosine tasks, where the first token's massive
    /// activation would otherwise dominate every mean).
    pub pool: Option<Pool>,
    /// Subtract the per-layer mean over the task's texts before cosine similarity.
    pub center: Option<bool>,
    /// Examples used when `--limit` is not given (heavy tasks set a default).
    pub limit: Option<usize>,
    pub data: DataSpec,
    pub labels: Option<classification::LabelSpec>,
    pub probe: Option<classification::ProbeSpec>,
    pub retrieval: Option<retrieval::RetrievalSpec>,
    pub similarity: Option<similarity::SimilaritySpec>,
    pub generation: Option<generation::GenerationSpec>,
}

/// A task read from its file, its data loaded.
pub struct LoadedTask {
    pub spec: TaskSpec,
    /// The task file, or `<builtin>/<name>.toml`.
    pub origin: String,
    pub table: Table,
}

/// Names of the shipped tasks.
pub fn shipped_names() -> Vec<&'static str> {
    SHIPPED.iter().map(|(n, _)| *n).collect()
}

/// Parses and checks a task file's text. `origin` names it in messages.
pub fn parse(text: &str, origin: &str) -> Result<TaskSpec> {
    let spec: TaskSpec = toml::from_str(text)
        .map_err(|e| anyhow!("{origin}: {}", e.to_string().trim().replace('\n', " ")))?;
    let section = |present: bool, name: &str| -> Result<()> {
        if !present {
            bail!("{origin}: a {:?} task needs a [{name}] section", spec.kind);
        }
        Ok(())
    };
    match spec.kind {
        Kind::Classification => section(spec.labels.is_some(), "labels")?,
        Kind::Retrieval => section(spec.retrieval.is_some(), "retrieval")?,
        Kind::Similarity => section(spec.similarity.is_some(), "similarity")?,
        Kind::Generation => section(spec.generation.is_some(), "generation")?,
    }
    let stray = [
        ("labels", spec.labels.is_some(), Kind::Classification),
        ("probe", spec.probe.is_some(), Kind::Classification),
        ("retrieval", spec.retrieval.is_some(), Kind::Retrieval),
        ("similarity", spec.similarity.is_some(), Kind::Similarity),
        ("generation", spec.generation.is_some(), Kind::Generation),
    ];
    for (name, present, kind) in stray {
        if present && kind != spec.kind {
            bail!(
                "{origin}: [{name}] does not apply to a {:?} task",
                spec.kind
            );
        }
    }
    if spec.kind == Kind::Generation && (spec.pool.is_some() || spec.center.is_some()) {
        bail!("{origin}: `pool` and `center` do not apply to a generation task");
    }
    if spec.name.trim().is_empty() {
        bail!("{origin}: `name` is empty");
    }
    if spec.limit == Some(0) {
        bail!("{origin}: `limit = 0` leaves no examples to score; give at least 1");
    }
    Ok(spec)
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
    /// Scores the task at every layer.
    pub fn run(&self, env: &mut Env) -> Result<Scored> {
        let result = match self.spec.kind {
            Kind::Classification => classification::run(self, env),
            Kind::Retrieval => retrieval::run(self, env),
            Kind::Similarity => similarity::run(self, env),
            Kind::Generation => generation::run(self, env),
        };
        result.with_context(|| format!("task {}", self.spec.name))
    }

    /// The pooling this task uses, given a command-line override.
    pub fn pool(&self, cli: Option<Pool>) -> Pool {
        cli.or(self.spec.pool).unwrap_or(match self.spec.kind {
            Kind::Classification => Pool::Mean,
            _ => Pool::MeanSkipFirst,
        })
    }

    /// Whether scores compare embeddings by cosine (where centring applies).
    pub fn is_cosine(&self) -> bool {
        matches!(self.spec.kind, Kind::Retrieval | Kind::Similarity)
    }

    /// Whether cosine tasks centre embeddings, given a command-line override.
    pub fn center(&self, cli: Option<bool>) -> bool {
        cli.or(self.spec.center).unwrap_or(false)
    }

    /// The texts this task embeds and their pooling, so that several tasks can share
    /// one forward pass.
    pub fn embedding_requests(&self, opts: &EvalOptions) -> Result<Vec<(Vec<String>, Pool)>> {
        let texts = match self.spec.kind {
            Kind::Classification => classification::examples(self, opts)?.0.texts,
            Kind::Retrieval => retrieval::examples(self, opts)?.texts(),
            Kind::Similarity => similarity::examples(self, opts)?.texts,
            Kind::Generation => return Ok(Vec::new()),
        };
        Ok(vec![(texts, self.pool(opts.pool))])
    }

    /// Every text this task feeds the model, in order: the texts it embeds, or a
    /// generation task's documents or rendered prompts.
    pub fn texts(&self, opts: &EvalOptions) -> Result<Vec<String>> {
        match self.spec.kind {
            Kind::Generation => generation::texts(self, opts),
            Kind::Classification => classification::texts(self, opts),
            _ => Ok(self
                .embedding_requests(opts)?
                .into_iter()
                .flat_map(|(texts, _)| texts)
                .collect()),
        }
    }

    /// The example cap: the command line's, else the task's default.
    pub fn limit(&self, cli: Option<usize>) -> Option<usize> {
        cli.or(self.spec.limit)
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
