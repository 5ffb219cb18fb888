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

/// The shape PyTorch gives a parameter: vectors (biases, BN parameters) are 1-D, kernels 5-D.
fn torch_shape(s: crate::tensor::Shape5) -> Vec<usize> {
    if s.n == 1 && s.d == 1 && s.h == 1 && s.w == 1 {
        vec![s.c]
    } else {
        s.dims().to_vec()
    }
}

/// Names and shapes of the model tensors (parameters, then BN running statistics), in the order
/// `model_tensors` returns them.
pub fn model_shapes(prog: &Program) -> Vec<(String, Vec<usize>)> {
    let params = prog
        .params
        .iter()
        .map(|p| (p.name.clone(), torch_shape(p.shape)));
    let stats = prog.bns.iter().flat_map(|bn| {
        ["running_mean", "running_var"].map(|k| (format!("{}.{k}", bn.name), vec![bn.channels]))
    });
    params.chain(stats).collect()
}

/// Named tensors: (name, PyTorch shape, values).
pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Model tensors (parameters and running statistics) of an executor, by PyTorch-style names.
pub fn model_tensors<B: Backend>(
    b: &B,
    prog: &Program,
    ex: &crate::scheduler::Executor<B>,
) -> Result<Tensors> {
    let mut values = Vec::new();
    for i in 0..prog.params.len() {
        values.push(f32s(ex.param(b, i)?));
    }
    for k in 0..prog.bns.len() {
        let (m, v) = ex.running(b, k)?;
        values.push(f32s(m));
        values.push(f32s(v));
    }
    Ok(model_shapes(prog)
        .into_iter()
        .zip(values)
        .map(|((n, s), v)| (n, s, v))
        .collect())
}

/// The first tensor holding a NaN or an infinity, by name.
pub fn first_nonfinite(tensors: &Tensors) -> Option<&str> {
    tensors
        .iter()
        .find(|(_, _, d)| d.iter().any(|v| !v.is_finite()))
        .map(|(n, _, _)| n.as_str())
}

pub fn save<B: Backend>(t: &Trainer<B>, out: &Outputs) -> Result<()> {
    let mut tensors = model_tensors(t.b, &t.prog, &t.ex)?;
    for (i, p) in t.prog.params.iter().enumerate() {
        let (m, v) = t.ex.moments(t.b, i)?;
        let shape = vec![p.shape.len()];
        tensors.push((format!("optim.m.{}", p.name), shape.clone(), f32s(m)));
        tensors.push((format!("optim.v.{}", p.name), shape, f32s(v)));
    }
    if let Some(name) = first_nonfinite(&tensors) {
        return Err(Error::Value {
            what: format!("{name} at step {}", t.step()),
            detail: format!(
                "holds a non-finite value; {} was not written (a checkpoint already there stays as it was). Lower the learning rate (now {:e})",
                out.model().display(),
                t.lr
            ),
        });
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

/// Load model tensors into an executor built for the same network (any patch size). Every tensor
/// must be there with its full shape and finite values; a tensor the network does not have is
/// refused (a checkpoint of a deeper network, or of other scales, is not this one), except Adam's
/// moments of the network's own parameters.
pub fn load_model<B: Backend>(
    b: &B,
    prog: &Program,
    ex: &mut crate::scheduler::Executor<B>,
    ck: &Checkpoint,
    path: &str,
) -> Result<()> {
    let shapes = model_shapes(prog);
    let known: std::collections::HashSet<String> = shapes
        .iter()
        .map(|(n, _)| n.clone())
        .chain(
            prog.params
                .iter()
                .flat_map(|p| ["m", "v"].map(|k| format!("optim.{k}.{}", p.name))),
        )
        .collect();
    let extra: Vec<&str> = ck
        .tensors
        .iter()
        .map(|(n, _, _)| n.as_str())
        .filter(|n| !known.contains(*n))
        .collect();
    if !extra.is_empty() {
        let shown: Vec<&str> = extra.iter().take(5).copied().collect();
        return Err(Error::Invalid(format!(
            "{path}: {} tensor(s) the network does not have ({}{}): the checkpoint is for another network (rev_blocks, widths or outputs differ from its config)",
            extra.len(),
            shown.join(", "),
            if extra.len() > 5 { ", ..." } else { "" }
        )));
    }
    let mut values = Vec::with_capacity(shapes.len());
    for (name, shape) in &shapes {
        values.push(tensor(ck, name, shape, path)?);
    }
    let mut values = values.into_iter();
    for i in 0..prog.params.len() {
        ex.set_param(b, i, &values.next().unwrap_or_default())?;
    }
    for k in 0..prog.bns.len() {
        let m = values.next().unwrap_or_default();
        let v = values.next().unwrap_or_default();
        ex.set_running(b, k, &m, &v)?;
    }
    Ok(())
}

/// A tensor of the checkpoint with exactly `shape` and finite values.
fn tensor(ck: &Checkpoint, name: &str, shape: &[usize], path: &str) -> Result<Vec<f64>> {
    let (s, d) = ck.get(name).ok_or_else(|| {
        Error::Invalid(format!(
            "{path}: tensor '{name}' is missing: the checkpoint is for another network"
        ))
    })?;
    if s != shape {
        return Err(Error::shape(
            "checkpoint",
            format!("{path}: tensor '{name}' has shape {s:?}, the network expects {shape:?}"),
        ));
    }
    if d.iter().any(|v| !v.is_finite()) {
        return Err(Error::Value {
            what: format!("{path}: tensor '{name}'"),
            detail: "holds a non-finite value: the model diverged when it was saved; use an earlier checkpoint or retrain with a lower learning rate".into(),
        });
    }
    Ok(d.iter().map(|v| *v as f64).collect())
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
        let get = |kind: &str| -> Result<Vec<f64>> {
            let name = format!("optim.{kind}.{}", prm.name);
            if ck.get(&name).is_none() {
                return Err(Error::Invalid(format!(
                    "{p}: '{name}' is missing: not a training checkpoint"
                )));
            }
            tensor(&ck, &name, &[prm.shape.len()], &p)
        };
        let (m, v) = (get("m")?, get("v")?);
        t.ex.set_moments(t.b, i, &m, &v)?;
    }
    t.ex.step = parse(meta(&ck, "step", &p)?, "step", &p)?;
    // A learning rate given on resume (the config differs from the saved one) replaces the
    // loop's current rate, which plateaus may have lowered; otherwise the loop goes on with it.
    if saved.lr == t.cfg.lr {
        t.lr = parse(meta(&ck, "lr", &p)?, "lr", &p)?;
    }
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
