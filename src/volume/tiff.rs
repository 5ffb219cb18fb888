//! Multi-page TIFF stacks (SNEMI3D's `train-input.tif`, `train-labels.tif`): one grey page per
//! section, read into a (Z, Y, X) array. Decoding (strips, tiles, LZW, Deflate, PackBits,
//! predictors, BigTIFF) is the `tiff` crate's; this module checks that the pages form a volume and
//! reads the voxel size that ImageJ and other tools store.

use super::array::{copy_box, io_err, write_file_atomic, AnyArray, Array, Dtype, Voxel, VoxelSize};
use super::io::{FormatReader, FormatWriter, Opened, WriteRequest};
use crate::error::{Error, Result};
use std::path::Path;
use tiff::decoder::{Decoder, DecodingResult};
use tiff::encoder::{colortype, Rational, TiffEncoder};
use tiff::tags::{ResolutionUnit, Tag};
use tiff::TiffError;

/// A volume read from a TIFF stack.
#[derive(Clone, Debug, PartialEq)]
pub struct TiffStack {
    /// Shape (pages, height, width).
    pub data: AnyArray,
    /// From the resolution tags when they give a plausible physical pixel size. The section
    /// thickness comes from ImageJ's `spacing`; without it z is `VoxelSize::default().z`.
    pub voxel_size: Option<VoxelSize>,
}

fn page_err(path: &Path, page: usize, e: TiffError) -> Error {
    match e {
        TiffError::UnsupportedError(u) => Error::Invalid(format!(
            "{}: page {page}: unsupported TIFF feature: {u}",
            path.display()
        )),
        TiffError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Io(format!(
                "{}: page {page}: file ends early (truncated?): {io}",
                path.display()
            ))
        }
        other => Error::Io(format!(
            "{}: page {page}: corrupt or unreadable TIFF: {other}",
            path.display()
        )),
    }
}

/// Signed pages are accepted when every value is non-negative (label volumes saved as int32).
fn signed_to_unsigned<S: Copy + Into<i64>, U: TryFrom<i64>>(
    v: Vec<S>,
    path: &Path,
    page: usize,
) -> Result<Vec<U>> {
    v.into_iter()
        .map(|s| {
            U::try_from(s.into()).map_err(|_| {
                Error::Invalid(format!(
                    "{}: page {page}: signed pixel value {} cannot be stored as unsigned; only non-negative signed pages are read",
                    path.display(),
                    s.into()
                ))
            })
        })
        .collect()
}

enum Pages {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Pages {
    fn kind(&self) -> &'static str {
        match self {
            Pages::U8(_) => "uint8",
            Pages::U16(_) => "uint16",
            Pages::U32(_) => "uint32",
            Pages::U64(_) => "uint64",
            Pages::F32(_) => "float32",
            Pages::F64(_) => "float64",
        }
    }
}

fn to_pages(r: DecodingResult, path: &Path, page: usize) -> Result<Pages> {
    Ok(match r {
        DecodingResult::U8(v) => Pages::U8(v),
        DecodingResult::U16(v) => Pages::U16(v),
        DecodingResult::U32(v) => Pages::U32(v),
        DecodingResult::U64(v) => Pages::U64(v),
        DecodingResult::F16(v) => Pages::F32(v.into_iter().map(f32::from).collect()),
        DecodingResult::F32(v) => Pages::F32(v),
        DecodingResult::F64(v) => Pages::F64(v),
        DecodingResult::I8(v) => Pages::U8(signed_to_unsigned(v, path, page)?),
        DecodingResult::I16(v) => Pages::U16(signed_to_unsigned(v, path, page)?),
        DecodingResult::I32(v) => Pages::U32(signed_to_unsigned(v, path, page)?),
        DecodingResult::I64(v) => Pages::U64(signed_to_unsigned(v, path, page)?),
    })
}

/// Appends `p` to `acc`, which must hold the same pixel type.
fn append(acc: &mut Option<Pages>, p: Pages, path: &Path, page: usize) -> Result<()> {
    let Some(a) = acc else {
        *acc = Some(p);
        return Ok(());
    };
    match (a, p) {
        (Pages::U8(a), Pages::U8(p)) => a.extend(p),
        (Pages::U16(a), Pages::U16(p)) => a.extend(p),
        (Pages::U32(a), Pages::U32(p)) => a.extend(p),
        (Pages::U64(a), Pages::U64(p)) => a.extend(p),
        (Pages::F32(a), Pages::F32(p)) => a.extend(p),
        (Pages::F64(a), Pages::F64(p)) => a.extend(p),
        (a, p) => {
            return Err(Error::Invalid(format!(
                "{}: page {page} holds {} pixels but page 0 holds {}; a stack needs one pixel type",
                path.display(),
                p.kind(),
                a.kind()
            )))
        }
    }
    Ok(())
}

