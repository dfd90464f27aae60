//! Downloads from a Hugging Face hub into a cache laid out exactly like Python
//! `huggingface_hub`'s, so that both tools reuse each other's files.
//!
//! The cache of one repository looks like this:
//!
//! ```text
//! $HF_HUB_CACHE/models--org--name/
//!     blobs/<etag>                        file contents, named by the hub's etag
//!     snapshots/<commit>/<path>           relative symlink into blobs/ (a copy where
//!                                         symlinks are unavailable)
//!     refs/<revision>                     the commit hash the revision last resolved to
//! $HF_HUB_CACHE/.locks/models--org--name/<etag>.lock
//! ```
//!
//! A file's etag is the sha256 of its contents for LFS files and its git blob id
//! otherwise. Downloads go to `blobs/<etag>.incomplete` and are renamed into place
//! only after their length (and, for LFS files, their sha256) checks out; an
//! interrupted LFS download resumes with a range request.
//!
//! Settings come from the environment as in `huggingface_hub`: `HF_ENDPOINT`,
//! `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN` (or its token file) and `HF_HUB_OFFLINE`.
//! `tests/hub.rs` runs all of this against a loopback fake of the hub.
//!
//! # Why not the `hf-hub` crate
//!
//! `hf-hub` 1.0.0 (features `blocking`, `rustls-tls`) was evaluated as a
//! replacement and does not fit:
//!
//! - Its cache download (`download_file_to_cache_network`) writes the GET body
//!   to `<blob>.incomplete` without checking the status, the length or the sha256,
//!   and renames it into `blobs/` regardless; a later call trusts any existing blob.
//!   An error page or a corrupt transfer would become a permanent cached "model"
//!   (read from its source: the corrupt-download test here would get `Ok`).
//! - It never resumes: an interrupted multi-gigabyte download restarts from zero.
//! - It does not read `HF_HUB_OFFLINE` (only a per-call `local_files_only`), has no
//!   call for the dataset viewer's JSON API that `datasets::hf` uses, and lists
//!   files through the paginated `tree` API rather than one revision request.
//! - It pulls reqwest 0.13 next to our 0.12, tokio, `hf-xet` and aws-lc-sys:
//!   adding it grows `Cargo.lock` from 310 to 468 packages.
//!
//! An adapter making up for the first two points would be most of this module
//! again, on top of the dependency; so the client stays, kept to what is used.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::io::progress::Progress;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const MAX_REDIRECTS: usize = 10;
/// Files below this size finish before a progress bar would be readable.
const PROGRESS_MIN_BYTES: u64 = 10 << 20;
/// Everything but RFC 3986's unreserved characters, as Python's
/// `urllib.parse.quote(s, safe="")` encodes: what `huggingface_hub` does to a
/// revision so that it stays one URL segment, and safe for query values too.
pub(crate) const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The same for file paths, whose slashes stay (`safe="/"`).
const PATH: &AsciiSet = &COMPONENT.remove(b'/');

/// Set by the CLI's `--quiet`. A process-wide switch because downloads happen deep
/// inside model loading, whose callers pass no output options down.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Hides the progress bars of downloads from now on (the CLI's `--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A model repository on the hub at a given revision (branch, tag or commit hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    /// `org/name`, or a bare `name` for the hub's legacy un-namespaced repositories.
    pub repo_id: String,
    /// Branch, tag or commit hash; `main` by default.
    pub revision: String,
}

impl HubRepo {
    /// A model repository at `main`.
    pub fn model(repo_id: &str) -> Self {
        HubRepo {
            repo_id: repo_id.to_string(),
            revision: "main".to_string(),
        }
    }

    /// The same repository at another revision.
    pub fn at(&self, revision: &str) -> Self {
        HubRepo {
            revision: revision.to_string(),
            ..self.clone()
        }
    }

