//! `revseg bench ops`: GFLOP/s of conv3d forward, input gradient and weight gradient for every
//! convolution shape of the Superhuman network at a given patch.

use super::time_median;
use crate::backend::{Backend, Bump, Write};
use crate::error::Result;
use crate::json::{self, Json};
use crate::ops::conv3d::Conv3dGeom;
use crate::rng::Rng;
use crate::tensor::Element;

/// Widths of the Superhuman preset (ENGINEERING.md section 1).
pub const SUPERHUMAN_WIDTHS: [usize; 5] = [28, 36, 48, 64, 80];

/// One convolution shape of the network and how many layers have it.
#[derive(Clone, Debug)]
pub struct ConvLayer {
    pub name: String,
    pub geom: Conv3dGeom,
    pub count: usize,
}

/// The convolutions of the network at patch (d, h, w), batch 1: the base network's, then the
/// half-width ones of one reversible block per ResMod (`rev*` rows).
pub fn superhuman_convs(
    widths: &[usize],
    d: usize,
    h: usize,
    w: usize,
    outputs: usize,
) -> Vec<ConvLayer> {
    let mut out: Vec<ConvLayer> = Vec::new();
    let mut add =
        |name: String, ci: usize, co: usize, k: (usize, usize, usize), s: usize, count: usize| {
            let geom = Conv3dGeom {
                n: 1,
                ci,
                co,
                d,
                h: h >> s,
                w: w >> s,
                kd: k.0,
                kh: k.1,
                kw: k.2,
            };
            if let Some(l) = out.iter_mut().find(|l| l.geom == geom) {
                l.count += count;
            } else {
                out.push(ConvLayer { name, geom, count });
            }
        };
    add("embed_in".into(), 1, widths[0], (1, 5, 5), 0, 1);
    let last = widths.len() - 1;
    for (s, &c) in widths.iter().enumerate() {
        let cin = if s == 0 { widths[0] } else { widths[s - 1] };
        add(format!("enc{s}.conv1"), cin, c, (1, 3, 3), s, 1);
        add(
            format!("res{s}.conv2/3"),
            c,
            c,
            (3, 3, 3),
            s,
            if s == last { 2 } else { 4 },
        );
        if s != last {
            add(format!("dec{s}.conv1"), c, c, (1, 3, 3), s, 1);
        }
    }
    // The reversible variant's F and G work on half the channels (count: per block, per ResMod).
    for (s, &c) in widths.iter().enumerate() {
        let modules = if s == last { 1 } else { 2 };
        add(
            format!("rev{s}.f/g"),
            c / 2,
            c / 2,
            (3, 3, 3),
            s,
            4 * modules,
        );
    }
    add("embed_out".into(), widths[0], widths[0], (1, 5, 5), 0, 1);
    add("output".into(), widths[0], outputs, (1, 1, 1), 0, 1);
    out
}

#[derive(Clone, Debug)]
pub struct ConvBench {
    pub layer: ConvLayer,
    /// Seconds for forward, input gradient, weight gradient.
    pub secs: [f64; 3],
}

impl ConvBench {
    pub fn gflops(&self) -> [f64; 3] {
        let f = self.layer.geom.flops();
        self.secs.map(|s| f / s / 1e9)
    }
}

