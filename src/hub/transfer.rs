//! The HTTP side of the hub client: requests with the hub's redirects, token rules
//! and one-line errors, file metadata from `resolve/`, and blob downloads that are
//! verified before they enter the cache and resumed after an interruption.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{anyhow, bail, ensure, Context, Result};
use reqwest::blocking::Response;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{is_safe_component, is_sha256, Hub, HubRepo, QUIET};
use crate::io::progress::Progress;

const MAX_REDIRECTS: usize = 10;
/// Files below this size finish before a progress bar would be readable.
const PROGRESS_MIN_BYTES: u64 = 10 << 20;

impl Hub {
    pub(super) fn fetch_json<T: DeserializeOwned>(&self, url: &str, what: &str) -> Result<T> {
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

    pub(super) fn file_metadata(&self, repo: &HubRepo, path: &str, what: &str) -> Result<FileMeta> {
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
    pub(super) fn fetch_blob(&self, meta: &FileMeta, blob: &Path, what: &str) -> Result<()> {
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
pub(super) struct FileMeta {
    pub(super) commit: String,
    pub(super) etag: String,
    size: Option<u64>,
    download_url: Url,
}

/// A connection-level failure to reach a host: the one kind of error after which a
/// cached copy may stand in for the hub.
#[derive(Debug)]
pub(super) struct Unreachable {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_lose_quotes_and_weakness() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
    }
}
