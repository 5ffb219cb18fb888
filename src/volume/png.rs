//! A minimal PNG writer (8-bit grey or RGB, one IDAT, zlib from flate2) for previews that a person
//! opens in any viewer. Reading PNG is not needed by the project.

use super::array::{io_err, write_file_atomic};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

fn crc32(parts: &[&[u8]]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for p in parts {
        for &b in *p {
            c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}

/// Encodes an image of `channels` (1 = grey, 3 = RGB) 8-bit samples, rows top to bottom.
pub fn encode(width: usize, height: usize, channels: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    let color = match channels {
        1 => 0u8,
        3 => 2u8,
        _ => {
            return Err(Error::Invalid(format!(
                "png: {channels} channels; 1 or 3 are written"
            )))
        }
    };
    if width == 0 || height == 0 || width > u32::MAX as usize / 4 || height > u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "png: cannot write a {width}x{height} image"
        )));
    }
    if pixels.len() != width * height * channels {
        return Err(Error::shape(
            "png::encode",
            format!(
                "{width}x{height}x{channels} needs {} bytes, got {}",
                width * height * channels,
                pixels.len()
            ),
        ));
    }
    let row = width * channels;
    // Filter type 0 on every row: previews are small and zlib does the rest.
    let mut raw = Vec::with_capacity((row + 1) * height);
    for r in pixels.chunks(row) {
        raw.push(0);
        raw.extend_from_slice(r);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    z.write_all(&raw)
        .map_err(|e| Error::Io(format!("png: {e}")))?;
    let idat = z.finish().map_err(|e| Error::Io(format!("png: {e}")))?;

    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
    };
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, color, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &idat);
    chunk(b"IEND", &[]);
    Ok(out)
}

/// Writes a PNG file atomically.
pub fn write(
    path: impl AsRef<Path>,
    width: usize,
    height: usize,
    channels: usize,
    pixels: &[u8],
) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode(width, height, channels, pixels)?;
    write_file_atomic(path, |w| w.write_all(&bytes).map_err(|e| io_err(path, e)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc_check_value() {
        assert_eq!(super::crc32(&[b"123456789"]), 0xCBF4_3926);
    }
}
