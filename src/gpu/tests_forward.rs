//! The ops of the GPU forward pass against their CPU twins on random shapes: routing (top-k with
//! each gating), the KV store and attention (causal, windowed, with sinks, grouped heads), the
//! element-wise ops, expert matrix products that read the expert index from a buffer, and
//! matrices split over several bindings. Same rules as `tests.rs` (no adapter: skip, unless
//! `DSRUN_REQUIRE_GPU=1`).

use super::ops::{NormParams, StepUniform};
use super::plan::{AttnParams, EwParams, RouteParams};
use super::tests::{ctx, nmse, random_weights, view, NMSE};
use super::*;
use crate::kernels::attention::{attention, AttnInput, Rows};
use crate::kernels::matmul::matmul;
use crate::kernels::norm::rms_norm_rows;
use crate::model::arch::{Gating, Routing};
use crate::model::routing::{self, route};
use crate::rng::Rng;
use crate::tensor::GgmlType;

fn buf(ctx: &GpuContext, v: &[f32]) -> wgpu::Buffer {
    ctx.storage("test", bytemuck::cast_slice(v)).unwrap()
}

fn read(ctx: &GpuContext, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    read_u32(ctx, b, n)
        .into_iter()
        .map(f32::from_bits)
        .collect()
}

pub(super) fn read_u32(ctx: &GpuContext, b: &wgpu::Buffer, n: usize) -> Vec<u32> {
    let size = (n * 4) as u64;
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: size.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(b, 0, &staging, 0, size);
    ctx.queue.submit([enc.finish()]);
    bytemuck::pod_collect_to_vec(&ctx.read_staging(&staging, size).unwrap())
}

fn run(
    ctx: &GpuContext,
    (key, source, entry): (&str, &str, &str),
    bufs: &[(u32, &wgpu::Buffer)],
    groups: (u32, u32, u32),
) {
    let p = ctx.pipeline(key, source, entry).unwrap();
    let bind = ctx.bind(&p, bufs);
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&p);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
    }
    ctx.queue.submit([enc.finish()]);
    if let Some(e) = pollster::block_on(scope.pop()) {
        panic!("{key}: {e}");
    }
}

fn step(ctx: &GpuContext, n_tok: usize, pos0: usize) -> wgpu::Buffer {
    ctx.uniform(&StepUniform {
        n_tok: n_tok as u32,
        pos0: pos0 as u32,
        _pad: [0; 2],
    })
}

#[test]
fn routing_matches_cpu_for_each_gating() {
    let Some(ctx) = ctx() else { return };
    let mut rng = Rng::new(11);
    for (gating, g) in [
        (Gating::Softmax, 0),
        (Gating::Sigmoid, 1),
        (Gating::TopKThenSoftmax, 2),
    ] {
        for norm in [false, true] {
            let ne = [4, 16, 60, 128, 300][rng.below(5)];
            let k = 1 + rng.below(8.min(ne));
            let n_tok = 1 + rng.below(6);
            let scale = if rng.below(2) == 0 { 1.0 } else { 2.5 };
            let logits = rng.vec(n_tok * ne, 4.0);
            let rp = routing::RouteParams {
                routing: Routing {
                    gating,
                    norm,
                    from_metadata: false,
                },
                k,
                selection_bias: None,
                scale,
                n_group: 0,
                n_group_used: 0,
            };
            let lb = buf(ctx, &logits);
            let ids = ctx.zeroed("ids", (n_tok * k * 4) as u64).unwrap();
            let wts = ctx.zeroed("wts", (n_tok * k * 4) as u64).unwrap();
            let params = ctx.uniform(&RouteParams {
                n_expert: ne as u32,
                k: k as u32,
                gating: g,
                norm: norm as u32,
                scale,
                _pad: [0; 3],
            });
            run(
                ctx,
                ("route", shaders::MOE, "route"),
                &[(0, &lb), (1, &ids), (2, &wts), (3, &params)],
                (n_tok as u32, 1, 1),
            );
            let gi = read_u32(ctx, &ids, n_tok * k);
            let gw = read(ctx, &wts, n_tok * k);
            for t in 0..n_tok {
                let cpu = route(&rp, &logits[t * ne..(t + 1) * ne]);
                for (j, (x, w)) in cpu.iter().enumerate() {
                    assert_eq!(gi[t * k + j] as usize, *x, "{gating:?} norm {norm}: ids");
                    assert!(
                        (gw[t * k + j] - w).abs() < 1e-5 * w.abs().max(1.0),
                        "weights"
                    );
                }
            }
        }
    }
}