pub fn bench_conv<B: Backend>(b: &B, layer: &ConvLayer, min_secs: f64) -> Result<ConvBench> {
    let g = layer.geom;
    let mut bump = Bump::default();
    let x = bump.view(g.input_shape());
    let w = bump.view(g.weight_shape());
    let y = bump.view(g.output_shape());
    let dy = bump.view(g.output_shape());
    let dx = bump.view(g.input_shape());
    let dw = bump.view(g.weight_shape());
    let mut a = b.alloc_arena(bump.len())?;
    let mut rng = Rng::new(7);
    for v in [x, w, dy] {
        let data: Vec<B::Elem> = rng
            .normals(v.region.len)
            .into_iter()
            .map(B::Elem::from_f64)
            .collect();
        b.upload(&mut a, v.region, &data)?;
    }
    let mut err = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            err.get_or_insert(e);
        }
    };
    // Each timed call waits for the device: a GPU only queues the kernels.
    let f = time_median(2, min_secs, || {
        keep(
            b.conv3d_forward(&mut a, x, w, None, y)
                .and_then(|_| b.synchronize()),
        )
    });
    let bi = time_median(2, min_secs, || {
        keep(
            b.conv3d_backward_input(&mut a, dy, w, dx, Write::Overwrite)
                .and_then(|_| b.synchronize()),
        )
    });
    let bw = time_median(2, min_secs, || {
        keep(
            b.conv3d_backward_weight(&mut a, x, dy, dw, Write::Overwrite)
                .and_then(|_| b.synchronize()),
        )
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok(ConvBench {
        layer: layer.clone(),
        secs: [f, bi, bw],
    })
}

/// The same three passes on bf16 operands with f32 accumulation (CPU kernels of
/// backend/cpu/conv3d_bf16.rs, the fastest path this CPU has): bf16 results for the forward and the
/// input gradient, f32 for the weight gradient, as a bf16 training step stores them.
pub fn bench_conv_bf16(layer: &ConvLayer, min_secs: f64) -> ConvBench {
    use crate::backend::cpu::conv3d_bf16::{self as k, Path};
    use half::bf16;
    let g = layer.geom;
    let mut rng = Rng::new(7);
    let mut gen =
        |n: usize| -> Vec<bf16> { rng.normals(n).into_iter().map(bf16::from_f64).collect() };
    let (x, w, dy) = (
        gen(g.input_shape().len()),
        gen(g.weight_shape().len()),
        gen(g.output_shape().len()),
    );
    let mut y = vec![bf16::ZERO; g.output_shape().len()];
    let mut dx = vec![bf16::ZERO; g.input_shape().len()];
    let mut dw = vec![0f32; g.weight_shape().len()];
    let path = Path::best();
    let f = time_median(2, min_secs, || {
        k::forward(path, &g, &x, &w, None, &mut y, false)
    });
    let bi = time_median(2, min_secs, || {
        k::backward_input(path, &g, &dy, &w, &mut dx, false)
    });
    let bw = time_median(2, min_secs, || {
        k::backward_weight(path, &g, &x, &dy, &mut dw, false)
    });
    ConvBench {
        layer: layer.clone(),
        secs: [f, bi, bw],
    }
}

/// Rows of `bench ops --precision bf16` on the CPU: each layer in bf16, then in f32 right after
/// (the f32 rows of the same process, for the ratio on a shared machine).
pub fn run_bf16_beside_f32(
    patch: (usize, usize, usize),
    min_secs: f64,
    only: Option<&str>,
    mut progress: impl FnMut(&ConvBench, &ConvBench),
) -> Result<Vec<(ConvBench, ConvBench)>> {
    check_min_secs(min_secs)?;
    crate::model::NetConfig::superhuman(0).check_patch(patch.0, patch.1, patch.2)?;
    let b = crate::backend::cpu::CpuBackend::<f32>::new();
    let mut out = Vec::new();
    for l in superhuman_convs(&SUPERHUMAN_WIDTHS, patch.0, patch.1, patch.2, 3)
        .iter()
        .filter(|l| only.is_none_or(|o| l.name.contains(o)))
    {
        let h = bench_conv_bf16(l, min_secs);
        let f = bench_conv(&b, l, min_secs)?;
        progress(&h, &f);
        out.push((h, f));
    }
    Ok(out)
}

fn check_min_secs(min_secs: f64) -> Result<()> {
    if !(min_secs.is_finite() && min_secs > 0.0) {
        return Err(crate::Error::Value {
            what: "--min-secs".into(),
            detail: format!("{min_secs} is not a finite number of seconds above 0, e.g. 0.5"),
        });
    }
    Ok(())
}

/// "bf16 / f32" GFLOP/s of the forward, input gradient and weight gradient.
pub fn beside(h: &ConvBench, f: &ConvBench) -> [String; 3] {
    let (gh, gf) = (h.gflops(), f.gflops());
    std::array::from_fn(|i| format!("{:.1} / {:.1}", gh[i], gf[i]))
}

/// The bf16 table with the f32 GFLOP/s beside each pass and the step totals of both.
pub fn markdown_bf16(rows: &[(ConvBench, ConvBench)]) -> String {
    let mut s = String::from("| layer | shape | count | fwd bf16 / f32 GFLOP/s | bwd-input bf16 / f32 | bwd-weight bf16 / f32 |\n|---|---|---|---|---|---|\n");
    for (h, f) in rows {
        let p = beside(h, f);
        s += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            h.layer.name,
            shape_str(&h.layer.geom),
            h.layer.count,
            p[0],
            p[1],
            p[2]
        );
    }
    let hs: Vec<ConvBench> = rows.iter().map(|r| r.0.clone()).collect();
    let fs: Vec<ConvBench> = rows.iter().map(|r| r.1.clone()).collect();
    let ((fl, th), (_, tf)) = (totals(&hs), totals(&fs));
    if th > 0.0 && tf > 0.0 {
        s += &format!("\nThe base network's convolutions of one step ({:.1} GFLOP): bf16 {:.3} s ({:.1} GFLOP/s), f32 {:.3} s ({:.1} GFLOP/s), bf16/f32 time {:.3}\n", fl / 1e9, th, fl / th / 1e9, tf, fl / tf / 1e9, th / tf);
    }
    s
}

