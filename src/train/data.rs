//! Training data: an image volume scaled to [0, 1] with its labels, split along z into training
//! sections and held-out validation sections; random patches with augmentation and their targets.

use super::augment::{self, AugmentConfig};
use super::config::TrainConfig;
use super::targets::{affinity_targets, offsets_for, TargetOptions};
use super::Validation;
use crate::error::{Error, Result};
use crate::ops::loss::class_weights;
use crate::rng::Rng;
use crate::volume::array::Array;

#[derive(Debug)]
pub struct Dataset {
    pub image: Vec<f32>,
    pub labels: Vec<u32>,
    pub shape: (usize, usize, usize),
    /// First validation section; sections before it are for training.
    pub val_from: usize,
    pub augment: AugmentConfig,
}

/// One training example, flattened as the network's input and output tensors.
pub struct Sample {
    pub image: Vec<f32>,
    pub target: Vec<f32>,
    pub mask: Vec<f32>,
}

/// Borders are widened with one voxel of y/x context beyond the patch, then cropped away, so that
/// a label just outside the patch still widens the border inside it.
const CONTEXT: usize = 1;

impl Dataset {
    /// `what` names the inputs in errors (e.g. the file names).
    pub fn new(
        image: Vec<f32>,
        labels: Vec<u32>,
        shape: (usize, usize, usize),
        cfg: &TrainConfig,
        what: &str,
    ) -> Result<Self> {
        let n = shape.0 * shape.1 * shape.2;
        if image.len() != n || labels.len() != n {
            return Err(Error::shape(
                "dataset",
                format!(
                    "{what}: image has {} voxels and labels {}, shape {shape:?} needs {n}",
                    image.len(),
                    labels.len()
                ),
            ));
        }
        if labels.iter().all(|&l| l == 0) {
            return Err(Error::Value {
                what: what.into(),
                detail: "labels are all zero: nothing to learn from".into(),
            });
        }
        augment::check_image_range(what, &image, |i| format!("at index {i}"))?;
        let aug = if cfg.augment {
            AugmentConfig::default()
        } else {
            AugmentConfig::none()
        };
        let (pd, ph, pw) = cfg.patch;
        let win = augment::window_shape(&aug, [pd, ph + 2 * CONTEXT, pw + 2 * CONTEXT]);
        let val = if cfg.val_fraction > 0.0 {
            ((shape.0 as f64 * cfg.val_fraction).ceil() as usize).max(pd)
        } else {
            0
        };
        if win[1] > shape.1 || win[2] > shape.2 {
            // Only a margin that is there can be turned off.
            let (parts, fix) = if cfg.augment {
                (
                    "patch, context and augmentation margin",
                    "a smaller patch or --no-augment",
                )
            } else {
                (
                    "patch plus one voxel of context on each side",
                    "a smaller patch",
                )
            };
            return Err(Error::Invalid(format!(
                "{what}: the sampling window {}x{} ({parts}) exceeds the volume's {}x{} in y, x; use {fix}",
                win[1], win[2], shape.1, shape.2
            )));
        }
        if shape.0 < val + win[0] {
            return Err(Error::Invalid(format!(
                "{what}: {} sections cannot hold a training patch of {} sections and {val} held-out sections; use a smaller patch or val_fraction",
                shape.0, win[0]
            )));
        }
        Ok(Dataset {
            image,
            labels,
            shape,
            val_from: shape.0 - val,
            augment: aug,
        })
    }

    fn window<T: Copy>(&self, src: &[T], at: [usize; 3], size: [usize; 3]) -> Vec<T> {
        let (_, h, w) = self.shape;
        let mut out = Vec::with_capacity(size[0] * size[1] * size[2]);
        for z in 0..size[0] {
            for y in 0..size[1] {
                let o = ((at[0] + z) * h + at[1] + y) * w + at[2];
                out.extend_from_slice(&src[o..o + size[2]]);
            }
        }
        out
    }

