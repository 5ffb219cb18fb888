//! The kernels' argument structs, field for field as in kernels/common.cuh. Device pointers are u64
//! (a CUDA device address, or a host address on the emulator; 0 for "none"). Both sides assert the
//! sizes, and the emulator checks every launch's size against its registry.

/// Plain data passed to a kernel as raw bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]`, contain only u64/i32/f32 fields laid out without padding.
pub unsafe trait KernelArgs: Copy {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the trait's contract: plain old data without padding, so every byte is initialised.
        unsafe {
            std::slice::from_raw_parts(
                self as *const Self as *const u8,
                std::mem::size_of::<Self>(),
            )
        }
    }
}

macro_rules! kernel_args {
    ($($name:ident = $size:expr),* $(,)?) => {
        $(
            unsafe impl KernelArgs for $name {}
            const _: () = assert!(std::mem::size_of::<$name>() == $size);
        )*
    };
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EwArgs {
    pub a: u64,
    pub b: u64,
    pub out: u64,
    pub n: i32,
    pub accumulate: i32,
    pub alpha: f32,
    pub pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvArgs {
    pub x: u64,
    pub w: u64,
    pub bias: u64,
    pub dy: u64,
    pub out: u64,
    pub n: i32,
    pub ci: i32,
    pub co: i32,
    pub d: i32,
    pub h: i32,
    pub wd: i32,
    pub kd: i32,
    pub kh: i32,
    pub kw: i32,
    pub accumulate: i32,
    pub splits: i32,
    pub chunk: i32,
}

/// conv3d 1x1x1 with few output channels (conv3d_pointwise.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PointwiseArgs {
    pub x: u64,
    pub w: u64,
    pub bias: u64,
    pub dy: u64,
    pub out: u64,
    pub n: i32,
    pub ci: i32,
    pub co: i32,
    pub sp: i32,
    pub accumulate: i32,
    pub vec: i32,
    pub splits: i32,
    pub chunk: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvTArgs {
    pub x: u64,
    pub w: u64,
    pub bias: u64,
    pub dy: u64,
    pub out: u64,
    pub n: i32,
    pub ci: i32,
    pub co: i32,
    pub d: i32,
    pub h: i32,
    pub wd: i32,
    pub accumulate: i32,
    pub pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolArgs {
    pub x: u64,
    pub dy: u64,
    pub out: u64,
    pub planes: i32,
    pub h: i32,
    pub wd: i32,
    pub accumulate: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ChanArgs {
    pub x: u64,
    pub dy: u64,
    pub gamma: u64,
    pub beta: u64,
    pub y: u64,
    pub mean: u64,
    pub invstd: u64,
    pub rmean: u64,
    pub rvar: u64,
    pub dgamma: u64,
    pub dbeta: u64,
    pub part: u64,
    pub tot: u64,
    pub n: i32,
    pub c: i32,
    pub sp: i32,
    pub splits: i32,
    pub chunk: i32,
    pub mode: i32,
    pub accumulate: i32,
    pub has_running: i32,
    pub eps: f32,
    pub momentum: f32,
    pub unbiased: f32,
    pub pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LossArgs {
    pub z: u64,
    pub t: u64,
    pub w: u64,
    pub m: u64,
    pub weight: u64,
    pub dz: u64,
    pub loss: u64,
    pub part: u64,
    pub tot: u64,
    pub n: i32,
    pub c: i32,
    pub sp: i32,
    pub total: i32,
    pub splits: i32,
    pub chunk: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamArgs {
    pub p: u64,
    pub g: u64,
    pub m: u64,
    pub v: u64,
    pub n: i32,
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub lr_t: f32,
    pub inv_bc2: f32,
    pub eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SgdArgs {
    pub p: u64,
    pub g: u64,
    pub vel: u64,
    pub n: i32,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CouplingArgs {
    pub x: u64,
    /// 0: y = q(x).
    pub f: u64,
    pub y: u64,
    pub bad: u64,
    pub n: i32,
    pub negative: i32,
    pub scale: f32,
    pub inv_scale: f32,
    pub range: f32,
    pub pad: i32,
}

kernel_args!(
    EwArgs = 40,
    CouplingArgs = 56,
    ConvArgs = 88,
    PointwiseArgs = 72,
    ConvTArgs = 72,
    PoolArgs = 40,
    ChanArgs = 152,
    LossArgs = 96,
    AdamArgs = 64,
    SgdArgs = 40,
);
