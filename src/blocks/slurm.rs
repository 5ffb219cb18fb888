//! Slurm array scripts for blockwise jobs: one array task per worker, each running the same
//! revseg command with `--worker $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`. Nothing here is
//! specific to one stage: any subcommand that takes `--worker` runs this way, and the command is
//! checked against the program's own command-line definition before a script is written, so a
//! typo fails once here rather than in every array task.

use crate::error::{Error, Result};
use std::path::PathBuf;

/// One stage as a Slurm array job.
#[derive(Clone, Debug, Default)]
pub struct ArrayJob {
    /// The revseg arguments, subcommand first, without `--worker`.
    pub command: Vec<String>,
    /// The revseg executable the tasks run (absolute, since tasks start elsewhere).
    pub program: PathBuf,
    /// Array tasks, i.e. workers.
    pub tasks: usize,
    /// At most this many tasks at once (`--array=...%K`).
    pub max_running: Option<usize>,
    pub job_name: String,
    /// Working directory of the tasks, where relative paths of the command resolve.
    pub chdir: PathBuf,
    /// sbatch `--output` pattern of the task logs (%A array job, %a task).
    pub log: String,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: Option<usize>,
    pub mem: Option<String>,
    pub gpus: Option<String>,
    /// Jobs that must have succeeded before this one starts (`afterok`).
    pub after: Vec<String>,
    /// Further sbatch options, each `--NAME=VALUE` or `--NAME`.
    pub sbatch: Vec<String>,
}

/// Whether `s` survives the shell unquoted.
fn shell_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./,:=+@%".contains(&b))
}

/// `s` as one shell word: single-quoted unless plainly safe, `'` as `'\''`.
pub fn shell_quote(s: &str) -> String {
    if shell_safe(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A value for an `#SBATCH` line. sbatch splits these lines itself (not the shell): double
/// quotes group words, a backslash escapes the next character and an unescaped `#` starts a
/// comment. A line break cannot be expressed at all.
fn directive_value(flag: &str, v: &str) -> Result<String> {
    if v.is_empty() || v.chars().any(|c| c.is_control()) {
        return Err(Error::Invalid(format!(
            "{flag} {v:?}: empty or holds a control character (line break, tab), which an #SBATCH line cannot carry; choose another value"
        )));
    }
    let escaped: String = v
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' | '#' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    Ok(if v.contains(' ') {
        format!("\"{escaped}\"")
    } else {
        escaped
    })
}

/// A Slurm job id for a dependency: `N` or `N_T` (one array task).
fn check_job_id(id: &str) -> Result<()> {
    let (job, task) = match id.split_once('_') {
        Some((j, t)) => (j, Some(t)),
        None => (id, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(job) && task.is_none_or(digits) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--after {id}: not a Slurm job id; give the number sbatch printed (with --parsable: the part before any ';'), e.g. --after 1234"
    )))
}

/// Refuses a command line that cannot run as array tasks of `cli` (the program's own
/// definition): no subcommand, a subcommand that does not work blockwise (no `--worker`), a
/// `--worker`/`--workers` of its own, or arguments its parser rejects.
pub fn check_command(cli: &clap::Command, command: &[String]) -> Result<()> {
    let Some(first) = command.first() else {
        return Err(Error::Invalid(
            "no command: give the revseg arguments of the stage after --, e.g. -- predict --checkpoint ... --block 32,256,256"
                .into(),
        ));
    };
    for a in command {
        let flag = a.split('=').next().unwrap_or(a);
        if flag == "--worker" || flag == "--workers" {
            return Err(Error::Invalid(format!(
                "the command holds {flag}: each array task adds its own --worker I/N; remove {flag} from the command"
            )));
        }
    }
    let mut sub = cli;
    let mut path = Vec::new();
    for a in command {
        match sub.find_subcommand(a) {
            Some(s) => {
                path.push(a.as_str());
                sub = s;
            }
            None => break,
        }
    }
    if path.is_empty() {
        let names: Vec<&str> = cli.get_subcommands().map(|s| s.get_name()).collect();
        return Err(Error::Invalid(format!(
            "{first:?} is not a revseg command (one of {}); give the arguments after the program name, subcommand first, e.g. -- predict ...",
            names.join(", ")
        )));
    }
    let takes_worker = sub.get_arguments().any(|a| a.get_long() == Some("worker"));
    if !takes_worker {
        return Err(Error::Invalid(format!(
            "`revseg {}` does not run blockwise (it takes no --worker I/N), so array tasks would all repeat the same work; give a blockwise command, e.g. -- predict ... --block Z,Y,X",
            path.join(" ")
        )));
    }
    let argv = std::iter::once(cli.get_name().to_string())
        .chain(command.iter().cloned())
        .chain(["--worker".to_string(), "0/1".to_string()]);
    cli.clone().try_get_matches_from(argv).map_err(|e| {
        let text = e.to_string();
        let text = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
        Error::Invalid(format!(
            "the command `revseg {}` would fail in every array task: {}",
            path.join(" "),
            crate::fsutil::one_line(text)
        ))
    })?;
    Ok(())
}