    /// A random training patch, augmented, with targets and mask for `cfg.net.outputs` channels.
    pub fn sample(&self, cfg: &TrainConfig, rng: &mut Rng) -> Result<Sample> {
        let (pd, ph, pw) = cfg.patch;
        let (cy, cx) = (ph + 2 * CONTEXT, pw + 2 * CONTEXT);
        let win = augment::window_shape(&self.augment, [pd, cy, cx]);
        let at = [
            rng.range(0, self.val_from - win[0]),
            rng.range(0, self.shape.1 - win[1]),
            rng.range(0, self.shape.2 - win[2]),
        ];
        let img = Array::new(win.to_vec(), self.window(&self.image, at, win))?;
        let lbl = Array::new(win.to_vec(), self.window(&self.labels, at, win))?;
        let (img, lbl, _) = augment::augment(&self.augment, rng, &img, &lbl)?;
        let (t, m) = affinity_targets(
            &lbl,
            offsets_for(cfg.net.outputs)?,
            TargetOptions {
                widen_borders: cfg.widen_borders,
            },
        )?;
        let crop = |v: &[f32], channels: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(channels * pd * ph * pw);
            for c in 0..channels {
                for z in 0..pd {
                    for y in 0..ph {
                        let o = ((c * pd + z) * cy + y + CONTEXT) * cx + CONTEXT;
                        out.extend_from_slice(&v[o..o + pw]);
                    }
                }
            }
            out
        };
        let c = cfg.net.outputs;
        let mut mask = crop(&m.data, c);
        if cfg.z_weight != 1.0 {
            let per = pd * ph * pw;
            for (ch, off) in offsets_for(c)?.iter().enumerate() {
                if off[1] == 0 && off[2] == 0 {
                    mask[ch * per..(ch + 1) * per]
                        .iter_mut()
                        .for_each(|v| *v *= cfg.z_weight as f32);
                }
            }
        }
        Ok(Sample {
            image: crop(&img.data, 1),
            target: crop(&t.data, c),
            mask,
        })
    }

    /// The held-out sections: image, labels and their shape.
    pub fn validation(&self) -> Result<(Vec<f32>, Vec<u32>, (usize, usize, usize))> {
        if self.val_from >= self.shape.0 {
            return Err(Error::Invalid(
                "no validation sections (val_fraction is 0)".into(),
            ));
        }
        let sec = self.shape.1 * self.shape.2;
        let shape = (self.shape.0 - self.val_from, self.shape.1, self.shape.2);
        Ok((
            self.image[self.val_from * sec..].to_vec(),
            self.labels[self.val_from * sec..].to_vec(),
            shape,
        ))
    }
}

/// Validation figures of predicted affinities against labels' `targets` (those the network was
/// trained on, so that a run without border widening is not scored against widened borders): the class-rebalanced BCE (as the
/// training loss defines it, on probabilities) over every channel, and the boundary accuracy over
/// the three nearest-neighbour channels, with the all-ones predictor's accuracy beside it.
pub fn score(
    pred: &[f32],
    labels: &[u32],
    shape: (usize, usize, usize),
    channels: usize,
    targets: TargetOptions,
) -> Result<Validation> {
    let lbl = Array::new(vec![shape.0, shape.1, shape.2], labels.to_vec())?;
    let (t, m) = affinity_targets(&lbl, offsets_for(channels)?, targets)?;
    if pred.len() != t.data.len() {
        return Err(Error::shape(
            "score",
            format!("{} predictions for {} targets", pred.len(), t.data.len()),
        ));
    }
    let sp = shape.0 * shape.1 * shape.2;
    let (mut loss, mut count) = (0.0f64, 0u64);
    let (mut right, mut ones, mut edges) = (0u64, 0u64, 0u64);
    for c in 0..channels {
        let r = c * sp..(c + 1) * sp;
        let (t, m, p) = (&t.data[r.clone()], &m.data[r.clone()], &pred[r]);
        let pos = t
            .iter()
            .zip(m)
            .filter(|(t, m)| **m > 0.5 && **t > 0.5)
            .count() as u64;
        let all = m.iter().filter(|m| **m > 0.5).count() as u64;
        let (wp, wn) = class_weights(pos, all - pos);
        for i in 0..sp {
            if m[i] <= 0.5 {
                continue;
            }
            let q = (p[i] as f64).clamp(1e-7, 1.0 - 1e-7);
            let positive = t[i] > 0.5;
            loss += if positive {
                -wp * q.ln()
            } else {
                -wn * (1.0 - q).ln()
            };
            count += 1;
            if c < 3 {
                edges += 1;
                ones += positive as u64;
                right += ((q > 0.5) == positive) as u64;
            }
        }
    }
    let edges = edges.max(1) as f64;
    Ok(Validation {
        loss: loss / count.max(1) as f64,
        boundary_accuracy: right as f64 / edges,
        all_ones_accuracy: ones as f64 / edges,
    })
}
