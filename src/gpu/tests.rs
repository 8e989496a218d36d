//! The GPU ops against their CPU twins on random shapes, by normalized mean squared error, and
//! every WGSL module through naga's validator (which needs no GPU).
//!
//! Without an adapter the GPU tests print why and pass, unless `DSRUN_REQUIRE_GPU=1` (set by
//! `.ci/run`, which installs Mesa's lavapipe): then a missing adapter fails them, so a missing
//! install step cannot pass by skipping.

use super::*;
use crate::kernels::matmul::matmul;
use crate::kernels::norm::rms_norm_rows;
use crate::kernels::rope::{RopeKind, RopeParams, Yarn};
use crate::kernels::softmax::softmax;
use crate::tensor::quants::quantize;
use crate::tensor::{GgmlType, TensorView};
use std::sync::OnceLock;

/// Normalized MSE under which a GPU result matches the CPU's: f32 arithmetic in another order
/// (and the GPU's own exp/cos/sin) gives about 1e-12..1e-9; a wrong index gives order 1.
pub(super) const NMSE: f64 = 1e-8;

pub(super) fn nmse(gpu: &[f32], cpu: &[f32]) -> f64 {
    assert_eq!(gpu.len(), cpu.len());
    let num: f64 = gpu
        .iter()
        .zip(cpu)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = cpu
        .iter()
        .map(|b| (*b as f64).powi(2))
        .sum::<f64>()
        .max(1e-30);
    num / den
}

use crate::rng::Rng;

pub(super) fn view<'a>(
    name: &'a str,
    ty: GgmlType,
    n_rows: usize,
    n_cols: usize,
    data: &'a [u8],
) -> TensorView<'a> {
    TensorView {
        name,
        ty,
        n_cols,
        n_rows,
        row_bytes: ty.row_bytes(n_cols as u64).unwrap() as usize,
        data,
    }
}

/// Random weights of type `ty`: quantized from random values where dsrun has the quantizer,
/// else random blocks with their scales set to moderate values.
pub(super) fn random_weights(rng: &mut Rng, ty: GgmlType, n_rows: usize, n_cols: usize) -> Vec<u8> {
    let row_bytes = ty.row_bytes(n_cols as u64).unwrap() as usize;
    let mut bytes = vec![0u8; row_bytes * n_rows];
    if quantize(ty, &rng.vec(n_rows * n_cols, 1.0), &mut bytes).is_ok() {
        return bytes;
    }
    bytes.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
    let scale =
        |rng: &mut Rng| half::f16::from_f32(0.001 + 0.05 * rng.symmetric().abs()).to_le_bytes();
    let bsize = ty.type_size().unwrap();
    for blk in bytes.chunks_exact_mut(bsize) {
        match ty {
            GgmlType::Q4K => {
                blk[0..2].copy_from_slice(&scale(rng));
                blk[2..4].copy_from_slice(&scale(rng));
            }
            GgmlType::Q6K => blk[208..210].copy_from_slice(&scale(rng)),
            GgmlType::Mxfp4 => blk[0] = 120 + (rng.next_u64() % 16) as u8,
            _ => panic!("no random weights for {}", ty.name()),
        }
    }
    bytes
}

/// The shared context, or `None` (with a note) when there is no adapter and none is required.
pub(super) fn ctx() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    let c = CTX.get_or_init(|| GpuContext::new().expect("the adapter opens a device"));
    if c.is_none() {
        assert!(
            std::env::var("DSRUN_REQUIRE_GPU").as_deref() != Ok("1"),
            "DSRUN_REQUIRE_GPU=1 but wgpu finds no adapter: install mesa-vulkan-drivers libvulkan1"
        );
        eprintln!("no GPU adapter: GPU test skipped");
    } else if let Some(c) = c {
        eprintln!("GPU tests on {} ({})", c.info.name, c.info.backend);
    }
    c.as_ref()
}

#[test]
fn every_shader_validates_with_naga() {
    for (name, source, entry) in shaders::all_modules() {
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(
            module.entry_points.iter().any(|e| e.name == entry),
            "{name}: no entry point {entry}"
        );
    }
}

