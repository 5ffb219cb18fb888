//! Builds the kernels of kernels/*.cu twice:
//!
//! 1. Always: for the CPU with g++ (the emulator, `src/backend/gpu/emu.rs`): every kernel file twice,
//!    with the checks' instrumentation (races, bounds, uninitialised shared memory; run when
//!    REVSEG_EMU_RACECHECK=1) and without it (REVSEG_EMU_FAST: plain loads and stores, for speed),
//!    the runtime (kernels/emu/runtime.cpp) and a generated registry of the kernels by name, into one
//!    static library. g++ is called directly rather than through the `cc` crate: one compiler, one
//!    flag set, nothing to configure, and one dependency fewer.
//! 2. Where nvcc is found: to PTX for compute_80 and compute_90, all warnings errors, and that PTX
//!    assembled by ptxas into sm_80 and sm_90 cubins (what `nvcc -cubin -arch=sm_XX` makes, from the
//!    very PTX that is embedded). Both are embedded in the binary: the CUDA launcher loads the cubin
//!    of the device's architecture, so the machine code checked here (and by scripts/kernel-report)
//!    is the code that runs, and the PTX (JIT-compiled by the driver) elsewhere. Where nvcc is not
//!    found, the sources are embedded for NVRTC at first use, with one cargo warning.
//!
//! Either way `$OUT_DIR/kernels.rs` lists every kernel (name, file, argument struct) from its
//! `REVSEG_KERNEL(name, Args)` / `REVSEG_KERNEL_SYNC(name, Args)` line, so the Rust side, the
//! emulator's registry and the CUDA module loader cannot disagree on what exists.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// PTX and cubin targets: Ampere (A100; its cubin also runs on 8.6 and 8.9) and Hopper (H100/H200).
/// The driver JIT-compiles the compute_90 PTX for newer devices.
const ARCHS: [u32; 2] = [80, 90];
/// The newest PTX ISA the GPU machines' driver (580, CUDA 13.0) loads.
const MAX_PTX_ISA: (u32, u32) = (9, 0);

/// Test-only kernels of the emulator (relative to kernels/, without .cu).
const FAULTY: &str = "emu/faulty";

struct Kernel {
    name: String,
    file: String,
    args: String,
    sync: bool,
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kdir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    for v in ["NVCC", "CUDA_HOME", "CXX", "REVSEG_NO_NVCC"] {
        println!("cargo:rerun-if-env-changed={v}");
    }

    let mut files: Vec<String> = fs::read_dir(&kdir)
        .expect("kernels/ folder")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".cu").map(str::to_string)
        })
        .collect();
    files.sort();
    let kernels = scan_kernels(&kdir, &files);
    // Broken on purpose, for the tests of the emulator's checks: emulator only, never on a GPU.
    let emu_files: Vec<String> = files.iter().cloned().chain([FAULTY.to_string()]).collect();
    let emu_kernels = scan_kernels(&kdir, &emu_files);

    build_emulator(&kdir, &out, &emu_files, &emu_kernels);

    let nvcc = if env::var_os("REVSEG_NO_NVCC").is_some() {
        None
    } else {
        find_nvcc(&root)
    };
    let ptx_from = match &nvcc {
        Some(nvcc) => Some(build_ptx(nvcc, &kdir, &out, &files)),
        None => {
            println!(
                "cargo:warning=no nvcc found (NVCC, .venv, CUDA_HOME, PATH): CUDA kernels will be compiled with NVRTC at first use; scripts/test installs nvcc 13.0 into .venv"
            );
            None
        }
    };
    write_table(&kdir, &out, &files, &kernels, ptx_from.as_deref());
}

/// Every `REVSEG_KERNEL[_SYNC](name, Args)` at the start of a line.
fn scan_kernels(kdir: &Path, files: &[String]) -> Vec<Kernel> {
    let mut ks = Vec::new();
    for f in files {
        let src = fs::read_to_string(kdir.join(format!("{f}.cu"))).unwrap();
        for line in src.lines() {
            let (rest, sync) = if let Some(r) = line.strip_prefix("REVSEG_KERNEL_SYNC(") {
                (r, true)
            } else if let Some(r) = line.strip_prefix("REVSEG_KERNEL(") {
                (r, false)
            } else {
                continue;
            };
            let inner = rest.split(')').next().unwrap_or("");
            let mut parts = inner.split(',').map(str::trim);
            let (Some(name), Some(args)) = (parts.next(), parts.next()) else {
                panic!("kernels/{f}.cu: cannot read the kernel declaration `{line}`");
            };
            if ks.iter().any(|k: &Kernel| k.name == name) {
                panic!("kernel {name} is declared twice");
            }
            ks.push(Kernel {
                name: name.to_string(),
                file: f.clone(),
                args: args.to_string(),
                sync,
            });
        }
    }
    ks
}

