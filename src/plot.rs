//! Line plots as PNG (loss curves, memory timelines): a small raster canvas and a 5x7 bitmap font;
//! the PNG encoding is `volume::png`'s.

use crate::error::Result;
use std::path::Path;

pub type Rgb = [u8; 3];
pub const BLUE: Rgb = [31, 119, 180];
pub const ORANGE: Rgb = [255, 127, 14];
pub const GREEN: Rgb = [44, 160, 44];
pub const RED: Rgb = [214, 39, 40];
pub const PURPLE: Rgb = [148, 103, 189];
pub const GREY: Rgb = [150, 150, 150];
const BLACK: Rgb = [0, 0, 0];

pub struct Series {
    pub name: String,
    pub color: Rgb,
    pub points: Vec<(f64, f64)>,
}

#[derive(Default)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Vertical markers (x, label), e.g. the phases of a plan.
    pub markers: Vec<(f64, String)>,
    pub y_from_zero: bool,
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb, thick: bool) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if thick {
                self.set(x, y + 1, c);
                self.set(x + 1, y, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.set(x + k as i64 * 6 + col, y + row as i64, c);
                    }
                }
            }
        }
    }
    fn text_vertical(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.set(x + row as i64, y - k as i64 * 6 - col, c);
                    }
                }
            }
        }
    }
}

fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        _ => [0; 7],
    }
}

/// Round tick step: 1, 2 or 5 times a power of ten, about `n` ticks over `span`.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-300);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

