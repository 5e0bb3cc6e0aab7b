//! `udit ablate --jobs N`: a plan's runs in N processes side by side, each on an equal share
//! of the CPU threads. Small models use many threads poorly (on the 2-core machine a ladder
//! model trains at 0.28 s a step on one thread beside another run, 0.33 s alone on both), so
//! N runs at once finish the plan sooner. Each process is `udit ablate --claim` on the same
//! output folder: it takes the next run that no other holds a lock on (so a job that drew
//! small models does not wait idle while another trains large ones), each run an ordinary
//! resumable run folder; this one forwards their lines and stops them all when one fails.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Runs `udit ablate --plan PLAN --out OUT --claim EXTRA` `jobs` times at once and waits
/// for them. Their stderr comes through this one's, line by line (plain progress
/// lines: theirs is not a terminal). The first that fails kills the others.
pub fn run_shards(plan: &Path, out: &Path, jobs: usize, extra: &[String]) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the udit binary to start the jobs")?;
    let threads = threads_per_job(jobs);
    eprintln!("{jobs} jobs side by side, {threads} thread(s) each");
    let mut running = Vec::new();
    let mut forwarders = Vec::new();
    for k in 0..jobs {
        let mut child = Command::new(&exe)
            .args(["ablate", "--plan"])
            .arg(plan)
            .arg("--out")
            .arg(out)
            .arg("--claim")
            .args(extra)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start job {k} ({})", exe.display()))?;
        let stderr = child.stderr.take().context("no stderr of the job")?;
        forwarders.push(std::thread::spawn(move || {
            BufReader::new(stderr).lines().map_while(|l| l.ok()).for_each(|line| eprintln!("{line}"))
        }));
        running.push((k, child));
    }
    let mut failed = None;
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait()? {
                None => i += 1,
                Some(status) => {
                    let (k, _) = running.remove(i);
                    if !status.success() && failed.is_none() {
                        failed = Some(k);
                        running.iter_mut().for_each(|(_, c)| drop(c.kill()));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    forwarders.into_iter().for_each(|f| drop(f.join()));
    if let Some(k) = failed {
        bail!("job {k}/{jobs} failed (its error is above); the same command resumes the plan");
    }
    Ok(())
}

/// An equal share of the threads (RAYON_NUM_THREADS if set, else every core), at least one.
fn threads_per_job(jobs: usize) -> usize {
    let total = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (total / jobs).max(1)
}
