//! `revseg render`'s panels: where each volume lands and with which colours.

mod common;

use common::decode_png as decode;
use revseg::plot::label_color;
use revseg::render::{write_section_panels, Section};

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