    /// Parses `org/name` or `org/name@revision`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let repo = HubRepo::model(id).at(revision);
        repo.validate()
            .with_context(|| format!("cannot parse hub repository {spec:?}"))?;
        Ok(repo)
    }

    /// Checks what goes into URLs and cache paths, since the fields are public and a
    /// revision such as `../x` would otherwise escape the cache directory.
    fn validate(&self) -> Result<()> {
        let parts: Vec<&str> = self.repo_id.split('/').collect();
        let part_ok = |p: &&str| {
            let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            edge(p.chars().next())
                && edge(p.chars().last())
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        ensure!(
            parts.len() <= 2
                && parts.iter().all(part_ok)
                && !self.repo_id.contains("--")
                && !self.repo_id.contains("..")
                && self.repo_id.len() <= 96,
            "invalid repository id {:?}: expected `org/name` made of letters, digits, `-`, `_` and `.`",
            self.repo_id
        );
        ensure!(
            is_relative_path(&self.revision),
            "invalid revision {:?}",
            self.revision
        );
        Ok(())
    }

    /// Quoted as `huggingface_hub` quotes them: the revision as one path segment
    /// (`refs/pr/1` becomes `refs%2Fpr%2F1`), the file path keeping its slashes.
    fn resolve_url(&self, endpoint: &str, path: &str) -> String {
        format!(
            "{endpoint}/{}/resolve/{}/{}",
            self.repo_id,
            utf8_percent_encode(&self.revision, COMPONENT),
            utf8_percent_encode(path, PATH)
        )
    }
}

/// Round-trips with [`HubRepo::parse`], which makes error messages copy-pasteable.
impl fmt::Display for HubRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repo_id, self.revision)
    }
}

/// A client for one hub endpoint and one local cache.
pub struct Hub {
    endpoint: Url,
    cache_dir: PathBuf,
    token: Option<String>,
    offline: bool,
    client: Client,
}

/// Written by hand so that the token never lands in logs.
impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.endpoint.as_str())
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .finish()
    }
}

impl Hub {
    /// Configures the hub the way `huggingface_hub` does: `HF_ENDPOINT`, `HF_HOME`
    /// (or `XDG_CACHE_HOME`), `HF_HUB_CACHE`, `HF_TOKEN` (else the token file that
    /// `huggingface-cli login` writes, `$HF_HOME/token` or `HF_TOKEN_PATH`) and
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Self> {
        let s = Settings::from_lookup(|name| std::env::var(name).ok())?;
        Ok(Hub::new(&s.endpoint, s.cache_dir, s.token)?.offline(s.offline))
    }

