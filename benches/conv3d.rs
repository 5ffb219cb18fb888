//! `cargo bench`: conv3d GFLOP/s for every convolution shape of the Superhuman network at
//! 18x160x160 (the same figures as `revseg bench ops`).

use revseg::backend::cpu::CpuBackend;
use revseg::backend::Backend;
use revseg::bench::ops;

fn main() {
    // `cargo test --all-targets` runs bench binaries too; timing belongs to `cargo bench` alone.
    if !std::env::args().any(|a| a == "--bench") {
        println!("conv3d benchmark: run it with `cargo bench`");
        return;
    }
    let b = CpuBackend::<f32>::new();
    let res = ops::run(&b, (18, 160, 160), 0.5, None, |r| {
        eprintln!("  {} done", r.layer.name)
    })
    .expect("benchmark failed");
    println!("device: {}\n", b.name());
    print!("{}", ops::markdown(&res));
}