/// The sbatch script of `job`.
pub fn script(job: &ArrayJob) -> Result<String> {
    if job.tasks == 0 {
        return Err(Error::Invalid(
            "--tasks 0: an array job needs at least one task (one per worker)".into(),
        ));
    }
    if job.command.is_empty() {
        return Err(Error::Invalid("no command to run: give it after --".into()));
    }
    let mut array = format!("0-{}", job.tasks - 1);
    if let Some(k) = job.max_running {
        if k == 0 {
            return Err(Error::Invalid(
                "--max-running 0: at least one task must run at a time".into(),
            ));
        }
        array.push_str(&format!("%{k}"));
    }
    let mut d: Vec<(&str, String)> = vec![
        ("job-name", job.job_name.clone()),
        ("array", array),
        ("output", job.log.clone()),
        ("chdir", job.chdir.display().to_string()),
    ];
    let opt = [
        ("partition", job.partition.clone()),
        ("time", job.time.clone()),
        ("cpus-per-task", job.cpus_per_task.map(|c| c.to_string())),
        ("mem", job.mem.clone()),
        ("gpus", job.gpus.clone()),
    ];
    d.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    if job.cpus_per_task == Some(0) {
        return Err(Error::Invalid(
            "--cpus-per-task 0: a task needs at least one CPU".into(),
        ));
    }
    if !job.after.is_empty() {
        for id in &job.after {
            check_job_id(id)?;
        }
        d.push(("dependency", format!("afterok:{}", job.after.join(":"))));
        // A failed stage cancels the ones after it instead of leaving them pending forever.
        d.push(("kill-on-invalid-dep", "yes".into()));
    }
    let mut s = String::from("#!/bin/bash\n");
    for (k, v) in &d {
        s.push_str(&format!(
            "#SBATCH --{k}={}\n",
            directive_value(&format!("--{k}"), v)?
        ));
    }
    for o in &job.sbatch {
        let Some(body) = o.strip_prefix("--").filter(|b| !b.is_empty()) else {
            return Err(Error::Invalid(format!(
                "--sbatch {o:?}: give an sbatch long option, e.g. --sbatch=--account=lab"
            )));
        };
        let line = match body.split_once('=') {
            Some((k, v)) => format!("--{k}={}", directive_value(&format!("--{k}"), v)?),
            None => format!("--{}", directive_value("--sbatch", body)?),
        };
        s.push_str(&format!("#SBATCH {line}\n"));
    }
    let program = job.program.display().to_string();
    let cmd: Vec<String> = std::iter::once(program.as_str())
        .chain(job.command.iter().map(String::as_str))
        .map(shell_quote)
        .collect();
    s.push_str(&format!(
        r#"
# Written by `revseg blocks slurm`. Array task I of N is worker I/N of the job: it does blocks
# I, I+N, I+2N, ... and skips those already done, so resubmitting the whole script finishes a
# job whose tasks failed or were cancelled. Another worker count: sbatch --array=0-(K-1) FILE.
set -euo pipefail
id=${{SLURM_ARRAY_TASK_ID:-}}
n=${{SLURM_ARRAY_TASK_COUNT:-}}
if [ -z "$id" ] || [ -z "$n" ]; then
    echo "not an array task: submit this script with sbatch" >&2
    exit 2
fi
if [ "${{SLURM_ARRAY_TASK_MIN:-0}}" != 0 ] || [ "${{SLURM_ARRAY_TASK_MAX:-$((n - 1))}}" != $((n - 1)) ]; then
    echo "array tasks must be 0-$((n - 1)) with no gaps (got ${{SLURM_ARRAY_TASK_MIN:-}}-${{SLURM_ARRAY_TASK_MAX:-}} of $n): resubmit the whole array; done blocks are skipped" >&2
    exit 2
fi
# Where Slurm does not bind tasks to their CPUs, the thread pool would size itself to the node.
if [ -n "${{SLURM_CPUS_PER_TASK:-}}" ]; then
    export RAYON_NUM_THREADS="${{RAYON_NUM_THREADS:-$SLURM_CPUS_PER_TASK}}"
fi
exec {} --worker "$id/$n"
"#,
        cmd.join(" ")
    ));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn toy_cli() -> Command {
        Command::new("revseg")
            .subcommand(
                Command::new("predict")
                    .arg(Arg::new("input").long("input").required(true))
                    .arg(Arg::new("worker").long("worker"))
                    .arg(Arg::new("workers").long("workers")),
            )
            .subcommand(Command::new("train").arg(Arg::new("steps").long("steps")))
            .subcommand(
                Command::new("blocks")
                    .subcommand(Command::new("fragments").arg(Arg::new("worker").long("worker"))),
            )
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn job(command: &[&str]) -> ArrayJob {
        ArrayJob {
            command: strings(command),
            program: "/opt/rev seg/bin/revseg".into(),
            tasks: 3,
            job_name: "predict".into(),
            chdir: "/data".into(),
            log: "logs/%A_%a.log".into(),
            ..ArrayJob::default()
        }
    }

    #[test]
    fn commands_are_checked_against_the_cli() {
        let cli = toy_cli();
        let ok = |c: &[&str]| check_command(&cli, &strings(c));
        ok(&["predict", "--input", "a b"]).unwrap();
        ok(&["blocks", "fragments"]).unwrap();
        let err = |c: &[&str]| ok(c).unwrap_err().to_string();
        assert!(err(&[]).contains("no command"));
        assert!(err(&["train", "--steps", "3"]).contains("does not run blockwise"));
        assert!(err(&["blocks"]).contains("does not run blockwise"));
        assert!(err(&["revseg", "predict"]).contains("not a revseg command"));
        assert!(err(&["predict", "--input", "x", "--worker", "0/2"]).contains("remove --worker"));
        assert!(err(&["predict", "--input", "x", "--workers=2"]).contains("remove --workers"));
        let e = err(&["predict"]);
        assert!(e.contains("would fail") && e.contains("--input"), "{e}");
        assert!(err(&["predict", "--input", "x", "--typo"]).contains("--typo"));
    }

    #[test]
    fn directives_array_and_dependencies() {
        let mut j = job(&["predict", "--input", "x"]);
        j.max_running = Some(2);
        j.after = strings(&["17", "18_3"]);
        j.cpus_per_task = Some(4);
        j.partition = Some("gpu".into());
        j.job_name = "my \"job\" #1".into();
        j.sbatch = strings(&["--account=lab x", "--exclusive"]);
        let s = script(&j).unwrap();
        let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("#SBATCH")).collect();
        assert_eq!(
            lines,
            [
                r#"#SBATCH --job-name="my \"job\" \#1""#,
                "#SBATCH --array=0-2%2",
                "#SBATCH --output=logs/%A_%a.log",
                "#SBATCH --chdir=/data",
                "#SBATCH --partition=gpu",
                "#SBATCH --cpus-per-task=4",
                "#SBATCH --dependency=afterok:17:18_3",
                "#SBATCH --kill-on-invalid-dep=yes",
                "#SBATCH --account=\"lab x\"",
                "#SBATCH --exclusive",
            ]
        );
        j.after = strings(&["17;cluster"]);
        assert!(script(&j)
            .unwrap_err()
            .to_string()
            .contains("not a Slurm job id"));
        j.after.clear();
        j.tasks = 1;
        j.max_running = None;
        assert!(script(&j).unwrap().contains("#SBATCH --array=0-0\n"));
        j.tasks = 0;
        assert!(script(&j)
            .unwrap_err()
            .to_string()
            .contains("at least one task"));
        j.tasks = 2;
        j.log = "a\nb".into();
        assert!(script(&j)
            .unwrap_err()
            .to_string()
            .contains("control character"));
        j.log = "x".into();
        j.sbatch = strings(&["account=lab"]);
        assert!(script(&j).unwrap_err().to_string().contains("long option"));
    }

    /// The body run by bash (as an array task would) passes every argument through unchanged,
    /// whatever quotes, spaces and shell syntax it holds, and appends this task's --worker.
    #[test]
    fn bash_receives_the_arguments_unchanged() {
        let d = std::env::temp_dir().join(format!("revseg-slurm-quote-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let echo = d.join("print args");
        std::fs::write(
            &echo,
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&echo, std::fs::Permissions::from_mode(0o755)).unwrap();
        let args = [
            "predict",
            "--output",
            "out dir/it's \"quoted\".zarr",
            "$HOME `id` $(id) \\ ; & | * ~",
            "",
            "line\nbreak",
            "--x=a b",
        ];
        let mut j = job(&args);
        j.program = echo;
        let path = d.join("job.sbatch");
        std::fs::write(&path, script(&j).unwrap()).unwrap();
        let run = |env: &[(&str, &str)]| {
            std::process::Command::new("bash")
                .arg(&path)
                .env_remove("SLURM_ARRAY_TASK_MIN")
                .env_remove("SLURM_ARRAY_TASK_MAX")
                .envs(env.iter().copied())
                .output()
                .unwrap()
        };
        let out = run(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "2"),
        ]);
        assert!(out.status.success(), "{out:?}");
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(str::to_string)
            .collect();
        let mut want = strings(&args);
        want.extend(strings(&["--worker", "1/3"]));
        assert_eq!(got, want);
        // Outside an array, or a partial array, the script refuses to run a worker.
        let out = run(&[]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("submit this script with sbatch"));
        let out = run(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }
}
