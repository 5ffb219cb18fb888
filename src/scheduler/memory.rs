//! Static memory planning: every buffer gets an arena offset before the step runs.
//!
//! Persistent buffers (parameters, gradients, Adam moments, statistics) are laid first, end to end.
//! Transient buffers live from the first instruction that touches them to the last; they are placed
//! greedily, largest first, at the lowest offset free over their whole lifetime (the "greedy by
//! size" of TFLite's arena planner), which comes within a few percent of the live-bytes peak.

use super::instr::Phase;
use super::plan::{BufInfo, Class, Plan, CLASSES};

/// Offsets are multiples of this many bytes (64 f32 or 128 bf16 values), for coalesced device
/// access and whole cache lines on the host.
pub const ALIGN: usize = 256;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Bytes a buffer takes in the arena, with its alignment padding.
fn size(b: &BufInfo) -> usize {
    align(b.bytes())
}

/// First and last instruction touching each buffer (None when unused).
pub fn lifetimes(plan: &Plan) -> Vec<Option<(usize, usize)>> {
    let mut life: Vec<Option<(usize, usize)>> = vec![None; plan.bufs.len()];
    for (i, (_, ins)) in plan.instrs.iter().enumerate() {
        for o in ins.operands() {
            let l = &mut life[o.buf];
            *l = Some(match *l {
                None => (i, i),
                Some((a, _)) => (a, i),
            });
        }
    }
    for &b in &plan.uploaded {
        if let Some((_, last)) = life[b] {
            life[b] = Some((0, last));
        }
    }
    life
}

/// Byte offsets for every buffer, the arena's size and the live bytes after each instruction.
pub fn assign(plan: &mut Plan) {
    let life = lifetimes(plan);
    let mut off = 0;
    for b in plan.bufs.iter_mut().filter(|b| b.persistent) {
        b.offset = off;
        off += size(b);
    }
    let persistent_end = off;
    let mut order: Vec<usize> = (0..plan.bufs.len())
        .filter(|&i| !plan.bufs[i].persistent && life[i].is_some())
        .collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(size(&plan.bufs[i])), life[i].unwrap().0));
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // (offset, size, first, last)
    let mut top = 0;
    for i in order {
        let (first, last) = life[i].unwrap();
        let size = size(&plan.bufs[i]);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.2 <= last && first <= p.3)
            .map(|p| (p.0, p.0 + p.1))
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (s, e) in busy {
            if s >= at + size {
                break;
            }
            at = at.max(e);
        }
        placed.push((at, size, first, last));
        plan.bufs[i].offset = persistent_end + at;
        top = top.max(at + size);
    }
    let _ = top;
    // Alignment pads the gaps between buffers, not the arena's end.
    plan.arena_bytes = plan
        .bufs
        .iter()
        .zip(&life)
        .filter(|(b, l)| b.persistent || l.is_some())
        .map(|(b, _)| b.offset + b.bytes())
        .max()
        .unwrap_or(0);
    let n = plan.instrs.len();
    plan.free_after = vec![Vec::new(); n];
    let mut delta = vec![0isize; n + 1];
    for (i, l) in life.iter().enumerate() {
        if plan.bufs[i].persistent {
            continue;
        }
        if let Some((a, b)) = l {
            plan.free_after[*b].push(i);
            delta[*a] += size(&plan.bufs[i]) as isize;
            delta[b + 1] -= size(&plan.bufs[i]) as isize;
        }
    }
    let mut cur = persistent_end as isize;
    plan.live = (0..n)
        .map(|i| {
            cur += delta[i];
            cur as usize
        })
        .collect();
    plan.peak_index = (0..n)
        .max_by_key(|&i| (plan.live[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
}

/// Bytes by class live at instruction i (persistent buffers always).
pub fn breakdown_at(plan: &Plan, i: usize) -> Vec<(Class, usize)> {
    let life = lifetimes(plan);
    CLASSES
        .iter()
        .map(|&c| {
            let n: usize = plan
                .bufs
                .iter()
                .zip(&life)
                .filter(|(b, l)| {
                    b.class == c && (b.persistent || l.is_some_and(|(a, z)| a <= i && i <= z))
                })
                .map(|(b, _)| size(b))
                .sum();
            (c, n)
        })
        .collect()
}

/// Index ranges of the plan's phases, in order.
pub fn phase_ranges(plan: &Plan) -> Vec<(Phase, usize, usize)> {
    let mut out: Vec<(Phase, usize, usize)> = Vec::new();
    for (i, (p, _)) in plan.instrs.iter().enumerate() {
        match out.last_mut() {
            Some(last) if last.0 == *p => last.2 = i + 1,
            _ => out.push((*p, i, i + 1)),
        }
    }
    out
}