fn wait_all(what: &str, jobs: Vec<(String, Child)>) {
    let mut failed = Vec::new();
    for (label, child) in jobs {
        let o = child.wait_with_output().expect("compiler process");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if !o.status.success() || !text.trim().is_empty() {
            failed.push(format!("{label}:\n{text}"));
        }
    }
    if !failed.is_empty() {
        panic!(
            "{what} failed (kernels must compile without warnings):\n{}",
            failed.join("\n")
        );
    }
}

fn run_checked(cmd: &mut Command, what: &str) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    if !o.status.success() {
        panic!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

fn build_emulator(kdir: &Path, out: &Path, files: &[String], kernels: &[Kernel]) {
    let mut reg = String::from(
        "// Generated by build.rs from the kernel declarations of kernels/*.cu.\n\
         #include \"common.cuh\"\n#include \"emu/registry.h\"\n\n",
    );
    for k in kernels {
        writeln!(
            reg,
            "extern \"C\" void {0}__emu(const void*);\nextern \"C\" void {0}__emu_fast(const void*);",
            k.name
        )
        .unwrap();
    }
    reg += "\nextern const EmuKernelEntry emu_kernels[] = {\n";
    for k in kernels {
        writeln!(
            reg,
            "    {{\"{0}\", {0}__emu, {0}__emu_fast, {1}, sizeof({2})}},",
            k.name, k.sync as u8, k.args
        )
        .unwrap();
    }
    writeln!(
        reg,
        "}};\nextern const std::size_t emu_kernel_count = {};",
        kernels.len()
    )
    .unwrap();
    let reg_path = out.join("emu_registry.cpp");
    fs::write(&reg_path, reg).unwrap();

    let cxx = env::var("CXX").unwrap_or_else(|_| "g++".into());
    // (object name, source, whether its memory accesses are watched by the checks); each kernel
    // file twice: watched, and fast (the same code without the instrumentation)
    let mut sources: Vec<(String, PathBuf, bool)> = Vec::new();
    for f in files {
        let src = kdir.join(format!("{f}.cu"));
        sources.push((f.replace('/', "_"), src.clone(), true));
        sources.push((format!("{}.fast", f.replace('/', "_")), src, false));
    }
    sources.push(("emu_runtime".into(), kdir.join("emu/runtime.cpp"), false));
    sources.push(("emu_checks".into(), kdir.join("emu/checks.cpp"), false));
    sources.push(("emu_warp".into(), kdir.join("emu/warp.cpp"), false));
    sources.push(("emu_registry".into(), reg_path, false));
    let mut jobs = Vec::new();
    let mut objects = Vec::new();
    for (name, src, watched) in &sources {
        let obj = out.join(format!("emu_{name}.o"));
        let mut cmd = Command::new(&cxx);
        if *watched {
            // ThreadSanitizer's instrumentation without its runtime: g++ calls __tsan_read4(addr)
            // etc. before every non-local access, and kernels/emu/checks.cpp defines those calls
            // (bounds, races, uninitialised shared memory). Line tables let a report's code
            // address be resolved to a source line with addr2line.
            cmd.args([
                "-fsanitize=thread",
                "--param=tsan-instrument-func-entry-exit=0",
                "-g1",
            ]);
        } else {
            cmd.arg("-g0");
        }
        let fast = name.ends_with(".fast");
        if fast {
            cmd.arg("-DREVSEG_EMU_FAST");
        }
        let child = cmd
            .args(["-x", "c++", "-std=c++17", "-O2", "-fPIC"])
            // The emulated thread indices are thread-locals read in every kernel's inner loops; the
            // initial-exec model makes each read one instruction instead of a call.
            .arg("-ftls-model=initial-exec")
            // Fibers switch stacks with _longjmp, which the fortified longjmp would reject.
            .arg("-U_FORTIFY_SOURCE")
            .args(["-Wall", "-Wextra", "-Werror", "-DREVSEG_EMU", "-I"])
            .arg(kdir)
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run the C++ compiler `{cxx}` (the kernel emulator needs g++): {e}")
            });
        jobs.push((format!("{cxx} {}", src.display()), child));
        objects.push(obj);
    }
    wait_all("compiling the kernel emulator", jobs);
    check_emu_symbols(&sources, &objects);
    let lib = out.join("librevseg_emu.a");
    let _ = fs::remove_file(&lib);
    let ar = env::var("AR").unwrap_or_else(|_| "ar".into());
    run_checked(
        Command::new(ar).arg("crs").arg(&lib).args(&objects),
        "archiving the kernel emulator",
    );
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=revseg_emu");
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

