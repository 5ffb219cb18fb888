//! Training end to end on small synthetic volumes: learning, exact resume, bit-identical
//! predictions after a checkpoint round trip, NaN handling and bad input.

use revseg::model::{NetConfig, Norm};
use revseg::synth::{synthesize, SynthConfig};
use revseg::train::{self, state, Dataset, Outputs, RunOptions, TrainConfig, Trainer};
use revseg::CpuBackend;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("revseg-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny(steps: usize) -> TrainConfig {
    TrainConfig {
        net: NetConfig {
            widths: vec![8, 12],
            rev_blocks: 1,
            norm: Norm::Batch,
            outputs: 3,
        },
        patch: (4, 32, 32),
        steps,
        lr: 0.005,
        val_every: 1000,
        val_fraction: 0.25,
        checkpoint_every: 1,
        ..TrainConfig::default()
    }
}

fn volume(seed: u64, size: (usize, usize, usize)) -> (Vec<f32>, Vec<u32>) {
    let v = synthesize(&SynthConfig {
        size,
        seed,
        ..SynthConfig::default()
    })
    .unwrap();
    (
        v.image.iter().map(|&x| x as f32 / 255.0).collect(),
        v.labels,
    )
}

#[test]
fn resume_continues_exactly_where_it_stopped() {
    let size = (16, 80, 80);
    let (img, lbl) = volume(3, size);
    let b = CpuBackend::<f32>::new();
    let run = |dir: &PathBuf, steps: usize, resume: bool| {
        let cfg = tiny(steps);
        let data = Dataset::new(img.clone(), lbl.clone(), size, &cfg, "synthetic").unwrap();
        train::train(
            &b,
            cfg,
            &data,
            &RunOptions {
                out_dir: dir.clone(),
                resume,
                quiet: true,
                ..RunOptions::default()
            },
        )
        .unwrap()
    };
    let straight = tmp("straight");
    run(&straight, 4, false);
    let split = tmp("split");
    run(&split, 2, false);
    let s = run(&split, 4, true);
    assert_eq!(s.steps, 4);
    let a = revseg::checkpoint::load(
        Outputs {
            dir: straight.clone(),
        }
        .model(),
    )
    .unwrap();
    let c = revseg::checkpoint::load(Outputs { dir: split.clone() }.model()).unwrap();
    assert_eq!(a.tensors.len(), c.tensors.len());
    for ((na, _, da), (nc, _, dc)) in a.tensors.iter().zip(&c.tensors) {
        assert_eq!(na, nc);
        assert!(
            da.iter().zip(dc).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na} differs after resume"
        );
    }
    // Training moved the weights: the comparison above is not between two initialisations.
    let fresh = Trainer::new(&b, tiny(4)).unwrap();
    let w0 = fresh.ex.param(&b, 0).unwrap();
    let (_, w4) = a.get(&fresh.prog.params[0].name).unwrap();
    assert!(w0.iter().zip(w4).any(|(x, y)| (*x as f32) != *y));
    let csv = std::fs::read_to_string(Outputs { dir: split }.metrics()).unwrap();
    assert_eq!(
        csv.lines().count(),
        5,
        "header and one row per step:\n{csv}"
    );
}

