//! `revseg blocks`: running blockwise jobs on a cluster.

use crate::blocks::slurm::{self, ArrayJob};
use crate::error::{Error, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum BlocksCmd {
    /// Write (or print) the sbatch array script of a blockwise command: N array tasks, task I
    /// running the command with --worker I/N. E.g. `revseg blocks slurm --tasks 8 --out
    /// predict.sbatch -- predict --checkpoint model.safetensors --input image.zarr --output
    /// aff.zarr --block 32,256,256`, then `sbatch predict.sbatch`.
    Slurm(SlurmArgs),
}

#[derive(Args, Debug)]
pub struct SlurmArgs {
    /// Array tasks (workers) N; each does every N-th block.
    #[arg(long)]
    pub tasks: usize,
    /// Write the script to FILE (atomically); without it the script goes to stdout.
    #[arg(long)]
    pub out: Option<String>,
    /// Slurm job name (default: revseg-SUBCOMMAND).
    #[arg(long)]
    pub job_name: Option<String>,
    /// Log file pattern of the tasks (sbatch --output; %A array job id, %a task id; relative
    /// to --chdir). Default: JOBNAME-%A_%a.log.
    #[arg(long)]
    pub log: Option<String>,
    /// Working directory of the tasks, where the command's relative paths resolve (default: the
    /// current directory).
    #[arg(long)]
    pub chdir: Option<String>,
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit per task (sbatch --time, e.g. 2:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs per task; the task's thread pool is sized to it.
    #[arg(long)]
    pub cpus_per_task: Option<usize>,
    /// Memory per task (sbatch --mem, e.g. 16G).
    #[arg(long)]
    pub mem: Option<String>,
    /// GPUs per task (sbatch --gpus, e.g. 1 or h100:1).
    #[arg(long)]
    pub gpus: Option<String>,
    /// Start only after these jobs succeeded (job ids, repeatable or comma-separated): a
    /// later stage waits for the one before it.
    #[arg(long, value_delimiter = ',')]
    pub after: Vec<String>,
    /// Run at most K tasks at once.
    #[arg(long)]
    pub max_running: Option<usize>,
    /// Another sbatch option for the script, e.g. --sbatch=--account=lab (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// The revseg executable the tasks run (default: this one).
    #[arg(long)]
    pub revseg: Option<String>,
    /// The stage's revseg arguments, subcommand first, after --.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Error::Io(format!("cannot read the current directory: {e}")))?;
    // Through components, so that `.` and `a/./b` come out as plain paths in the script.
    Ok(cwd.join(p).components().collect())
}

/// `cli` is the program's command-line definition, against which the stage's command is
/// checked.
pub fn run(cmd: &BlocksCmd, cli: &clap::Command) -> Result<()> {
    match cmd {
        BlocksCmd::Slurm(a) => run_slurm(a, cli),
    }
}

fn run_slurm(a: &SlurmArgs, cli: &clap::Command) -> Result<()> {
    slurm::check_command(cli, &a.command)?;
    let program = match &a.revseg {
        Some(p) => {
            let p = absolute(Path::new(p))?;
            if !p.is_file() {
                return Err(Error::Invalid(format!(
                    "--revseg {}: no such file; give the path of the revseg executable the tasks should run",
                    p.display()
                )));
            }
            p
        }
        None => std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .map_err(|e| {
                Error::Io(format!(
                    "cannot find this program's path ({e}); give it with --revseg PATH"
                ))
            })?,
    };
    let chdir = absolute(Path::new(a.chdir.as_deref().unwrap_or(".")))?;
    if !chdir.is_dir() {
        return Err(Error::Invalid(format!(
            "--chdir {}: not a directory; create it or choose another",
            chdir.display()
        )));
    }
    let job_name = a
        .job_name
        .clone()
        .unwrap_or_else(|| format!("revseg-{}", a.command[0]));
    let job = ArrayJob {
        command: a.command.clone(),
        program,
        tasks: a.tasks,
        max_running: a.max_running,
        log: a
            .log
            .clone()
            .unwrap_or_else(|| format!("{job_name}-%A_%a.log")),
        job_name,
        chdir,
        partition: a.partition.clone(),
        time: a.time.clone(),
        cpus_per_task: a.cpus_per_task,
        mem: a.mem.clone(),
        gpus: a.gpus.clone(),
        after: a.after.clone(),
        sbatch: a.sbatch.clone(),
    };
    let text = slurm::script(&job)?;
    match &a.out {
        None => print!("{text}"),
        Some(out) => {
            let path = Path::new(out);
            crate::volume::array::write_file_atomic(path, |w| {
                use std::io::Write;
                use std::os::unix::fs::PermissionsExt;
                let io = |e| crate::volume::array::io_err(path, e);
                w.get_ref()
                    .set_permissions(std::fs::Permissions::from_mode(0o755))
                    .map_err(io)?;
                w.write_all(text.as_bytes()).map_err(io)
            })?;
            eprintln!(
                "wrote {out}: {} array tasks of `revseg {}`; submit with sbatch {out}",
                a.tasks,
                a.command.join(" ")
            );
        }
    }
    Ok(())
}
