//! `udit serve`: the web page and JSON API of `src/serve/`, on one model.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use super::sample::ModelArgs;
use crate::io::images::ensure_writable_dir;
use crate::serve::{Limits, Options};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// IP:PORT to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7860")]
    pub addr: SocketAddr,
    /// Allow an --addr other machines can reach. There is no authentication: anyone who
    /// reaches the port can run jobs and fetch their images.
    #[arg(long)]
    pub allow_remote: bool,
    /// Where finished images go, one folder per job (nothing outside it is read or written).
    #[arg(long, default_value = "samples/serve")]
    pub out: PathBuf,
    /// Jobs that may wait behind the running one; more are refused (HTTP 429).
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Most sampling steps a request may ask for.
    #[arg(long, default_value_t = 1000)]
    pub max_steps: usize,
    /// Most samples a request may ask for.
    #[arg(long, alias = "max-images", default_value_t = 16)]
    pub max_samples: usize,
    /// Decode the x_0 prediction into a live preview every N steps while a page or an event
    /// stream watches the job (0 = no previews).
    #[arg(long, default_value_t = 5)]
    pub preview_every: usize,
    /// Cancel a job after this many seconds with nobody watching it: no open event stream
    /// and no request about it (a client that went away).
    #[arg(long, default_value_t = 60)]
    pub abandon_after: u64,
}

/// `udit serve`: loads the model (the bundled one by default) once, then serves until stopped.
pub fn serve(a: ServeArgs) -> Result<()> {
    let loopback = a.addr.ip().is_loopback();
    if !loopback && !a.allow_remote {
        bail!("{} is not a loopback address: serving to other machines needs --allow-remote", a.addr);
    }
    if a.queue == 0 || a.max_steps == 0 || a.max_samples == 0 || a.abandon_after == 0 {
        bail!("--queue, --max-steps, --max-samples and --abandon-after must be at least 1");
    }
    if !loopback {
        eprintln!(
            "warning: listening on {}, which other machines may reach: anyone who can connect can run jobs \
             and fetch their images (no authentication, no TLS)",
            a.addr
        );
    }
    let device = crate::default_device();
    let model = a.model.read()?.load(&device)?;
    model.image_shape()?;
    ensure_writable_dir(&a.out)?;
    eprintln!("{}", crate::model::describe(&model.config));
    let limits = Limits { max_steps: a.max_steps, max_samples: a.max_samples };
    let opts = Options {
        addr: a.addr,
        out: a.out,
        queue: a.queue,
        limits,
        preview_every: a.preview_every,
        abandon_after: Duration::from_secs(a.abandon_after),
    };
    crate::serve::run(model, device, opts)
}