#[test]
fn checkpoint_round_trip_gives_identical_predictions() {
    let size = (12, 80, 80);
    let (img, lbl) = volume(4, size);
    let b = CpuBackend::<f32>::new();
    let cfg = tiny(3);
    let data = Dataset::new(img.clone(), lbl, size, &cfg, "synthetic").unwrap();
    let dir = tmp("roundtrip");
    let mut t = Trainer::new(&b, cfg.clone()).unwrap();
    for _ in 0..3 {
        t.train_step(&data).unwrap();
    }
    state::save(&t, &Outputs { dir: dir.clone() }).unwrap();
    let before = t.predict(&img, size, false).unwrap();
    let mut u = Trainer::new(&b, cfg).unwrap();
    let ck = revseg::checkpoint::load(Outputs { dir }.model()).unwrap();
    state::load_model(&b, &u.prog, &mut u.ex, &ck, "model").unwrap();
    let after = u.predict(&img, size, false).unwrap();
    assert!(before
        .iter()
        .zip(&after)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(
        before.iter().any(|v| (*v - before[0]).abs() > 1e-3),
        "predictions are constant"
    );
}

#[test]
fn a_non_finite_loss_names_the_step_and_layer_and_keeps_the_checkpoint() {
    let size = (12, 80, 80);
    let (img, lbl) = volume(5, size);
    let b = CpuBackend::<f32>::new();
    let cfg = tiny(10);
    let data = Dataset::new(img, lbl, size, &cfg, "synthetic").unwrap();
    let dir = tmp("nan");
    let out = Outputs { dir };
    let mut t = Trainer::new(&b, cfg).unwrap();
    t.train_step(&data).unwrap();
    state::save(&t, &out).unwrap();
    let saved = std::fs::read(out.model()).unwrap();
    // A weight so large that the first convolution overflows to infinity.
    let n = t.prog.params[0].shape.len();
    t.ex.set_param(&b, 0, &vec![3e38; n]).unwrap();
    let e = t.train_step(&data).unwrap_err().to_string();
    assert!(
        e.contains("training step 2") && e.contains("not finite"),
        "{e}"
    );
    assert!(e.contains("conv3d_forward writing embed_in"), "{e}");
    assert_eq!(
        std::fs::read(out.model()).unwrap(),
        saved,
        "the last good checkpoint changed"
    );
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let cfg = tiny(1);
    let size = (12, 64, 64);
    let (img, lbl) = volume(6, size);
    let e = Dataset::new(img.clone(), vec![0; lbl.len()], size, &cfg, "vol").unwrap_err();
    assert!(e.to_string().contains("all zero"), "{e}");
    let e = Dataset::new(img.clone(), lbl[1..].to_vec(), size, &cfg, "vol").unwrap_err();
    assert!(e.to_string().contains("voxels"), "{e}");
    let big = TrainConfig {
        patch: (4, 96, 96),
        ..tiny(1)
    };
    let e = Dataset::new(img.clone(), lbl.clone(), size, &big, "vol").unwrap_err();
    assert!(e.to_string().contains("exceeds the volume"), "{e}");
    let mut nan = img;
    nan[7] = f32::NAN;
    assert!(Dataset::new(nan, lbl, size, &cfg, "vol")
        .unwrap_err()
        .to_string()
        .contains("not finite"));
}

#[test]
fn config_from_toml_and_json_round_trip() {
    let mut c = TrainConfig::default();
    c.apply_toml("# a comment\nrev_blocks = 3\npatch = [8, 64, 64]\nlr = 0.002\naugment = false\nnorm = \"none\"\n", "t.toml").unwrap();
    assert_eq!(
        (c.net.rev_blocks, c.patch, c.lr, c.augment, c.net.norm),
        (3, (8, 64, 64), 0.002, false, Norm::None)
    );
    let back = TrainConfig::from_json_text(&c.to_json().to_string()).unwrap();
    assert_eq!(back, c);
    c.set("voxel_size", "30,6,6").unwrap();
    assert_eq!(
        TrainConfig::from_json_text(&c.to_json().to_string()).unwrap(),
        c
    );
    assert!(c.set("voxel_size", "30,6").is_err());
    let e = c
        .apply_toml("lr = 0.1\nlearning_rate = 1\n", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml: line 2, column 1") && e.contains("learning_rate"),
        "{e}"
    );
}

/// Whole numbers above 2^53 survive the checkpoint's config exactly (they were once written in
/// exponent form and rounded, and the checkpoint was then refused).
#[test]
fn large_integers_round_trip_exactly() {
    let c = TrainConfig {
        seed: 1_000_000_000_000_000_123,
        val_every: (1usize << 60) + 1,
        checkpoint_every: usize::MAX,
        plateau_patience: (1usize << 53) + 1,
        ..TrainConfig::default()
    };
    let text = c.to_json().to_string();
    assert!(text.contains("\"seed\":1000000000000000123"), "{text}");
    assert_eq!(TrainConfig::from_json_text(&text).unwrap(), c);
    let mut t = TrainConfig::default();
    t.apply_toml("seed = 1000000000000000123\n", "t.toml")
        .unwrap();
    assert_eq!(t.seed, 1_000_000_000_000_000_123);
    t.set("seed", "18446744073709551615").unwrap();
    assert_eq!(t.seed, u64::MAX);
}

/// Full TOML: tables, duplicate keys and wrong types are errors with line and column, and `#`
/// inside a string is part of the string (the old line-splitting parser got all three wrong).
#[test]
fn toml_config_errors_name_line_column_and_key() {
    let err = |text: &str| {
        let mut c = TrainConfig::default();
        c.apply_toml(text, "c.toml")
            .and_then(|_| c.validate())
            .unwrap_err()
            .to_string()
    };
    let e = err("steps = 5\n[train]\nlr = 0.5\n");
    assert!(e.contains("line 2") && e.contains("train"), "{e}");
    let e = err("steps = 5\nlr = 0.1\nsteps = 6\n");
    assert!(e.contains("line 3") && e.contains("steps"), "{e}");
    let e = err("norm = \"batch # not a comment\"\n");
    assert!(
        e.contains("line 1") && e.contains("batch # not a comment"),
        "{e}"
    );
    let e = err("patch = [8, 64]\n");
    assert!(e.contains("line 1") && e.contains("patch"), "{e}");
    let e = err("seed = -1\n");
    assert!(e.contains("line 1") && e.contains("seed"), "{e}");
    let e = err("val_every = 0\n");
    assert!(e.contains("val_every 0"), "{e}");
    let mut c = TrainConfig::default();
    c.apply_toml(
        "# header\nnorm = \"none\" # trailing comment\nwidths = [4, 6]\n",
        "c.toml",
    )
    .unwrap();
    assert_eq!((c.net.norm, c.net.widths.clone()), (Norm::None, vec![4, 6]));
    // The same keys and value syntax from the command line, bare words and lists included.
    c.set("norm", "batch").unwrap();
    c.set("patch", "8,64,64").unwrap();
    c.set("augment", "false").unwrap();
    assert_eq!(
        (c.net.norm, c.patch, c.augment),
        (Norm::Batch, (8, 64, 64), false)
    );
    assert!(c.set("lr", "fast").unwrap_err().to_string().contains("lr"));
}

/// The must-show on a tiny configuration: a few hundred CPU steps on one synthetic volume,
/// then an unseen synthetic volume: the loss falls and the predicted affinities' boundary accuracy
/// clearly beats the all-ones predictor.
#[test]
fn training_beats_the_trivial_predictor_on_an_unseen_volume() {
    let b = CpuBackend::<f32>::new();
    let size = (16, 96, 96);
    let (img, lbl) = volume(11, size);
    let cfg = TrainConfig {
        bn_momentum: 0.05,
        val_fraction: 0.0,
        steps: 300,
        ..tiny(300)
    };
    let data = Dataset::new(img, lbl, size, &cfg, "synthetic").unwrap();
    let mut t = Trainer::new(&b, cfg).unwrap();
    let losses: Vec<f64> = (0..300).map(|_| t.train_step(&data).unwrap()).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..30]), mean(&losses[270..]));
    assert!(last < 0.8 * first, "loss {first:.4} -> {last:.4}");
    let test_size = (8, 96, 96);
    let (timg, tlbl) = volume(12, test_size);
    let pred = t.predict(&timg, test_size, false).unwrap();
    let v = train::data::score(
        &pred,
        &tlbl,
        test_size,
        3,
        revseg::train::targets::TargetOptions::default(),
    )
    .unwrap();
    eprintln!(
        "unseen volume: boundary accuracy {:.4}, all-ones {:.4}, loss {:.4}",
        v.boundary_accuracy, v.all_ones_accuracy, v.loss
    );
    assert!(v.boundary_accuracy > v.all_ones_accuracy + 0.1, "{v:?}");
}