#[test]
fn matmul_matches_cpu_for_each_type() {
    let Some(ctx) = ctx() else { return };
    let ops = GpuOps::new(ctx);
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    for &(ty, _) in shaders::MATVEC_TYPES {
        for _ in 0..4 {
            let n_rows = 1 + rng.below(300);
            let n_cols = 32 * (1 + rng.below(24));
            let n_tok = 1 + rng.below(5);
            let n_cols = n_cols.next_multiple_of(ty.block_size().unwrap());
            let bytes = random_weights(&mut rng, ty, n_rows, n_cols);
            let x = rng.vec(n_tok * n_cols, 1.0);
            let view = view("w", ty, n_rows, n_cols, &bytes);
            let mut cpu = vec![0f32; n_tok * n_rows];
            matmul(&view, &x, n_tok, &mut cpu);
            let m = ops.upload_matrix(ty, n_rows, n_cols, &bytes).unwrap();
            let gpu = ops.matmul(&m, &x, n_tok).unwrap();
            let e = nmse(&gpu, &cpu);
            assert!(
                e < NMSE,
                "{} {n_rows}x{n_cols}, {n_tok} tokens: nmse {e}",
                ty.name()
            );
        }
    }
    // One pipeline per type, compiled once.
    assert!(ctx.n_pipelines() >= shaders::MATVEC_TYPES.len());
}

/// Both reductions of the matrix product, the subgroup variant (where offered: lavapipe has
/// subgroups of 8) and the workgroup-memory fallback, against the CPU, each under its own key.
#[test]
fn matmul_subgroup_variant_and_fallback_match_cpu() {
    if ctx().is_none() {
        return;
    }
    // A context of its own: the choice applies to what is recorded after it.
    let ctx = GpuContext::new()
        .unwrap()
        .expect("an adapter, as ctx() found");
    let ops = GpuOps::new(&ctx);
    let mut rng = Rng::new(11);
    for want in [false, true] {
        let sg = ctx.set_subgroups(want);
        if want && !sg {
            eprintln!("no subgroups on {}: variant not tested", ctx.info.name);
            continue;
        }
        for &(ty, _) in shaders::MATVEC_TYPES {
            let (n_rows, n_tok) = (1 + rng.below(200), 1 + rng.below(3));
            let n_cols = (32 * (1 + rng.below(40))).next_multiple_of(ty.block_size().unwrap());
            let bytes = random_weights(&mut rng, ty, n_rows, n_cols);
            let x = rng.vec(n_tok * n_cols, 1.0);
            let mut cpu = vec![0f32; n_tok * n_rows];
            matmul(&view("w", ty, n_rows, n_cols, &bytes), &x, n_tok, &mut cpu);
            let m = ops.upload_matrix(ty, n_rows, n_cols, &bytes).unwrap();
            // Threads over blocks (`main`), then over groups of 4 values (`main_strided`).
            ctx.set_strided(false);
            let gpu = ops.matmul(&m, &x, n_tok).unwrap();
            ctx.set_strided(true);
            let e = nmse(&gpu, &cpu);
            assert!(e < NMSE, "{} subgroups {sg}: nmse {e}", ty.name());
            let key = format!("matvec_{}{}", ty.name(), if sg { "_sg" } else { "" });
            assert!(ctx.pipelines.lock().unwrap().contains_key(&key), "{key}");
            let e = nmse(&ops.matmul(&m, &x, n_tok).unwrap(), &cpu);
            assert!(e < NMSE, "strided {} subgroups {sg}: nmse {e}", ty.name());
            let key = format!("matvec4_{}{}", ty.name(), if sg { "_sg" } else { "" });
            assert!(ctx.pipelines.lock().unwrap().contains_key(&key), "{key}");
            // The tiled (prefill) product: whole tiles of 8 tokens, partial ones, one token.
            for n_tok in [1, 2, 8, 9, 19] {
                let x = rng.vec(n_tok * n_cols, 1.0);
                let mut cpu = vec![0f32; n_tok * n_rows];
                matmul(&view("w", ty, n_rows, n_cols, &bytes), &x, n_tok, &mut cpu);
                let e = nmse(&ops.matmul_tiled(&m, &x, n_tok).unwrap(), &cpu);
                assert!(
                    e < NMSE,
                    "tiled {} subgroups {sg}, {n_tok} tokens: nmse {e}",
                    ty.name()
                );
            }
            let key = format!("matmat_{}{}", ty.name(), if sg { "_sg" } else { "" });
            assert!(ctx.pipelines.lock().unwrap().contains_key(&key), "{key}");
        }
    }
}

