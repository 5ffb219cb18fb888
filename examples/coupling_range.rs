//! How large a reversible chain's exact-coupling state grows in training, to choose the 16-bit
//! state's scale 2^-S (ops/coupling.rs): trains the demo's network and data with N blocks per
//! chain in bf16, the state in the wide f32-container format (range +-256), and every few steps
//! runs one more forward that reads every coupling's result and every F/G output.
//!
//!     cargo run --release --example coupling_range -- N STEPS EVERY [D,H,W [S]]
//!
//! S: the fraction bits of the f32-container state trained with (16, range +-256, by default;
//! fewer widen the range, for chains that outgrow it).
//!
//! Prints per probe: the largest |state| (and where), the 99.99th percentile of |state|, and the
//! share of F/G outputs that the 16-bit state's grid rounds to zero (|f| < 2^-(S+1)).

use revseg::backend::cpu::mixed::CpuMixedBackend;
use revseg::backend::Backend;
use revseg::cli::demo::{demo_config, volumes, DEMO_TEST_SIZE, DEMO_TRAIN_SIZE};
use revseg::ops::coupling::FixedPoint;
use revseg::precision::Precision;
use revseg::rng::Rng;
use revseg::scheduler::instr::{Instr, Phase};
use revseg::scheduler::{self, Batch, Executor, PlanOptions, Strategy};
use revseg::train::{Dataset, Trainer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(16, |a| a.parse().unwrap());
    let steps: usize = args.get(2).map_or(200, |a| a.parse().unwrap());
    let every: usize = args.get(3).map_or(50, |a| a.parse().unwrap());
    let mut cfg = demo_config(steps, 1);
    cfg.net.rev_blocks = n;
    if let Some(p) = args.get(4) {
        let v: Vec<usize> = p.split(',').map(|x| x.parse().unwrap()).collect();
        cfg.patch = (v[0], v[1], v[2]);
    }
    let wide = match args.get(5) {
        Some(s) => FixedPoint::new(s.parse().unwrap()).unwrap(),
        None => FixedPoint::default(),
    };
    let (train, _) = volumes(DEMO_TRAIN_SIZE, DEMO_TEST_SIZE, 1).unwrap();
    let image: Vec<f32> = train.image.iter().map(|&v| v as f32 / 255.0).collect();
    let data = Dataset::new(
        image,
        train.labels.clone(),
        DEMO_TRAIN_SIZE,
        &cfg,
        "synthetic",
    )
    .unwrap();
    let b = &CpuMixedBackend;
    let mut t = Trainer::new(b, cfg.clone()).unwrap();
    let plan = scheduler::plan_with(
        &t.prog,
        &PlanOptions {
            strategy: Strategy::Recompute,
            inference: false,
            check_reconstruction: false,
            exact_coupling: Some(wide),
            precision: Precision::Bf16,
        },
    )
    .unwrap();
    let mut ex = Executor::new(b, &t.prog, plan, cfg.seed).unwrap();
    ex.poison = false;
    (ex.adam.lr, ex.adam.eps, ex.bn.momentum) = (cfg.lr, cfg.adam_eps, cfg.bn_momentum);
    t.ex = ex;
    let fp = FixedPoint::fix16();
    println!(
        "N = {n}, patch {:?}, {steps} steps, trained with the f32 container at range {}; 16-bit \
         state: S = {}, range {}",
        cfg.patch,
        wide.range(),
        fp.frac_bits,
        fp.range()
    );
    println!("step\tloss\tmax|state|\tat\tp99.99|state|\tshare |f| < grid/2\tmax|f|");
    let mut rng = Rng::new(77);
    let mut loss = f64::NAN;
    for step in 0..=steps {
        if step % every == 0 {
            probe(b, &mut t.ex, &data, &cfg, &mut rng, step, loss);
        }
        if step < steps {
            loss = t.train_step(&data).unwrap();
        }
    }
}

fn probe<B: Backend<Elem = f32>>(
    b: &B,
    ex: &mut Executor<B>,
    data: &Dataset,
    cfg: &revseg::train::TrainConfig,
    rng: &mut Rng,
    step: usize,
    loss: f64,
) {
    let s = data.sample(cfg, rng).unwrap();
    let batch = Batch {
        image: &s.image,
        target: &s.target,
        mask: &s.mask,
    };
    let count = ex.begin_step(b, &batch, false).unwrap();
    let (mut states, mut fs) = (Vec::new(), Vec::new());
    let mut worst = (0.0f64, String::new());
    for i in 0..count {
        if ex.plan.instrs[i].0 != Phase::Forward {
            break;
        }
        ex.run_instr(b, i).unwrap();
        if let (_, Instr::Coupling { y, f, .. }) = ex.plan.instrs[i].clone() {
            let v = ex.read(b, y).unwrap();
            let m = v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            if m > worst.0 {
                let name = match f {
                    Some(f) => ex.plan.bufs[f.buf].name.clone(),
                    None => format!("{} (entry)", ex.plan.bufs[y.buf].name),
                };
                worst = (m, name);
            }
            states.extend(v.iter().map(|x| x.abs() as f32));
            if let Some(f) = f {
                fs.extend(ex.read(b, f).unwrap().iter().map(|x| x.abs() as f32));
            }
        }
    }
    states.sort_by(f32::total_cmp);
    let p = states[((states.len() as f64) * 0.9999) as usize];
    let half = (FixedPoint::fix16().resolution() / 2.0) as f32;
    let small = fs.iter().filter(|&&v| v < half).count() as f64 / fs.len() as f64;
    let fmax = fs.iter().fold(0.0f32, |a, &x| a.max(x));
    println!(
        "{step}\t{loss:.4}\t{:.3}\t{}\t{p:.3}\t{small:.4}\t{fmax:.3}",
        worst.0, worst.1
    );
}
