//! The hub's settings from the environment, read as `huggingface_hub` reads them.

use std::fs;
use std::io;
use std::path::PathBuf;

use anyhow::{Context, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Settings read from the environment, separated from `std::env` so they can be
/// tested without mutating the process environment.
pub(super) struct Settings {
    pub(super) endpoint: String,
    pub(super) cache_dir: PathBuf,
    pub(super) token: Option<String>,
    pub(super) offline: bool,
}

impl Settings {
    pub(super) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
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
}
