//! The VRAM expert cache (`--moe-gpu-cache N`, beyond llama.cpp): for a layer whose expert
//! tensors stay in RAM (`--n-cpu-moe`), N of its experts also live on the GPU, in slots of
//! stacked gate/up/down matrices. After the GPU routes a batch, the (token, slot) pairs whose
//! expert sits in a slot run on the GPU (while the CPU runs the rest), and both sums are added to
//! the residual.
//!
//! Which experts: counted online, from the routing the CPU reads back anyway. The slots start
//! with the N experts that `dsrun calibrate` saw chosen most often in that layer
//! (`dsrun.moe.expert_share`, whose shares also seed the counts as [`PRIOR_TOKENS`] tokens' worth
//! of choices), or with experts 0..N in a file without it, and every [`REFRESH_TOKENS`] tokens
//! take the N most chosen so far (an expert already held keeps its slot; ties keep the held
//! one), each newcomer's rows written into the slot of one that left. The hit rate (selected
//! experts served from VRAM) goes into [`MoeStats::vram`].

use std::sync::Mutex;

use super::ops::GpuMatrix;
use super::{GpuContext, GpuOps};
use crate::error::{Error, Result};
use crate::model::moe_select::MoeStats;
use crate::model::weights::Ffn;
use crate::tensor::TensorView;

/// Tokens between two refreshes of a layer's slots.
pub const REFRESH_TOKENS: usize = 16;

/// How many tokens' worth of choices the calibration's shares count for when they seed the
/// online counts: enough to keep the first refreshes from trading a well-measured expert for
/// one a few tokens happened to pick, few enough that a text unlike the calibration text moves
/// the slots within a few hundred tokens.
pub const PRIOR_TOKENS: f32 = 64.0;

/// The `n_slot` experts with the largest shares (ties to the lower index), and each expert's
/// seed count; without shares, experts 0..n_slot and zero counts.
pub fn initial_slots(
    share: Option<&[f32]>,
    n_expert: usize,
    n_slot: usize,
) -> (Vec<usize>, Vec<u64>) {
    let n_slot = n_slot.min(n_expert);
    match share.filter(|s| s.len() == n_expert) {
        None => ((0..n_slot).collect(), vec![0; n_expert]),
        Some(s) => {
            let mut order: Vec<usize> = (0..n_expert).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
            order.truncate(n_slot);
            let counts = s
                .iter()
                .map(|&v| (v.max(0.0) * PRIOR_TOKENS).round() as u64)
                .collect();
            (order, counts)
        }
    }
}

pub struct ExpertCache {
    /// Gate and up (n_slot × n_ff rows), down (n_slot × n_embd rows), as the stacked experts.
    pub mats: Box<[GpuMatrix; 3]>,
    pub n_slot: usize,
    state: Mutex<State>,
}

struct State {
    /// The expert in each slot.
    slot_expert: Vec<usize>,
    /// Per expert: its slot, if it has one.
    slot_of: Vec<Option<u32>>,
    /// Per expert: times chosen.
    counts: Vec<u64>,
    /// Tokens routed since the last refresh.
    since: usize,
}

/// The (gate, up, down) views of a MoE layer and the rows one expert takes in each.
fn views<'f, 'a>(ffn: &'f Ffn<'a>) -> Result<([&'f TensorView<'a>; 3], [usize; 3])> {
    let Ffn::Moe {
        gate,
        up,
        down,
        n_ff,
        ..
    } = ffn
    else {
        return Err(Error::Invalid(
            "an expert cache asked of a dense layer".into(),
        ));
    };
    let n_expert = gate.n_rows / n_ff;
    Ok(([gate, up, down], [*n_ff, *n_ff, down.n_rows / n_expert]))
}

/// Expert `x`'s raw rows of `t` (`rows` of them).
fn expert_bytes<'a>(t: &'a TensorView, rows: usize, x: usize) -> &'a [u8] {
    let row_bytes = t.data.len() / t.n_rows;
    &t.data[x * rows * row_bytes..(x + 1) * rows * row_bytes]
}

impl ExpertCache {
    /// Slots for `n_slot` experts of `ffn` (at most all of them), holding those
    /// [`initial_slots`] picks from the layer's calibrated `share` of tokens per expert.
    pub fn new(
        ops: &GpuOps,
        ffn: &Ffn,
        n_slot: usize,
        share: Option<&[f32]>,
    ) -> Result<ExpertCache> {
        let (ts, rows) = views(ffn)?;
        let n_expert = ts[0].n_rows / rows[0];
        let (slot_expert, counts) = initial_slots(share, n_expert, n_slot);
        let n_slot = slot_expert.len();
        let mut mats = Vec::with_capacity(3);
        for (t, &r) in ts.iter().zip(&rows) {
            let bytes: Vec<u8> = slot_expert
                .iter()
                .flat_map(|&x| expert_bytes(t, r, x).iter().copied())
                .collect();
            let m = ops
                .upload_matrix(t.ty, n_slot * r, t.n_cols, &bytes)
                .map_err(|e| Error::Invalid(format!("{} (expert cache): {e}", t.name)))?;
            mats.push(m);
        }
        let mats: [GpuMatrix; 3] = mats.try_into().map_err(|_| Error::Invalid("3".into()))?;
        let mut slot_of = vec![None; n_expert];
        for (s, &x) in slot_expert.iter().enumerate() {
            slot_of[x] = Some(s as u32);
        }
        Ok(ExpertCache {
            mats: Box::new(mats),
            n_slot,
            state: Mutex::new(State {
                slot_expert,
                slot_of,
                counts,
                since: 0,
            }),
        })
    }