fn run_opts(dir: &std::path::Path, resume: bool) -> RunOptions {
    RunOptions {
        out_dir: dir.to_path_buf(),
        resume,
        quiet: true,
        ..RunOptions::default()
    }
}

/// A diverging run stops at the step, phase and tensor that went non-finite, and the good
/// checkpoint written before it is left byte for byte.
#[test]
fn divergence_stops_with_the_tensor_and_keeps_the_good_checkpoint() {
    let size = (12, 80, 80);
    let (img, lbl) = volume(6, size);
    let b = CpuBackend::<f32>::new();
    let dir = tmp("diverge");
    let good = tiny(2);
    let data = Dataset::new(img, lbl, size, &good, "synthetic").unwrap();
    train::train(&b, good.clone(), &data, &run_opts(&dir, false)).unwrap();
    let model = Outputs { dir: dir.clone() }.model();
    let before = std::fs::read(&model).unwrap();
    let mut wild = good.clone();
    wild.steps = 8;
    wild.lr = 1e300;
    wild.store_all = true;
    let e = train::train(&b, wild, &data, &run_opts(&dir, true))
        .err()
        .expect("lr 1e300 must diverge")
        .to_string();
    assert!(e.contains("step 3") || e.contains("step 4"), "{e}");
    assert!(
        (e.contains("after the update") && e.contains("non-finite"))
            || e.contains("first non-finite value"),
        "{e}"
    );
    assert!(
        std::fs::read(&model).unwrap() == before,
        "checkpoint replaced"
    );
}

