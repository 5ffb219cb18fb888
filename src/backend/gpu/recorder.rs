//! A launcher that records every launch's kernel and grid on the way to another one: what tests
//! check the launch configurations (split counts, waves) with.

use super::{DeviceLimits, Launcher};
use crate::error::Result;
use std::cell::RefCell;

/// A launcher that notes every launch's kernel and grid on the way to the real one.
pub struct Recorder<L: Launcher> {
    pub inner: L,
    /// (kernel, grid) of every launch, in order.
    pub grids: RefCell<Vec<(String, [u32; 3])>>,
}

impl<L: Launcher> Recorder<L> {
    pub fn new(inner: L) -> Self {
        Recorder {
            inner,
            grids: RefCell::new(Vec::new()),
        }
    }
}

impl<L: Launcher> Launcher for Recorder<L> {
    type Buf = L::Buf;
    fn name(&self) -> String {
        self.inner.name()
    }
    fn alloc(&self, len: usize) -> Result<L::Buf> {
        self.inner.alloc(len)
    }
    fn upload(&self, buf: &mut L::Buf, offset: usize, src: &[f32]) -> Result<()> {
        self.inner.upload(buf, offset, src)
    }
    fn download(&self, buf: &L::Buf, offset: usize, dst: &mut [f32]) -> Result<()> {
        self.inner.download(buf, offset, dst)
    }
    fn device_ptr(&self, buf: &mut L::Buf) -> u64 {
        self.inner.device_ptr(buf)
    }
    fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[u8],
    ) -> Result<()> {
        self.grids.borrow_mut().push((kernel.to_string(), grid));
        self.inner.launch(kernel, grid, block, shared_bytes, args)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn clear_regions(&self) {
        self.inner.clear_regions()
    }
    fn note_region(&self, ptr: u64, len: usize) {
        self.inner.note_region(ptr, len)
    }
    fn range_push(&self, name: &str) {
        self.inner.range_push(name)
    }
    fn range_pop(&self) {
        self.inner.range_pop()
    }
    fn limits(&self) -> DeviceLimits {
        self.inner.limits()
    }
}
