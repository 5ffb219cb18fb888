//! Checkpoints in the safetensors format (huggingface/safetensors), written and read here so
//! that PyTorch can load our weights with `safetensors.torch.load_file` and we can load theirs.
//!
//! Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data bytes.
//! The JSON object maps each tensor name to `{"dtype": "F32", "shape": [...], "data_offsets":
//! [begin, end]}` (byte offsets into the data, end exclusive) and may hold `"__metadata__"`, a
//! map of string to string. As the reference writer does, tensors are laid out in name order
//! (all are F32, so its "by alignment, then by name" is by name), contiguously from offset 0,
//! and the header is padded with spaces to a multiple of 8 bytes so that the data is aligned.
//! As the reference reader does, loading requires the offsets to cover the data exactly: no
//! gaps, no overlaps, nothing after the last tensor. Only F32 is read: every tensor of our
//! network is f32, and a silently converted dtype would hide a mistake.
//!
//! Saving writes a temporary file in the target's directory, fsyncs it, renames it over the
//! target and fsyncs the directory: a crash at any moment leaves either the previous checkpoint
//! or the new one at the path, never a mixture. Temporary files of writers that died (their
//! process no longer exists) are removed by the next save of the same path.

use crate::error::{Error, Result};
use crate::json::{self, Json};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The reference implementation's limit; a larger header is a corrupt length field.
const MAX_HEADER: usize = 100_000_000;

/// A loaded checkpoint: tensors in file order (by name for files we write) and metadata in
/// header order.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub metadata: Vec<(String, String)>,
}

impl Checkpoint {
    /// Shape and values of a tensor.
    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.tensors
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, s, d)| (s.as_slice(), d.as_slice()))
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "{}: not a valid safetensors checkpoint: {what}",
        path.display()
    ))
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// The header bytes (padded) for tensors already sorted by name.
fn header(
    path: &Path,
    tensors: &[(&str, &[usize], &[f32])],
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let mut h: Vec<(String, Json)> = Vec::with_capacity(tensors.len() + 1);
    if !metadata.is_empty() {
        let m = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Json::from(v.as_str())));
        h.push(("__metadata__".into(), json::obj(m)));
    }
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let end = data
            .len()
            .checked_mul(4)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| bad(path, format!("tensor '{name}' is too large")))?;
        let info = json::obj([
            ("dtype", Json::from("F32")),
            ("shape", Json::from(shape.to_vec())),
            ("data_offsets", Json::from(vec![offset, end])),
        ]);
        h.push((name.to_string(), info));
        offset = end;
    }
    let h = json::obj(h).to_string();
    let mut b = h.into_bytes();
    // Data starts at 8 + N; N a multiple of 8 keeps every f32 (and the file's mmap) aligned.
    while b.len() % 8 != 0 {
        b.push(b' ');
    }
    Ok(b)
}