/// Checkpoints whose tensors do not match the network are refused by name: a transposed kernel
/// (same element count), tensors of a deeper network, a non-finite value.
#[test]
fn mismatched_checkpoints_are_refused_by_tensor_name() {
    let b = CpuBackend::<f32>::new();
    let dir = tmp("mismatch");
    let mut deep = tiny(1);
    deep.net.rev_blocks = 2;
    let t = Trainer::new(&b, deep).unwrap();
    let out = Outputs { dir: dir.clone() };
    state::save(&t, &out).unwrap();
    let ck = revseg::checkpoint::load(out.model()).unwrap();
    let mut shallow = Trainer::new(&b, tiny(1)).unwrap();
    let e = state::load_model(&b, &shallow.prog, &mut shallow.ex, &ck, "m")
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not have") && e.contains("rev1"), "{e}");
    // The shallow network's own checkpoint, edited.
    let own = Trainer::new(&b, tiny(1)).unwrap();
    state::save(&own, &out).unwrap();
    let good = revseg::checkpoint::load(out.model()).unwrap();
    let edit = |f: &dyn Fn(&mut (String, Vec<usize>, Vec<f32>))| {
        let mut c = good.clone();
        let w = c
            .tensors
            .iter_mut()
            .find(|(n, _, _)| n == "embed_in.weight")
            .unwrap();
        f(w);
        c
    };
    let transposed = edit(&|w| w.1.swap(0, 1));
    let e = state::load_model(&b, &shallow.prog, &mut shallow.ex, &transposed, "m")
        .unwrap_err()
        .to_string();
    assert!(e.contains("embed_in.weight") && e.contains("shape"), "{e}");
    let nan = edit(&|w| w.2[3] = f32::NAN);
    let e = state::load_model(&b, &shallow.prog, &mut shallow.ex, &nan, "m")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("embed_in.weight") && e.contains("non-finite"),
        "{e}"
    );
    state::load_model(&b, &shallow.prog, &mut shallow.ex, &good, "m").unwrap();
}

/// Weights that overflow in the forward give an error naming the op, not NaN affinities.
#[test]
fn non_finite_predictions_name_the_op() {
    let b = CpuBackend::<f32>::new();
    let size = (8, 64, 64);
    let (img, _) = volume(7, size);
    let mut t = Trainer::new(&b, tiny(1)).unwrap();
    // Saturated embed_out channels meet the output layer's mixed-sign weights: inf - inf.
    let i = t
        .prog
        .params
        .iter()
        .position(|p| p.name == "embed_out.weight")
        .unwrap();
    let n = t.prog.params[i].shape.len();
    t.ex.set_param(&b, i, &vec![1e38; n]).unwrap();
    let Err(e) = t.predict(&img, size, false) else {
        panic!("NaN expected");
    };
    let e = e.to_string();
    assert!(
        e.contains("predicted affinities") && e.contains("first non-finite value: conv"),
        "{e}"
    );
}