    /// A hub at `endpoint` (e.g. `https://huggingface.co`) caching into `cache_dir`
    /// (the equivalent of `HF_HUB_CACHE`), authenticating with `token` if given.
    pub fn new(
        endpoint: &str,
        cache_dir: impl Into<PathBuf>,
        token: Option<String>,
    ) -> Result<Self> {
        let endpoint = Url::parse(endpoint.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                anyhow!(
                    "invalid hub endpoint {endpoint:?}: expected an http(s) URL (see HF_ENDPOINT)"
                )
            })?;
        let client = Client::builder()
            .user_agent(concat!("harness/", env!("CARGO_PKG_VERSION")))
            // Redirects are followed by hand: the hub's own redirect carries the
            // metadata, and the token must not follow a redirect to the CDN.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            // For blocking clients this bounds the wait for headers and for each
            // read, not the whole transfer, so multi-gigabyte files still fit.
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Hub {
            endpoint,
            cache_dir: cache_dir.into(),
            token: token.filter(|t| !t.is_empty()),
            offline: false,
            client,
        })
    }

    /// With `offline` set, only the cache is used and nothing is sent over the
    /// network (what `HF_HUB_OFFLINE=1` selects).
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The hub cache directory (what `HF_HUB_CACHE` names).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    fn endpoint_str(&self) -> &str {
        self.endpoint.as_str().trim_end_matches('/')
    }

    /// Returns the snapshot path of `path` in `repo`, downloading it unless the
    /// cache already holds it for the commit the revision resolves to.
    ///
    /// Online, this costs one HEAD request when the file is cached (none when the
    /// revision is a commit hash). If the endpoint cannot be reached the cached copy
    /// for the last known commit of the revision is used, as `huggingface_hub` does.
    pub fn download(&self, repo: &HubRepo, path: &str) -> Result<PathBuf> {
        repo.validate()?;
        ensure!(
            is_relative_path(path),
            "invalid file path {path:?} in {repo}"
        );
        let cache = RepoCache::new(&self.cache_dir, repo);
        let what = format!("{path} in {repo}");
        if self.offline {
            return cache.cached_file(&repo.revision, path).ok_or_else(|| {
                anyhow!(
                    "{what} is not in the local cache {} and HF_HUB_OFFLINE=1 forbids downloading it",
                    cache.root.display()
                )
            });
        }
        if is_commit_hash(&repo.revision) {
            let snapshot = cache.snapshot_path(&repo.revision, path);
            if snapshot.exists() {
                return Ok(snapshot);
            }
        }
        let meta = match self.file_metadata(repo, path, &what) {
            Ok(meta) => meta,
            Err(err) if err.is::<Unreachable>() => {
                return cache.cached_file(&repo.revision, path).ok_or(err)
            }
            Err(err) => return Err(err),
        };
        cache.write_ref(&repo.revision, &meta.commit)?;
        let snapshot = cache.snapshot_path(&meta.commit, path);
        if snapshot.exists() {
            return Ok(snapshot);
        }
        let blob = cache.blobs().join(&meta.etag);
        // Held while linking too, as `huggingface_hub` does, so that two processes
        // never replace the same snapshot entry at once.
        let _lock = cache.lock(&self.cache_dir, &meta.etag)?;
        // Another process may have finished the same blob while we waited.
        if !blob.exists() {
            self.fetch_blob(&meta, &blob, &what)?;
        }
        link_snapshot(&blob, &snapshot, path)?;
        Ok(snapshot)
    }

    /// Lists the files of `repo` at its revision: the commit hash it resolves to and
    /// every file path in that commit.
    ///
    /// Offline, the listing is whatever the cached snapshot of the revision holds.
    pub fn list_files(&self, repo: &HubRepo) -> Result<(String, Vec<String>)> {
        repo.validate()?;
        if self.offline {
            return RepoCache::new(&self.cache_dir, repo).cached_listing(&repo.revision);
        }
        #[derive(Deserialize)]
        struct RepoInfo {
            sha: String,
            siblings: Vec<Sibling>,
        }
        #[derive(Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.endpoint_str(),
            repo.repo_id,
            utf8_percent_encode(&repo.revision, COMPONENT)
        );
        let info: RepoInfo = self.fetch_json(&url, &format!("repository {repo}"))?;
        ensure!(
            is_safe_component(&info.sha),
            "{url} returned an unusable commit hash {:?}",
            info.sha
        );
        Ok((
            info.sha,
            info.siblings.into_iter().map(|s| s.rfilename).collect(),
        ))
    }

    /// Downloads what loading a safetensors model needs and returns the snapshot
    /// directory holding it: `config.json`, `tokenizer.json`, `tokenizer_config.json`
    /// and `generation_config.json` when present, and the weights.
    ///
    /// With a `model.safetensors.index.json` only the shards it names are fetched,
    /// because some repositories also ship a consolidated copy of the same weights;
    /// otherwise every top-level `*.safetensors` file is. All files come from the
    /// one commit the revision resolved to, even if the branch moves meanwhile.
    pub fn download_model_dir(&self, repo: &HubRepo) -> Result<PathBuf> {
        let cache = RepoCache::new(&self.cache_dir, repo);
        let (commit, files) = match self.list_files(repo) {
            Ok(listing) => listing,
            Err(err) if err.is::<Unreachable>() => {
                cache.cached_listing(&repo.revision).map_err(|_| err)?
            }
            Err(err) => return Err(err),
        };
        cache.write_ref(&repo.revision, &commit)?;
        let has = |name: &str| files.iter().any(|f| f == name);
        for required in ["config.json", "tokenizer.json"] {
            ensure!(has(required), "{repo} has no {required}");
        }
        let pinned = repo.at(&commit);
        for name in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            if has(name) {
                self.download(&pinned, name)?;
            }
        }
        const INDEX: &str = "model.safetensors.index.json";
        let weights: Vec<String> = if has(INDEX) {
            let index = self.download(&pinned, INDEX)?;
            let shards = shards_of_index(&index)?;
            if let Some(missing) = shards.iter().find(|s| !has(s)) {
                bail!("{INDEX} of {repo} names {missing}, which the repository does not have");
            }
            shards
        } else {
            files
                .iter()
                .filter(|f| !f.contains('/') && f.ends_with(".safetensors"))
                .cloned()
                .collect()
        };
        ensure!(!weights.is_empty(), "{repo} has no .safetensors weights");
        for name in &weights {
            self.download(&pinned, name)?;
        }
        Ok(cache.snapshots().join(&commit))
    }

    /// GETs the absolute `url` and parses its JSON body, with the hub's
    /// authentication and error messages (the dataset viewer is such a service).
    /// The token goes to that URL's host, never to hosts it redirects to.
    pub fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T> {
        ensure!(!self.offline, "HF_HUB_OFFLINE=1 forbids fetching {url}");
        self.fetch_json(url, url)
    }

    fn fetch_json<T: DeserializeOwned>(&self, url: &str, what: &str) -> Result<T> {
        let body = self.get(url, what)?;
        serde_json::from_reader(body)
            .with_context(|| format!("{url} did not return the expected JSON"))
    }

    fn get(&self, url: &str, what: &str) -> Result<Response> {
        let url = Url::parse(url).with_context(|| format!("invalid URL {url:?}"))?;
        let resp = self.send(Method::GET, &url, &url, None, true, what)?;
        self.check_status(resp, what)
    }

    /// Sends a request and follows redirects by hand. Only relative redirects are
    /// followed unless `follow_absolute`: that is how the hub answers for renamed
    /// repositories, while an absolute redirect points at the CDN and its response
    /// carries the metadata (as `huggingface_hub` also reads it). The token is sent
    /// only while the URL stays on `trusted`'s origin.
    fn send(
        &self,
        method: Method,
        url: &Url,
        trusted: &Url,
        range_from: Option<u64>,
        follow_absolute: bool,
        what: &str,
    ) -> Result<Response> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client.request(method.clone(), url.clone());
            if let Some(token) = &self.token {
                if url.origin() == trusted.origin() {
                    req = req.bearer_auth(token);
                }
            }
            if let Some(from) = range_from {
                req = req.header(RANGE, format!("bytes={from}-"));
            }
            let resp = req.send().map_err(|e| request_error(e, &url, what))?;
            let location = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok());
            let Some(location) = location.filter(|_| resp.status().is_redirection()) else {
                return Ok(resp);
            };
            let relative = !location.starts_with("//") && Url::parse(location).is_err();
            if !relative && !follow_absolute {
                return Ok(resp);
            }
            url = url
                .join(location)
                .with_context(|| format!("{url} redirected to an invalid location {location:?}"))?;
        }
        bail!("too many redirects while fetching {what}")
    }

    /// Turns any non-success status into one line naming what was asked for and,
    /// where it helps, what to do about it.
    fn check_status(&self, resp: Response, what: &str) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let detail = hub_error_detail(resp);
        let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
        let code = status.as_u16();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let advice = if self.token.is_some() {
                    "the token in HF_TOKEN was refused; check that it can read this repository"
                } else {
                    "the repository may be private, gated or missing; set HF_TOKEN to a token that can read it"
                };
                bail!("access to {what} denied (HTTP {code}{detail}); {advice}")
            }
            StatusCode::NOT_FOUND => bail!("{what} not found (HTTP 404{detail})"),
            _ => bail!("fetching {what} failed (HTTP {code}{detail})"),
        }
    }

    fn file_metadata(&self, repo: &HubRepo, path: &str, what: &str) -> Result<FileMeta> {
        let url = Url::parse(&repo.resolve_url(self.endpoint_str(), path))
            .with_context(|| format!("cannot build the URL of {what}"))?;
        let resp = self.send(Method::HEAD, &url, &self.endpoint, None, false, what)?;
        // `send` stopped at the redirect to the CDN, if any: its Location is where
        // the contents are, and the redirect itself carries the metadata.
        let cdn = match header(resp.headers(), LOCATION.as_str()) {
            Some(location) if resp.status().is_redirection() => Some(resp.url().join(&location)?),
            _ => None,
        };
        let resp = if cdn.is_some() {
            resp
        } else {
            self.check_status(resp, what)?
        };
        let headers = resp.headers();
        let not_hub = || {
            anyhow!(
                "{url} answered without X-Repo-Commit and ETag headers; is HF_ENDPOINT ({}) a Hugging Face hub?",
                self.endpoint_str()
            )
        };
        let commit = header(headers, "x-repo-commit").ok_or_else(not_hub)?;
        let etag = header(headers, "x-linked-etag")
            .or_else(|| header(headers, ETAG.as_str()))
            .map(|e| normalize_etag(&e))
            .ok_or_else(not_hub)?;
        ensure!(
            is_safe_component(&commit) && is_safe_component(&etag),
            "{url} returned an unusable commit {commit:?} or etag {etag:?}"
        );
        let size = header(headers, "x-linked-size")
            .or_else(|| header(headers, CONTENT_LENGTH.as_str()))
            .and_then(|s| s.parse().ok());
        let download_url = cdn.unwrap_or_else(|| resp.url().clone());
        Ok(FileMeta {
            commit,
            etag,
            size,
            download_url,
        })
    }

    /// Downloads into `<blob>.incomplete` and renames only a verified file into
    /// place. A partial file is resumed only when the etag is a sha256, because the
    /// final hash then vouches for the bytes kept from an earlier attempt.
    fn fetch_blob(&self, meta: &FileMeta, blob: &Path, what: &str) -> Result<()> {
        let incomplete = blob.with_file_name(format!("{}.incomplete", meta.etag));
        let verifiable = is_sha256(&meta.etag);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&incomplete)
            .with_context(|| format!("cannot create {}", incomplete.display()))?;
        let mut have = file.metadata()?.len();
        if !(verifiable && meta.size.is_some_and(|size| have < size)) {
            have = 0;
        }
        let mut resp = loop {
            let range = (have > 0).then_some(have);
            let r = self.send(
                Method::GET,
                &meta.download_url,
                &self.endpoint,
                range,
                true,
                what,
            )?;
            // The partial file is unusable to the server; start from scratch (this
            // cannot repeat, as no range is sent then).
            if r.status() == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
                have = 0;
                continue;
            }
            let r = self.check_status(r, what)?;
            if r.status() != StatusCode::PARTIAL_CONTENT {
                // The server ignored the range and sends the whole file.
                have = 0;
            } else if range_start(r.headers()) != Some(have) {
                discard(&incomplete);
                bail!("the server answered a resumed download of {what} with the wrong range");
            }
            break r;
        };

        let mut hasher = verifiable.then(Sha256::new);
        file.set_len(have)?;
        if let Some(hasher) = &mut hasher {
            file.seek(SeekFrom::Start(0))?;
            io::copy(&mut (&file).take(have), hasher)?;
        }
        file.seek(SeekFrom::Start(have))?;
        let progress = progress_bar(meta.size, what);
        progress.inc(have >> 20);
        let mut received = have;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    progress.finish();
                    let total = meta.size.map(|s| format!(" of {s}")).unwrap_or_default();
                    let next = if verifiable {
                        "run again to resume"
                    } else {
                        discard(&incomplete);
                        "run again to retry"
                    };
                    bail!(
                        "download of {what} was interrupted after {received}{total} bytes ({}); {next}",
                        root_cause(&e)
                    );
                }
            };
            file.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", incomplete.display()))?;
            if let Some(hasher) = &mut hasher {
                hasher.update(&buf[..n]);
            }
            // Counted in whole MiB, the unit the bar shows.
            progress.inc(((received + n as u64) >> 20) - (received >> 20));
            received += n as u64;
        }
        progress.finish();

        if let Some(size) = meta.size {
            if received != size {
                if received > size || !verifiable {
                    discard(&incomplete);
                }
                bail!("download of {what} ended after {received} of {size} bytes; run again");
            }
        }
        if let Some(hasher) = hasher {
            let actual = format!("{:x}", hasher.finalize());
            if actual != meta.etag {
                discard(&incomplete);
                bail!(
                    "download of {what} is corrupt: sha256 {actual} instead of {}; run again",
                    meta.etag
                );
            }
        }
        // Flushed before the rename so that a crash cannot leave a complete-looking
        // blob with missing contents.
        file.sync_all()?;
        drop(file);
        fs::rename(&incomplete, blob)
            .with_context(|| format!("cannot move the download into {}", blob.display()))
    }
}

