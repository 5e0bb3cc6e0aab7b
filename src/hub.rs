//! `hf://OWNER/REPO[/FILE]` locations: downloaded on request into the usual Hugging Face
//! cache (`$HF_HOME`, default `~/.cache/huggingface`); everything else is a local path.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// A local path for `spec`. For `hf://OWNER/REPO/FILE` the file is fetched; for
/// `hf://OWNER/REPO` each of `files` is fetched and their directory returned.
pub fn resolve(spec: &str, files: &[&str]) -> Result<PathBuf> {
    let Some(rest) = spec.strip_prefix("hf://") else {
        return Ok(PathBuf::from(spec));
    };
    let parts: Vec<&str> = rest.splitn(3, '/').collect();
    if parts.len() < 2 || parts[0].is_empty() || parts[1].is_empty() {
        bail!("bad Hugging Face location {spec:?}: expected hf://OWNER/REPO[/FILE]");
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(true)
        .build()
        .context("cannot set up Hugging Face downloads")?;
    let repo_api = api.model(repo.clone());
    let fetch = |file: &str| {
        repo_api.get(file).map_err(|e| {
            anyhow::anyhow!(
                "cannot download {file} from huggingface.co/{repo} ({e}); without network, pass a local path instead"
            )
        })
    };
    match parts.get(2) {
        Some(file) if !file.is_empty() => fetch(file),
        _ => {
            let mut dir = None;
            for f in files {
                dir = fetch(f)?.parent().map(PathBuf::from);
            }
            dir.with_context(|| format!("nothing to fetch from {spec}"))
        }
    }
}
