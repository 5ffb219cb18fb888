//! Training configuration: defaults as in the Superhuman paper, overridable by a TOML file and by
//! flags (flags win). The resolved configuration is printed at start and stored in checkpoints.

use crate::error::{Error, Result};
use crate::json::Json;
use crate::model::{NetConfig, Norm};
use crate::precision::Precision;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub net: NetConfig,
    /// Training patch (z, y, x); the paper's 18x160x160.
    pub patch: (usize, usize, usize),
    pub steps: usize,
    pub lr: f64,
    pub adam_eps: f64,
    /// BatchNorm running-statistics momentum (PyTorch convention); Superhuman's 0.001 suits
    /// runs of many thousand steps, short runs need more for inference to match training.
    pub bn_momentum: f64,
    pub seed: u64,
    /// Validate every this many steps.
    pub val_every: usize,
    /// Fraction of the sections (the last ones) held out for validation.
    pub val_fraction: f64,
    /// Halve the learning rate after this many validations without improvement.
    pub plateau_patience: usize,
    pub checkpoint_every: usize,
    pub augment: bool,
    /// Superhuman's border widening of the targets (every voxel next to another object in its
    /// section is boundary). Off, the target is the exact one-edge border of the labels.
    pub widen_borders: bool,
    /// Keep every activation instead of reconstructing (the classic backward).
    pub store_all: bool,
    /// Voxel size (z, y, x) in nm of the training data, from its file or the command line;
    /// `revseg predict` warns when a volume's anisotropy differs.
    pub voxel_size: Option<(f64, f64, f64)>,
    /// Convolution and activation format; `None` is the device's default (`Precision::default_for`).
    pub precision: Option<Precision>,
    /// Hold the reversible chains' coupling state in a representation whose inverse is exact.
    pub exact_coupling: bool,
    /// How the learning rate moves over the run.
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up from 0 to `lr` (cosine schedule only).
    pub warmup: usize,
    /// Loss weight of the z-affinity channels relative to the in-plane ones (the mask's value
    /// there), on top of the class rebalancing: z edges are the hard ones on anisotropic data.
    pub z_weight: f64,
}

/// `plateau`: halve on `plateau_patience` validations without improvement (Superhuman's);
/// `cosine`: linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Plateau,
    Cosine,
}

impl TrainConfig {
    /// The cosine schedule's rate for step `step` (1-based, the step about to run).
    pub fn scheduled_lr(&self, step: usize) -> f64 {
        let s = step as f64;
        if step <= self.warmup {
            return self.lr * s / (self.warmup.max(1)) as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let t = ((s - self.warmup as f64) / span).min(1.0);
        0.5 * self.lr * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            net: NetConfig::superhuman(2),
            patch: (18, 160, 160),
            steps: 1000,
            lr: 0.01,
            adam_eps: 0.01,
            bn_momentum: 0.001,
            seed: 1,
            val_every: 100,
            val_fraction: 0.2,
            plateau_patience: 3,
            checkpoint_every: 200,
            augment: true,
            widen_borders: true,
            store_all: false,
            voxel_size: None,
            precision: None,
            exact_coupling: false,
            lr_schedule: LrSchedule::Plateau,
            warmup: 0,
            z_weight: 1.0,
        }
    }
}

/// The settings as written in TOML files, checkpoint metadata and `--set`: every key optional
/// (a file sets some of them), no other key allowed, each with its type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub widths: Option<Vec<usize>>,
    pub rev_blocks: Option<usize>,
    pub norm: Option<NormName>,
    pub outputs: Option<usize>,
    pub patch: Option<[usize; 3]>,
    pub steps: Option<usize>,
    pub lr: Option<f64>,
    pub adam_eps: Option<f64>,
    pub bn_momentum: Option<f64>,
    pub seed: Option<u64>,
    pub val_every: Option<usize>,
    pub val_fraction: Option<f64>,
    pub plateau_patience: Option<usize>,
    pub checkpoint_every: Option<usize>,
    pub augment: Option<bool>,
    pub widen_borders: Option<bool>,
    pub store_all: Option<bool>,
    pub voxel_size: Option<[f64; 3]>,
    pub precision: Option<Precision>,
    pub exact_coupling: Option<bool>,
    pub lr_schedule: Option<LrSchedule>,
    pub warmup: Option<usize>,
    pub z_weight: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormName {
    Batch,
    None,
}