/// What a HEAD on `resolve/` tells about a file.
struct FileMeta {
    commit: String,
    etag: String,
    size: Option<u64>,
    download_url: Url,
}

/// A connection-level failure to reach a host: the one kind of error after which a
/// cached copy may stand in for the hub.
#[derive(Debug)]
struct Unreachable {
    origin: String,
    what: String,
    cause: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reach {} to fetch {} ({}); check HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only the local cache",
            self.origin, self.what, self.cause
        )
    }
}

impl std::error::Error for Unreachable {}

fn request_error(err: reqwest::Error, url: &Url, what: &str) -> anyhow::Error {
    if err.is_connect() || err.is_timeout() {
        anyhow::Error::new(Unreachable {
            origin: url.origin().ascii_serialization(),
            what: what.to_string(),
            cause: root_cause(&err),
        })
    } else {
        anyhow!("request for {what} to {url} failed: {}", root_cause(&err))
    }
}

/// The innermost error is the informative one ("Connection refused"); reqwest's
/// outer layers only repeat the URL.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut err = err;
    while let Some(source) = err.source() {
        err = source;
    }
    err.to_string()
}

/// The hub explains errors in `X-Error-Message` (HEAD has no body) or in a JSON
/// `{"error": ...}` body; either is folded into one line.
fn hub_error_detail(resp: Response) -> Option<String> {
    let from_header = header(resp.headers(), "x-error-message");
    let detail = from_header.or_else(|| {
        let mut body = Vec::new();
        resp.take(4096).read_to_end(&mut body).ok()?;
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        json.get("error")?.as_str().map(str::to_string)
    })?;
    let line: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(line.trim().to_string()).filter(|l| !l.is_empty())
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::to_string)
        .filter(|v| !v.is_empty())
}

