//! A hook on the inputs of the weight matrices, for `dsrun imatrix` (the importance matrix that
//! llama.cpp's quantizers weigh their rounding errors with).
//!
//! The forward pass multiplies through [`linear`] here instead of `kernels::linear`; with no
//! observer installed (the default) that costs one thread-local read per matrix product and the
//! kernels run untouched. An observer is installed per thread, so a measurement on one thread
//! never sees another thread's model.

use crate::kernels;
use crate::tensor::TensorView;
use std::cell::RefCell;

/// What an observer is shown: the rows that are about to be multiplied by a weight matrix.
pub struct Input<'a> {
    /// The weight's GGUF name (`blk.3.attn_q.weight`, `blk.3.ffn_down_exps.weight`).
    pub weight: &'a str,
    /// For a stacked expert tensor: which expert, of how many; `None` for a plain matrix.
    pub expert: Option<(usize, usize)>,
    /// (n_tok, n_cols), row-major: one row per token.
    pub x: &'a [f32],
    pub n_tok: usize,
}

/// Called with every input while installed.
pub type Observer = Box<dyn FnMut(&Input)>;

thread_local! {
    static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
}

/// Installs `observer` for this thread (or removes it with `None`); returns the previous one.
pub fn set_observer(observer: Option<Observer>) -> Option<Observer> {
    OBSERVER.with(|o| std::mem::replace(&mut *o.borrow_mut(), observer))
}

/// Shows `input` to this thread's observer, if there is one.
pub fn observe(input: &Input) {
    OBSERVER.with(|o| {
        // An observer that multiplies matrices itself would find the cell borrowed: it is then
        // not shown its own products.
        if let Ok(mut o) = o.try_borrow_mut() {
            if let Some(f) = o.as_mut() {
                f(input);
            }
        }
    });
}

/// `kernels::linear`, after showing `x` to the observer as the input of `w`.
pub fn linear(w: &TensorView, x: &[f32], n_tok: usize, out: &mut [f32]) {
    observe(&Input {
        weight: w.name,
        expert: None,
        x,
        n_tok,
    });
    kernels::linear(w, x, n_tok, out)
}

/// Whether this thread has an observer (callers with a fast path that never forms an input
/// matrix, such as the batched experts, take their plain path while one watches).
pub fn observing() -> bool {
    OBSERVER.with(|o| o.try_borrow().map_or(true, |o| o.is_some()))
}

/// `kernels::linear_many`, after showing `x` to the observer as the input of each matrix.
pub fn linear_many(x: &[f32], n_tok: usize, products: &mut [(&TensorView, &mut [f32])]) {
    for (w, _) in products.iter() {
        observe(&Input {
            weight: w.name,
            expert: None,
            x,
            n_tok,
        });
    }
    kernels::linear_many(x, n_tok, products)
}

/// Shows `x` (n_tok rows) to the observer as the input of expert `expert` of the stacked tensor
/// `w` (whose rows hold every expert); the caller multiplies by that expert's rows itself.
pub fn observe_expert(w: &TensorView, expert: usize, n_expert: usize, x: &[f32], n_tok: usize) {
    observe(&Input {
        weight: w.name,
        expert: Some((expert, n_expert)),
        x,
        n_tok,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn observer_sees_inputs_only_while_installed() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s = seen.clone();
        let x = [1.0f32, 2.0, 3.0, 4.0];
        observe(&Input {
            weight: "before",
            expert: None,
            x: &x,
            n_tok: 2,
        });
        set_observer(Some(Box::new(move |i: &Input| {
            s.borrow_mut()
                .push((i.weight.to_string(), i.expert, i.x.to_vec(), i.n_tok))
        })));
        observe(&Input {
            weight: "blk.0.attn_q.weight",
            expert: None,
            x: &x,
            n_tok: 2,
        });
        let other = std::thread::spawn(move || {
            observe(&Input {
                weight: "other thread",
                expert: None,
                x: &[0.0],
                n_tok: 1,
            })
        });
        other.join().unwrap();
        assert!(set_observer(None).is_some());
        observe(&Input {
            weight: "after",
            expert: Some((1, 2)),
            x: &x,
            n_tok: 2,
        });
        let seen = seen.borrow();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "blk.0.attn_q.weight");
        assert_eq!(seen[0].2, x.to_vec());
    }
}