/// f32 → f16 → f32, as the GPU cache stores K and V.
fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

#[test]
fn kv_store_and_attention_match_cpu() {
    let Some(ctx) = ctx() else { return };
    let mut rng = Rng::new(5);
    // The f32 variant against the CPU; the f16 one (where offered) against the CPU given Q
    // rounded to f16, which is all it changes; each with subgroup reductions (where offered)
    // and without.
    let variants = [(false, false), (false, true), (true, false), (true, true)];
    for ((f16, sg), case) in variants
        .into_iter()
        .flat_map(|v| (0..6).map(move |c| (v, c)))
    {
        if (f16 && !ctx.info.shader_f16) || (sg && !ctx.info.subgroups) {
            continue;
        }
        let (suffix, src) = shaders::attention_variant(f16, sg);
        let n_head_kv = 1 + rng.below(3);
        let n_head = n_head_kv * (1 + rng.below(3));
        let hd = [32, 64, 80, 128, 256][rng.below(5)];
        let kvd = n_head_kv * hd;
        let pos0 = [0, 3, 70, 130][rng.below(4)];
        let n_tok = 1 + rng.below(5);
        let n_ctx = pos0 + n_tok + 2;
        let window = (case % 3 == 1).then(|| 1 + rng.below(40));
        let sinks = (case % 3 == 2).then(|| rng.vec(n_head, 2.0));
        // The cache before the batch (already f16) and the batch's K, V, Q.
        let old_k = f16_round(&rng.vec(pos0 * kvd, 1.0));
        let old_v = f16_round(&rng.vec(pos0 * kvd, 1.0));
        let k = rng.vec(n_tok * kvd, 1.0);
        let v = rng.vec(n_tok * kvd, 1.0);
        let q = rng.vec(n_tok * n_head * hd, 1.0);
        let scale = 1.0 / (hd as f32).sqrt();

        let pack = |x: &[f32]| -> Vec<u8> {
            let mut b: Vec<u8> = x
                .iter()
                .flat_map(|&f| half::f16::from_f32(f).to_le_bytes())
                .collect();
            b.resize(n_ctx * kvd * 2, 0);
            b
        };
        let kc = ctx.storage("kc", &pack(&old_k)).unwrap();
        let vc = ctx.storage("vc", &pack(&old_v)).unwrap();
        let (kb, vb, qb) = (buf(ctx, &k), buf(ctx, &v), buf(ctx, &q));
        let out = ctx.zeroed("out", (q.len() * 4) as u64).unwrap();
        let dummy = ctx.zeroed("dummy", 4).unwrap();
        let sb = sinks.as_ref().map(|s| buf(ctx, s));
        let params = ctx.uniform(&AttnParams {
            n_head: n_head as u32,
            n_head_kv: n_head_kv as u32,
            head_dim: hd as u32,
            window: window.unwrap_or(0) as u32,
            scale,
            has_sinks: sinks.is_some() as u32,
            _pad: [0; 2],
        });
        let st = step(ctx, n_tok, pos0);
        let n_pairs = (n_tok * kvd / 2) as u32;
        run(
            ctx,
            (&format!("kv_store{suffix}"), &src, "kv_store"),
            &[
                (1, &kc),
                (2, &vc),
                (4, &params),
                (5, &st),
                (7, &kb),
                (8, &vb),
            ],
            (n_pairs.div_ceil(64), 1, 1),
        );
        run(
            ctx,
            (&format!("attention{suffix}"), &src, "attention"),
            &[
                (0, &qb),
                (1, &kc),
                (2, &vc),
                (3, &out),
                (4, &params),
                (5, &st),
                (6, sb.as_ref().unwrap_or(&dummy)),
            ],
            (n_head as u32, n_tok as u32, 1),
        );
        let gpu = read(ctx, &out, q.len());

        let q = if f16 { f16_round(&q) } else { q };
        let all_k = [old_k, f16_round(&k)].concat();
        let all_v = [old_v, f16_round(&v)].concat();
        let mut cpu = vec![0.0f32; q.len()];
        attention(
            &AttnInput {
                q: &q,
                k: Rows::F32(&all_k),
                v: Rows::F32(&all_v),
                n_head,
                n_head_kv,
                head_dim: hd,
                pos0,
                window,
                scale,
                sinks: sinks.as_deref(),
            },
            &mut cpu,
        );
        let e = nmse(&gpu, &cpu);
        assert!(
            e < NMSE,
            "attention{suffix} {n_head}/{n_head_kv} heads of {hd}, pos0 {pos0}, {n_tok} tokens, \
             window {window:?}, sinks {}: nmse {e}",
            sinks.is_some()
        );
        // The stored cache rows are the f16 of K and V.
        let stored = read_u32(ctx, &kc, n_ctx * kvd / 2);
        let half_bits: Vec<f32> = stored[pos0 * kvd / 2..(pos0 + n_tok) * kvd / 2]
            .iter()
            .flat_map(|w| {
                [
                    half::f16::from_bits(*w as u16).to_f32(),
                    half::f16::from_bits((*w >> 16) as u16).to_f32(),
                ]
            })
            .collect();
        assert!(nmse(&half_bits, &f16_round(&k)) < 1e-12, "stored K");
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let Some(ctx) = ctx() else { return };
    let mut rng = Rng::new(3);
    for _ in 0..3 {
        let width = 1 + rng.below(700);
        let n_tok = 1 + rng.below(4);
        let k = 1 + rng.below(4);
        let st = step(ctx, n_tok, 0);
        let a = rng.vec(n_tok * width, 3.0);
        let b = rng.vec(n_tok * k * width, 1.0);
        let w = rng.vec(n_tok * k, 1.0);
        let ew = |entry: &str, kk: usize, bb: &[f32]| -> Vec<f32> {
            let (ab, bbuf, wb) = (buf(ctx, &a), buf(ctx, bb), buf(ctx, &w));
            let params = ctx.uniform(&EwParams {
                width: width as u32,
                k: kk as u32,
                _pad: [0; 2],
            });
            let mut bufs = vec![(0, &ab), (1, &bbuf), (2, &params), (3, &st)];
            if entry == "moe_sum" {
                bufs.push((4, &wb));
            }
            let g = ((n_tok * width) as u32).div_ceil(64);
            run(
                ctx,
                (&format!("ew_{entry}"), shaders::ELEMENTWISE, entry),
                &bufs,
                (g, 1, 1),
            );
            read(ctx, &ab, a.len())
        };
        let silu = crate::kernels::activation::silu;
        let cpu: Vec<f32> = a.iter().zip(&b).map(|(x, y)| silu(*x) * y).collect();
        assert!(nmse(&ew("glu", 1, &b[..a.len()]), &cpu) < NMSE, "glu");
        let cpu: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + b[i % width])
            .collect();
        assert!(
            nmse(&ew("add_bias", 1, &b[..width]), &cpu) < NMSE,
            "add_bias"
        );
        let cpu: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert!(nmse(&ew("add", 1, &b[..a.len()]), &cpu) < NMSE, "add");
        let mut cpu = a.clone();
        for t in 0..n_tok {
            for s in 0..k {
                for c in 0..width {
                    cpu[t * width + c] += w[t * k + s] * b[(t * k + s) * width + c];
                }
            }
        }
        assert!(nmse(&ew("moe_sum", k, &b), &cpu) < NMSE, "moe_sum");
    }
}

