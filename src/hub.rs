//! `hf://OWNER/REPO[/FILE]` locations: downloaded on request into the usual Hugging Face
//! cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`); everything else is a local
//! path. Files already in the cache are used without the network; otherwise the host is
//! probed first, so that a machine without network is told so in seconds, in one line.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The host of the downloads.
const HOST: &str = "huggingface.co";
/// How long the probe waits for the name lookup and then for the connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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
    let wanted: Vec<&str> = match parts.get(2) {
        Some(file) if !file.is_empty() => vec![file],
        _ => files.to_vec(),
    };
    let cache = hf_hub::Cache::from_env();
    let missing: Vec<&str> = wanted.iter().copied().filter(|f| cache.model(repo.clone()).get(f).is_none()).collect();
    if !missing.is_empty() {
        let is = if missing.len() == 1 { "is" } else { "are" };
        let what = format!("{} of huggingface.co/{repo}", missing.join(" and "));
        let cached_in = cache.path().display();
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
        if let Err(why) = if offline { Err("HF_HUB_OFFLINE is set".into()) } else { probe() } {
            bail!("{what} {is} not in the Hugging Face cache ({cached_in}) and {why}: pass a local path instead");
        }
        eprintln!("downloading {what} into {cached_in} (once)");
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
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
    let mut dir = None;
    for f in &wanted {
        dir = Some(fetch(f)?);
    }
    let last = dir.with_context(|| format!("nothing to fetch from {spec}"))?;
    Ok(match parts.get(2) {
        Some(file) if !file.is_empty() => last,
        _ => last.parent().map(PathBuf::from).context("a cached file has no folder")?,
    })
}

/// Whether [`HOST`] answers on port 443 within the timeouts, else why not (the name lookup
/// runs on a thread of its own: the system resolver has no timeout to set).
fn probe() -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || drop(tx.send((HOST, 443).to_socket_addrs().map(|a| a.collect::<Vec<_>>()))));
    let addrs = match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => return Err(format!("{HOST} cannot be looked up ({e}; no network?)")),
        Err(_) => return Err(format!("looking up {HOST} took over {} s (no network?)", PROBE_TIMEOUT.as_secs())),
    };
    match addrs.iter().any(|a| TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok()) {
        true => Ok(()),
        false => Err(format!("{HOST} does not answer (no network?)")),
    }
}