    /// Splits a routed batch (`ids`, `wts` over (token, slot)): returns the slot index and weight
    /// of each pair for the GPU (weight 0 where the expert is not held) and which pairs the GPU
    /// serves; counts the choices and the hits into `stats`.
    pub fn split(
        &self,
        ids: &[u32],
        wts: &[f32],
        stats: &mut MoeStats,
    ) -> Result<(Vec<u32>, Vec<f32>, Vec<bool>)> {
        let mut st = self.state.lock().expect("expert cache lock");
        let n_expert = st.counts.len();
        let (mut sids, mut swts, mut served) = (Vec::new(), Vec::new(), Vec::new());
        for (&x, &w) in ids.iter().zip(wts) {
            let x = x as usize;
            if x >= n_expert {
                return Err(Error::Invalid(format!(
                    "GPU routing chose expert {x} of {n_expert}"
                )));
            }
            st.counts[x] += 1;
            let slot = st.slot_of[x];
            sids.push(slot.unwrap_or(0));
            swts.push(if slot.is_some() { w } else { 0.0 });
            served.push(slot.is_some());
        }
        let hits = served.iter().filter(|&&s| s).count() as u64;
        stats.vram.0 += hits;
        stats.vram.1 += ids.len() as u64;
        Ok((sids, swts, served))
    }

    /// After `n_tok` more tokens: every [`REFRESH_TOKENS`], the slots take the most chosen
    /// experts, writing the newcomers' rows over those that left.
    pub fn refresh(&self, ctx: &GpuContext, ffn: &Ffn, n_tok: usize) -> Result<()> {
        let mut st = self.state.lock().expect("expert cache lock");
        st.since += n_tok;
        if st.since < REFRESH_TOKENS {
            return Ok(());
        }
        st.since = 0;
        let mut order: Vec<usize> = (0..st.counts.len()).collect();
        // Most chosen first; among equals, the held ones first, then by index.
        order.sort_by_key(|&x| (std::cmp::Reverse(st.counts[x]), st.slot_of[x].is_none(), x));
        let want = &order[..self.n_slot];
        let leaving: Vec<u32> = st
            .slot_expert
            .iter()
            .enumerate()
            .filter(|(_, x)| !want.contains(x))
            .map(|(s, _)| s as u32)
            .collect();
        let coming: Vec<usize> = want
            .iter()
            .copied()
            .filter(|&x| st.slot_of[x].is_none())
            .collect();
        let (ts, rows) = views(ffn)?;
        for (&s, x) in leaving.iter().zip(coming) {
            for ((m, t), &r) in self.mats.iter().zip(ts).zip(&rows) {
                m.write_rows(ctx, s as usize * r, expert_bytes(t, r, x))?;
            }
            let old = st.slot_expert[s as usize];
            st.slot_of[old] = None;
            st.slot_of[x] = Some(s);
            st.slot_expert[s as usize] = x;
        }
        Ok(())
    }