fn run_matvec(ctx: &GpuContext, d: &super::ops::MatvecDispatch, z: u32) {
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind, &[]);
        pass.dispatch_workgroups(d.groups_xy.0, d.groups_xy.1, z);
    }
    ctx.queue.submit([enc.finish()]);
    assert!(pollster::block_on(scope.pop()).is_none(), "{}", d.name);
}

/// A batch's expert products, tiled: `group` sorts the (token, slot) pairs by expert (checked
/// against a count on the host), then one workgroup per (row, expert) takes its pairs 8 at a
/// time, for gate/up (x per token) and down (x per pair); experts with no pairs, one pair,
/// and more than one tile's worth.
#[test]
fn tiled_expert_products_match_cpu() {
    let Some(ctx) = ctx() else { return };
    let ops = GpuOps::new(ctx);
    let mut rng = Rng::new(23);
    let k = 3;
    for (ty, n_tok) in [
        (GgmlType::Q8_0, 2),
        (GgmlType::Q4K, 9),
        (GgmlType::Q6K, 20),
        (GgmlType::Mxfp4, 13),
    ] {
        let (n_expert, rows) = (7, 20 + rng.below(50));
        let n_cols = 256 * (1 + rng.below(2));
        let bytes = random_weights(&mut rng, ty, n_expert * rows, n_cols);
        let m = ops
            .upload_matrix(ty, n_expert * rows, n_cols, &bytes)
            .unwrap();
        // Expert 6 is never chosen; expert 0 takes most pairs.
        let ids: Vec<u32> = (0..n_tok * k)
            .map(|_| [0, 0, 0, 1, 2, 3, 4, 5][rng.below(8)])
            .collect();
        let idb = ctx.storage("ids", bytemuck::cast_slice(&ids)).unwrap();
        let order = ctx.zeroed("order", (n_tok * k * 4) as u64).unwrap();
        let offsets = ctx.zeroed("offsets", (n_expert + 1) as u64 * 4).unwrap();
        let params = ctx.uniform(&RouteParams {
            n_expert: n_expert as u32,
            k: k as u32,
            gating: 0,
            norm: 0,
            scale: 0.0,
            _pad: [0; 3],
        });
        let st = step(ctx, n_tok, 0);
        let bufs = [
            (1, &idb),
            (3, &params),
            (4, &order),
            (5, &offsets),
            (6, &st),
        ];
        run(ctx, ("moe_group", shaders::MOE, "group"), &bufs, (1, 1, 1));
        let offs = read_u32(ctx, &offsets, n_expert + 1);
        let ord = read_u32(ctx, &order, n_tok * k);
        let mut want = vec![0u32];
        for e in 0..n_expert as u32 {
            want.push(want[e as usize] + ids.iter().filter(|&&i| i == e).count() as u32);
        }
        assert_eq!(offs, want, "offsets");
        let mut seen = ord.clone();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..(n_tok * k) as u32).collect::<Vec<_>>(),
            "a permutation"
        );
        for e in 0..n_expert {
            for &z in &ord[offs[e] as usize..offs[e + 1] as usize] {
                assert_eq!(ids[z as usize] as usize, e, "pair {z} under expert {e}");
            }
        }
        let w = view("w", ty, n_expert * rows, n_cols, &bytes);
        for x_div in [k, 1] {
            let x = rng.vec(n_tok * k / x_div * n_cols, 1.0);
            let xb = buf(ctx, &x);
            let y = ctx.zeroed("y", (n_tok * k * rows * 4) as u64).unwrap();
            let d = m
                .dispatch_ids_tiled(ctx, &xb, &y, (&order, &offsets), rows, x_div)
                .unwrap();
            run_matvec(ctx, &d, n_expert as u32);
            let gpu = read(ctx, &y, n_tok * k * rows);
            let mut cpu = vec![0.0f32; n_tok * k * rows];
            for z in 0..n_tok * k {
                let (e, r) = (ids[z] as usize, z / x_div);
                matmul(
                    &w.rows(e * rows, rows),
                    &x[r * n_cols..(r + 1) * n_cols],
                    1,
                    &mut cpu[z * rows..(z + 1) * rows],
                );
            }
            let err = nmse(&gpu, &cpu);
            assert!(err < NMSE, "{} x_div {x_div}: nmse {err}", ty.name());
        }
    }
}

