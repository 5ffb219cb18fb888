//! One training step's inputs for a program (image, target, mask) from a seed, shared by the tests
//! that compare whole steps across plans and precisions.

use revseg::model::Program;
use revseg::rng::Rng;
use revseg::tensor::Element;

pub struct Data {
    pub image: Vec<f64>,
    pub target: Vec<f64>,
    pub mask: Vec<f64>,
}

/// Normal image values, a target 60% ones and a mask 90% ones: never all zero.
pub fn data(prog: &Program, seed: u64) -> Data {
    let mut rng = Rng::new(seed);
    let n_in = prog.tensors[prog.input].shape.len();
    let n_out = prog.tensors[prog.output].shape.len();
    Data {
        image: rng.normals(n_in),
        target: (0..n_out)
            .map(|_| (rng.uniform() < 0.6) as u8 as f64)
            .collect(),
        mask: (0..n_out)
            .map(|_| (rng.uniform() < 0.9) as u8 as f64)
            .collect(),
    }
}

pub fn cast<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}