/// Reads every page of a TIFF file into a (Z, Y, X) volume.
pub fn read(path: impl AsRef<Path>) -> Result<TiffStack> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut dec = Decoder::new(std::io::BufReader::new(file)).map_err(|e| page_err(path, 0, e))?;
    let mut acc: Option<Pages> = None;
    let mut dims: Option<(u32, u32)> = None;
    let mut voxel_size = None;
    let mut page = 0usize;
    loop {
        let (w, h) = dec.dimensions().map_err(|e| page_err(path, page, e))?;
        match dims {
            None => dims = Some((w, h)),
            Some((w0, h0)) if (w0, h0) != (w, h) => {
                return Err(Error::Invalid(format!(
                    "{}: page {page} is {w}x{h} pixels but page 0 is {w0}x{h0}; the pages of a stack must be the same size",
                    path.display()
                )))
            }
            _ => {}
        }
        let ct = dec.colortype().map_err(|e| page_err(path, page, e))?;
        match ct {
            tiff::ColorType::Gray(8 | 16 | 32 | 64) => {}
            other => {
                return Err(Error::Invalid(format!(
                    "{}: page {page}: unsupported pixel format {other:?}; only single-channel 8, 16, 32 or 64-bit pages are read",
                    path.display()
                )))
            }
        }
        if page == 0 {
            voxel_size = read_voxel_size(&mut dec);
        }
        let img = dec.read_image().map_err(|e| page_err(path, page, e))?;
        let p = to_pages(img, path, page)?;
        let plen = match &p {
            Pages::U8(v) => v.len(),
            Pages::U16(v) => v.len(),
            Pages::U32(v) => v.len(),
            Pages::U64(v) => v.len(),
            Pages::F32(v) => v.len(),
            Pages::F64(v) => v.len(),
        };
        if plen != w as usize * h as usize {
            return Err(Error::Io(format!(
                "{}: page {page}: decoded {plen} pixels, expected {w}x{h}",
                path.display()
            )));
        }
        append(&mut acc, p, path, page)?;
        page += 1;
        if !dec.more_images() {
            break;
        }
        dec.next_image().map_err(|e| page_err(path, page, e))?;
    }
    let (w, h) = dims.unwrap_or((0, 0));
    let shape = vec![page, h as usize, w as usize];
    let data = match acc {
        Some(Pages::U8(v)) => Array::new(shape, v)?.into(),
        Some(Pages::U16(v)) => Array::new(shape, v)?.into(),
        Some(Pages::U32(v)) => Array::new(shape, v)?.into(),
        Some(Pages::U64(v)) => Array::new(shape, v)?.into(),
        Some(Pages::F32(v)) => Array::new(shape, v)?.into(),
        Some(Pages::F64(v)) => Array::new(shape, v)?.into(),
        None => {
            return Err(Error::Invalid(format!(
                "{}: no image pages",
                path.display()
            )))
        }
    };
    Ok(TiffStack { data, voxel_size })
}

fn rational(v: tiff::decoder::ifd::Value) -> Option<f64> {
    use tiff::decoder::ifd::Value;
    match v {
        Value::Rational(n, d) if d != 0 => Some(n as f64 / d as f64),
        Value::Float(f) => Some(f as f64),
        Value::Double(f) => Some(f),
        Value::List(mut l) if !l.is_empty() => rational(l.swap_remove(0)),
        _ => None,
    }
}

/// Nanometres per unit of an ImageJ `unit=` value.
fn unit_nm(u: &str) -> Option<f64> {
    match u.trim() {
        "nm" | "nanometer" | "nanometre" => Some(1.0),
        "micron" | "um" | "µm" | "\u{3bc}m" | "\\u00B5m" | "micrometer" | "micrometre" => {
            Some(1e3)
        }
        "mm" | "millimeter" => Some(1e6),
        "cm" => Some(1e7),
        "angstrom" | "A" | "Å" => Some(0.1),
        _ => None,
    }
}

