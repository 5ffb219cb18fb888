//! Every format writes and reads back the same voxels; files made by other tools read as those
//! tools wrote them; broken files give errors, not panics.

use revseg::error::Error;
use revseg::volume::array::{AnyArray, Array, ByteOrder, Dtype, Voxel, VoxelSize};
use revseg::volume::{raw, tiff, zarr};
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("revseg-vf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A non-constant, nowhere-zero pattern that uses each type's range: v = 1 + (z*1009 + y*31 + x*7) % m.
fn pattern<T: Voxel>(shape: &[usize], m: u64, scale: f64) -> Array<T> {
    let mut data = Vec::new();
    let (z, y, x) = (shape[0], shape[1], shape[2]);
    for a in 0..z {
        for b in 0..y {
            for c in 0..x {
                let v = 1 + (a as u64 * 1009 + b as u64 * 31 + c as u64 * 7) % m;
                let s = if T::DTYPE.is_float() {
                    revseg::volume::array::Scalar::F(v as f64 * scale)
                } else {
                    revseg::volume::array::Scalar::U(v * scale as u64)
                };
                data.push(T::from_scalar_exact(s).unwrap());
            }
        }
    }
    Array::new(shape.to_vec(), data).unwrap()
}

fn no_temp_files(dir: &Path) {
    for e in walk(dir) {
        let n = e.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !n.contains(".tmp-"),
            "temporary file left behind: {}",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// ---------- array ----------

#[test]
fn conversions_are_exact_or_fail() {
    let a = Array::new(vec![3], vec![1u64, 70_000, u32::MAX as u64]).unwrap();
    assert_eq!(a.convert::<u32>().unwrap().data, vec![1, 70_000, u32::MAX]);
    let big = Array::new(vec![2], vec![5u64, u32::MAX as u64 + 1]).unwrap();
    let e = big.convert::<u32>().unwrap_err();
    assert!(e.to_string().contains("4294967296"), "{e}");
    assert!(e.to_string().contains("[1]"), "names the index: {e}");
    assert!(Array::new(vec![1], vec![2.5f32])
        .unwrap()
        .convert::<u8>()
        .is_err());
    assert!(Array::new(vec![1], vec![256.0f64])
        .unwrap()
        .convert::<u8>()
        .is_err());
    assert!(Array::new(vec![1], vec![f64::NAN])
        .unwrap()
        .convert::<u16>()
        .is_err());
    assert_eq!(
        Array::new(vec![1], vec![255.0f32])
            .unwrap()
            .convert::<u8>()
            .unwrap()
            .data,
        vec![255]
    );
    // 2^24 + 1 is the first integer f32 cannot hold.
    assert!(Array::new(vec![1], vec![16_777_217u32])
        .unwrap()
        .convert::<f32>()
        .is_err());
    assert!(Array::new(vec![1], vec![16_777_217u32])
        .unwrap()
        .convert::<f64>()
        .is_ok());
    assert!(Array::new(vec![1], vec![u64::MAX])
        .unwrap()
        .convert::<f64>()
        .is_err());
    assert!(Array::new(vec![1], vec![0.1f64])
        .unwrap()
        .convert::<f32>()
        .is_err());
    assert!(Array::new(vec![2], vec![1u8]).is_err());
}

#[test]
fn dtype_names() {
    for d in revseg::volume::array::ALL_DTYPES {
        assert_eq!(Dtype::from_name(d.name()).unwrap(), d);
        let (back, order) = Dtype::from_typestr(&d.typestr(ByteOrder::Big)).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            order,
            if d.size() == 1 {
                ByteOrder::Little
            } else {
                ByteOrder::Big
            }
        );
    }
    assert_eq!(Dtype::U16.typestr(ByteOrder::Little), "<u2");
    assert_eq!(Dtype::F64.size(), 8);
    assert!(Dtype::from_typestr("<i4").is_err());
    let v = VoxelSize::default();
    assert_eq!((v.z, v.y, v.x), (30.0, 6.0, 6.0));
    assert_eq!(v.anisotropy(), 5.0);
}

// ---------- raw ----------

fn raw_round_trip<T: Voxel>(dir: &Path, m: u64, scale: f64) {
    let shape = [4, 5, 6];
    let a = pattern::<T>(&shape, m, scale);
    for order in [ByteOrder::Little, ByteOrder::Big] {
        let p = dir.join(format!("{}-{order:?}.raw", T::DTYPE));
        raw::write(&p, &a, order, b"HDR!").unwrap();
        let v = raw::RawVolume::open(&p, &shape, T::DTYPE, order, 4).unwrap();
        assert_eq!(v.read_typed::<T>().unwrap(), a);
        let r = v.read_region(&[1, 2, 3], &[2, 3, 3]).unwrap();
        assert_eq!(
            r.to_typed::<T>().unwrap(),
            a.slice(&[1, 2, 3], &[2, 3, 3]).unwrap()
        );
        // Independent check of one voxel of the region: (1+1, 2+2, 3+0).
        let want = pattern::<T>(&shape, m, scale).get(&[2, 4, 3]).unwrap();
        assert_eq!(r.to_typed::<T>().unwrap().get(&[1, 2, 0]), Some(want));
    }
}

#[test]
fn raw_round_trips_every_dtype() {
    let d = tmpdir("raw");
    raw_round_trip::<u8>(&d, 250, 1.0);
    raw_round_trip::<u16>(&d, 60_000, 1.0);
    raw_round_trip::<u32>(&d, 1 << 30, 3.0);
    raw_round_trip::<u64>(&d, 1 << 40, 1_000_003.0);
    raw_round_trip::<f32>(&d, 1000, 0.125);
    raw_round_trip::<f64>(&d, 1 << 40, 0.001);
    no_temp_files(&d);
}

#[test]
fn raw_size_mismatch_is_an_error() {
    let d = tmpdir("rawbad");
    let p = d.join("v.raw");
    raw::write(
        &p,
        &pattern::<u16>(&[2, 3, 4], 100, 1.0),
        ByteOrder::Little,
        &[],
    )
    .unwrap();
    let e = raw::RawVolume::open(&p, &[2, 3, 5], Dtype::U16, ByteOrder::Little, 0)
        .err()
        .unwrap();
    let s = e.to_string();
    assert!(
        s.contains("v.raw") && s.contains("48 bytes") && s.contains("60"),
        "{s}"
    );
    assert!(raw::RawVolume::open(&p, &[2, 3, 4], Dtype::U32, ByteOrder::Little, 0).is_err());
    assert!(
        raw::RawVolume::open(d.join("none.raw"), &[1], Dtype::U8, ByteOrder::Little, 0).is_err()
    );
    let v = raw::RawVolume::open(&p, &[2, 3, 4], Dtype::U16, ByteOrder::Little, 0).unwrap();
    assert!(matches!(
        v.read_region(&[1, 0, 0], &[2, 1, 1]),
        Err(Error::Region { .. })
    ));
}

// ---------- tiff ----------

fn tiff_round_trip<T: tiff::TiffVoxel>(dir: &Path, m: u64, scale: f64)
where
    [T]: ::tiff::encoder::TiffValue,
{
    let a = pattern::<T>(&[3, 17, 11], m, scale);
    let p = dir.join(format!("{}.tif", T::DTYPE));
    let vs = VoxelSize::new(40.0, 4.0, 4.5).unwrap();
    tiff::write(&p, &a, Some(vs)).unwrap();
    let s = tiff::read(&p).unwrap();
    assert_eq!(s.data.dtype(), T::DTYPE);
    assert_eq!(s.data.to_typed::<T>().unwrap(), a);
    let got = s.voxel_size.unwrap();
    assert!(
        (got.x - 4.5).abs() < 1e-4 && (got.y - 4.0).abs() < 1e-4 && (got.z - 40.0).abs() < 1e-9,
        "{got:?}"
    );
    let p2 = dir.join(format!("{}-nores.tif", T::DTYPE));
    tiff::write(&p2, &a, None).unwrap();
    assert_eq!(tiff::read(&p2).unwrap().voxel_size, None);
}

#[test]
fn tiff_round_trips() {
    let d = tmpdir("tiff");
    tiff_round_trip::<u8>(&d, 250, 1.0);
    tiff_round_trip::<u16>(&d, 65_000, 1.0);
    tiff_round_trip::<u32>(&d, 1 << 30, 3.0);
    tiff_round_trip::<f32>(&d, 1000, 0.375);
    no_temp_files(&d);
}

/// Expected value of the tifffile fixtures: z*100 + y*10 + x on 3 pages of 4x5.
fn fixture_value(z: usize, y: usize, x: usize) -> u64 {
    (z * 100 + y * 10 + x) as u64
}

#[test]
fn tiff_fixtures_from_tifffile() {
    let check = |name: &str, dtype: Dtype, f: &dyn Fn(u64) -> f64| {
        let s = tiff::read(fixture(name)).unwrap();
        assert_eq!(s.data.shape(), &[3, 4, 5], "{name}");
        assert_eq!(s.data.dtype(), dtype, "{name}");
        let v = s.data.to_typed::<f64>().unwrap();
        for z in 0..3 {
            for y in 0..4 {
                for x in 0..5 {
                    let want = f(fixture_value(z, y, x));
                    let got = v.get(&[z, y, x]).unwrap();
                    assert!(
                        (got - want).abs() <= want.abs() * 1e-6,
                        "{name} at {z},{y},{x}: {got} vs {want}"
                    );
                }
            }
        }
        s
    };
    let s = check("stack_u16_imagej.tif", Dtype::U16, &|v| v as f64);
    let vs = s.voxel_size.unwrap();
    assert!(
        (vs.x - 6.0).abs() < 1e-3 && (vs.y - 6.0).abs() < 1e-3 && (vs.z - 30.0).abs() < 1e-9,
        "{vs:?}"
    );
    check("stack_u8_tiled.tif", Dtype::U8, &|v| (v % 251) as f64);
    check("stack_u32_deflate_be.tif", Dtype::U32, &|v| {
        (v * 70000) as f64
    });
    check("stack_f32.tif", Dtype::F32, &|v| (v as f32 / 7.0) as f64);
}

#[test]
fn tiff_broken_files_are_errors() {
    let d = tmpdir("tiffbad");
    let a = pattern::<u8>(&[4, 32, 32], 250, 1.0);
    let p = d.join("ok.tif");
    tiff::write(&p, &a, None).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    // Cut at many places: every prefix must give an error, none a panic.
    for cut in [0, 3, 8, 100, 1500, bytes.len() / 2, bytes.len() - 10] {
        let t = d.join(format!("cut{cut}.tif"));
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let e = tiff::read(&t)
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} read fine"));
        assert!(e.to_string().contains(&format!("cut{cut}.tif")), "{e}");
    }
    // Garbage in the middle of the page data and directory.
    let mut g = bytes.clone();
    let n = g.len();
    for b in g[n - 200..].iter_mut() {
        *b = 0xA5;
    }
    let t = d.join("garbage.tif");
    std::fs::write(&t, &g).unwrap();
    let _ = tiff::read(&t); // may or may not decode; must not panic
    std::fs::write(&t, b"II*\0this is not a tiff").unwrap();
    assert!(tiff::read(&t).is_err());

    // Pages of different sizes, written with the tiff crate directly.
    let t = d.join("mixed.tif");
    {
        let f = std::fs::File::create(&t).unwrap();
        let mut enc = ::tiff::encoder::TiffEncoder::new(std::io::BufWriter::new(f)).unwrap();
        enc.write_image::<::tiff::encoder::colortype::Gray8>(4, 3, &[7u8; 12])
            .unwrap();
        enc.write_image::<::tiff::encoder::colortype::Gray8>(5, 3, &[9u8; 15])
            .unwrap();
    }
    let e = tiff::read(&t).unwrap_err().to_string();
    assert!(
        e.contains("mixed.tif") && e.contains("page 1") && e.contains("5x3"),
        "{e}"
    );

    // RGB is not a grey stack.
    let t = d.join("rgb.tif");
    {
        let f = std::fs::File::create(&t).unwrap();
        let mut enc = ::tiff::encoder::TiffEncoder::new(std::io::BufWriter::new(f)).unwrap();
        enc.write_image::<::tiff::encoder::colortype::RGB8>(2, 2, &[1u8; 12])
            .unwrap();
    }
    let e = tiff::read(&t).unwrap_err().to_string();
    assert!(
        e.contains("rgb.tif") && e.contains("page 0") && e.contains("unsupported"),
        "{e}"
    );
    assert!(tiff::read(d.join("missing.tif")).is_err());
}

// ---------- zarr ----------

fn zarr_round_trip<T: Voxel>(
    dir: &Path,
    version: zarr::ZarrVersion,
    comp: zarr::Compressor,
    order: ByteOrder,
    m: u64,
    scale: f64,
) {
    let shape = [5, 7, 6];
    let chunks = [2, 3, 4];
    let a = pattern::<T>(&shape, m, scale);
    let p = dir.join(format!("{}-{version:?}-{comp:?}-{order:?}.zarr", T::DTYPE));
    let opt = zarr::CreateOptions {
        version,
        compressor: comp,
        order,
        voxel_size: Some(VoxelSize::new(30.0, 6.0, 6.0).unwrap()),
        ..Default::default()
    };
    let z = zarr::ZarrArray::create_with(&p, &shape, &chunks, T::DTYPE, &opt).unwrap();
    z.write_region(&[0, 0, 0], &a).unwrap();
    let r = zarr::ZarrArray::open(&p).unwrap();
    assert_eq!(
        (r.shape.clone(), r.chunks.clone(), r.dtype, r.version),
        (shape.to_vec(), chunks.to_vec(), T::DTYPE, version)
    );
    assert_eq!(r.voxel_size, Some(VoxelSize::default()));
    assert_eq!(r.read_all::<T>().unwrap(), a, "{}", p.display());
    // A region crossing chunk borders on every axis (chunks end at 2, 3 and 4).
    let reg = r.read_region::<T>(&[1, 2, 3], &[3, 4, 3]).unwrap();
    for (i, v) in reg.data.iter().enumerate() {
        let idx = revseg::volume::array::unravel(i, &[3, 4, 3]);
        assert_eq!(Some(*v), a.get(&[1 + idx[0], 2 + idx[1], 3 + idx[2]]));
    }
    // Edge chunks are stored at full chunk size: 3 x 3 x 2 chunks.
    assert_eq!(r.grid(), vec![3, 3, 2]);
}

#[test]
fn zarr_round_trips_every_dtype_and_codec() {
    use zarr::{Compressor::*, ZarrVersion::*};
    let d = tmpdir("zarr");
    for (v, c) in [
        (V2, None),
        (V2, Gzip(1)),
        (V2, Zlib(6)),
        (V2, Zstd(1)),
        (V3, None),
        (V3, Gzip(5)),
        (V3, Zstd(1)),
    ] {
        for o in [ByteOrder::Little, ByteOrder::Big] {
            zarr_round_trip::<u8>(&d, v, c, o, 250, 1.0);
            zarr_round_trip::<u16>(&d, v, c, o, 65_000, 1.0);
            zarr_round_trip::<u32>(&d, v, c, o, 1 << 30, 3.0);
            zarr_round_trip::<u64>(&d, v, c, o, 1 << 40, 1_000_003.0);
            zarr_round_trip::<f32>(&d, v, c, o, 1000, 0.125);
            zarr_round_trip::<f64>(&d, v, c, o, 1 << 40, 0.001);
        }
    }
    no_temp_files(&d);
}

#[test]
fn zarr_partial_writes_and_fill_value() {
    let d = tmpdir("zarrpart");
    let p = d.join("a.zarr");
    let opt = zarr::CreateOptions {
        fill_value: 9.0,
        compressor: zarr::Compressor::Gzip(3),
        ..Default::default()
    };
    let z = zarr::ZarrArray::create_with(&p, &[5, 7, 6], &[2, 3, 4], Dtype::U16, &opt).unwrap();
    // Nothing written: all fill.
    assert!(z.read_all::<u16>().unwrap().data.iter().all(|&v| v == 9));
    // A box not aligned to chunks, then an overlapping one.
    let b1 = Array::new(vec![2, 2, 3], (1..=12).collect::<Vec<u16>>()).unwrap();
    z.write_region(&[1, 2, 2], &b1).unwrap();
    let b2 = Array::new(vec![1, 1, 6], vec![100u16, 101, 102, 103, 104, 105]).unwrap();
    z.write_region(&[2, 3, 0], &b2).unwrap();
    let got = zarr::ZarrArray::open(&p)
        .unwrap()
        .read_all::<u16>()
        .unwrap();
    for zz in 0..5 {
        for y in 0..7 {
            for x in 0..6 {
                let want = if zz == 2 && y == 3 {
                    100 + x as u16
                } else if (1..3).contains(&zz) && (2..4).contains(&y) && (2..5).contains(&x) {
                    1 + ((zz - 1) * 6 + (y - 2) * 3 + (x - 2)) as u16
                } else {
                    9
                };
                assert_eq!(got.get(&[zz, y, x]), Some(want), "at {zz},{y},{x}");
            }
        }
    }
    // Chunks never touched stay missing (the fill value stands for them).
    assert!(!p.join("4.2.1").exists());
    assert!(p.join("1.1.0").exists());
    // Wrong type, out of range, existing array.
    assert!(z
        .write_region(&[0, 0, 0], &Array::new(vec![1, 1, 1], vec![1u8]).unwrap())
        .is_err());
    assert!(matches!(
        z.read_region::<u16>(&[4, 0, 0], &[2, 1, 1]),
        Err(Error::Region { .. })
    ));
    assert!(zarr::ZarrArray::create(
        &p,
        &[1, 1, 1],
        &[1, 1, 1],
        Dtype::U8,
        zarr::Compressor::None
    )
    .is_err());
    no_temp_files(&d);
}

/// The zarr fixtures hold a = arange(5*7*6).reshape(5, 7, 6) times a factor (make_fixtures.py).
fn arange(z: usize, y: usize, x: usize) -> f64 {
    (z * 42 + y * 6 + x) as f64
}

#[test]
fn zarr_fixtures_from_zarr_python() {
    let cases: [(&str, Dtype, f64); 4] = [
        ("v2_zlib_be_u2.zarr", Dtype::U16, 3.0),
        ("v2_zstd_f8.zarr", Dtype::F64, 1.0 / 8.0),
        ("v3_gzip_u4.zarr", Dtype::U32, 1000.0),
        ("v3_zstd_crc_u8.zarr", Dtype::U64, 123_456_789.0),
    ];
    for (name, dtype, k) in cases {
        let z = zarr::ZarrArray::open(fixture(name)).unwrap();
        assert_eq!(z.dtype, dtype, "{name}");
        assert_eq!(z.shape, vec![5, 7, 6]);
        let a = z.read_region_any(&[0, 0, 0], &[5, 7, 6]).unwrap();
        let v = match &a {
            AnyArray::U64(u) => u.data.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            other => other.to_typed::<f64>().unwrap().data,
        };
        for (i, got) in v.iter().enumerate() {
            let idx = revseg::volume::array::unravel(i, &[5, 7, 6]);
            assert_eq!(
                *got,
                arange(idx[0], idx[1], idx[2]) * k,
                "{name} at {idx:?}"
            );
        }
    }
    // Only chunk (0, 0, 0) was written; the rest is the fill value.
    let z = zarr::ZarrArray::open(fixture("v3_fill_u1.zarr")).unwrap();
    let a = z.read_all::<u8>().unwrap();
    let f = zarr::ZarrArray::open(fixture("v2_fill_f4_F.zarr")).unwrap();
    let b = f.read_all::<f32>().unwrap();
    for zz in 0..5 {
        for y in 0..7 {
            for x in 0..6 {
                let inside = zz < 2 && y < 3 && x < 4;
                let n = (zz * 12 + y * 4 + x) as f32;
                assert_eq!(
                    a.get(&[zz, y, x]).unwrap(),
                    if inside { n as u8 } else { 42 }
                );
                assert_eq!(
                    b.get(&[zz, y, x]).unwrap(),
                    if inside { n + 0.25 } else { -1.5 },
                    "F order at {zz},{y},{x}"
                );
            }
        }
    }
}

#[test]
fn zarr_voxel_size_from_ome_parent() {
    let d = tmpdir("ome");
    let g = d.join("img.zarr");
    zarr::ZarrArray::create(
        g.join("0"),
        &[2, 2, 2],
        &[2, 2, 2],
        Dtype::U8,
        zarr::Compressor::None,
    )
    .unwrap();
    std::fs::write(g.join(".zgroup"), r#"{"zarr_format": 2}"#).unwrap();
    std::fs::write(
        g.join(".zattrs"),
        r#"{"multiscales": [{"version": "0.4", "axes": [{"name": "z", "type": "space", "unit": "micrometer"},
            {"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.04, 4.0, 4.0]}]}]}]}"#,
    )
    .unwrap();
    let z = zarr::ZarrArray::open(g.join("0")).unwrap();
    let v = z.voxel_size.unwrap();
    assert!(
        (v.z - 40.0).abs() < 1e-9 && v.y == 4.0 && v.x == 4.0,
        "{v:?}"
    );
}

#[test]
fn zarr_broken_files_are_errors() {
    let d = tmpdir("zarrbad");
    for (i, comp) in [
        zarr::Compressor::None,
        zarr::Compressor::Gzip(1),
        zarr::Compressor::Zstd(1),
    ]
    .into_iter()
    .enumerate()
    {
        let p = d.join(format!("a{i}.zarr"));
        let z = zarr::ZarrArray::create(&p, &[4, 4], &[2, 2], Dtype::U32, comp).unwrap();
        z.write_region(&[0, 0], &pattern2(4, 4)).unwrap();
        let chunk = p.join("1.1");
        let bytes = std::fs::read(&chunk).unwrap();
        std::fs::write(&chunk, &bytes[..bytes.len() / 2]).unwrap();
        let e = z.read_all::<u32>().unwrap_err().to_string();
        assert!(e.contains("1.1") && e.contains("corrupt"), "{e}");
        std::fs::write(&chunk, [0x28, 0xB5, 0x2F, 0xFD, 1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        assert!(z.read_all::<u32>().is_err());
        // Other chunks still read.
        assert_eq!(
            z.read_region::<u32>(&[0, 0], &[2, 2]).unwrap().data,
            vec![1, 2, 5, 6]
        );
    }
    let p = d.join("meta.zarr");
    std::fs::create_dir_all(&p).unwrap();
    for bad in [
        "{\"zarr_format\": 2, \"shape\": [4",
        "{\"zarr_format\": 2, \"shape\": [4], \"chunks\": [0], \"dtype\": \"<u1\"}",
        "{\"zarr_format\": 2, \"shape\": [4], \"chunks\": [2], \"dtype\": \"<c8\"}",
        "{\"zarr_format\": 2, \"shape\": [4], \"chunks\": [2], \"dtype\": \"<u1\", \"compressor\": {\"id\": \"nosuchcodec\"}}",
        "{\"zarr_format\": 2, \"shape\": [4, 4], \"chunks\": [2], \"dtype\": \"<u1\"}",
    ] {
        std::fs::write(p.join(".zarray"), bad).unwrap();
        let e = zarr::ZarrArray::open(&p).unwrap_err().to_string();
        assert!(e.contains(".zarray"), "{e}");
    }
    std::fs::write(p.join(".zarray"), "{\"zarr_format\": 2, \"shape\": [4], \"chunks\": [2], \"dtype\": \"<u1\", \"fill_value\": 0, \"order\": \"C\", \"filters\": null, \"compressor\": {\"id\": \"nosuchcodec\"}}").unwrap();
    let e = zarr::ZarrArray::open(&p).unwrap_err().to_string();
    assert!(e.contains("nosuchcodec") && e.contains(".zarray"), "{e}");
    assert!(zarr::ZarrArray::open(d.join("none.zarr")).is_err());
}

fn pattern2(h: usize, w: usize) -> Array<u32> {
    Array::new(vec![h, w], (1..=(h * w) as u32).collect()).unwrap()
}

/// zarr fill values as zarr-python writes them: integers above 2^53 exactly (they once went
/// through f64), v2's bare `NaN` / `-Infinity` (not JSON), v3's strings; a shape beyond usize is
/// named as such, not as "non-integer".
#[test]
fn zarr_fill_values_are_exact_and_non_finite_ones_read() {
    let d = tmpdir("fills");
    let big: u64 = (1 << 60) + 1;
    let v2 = |name: &str, dtype: &str, fill: &str| {
        let p = d.join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join(".zarray"),
            format!(
                "{{\"zarr_format\": 2, \"shape\": [2, 3, 2], \"chunks\": [2, 3, 2], \"dtype\": \"{dtype}\", \"fill_value\": {fill}, \"order\": \"C\", \"compressor\": null, \"filters\": null}}"
            ),
        )
        .unwrap();
        zarr::ZarrArray::open(&p)
    };
    let a = v2("u8.zarr", "<u8", &big.to_string()).unwrap();
    let v = a.read_all::<u64>().unwrap();
    assert!(v.data.iter().all(|&x| x == big), "{:?}", &v.data[..2]);
    let n = v2("nan.zarr", "<f4", "NaN")
        .unwrap()
        .read_all::<f32>()
        .unwrap();
    assert!(n.data.iter().all(|x| x.is_nan()));
    let i = v2("inf.zarr", "<f8", "-Infinity")
        .unwrap()
        .read_all::<f64>()
        .unwrap();
    assert!(i.data.iter().all(|&x| x == f64::NEG_INFINITY));
    let e = v2("neg.zarr", "<u2", "-1").unwrap_err().to_string();
    assert!(e.contains("fill_value -1"), "{e}");
    let p = d.join("huge.zarr");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("zarr.json"),
        r#"{"zarr_format": 3, "node_type": "array", "shape": [2, 3, 4611686018427387904],
            "data_type": "uint8", "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 3, 2]}},
            "chunk_key_encoding": {"name": "default"}, "codecs": [{"name": "bytes"}]}"#,
    )
    .unwrap();
    let e = zarr::ZarrArray::open(&p).unwrap_err().to_string();
    assert!(
        !e.contains("non-integer") && e.contains("4611686018427387904"),
        "{e}"
    );
}

/// A PID no process has: past the kernel's maximum.
fn dead_pid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(4_194_304)
        + 1
}

#[test]
fn the_next_write_sweeps_temporaries_of_dead_writers_and_keeps_live_ones() {
    use revseg::volume::io::create_volume;
    let d = tmpdir("stale");
    let dead = dead_pid();
    let vol = pattern::<u16>(&[2, 3, 4], 500, 1.0);
    // (output, temporaries its writers leave: directories for zarr, files otherwise)
    let cases: [(&str, &[String]); 4] = [
        (
            "a.zarr",
            &[
                format!(".a.zarr.partial-{dead}-0"),
                format!(".a.zarr.old-{dead}-2"),
            ],
        ),
        (
            "a.raw",
            &[
                format!(".a.raw.partial-{dead}-1"),
                format!(".a.raw.json.tmp-{dead}-0"),
            ],
        ),
        ("a.tif", &[format!(".a.tif.tmp-{dead}-0")]),
        ("a.h5", &[format!(".a.h5.partial-{dead}-0")]),
    ];
    let mut live = Vec::new();
    for (out, temps) in &cases {
        for t in temps.iter() {
            if out.ends_with(".zarr") {
                std::fs::create_dir_all(d.join(t)).unwrap();
                std::fs::write(d.join(t).join("0.0.0"), b"stale").unwrap();
            } else {
                std::fs::write(d.join(t), b"stale").unwrap();
            }
        }
        // PID 1 always runs: a writer that is still at work.
        let l = format!(".{out}.partial-1-0");
        std::fs::write(d.join(&l), b"live").unwrap();
        live.push(l);
        // The old copy of an array is kept until the array is back in place.
        if *out == "a.zarr" {
            std::fs::create_dir(d.join(out)).unwrap();
            std::fs::write(d.join(out).join(".zarray"), b"{}").unwrap();
        }
        let spec = match *out {
            "a.h5" => format!("{}:/v", d.join(out).display()),
            _ => d.join(out).display().to_string(),
        };
        let mut w = create_volume(&spec, &vol.shape, Dtype::U16, None).unwrap();
        w.write_region(&[0, 0, 0], &vol).unwrap();
        w.finish().unwrap();
        let back = revseg::volume::io::open_volume(&spec).unwrap();
        assert_eq!(back.read_all::<u16>().unwrap(), vol, "{spec}");
    }
    // The segment writer and checkpoints sweep theirs too.
    std::fs::write(d.join(format!(".s.h5.partial-{dead}")), b"stale").unwrap();
    revseg::volume::hdf5::write_dataset(d.join("s.h5"), "/x", &[2], &[1u8, 2], false).unwrap();
    std::fs::write(d.join(format!(".m.safetensors.tmp-{dead}-0")), b"stale").unwrap();
    revseg::checkpoint::save(
        d.join("m.safetensors"),
        &[("w", vec![2], &[1.0f32, 2.0][..])],
        &[],
    )
    .unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    left.sort();
    live.sort();
    assert_eq!(left, live);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Layouts most EM volumes use, written by zarr-python (make_zarr_fixtures.py): v2 with blosc
/// (zarr-python 2's default), v3 sharded with blosc inside, signed int32 labels, and an OME-Zarr
/// image whose group gives scale and translation. Values recomputed from the script's formulas.
#[test]
fn zarr_python_blosc_sharded_signed_and_ome_fixtures() {
    let check = |spec: &str, want: &dyn Fn(f64) -> f64, dtype: Dtype| {
        let r = revseg::volume::io::open_volume(&fixture(spec).display().to_string()).unwrap();
        assert_eq!(
            (r.shape(), r.dtype()),
            (&[5usize, 7, 6][..], dtype),
            "{spec}"
        );
        let all = r.read_all::<f64>().unwrap();
        for (i, got) in all.data.iter().enumerate() {
            let idx = revseg::volume::array::unravel(i, &[5, 7, 6]);
            let a = arange(idx[0], idx[1], idx[2]);
            assert_eq!(*got, want(a), "{spec} at {idx:?}");
        }
        // A box crossing chunk (and shard) borders on every axis reads the same values.
        let part = r.read_region::<f64>(&[1, 2, 1], &[4, 5, 4]).unwrap();
        for (i, got) in part.data.iter().enumerate() {
            let idx = revseg::volume::array::unravel(i, &[4, 5, 4]);
            assert_eq!(
                *got,
                all.get(&[1 + idx[0], 2 + idx[1], 1 + idx[2]]).unwrap()
            );
        }
        r
    };
    check("v2_blosc_u2.zarr", &|a| a * 7.0, Dtype::U16);
    check("v3_sharded_f4.zarr", &|a| a / 4.0 - 20.0, Dtype::F32);
    check("v3_gzip_i4.zarr", &|a| a * 11.0, Dtype::U32);
    let r = check("ome_v2.zarr/0", &|a| a % 251.0, Dtype::U8);
    assert_eq!(
        r.voxel_size(),
        Some(VoxelSize::new(40.0, 8.0, 8.0).unwrap())
    );
    assert_eq!(r.offset_nm(), Some([400.0, 80.0, 16.0]));
    // Sharded: the grid zarrs reports is the shard grid (4 x 6 x 4 shards of 2 x 3 x 2 chunks).
    let z = zarr::ZarrArray::open(fixture("v3_sharded_f4.zarr")).unwrap();
    assert_eq!(z.chunks, vec![4, 6, 4]);
}

/// A negative value in a signed array is refused by name rather than wrapped.
#[test]
fn zarr_signed_negative_values_are_refused() {
    let d = tmpdir("signed");
    let p = d.join("s.zarr");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join(".zarray"),
        r#"{"zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "<i2", "compressor": null, "fill_value": 0, "order": "C", "filters": null}"#,
    )
    .unwrap();
    std::fs::write(p.join("0"), [5u8, 0, 0xff, 0xff]).unwrap();
    let z = zarr::ZarrArray::open(&p).unwrap();
    assert!(z.signed);
    let e = z.read_all::<u16>().unwrap_err().to_string();
    assert!(e.contains("-1") && e.contains("negative"), "{e}");
}

/// Outputs inside a store carry OME-Zarr multiscales in their group (scale and translation in
/// nm, axes z, y, x), which revseg reads back as the voxel size and offset.
#[test]
fn zarr_outputs_carry_ome_metadata() {
    let d = tmpdir("omeout");
    for v3 in [false, true] {
        let spec = d
            .join(format!("out{}.zarr/0", v3 as u8))
            .display()
            .to_string();
        let vs = VoxelSize::new(30.0, 6.0, 4.0).unwrap();
        let opt = revseg::volume::io::WriteOptions {
            voxel_size: Some(vs),
            offset_nm: Some([60.0, 12.0, 8.0]),
            zarr_v3: v3,
            compress: true,
            ..Default::default()
        };
        let mut w =
            revseg::volume::io::create_volume_with(&spec, &[3, 4, 5], Dtype::U8, &opt).unwrap();
        let a = Array::new(vec![3, 4, 5], (0..60u8).collect()).unwrap();
        w.write_region(&[0, 0, 0], &a).unwrap();
        w.finish().unwrap();
        let r = revseg::volume::io::open_volume(&spec).unwrap();
        assert_eq!(r.read_all::<u8>().unwrap(), a);
        assert_eq!(
            (r.voxel_size(), r.offset_nm()),
            (Some(vs), Some([60.0, 12.0, 8.0]))
        );
        let group = d.join(format!("out{}.zarr", v3 as u8));
        let text =
            std::fs::read_to_string(group.join(if v3 { "zarr.json" } else { ".zattrs" })).unwrap();
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ms = if v3 {
            &j["attributes"]["multiscales"]
        } else {
            &j["multiscales"]
        };
        let ds = &ms[0]["datasets"][0];
        assert_eq!(ds["path"], "0");
        assert_eq!(ms[0]["axes"][2]["unit"], "nanometer");
        assert_eq!(
            ds["coordinateTransformations"][0]["scale"],
            serde_json::json!([30.0, 6.0, 4.0])
        );
        assert_eq!(
            ds["coordinateTransformations"][1]["translation"],
            serde_json::json!([60.0, 12.0, 8.0])
        );
    }
}
