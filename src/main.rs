//! The `udit` command line: parses the flags and calls the library's function for the
//! subcommand (`udit::commands`).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use udit::commands::{self, ablate, eval, sample, serve, sweep, train};

#[derive(Parser)]
#[command(name = "udit", version, about = "U-DiT: U-shaped diffusion transformers with downsampled tokens")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture summary, parameter count and MACs of one forward pass.
    Info(commands::InfoArgs),
    /// One denoiser forward pass on tensors `x`, `t`, `y` from a safetensors file.
    Forward(commands::ForwardArgs),
    /// Convert a PyTorch checkpoint (or safetensors) to safetensors with the reference names.
    Convert(commands::ConvertArgs),
    /// Time the forward pass (or a training step) of a model with fresh weights.
    Bench(commands::BenchArgs),
    /// Generate images from a checkpoint: PNGs and a labelled grid, or an ADM `.npz`.
    Sample(sample::SampleArgs),
    /// A web page and JSON API for generating images with one model (loopback by default).
    Serve(serve::ServeArgs),
    /// Merge the finished batches of a sharded `sample --npz` run into the `.npz`.
    MergeNpz(sample::MergeArgs),
    /// Sample quality against network evaluations over samplers, step counts and guidance:
    /// sweep.md, sweep.json and fid-vs-nfe.png; resumable.
    Sweep(sweep::SweepArgs),
    /// FID, sFID, Inception Score, precision and recall of an ADM `.npz` against a reference;
    /// with `--features`, the offline Fashion-MNIST meter.
    Eval(eval::EvalArgs),
    /// Negative log-likelihood of data under an interpolant (SiT) model, in bits per dimension:
    /// the reverse ODE with Hutchinson's trace estimator.
    Likelihood(eval::LikelihoodArgs),
    /// Train the offline meter's classifier (Fashion-MNIST).
    TrainClassifier(eval::TrainClassifierArgs),
    /// Train a U-DiT, DiT or SiT with the reference recipe, either process; resumable.
    Train(train::TrainArgs),
    /// Encode an ImageNet-layout folder to latents once (ADM center crop, SD VAE).
    ExtractFeatures(train::ExtractArgs),
    /// Draw the loss curve of a training log (`log.jsonl`) as a PNG.
    PlotLoss(commands::PlotArgs),
    /// Train, sample and score every model of an ablation plan; tabulate and plot (resumable).
    Ablate(ablate::AblateArgs),
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    udit::tune_allocator();
    // `udit info | head` ends quietly when the reader goes away, as other command-line tools.
    #[cfg(unix)]
    // SAFETY: restores the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Negative numbers reach their flag's parser (`--num-samples -3` is a bad count, not an
    // unknown flag).
    let matches = Cli::command().mut_subcommands(|c| c.allow_negative_numbers(true)).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Info(a) => commands::info(a),
        Command::Forward(a) => commands::forward(a),
        Command::Convert(a) => commands::convert(a),
        Command::Bench(a) => commands::bench(a),
        Command::Sample(a) => sample::sample(a),
        Command::Serve(a) => serve::serve(a),
        Command::MergeNpz(a) => sample::merge_npz(a),
        Command::Sweep(a) => sweep::sweep(a),
        Command::Eval(a) => eval::eval(a),
        Command::Likelihood(a) => eval::likelihood(a),
        Command::TrainClassifier(a) => eval::train_classifier(a),
        Command::Train(a) => train::train(a),
        Command::ExtractFeatures(a) => train::extract_features(a),
        Command::PlotLoss(a) => commands::plot_loss(a),
        Command::Ablate(a) => ablate::ablate(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Ctrl-C during training: the checkpoint is written, the status is the shell's 130.
        Err(e) if e.chain().any(|c| c.is::<udit::train::Interrupted>()) => {
            eprintln!("{e:#}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