impl LinePlot {
    /// RGB8 pixels, row-major.
    pub fn render(&self, w: usize, h: usize) -> Vec<u8> {
        let mut c = Canvas::new(w, h);
        let (l, r, t, b) = (70i64, 20i64, 30i64, 45i64);
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts.filter(|p| p.0.is_finite() && p.1.is_finite()) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if self.y_from_zero {
            y0 = y0.min(0.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-12 {
            y1 = y0 + 1.0;
        }
        let pad = 0.05 * (y1 - y0);
        let (y0, y1) = (
            if self.y_from_zero && y0 >= 0.0 {
                y0
            } else {
                y0 - pad
            },
            y1 + pad,
        );
        let (pw, ph) = ((w as i64 - l - r) as f64, (h as i64 - t - b) as f64);
        let sx = |x: f64| l + ((x - x0) / (x1 - x0) * pw).round() as i64;
        let sy = |y: f64| t + ph as i64 - ((y - y0) / (y1 - y0) * ph).round() as i64;
        let ys = tick_step(y1 - y0, 6.0);
        let mut v = (y0 / ys).ceil() * ys;
        while v <= y1 {
            let py = sy(v);
            c.line((l, py), (w as i64 - r, py), [235, 235, 235], false);
            c.text(4, py - 3, &fmt_tick(v, ys), BLACK);
            v += ys;
        }
        let xs = tick_step(x1 - x0, 8.0);
        let mut v = (x0 / xs).ceil() * xs;
        while v <= x1 {
            let px = sx(v);
            c.line((px, t + ph as i64), (px, t + ph as i64 + 4), BLACK, false);
            let label = fmt_tick(v, xs);
            c.text(
                px - 3 * label.len() as i64,
                t + ph as i64 + 8,
                &label,
                BLACK,
            );
            v += xs;
        }
        for (k, (x, label)) in self.markers.iter().enumerate() {
            let px = sx(*x);
            c.line((px, t), (px, t + ph as i64), GREY, false);
            c.text(px + 3, t + 2 + 10 * (k as i64 % 2), label, GREY);
        }
        c.line((l, t), (l, t + ph as i64), BLACK, false);
        c.line(
            (l, t + ph as i64),
            (w as i64 - r, t + ph as i64),
            BLACK,
            false,
        );
        for s in &self.series {
            let mut prev: Option<(i64, i64)> = None;
            for &(x, y) in &s.points {
                if !(x.is_finite() && y.is_finite()) {
                    prev = None;
                    continue;
                }
                let p = (sx(x), sy(y));
                if let Some(q) = prev {
                    c.line(q, p, s.color, true);
                } else {
                    c.set(p.0, p.1, s.color);
                }
                prev = Some(p);
            }
        }
        c.text(l, 10, &self.title, BLACK);
        c.text(
            l + pw as i64 / 2 - 3 * self.x_label.len() as i64,
            h as i64 - 14,
            &self.x_label,
            BLACK,
        );
        c.text_vertical(
            2,
            t + ph as i64 / 2 + 3 * self.y_label.len() as i64,
            &self.y_label,
            BLACK,
        );
        for (k, s) in self.series.iter().enumerate() {
            let y = t + 8 + 12 * k as i64;
            let x = w as i64 - r - 8 * 6 - 6 * s.name.len() as i64;
            c.line((x, y + 3), (x + 20, y + 3), s.color, true);
            c.text(x + 26, y, &s.name, BLACK);
        }
        c.px
    }

    /// Render to PNG and write atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let (w, h) = (900, 500);
        crate::volume::png::write(path, w, h, 3, &self.render(w, h))
    }
}

/// Images of one size side by side, each with its title above, on white; each panel is RGB
/// (`w * h * 3` bytes) and is shown `scale` times larger (nearest neighbour) so that a 160-pixel
/// section stays readable. Returns (width, height, RGB pixels).
pub fn panels(
    titles: &[&str],
    images: &[Vec<u8>],
    w: usize,
    h: usize,
    scale: usize,
) -> (usize, usize, Vec<u8>) {
    let (gap, top) = (8usize, 14usize);
    let (pw, ph) = (w * scale, h * scale);
    let width = images.len() * pw + (images.len() + 1) * gap;
    let height = top + ph + gap;
    let mut c = Canvas::new(width, height);
    for (k, img) in images.iter().enumerate() {
        let x0 = gap + k * (pw + gap);
        c.text(x0 as i64, 3, titles.get(k).copied().unwrap_or(""), BLACK);
        for y in 0..ph {
            for x in 0..pw {
                let i = ((y / scale) * w + x / scale) * 3;
                c.set(
                    (x0 + x) as i64,
                    (top + y) as i64,
                    [img[i], img[i + 1], img[i + 2]],
                );
            }
        }
    }
    (width, height, c.px)
}

/// A colour per label, far apart for neighbouring ids; 0 (background) is black.
pub fn label_color(l: u64) -> Rgb {
    if l == 0 {
        return BLACK;
    }
    let mut h = l.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    // Kept away from black and white so that borders and background stay visible.
    let ch = |v: u64| 40 + (v & 0xff) as u8 % 200;
    [ch(h), ch(h >> 8), ch(h >> 16)]
}

/// One bar chart: a bar per category with an optional spread (drawn as a whisker of +-spread).
pub struct Bars {
    pub title: String,
    pub y_label: String,
    pub labels: Vec<String>,
    pub values: Vec<f64>,
    /// Same length as `values`, or empty for none.
    pub spreads: Vec<f64>,
    pub color: Rgb,
}

/// Bar charts side by side on one canvas, each `w` x `h` pixels, y from zero; the value is
/// written above each bar so that the picture reads without a ruler. Returns (width, height,
/// RGB pixels).
pub fn bar_charts(charts: &[Bars], w: usize, h: usize) -> (usize, usize, Vec<u8>) {
    let width = w * charts.len().max(1);
    let mut c = Canvas::new(width, h);
    let (l, r, t, b) = (60i64, 15i64, 30i64, 40i64);
    for (k, ch) in charts.iter().enumerate() {
        let ox = (k * w) as i64;
        let spread = |i: usize| ch.spreads.get(i).copied().unwrap_or(0.0);
        let top = (0..ch.values.len())
            .map(|i| ch.values[i] + spread(i))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let y1 = if top > 0.0 { top * 1.15 } else { 1.0 };
        let (pw, ph) = (w as i64 - l - r, h as i64 - t - b);
        let sy = |y: f64| t + ph - ((y / y1) * ph as f64).round() as i64;
        let ys = tick_step(y1, 5.0);
        let mut v = 0.0;
        while v <= y1 {
            let py = sy(v);
            c.line(
                (ox + l, py),
                (ox + w as i64 - r, py),
                [235, 235, 235],
                false,
            );
            c.text(ox + 14, py - 3, &fmt_tick(v, ys), BLACK);
            v += ys;
        }
        c.line((ox + l, t), (ox + l, t + ph), BLACK, false);
        c.line((ox + l, t + ph), (ox + w as i64 - r, t + ph), BLACK, false);
        let n = ch.values.len().max(1) as i64;
        let slot = pw / n;
        for (i, &val) in ch.values.iter().enumerate() {
            let x0 = ox + l + i as i64 * slot + slot / 5;
            let x1 = ox + l + (i as i64 + 1) * slot - slot / 5;
            let mid = (x0 + x1) / 2;
            if val.is_finite() {
                for x in x0..=x1 {
                    c.line((x, sy(val)), (x, t + ph), ch.color, false);
                }
                let s = spread(i);
                if s > 0.0 {
                    let (a, z) = (sy(val - s), sy(val + s));
                    c.line((mid, a), (mid, z), BLACK, false);
                    c.line((mid - 4, z), (mid + 4, z), BLACK, false);
                    c.line((mid - 4, a), (mid + 4, a), BLACK, false);
                }
                let txt = format!("{val:.3}");
                c.text(mid - 3 * txt.len() as i64, sy(val + s) - 10, &txt, BLACK);
            }
            let lab = ch.labels.get(i).map_or("", |s| s.as_str());
            c.text(mid - 3 * lab.len() as i64, t + ph + 8, lab, BLACK);
        }
        c.text(ox + l, 10, &ch.title, BLACK);
        c.text_vertical(
            ox + 2,
            t + ph / 2 + 3 * ch.y_label.len() as i64,
            &ch.y_label,
            BLACK,
        );
    }
    (width, h, c.px)
}

/// Line plots side by side, each rendered at `w` x `h`: (width, height, RGB pixels).
pub fn side_by_side(plots: &[LinePlot], w: usize, h: usize) -> (usize, usize, Vec<u8>) {
    let width = w * plots.len().max(1);
    let mut px = vec![255u8; width * h * 3];
    for (k, p) in plots.iter().enumerate() {
        let one = p.render(w, h);
        for y in 0..h {
            let dst = (y * width + k * w) * 3;
            px[dst..dst + w * 3].copy_from_slice(&one[y * w * 3..(y + 1) * w * 3]);
        }
    }
    (width, h, px)
}