/// Threads over blocks (`main_ids`) and over groups of 4 values (`main_ids_strided`).
#[test]
fn expert_products_read_the_expert_from_a_buffer() {
    if ctx().is_none() {
        return;
    }
    // A context of its own: the choice applies to what is recorded after it.
    let own = GpuContext::new()
        .unwrap()
        .expect("an adapter, as ctx() found");
    let ctx = &own;
    let ops = GpuOps::new(ctx);
    let mut rng = Rng::new(9);
    for (strided, ty) in [false, true].into_iter().flat_map(|s| {
        [
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::F16,
            GgmlType::Mxfp4,
        ]
        .into_iter()
        .map(move |t| (s, t))
    }) {
        ctx.set_strided(strided);
        let (n_expert, rows, k, n_tok) = (6, 40 + rng.below(50), 3, 1 + rng.below(3));
        let n_cols = 256 * (1 + rng.below(2));
        let bytes = random_weights(&mut rng, ty, n_expert * rows, n_cols);
        let m = ops
            .upload_matrix(ty, n_expert * rows, n_cols, &bytes)
            .unwrap();
        let x = rng.vec(n_tok * n_cols, 1.0);
        let ids: Vec<u32> = (0..n_tok * k).map(|_| rng.below(n_expert) as u32).collect();
        let (xb, idb) = (
            buf(ctx, &x),
            ctx.storage("ids", bytemuck::cast_slice(&ids)).unwrap(),
        );
        let y = ctx.zeroed("y", (n_tok * k * rows * 4) as u64).unwrap();
        let d = m.dispatch_ids(ctx, &xb, &y, &idb, rows, k).unwrap();
        run_matvec(ctx, &d, (n_tok * k) as u32);
        let gpu = read(ctx, &y, n_tok * k * rows);
        let w = view("w", ty, n_expert * rows, n_cols, &bytes);
        let mut cpu = vec![0.0f32; n_tok * k * rows];
        for z in 0..n_tok * k {
            let e = ids[z] as usize;
            matmul(
                &w.rows(e * rows, rows),
                &x[(z / k) * n_cols..(z / k + 1) * n_cols],
                1,
                &mut cpu[z * rows..(z + 1) * rows],
            );
        }
        let err = nmse(&gpu, &cpu);
        assert!(err < NMSE, "{} strided {strided}: nmse {err}", ty.name());
    }
}

