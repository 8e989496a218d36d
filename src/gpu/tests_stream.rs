//! `--kv-window` on the GPU against the CPU's windowed attention (`kv_window::attend`): the ring,
//! the sinks (StreamingLLM or absolute positions), gpt-oss's head sinks, and the summary with
//! learned, round-robin and recency slots, with and without forgetting, over runs that cross the
//! moment the window fills in batches of every size (one token; several; more than the window).
//! Same rules as `tests.rs` (no adapter: skip, unless `DSRUN_REQUIRE_GPU=1`).

use std::sync::Arc;

use half::f16;

use super::ops::StepUniform;
use super::plan::Dispatch;
use super::stream::{slot_part_len, Dims, StreamActs, StreamLayerGpu};
use super::tests::{ctx, nmse, NMSE};
use super::tests_forward::read_u32;
use super::GpuContext;
use crate::kernels::rope::{RopeKind, RopeParams, Yarn};
use crate::model::kv_cache::KvCache;
use crate::model::kv_window::{
    attend, Assign, SinkPos, SlotKeys, StreamConfig, StreamInput, SummaryConfig,
};
use crate::model::KvTypes;
use crate::rng::Rng;

fn buf(ctx: &GpuContext, label: &str, n: usize) -> wgpu::Buffer {
    ctx.zeroed(label, (n * 4) as u64).unwrap()
}

fn replay(ctx: &GpuContext, work: &[Dispatch], n_tok: u32) {
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for d in work {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind, &[]);
            let (x, y, z) = d.groups.at(n_tok);
            pass.dispatch_workgroups(x, y, z);
        }
    }
    ctx.queue.submit([enc.finish()]);
    assert!(pollster::block_on(scope.pop()).is_none(), "validation");
}

struct Case {
    n_head_kv: usize,
    group: usize,
    hd: usize,
    cfg: StreamConfig,
    rope: RopeParams,
    head_sinks: bool,
    batches: Vec<usize>,
    n_tok: usize,
}

/// Runs a case on both; returns the worst nmse of a batch's output and the share of summary
/// values (f16 bits) the GPU and CPU hold equal at the end.
fn run_case(ctx: &GpuContext, c: &Case, seed: u64) -> (f64, f64) {
    let (h, hd) = (c.n_head_kv, c.hd);
    let n_head = h * c.group;
    let (qd, kvd) = (n_head * hd, h * hd);
    let n_batch = *c.batches.iter().max().unwrap();
    let n_ctx = c.n_tok + 8;
    let mut rng = Rng::new(seed);
    let q = rng.vec(c.n_tok * qd, 1.0);
    let k = rng.vec(c.n_tok * kvd, 1.0);
    let v = rng.vec(c.n_tok * kvd, 1.0);
    let sinks: Vec<f32> = (0..n_head).map(|i| i as f32 * 0.7 - 1.0).collect();
    let scale = 1.0 / (hd as f32).sqrt();

    let mut kv = KvCache::with_stream(
        n_ctx,
        kvd,
        KvTypes::default(),
        &[None],
        Some((c.cfg.clone(), h, hd)),
    )
    .unwrap();
    let dims = Dims {
        n_head,
        n_head_kv: h,
        head_dim: hd,
        cap: (c.cfg.window + n_batch).min(n_ctx),
    };
    let st = StreamLayerGpu::new(ctx, &c.cfg, 0, dims, &c.rope, scale, c.head_sinks).unwrap();
    let sink_buf = ctx
        .storage("head sinks", bytemuck::cast_slice(&sinks))
        .unwrap();
    let (qb, qsb) = (buf(ctx, "q", n_batch * qd), buf(ctx, "qs", n_batch * qd));
    let (kb, vb) = (buf(ctx, "k", n_batch * kvd), buf(ctx, "v", n_batch * kvd));
    let out = buf(ctx, "out", n_batch * qd);
    let part = buf(
        ctx,
        "slot part",
        n_batch * slot_part_len(&c.cfg, n_head, hd),
    );
    let dummy = buf(ctx, "dummy", 1);
    let step = ctx.uniform(&StepUniform {
        n_tok: 0,
        pos0: 0,
        _pad: [0; 2],
    });
    let acts = StreamActs {
        q: &qb,
        qs: &qsb,
        k: &kb,
        v: &vb,
        out: &out,
        slot_part: &part,
        step: &step,
        dummy: &dummy,
    };
    let work = st
        .record(ctx, &acts, c.head_sinks.then_some(&sink_buf))
        .unwrap();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    st.reset(&mut enc);
    ctx.queue.submit([enc.finish()]);

    let mut worst = 0.0f64;
    let (mut at, mut i) = (0, 0);
    while at < c.n_tok {
        let n = c.batches[i % c.batches.len()].min(c.n_tok - at);
        let (qr, kr) = (at * qd..(at + n) * qd, at * kvd..(at + n) * kvd);
        ctx.queue
            .write_buffer(&qb, 0, bytemuck::cast_slice(&q[qr.clone()]));
        ctx.queue
            .write_buffer(&kb, 0, bytemuck::cast_slice(&k[kr.clone()]));
        ctx.queue
            .write_buffer(&vb, 0, bytemuck::cast_slice(&v[kr.clone()]));
        let s = StepUniform {
            n_tok: n as u32,
            pos0: at as u32,
            _pad: [0; 2],
        };
        ctx.queue.write_buffer(&step, 0, bytemuck::bytes_of(&s));
        replay(ctx, &work, n as u32);
        let gpu: Vec<f32> = read_u32(ctx, &out, n * qd)
            .into_iter()
            .map(f32::from_bits)
            .collect();
        let mut cpu = vec![0.0f32; n * qd];
        let inp = StreamInput {
            q: &q[qr],
            k: &k[kr.clone()],
            v: &v[kr],
            n_head,
            n_head_kv: h,
            head_dim: hd,
            rope: &c.rope,
            scale,
            head_sinks: c.head_sinks.then_some(&sinks[..]),
            pos0: at,
        };
        attend(&mut kv, 0, &inp, &mut cpu);
        let e = nmse(&gpu, &cpu);
        assert!(e.is_finite(), "batch at {at}: not finite");
        worst = worst.max(e);
        at += n;
        i += 1;
    }

    let m = c.cfg.n_slot();
    let words = h * m * hd / 2;
    let summ = read_u32(ctx, st.summary_buffer(), 2 * words + h * m);
    let (mk, mv, _) = kv.stream_layer(0).summary();
    let bits = |w: &[u32]| -> Vec<u16> {
        w.iter()
            .flat_map(|x| [*x as u16, (*x >> 16) as u16])
            .collect()
    };
    let gk = bits(&summ[..words]);
    let gv = bits(&summ[words..2 * words]);
    let cpu_bits = mk.iter().chain(mv).map(|x: &f16| x.to_bits());
    let n_eq = gk
        .iter()
        .chain(&gv)
        .zip(cpu_bits)
        .filter(|(a, b)| **a == *b)
        .count();
    let share = if m == 0 {
        1.0
    } else {
        n_eq as f64 / (2 * words * 2) as f64
    };
    (worst, share)
}