/// After a kill between a logged step and its checkpoint, resume drops the rows past the
/// checkpoint and continues the clock; a fresh run into a used folder is refused.
#[test]
fn resume_truncates_the_log_and_a_used_folder_is_refused() {
    let size = (12, 80, 80);
    let (img, lbl) = volume(8, size);
    let b = CpuBackend::<f32>::new();
    let dir = tmp("log");
    let out = Outputs { dir: dir.clone() };
    let run = |steps: usize, resume: bool| {
        let cfg = tiny(steps);
        let data = Dataset::new(img.clone(), lbl.clone(), size, &cfg, "synthetic").unwrap();
        train::train(&b, cfg, &data, &run_opts(&dir, resume))
    };
    run(2, false).unwrap();
    let at2 = std::fs::read(out.model()).unwrap();
    run(3, true).unwrap();
    // As if killed after step 3 was logged but before its checkpoint landed.
    std::fs::write(out.model(), at2).unwrap();
    run(4, true).unwrap();
    let csv = std::fs::read_to_string(out.metrics()).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|f| f.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    let steps: Vec<f64> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(steps, [1.0, 2.0, 3.0, 4.0], "{csv}");
    let secs: Vec<f64> = rows.iter().map(|r| r[6]).collect();
    assert!(
        secs.windows(2).all(|w| w[1] >= w[0]),
        "clock restarted: {csv}"
    );
    let e = run(2, false).err().unwrap().to_string();
    assert!(
        e.contains("already holds a training run") && e.contains("--resume"),
        "{e}"
    );
    let e = run(4, true).err().unwrap().to_string();
    assert!(
        e.contains("nothing to train") && e.contains("step 4"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(out.metrics()).unwrap(), csv);
}

/// The cosine schedule against its formula worked by hand, and the settings' round trip.
#[test]
fn cosine_schedule_and_z_weight_settings() {
    let mut c = tiny(1000);
    c.set("lr_schedule", "cosine").unwrap();
    c.set("warmup", "100").unwrap();
    c.set("z_weight", "2").unwrap();
    c.validate().unwrap();
    // Warm-up: step 50 of 100 is half the rate; after it, cos over the remaining 900 steps.
    assert!((c.scheduled_lr(50) - 0.0025).abs() < 1e-15);
    assert!((c.scheduled_lr(100) - 0.005).abs() < 1e-15);
    assert!(
        (c.scheduled_lr(550) - 0.0025).abs() < 1e-12,
        "half way down"
    );
    assert!(c.scheduled_lr(1000).abs() < 1e-15);
    assert_eq!(
        TrainConfig::from_json_text(&c.to_json().to_string()).unwrap(),
        c
    );
    assert!(c.set("lr_schedule", "linear").is_err());
    let mut bad = c.clone();
    bad.warmup = 1000;
    assert!(bad.validate().unwrap_err().to_string().contains("warmup"));
    bad = c.clone();
    bad.z_weight = 0.0;
    assert!(bad.validate().unwrap_err().to_string().contains("z_weight"));
}

/// z_weight scales the z channel's mask and nothing else: the same draw with weight 1 and 3.
#[test]
fn z_weight_scales_only_the_z_mask() {
    let (img, lbl) = volume(5, (12, 80, 80));
    let one = tiny(1);
    let mut three = one.clone();
    three.z_weight = 3.0;
    let data = Dataset::new(img, lbl, (12, 80, 80), &one, "t").unwrap();
    let a = data.sample(&one, &mut revseg::rng::Rng::new(9)).unwrap();
    let b = data.sample(&three, &mut revseg::rng::Rng::new(9)).unwrap();
    let per = 4 * 32 * 32;
    assert_eq!(a.target, b.target);
    assert!(a.mask[..per].iter().any(|&m| m > 0.0));
    for (i, (&x, &y)) in a.mask.iter().zip(&b.mask).enumerate() {
        let want = if i < per { 3.0 * x } else { x };
        assert_eq!(y, want, "mask element {i}");
    }
}