#[test]
fn matrices_split_over_bindings_match_cpu() {
    let Some(ctx) = ctx() else { return };
    let ops = GpuOps::new(ctx);
    let mut rng = Rng::new(21);
    for ty in [GgmlType::Q6K, GgmlType::Q4_0] {
        let (n_rows, n_cols, n_tok) = (333, 512, 2);
        let bytes = random_weights(&mut rng, ty, n_rows, n_cols);
        // Parts of 50 Q6_K rows (81 Q4_0 rows), the last one short.
        let m = ops
            .upload_matrix_limit(ty, n_rows, n_cols, &bytes, 50 * 416)
            .unwrap();
        assert!(m.parts.len() >= 3, "{} parts", m.parts.len());
        let x = rng.vec(n_tok * n_cols, 1.0);
        let gpu = ops.matmul(&m, &x, n_tok).unwrap();
        let mut cpu = vec![0.0f32; n_tok * n_rows];
        matmul(&view("w", ty, n_rows, n_cols, &bytes), &x, n_tok, &mut cpu);
        assert!(nmse(&gpu, &cpu) < NMSE, "{}", ty.name());
    }
}

#[test]
fn norms_into_another_buffer_and_of_the_last_row() {
    let Some(ctx) = ctx() else { return };
    let mut rng = Rng::new(2);
    let (n, rows) = (300, 4);
    let x = rng.vec(n * rows, 2.0);
    let w = rng.vec(n, 1.0);
    let mut cpu = x.clone();
    rms_norm_rows(&mut cpu, &w, 1e-5);
    let (xb, wb) = (buf(ctx, &x), buf(ctx, &w));
    let dst = ctx.zeroed("dst", (x.len() * 4) as u64).unwrap();
    let params = ctx.uniform(&NormParams {
        n: n as u32,
        eps: 1e-5,
        _pad: [0; 2],
    });
    for sg in [false, ctx.info.subgroups] {
        let (suffix, src) = shaders::norm_variant(sg);
        run(
            ctx,
            (&format!("rms_norm_to{suffix}"), &src, "rms_norm_to"),
            &[(0, &dst), (1, &wb), (2, &params), (3, &xb)],
            (rows as u32, 1, 1),
        );
        assert!(nmse(&read(ctx, &dst, x.len()), &cpu) < NMSE, "sg {sg}");
        let last = ctx.zeroed("last", (n * 4) as u64).unwrap();
        let st = step(ctx, rows, 0);
        run(
            ctx,
            (&format!("rms_norm_last{suffix}"), &src, "rms_norm_last"),
            &[(0, &last), (1, &wb), (2, &params), (3, &xb), (4, &st)],
            (1, 1, 1),
        );
        let e = nmse(&read(ctx, &last, n), &cpu[(rows - 1) * n..]);
        assert!(e < NMSE, "sg {sg}: {e}");
    }
}