impl Settings {
    /// Parses TOML text; errors name `origin` with the line and column, and the key.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("{origin}: {}", toml_error(&e, text))))
    }

    /// One `key=value` from the command line, the value in TOML syntax; bare words and
    /// comma-separated lists are read as a string and an array (`norm=none`, `patch=8,64,64`).
    pub fn from_key_value(key: &str, value: &str) -> Result<Self> {
        let value = value.trim();
        let tries = [
            value.to_string(),
            format!("[{value}]"),
            format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")),
        ];
        let mut first = None;
        for v in &tries {
            match toml::from_str::<Settings>(&format!("{} = {v}", key.trim())) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        let e = first.map_or(String::new(), |e| e.message().to_string());
        Err(Error::Invalid(format!(
            "setting {key} = '{value}': {e}; known keys: {}",
            KEYS.join(", ")
        )))
    }

    /// The keys this holds, in `KEYS` order.
    pub fn keys(&self) -> Vec<&'static str> {
        let j = serde_json::to_value(self).unwrap_or(Json::Null);
        KEYS.iter()
            .copied()
            .filter(|k| j.get(k).is_some_and(|v| !v.is_null()))
            .collect()
    }

    /// `other`'s values over this one's.
    pub fn merge(self, other: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: other.$f.or(self.$f)),* } };
        }
        pick!(
            widths,
            rev_blocks,
            norm,
            outputs,
            patch,
            steps,
            lr,
            adam_eps,
            bn_momentum,
            seed,
            val_every,
            val_fraction,
            plateau_patience,
            checkpoint_every,
            augment,
            widen_borders,
            store_all,
            voxel_size,
            precision,
            exact_coupling,
            lr_schedule,
            warmup,
            z_weight
        )
    }
}

/// toml's message for the user: its own text names line, column and key, with the line quoted.
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            let quoted = text.lines().nth(line - 1).unwrap_or("").trim();
            format!(
                "line {line}, column {col}: {} (in `{quoted}`)",
                e.message().trim_end()
            )
        }
        None => e.message().to_string(),
    }
}

impl TrainConfig {
    /// Settings over this configuration, then checked as a whole.
    pub fn apply(&mut self, s: &Settings) -> Result<()> {
        let s = s.clone();
        if let Some(v) = s.widths {
            self.net.widths = v;
        }
        if let Some(v) = s.rev_blocks {
            self.net.rev_blocks = v;
        }
        if let Some(v) = s.norm {
            self.net.norm = match v {
                NormName::Batch => Norm::Batch,
                NormName::None => Norm::None,
            };
        }
        if let Some(v) = s.outputs {
            self.net.outputs = v;
        }
        if let Some([d, h, w]) = s.patch {
            self.patch = (d, h, w);
        }
        macro_rules! copy {
            ($($f:ident),*) => { $(if let Some(v) = s.$f { self.$f = v; })* };
        }
        copy!(
            steps,
            lr,
            adam_eps,
            bn_momentum,
            seed,
            val_every,
            val_fraction,
            plateau_patience,
            checkpoint_every,
            augment,
            widen_borders,
            store_all,
            exact_coupling,
            lr_schedule,
            warmup,
            z_weight
        );
        if let Some(p) = s.precision {
            self.precision = Some(p);
        }
        if let Some([z, y, x]) = s.voxel_size {
            if !(z > 0.0 && y > 0.0 && x > 0.0 && z.is_finite() && y.is_finite() && x.is_finite()) {
                return Err(Error::Invalid(format!(
                    "voxel_size [{z}, {y}, {x}]: expected three positive numbers Z,Y,X in nm, e.g. 30,6,6"
                )));
            }
            self.voxel_size = Some((z, y, x));
        }
        Ok(())
    }

