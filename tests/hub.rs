//! Tests of the hub client against an in-process fake of the Hugging Face hub: a
//! loopback HTTP/1.1 server that answers `resolve/` like the hub does (relative
//! redirects for renamed repos, an absolute redirect to a "CDN" on a second port for
//! LFS files, X-Repo-Commit / ETag / X-Linked-Etag headers), serves the files API,
//! and can be told to break the next CDN transfer.
//!
//! Longer than most files because the fake hub (about 450 lines) and the tests that
//! drive it share its state and helpers; split, each half would only make sense
//! beside the other.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harness::hub::{Hub, HubRepo};
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_token";
const MODEL_BYTES: usize = 200_000;

#[derive(Clone)]
struct FakeFile {
    body: Vec<u8>,
    lfs: bool,
}

impl FakeFile {
    fn text(body: &str) -> Self {
        FakeFile {
            body: body.as_bytes().to_vec(),
            lfs: false,
        }
    }

    fn lfs(body: Vec<u8>) -> Self {
        FakeFile { body, lfs: true }
    }

    /// LFS files are named by their sha256 like on the hub; other files by a
    /// 40-hex stand-in for the git blob id.
    fn etag(&self) -> String {
        let sha = hex(&Sha256::digest(&self.body));
        if self.lfs {
            sha
        } else {
            sha[..40].to_string()
        }
    }
}

struct FakeRepo {
    id: &'static str,
    commit: &'static str,
    private: bool,
    files: BTreeMap<String, FakeFile>,
}

#[derive(Clone, Debug)]
struct Logged {
    on_cdn: bool,
    method: String,
    path: String,
    auth: Option<String>,
    range: Option<String>,
    body_bytes: usize,
}

/// One-shot faults for the next CDN transfer.
#[derive(Default)]
struct Faults {
    /// Send only this many body bytes, then close the connection.
    truncate_after: Option<usize>,
    /// Flip a byte in the middle of the body.
    corrupt: bool,
    /// Answer a range request with the whole file.
    ignore_range: bool,
}

struct State {
    repos: Vec<FakeRepo>,
    log: Vec<Logged>,
    faults: Faults,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    truncate_after: Option<usize>,
}

impl Reply {
    fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            truncate_after: None,
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

/// The fake hub (and its CDN) plus a private cache directory; both go away on drop.
struct FakeHub {
    hub: SocketAddr,
    cdn: SocketAddr,
    cache: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    fn start(test: &str) -> Self {
        let hub_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let hub = hub_listener.local_addr().unwrap();
        let cdn = cdn_listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            repos: fake_repos(),
            log: Vec::new(),
            faults: Faults::default(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || serve(hub_listener, cdn_listener, cdn, &state, &stop))
        };
        let cache =
            std::env::temp_dir().join(format!("harness-hub-test-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&cache);
        FakeHub {
            hub,
            cdn,
            cache,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn client(&self, token: Option<&str>) -> Hub {
        Hub::new(
            &format!("http://{}", self.hub),
            &self.cache,
            token.map(str::to_string),
        )
        .unwrap()
    }

    fn repo_dir(&self, folder: &str) -> PathBuf {
        self.cache.join(folder)
    }

    fn file(&self, repo: &str, path: &str) -> FakeFile {
        let state = self.state.lock().unwrap();
        let repo = state.repos.iter().find(|r| r.id == repo).unwrap();
        repo.files[path].clone()
    }

    fn take_log(&self) -> Vec<Logged> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }

    fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = fs::remove_dir_all(&self.cache);
    }
}

fn model_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + seed as u64) as u8)
        .collect()
}

