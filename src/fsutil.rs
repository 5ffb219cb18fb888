//! File-system rules every writer shares: temporaries of dead writers are swept, outputs never
//! overwrite inputs, and a failed write says so in one line.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The tags writers put in the names of their temporaries: `.NAME.TAG-PID[-N]` beside `NAME`.
const TEMP_TAGS: [&str; 3] = ["tmp", "partial", "old"];

/// Removes temporaries beside `path` (files or directories `.NAME.TAG-PID...`) whose writer
/// process no longer exists.
pub fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    // Only where liveness can be checked; elsewhere a stale file is left rather than risk
    // deleting a live writer's data.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let name = name.to_string_lossy();
    for e in entries.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = f.strip_prefix(&format!(".{name}.")) else {
            continue;
        };
        let Some((tag, rest)) = rest.split_once('-') else {
            continue;
        };
        if !TEMP_TAGS.contains(&tag) {
            continue;
        }
        // An old copy moved aside is the only copy when its writer died before the new one was
        // renamed into place.
        if tag == "old" && !path.exists() {
            continue;
        }
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Syncs every file under `dir`, once each, so that a write error that the file system reports
/// late (NFS, quotas) is seen before the data is renamed into place.
pub fn sync_tree(dir: &Path) -> Result<()> {
    let err = |p: &Path, e: std::io::Error| Error::Io(format!("{}: {e}", p.display()));
    for e in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let p = e.map_err(|e| err(dir, e))?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| err(&p, e))?;
        }
    }
    Ok(())
}

/// `p` with symbolic links and `..` resolved, also when `p` itself does not exist yet (its
/// nearest existing ancestor is resolved and the rest appended).
pub fn resolved(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return rest.iter().rev().fold(c, |acc, r| acc.join(r));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Whether `a` and `b` are one file (also through hard links) or one lies inside the other.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (ra, rb) = (resolved(a), resolved(b));
    if ra.starts_with(&rb) || rb.starts_with(&ra) {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) => ma.is_file() && ma.dev() == mb.dev() && ma.ino() == mb.ino(),
        _ => false,
    }
}

/// Refuses an output that is one of the inputs (or inside one, or holds one): writing it would
/// replace or corrupt what is being read. Each entry is (flag, path).
pub fn refuse_output_over_inputs(output: (&str, &Path), inputs: &[(&str, &Path)]) -> Result<()> {
    let (oflag, out) = output;
    for (iflag, input) in inputs {
        if overlaps(out, input) {
            return Err(Error::Invalid(format!(
                "{oflag} {} is the same file as {iflag} {} (or one contains the other); writing it would destroy the input: choose another {oflag}",
                out.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

const NOT_WRITTEN: &str = "not written: ";

/// A failed write of `target`, in one line with what to do. Errors other than I/O pass through
/// (they already say what was wrong with the request).
pub fn not_written(target: &str, e: Error) -> Error {
    match e {
        Error::Io(d) if !d.contains(NOT_WRITTEN) => Error::Io(format!(
            "{target}: {NOT_WRITTEN}{}; nothing was put at {target} (a previous version there is unchanged): free space on that disk or choose another location",
            one_line(&d)
        )),
        other => other,
    }
}

/// Messages from the HDF5 library carry newlines; the binary prints one line per error.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PID that no process has: past the kernel's maximum.
    fn dead_pid() -> u32 {
        std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(4_194_304)
            + 1
    }

    #[test]
    fn stale_temps_of_dead_writers_go_live_ones_stay() {
        let d = std::env::temp_dir().join(format!("revseg-fsutil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let target = d.join("a.zarr");
        let dead = dead_pid();
        // PID 1 always runs: it stands for a live writer.
        let names = [
            format!(".a.zarr.partial-{dead}-0"),
            format!(".a.zarr.tmp-{dead}-3"),
            format!(".a.zarr.partial-1-0"),
            format!(".a.zarr.old-{dead}-0"),
            format!(".b.zarr.partial-{dead}-0"),
        ];
        for n in &names {
            std::fs::create_dir_all(d.join(n).join("sub")).unwrap();
        }
        std::fs::write(d.join(format!(".a.zarr.partial-{dead}")), b"x").unwrap();
        remove_stale_temps(&target);
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // The old copy stays while the target is missing: it may be the only one.
        let mut want = vec![names[2].clone(), names[3].clone(), names[4].clone()];
        want.sort();
        assert_eq!(left, want);
        std::fs::create_dir(&target).unwrap();
        remove_stale_temps(&target);
        assert!(!d.join(&names[3]).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn overlap_sees_through_relative_paths_links_and_containment() {
        let d = std::env::temp_dir().join(format!("revseg-overlap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("x")).unwrap();
        let f = d.join("x/a.h5");
        std::fs::write(&f, b"1").unwrap();
        std::fs::hard_link(&f, d.join("hard.h5")).unwrap();
        std::os::unix::fs::symlink(d.join("x"), d.join("ln")).unwrap();
        assert!(overlaps(&f, &d.join("x/../x/a.h5")));
        assert!(overlaps(&f, &d.join("ln/a.h5")));
        assert!(overlaps(&f, &d.join("hard.h5")));
        assert!(overlaps(&d.join("x"), &d.join("ln/new/out.zarr")));
        assert!(!overlaps(&f, &d.join("x/b.h5")));
        assert!(!overlaps(&d.join("x/a.zarr"), &d.join("x/a.zarr2")));
        let e = refuse_output_over_inputs(("--output", &d.join("ln/a.h5")), &[("--input", &f)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--output") && e.contains("--input"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