/// Start offset of a `Content-Range: bytes <start>-<end>/<total>` header.
fn range_start(headers: &HeaderMap) -> Option<u64> {
    let value = header(headers, CONTENT_RANGE.as_str())?;
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Etags arrive quoted and possibly weak (`W/"…"`); the cache uses the bare value.
fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// A bar in MiB for files big enough to take a while, unless `--quiet` (see
/// [`set_quiet`]) or stderr is not a terminal.
fn progress_bar(size: Option<u64>, what: &str) -> Progress {
    match size.filter(|s| *s >= PROGRESS_MIN_BYTES) {
        Some(size) => {
            let bar = Progress::new(what, "MiB", QUIET.load(Ordering::Relaxed));
            bar.set_length(size >> 20);
            bar
        }
        None => Progress::hidden(),
    }
}

/// Best effort: a leftover that cannot be removed is still never trusted, because
/// it keeps its `.incomplete` name.
fn discard(path: &Path) {
    let _ = fs::remove_file(path);
}

fn shards_of_index(index: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text =
        fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let parsed: Index = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a safetensors index", index.display()))?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    for shard in &shards {
        ensure!(
            is_relative_path(shard),
            "{} names an invalid shard {shard:?}",
            index.display()
        );
    }
    Ok(shards)
}