/// Writes a checkpoint atomically (module documentation). Tensor names must be unique and not
/// `__metadata__`; each shape must match its data's length; metadata keys must be unique.
pub fn save<N: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(N, Vec<usize>, &[f32])],
    metadata: &[(String, String)],
) -> Result<()> {
    let path = path.as_ref();
    let mut sorted: Vec<(&str, &[usize], &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_ref(), s.as_slice(), *d))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for w in sorted.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(bad(path, format!("tensor name '{}' given twice", w[0].0)));
        }
    }
    for (name, shape, data) in &sorted {
        if name.is_empty() || *name == "__metadata__" {
            return Err(bad(path, format!("'{name}' cannot name a tensor")));
        }
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(Error::shape(
                "checkpoint::save",
                format!(
                    "{}: tensor '{name}' has shape {shape:?} but {} values",
                    path.display(),
                    data.len()
                ),
            ));
        }
    }
    let mut keys: Vec<&str> = metadata.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(path, format!("metadata key '{}' given twice", w[0])));
    }
    let head = header(path, &sorted, metadata)?;
    if head.len() > MAX_HEADER {
        return Err(bad(
            path,
            "header over 100 MB (too many tensors or metadata)",
        ));
    }

    crate::fsutil::remove_stale_temps(path);
    let name = path
        .file_name()
        .ok_or_else(|| bad(path, "not a file name"))?
        .to_string_lossy()
        .into_owned();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        w.write_all(&(head.len() as u64).to_le_bytes())
            .and_then(|_| w.write_all(&head))
            .map_err(|e| io(&tmp, e))?;
        let mut buf = Vec::with_capacity(1 << 16);
        for (_, _, data) in &sorted {
            for chunk in data.chunks(1 << 14) {
                buf.clear();
                for v in chunk {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                w.write_all(&buf).map_err(|e| io(&tmp, e))?;
            }
        }
        let f = w.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
        // Data on disk before the rename makes it visible; otherwise a crash could leave the
        // new name pointing at an empty or partial file.
        f.sync_all().map_err(|e| io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
        // The rename itself is durable once the directory is synced.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a checkpoint, checking the header against the file (module documentation).
pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    parse_bytes(path, &bytes)
}

/// One tensor's header entry, as the reference format defines it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

struct Entry {
    name: String,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    if bytes.len() < 8 {
        return Err(bad(
            path,
            format!(
                "truncated: {} bytes, less than the 8-byte header length",
                bytes.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    if n > MAX_HEADER as u64 {
        return Err(bad(
            path,
            format!("bad header: its length field says {n} bytes (over 100 MB)"),
        ));
    }
    let n = n as usize;
    if 8 + n > bytes.len() {
        return Err(bad(
            path,
            format!(
                "truncated: the header is {n} bytes but the file ends {} bytes after the length field",
                bytes.len() - 8
            ),
        ));
    }
    let text = std::str::from_utf8(&bytes[8..8 + n])
        .map_err(|e| bad(path, format!("bad header: not UTF-8 ({e})")))?;
    if !text.starts_with('{') {
        return Err(bad(path, "bad header: does not start with '{'"));
    }
    let what = format!("{} header", path.display());
    let fields = json::entries(text, &what).map_err(|e| bad(path, format!("bad header: {e}")))?;
    let mut metadata = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    for (key, v) in fields {
        if key == "__metadata__" {
            let Json::Object(m) = v else {
                return Err(bad(path, "bad header: __metadata__ is not an object"));
            };
            for (k, mv) in m {
                let Json::String(s) = mv else {
                    return Err(bad(
                        path,
                        format!("bad header: metadata '{k}' is not a string"),
                    ));
                };
                metadata.push((k, s));
            }
            continue;
        }
        let t: TensorInfo = serde_json::from_value(v)
            .map_err(|e| bad(path, format!("bad header: tensor '{key}': {e}")))?;
        let (dtype, shape, offs) = (t.dtype, t.shape, t.data_offsets);
        if dtype != "F32" {
            return Err(bad(
                path,
                format!("tensor '{key}' has dtype {dtype}; only F32 is read (convert with tensor.float() before saving)"),
            ));
        }
        if offs[1] < offs[0] {
            return Err(bad(
                path,
                format!(
                    "tensor '{key}': data_offsets [{}, {}] end before they begin",
                    offs[0], offs[1]
                ),
            ));
        }
        let want = shape
            .iter()
            .try_fold(4usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(path, format!("tensor '{key}': shape {shape:?} overflows")))?;
        if offs[1] - offs[0] != want {
            return Err(bad(
                path,
                format!(
                    "tensor '{key}': shape {shape:?} of F32 needs {want} bytes but data_offsets [{}, {}] hold {}",
                    offs[0],
                    offs[1],
                    offs[1] - offs[0]
                ),
            ));
        }
        entries.push(Entry {
            name: key,
            shape,
            begin: offs[0],
            end: offs[1],
        });
    }
    entries.sort_by_key(|e| (e.begin, e.end));
    let data = &bytes[8 + n..];
    let mut at = 0usize;
    for (i, e) in entries.iter().enumerate() {
        if e.begin < at {
            let prev = &entries[i - 1].name;
            return Err(bad(
                path,
                format!(
                    "tensors '{prev}' and '{}' overlap (byte {} of the data)",
                    e.name, e.begin
                ),
            ));
        }
        if e.begin > at {
            return Err(bad(
                path,
                format!(
                    "gap in the data before tensor '{}' (bytes {at}..{})",
                    e.name, e.begin
                ),
            ));
        }
        at = e.end;
    }
    if at > data.len() {
        let last = entries.last().map(|e| e.name.as_str()).unwrap_or("");
        return Err(bad(
            path,
            format!(
                "truncated or out of range: tensor '{last}' ends at data byte {at} but the file holds {} data bytes",
                data.len()
            ),
        ));
    }
    if at < data.len() {
        return Err(bad(
            path,
            format!(
                "{} bytes after the last tensor that no tensor describes",
                data.len() - at
            ),
        ));
    }
    let tensors = entries
        .into_iter()
        .map(|e| {
            let v: Vec<f32> = data[e.begin..e.end]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (e.name, e.shape, v)
        })
        .collect();
    Ok(Checkpoint { tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("revseg-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn meta(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_sorted_by_name_with_metadata() {
        let d = tmpdir("rt");
        let p = d.join("a.safetensors");
        let w: Vec<f32> = (0..54).map(|i| i as f32 * 0.25 - 3.0).collect();
        let b = [1.5f32, -0.0, f32::MIN_POSITIVE, 1e-40];
        let s = [7.0f32];
        let tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
            ("z.weight", vec![2, 3, 1, 3, 3], &w),
            ("a.bias", vec![4], &b),
            ("scalar", vec![], &s),
            ("empty", vec![0, 3], &[]),
        ];
        let md = meta(&[
            ("step", "1200"),
            ("config", "{\"widths\": [28, 36], \"q\": \"a\\\"b\"}"),
        ]);
        save(&p, &tensors, &md).unwrap();
        let c = load(&p).unwrap();
        let names: Vec<&str> = c.tensors.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names, ["a.bias", "empty", "scalar", "z.weight"]);
        assert_eq!(
            c.get("z.weight").unwrap(),
            (&[2usize, 3, 1, 3, 3][..], &w[..])
        );
        let (_, bb) = c.get("a.bias").unwrap();
        assert_eq!(
            bb.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(c.get("scalar").unwrap(), (&[][..], &[7.0f32][..]));
        assert_eq!(c.metadata, md);
        assert_eq!(c.meta("step"), Some("1200"));
        // The data starts 8-byte aligned and the header is padded with spaces.
        let bytes = std::fs::read(&p).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(bytes.len(), 8 + n + 4 * (w.len() + 4 + 1));
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "temporary file left"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_saves_are_refused_and_leave_the_old_file() {
        let d = tmpdir("badsave");
        let p = d.join("c.safetensors");
        save(&p, &[("x", vec![2], &[1.0f32, 2.0][..])], &[]).unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = save(&p, &[("x", vec![3], &[1.0f32, 2.0][..])], &[]).unwrap_err();
        assert!(
            e.to_string().contains("'x'") && e.to_string().contains("[3]"),
            "{e}"
        );
        let e = save(
            &p,
            &[("x", vec![1], &[1.0f32][..]), ("x", vec![1], &[2.0f32][..])],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = save(&p, &[("__metadata__", vec![1], &[1.0f32][..])], &[]).unwrap_err();
        assert!(e.to_string().contains("__metadata__"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A valid file from a header text and a data length (bytes of value 0x3f).
    fn file_with(header: &str, data_len: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0x3fu8, data_len));
        b
    }

    fn load_err(bytes: &[u8]) -> String {
        parse_bytes(Path::new("bad.safetensors"), bytes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn corrupt_files_give_clear_errors() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        let good = file_with(ok, 12);
        let c = parse_bytes(Path::new("x"), &good).unwrap();
        assert_eq!(c.get("b").unwrap().1, &[f32::from_le_bytes([0x3f; 4])]);
        // Every error names the file.
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..5].to_vec(), "truncated"),
            (good[..20].to_vec(), "truncated"),
            (good[..good.len() - 3].to_vec(), "truncated"),
            (file_with(ok, 16), "after the last tensor"),
            (u64::MAX.to_le_bytes().to_vec(), "over 100 MB"),
            (file_with("[1, 2]", 0), "start with '{'"),
            (file_with("{\"a\": ", 0), "bad header"),
            (
                file_with(
                    &ok.replace("\"F32\",\"shape\":[1]", "\"F16\",\"shape\":[1]"),
                    12,
                ),
                "dtype F16",
            ),
            (
                file_with(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                    8,
                ),
                "overlap",
            ),
            (
                file_with(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                    8,
                ),
                "gap",
            ),
            (
                file_with(
                    r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                    8,
                ),
                "needs 12 bytes",
            ),
            (
                file_with(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                    16,
                ),
                "twice",
            ),
            (
                file_with(r#"{"__metadata__":{"step":3}}"#, 0),
                "not a string",
            ),
        ];
        for (bytes, want) in cases {
            let e = load_err(&bytes);
            assert!(
                e.contains("bad.safetensors") && e.contains(want),
                "want '{want}': {e}"
            );
        }
        let e = load(Path::new("/nonexistent/dir/x.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.safetensors"), "{e}");
    }

    /// Values of the fixture, computed as tests/fixtures/README.md says.
    fn fixture_conv() -> Vec<f32> {
        (0..18).map(|i| (i as f32) * 0.5 - 3.0).collect()
    }

    #[test]
    fn loads_a_file_written_by_python_safetensors() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference.safetensors");
        let c = load(&p).unwrap();
        let names: Vec<&str> = c.tensors.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bn.bias",
                "bn.running_mean",
                "bn.running_var",
                "bn.weight",
                "conv.weight",
                "up.weight"
            ]
        );
        assert_eq!(
            c.get("conv.weight").unwrap(),
            (&[2usize, 1, 1, 3, 3][..], &fixture_conv()[..])
        );
        let (s, v) = c.get("bn.running_var").unwrap();
        assert_eq!(s, &[4]);
        assert_eq!(v, &[1.0, 0.5, 0.25, 1e-8]);
        assert_eq!(c.get("bn.weight").unwrap().1, &[1.0f32, 1.0, 1.0, 1.0]);
        assert_eq!(c.get("bn.bias").unwrap().1, &[0.0f32, -0.0, 0.125, -2.5]);
        assert_eq!(
            c.get("bn.bias").unwrap().1[1].to_bits(),
            (-0.0f32).to_bits()
        );
        assert_eq!(
            c.get("bn.running_mean").unwrap().1,
            &[0.1f32, 0.2, -0.3, 1e30]
        );
        let (s, v) = c.get("up.weight").unwrap();
        assert_eq!(s, &[2, 3, 1, 2, 2]);
        let want: Vec<f32> = (0..24).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        assert_eq!(v, &want[..]);
        assert_eq!(c.meta("step"), Some("12"));
        assert_eq!(
            c.meta("config"),
            Some("{\"widths\": [28, 36], \"outputs\": 3}")
        );
    }

    #[test]
    fn writes_the_same_bytes_as_python_safetensors() {
        // One metadata key: the reference writer keeps metadata in a hash map, so the key order
        // of several keys is not reproducible.
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reference_one_meta.safetensors");
        let want = std::fs::read(&p).unwrap();
        let d = tmpdir("bytes");
        let q = d.join("ours.safetensors");
        let conv = fixture_conv();
        let bias = [0.5f32, -1.0];
        save(
            &q,
            &[
                ("conv.weight", vec![2, 1, 1, 3, 3], &conv[..]),
                ("conv.bias", vec![2], &bias[..]),
            ],
            &meta(&[("format", "pt")]),
        )
        .unwrap();
        assert_eq!(std::fs::read(&q).unwrap(), want);
        std::fs::remove_dir_all(&d).unwrap();
    }

    const CHILD_ENV: &str = "REVSEG_CKPT_KILL_CHILD";
    const BIG: usize = 1 << 21;

    /// Version `v` of the big checkpoint: every value depends on v, so a mixture of two
    /// versions cannot pass for one.
    fn version_data(v: u32, i: usize) -> f32 {
        (v as f32) * 1000.0 + (i % 997) as f32
    }

    fn save_version(p: &Path, v: u32) {
        let a: Vec<f32> = (0..BIG).map(|i| version_data(v, i)).collect();
        let b: Vec<f32> = (0..1000).map(|i| version_data(v, i + 7)).collect();
        save(
            p,
            &[("a", vec![BIG / 64, 64], &a[..]), ("b", vec![1000], &b[..])],
            &meta(&[("version", &v.to_string())]),
        )
        .unwrap();
    }

    /// The writer that `saves_survive_sigkill` starts and kills; it does nothing unless started
    /// by that test (hence ignored in normal runs).
    #[test]
    #[ignore = "child process of saves_survive_sigkill"]
    fn kill_child_writer() {
        let Ok(spec) = std::env::var(CHILD_ENV) else {
            return;
        };
        let (p, start) = spec.rsplit_once('|').unwrap();
        let mut v: u32 = start.parse().unwrap();
        loop {
            save_version(Path::new(p), v);
            v += 1;
        }
    }

    #[test]
    fn saves_survive_sigkill() {
        let d = tmpdir("kill");
        let p = d.join("big.safetensors");
        save_version(&p, 1);
        let exe = std::env::current_exe().unwrap();
        let mut rng = Rng::new(5);
        let mut last = 1u32;
        let mut advanced = 0;
        let mut killed_mid_write = 0;
        for round in 0..8 {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "checkpoint::tests::kill_child_writer",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env(CHILD_ENV, format!("{}|{}", p.display(), last + 1))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(rng.range(30, 400) as u64));
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            let temps = std::fs::read_dir(&d).unwrap().count() - 1;
            killed_mid_write += (temps > 0) as usize;
            let c = load(&p).unwrap_or_else(|e| panic!("round {round}: {e}"));
            let v: u32 = c.meta("version").unwrap().parse().unwrap();
            assert!(v >= last, "round {round}: went back from {last} to {v}");
            let (_, a) = c.get("a").unwrap();
            let (_, b) = c.get("b").unwrap();
            assert_eq!(a.len(), BIG);
            for (i, x) in a.iter().enumerate() {
                assert_eq!(
                    *x,
                    version_data(v, i),
                    "round {round}: a[{i}] not of version {v}"
                );
            }
            for (i, x) in b.iter().enumerate() {
                assert_eq!(*x, version_data(v, i + 7), "round {round}: b[{i}]");
            }
            if v > last {
                advanced += 1;
            }
            last = v;
        }
        // Otherwise every kill came before the first rename and nothing was tested.
        assert!(
            advanced >= 2,
            "the child completed saves in only {advanced} of 8 rounds"
        );
        // And at least one kill hit a save in progress (its temporary file is still there).
        assert!(killed_mid_write >= 1, "no kill landed during a save");
        // Killed writers leave temporary files; the next save clears them.
        save_version(&p, last + 1);
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