/// A kernel file's two objects may define no global symbol but their kernel entries (`*__emu`,
/// `*__emu_fast`): an inline function or a template's static defined in both would be merged by
/// the linker into one copy, and the checked kernels would then run the fast one's code (or the
/// reverse). kernels/emu/cuda_emu.h gives device functions internal linkage so that this holds.
fn check_emu_symbols(sources: &[(String, PathBuf, bool)], objects: &[PathBuf]) {
    let nm = env::var("NM").unwrap_or_else(|_| "nm".into());
    for ((name, src, _), obj) in sources.iter().zip(objects) {
        if src.extension().is_none_or(|e| e != "cu") {
            continue; // the runtime, the checks, the warps and the registry: compiled once
        }
        let o = Command::new(&nm)
            .args(["--defined-only", "--extern-only", "--format=posix"])
            .arg(obj)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run `{nm}` (binutils) on the emulator's objects: {e}")
            });
        if !o.status.success() {
            panic!(
                "{nm} {} failed: {}",
                obj.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let suffix = if name.ends_with(".fast") {
            "__emu_fast"
        } else {
            "__emu"
        };
        let stray: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|sym| !sym.ends_with(suffix))
            .map(str::to_string)
            .collect();
        if !stray.is_empty() {
            panic!(
                "{}: the emulator's build defines global symbols other than its kernels ({}): declare \
                 device functions with __device__ (internal linkage in the emulator) and keep \
                 namespace-scope variables static or constexpr",
                src.display(),
                stray.join(", ")
            );
        }
    }
}