#[test]
fn matmul_spans_more_rows_than_one_dispatch_dimension() {
    let Some(ctx) = ctx() else { return };
    let ops = GpuOps::new(ctx);
    let mut rng = Rng::new(7);
    let (n_rows, n_cols, n_tok) = (70_000, 32, 3);
    let w = rng.vec(n_rows * n_cols, 1.0);
    let mut bytes = vec![0u8; 34 * n_rows];
    quantize(GgmlType::Q8_0, &w, &mut bytes).unwrap();
    let x = rng.vec(n_tok * n_cols, 1.0);
    let view = view("w", GgmlType::Q8_0, n_rows, n_cols, &bytes);
    let mut cpu = vec![0f32; n_tok * n_rows];
    matmul(&view, &x, n_tok, &mut cpu);
    let m = ops
        .upload_matrix(GgmlType::Q8_0, n_rows, n_cols, &bytes)
        .unwrap();
    assert!(nmse(&ops.matmul(&m, &x, n_tok).unwrap(), &cpu) < NMSE);
    // The tiled product too (one partial tile).
    assert!(nmse(&ops.matmul_tiled(&m, &x, n_tok).unwrap(), &cpu) < NMSE);
}

#[test]
fn rms_norm_softmax_rope_match_cpu() {
    let Some(ctx) = ctx() else { return };
    let ops = GpuOps::new(ctx);
    let mut rng = Rng::new(42);
    for _ in 0..4 {
        let n = 1 + rng.below(1000);
        let rows = 1 + rng.below(6);
        let w = rng.vec(n, 1.0);
        let x = rng.vec(n * rows, 1.0);

        let mut cpu = x.clone();
        rms_norm_rows(&mut cpu, &w, 1e-6);
        let mut gpu = x.clone();
        ops.rms_norm_rows(&mut gpu, &w, 1e-6).unwrap();
        assert!(nmse(&gpu, &cpu) < NMSE, "rms_norm n={n}");

        let mut cpu: Vec<f32> = x.iter().map(|v| v * 20.0).collect();
        let mut gpu = cpu.clone();
        cpu.chunks_exact_mut(n).for_each(softmax);
        ops.softmax_rows(&mut gpu, n).unwrap();
        assert!(nmse(&gpu, &cpu) < NMSE, "softmax n={n}");
    }
    // Plain, linear (factor 2) and YaRN (factor 4 over 1024, with a magnitude) RoPE.
    let yarn = Yarn {
        ext_factor: 1.0,
        attn_factor: 0.9,
        n_ctx_orig: 1024,
        ..Yarn::NONE
    };
    let factors: std::sync::Arc<[f32]> = (0..24).map(|i| 0.5 + (i % 5) as f32).collect();
    for (kind, freq_scale, yarn, factors) in [
        (RopeKind::Norm, 1.0, Yarn::NONE, None),
        (RopeKind::Neox, 1.0, Yarn::NONE, None),
        (RopeKind::Neox, 0.5, Yarn::NONE, None),
        (RopeKind::Norm, 0.25, yarn, None),
        (RopeKind::Neox, 0.25, yarn, None),
        (RopeKind::Norm, 1.0, Yarn::NONE, Some(factors.clone())),
        (RopeKind::Neox, 0.25, yarn, Some(factors.clone())),
    ] {
        let (n_tok, n_head, head_dim) = (1 + rng.below(8), 1 + rng.below(6), 64);
        let rope = RopeParams {
            kind,
            n_rot: 48,
            freq_base: 10000.0,
            freq_scale,
            yarn,
            factors,
        };
        let pos0 = rng.below(2000);
        let x = rng.vec(n_tok * n_head * head_dim, 1.0);
        let mut cpu = x.clone();
        for (t, row) in cpu.chunks_exact_mut(n_head * head_dim).enumerate() {
            rope.apply(row, head_dim, pos0 + t);
        }
        let mut gpu = x;
        ops.rope(&mut gpu, n_head, head_dim, &rope, pos0).unwrap();
        // cos/sin of angles up to ~2000 rad: the GPU's own approximations dominate.
        let e = nmse(&gpu, &cpu);
        assert!(e < 1e-6, "rope {kind:?}: nmse {e}");
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let Some(ctx) = ctx() else { return };
    let ops = GpuOps::new(ctx);
    assert!(ops
        .upload_matrix(GgmlType::Q8_0, 2, 32, &[0u8; 10])
        .is_err());
    assert!(ops
        .upload_matrix(GgmlType::Q5K, 1, 256, &[0u8; 176])
        .is_err());
    assert!(ops.upload_matrix(GgmlType::F32, 1, 20, &[0u8; 80]).is_err());
    let m = ops
        .upload_matrix(GgmlType::F32, 1, 32, &[0u8; 128])
        .unwrap();
    assert!(ops.matmul(&m, &[0.0; 31], 1).is_err());
}
