//! Training configuration: defaults as in the Superhuman paper, overridable by a TOML file and by
//! flags (flags win). The resolved configuration is printed at start and stored in checkpoints.

use crate::error::{Error, Result};
use crate::json::Json;
use crate::model::{NetConfig, Norm};
use crate::volume::json_read;

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
    /// Keep every activation instead of reconstructing (the classic backward).
    pub store_all: bool,
    /// Voxel size (z, y, x) in nm of the training data, from its file or the command line;
    /// `revseg predict` warns when a volume's anisotropy differs.
    pub voxel_size: Option<(f64, f64, f64)>,
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
            store_all: false,
            voxel_size: None,
        }
    }
}

fn usizes(s: &str, what: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::Invalid(format!(
                "{what} '{s}': expected comma-separated positive integers"
            ))
        })
}

impl TrainConfig {
    /// Apply one `key = value` setting (from TOML or a flag), by the names `to_json` prints.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| Error::Invalid(format!("config {key} = '{v}': expected a number")))
        };
        let int = |v: &str| {
            v.parse::<usize>().map_err(|_| {
                Error::Invalid(format!(
                    "config {key} = '{v}': expected a non-negative integer"
                ))
            })
        };
        let boolean = |v: &str| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(Error::Invalid(format!(
                "config {key} = '{v}': expected true or false"
            ))),
        };
        match key {
            "widths" => self.net.widths = usizes(value, "widths")?,
            "rev_blocks" => self.net.rev_blocks = int(value)?,
            "norm" => {
                self.net.norm = match value {
                    "batch" => Norm::Batch,
                    "none" => Norm::None,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "config norm = '{value}': choose batch or none"
                        )))
                    }
                }
            }
            "outputs" => self.net.outputs = int(value)?,
            "patch" => match usizes(value, "patch")?[..] {
                [d, h, w] => self.patch = (d, h, w),
                _ => {
                    return Err(Error::Invalid(format!(
                        "config patch = '{value}': expected D,H,W"
                    )))
                }
            },
            "steps" => self.steps = int(value)?,
            "lr" => self.lr = num(value)?,
            "adam_eps" => self.adam_eps = num(value)?,
            "bn_momentum" => self.bn_momentum = num(value)?,
            "seed" => self.seed = int(value)? as u64,
            "val_every" => self.val_every = int(value)?.max(1),
            "val_fraction" => self.val_fraction = num(value)?,
            "plateau_patience" => self.plateau_patience = int(value)?,
            "checkpoint_every" => self.checkpoint_every = int(value)?.max(1),
            "augment" => self.augment = boolean(value)?,
            "store_all" => self.store_all = boolean(value)?,
            "voxel_size" => {
                let v: Vec<f64> = value
                    .split(',')
                    .map(|p| p.trim().parse::<f64>())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| {
                        Error::Invalid(format!(
                            "config voxel_size = '{value}': expected Z,Y,X in nm, e.g. 30,6,6"
                        ))
                    })?;
                match v[..] {
                    [z, y, x] if z > 0.0 && y > 0.0 && x > 0.0 => self.voxel_size = Some((z, y, x)),
                    _ => {
                        return Err(Error::Invalid(format!(
                            "config voxel_size = '{value}': expected three positive numbers Z,Y,X"
                        )))
                    }
                }
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown config key '{key}'; known keys: {}",
                    KEYS.join(", ")
                )))
            }
        }
        Ok(())
    }

    /// Settings from a TOML file: flat `key = value` lines (strings, numbers, booleans, or arrays
    /// of integers for widths and patch).
    pub fn apply_toml(&mut self, text: &str, origin: &str) -> Result<()> {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() || line.starts_with('[') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(Error::Invalid(format!(
                    "{origin}:{}: expected key = value",
                    n + 1
                )));
            };
            let v = v
                .trim()
                .trim_matches('"')
                .trim_start_matches('[')
                .trim_end_matches(']')
                .replace(' ', "");
            self.set(k.trim(), &v)
                .map_err(|e| Error::Invalid(format!("{origin}:{}: {e}", n + 1)))?;
        }
        Ok(())
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
        if ![3, 12].contains(&self.net.outputs) {
            return Err(Error::Invalid(format!(
                "outputs {}: choose 3 or 12",
                self.net.outputs
            )));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Json {
        let list = |v: &[usize]| Json::Arr(v.iter().map(|x| Json::from(*x)).collect());
        Json::obj([
            ("widths", list(&self.net.widths)),
            ("rev_blocks", Json::from(self.net.rev_blocks)),
            (
                "norm",
                Json::from(if self.net.norm == Norm::Batch {
                    "batch"
                } else {
                    "none"
                }),
            ),
            ("outputs", Json::from(self.net.outputs)),
            ("patch", list(&[self.patch.0, self.patch.1, self.patch.2])),
            ("steps", Json::from(self.steps)),
            ("lr", Json::from(self.lr)),
            ("adam_eps", Json::from(self.adam_eps)),
            ("bn_momentum", Json::from(self.bn_momentum)),
            ("seed", Json::from(self.seed)),
            ("val_every", Json::from(self.val_every)),
            ("val_fraction", Json::from(self.val_fraction)),
            ("plateau_patience", Json::from(self.plateau_patience)),
            ("checkpoint_every", Json::from(self.checkpoint_every)),
            ("augment", Json::from(self.augment)),
            ("store_all", Json::from(self.store_all)),
            (
                "voxel_size",
                self.voxel_size.map_or(Json::Null, |(z, y, x)| {
                    Json::Arr(vec![z.into(), y.into(), x.into()])
                }),
            ),
        ])
    }

    /// Restore from the JSON `to_json` wrote (checkpoint metadata).
    pub fn from_json_text(text: &str) -> Result<Self> {
        let mut c = TrainConfig::default();
        let Json::Obj(fields) = json_read::parse(text, "checkpoint config")? else {
            return Err(Error::Invalid(
                "checkpoint config: expected a JSON object".into(),
            ));
        };
        for (k, v) in &fields {
            if matches!(v, Json::Null) {
                continue;
            }
            let v = match v {
                Json::Arr(a) => a
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                Json::Str(s) => s.clone(),
                other => other.to_string(),
            };
            c.set(k, &v)?;
        }
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
    "store_all",
    "voxel_size",
];
