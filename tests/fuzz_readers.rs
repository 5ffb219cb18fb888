//! Mutation fuzzing of every reader: mutated files must give errors, never panics. Run longer
//! with `REVSEG_FUZZ_SECS=600 cargo test --release --test fuzz_readers`.

mod fuzz;

use revseg::volume::array::{Array, Dtype};
use revseg::volume::io::{create_volume_with, open_volume, WriteOptions};
use std::path::{Path, PathBuf};

const ZARR_FIXTURES: [&str; 10] = [
    "v2_zlib_be_u2.zarr",
    "v2_zstd_f8.zarr",
    "v3_gzip_u4.zarr",
    "v3_zstd_crc_u8.zarr",
    "v3_fill_u1.zarr",
    "v2_fill_f4_F.zarr",
    "v2_blosc_u2.zarr",
    "v3_sharded_f4.zarr",
    "v2_blosc_f2.zarr",
    "v3_gzip_f2_fill.zarr",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A 3 x 5 x 7 ramp (not all zero) written by the project's own writer at `spec`.
fn write_ramp(spec: &str, opt: &WriteOptions) {
    let shape = vec![3, 5, 7];
    let data: Vec<u16> = (0..105u16).map(|i| i * 601 % 65521).collect();
    let mut w = create_volume_with(spec, &shape, Dtype::U16, opt).unwrap();
    w.write_region(&[0, 0, 0], &Array::new(shape, data).unwrap())
        .unwrap();
    w.finish().unwrap();
}

/// Opens `spec` and reads it whole and in part, as each dtype the reader may convert to.
fn open_and_read(spec: &str) {
    let Ok(r) = open_volume(spec) else { return };
    let _ = r.read_all::<f64>();
    let _ = r.read_all::<u64>();
    let _ = r.read_all::<u8>();
    if r.shape().iter().all(|&d| d >= 2) {
        let off = vec![1; r.shape().len()];
        let _ = r.read_region::<f32>(&off, &vec![1; r.shape().len()]);
    }
}

/// The zarr arrays the zarr targets mutate: the fixtures and two written by revseg, copied into
/// `dir` (they are rewritten in place there).
fn zarr_arrays(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in ZARR_FIXTURES {
        let to = dir.join(f);
        copy_dir(&fixture(f), &to);
        out.push(to);
    }
    for (name, v3) in [("own_v2.zarr", false), ("own_v3.zarr", true)] {
        let p = dir.join(name);
        let opt = WriteOptions {
            chunks: Some(vec![2, 3, 4]),
            compress: true,
            zarr_v3: v3,
            ..WriteOptions::default()
        };
        write_ramp(p.to_str().unwrap(), &opt);
        out.push(p);
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

fn meta_file(array: &Path) -> PathBuf {
    let v2 = array.join(".zarray");
    if v2.exists() {
        v2
    } else {
        array.join("zarr.json")
    }
}

/// Chunk files of an array, in a stable order.
fn chunk_files(array: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if !p.file_name().unwrap().to_str().unwrap().contains("zarr") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(array, &mut out);
    out.retain(|p| !p.file_name().unwrap().to_str().unwrap().starts_with(".z"));
    out.sort();
    out
}

/// A target: its seeds, whether it is text, and the call that must not panic. Inputs of the
/// zarr targets begin with one byte naming the array (and one naming the chunk).
struct Target {
    seeds: Vec<Vec<u8>>,
    text: bool,
    run: Box<dyn Fn(&[u8])>,
}

fn target(name: &str) -> Target {
    let dir = fuzz::scratch(name);
    match name {
        "tiff" => {
            let own = dir.join("own.tif");
            write_ramp(own.to_str().unwrap(), &WriteOptions::default());
            let mut seeds: Vec<Vec<u8>> = [
                "stack_u16_imagej.tif",
                "stack_u8_tiled.tif",
                "stack_u32_deflate_be.tif",
                "stack_f32.tif",
            ]
            .iter()
            .map(|f| read(&fixture(f)))
            .collect();
            seeds.push(read(&own));
            let file = dir.join("in.tif");
            Target {
                seeds,
                text: false,
                run: Box::new(move |b| {
                    std::fs::write(&file, b).unwrap();
                    open_and_read(file.to_str().unwrap());
                }),
            }
        }
        "hdf5" => {
            let mut seeds = Vec::new();
            for (i, compress) in [false, true].into_iter().enumerate() {
                let p = dir.join(format!("own{i}.h5"));
                let opt = WriteOptions {
                    chunks: Some(vec![2, 3, 4]),
                    compress,
                    ..WriteOptions::default()
                };
                write_ramp(&format!("{}:/main", p.display()), &opt);
                seeds.push(read(&p));
            }
            let file = dir.join("in.h5");
            Target {
                seeds,
                text: false,
                run: Box::new(move |b| {
                    std::fs::write(&file, b).unwrap();
                    open_and_read(&format!("{}:/main", file.display()));
                }),
            }
        }
        "zarr_meta" => {
            let arrays = zarr_arrays(&dir);
            let seeds = arrays
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let mut s = vec![i as u8];
                    s.extend(read(&meta_file(a)));
                    s
                })
                .collect();
            Target {
                seeds,
                text: true,
                run: Box::new(move |b| {
                    let Some((&i, text)) = b.split_first() else {
                        return;
                    };
                    let a = &arrays[i as usize % arrays.len()];
                    std::fs::write(meta_file(a), text).unwrap();
                    open_and_read(a.to_str().unwrap());
                }),
            }
        }
        "zarr_chunks" => {
            let arrays = zarr_arrays(&dir);
            let chunks: Vec<Vec<PathBuf>> = arrays.iter().map(|a| chunk_files(a)).collect();
            let mut seeds = Vec::new();
            for (i, cs) in chunks.iter().enumerate() {
                for (j, c) in cs.iter().enumerate().take(4) {
                    let mut s = vec![i as u8, j as u8];
                    s.extend(read(c));
                    seeds.push(s);
                }
            }
            Target {
                seeds,
                text: false,
                run: Box::new(move |b| {
                    let [i, j, bytes @ ..] = b else { return };
                    let i = *i as usize % arrays.len();
                    let c = &chunks[i][*j as usize % chunks[i].len()];
                    let orig = read(c);
                    std::fs::write(c, bytes).unwrap();
                    open_and_read(arrays[i].to_str().unwrap());
                    std::fs::write(c, orig).unwrap();
                }),
            }
        }
        "safetensors" => {
            let own = dir.join("own.safetensors");
            let w: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
            revseg::checkpoint::save(
                &own,
                &[
                    ("conv.weight", vec![2, 3, 4], &w[..]),
                    ("b", vec![2], &w[..2]),
                ],
                &[("config".to_string(), "{\"steps\": 3}".to_string())],
            )
            .unwrap();
            let seeds = vec![
                read(&fixture("reference.safetensors")),
                read(&fixture("reference_one_meta.safetensors")),
                read(&own),
            ];
            let file = dir.join("in.safetensors");
            Target {
                seeds,
                text: false,
                run: Box::new(move |b| {
                    std::fs::write(&file, b).unwrap();
                    let _ = revseg::checkpoint::load(&file);
                }),
            }
        }
        "toml" => {
            let seeds = [
                "# a run\n[net]\nwidths = [12, 16, 24]\nrev_blocks = 3\nnorm = \"batch\"\noutputs = 3\npatch = [8, 64, 64]\n",
                "[train]\nsteps = 200\nlr = 0.002\nadam_eps = 1e-8\nbn_momentum = 0.1\nseed = 7\nval_every = 20\nval_fraction = 0.25\n",
                "plateau_patience = 5\ncheckpoint_every = 50\naugment = false\nstore_all = true\nvoxel_size = [40, 4, 4]\n",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
            Target {
                seeds,
                text: true,
                run: Box::new(|b| {
                    let text = String::from_utf8_lossy(b);
                    let mut c = revseg::train::TrainConfig::default();
                    if c.apply_toml(&text, "fuzz").is_ok() {
                        let _ = c.validate();
                    }
                }),
            }
        }
        other => panic!("no fuzz target '{other}'"),
    }
}

fn fuzz_target(name: &str) {
    let t = target(name);
    fuzz::fuzz(name, &t.seeds, t.text, |b| (t.run)(b));
}

#[test]
fn fuzz_tiff() {
    fuzz_target("tiff");
}

#[test]
fn fuzz_hdf5() {
    fuzz_target("hdf5");
}

#[test]
fn fuzz_zarr_metadata() {
    fuzz_target("zarr_meta");
}

#[test]
fn fuzz_zarr_chunks() {
    fuzz_target("zarr_chunks");
}

#[test]
fn fuzz_safetensors() {
    fuzz_target("safetensors");
}

#[test]
fn fuzz_toml_config() {
    fuzz_target("toml");
}

/// Every saved crash replays through its target without a panic (inputs whose fix waits on
/// another change are named `<target>-pending-*` and replayed by their own ignored test).
#[test]
fn saved_crashes_replay_without_panic() {
    let Ok(rd) = std::fs::read_dir(fuzz::crash_dir()) else {
        return;
    };
    let mut files: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut failed = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let Some((t, rest)) = name.split_once('-') else {
            continue;
        };
        if rest.starts_with("pending") {
            continue;
        }
        revseg::alloc::set_cap(fuzz::FUZZ_ALLOC_CAP);
        let tg = target(t);
        if let Err(e) = fuzz::run_one(t, &read(&f), &*tg.run) {
            failed.push(e);
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