    /// Every value as a `Settings` (what checkpoints store and `revseg train` prints).
    pub fn settings(&self) -> Settings {
        Settings {
            widths: Some(self.net.widths.clone()),
            rev_blocks: Some(self.net.rev_blocks),
            norm: Some(match self.net.norm {
                Norm::Batch => NormName::Batch,
                Norm::None => NormName::None,
            }),
            outputs: Some(self.net.outputs),
            patch: Some([self.patch.0, self.patch.1, self.patch.2]),
            steps: Some(self.steps),
            lr: Some(self.lr),
            adam_eps: Some(self.adam_eps),
            bn_momentum: Some(self.bn_momentum),
            seed: Some(self.seed),
            val_every: Some(self.val_every),
            val_fraction: Some(self.val_fraction),
            plateau_patience: Some(self.plateau_patience),
            checkpoint_every: Some(self.checkpoint_every),
            augment: Some(self.augment),
            widen_borders: Some(self.widen_borders),
            store_all: Some(self.store_all),
            voxel_size: self.voxel_size.map(|(z, y, x)| [z, y, x]),
            precision: self.precision,
            exact_coupling: Some(self.exact_coupling),
            lr_schedule: Some(self.lr_schedule),
            warmup: Some(self.warmup),
            z_weight: Some(self.z_weight),
        }
    }

    /// Apply one `key = value` setting (TOML syntax, or a bare word or comma list).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.apply(&Settings::from_key_value(key, value)?)
    }

    /// Settings from a TOML file (`key = value` at the top level; see `Settings`).
    pub fn apply_toml(&mut self, text: &str, origin: &str) -> Result<()> {
        self.apply(&Settings::from_toml(text, origin)?)
    }

    pub fn validate(&self) -> Result<()> {
        self.net.validate()?;
        self.net
            .check_patch(self.patch.0, self.patch.1, self.patch.2)?;
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(Error::Invalid(format!(
                "val_fraction {} must be in [0, 1)",
                self.val_fraction
            )));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::Invalid(format!(
                "lr {} must be a positive number",
                self.lr
            )));
        }
        if !(self.bn_momentum > 0.0 && self.bn_momentum <= 1.0) {
            return Err(Error::Invalid(format!(
                "bn_momentum {} must be in (0, 1]",
                self.bn_momentum
            )));
        }
        for (key, v) in [
            ("val_every", self.val_every),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                return Err(Error::Invalid(format!("{key} 0: must be at least 1")));
            }
        }
        if !(self.adam_eps > 0.0 && self.adam_eps.is_finite()) {
            return Err(Error::Invalid(format!(
                "adam_eps {} must be a positive number",
                self.adam_eps
            )));
        }
        if !(self.z_weight > 0.0 && self.z_weight.is_finite()) {
            return Err(Error::Invalid(format!(
                "z_weight {} must be a positive number (1 weighs z edges as in-plane ones)",
                self.z_weight
            )));
        }
        if self.lr_schedule == LrSchedule::Cosine && self.warmup >= self.steps {
            return Err(Error::Invalid(format!(
                "warmup {} must be below steps {} (the cosine schedule decays after it)",
                self.warmup, self.steps
            )));
        }
        if ![3, 12].contains(&self.net.outputs) {
            return Err(Error::Invalid(format!(
                "outputs {}: choose 3 or 12",
                self.net.outputs
            )));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Json {
        serde_json::to_value(self.settings()).unwrap_or(Json::Null)
    }

    /// Restore from the JSON `to_json` wrote (checkpoint metadata); unknown keys are refused.
    pub fn from_json_text(text: &str) -> Result<Self> {
        let s: Settings = crate::json::parse(text, "checkpoint config")?;
        let mut c = TrainConfig::default();
        c.apply(&s)?;
        Ok(c)
    }
}

pub const KEYS: &[&str] = &[
    "widths",
    "rev_blocks",
    "norm",
    "outputs",
    "patch",
    "steps",
    "lr",
    "adam_eps",
    "bn_momentum",
    "seed",
    "val_every",
    "val_fraction",
    "plateau_patience",
    "checkpoint_every",
    "augment",
    "widen_borders",
    "store_all",
    "voxel_size",
    "precision",
    "exact_coupling",
    "lr_schedule",
    "warmup",
    "z_weight",
];
