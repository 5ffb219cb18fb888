//! `revseg eval`: a segmentation against ground truth (adapted Rand, VOI, boundary accuracy).

use crate::error::{Error, Result};
use crate::json::{self, Json};
use crate::metrics::{evaluate, Metrics};
use crate::segment::Dims;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Segmentation volume (FILE.h5:/dataset, DIR.zarr, FILE.tif, FILE.raw:Z,Y,X:DTYPE), integer labels (Z, Y, X); 0 = unlabelled.
    #[arg(long)]
    pub segmentation: String,
    /// Ground truth volume (any format, as --segmentation), integer labels (Z, Y, X); 0 is ignored.
    #[arg(long)]
    pub groundtruth: String,
    /// Evaluate only a centred box of Z,Y,X voxels.
    #[arg(long)]
    pub crop: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// Labels in the narrowest type that holds them (halves memory for the usual u32 volumes).
enum Labels {
    U32(Vec<u32>),
    U64(Vec<u64>),
}

fn read_labels(spec: &str, what: &str) -> Result<(Dims, Labels)> {
    let r = crate::volume::io::open_volume(spec)?;
    let dims = Dims::from_volume_shape(r.shape()).map_err(|_| {
        Error::Invalid(format!(
            "{spec}: {what} must have 3 dimensions (Z, Y, X), found shape {:?}",
            r.shape()
        ))
    })?;
    let wide = r.read_all::<u64>()?.data;
    let labels = if wide.iter().all(|&l| l <= u32::MAX as u64) {
        Labels::U32(wide.into_iter().map(|l| l as u32).collect())
    } else {
        Labels::U64(wide)
    };
    Ok((dims, labels))
}

/// Parse "Z,Y,X".
fn parse_crop(s: &str) -> Result<Dims> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid(format!("crop '{s}': expected Z,Y,X, e.g. 50,512,512")))?;
    match v[..] {
        [z, y, x] if z > 0 && y > 0 && x > 0 => Ok(Dims::new(z, y, x)),
        _ => Err(Error::Invalid(format!(
            "crop '{s}': expected three positive integers Z,Y,X, e.g. 50,512,512"
        ))),
    }
}

pub fn run(a: &EvalArgs) -> Result<()> {
    let (seg_spec, gt_spec) = (a.segmentation.as_str(), a.groundtruth.as_str());
    let crop = a.crop.as_deref().map(parse_crop).transpose()?;
    let (sd, seg) = read_labels(seg_spec, "segmentation")?;
    let (gd, gt) = read_labels(gt_spec, "ground truth")?;
    if sd != gd {
        return Err(Error::shape(
            "eval",
            format!(
                "segmentation {seg_spec} is {}x{}x{} but ground truth {gt_spec} is {}x{}x{}",
                sd.z, sd.y, sd.x, gd.z, gd.y, gd.x
            ),
        ));
    }
    let m = match (&seg, &gt) {
        (Labels::U32(s), Labels::U32(g)) => evaluate(s, g, sd, crop),
        (Labels::U32(s), Labels::U64(g)) => evaluate(s, g, sd, crop),
        (Labels::U64(s), Labels::U32(g)) => evaluate(s, g, sd, crop),
        (Labels::U64(s), Labels::U64(g)) => evaluate(s, g, sd, crop),
    }?;
    if a.json {
        println!("{}", to_json(&m, seg_spec, gt_spec));
    } else {
        print_text(&m);
    }
    Ok(())
}

fn to_json(m: &Metrics, seg: &str, gt: &str) -> Json {
    json::obj([
        ("command", Json::from("eval")),
        ("segmentation", Json::from(seg.to_string())),
        ("groundtruth", Json::from(gt.to_string())),
        (
            "region",
            Json::Array(vec![m.dims.z.into(), m.dims.y.into(), m.dims.x.into()]),
        ),
        ("foreground_voxels", Json::from(m.voxels)),
        ("adapted_rand_error", Json::from(m.adapted_rand_error)),
        ("rand_merge", Json::from(m.rand_merge)),
        ("rand_split", Json::from(m.rand_split)),
        ("voi_split", Json::from(m.voi_split)),
        ("voi_merge", Json::from(m.voi_merge)),
        ("boundary_accuracy", Json::from(m.boundary_accuracy)),
    ])
}

fn print_text(m: &Metrics) {
    println!(
        "region {}x{}x{}, {} ground-truth foreground voxels",
        m.dims.z, m.dims.y, m.dims.x, m.voxels
    );
    println!(
        "adapted Rand error {:.6} (merge P {:.6}, split R {:.6})",
        m.adapted_rand_error, m.rand_merge, m.rand_split
    );
    println!(
        "VOI split {:.6}, merge {:.6}, total {:.6} bits",
        m.voi_split,
        m.voi_merge,
        m.voi_split + m.voi_merge
    );
    println!("boundary accuracy {:.6}", m.boundary_accuracy);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_parsing() {
        assert_eq!(parse_crop("2, 3,4").unwrap(), Dims::new(2, 3, 4));
        assert!(parse_crop("2,3").is_err());
        assert!(parse_crop("0,3,4").is_err());
    }
}