fn fake_repos() -> Vec<FakeRepo> {
    let files = |entries: Vec<(&str, FakeFile)>| {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>()
    };
    let index = r#"{"metadata": {}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
        "c.weight": "model-00002-of-00002.safetensors"}}"#;
    vec![
        FakeRepo {
            id: "org/tiny",
            commit: COMMIT,
            private: false,
            files: files(vec![
                ("config.json", FakeFile::text(r#"{"model_type": "llama"}"#)),
                ("tokenizer.json", FakeFile::text(r#"{"version": "1.0"}"#)),
                ("tokenizer_config.json", FakeFile::text("{}")),
                ("README.md", FakeFile::text("# tiny")),
                ("nested/dir/info.txt", FakeFile::text("nested")),
                (
                    "model.safetensors",
                    FakeFile::lfs(model_bytes(MODEL_BYTES, 1)),
                ),
                ("sub/extra.safetensors", FakeFile::lfs(model_bytes(100, 2))),
            ]),
        },
        FakeRepo {
            id: "org/sharded",
            commit: COMMIT,
            private: false,
            files: files(vec![
                ("config.json", FakeFile::text("{}")),
                ("tokenizer.json", FakeFile::text("{}")),
                ("generation_config.json", FakeFile::text("{}")),
                ("model.safetensors.index.json", FakeFile::text(index)),
                (
                    "model-00001-of-00002.safetensors",
                    FakeFile::lfs(model_bytes(1000, 3)),
                ),
                (
                    "model-00002-of-00002.safetensors",
                    FakeFile::lfs(model_bytes(1000, 4)),
                ),
                (
                    "consolidated.safetensors",
                    FakeFile::lfs(model_bytes(2000, 5)),
                ),
            ]),
        },
        FakeRepo {
            id: "org/tiny-qwen2",
            commit: COMMIT,
            private: false,
            files: files(
                ["config.json", "tokenizer.json", "tokenizer_config.json"]
                    .into_iter()
                    .map(|f| (f, FakeFile::text(&fs::read_to_string(fixture(f)).unwrap())))
                    .chain([(
                        "model.safetensors",
                        FakeFile::lfs(fs::read(fixture("model.safetensors")).unwrap()),
                    )])
                    .collect(),
            ),
        },
        FakeRepo {
            id: "org/private",
            commit: COMMIT,
            private: true,
            files: files(vec![("config.json", FakeFile::text("{}"))]),
        },
    ]
}

/// Accepts on both ports until told to stop, and in any case for at most 30 s so
/// that a hung test cannot leave a server behind.
fn serve(
    hub: TcpListener,
    cdn: TcpListener,
    cdn_addr: SocketAddr,
    state: &Mutex<State>,
    stop: &AtomicBool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    hub.set_nonblocking(true).unwrap();
    cdn.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let mut idle = true;
        for (listener, on_cdn) in [(&hub, false), (&cdn, true)] {
            if let Ok((stream, _)) = listener.accept() {
                idle = false;
                handle(stream, on_cdn, cdn_addr, state);
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// One request per connection (`Connection: close`), which keeps the server a
/// simple loop.
fn handle(stream: TcpStream, on_cdn: bool, cdn_addr: SocketAddr, state: &Mutex<State>) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = match (parts.next(), parts.next()) {
        (Some(m), Some(p)) => (m.to_string(), p.to_string()),
        _ => return,
    };
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut logged = Logged {
        on_cdn,
        method,
        path,
        auth: headers.get("authorization").cloned(),
        range: headers.get("range").cloned(),
        body_bytes: 0,
    };
    let reply = {
        let mut state = state.lock().unwrap();
        if on_cdn {
            cdn_reply(&mut state, &logged)
        } else {
            hub_reply(&state, &logged, cdn_addr)
        }
    };
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    let sent = match (logged.method.as_str(), reply.truncate_after) {
        ("HEAD", _) => 0,
        (_, Some(n)) => n.min(reply.body.len()),
        (_, None) => reply.body.len(),
    };
    logged.body_bytes = sent;
    // Logged before answering, so the client cannot see the response (and the
    // test inspect the log) before the request is recorded.
    state.lock().unwrap().log.push(logged);
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&reply.body[..sent]);
    let _ = out.flush();
}

fn cdn_reply(state: &mut State, req: &Logged) -> Reply {
    let sha = req.path.trim_start_matches("/cdn/");
    let file = state
        .repos
        .iter()
        .flat_map(|r| r.files.values())
        .find(|f| f.lfs && f.etag() == sha)
        .cloned();
    let Some(file) = file else {
        return Reply::new(404);
    };
    let faults = std::mem::take(&mut state.faults);
    let mut body = file.body;
    if faults.corrupt {
        let mid = body.len() / 2;
        body[mid] ^= 0xff;
    }
    let total = body.len();
    let start = req
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|_| !faults.ignore_range);
    let mut reply = match start {
        Some(start) if start >= total => return Reply::new(416),
        Some(start) => Reply::new(206)
            .header(
                "Content-Range",
                format!("bytes {start}-{}/{total}", total - 1),
            )
            .body(body[start..].to_vec()),
        None => Reply::new(200).body(body),
    };
    reply.truncate_after = faults.truncate_after;
    reply
}

fn hub_reply(state: &State, req: &Logged, cdn: SocketAddr) -> Reply {
    let authorized =
        |repo: &FakeRepo| !repo.private || req.auth.as_deref() == Some(&format!("Bearer {TOKEN}"));
    let known_revision =
        |repo: &FakeRepo, rev: &str| matches!(rev, "main" | "refs/pr/1") || rev == repo.commit;
    let find = |id: &str| state.repos.iter().find(|r| r.id == id);
    let segments: Vec<String> = req.path.split('/').skip(1).map(percent_decode).collect();

    if segments.first().map(String::as_str) == Some("api") {
        // /api/models/{org}/{name}/revision/{rev}
        let json_error = |status, msg: &str| {
            Reply::new(status).body(format!(r#"{{"error": "{msg}"}}"#).into_bytes())
        };
        let [_, models, org, name, _, rev] = &segments[..] else {
            return json_error(404, "Not found");
        };
        let Some(repo) = find(&format!("{org}/{name}")).filter(|_| models == "models") else {
            return json_error(404, "Repository not found");
        };
        if !authorized(repo) {
            return json_error(401, "Invalid credentials in Authorization header");
        }
        if !known_revision(repo, rev) {
            return json_error(404, "Invalid rev id");
        }
        let siblings: Vec<_> = repo
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "sha": repo.commit, "siblings": siblings });
        return Reply::new(200).body(body.to_string().into_bytes());
    }

    // /{org}/{name}/resolve/{rev}/{path...}
    let Some(at) = segments.iter().position(|s| s == "resolve") else {
        return Reply::new(404);
    };
    let id = segments[..at].join("/");
    let (Some(rev), true) = (segments.get(at + 1), segments.len() > at + 2) else {
        return Reply::new(404);
    };
    let path = segments[at + 2..].join("/");
    if id == "old-org/tiny" {
        // The hub answers a renamed repository with a relative redirect.
        let tail = req.path.split("/resolve/").nth(1).unwrap();
        return Reply::new(307).header("Location", format!("/org/tiny/resolve/{tail}"));
    }
    let error = |status, code: &str, msg: &str| {
        Reply::new(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", msg)
    };
    let Some(repo) = find(&id) else {
        return error(404, "RepoNotFound", "Repository not found");
    };
    if !authorized(repo) {
        return error(
            401,
            "GatedRepo",
            "Access to this repository is restricted. You must be authenticated to access it.",
        );
    }
    if !known_revision(repo, rev) {
        return error(404, "RevisionNotFound", "Invalid rev id");
    }
    let Some(file) = repo.files.get(&path) else {
        return error(404, "EntryNotFound", "Entry not found");
    };
    let etag = file.etag();
    if file.lfs {
        Reply::new(302)
            .header("Location", format!("http://{cdn}/cdn/{etag}"))
            .header("X-Repo-Commit", repo.commit)
            .header("X-Linked-Etag", format!("\"{etag}\""))
            .header("X-Linked-Size", file.body.len().to_string())
            // The redirect's own etag, which must not be mistaken for the file's.
            .header("ETag", "W/\"redirect-etag\"")
    } else {
        Reply::new(200)
            .header("X-Repo-Commit", repo.commit)
            .header("ETag", format!("\"{etag}\""))
            .body(file.body.clone())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file of the tiny Qwen2 test model, served as `org/tiny-qwen2`.
fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-qwen2")
        .join(file)
}

fn tiny() -> HubRepo {
    HubRepo::model("org/tiny")
}

fn err_text(result: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", result.expect_err("expected an error"))
}

fn incomplete_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with(".incomplete"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn first_download_lays_out_the_cache_like_huggingface_hub() {
    let fake = FakeHub::start("layout");
    let hub = fake.client(None);
    let root = fake.repo_dir("models--org--tiny");

    let config = hub.download(&tiny(), "config.json").unwrap();
    let oid = fake.file("org/tiny", "config.json").etag();
    assert_eq!(
        config,
        root.join("snapshots").join(COMMIT).join("config.json")
    );
    assert_eq!(
        fs::read_link(&config).unwrap(),
        PathBuf::from(format!("../../blobs/{oid}"))
    );
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        r#"{"model_type": "llama"}"#
    );
    assert!(root.join("blobs").join(&oid).is_file());
    assert_eq!(fs::read_to_string(root.join("refs/main")).unwrap(), COMMIT);

    let model = hub.download(&tiny(), "model.safetensors").unwrap();
    let expected = fake.file("org/tiny", "model.safetensors");
    let sha = expected.etag();
    assert_eq!(
        fs::read_link(&model).unwrap(),
        PathBuf::from(format!("../../blobs/{sha}")),
        "LFS blobs are named by X-Linked-Etag, not by the redirect's ETag"
    );
    assert_eq!(fs::read(&model).unwrap(), expected.body);

    let nested = hub.download(&tiny(), "nested/dir/info.txt").unwrap();
    let oid = fake.file("org/tiny", "nested/dir/info.txt").etag();
    assert_eq!(
        fs::read_link(&nested).unwrap(),
        PathBuf::from(format!("../../../../blobs/{oid}"))
    );
    assert_eq!(fs::read_to_string(&nested).unwrap(), "nested");
    assert!(incomplete_files(&root.join("blobs")).is_empty());

    let log = fake.take_log();
    let cdn_gets: Vec<_> = log.iter().filter(|r| r.on_cdn).collect();
    assert_eq!(
        cdn_gets.len(),
        1,
        "the LFS file comes from the CDN: {log:?}"
    );
    assert_eq!(cdn_gets[0].body_bytes, MODEL_BYTES);
}

#[test]
fn second_download_transfers_no_body() {
    let fake = FakeHub::start("second");
    let hub = fake.client(None);
    let first = [
        hub.download(&tiny(), "config.json").unwrap(),
        hub.download(&tiny(), "model.safetensors").unwrap(),
    ];
    fake.take_log();

    let second = [
        hub.download(&tiny(), "config.json").unwrap(),
        hub.download(&tiny(), "model.safetensors").unwrap(),
    ];
    assert_eq!(first, second);
    let log = fake.take_log();
    assert!(
        log.iter()
            .all(|r| r.method == "HEAD" && !r.on_cdn && r.body_bytes == 0),
        "only metadata requests are allowed: {log:?}"
    );

    // A commit hash cannot move, so a cached file needs no request at all.
    let pinned = tiny().at(COMMIT);
    assert_eq!(hub.download(&pinned, "config.json").unwrap(), first[0]);
    assert!(fake.take_log().is_empty());
}

#[test]
fn truncated_download_leaves_no_complete_file_and_is_resumed() {
    let fake = FakeHub::start("truncated");
    let hub = fake.client(None);
    let blobs = fake.repo_dir("models--org--tiny").join("blobs");
    let expected = fake.file("org/tiny", "model.safetensors");
    let sha = expected.etag();

    fake.set_faults(Faults {
        truncate_after: Some(50_000),
        ..Faults::default()
    });
    let err = err_text(hub.download(&tiny(), "model.safetensors"));
    assert!(
        err.contains("interrupted") && err.contains("model.safetensors"),
        "{err}"
    );
    assert!(!blobs.join(&sha).exists());
    assert!(!fake
        .repo_dir("models--org--tiny")
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());
    let partial = blobs.join(format!("{sha}.incomplete"));
    assert_eq!(fs::metadata(&partial).unwrap().len(), 50_000);

    fake.take_log();
    let model = hub.download(&tiny(), "model.safetensors").unwrap();
    assert_eq!(fs::read(&model).unwrap(), expected.body);
    assert!(!partial.exists());
    let cdn: Vec<_> = fake.take_log().into_iter().filter(|r| r.on_cdn).collect();
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].range.as_deref(), Some("bytes=50000-"));
    assert_eq!(cdn[0].body_bytes, MODEL_BYTES - 50_000);
}

#[test]
fn corrupt_download_fails_its_sha256_and_a_retry_succeeds() {
    let fake = FakeHub::start("corrupt");
    let hub = fake.client(None);
    let root = fake.repo_dir("models--org--tiny");
    let expected = fake.file("org/tiny", "model.safetensors");

    fake.set_faults(Faults {
        corrupt: true,
        ..Faults::default()
    });
    let err = err_text(hub.download(&tiny(), "model.safetensors"));
    assert!(err.contains("sha256"), "{err}");
    assert!(!root.join("blobs").join(expected.etag()).exists());
    assert!(incomplete_files(&root.join("blobs")).is_empty());
    assert!(!root
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());

    let model = hub.download(&tiny(), "model.safetensors").unwrap();
    assert_eq!(fs::read(&model).unwrap(), expected.body);
}

#[test]
fn leftover_incomplete_files_are_never_trusted() {
    let fake = FakeHub::start("leftover");
    let hub = fake.client(None);
    let blobs = fake.repo_dir("models--org--tiny").join("blobs");
    fs::create_dir_all(&blobs).unwrap();

    // Without a sha256 to check them, partial bytes are thrown away.
    let config = fake.file("org/tiny", "config.json");
    fs::write(
        blobs.join(format!("{}.incomplete", config.etag())),
        "garbage",
    )
    .unwrap();
    let path = hub.download(&tiny(), "config.json").unwrap();
    assert_eq!(fs::read(path).unwrap(), config.body);
    assert!(fake.take_log().iter().all(|r| r.range.is_none()));

    // A wrong prefix is resumed, caught by the sha256, and never becomes a blob.
    let model = fake.file("org/tiny", "model.safetensors");
    let partial = blobs.join(format!("{}.incomplete", model.etag()));
    fs::write(&partial, vec![0u8; 1000]).unwrap();
    let err = err_text(hub.download(&tiny(), "model.safetensors"));
    assert!(err.contains("sha256"), "{err}");
    assert!(!blobs.join(model.etag()).exists() && !partial.exists());

    // A server that ignores the range sends the whole file, which replaces the part.
    fs::write(&partial, &model.body[..1000]).unwrap();
    fake.set_faults(Faults {
        ignore_range: true,
        ..Faults::default()
    });
    let path = hub.download(&tiny(), "model.safetensors").unwrap();
    assert_eq!(fs::read(path).unwrap(), model.body);

    // A part as long as the file is discarded rather than resumed past its end.
    let other = HubRepo::model("org/sharded");
    let shard = fake.file("org/sharded", "model-00001-of-00002.safetensors");
    let sharded_blobs = fake.repo_dir("models--org--sharded").join("blobs");
    fs::create_dir_all(&sharded_blobs).unwrap();
    fs::write(
        sharded_blobs.join(format!("{}.incomplete", shard.etag())),
        vec![7u8; shard.body.len()],
    )
    .unwrap();
    fake.take_log();
    let path = hub
        .download(&other, "model-00001-of-00002.safetensors")
        .unwrap();
    assert_eq!(fs::read(path).unwrap(), shard.body);
    assert!(fake.take_log().iter().all(|r| r.range.is_none()));
}

#[test]
fn not_found_errors_name_what_is_missing() {
    let fake = FakeHub::start("notfound");
    let hub = fake.client(None);

    let err = err_text(hub.download(&tiny(), "missing.json"));
    assert!(
        err.contains("missing.json in org/tiny@main not found"),
        "{err}"
    );
    assert!(
        err.contains("404") && err.contains("Entry not found"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);

    let err = err_text(hub.download(&HubRepo::model("org/nope"), "config.json"));
    assert!(
        err.contains("org/nope@main") && err.contains("Repository not found"),
        "{err}"
    );

    let err = err_text(hub.download(&tiny().at("nobranch"), "config.json"));
    assert!(
        err.contains("org/tiny@nobranch") && err.contains("404"),
        "{err}"
    );

    let err = err_text(hub.list_files(&HubRepo::model("org/nope")));
    assert!(
        err.contains("repository org/nope@main not found (HTTP 404: Repository not found)"),
        "{err}"
    );

    let err = err_text(
        hub.get_json::<serde_json::Value>(&format!("http://{}/api/nothing-here", fake.hub)),
    );
    assert!(
        err.contains("/api/nothing-here") && err.contains("404"),
        "{err}"
    );
    assert!(!fake.repo_dir("models--org--nope").join("refs").exists());
}

#[test]
fn private_repos_need_hf_token_and_it_is_not_sent_to_the_cdn() {
    let fake = FakeHub::start("token");
    let private = HubRepo::model("org/private");

    let err = err_text(fake.client(None).download(&private, "config.json"));
    assert!(err.contains("401") && err.contains("set HF_TOKEN"), "{err}");
    let err = err_text(
        fake.client(Some("hf_wrong"))
            .download(&private, "config.json"),
    );
    assert!(
        err.contains("401") && err.contains("HF_TOKEN was refused"),
        "{err}"
    );
    let err = err_text(fake.client(None).list_files(&private));
    assert!(err.contains("401") && err.contains("HF_TOKEN"), "{err}");
    fake.take_log();

    let hub = fake.client(Some(TOKEN));
    let config = hub.download(&private, "config.json").unwrap();
    assert_eq!(fs::read_to_string(config).unwrap(), "{}");
    let (commit, files) = hub.list_files(&private).unwrap();
    assert_eq!(
        (commit.as_str(), files),
        (COMMIT, vec!["config.json".to_string()])
    );
    hub.download(&tiny(), "model.safetensors").unwrap();

    let bearer = format!("Bearer {TOKEN}");
    for request in fake.take_log() {
        if request.on_cdn {
            assert_eq!(request.auth, None, "the token leaked to the CDN");
        } else {
            assert_eq!(
                request.auth.as_deref(),
                Some(bearer.as_str()),
                "{request:?}"
            );
        }
    }
}

#[test]
fn offline_mode_uses_only_the_cache() {
    let fake = FakeHub::start("offline");
    let online = fake.client(None);
    let cached = online.download(&tiny(), "config.json").unwrap();
    let dir = online.download_model_dir(&tiny()).unwrap();
    fake.take_log();

    let offline = fake.client(None).offline(true);
    assert_eq!(offline.download(&tiny(), "config.json").unwrap(), cached);
    assert_eq!(offline.download_model_dir(&tiny()).unwrap(), dir);
    let (commit, files) = offline.list_files(&tiny()).unwrap();
    assert_eq!(commit, COMMIT);
    assert_eq!(
        files,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );

    let err = err_text(offline.download(&tiny(), "README.md"));
    assert!(
        err.contains("README.md") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    let err = err_text(offline.download_model_dir(&HubRepo::model("org/sharded")));
    assert!(err.contains("no snapshot"), "{err}");
    let err = err_text(offline.get_json::<serde_json::Value>(&format!(
        "http://{}/api/models/org/tiny/revision/main",
        fake.hub
    )));
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(
        fake.take_log().is_empty(),
        "offline mode must not touch the network"
    );
}

#[test]
fn unreachable_endpoint_is_named_and_the_cache_stands_in() {
    let fake = FakeHub::start("unreachable");
    let cached = fake.client(None).download(&tiny(), "config.json").unwrap();
    let dir = fake.client(None).download_model_dir(&tiny()).unwrap();

    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hub = Hub::new(&format!("http://{dead}"), &fake.cache, None).unwrap();
    assert_eq!(hub.download(&tiny(), "config.json").unwrap(), cached);
    assert_eq!(hub.download_model_dir(&tiny()).unwrap(), dir);

    let err = err_text(hub.download(&tiny(), "README.md"));
    assert!(
        err.contains(&format!("cannot reach http://{dead}")),
        "{err}"
    );
    assert!(
        err.contains("README.md") && err.contains("HF_ENDPOINT") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    let err = err_text(hub.list_files(&tiny()));
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
}

#[test]
fn list_files_and_get_json_read_the_api() {
    let fake = FakeHub::start("api");
    let hub = fake.client(None);
    let (commit, files) = hub.list_files(&tiny()).unwrap();
    assert_eq!(commit, COMMIT);
    assert_eq!(files.len(), 7);
    assert!(files.contains(&"nested/dir/info.txt".to_string()));

    let absolute = format!("http://{}/api/models/org/tiny/revision/{COMMIT}", fake.hub);
    let info: serde_json::Value = hub.get_json(&absolute).unwrap();
    assert_eq!(info["sha"], COMMIT);
    let err =
        err_text(hub.get_json::<serde_json::Value>(&format!("http://{}/cdn/nothing", fake.cdn)));
    assert!(err.contains("404"), "{err}");
}

#[test]
fn download_model_dir_fetches_what_a_loader_needs() {
    let fake = FakeHub::start("modeldir");
    let hub = fake.client(None);
    let dir = hub.download_model_dir(&tiny()).unwrap();
    let root = fake.repo_dir("models--org--tiny");
    assert_eq!(dir, root.join("snapshots").join(COMMIT));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    assert_eq!(fs::read_to_string(root.join("refs/main")).unwrap(), COMMIT);
    fake.take_log();

    // Everything is pinned to the listed commit, so a repeat needs only the listing.
    assert_eq!(hub.download_model_dir(&tiny()).unwrap(), dir);
    let paths: Vec<String> = fake.take_log().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/api/models/org/tiny/revision/main"]);
}

#[test]
fn sharded_models_fetch_only_the_shards_the_index_names() {
    let fake = FakeHub::start("sharded");
    let hub = fake.client(None);
    let dir = hub
        .download_model_dir(&HubRepo::model("org/sharded"))
        .unwrap();
    for name in [
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(dir.join(name).is_file(), "{name} is missing");
    }
    assert!(!dir.join("consolidated.safetensors").exists());
}

#[test]
fn renamed_repos_follow_the_relative_redirect() {
    let fake = FakeHub::start("renamed");
    let hub = fake.client(None);
    let path = hub
        .download(&HubRepo::model("old-org/tiny"), "config.json")
        .unwrap();
    assert!(path.starts_with(fake.repo_dir("models--old-org--tiny")));
    assert_eq!(
        fs::read_to_string(path).unwrap(),
        r#"{"model_type": "llama"}"#
    );
    let paths: Vec<String> = fake.take_log().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/old-org/tiny/resolve/main/config.json",
            "/org/tiny/resolve/main/config.json",
            "/org/tiny/resolve/main/config.json",
        ]
    );
}

#[test]
fn revisions_with_slashes_are_quoted_and_get_nested_refs() {
    let fake = FakeHub::start("prref");
    let hub = fake.client(None);
    let pr = HubRepo::parse("org/tiny@refs/pr/1").unwrap();
    hub.download(&pr, "config.json").unwrap();
    let root = fake.repo_dir("models--org--tiny");
    assert_eq!(
        fs::read_to_string(root.join("refs/refs/pr/1")).unwrap(),
        COMMIT
    );
    let paths: Vec<String> = fake.take_log().into_iter().map(|r| r.path).collect();
    assert_eq!(paths[0], "/org/tiny/resolve/refs%2Fpr%2F1/config.json");
}

#[test]
fn repo_specs_parse_and_print_back() {
    let repo = HubRepo::parse("org/name@v1.0").unwrap();
    assert_eq!(repo.repo_id, "org/name");
    assert_eq!(repo.revision, "v1.0");
    assert_eq!(HubRepo::parse("gpt2").unwrap(), HubRepo::model("gpt2"));
    let pr = HubRepo::parse("org/d@refs/pr/1").unwrap();
    assert_eq!(pr.to_string(), "org/d@refs/pr/1");
    assert_eq!(HubRepo::parse(&pr.to_string()).unwrap(), pr);
    for bad in [
        "",
        "a/b/c",
        "datasets/org/d",
        "org/../x",
        "org/name@",
        "-org/x",
        "org--x/y",
        "org/name@../../etc",
    ] {
        assert!(HubRepo::parse(bad).is_err(), "{bad:?} should not parse");
    }
    let hub = Hub::new("http://127.0.0.1:9", std::env::temp_dir(), None).unwrap();
    let escaping = tiny().at("../../x");
    assert!(hub.download(&escaping, "config.json").is_err());
    assert!(hub.download(&tiny(), "../config.json").is_err());
}

/// `--model hf:org/name` goes through the loader: the binary, pointed at the fake hub
/// by the same variables as huggingface_hub, downloads the repository and gives the
/// same vectors as the local copy of the model it serves.
#[test]
fn hf_models_load_through_the_loader() {
    let fake = FakeHub::start("loader");
    let scratch = fake.cache.with_extension("work");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).unwrap();
    let input = scratch.join("texts.txt");
    fs::write(&input, "The cat sat on the mat.\nHello, world!\n").unwrap();
    let embed = |model: &str, out: &Path| -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["embed", "--quiet", "--model", model, "--input"])
            .arg(&input)
            .arg("--out")
            .arg(out)
            .env("HF_ENDPOINT", format!("http://{}", fake.hub))
            .env("HF_HUB_CACHE", &fake.cache)
            .env("HF_HOME", &scratch)
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap()
    };
    let read = |path: &Path| -> Vec<f32> {
        let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
        t["embeddings"].flatten_all().unwrap().to_vec1().unwrap()
    };
    let out = embed("hf:org/tiny-qwen2", &scratch.join("hub.safetensors"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fake.take_log();
    assert!(
        log.iter().any(|r| r.on_cdn
            && r.body_bytes == fs::metadata(fixture("model.safetensors")).unwrap().len() as usize),
        "the weights were not downloaded: {log:?}"
    );
    let snapshot = fake
        .repo_dir("models--org--tiny-qwen2")
        .join("snapshots")
        .join(COMMIT);
    assert!(snapshot.join("model.safetensors").is_file());
    let local = fixture("config.json")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let out = embed(&local, &scratch.join("local.safetensors"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read(&scratch.join("hub.safetensors")),
        read(&scratch.join("local.safetensors"))
    );
    fs::remove_dir_all(&scratch).unwrap();
}
