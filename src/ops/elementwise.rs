//! Elementwise ops: ELU (alpha 1), add, and the reversible coupling's y = x + f / x = y - f.
//! ELU's derivative is a function of its output (1 where y > 0, y + 1 elsewhere), so the backward
//! needs only y and the input can be freed (or overwritten in place).

use crate::tensor::Element;

/// Branch-free so that loops over it vectorise: both sides are computed, one is selected.
#[inline(always)]
pub fn elu<T: Element>(x: T) -> T {
    let neg = if x > T::ZERO { T::ZERO } else { x };
    let e = neg.exp_nonpositive() - T::ONE;
    if x > T::ZERO {
        x
    } else {
        e
    }
}

/// dELU/dx expressed through y = elu(x).
#[inline(always)]
pub fn elu_grad_from_output<T: Element>(y: T) -> T {
    if y > T::ZERO {
        T::ONE
    } else {
        y + T::ONE
    }
}
