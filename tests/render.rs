//! `revseg render`'s panels: where each volume lands and with which colours.

use revseg::plot::label_color;
use revseg::render::{write_section_panels, Section};

/// Decodes an 8-bit RGB PNG written by `volume::png` (stored or deflated IDAT, filter 0 rows).
fn decode(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut pos = 8;
    let (mut w, mut h, mut idat) = (0, 0, Vec::new());
    while pos < bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        if kind == b"IHDR" {
            w = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
            h = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
        } else if kind == b"IDAT" {
            idat.extend_from_slice(data);
        }
        pos += 12 + len;
    }
    let mut raw = Vec::new();
    use std::io::Read;
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let row = &raw[y * (3 * w + 1)..(y + 1) * (3 * w + 1)];
        assert_eq!(row[0], 0, "filter type");
        px.extend_from_slice(&row[1..]);
    }
    (w, h, px)
}

#[test]
fn panels_show_each_volume_in_its_place() {
    // 2 sections of 8x8; section 1 is drawn. Image 0.25 left half, 1.0 right half; labels 3 | 9;
    // affinities z 0, y 1, x 0.5; segmentation 5 everywhere.
    let (nz, ny, nx) = (2, 8, 8);
    let n = nz * ny * nx;
    let image: Vec<f32> = (0..n)
        .map(|i| if i % nx < 4 { 0.25 } else { 1.0 })
        .collect();
    let labels: Vec<u32> = (0..n).map(|i| if i % nx < 4 { 3 } else { 9 }).collect();
    let mut aff = vec![0f32; 3 * n];
    aff[n..2 * n].fill(1.0);
    aff[2 * n..].fill(0.5);
    let seg = vec![5u32; n];
    let dir = std::env::temp_dir().join(format!("revseg_render_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.png");
    let s = Section {
        shape: (nz, ny, nx),
        image: &image,
        labels: &labels,
        affinities: &aff,
        segmentation: &seg,
    };
    write_section_panels(&path, &s, 1).unwrap();
    let (w, h, px) = decode(&std::fs::read(&path).unwrap());
    // Panels are scaled 4x (480 / 8 clamped to 4): 32 pixels, 8 apart, titles 14 high.
    assert_eq!((w, h), (4 * 32 + 5 * 8, 14 + 32 + 8));
    let at = |panel: usize, y: usize, x: usize| {
        let (px_x, px_y) = (8 + panel * 40 + 4 * x + 1, 14 + 4 * y + 1);
        let i = (px_y * w + px_x) * 3;
        [px[i], px[i + 1], px[i + 2]]
    };
    assert_eq!(at(0, 2, 1), [64, 64, 64]);
    assert_eq!(at(0, 2, 6), [255, 255, 255]);
    assert_eq!(at(1, 5, 0), label_color(3));
    assert_eq!(at(1, 5, 7), label_color(9));
    assert_ne!(label_color(3), label_color(9));
    assert_eq!(at(2, 3, 3), [0, 255, 128]);
    assert_eq!(at(3, 7, 7), label_color(5));
    // A section out of range is an error, not a panic.
    assert!(write_section_panels(&path, &s, 2).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
