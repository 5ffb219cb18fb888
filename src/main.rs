use clap::{CommandFactory, Parser, Subcommand};
use revseg::cli;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "revseg",
    version,
    about = "Reversible residual U-Net for EM neuron segmentation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check every op's backward against finite differences (exit code 1 on any failure).
    Gradcheck(cli::gradcheck::GradcheckArgs),
    /// Plan a training step: parameters, FLOPs, peak memory by kind, live bytes over the steps.
    Plan(cli::plan::PlanArgs),
    /// The whole pipeline on synthetic data in a few minutes: synthesize, train, predict, segment, score.
    Demo(cli::demo::DemoArgs),
    /// Train the network on an image volume and its labels.
    Train(cli::train::TrainArgs),
    /// Predict affinities for a volume with a trained checkpoint (sliding window, optional TTA).
    Predict(cli::predict::PredictArgs),
    /// What this machine offers: devices, memory, compute capability, driver, kernel source.
    Info,
    /// Synthesize an EM-like volume with its labels (neurites, membranes, section artefacts).
    Synth(cli::synth::SynthArgs),
    /// Segment affinities: watershed fragments, then agglomeration at each threshold.
    Segment(cli::segment::SegmentArgs),
    /// Compare a segmentation with ground truth (adapted Rand error, VOI, boundary accuracy).
    Eval(cli::eval::EvalArgs),
    /// One section of image, ground truth, affinities and segmentation side by side as a PNG.
    Render(cli::render::RenderArgs),
    /// Training curves of several runs (their metrics.csv) side by side on one PNG.
    Curves(cli::curves::CurvesArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(cli::bench::BenchCmd),
    /// Blockwise jobs on a cluster: Slurm array scripts for any command that takes --worker.
    #[command(subcommand)]
    Blocks(cli::blocks::BlocksCmd),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let res = match &args.cmd {
        Cmd::Gradcheck(a) => cli::gradcheck::run(a),
        Cmd::Plan(a) => cli::plan::run(a).map(|_| true),
        Cmd::Demo(a) => cli::demo::run(a).map(|_| true),
        Cmd::Train(a) => cli::train::run(a).map(|_| true),
        Cmd::Predict(a) => cli::predict::run(a).map(|_| true),
        Cmd::Info => {
            println!("{}", revseg::backend::device::device_info());
            Ok(true)
        }
        Cmd::Synth(a) => cli::synth::run(a).map(|_| true),
        Cmd::Segment(a) => cli::segment::run(a).map(|_| true),
        Cmd::Eval(a) => cli::eval::run(a).map(|_| true),
        Cmd::Render(a) => cli::render::run(a).map(|_| true),
        Cmd::Curves(a) => cli::curves::run(a).map(|_| true),
        Cmd::Bench(b) => cli::bench::run(b).map(|_| true),
        Cmd::Blocks(b) => cli::blocks::run(b, &Cli::command()).map(|_| true),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