    /// The experts held, by slot (for tests and reports).
    pub fn held(&self) -> Vec<usize> {
        self.state
            .lock()
            .expect("expert cache lock")
            .slot_expert
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::tests::{ctx, nmse, random_weights, view, NMSE};
    use crate::kernels::matmul::matmul;
    use crate::rng::Rng;
    use crate::tensor::GgmlType;

    /// Rows written over a matrix split into several parts (one write crossing a part boundary)
    /// give the products of the matrix those rows came from.
    #[test]
    fn write_rows_replaces_rows_across_parts() {
        let Some(ctx) = ctx() else { return };
        let ops = GpuOps::new(ctx);
        let mut rng = Rng::new(3);
        for ty in [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
            let (n_rows, n_cols) = (24, 256);
            let a = random_weights(&mut rng, ty, n_rows, n_cols);
            let b = random_weights(&mut rng, ty, n_rows, n_cols);
            let rb = a.len() / n_rows;
            // Parts of 5 rows: rows 3..13 span three of them.
            let l = crate::gpu::repack::layout(ty).unwrap();
            let nb = n_cols / l.block;
            let seg_row = (nb * l.n_f * 4).max(nb * l.n_words * 4) as u64;
            let m = ops
                .upload_matrix_limit(ty, n_rows, n_cols, &a, 5 * seg_row)
                .unwrap();
            assert!(m.parts.len() > 2, "{}", ty.name());
            m.write_rows(ctx, 3, &b[3 * rb..13 * rb]).unwrap();
            let mut want = a.clone();
            want[3 * rb..13 * rb].copy_from_slice(&b[3 * rb..13 * rb]);
            let x = rng.vec(n_cols, 1.0);
            let mut cpu = vec![0f32; n_rows];
            matmul(&view("w", ty, n_rows, n_cols, &want), &x, 1, &mut cpu);
            let gpu = ops.matmul(&m, &x, 1).unwrap();
            assert!(nmse(&gpu, &cpu) < NMSE, "{}", ty.name());
            assert!(m.write_rows(ctx, 20, &b[..5 * rb]).is_err(), "past the end");
        }
    }

    /// The slots follow the most chosen experts, each slot then holding its expert's rows; hits
    /// are counted.
    #[test]
    fn slots_take_the_most_chosen_experts() {
        let Some(ctx) = ctx() else { return };
        let ops = GpuOps::new(ctx);
        let mut rng = Rng::new(5);
        let (n_expert, n_ff, n_embd) = (6, 32, 64);
        let ty = GgmlType::Q8_0;
        let g = random_weights(&mut rng, ty, n_expert * n_ff, n_embd);
        let u = random_weights(&mut rng, ty, n_expert * n_ff, n_embd);
        let d = random_weights(&mut rng, ty, n_expert * n_embd, n_ff);
        let ffn = Ffn::Moe {
            router: view(
                "router",
                ty,
                n_expert,
                n_embd,
                &g[..n_expert * g.len() / (n_expert * n_ff)],
            ),
            gate: view("gate", ty, n_expert * n_ff, n_embd, &g),
            up: view("up", ty, n_expert * n_ff, n_embd, &u),
            down: view("down", ty, n_expert * n_embd, n_ff, &d),
            n_ff,
            shared: None,
            selection_bias: None,
            biases: None,
        };
        let c = ExpertCache::new(&ops, &ffn, 2, None).unwrap();
        assert_eq!(c.held(), vec![0, 1]);
        let mut stats = MoeStats::default();
        // 16 tokens, 2 experts each: 1 and 4 always, so 4 must come in and 1 stay.
        let ids: Vec<u32> = (0..16).flat_map(|_| [4, 1]).collect();
        let wts = vec![0.5; ids.len()];
        let (sids, swts, served) = c.split(&ids, &wts, &mut stats).unwrap();
        assert_eq!(
            (sids[1], swts[0], served[0], served[1]),
            (1, 0.0, false, true)
        );
        assert_eq!(stats.vram, (16, 32));
        c.refresh(ctx, &ffn, 15).unwrap();
        assert_eq!(c.held(), vec![0, 1], "no refresh before 16 tokens");
        c.refresh(ctx, &ffn, 1).unwrap();
        assert_eq!(c.held(), vec![4, 1]);
        let (_, _, served) = c.split(&[4, 1, 2], &[1.0; 3], &mut stats).unwrap();
        assert_eq!(served, vec![true, true, false]);
        // Slot 0 now multiplies as expert 4.
        let x = rng.vec(n_embd, 1.0);
        let mut cpu = vec![0f32; n_ff];
        let rb = g.len() / (n_expert * n_ff);
        let e4 = &g[4 * n_ff * rb..5 * n_ff * rb];
        matmul(&view("e4", ty, n_ff, n_embd, e4), &x, 1, &mut cpu);
        let gpu = ops.matmul(&c.mats[0], &x, 1).unwrap();
        assert!(nmse(&gpu[..n_ff], &cpu) < NMSE);
        assert!(
            c.split(&[6], &[1.0], &mut stats).is_err(),
            "expert out of range"
        );

        // Seeded by calibrated shares: experts 3 and 5 from the start, each slot holding its
        // expert's rows; 16 tokens of expert 0 alone do not outweigh 64 tokens' worth of 5.
        let share = [0.25, 0.0, 0.1, 0.9, 0.0, 0.75];
        let c = ExpertCache::new(&ops, &ffn, 2, Some(&share)).unwrap();
        assert_eq!(c.held(), vec![3, 5]);
        let gpu = ops.matmul(&c.mats[0], &x, 1).unwrap();
        let e3 = &g[3 * n_ff * rb..4 * n_ff * rb];
        matmul(&view("e3", ty, n_ff, n_embd, e3), &x, 1, &mut cpu);
        assert!(nmse(&gpu[..n_ff], &cpu) < NMSE);
        c.split(&[0; 16], &[1.0; 16], &mut stats).unwrap();
        c.refresh(ctx, &ffn, 16).unwrap();
        assert_eq!(c.held(), vec![3, 5]);
    }

    /// The largest shares, ties to the lower index; seed counts are shares × PRIOR_TOKENS;
    /// without shares (or with the wrong number), experts 0..N.
    #[test]
    fn initial_slots_follow_the_shares() {
        let share = [0.5, 0.0, 1.0, 0.5, 0.25];
        let (slots, counts) = initial_slots(Some(&share), 5, 3);
        assert_eq!(slots, vec![2, 0, 3]);
        assert_eq!(counts, vec![32, 0, 64, 32, 16]);
        assert_eq!(initial_slots(None, 5, 2), (vec![0, 1], vec![0; 5]));
        assert_eq!(
            initial_slots(Some(&share[..4]), 5, 9).0,
            vec![0, 1, 2, 3, 4]
        );
    }
}