fn rope(kind: RopeKind, n_rot: usize, yarn: bool) -> RopeParams {
    let mut y = Yarn::NONE;
    let mut freq_scale = 1.0;
    if yarn {
        y.ext_factor = 1.0;
        y.attn_factor = 1.0;
        y.beta_fast = 32.0;
        y.beta_slow = 1.0;
        y.n_ctx_orig = 64;
        freq_scale = 0.25;
    }
    RopeParams {
        kind,
        n_rot,
        freq_base: 10000.0,
        freq_scale,
        yarn: y,
        factors: None,
    }
}

/// Every case on lavapipe (or any adapter): outputs within the GPU bound of the CPU at every
/// batch, and the summary's f16 means the CPU's bit for bit but for a few stochastic roundings
/// that a last-place difference in `mean + (x - mean) / count` turns the other way.
#[test]
fn windowed_attention_matches_cpu() {
    let Some(shared) = ctx() else { return };
    // The shared context takes subgroup reductions where offered; a context of its own, the
    // workgroup-memory ones.
    let own = GpuContext::new()
        .unwrap()
        .expect("an adapter, as ctx() found");
    own.set_subgroups(false);
    for ctx in [shared, &own] {
        cases(ctx);
    }
}

fn cases(ctx: &GpuContext) {
    let mut rng = Rng::new(21);
    let assigns = |rng: &mut Rng, case: usize, h: usize, m: usize, hd: usize| -> Assign {
        match case % 3 {
            0 => Assign::Centroids(Arc::new(rng.vec(h * m * hd, 1.0))),
            1 => Assign::RoundRobin,
            _ => Assign::Recency,
        }
    };
    for case in 0..10 {
        let n_head_kv = 1 + rng.below(2);
        let hd = [32, 64, 80][rng.below(3)];
        let window = [5, 16, 33][rng.below(3)];
        let sinks = [0, 1, 4][rng.below(3)];
        let n_slot = [0, 3, 8, 70][case % 4];
        let summary = (n_slot > 0).then(|| SummaryConfig {
            n_slot,
            assign: assigns(&mut rng, case, n_head_kv, n_slot, hd),
            log_weight: [0.0, 1.0, 1.25][rng.below(3)],
            keys: SlotKeys::TruePos,
            horizon: [0, 7, 2048][rng.below(3)],
        });
        let kind = [RopeKind::Norm, RopeKind::Neox][rng.below(2)];
        let c = Case {
            n_head_kv,
            group: 1 + rng.below(3),
            hd,
            cfg: StreamConfig {
                window,
                sinks,
                sink_pos: [SinkPos::Cache, SinkPos::Absolute][(case / 2) % 2],
                summary,
                reference: false,
            },
            rope: rope(kind, if case % 5 == 3 { hd / 2 } else { hd }, case % 3 == 2),
            head_sinks: case % 4 == 1,
            batches: [vec![1], vec![3, 1, 9], vec![1, 2, 40, 7]][case % 3].clone(),
            n_tok: 90,
        };
        let (e, share) = run_case(ctx, &c, case as u64);
        let what = format!(
            "subgroups {}, case {case}: {n_head_kv} KV heads × {} of {hd}, W {window} S {sinks} M {n_slot} \
             {:?} {:?}, batches {:?}",
            ctx.subgroups(),
            c.group,
            c.cfg.sink_pos,
            c.cfg
                .summary
                .as_ref()
                .map(|s| (&s.assign, s.horizon, s.log_weight)),
            c.batches
        );
        assert!(e < NMSE, "{what}: nmse {e}");
        assert!(
            share > 0.99,
            "{what}: {share} of the summary's f16 values equal"
        );
    }
}