/// Pixel size from XResolution/YResolution (pixels per unit). ResolutionUnit inch/cm, or ImageJ's
/// description `unit=...` with no unit in the tag. Values outside 0.01 nm .. 100 um are taken to
/// be the 72 dpi that many writers put by default, not a physical size.
fn read_voxel_size<R: std::io::Read + std::io::Seek>(dec: &mut Decoder<R>) -> Option<VoxelSize> {
    let xres = dec
        .find_tag(Tag::XResolution)
        .ok()
        .flatten()
        .and_then(rational)?;
    let yres = dec
        .find_tag(Tag::YResolution)
        .ok()
        .flatten()
        .and_then(rational)
        .unwrap_or(xres);
    let unit = dec
        .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
        .ok()
        .flatten()
        .unwrap_or(2);
    let desc = match dec.find_tag(Tag::ImageDescription).ok().flatten() {
        Some(tiff::decoder::ifd::Value::Ascii(s)) => s,
        _ => String::new(),
    };
    let field = |key: &str| {
        desc.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
    };
    // `unit=` and `spacing=` lines: ImageJ's description, or the one `write` puts.
    let desc_unit = field("unit").and_then(|u| unit_nm(&u));
    let per_unit_nm = match (unit, desc_unit) {
        (1, Some(u)) if desc.starts_with("ImageJ") => u,
        (2, _) => 2.54e7,
        (3, _) => 1e7,
        _ => return None,
    };
    if xres <= 0.0 || yres <= 0.0 {
        return None;
    }
    let x = per_unit_nm / xres;
    let y = per_unit_nm / yres;
    let plausible = |v: f64| v.is_finite() && (0.01..=1e5).contains(&v);
    if !plausible(x) || !plausible(y) {
        return None;
    }
    let z = desc_unit
        .and_then(|u| {
            field("spacing")
                .and_then(|s| s.parse::<f64>().ok())
                .map(|s| s * u)
        })
        .filter(|&z| plausible(z))
        .unwrap_or(VoxelSize::default().z);
    Some(VoxelSize { z, y, x })
}

/// Element types a TIFF stack can be written in.
pub trait TiffVoxel: Voxel {
    type Color: colortype::ColorType<Inner = Self>;
}
impl TiffVoxel for u8 {
    type Color = colortype::Gray8;
}
impl TiffVoxel for u16 {
    type Color = colortype::Gray16;
}
impl TiffVoxel for u32 {
    type Color = colortype::Gray32;
}
impl TiffVoxel for f32 {
    type Color = colortype::Gray32Float;
}

/// Writes a (Z, Y, X) volume as a multi-page TIFF, one uncompressed page per section. With a
/// voxel size, pages carry the pixel size in the resolution tags (pixels per cm, which Fiji and
/// tifffile read) and the section thickness as `spacing=` (nm) in the first page's description.
pub fn write<T: TiffVoxel>(
    path: impl AsRef<Path>,
    volume: &Array<T>,
    voxel_size: Option<VoxelSize>,
) -> Result<()>
where
    [T]: tiff::encoder::TiffValue,
{
    let path = path.as_ref();
    let [z, h, w] = volume.shape[..] else {
        return Err(Error::shape(
            "tiff::write",
            format!(
                "{}: a stack is (Z, Y, X); got shape {:?}",
                path.display(),
                volume.shape
            ),
        ));
    };
    if z == 0 || h == 0 || w == 0 || h > u32::MAX as usize || w > u32::MAX as usize {
        return Err(Error::shape(
            "tiff::write",
            format!(
                "{}: cannot write a stack of shape {:?}",
                path.display(),
                volume.shape
            ),
        ));
    }
    if let Some(v) = voxel_size {
        v.check()?;
    }
    let terr = |page: usize, e: TiffError| {
        Error::Io(format!("{}: writing page {page}: {e}", path.display()))
    };
    // Classic TIFF offsets are 32-bit; past 4 GiB BigTIFF is needed.
    let big = volume.data.len() * std::mem::size_of::<T>() > (u32::MAX as usize) - (1 << 24);
    write_file_atomic(path, |out| {
        if big {
            let mut enc = TiffEncoder::new_big(out).map_err(|e| terr(0, e))?;
            write_pages::<T, _, _>(&mut enc, volume, voxel_size, (z, h, w), &terr)
        } else {
            let mut enc = TiffEncoder::new(out).map_err(|e| terr(0, e))?;
            write_pages::<T, _, _>(&mut enc, volume, voxel_size, (z, h, w), &terr)
        }
    })
}

