//! Elementwise ops: ELU (alpha 1), add, and the reversible coupling's y = x + f / x = y - f.
//! ELU's derivative is a function of its output (1 where y > 0, y + 1 elsewhere), so the backward
//! needs only y and the input can be freed (or overwritten in place).

use crate::tensor::Element;

#[inline(always)]
pub fn elu<T: Element>(x: T) -> T {
    if x > T::ZERO {
        x
    } else {
        x.exp() - T::ONE
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