/// nvcc in order: $NVCC; the project's pinned pip install (.venv, what scripts/test installs: its
/// version is the one the GPU machines' driver loads); $CUDA_HOME/bin; PATH.
fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        panic!(
            "NVCC={} is not a file; unset it or point it at nvcc",
            p.display()
        );
    }
    if let Ok(libs) = fs::read_dir(root.join(".venv/lib")) {
        let mut pys: Vec<PathBuf> = libs.filter_map(|e| Some(e.ok()?.path())).collect();
        pys.sort();
        for py in pys {
            let p = py.join("site-packages/nvidia/cu13/bin/nvcc");
            if p.is_file() {
                println!("cargo:rerun-if-changed={}", p.display());
                return Some(p);
            }
        }
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        let p = PathBuf::from(home).join("bin/nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
}

/// Compiles every kernel file for every arch; returns a description of the compiler.
fn build_ptx(nvcc: &Path, kdir: &Path, out: &Path, files: &[String]) -> String {
    let version = Command::new(nvcc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .and_then(|v| {
            v.lines()
                .find(|l| l.contains("release"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{} --version failed", nvcc.display()));
    let ptxas = nvcc.with_file_name("ptxas");
    if !ptxas.is_file() {
        panic!(
            "{} has no ptxas beside it; the cubins embedded for sm_80 and sm_90 need it (set NVCC to a full CUDA toolkit's nvcc, or REVSEG_NO_NVCC=1 for NVRTC at run time)",
            nvcc.display()
        );
    }
    let mut jobs = Vec::new();
    for f in files {
        for arch in ARCHS {
            let ptx = out.join(format!("{f}.sm{arch}.ptx"));
            let child = Command::new(nvcc)
                .arg(format!("-arch=compute_{arch}"))
                .args(["-ptx", "-std=c++17", "-O3", "-lineinfo"])
                .args(["-Werror", "all-warnings", "-I"])
                .arg(kdir)
                .arg(kdir.join(format!("{f}.cu")))
                .arg("-o")
                .arg(&ptx)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
            jobs.push((format!("nvcc {f}.cu compute_{arch}"), child));
        }
    }
    wait_all("compiling the CUDA kernels with nvcc", jobs);
    let mut jobs = Vec::new();
    for f in files {
        for arch in ARCHS {
            let ptx = out.join(format!("{f}.sm{arch}.ptx"));
            let text = fs::read_to_string(&ptx).unwrap();
            check_ptx_isa(&ptx, &text);
            // ptxas turns the PTX into the machine code that is embedded and loaded on devices of
            // this architecture: register or shared-memory overuse fails here rather than at the
            // first launch on a GPU. Line tables for compute-sanitizer's reports. It has no
            // -Werror; wait_all fails on any output instead.
            {
                let child = Command::new(&ptxas)
                    .arg(format!("-arch=sm_{arch}"))
                    .args(["-O3", "-lineinfo"])
                    .arg(&ptx)
                    .arg("-o")
                    .arg(out.join(format!("{f}.sm{arch}.cubin")))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
                jobs.push((format!("ptxas {f} sm_{arch}"), child));
            }
        }
    }
    wait_all("assembling the PTX into cubins with ptxas", jobs);
    format!("nvcc ({version})")
}

fn check_ptx_isa(path: &Path, text: &str) {
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .and_then(|v| {
            let (a, b) = v.trim().split_once('.')?;
            Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
        })
        .unwrap_or_else(|| panic!("{}: no .version line", path.display()));
    if v > MAX_PTX_ISA && env::var_os("REVSEG_ALLOW_NEWER_PTX").is_none() {
        panic!(
            "{}: PTX ISA {}.{} is newer than {}.{} (CUDA 13.0), which the GPU machines' driver 580 cannot load. \
             Use nvcc 13.0 (scripts/test installs it into .venv; or set NVCC), or set REVSEG_ALLOW_NEWER_PTX=1 for a newer driver.",
            path.display(),
            v.0,
            v.1,
            MAX_PTX_ISA.0,
            MAX_PTX_ISA.1
        );
    }
}

fn write_table(
    kdir: &Path,
    out: &Path,
    files: &[String],
    kernels: &[Kernel],
    ptx_from: Option<&str>,
) {
    let mut t = String::from("// Generated by build.rs.\n");
    writeln!(
        t,
        "pub const PTX_COMPILER: Option<&str> = {};",
        match ptx_from {
            Some(s) => format!("Some({s:?})"),
            None => "None".into(),
        }
    )
    .unwrap();
    t += "/// (kernel, file, argument struct, uses __syncthreads)\n";
    t += "pub const KERNELS: &[(&str, &str, &str, bool)] = &[\n";
    for k in kernels {
        writeln!(
            t,
            "    ({:?}, {:?}, {:?}, {}),",
            k.name, k.file, k.args, k.sync
        )
        .unwrap();
    }
    t += "];\n/// (file, arch, PTX)\npub const PTX: &[(&str, u32, &str)] = &[\n";
    if ptx_from.is_some() {
        for f in files {
            for arch in ARCHS {
                let p = out.join(format!("{f}.sm{arch}.ptx"));
                writeln!(t, "    ({f:?}, {arch}, include_str!({:?})),", p.display()).unwrap();
            }
        }
    }
    t += "];\n/// (file, arch, cubin): ptxas's machine code from the PTX above, loaded on devices of that arch\n";
    t += "pub const CUBIN: &[(&str, u32, &[u8])] = &[\n";
    if ptx_from.is_some() {
        for f in files {
            for arch in ARCHS {
                let p = out.join(format!("{f}.sm{arch}.cubin"));
                writeln!(t, "    ({f:?}, {arch}, include_bytes!({:?})),", p.display()).unwrap();
            }
        }
    }
    t += "];\n/// (file, CUDA source) for NVRTC; `#include \"common.cuh\"` is resolved from COMMON.\n";
    t += "pub const SOURCES: &[(&str, &str)] = &[\n";
    for f in files {
        let p = kdir.join(format!("{f}.cu"));
        writeln!(t, "    ({f:?}, include_str!({:?})),", p.display()).unwrap();
    }
    writeln!(
        t,
        "];\npub const COMMON: &str = include_str!({:?});\npub const INTRINSICS: &str = include_str!({:?});",
        kdir.join("common.cuh").display(),
        kdir.join("intrinsics.cuh").display()
    )
    .unwrap();
    fs::write(out.join("kernels.rs"), t).unwrap();
}
