//! The emulator's checks against deliberately broken kernels (kernels/emu/faulty.cu, compiled into
//! the emulator only): each check reports the fault it exists for, names the kernel, block and
//! threads, and stays quiet on the corrected kernel. Also: schedules change the bits of a racy
//! kernel and not of a correct one.

use revseg::backend::gpu::args::{EwArgs, KernelArgs};
use revseg::backend::gpu::emu::{EmuConfig, Schedule};
use revseg::backend::gpu::{EmuLauncher, Launcher};
use revseg::error::Result;

const THREADS: usize = 256;
const ALL: [Schedule; 3] = [
    Schedule::Ascending,
    Schedule::Descending,
    Schedule::Random(7),
];

fn input() -> Vec<f32> {
    (0..THREADS).map(|i| 1.0 + i as f32).collect()
}

/// Runs `kernel` on one block of 256 threads: `a` is the first `region` floats of a buffer of
/// `buffer` floats holding `input`, `out` a zeroed buffer of 256.
fn launch(
    kernel: &str,
    schedule: Schedule,
    check: bool,
    region: usize,
    buffer: usize,
) -> Result<Vec<f32>> {
    let l = EmuLauncher::with_config(EmuConfig { schedule, check });
    let mut a = l.alloc(buffer)?;
    let mut o = l.alloc(THREADS)?;
    let mut init = input();
    init.resize(buffer, 0.5);
    l.upload(&mut a, 0, &init)?;
    l.upload(&mut o, 0, &[0.0; THREADS])?;
    let (ap, op) = (l.device_ptr(&mut a), l.device_ptr(&mut o));
    l.clear_regions();
    l.note_region(ap, region);
    l.note_region(op, THREADS);
    let args = EwArgs {
        a: ap,
        out: op,
        n: region as i32,
        ..Default::default()
    };
    l.launch(kernel, [1, 1, 1], [THREADS as u32, 1, 1], 0, args.bytes())?;
    let mut out = vec![0.0; THREADS];
    l.download(&o, 0, &mut out)?;
    Ok(out)
}

fn run(kernel: &str, schedule: Schedule, check: bool) -> Result<Vec<f32>> {
    launch(kernel, schedule, check, THREADS, THREADS)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The error of a checked run, which must name the kernel, the block and what was found.
fn report(kernel: &str, schedule: Schedule, what: &str) -> String {
    let e = run(kernel, schedule, true)
        .expect_err(&format!("{kernel}: the check found nothing"))
        .to_string();
    for needle in [kernel, "block (0,0,0)", "thread (", what] {
        assert!(e.contains(needle), "{kernel}: report lacks {needle:?}: {e}");
    }
    e
}

/// What each thread should see once the exchange is right: out[t] = in[t - 1].
fn shifted() -> Vec<f32> {
    let x = input();
    (0..THREADS)
        .map(|t| if t > 0 { x[t - 1] } else { 0.0 })
        .collect()
}

#[test]
fn schedules_expose_a_missing_barrier() {
    // Under the old fixed order (ascending) the bug is invisible: the writer ran first.
    let asc = run("faulty_missing_sync", Schedule::Ascending, false).unwrap();
    assert_eq!(bits(&asc), bits(&shifted()));
    // Descending runs the reader first: it reads the poison of a fresh block (0xFF bytes).
    let desc = run("faulty_missing_sync", Schedule::Descending, false).unwrap();
    assert_ne!(bits(&asc), bits(&desc));
    assert_eq!(desc[1].to_bits(), u32::MAX);
    let rnd = run("faulty_missing_sync", Schedule::Random(3), false).unwrap();
    assert_ne!(bits(&asc), bits(&rnd));
    // The fixed kernel gives the same bits under every schedule, with the checks on.
    for s in ALL {
        let v = run("faulty_fixed_sync", s, true).unwrap();
        assert_eq!(bits(&v), bits(&shifted()), "{s:?}");
    }
}

#[test]
fn racecheck_reports_shared_memory_races() {
    // Even under the schedule that hides it from the output.
    let e = report(
        "faulty_missing_sync",
        Schedule::Ascending,
        "no __syncthreads between",
    );
    assert!(e.contains("shared-memory word"), "{e}");
    report(
        "faulty_tree_no_sync",
        Schedule::Descending,
        "no __syncthreads between",
    );
}

#[test]
fn uninitialised_shared_memory_is_poison_and_reported() {
    let v = run("faulty_uninit_shared", Schedule::Ascending, false).unwrap();
    assert!(v.iter().all(|x| x.to_bits() == u32::MAX), "{:?}", &v[..4]);
    report(
        "faulty_uninit_shared",
        Schedule::Ascending,
        "reads uninitialised",
    );
}

#[test]
fn racecheck_reports_global_write_conflicts() {
    run("faulty_global_race", Schedule::Ascending, false).unwrap();
    let e = report(
        "faulty_global_race",
        Schedule::Random(1),
        "writes the word another thread wrote",
    );
    assert!(e.contains("word 0 of region 1"), "{e}");
}

#[test]
fn bounds_are_the_regions_not_the_buffers() {
    // The input region is the first 256 floats of a buffer of 512: reading element 256 stays in
    // the buffer (the value is there to be read) and is still out of bounds.
    let e = launch(
        "faulty_out_of_bounds",
        Schedule::Ascending,
        true,
        THREADS,
        512,
    )
    .expect_err("an access past its region was not reported")
    .to_string();
    assert!(
        e.contains("out of bounds") && e.contains("thread (255,0,0)"),
        "{e}"
    );
    // Past the end of the buffer itself: the guard zone, reported the same way.
    let e = run("faulty_out_of_bounds", Schedule::Ascending, true).unwrap_err();
    assert!(e.to_string().contains("out of bounds"), "{e}");
    // Checks off: the read happens (into the guard zone's NaN) and nothing is said.
    let v = run("faulty_out_of_bounds", Schedule::Ascending, false).unwrap();
    assert!(v[255].is_nan() && v[0] == 2.0);
}

#[test]
fn divergent_barrier_is_an_error_and_the_emulator_recovers() {
    for check in [false, true] {
        let e = run("faulty_divergent_sync", Schedule::Ascending, check)
            .expect_err("a barrier reached by 32 of 256 threads passed")
            .to_string();
        assert!(e.contains("divergent __syncthreads"), "{e}");
        assert!(e.contains("faulty.cu:"), "names the barrier's line: {e}");
    }
    // The abandoned fibers start afresh: the next block runs correctly on the same threads.
    for s in ALL {
        let v = run("faulty_fixed_sync", s, true).unwrap();
        assert_eq!(bits(&v), bits(&shifted()));
    }
}

#[test]
fn schedule_names_parse() {
    assert_eq!(Schedule::parse("ascending").unwrap(), Schedule::Ascending);
    assert_eq!(Schedule::parse("descending").unwrap(), Schedule::Descending);
    assert_eq!(Schedule::parse("random:42").unwrap(), Schedule::Random(42));
    for bad in ["", "random", "random:x", "reverse"] {
        let e = Schedule::parse(bad).unwrap_err().to_string();
        assert!(e.contains("REVSEG_EMU_SCHEDULE"), "{e}");
    }
}