fn write_pages<T: TiffVoxel, W: std::io::Write + std::io::Seek, K: tiff::encoder::TiffKind>(
    enc: &mut TiffEncoder<W, K>,
    volume: &Array<T>,
    voxel_size: Option<VoxelSize>,
    (z, h, w): (usize, usize, usize),
    terr: &dyn Fn(usize, TiffError) -> Error,
) -> Result<()>
where
    [T]: tiff::encoder::TiffValue,
{
    let plane = h * w;
    for page in 0..z {
        let mut img = enc
            .new_image::<T::Color>(w as u32, h as u32)
            .map_err(|e| terr(page, e))?;
        if let Some(v) = voxel_size {
            // Pixels per centimetre as 1e9 / (nm * 100): 0.01 nm steps, within u32. Not
            // ImageJ's own layout, which readers take to mean contiguous page data.
            let res = |nm: f64| Rational {
                n: 1_000_000_000,
                d: (nm * 100.0).round().clamp(1.0, u32::MAX as f64) as u32,
            };
            let e = img.encoder();
            e.write_tag(Tag::ResolutionUnit, ResolutionUnit::Centimeter.to_u16())
                .map_err(|er| terr(page, er))?;
            e.write_tag(Tag::XResolution, res(v.x))
                .map_err(|er| terr(page, er))?;
            e.write_tag(Tag::YResolution, res(v.y))
                .map_err(|er| terr(page, er))?;
            if page == 0 {
                let desc = format!("revseg\nunit=nm\nspacing={}\n", v.z);
                e.write_tag(Tag::ImageDescription, desc.as_str())
                    .map_err(|er| terr(page, er))?;
            }
        }
        img.write_data(&volume.data[page * plane..(page + 1) * plane])
            .map_err(|e| terr(page, e))?;
    }
    Ok(())
}

/// A TIFF stack for the dispatcher: decoded whole at open, regions are copies.
struct TiffReader(AnyArray);

pub(crate) fn open_volume(path: &Path) -> Result<Opened> {
    let st = read(path)?;
    Ok(Opened {
        shape: st.data.shape().to_vec(),
        dtype: st.data.dtype(),
        voxel_size: st.voxel_size,
        offset_nm: None,
        reader: Box::new(TiffReader(st.data)),
    })
}

impl FormatReader for TiffReader {
    fn read_region(&self, offset: &[usize], shape: &[usize], _want: Dtype) -> Result<AnyArray> {
        any_one!(&self.0, |x| x.slice(offset, shape).map(AnyArray::from))
    }
}

/// What a TIFF stack can hold, checked before anything touches the disk.
pub(crate) fn check_writable(shape: &[usize], dtype: Dtype) -> std::result::Result<(), String> {
    if shape.len() != 3 || shape.contains(&0) {
        return Err(format!(
            "a TIFF stack is (Z, Y, X) with no empty axis; got shape {shape:?}"
        ));
    }
    if !matches!(dtype, Dtype::U8 | Dtype::U16 | Dtype::U32 | Dtype::F32) {
        return Err(format!(
            "TIFF stacks are written as uint8, uint16, uint32 or float32, not {dtype}; use HDF5, zarr or raw"
        ));
    }
    Ok(())
}

/// TIFF pages are written whole, so the volume is buffered and written at `finish`.
struct TiffWriter {
    path: std::path::PathBuf,
    buf: AnyArray,
    voxel_size: Option<VoxelSize>,
}

pub(crate) fn create_volume(
    path: std::path::PathBuf,
    req: &WriteRequest,
) -> Result<Box<dyn FormatWriter>> {
    Ok(Box::new(TiffWriter {
        path,
        buf: AnyArray::zeros(req.dtype, req.shape)?,
        voxel_size: req.opt.voxel_size,
    }))
}

impl FormatWriter for TiffWriter {
    fn write_region(&mut self, offset: &[usize], data: &AnyArray) -> Result<()> {
        let zeros = vec![0; offset.len()];
        let full = self.buf.shape().to_vec();
        any_pair!(
            data,
            &mut self.buf,
            |s, d| copy_box(
                &s.data,
                &s.shape,
                &zeros,
                &mut d.data,
                &full,
                offset,
                &s.shape
            ),
            return Err(Error::Invalid(format!(
                "{}: internal: region dtype differs from the buffer's",
                self.path.display()
            )))
        );
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let (path, vs) = (&self.path, self.voxel_size);
        match &self.buf {
            AnyArray::U8(a) => write(path, a, vs),
            AnyArray::U16(a) => write(path, a, vs),
            AnyArray::U32(a) => write(path, a, vs),
            AnyArray::F32(a) => write(path, a, vs),
            other => Err(Error::Invalid(format!(
                "{}: TIFF cannot hold {}",
                path.display(),
                other.dtype()
            ))),
        }
    }

    fn discard(&mut self) {}
}