/// One repository's folder in the hub cache.
struct RepoCache {
    root: PathBuf,
    folder: String,
}

impl RepoCache {
    fn new(cache_dir: &Path, repo: &HubRepo) -> Self {
        let folder = format!("models--{}", repo.repo_id.replace('/', "--"));
        RepoCache {
            root: cache_dir.join(&folder),
            folder,
        }
    }

    fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn snapshot_path(&self, commit: &str, path: &str) -> PathBuf {
        self.snapshots().join(commit).join(path)
    }

    /// The commit a revision stands for: itself if it is a hash, else the ref.
    fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let commit = fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        let commit = commit.trim().to_string();
        is_safe_component(&commit).then_some(commit)
    }

    fn cached_file(&self, revision: &str, path: &str) -> Option<PathBuf> {
        let snapshot = self.snapshot_path(&self.commit_of(revision)?, path);
        snapshot.exists().then_some(snapshot)
    }

    fn cached_listing(&self, revision: &str) -> Result<(String, Vec<String>)> {
        let dir = self
            .commit_of(revision)
            .map(|c| (self.snapshots().join(&c), c));
        let Some((dir, commit)) = dir.filter(|(dir, _)| dir.is_dir()) else {
            bail!(
                "revision {revision} has no snapshot in the local cache {}",
                self.root.display()
            );
        };
        let mut files = Vec::new();
        list_dir(&dir, "", &mut files)?;
        files.sort();
        Ok((commit, files))
    }

    /// Records what the revision resolved to, so offline runs can find it; a commit
    /// hash needs no ref, as in `huggingface_hub`.
    fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit || self.commit_of(revision).as_deref() == Some(commit) {
            return Ok(());
        }
        let path = self.root.join("refs").join(revision);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, commit).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Takes the same lock file as `huggingface_hub`, so that neither tool writes
    /// a blob another process is downloading; the OS drops it if we die.
    fn lock(&self, cache_dir: &Path, etag: &str) -> Result<File> {
        fs::create_dir_all(self.blobs())
            .with_context(|| format!("cannot create {}", self.blobs().display()))?;
        let dir = cache_dir.join(".locks").join(&self.folder);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{etag}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(file)
    }
}