pub fn run<B: Backend>(
    b: &B,
    patch: (usize, usize, usize),
    min_secs: f64,
    only: Option<&str>,
    mut progress: impl FnMut(&ConvBench),
) -> Result<Vec<ConvBench>> {
    check_min_secs(min_secs)?;
    // The layers are those of the superhuman net: its pooling decides which patches exist.
    crate::model::NetConfig::superhuman(0).check_patch(patch.0, patch.1, patch.2)?;
    let layers = superhuman_convs(&SUPERHUMAN_WIDTHS, patch.0, patch.1, patch.2, 3);
    let mut out = Vec::new();
    for l in layers
        .iter()
        .filter(|l| only.is_none_or(|o| l.name.contains(o)))
    {
        let r = bench_conv(b, l, min_secs)?;
        progress(&r);
        out.push(r);
    }
    Ok(out)
}

pub fn shape_str(g: &Conv3dGeom) -> String {
    format!(
        "{}->{} {}x{}x{} @ {}x{}x{}",
        g.ci, g.co, g.kd, g.kh, g.kw, g.d, g.h, g.w
    )
}

pub fn markdown(results: &[ConvBench]) -> String {
    let mut s = String::from("| layer | shape | count | fwd GFLOP/s | bwd-input GFLOP/s | bwd-weight GFLOP/s | fwd ms |\n|---|---|---|---|---|---|---|\n");
    for r in results {
        let g = r.gflops();
        s += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
            r.layer.name,
            shape_str(&r.layer.geom),
            r.layer.count,
            g[0],
            g[1],
            g[2],
            r.secs[0] * 1e3
        );
    }
    let (fl, t) = totals(results);
    s += &format!("\nThe convolutions above (forward + both backward passes, weighted by layer count): {:.1} GFLOP in {:.3} s = {:.1} GFLOP/s\n", fl / 1e9, t, fl / t / 1e9);
    s
}

/// FLOPs and seconds of every convolution pass of one training step of the base network (the
/// reversible `rev*` rows are left out of the total).
pub fn totals(results: &[ConvBench]) -> (f64, f64) {
    let base: Vec<&ConvBench> = results
        .iter()
        .filter(|r| !r.layer.name.starts_with("rev"))
        .collect();
    let fl: f64 = base
        .iter()
        .map(|r| 3.0 * r.layer.geom.flops() * r.layer.count as f64)
        .sum();
    let t: f64 = base
        .iter()
        .map(|r| r.secs.iter().sum::<f64>() * r.layer.count as f64)
        .sum();
    (fl, t)
}

pub fn json(results: &[ConvBench], device: &str) -> Json {
    let (fl, t) = totals(results);
    json::obj([
        ("device", Json::from(device)),
        (
            "layers",
            Json::Array(
                results
                    .iter()
                    .map(|r| {
                        let g = r.gflops();
                        json::obj([
                            ("layer", Json::from(r.layer.name.clone())),
                            ("shape", Json::from(shape_str(&r.layer.geom))),
                            ("count", Json::from(r.layer.count)),
                            ("flops", Json::from(r.layer.geom.flops())),
                            ("forward_gflops", Json::from(g[0])),
                            ("backward_input_gflops", Json::from(g[1])),
                            ("backward_weight_gflops", Json::from(g[2])),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("step_conv_gflop", Json::from(fl / 1e9)),
        ("step_conv_seconds", Json::from(t)),
        ("step_conv_gflops", Json::from(fl / t / 1e9)),
    ])
}
