//! Checkpoints of a training run: one safetensors file with the model (PyTorch names and layouts,
//! BN running statistics) and, under `optim.`, Adam's moments; the config, step, learning rate,
//! plateau counters and the sampler's random state in the metadata. One file, written atomically,
//! so a resume always sees one consistent step. docs/CHECKPOINTS.md shows how PyTorch loads it.

use super::{Outputs, TrainConfig, Trainer};
use crate::backend::Backend;
use crate::checkpoint::{self, Checkpoint};
use crate::error::{Error, Result};
use crate::model::Program;
use crate::rng::Rng;

pub const FORMAT: &str = "revseg-checkpoint-1";

fn f32s(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

/// Model tensors (parameters and running statistics) of an executor, by PyTorch-style names.
pub fn model_tensors<B: Backend>(
    b: &B,
    prog: &Program,
    ex: &crate::scheduler::Executor<B>,
) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
    let mut out = Vec::new();
    for (i, p) in prog.params.iter().enumerate() {
        let s = p.shape;
        // Vectors (biases, BN parameters) are 1-D in PyTorch; kernels are 5-D.
        let shape = if s.n == 1 && s.d == 1 && s.h == 1 && s.w == 1 {
            vec![s.c]
        } else {
            s.dims().to_vec()
        };
        out.push((p.name.clone(), shape, f32s(ex.param(b, i)?)));
    }
    for (k, bn) in prog.bns.iter().enumerate() {
        let (m, v) = ex.running(b, k)?;
        out.push((
            format!("{}.running_mean", bn.name),
            vec![bn.channels],
            f32s(m),
        ));
        out.push((
            format!("{}.running_var", bn.name),
            vec![bn.channels],
            f32s(v),
        ));
    }
    Ok(out)
}

pub fn save<B: Backend>(t: &Trainer<B>, out: &Outputs) -> Result<()> {
    let mut tensors = model_tensors(t.b, &t.prog, &t.ex)?;
    for (i, p) in t.prog.params.iter().enumerate() {
        let (m, v) = t.ex.moments(t.b, i)?;
        let shape = vec![p.shape.len()];
        tensors.push((format!("optim.m.{}", p.name), shape.clone(), f32s(m)));
        tensors.push((format!("optim.v.{}", p.name), shape, f32s(v)));
    }
    let rng = t
        .rng
        .state()
        .iter()
        .map(|v| format!("{v:016x}"))
        .collect::<Vec<_>>()
        .join(",");
    let meta = vec![
        ("format".to_string(), FORMAT.to_string()),
        ("config".to_string(), t.cfg.to_json().to_string()),
        ("step".to_string(), t.step().to_string()),
        ("lr".to_string(), format!("{:e}", t.lr)),
        ("best_val".to_string(), format!("{:e}", t.best_val)),
        ("bad_vals".to_string(), t.bad_vals.to_string()),
        ("rng".to_string(), rng),
    ];
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), d.as_slice()))
        .collect();
    checkpoint::save(out.model(), &refs, &meta)
}

fn meta<'c>(ck: &'c Checkpoint, key: &str, path: &str) -> Result<&'c str> {
    ck.meta(key).ok_or_else(|| {
        Error::Invalid(format!(
            "{path}: checkpoint metadata has no '{key}'; was it written by revseg train?"
        ))
    })
}

fn parse<T: std::str::FromStr>(v: &str, key: &str, path: &str) -> Result<T> {
    v.parse().map_err(|_| {
        Error::Invalid(format!(
            "{path}: checkpoint metadata '{key}' = '{v}' is malformed"
        ))
    })
}

/// The training config stored in a checkpoint.
pub fn config_of(ck: &Checkpoint, path: &str) -> Result<TrainConfig> {
    if meta(ck, "format", path)? != FORMAT {
        return Err(Error::Invalid(format!("{path}: not a {FORMAT} file")));
    }
    TrainConfig::from_json_text(meta(ck, "config", path)?)
}

/// Load model tensors into an executor built for the same network (any patch size).
pub fn load_model<B: Backend>(
    b: &B,
    prog: &Program,
    ex: &mut crate::scheduler::Executor<B>,
    ck: &Checkpoint,
    path: &str,
) -> Result<()> {
    let get = |name: &str, len: usize| -> Result<Vec<f64>> {
        let (_, d) = ck.get(name).ok_or_else(|| {
            Error::Invalid(format!(
                "{path}: tensor '{name}' is missing: the checkpoint is for another network"
            ))
        })?;
        if d.len() != len {
            return Err(Error::shape(
                "checkpoint",
                format!(
                    "{path}: tensor '{name}' has {} values, the network expects {len}",
                    d.len()
                ),
            ));
        }
        Ok(d.iter().map(|v| *v as f64).collect())
    };
    for (i, p) in prog.params.iter().enumerate() {
        ex.set_param(b, i, &get(&p.name, p.shape.len())?)?;
    }
    for (k, bn) in prog.bns.iter().enumerate() {
        let m = get(&format!("{}.running_mean", bn.name), bn.channels)?;
        let v = get(&format!("{}.running_var", bn.name), bn.channels)?;
        ex.set_running(b, k, &m, &v)?;
    }
    Ok(())
}

/// Resume: weights, running statistics, Adam's moments and the loop's counters and random state.
pub fn load<B: Backend>(t: &mut Trainer<B>, out: &Outputs) -> Result<()> {
    let path = out.model();
    let p = path.display().to_string();
    let ck = checkpoint::load(&path)?;
    let saved = config_of(&ck, &p)?;
    if saved.net != t.cfg.net || saved.patch != t.cfg.patch {
        return Err(Error::Invalid(format!(
            "{p}: the checkpoint was trained with a different network or patch ({:?}, {:?}); resume with the same settings",
            saved.net, saved.patch
        )));
    }
    load_model(t.b, &t.prog, &mut t.ex, &ck, &p)?;
    for (i, prm) in t.prog.params.iter().enumerate() {
        let n = prm.shape.len();
        let get = |kind: &str| -> Result<Vec<f64>> {
            let name = format!("optim.{kind}.{}", prm.name);
            let (_, d) = ck.get(&name).ok_or_else(|| {
                Error::Invalid(format!(
                    "{p}: '{name}' is missing: not a training checkpoint"
                ))
            })?;
            if d.len() != n {
                return Err(Error::shape(
                    "checkpoint",
                    format!("{p}: '{name}' has {} values, expected {n}", d.len()),
                ));
            }
            Ok(d.iter().map(|v| *v as f64).collect())
        };
        let (m, v) = (get("m")?, get("v")?);
        t.ex.set_moments(t.b, i, &m, &v)?;
    }
    t.ex.step = parse(meta(&ck, "step", &p)?, "step", &p)?;
    t.lr = parse(meta(&ck, "lr", &p)?, "lr", &p)?;
    t.best_val = parse(meta(&ck, "best_val", &p)?, "best_val", &p)?;
    t.bad_vals = parse(meta(&ck, "bad_vals", &p)?, "bad_vals", &p)?;
    let words: Vec<u64> = meta(&ck, "rng", &p)?
        .split(',')
        .map(|w| u64::from_str_radix(w, 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid(format!("{p}: checkpoint metadata 'rng' is malformed")))?;
    let s: [u64; 4] = words
        .try_into()
        .map_err(|_| Error::Invalid(format!("{p}: checkpoint metadata 'rng' needs 4 words")))?;
    t.rng = Rng::from_state(s);
    Ok(())
}