fn list_dir(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        // `is_dir` follows symlinks, and snapshot entries are symlinks to blobs.
        if entry.path().is_dir() {
            list_dir(&entry.path(), &format!("{rel}/"), out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Points `snapshot` at `blob` with a relative symlink, as `huggingface_hub` does,
/// so the cache survives being moved; copies where symlinks are not available.
fn link_snapshot(blob: &Path, snapshot: &Path, path: &str) -> Result<()> {
    let parent = snapshot
        .parent()
        .ok_or_else(|| anyhow!("snapshot path {} has no parent", snapshot.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // A dangling link left by a deleted blob would make the new link fail.
    if fs::symlink_metadata(snapshot).is_ok() {
        fs::remove_file(snapshot)
            .with_context(|| format!("cannot replace {}", snapshot.display()))?;
    }
    let depth = path.split('/').count() + 1;
    let mut target = PathBuf::from("../".repeat(depth));
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    match symlink(&target, snapshot) {
        Ok(()) => Ok(()),
        // Copying only onto an empty spot: a copy onto a link would overwrite the blob.
        Err(_) if fs::symlink_metadata(snapshot).is_err() => fs::copy(blob, snapshot)
            .map(drop)
            .with_context(|| format!("cannot copy {} to {}", blob.display(), snapshot.display())),
        Err(e) => Err(e).with_context(|| format!("cannot link {}", snapshot.display())),
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Settings read from the environment, separated from `std::env` so they can be
/// tested without mutating the process environment.
struct Settings {
    endpoint: String,
    cache_dir: PathBuf,
    token: Option<String>,
    offline: bool,
}

impl Settings {
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let home = var("HOME")
            .or_else(|| var("USERPROFILE"))
            .map(PathBuf::from);
        let expand = |p: String| -> Result<PathBuf> {
            match p.strip_prefix('~') {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                    let home = home.clone().context("HOME is not set, cannot expand `~`")?;
                    Ok(home.join(rest.trim_start_matches('/')))
                }
                _ => Ok(PathBuf::from(p)),
            }
        };
        let hf_home = match var("HF_HOME") {
            Some(p) => expand(p)?,
            None => match var("XDG_CACHE_HOME") {
                Some(p) => expand(p)?,
                None => home
                    .clone()
                    .context("none of HF_HOME, XDG_CACHE_HOME or HOME is set")?
                    .join(".cache"),
            }
            .join("huggingface"),
        };
        let cache_dir = match var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
            Some(p) => expand(p)?,
            None => hf_home.join("hub"),
        };
        let token = match var("HF_TOKEN") {
            Some(token) => Some(token),
            None => {
                let path = match var("HF_TOKEN_PATH") {
                    Some(p) => expand(p)?,
                    None => hf_home.join("token"),
                };
                match fs::read_to_string(&path) {
                    Ok(token) => Some(token),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("cannot read the token file {}", path.display())
                        })
                    }
                }
            }
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
        });
        Ok(Settings {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            token: token
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            offline,
        })
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_commit_hash(s: &str) -> bool {
    is_hex(s, 40)
}

fn is_sha256(s: &str) -> bool {
    is_hex(s, 64)
}

/// A name that stays one directory entry when joined onto a cache path.
fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains(['/', '\\'])
        && !s.chars().any(char::is_control)
}

/// A `/`-separated path that stays inside the directory it is joined onto.
fn is_relative_path(s: &str) -> bool {
    !s.is_empty() && s.split('/').all(is_safe_component)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned()).unwrap()
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let s = settings(&[("HOME", "/home/u")]);
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(s.token, None);
        assert!(!s.offline);
        let s = settings(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(s.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    }

    #[test]
    fn environment_overrides() {
        let s = settings(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "~/hf"),
            ("HF_ENDPOINT", "http://mirror"),
            ("HF_TOKEN", " hf_abc\n"),
            ("HF_HUB_OFFLINE", "true"),
        ]);
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/hf/hub"));
        assert_eq!(s.endpoint, "http://mirror");
        assert_eq!(s.token.as_deref(), Some("hf_abc"));
        assert!(s.offline);
        let s = settings(&[
            ("HF_HOME", "/h"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "0"),
        ]);
        assert_eq!(s.cache_dir, PathBuf::from("/c"));
        assert!(!s.offline);
    }

    #[test]
    fn token_file_is_read_when_hf_token_is_unset() {
        let dir = std::env::temp_dir().join(format!("harness-hub-token-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("token"), "hf_from_file\n").unwrap();
        let home = dir.to_str().unwrap();
        assert_eq!(
            settings(&[("HF_HOME", home)]).token.as_deref(),
            Some("hf_from_file")
        );
        let s = settings(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")]);
        assert_eq!(s.token.as_deref(), Some("hf_env"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn quoting_matches_python() {
        let repo = HubRepo::model("org/name").at("refs/pr/1");
        assert_eq!(
            repo.resolve_url("http://hub", "a b/c@d~.json"),
            "http://hub/org/name/resolve/refs%2Fpr%2F1/a%20b/c%40d~.json"
        );
    }

    #[test]
    fn etags_lose_quotes_and_weakness() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
    }

    #[test]
    fn paths_cannot_escape() {
        assert!(is_relative_path("a/b.json"));
        for bad in ["", "/a", "a//b", "../a", "a/..", "a\\b"] {
            assert!(!is_relative_path(bad), "{bad}");
        }
    }
}
