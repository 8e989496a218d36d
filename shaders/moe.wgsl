// MoE routing on the GPU, one 64-wide workgroup per token: router logits (n_tok, n_expert) → the
// k chosen experts (ids, best first; ties to the lower id) and their weights, as
// src/model/routing.rs computes them: gating 0 softmax then top-k, 1 sigmoid then top-k, 2 top-k
// of the logits then a softmax over the k; then (norm) divided by their sum (clamped below at
// f16's smallest normal, as ggml does), then multiplied by `scale`. The scores live in workgroup
// memory; top-k is k rounds of a workgroup arg-max.
//
// `group` (one workgroup, for a batch of several tokens): the batch's (token, slot) pairs
// grouped by expert, a counting sort: order[offsets[e] .. offsets[e + 1]] are the pairs (token
// * k + slot) whose expert is e, for matvec.wgsl's `main_ids_tiled`. Within an expert the order
// is whatever the atomics give; each pair's product does not depend on it.

struct Params {
    n_expert: u32,
    k: u32,
    gating: u32,
    norm: u32,
    scale: f32,
}

const WG: u32 = 64u;
const MAX_EXPERTS: u32 = 512u;
const MAX_K: u32 = 64u;
const NEG: f32 = -3.4028235e38;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> weights: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> sc: array<f32, MAX_EXPERTS>;
var<workgroup> taken: array<u32, MAX_EXPERTS>;
var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> chosen: array<f32, MAX_K>;
var<workgroup> counts: array<atomic<u32>, MAX_EXPERTS>;

struct Step {
    n_tok: u32,
    pos0: u32,
}

@group(0) @binding(4) var<storage, read_write> order: array<u32>;
@group(0) @binding(5) var<storage, read_write> offsets: array<u32>;
@group(0) @binding(6) var<uniform> step: Step;

struct Best {
    v: f32,
    i: u32,
}

// The best (value, lowest index) over the workgroup's candidates.
fn arg_max(lid: u32, v: f32, i: u32) -> Best {
    red_v[lid] = v;
    red_i[lid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = red_v[lid + s];
            let oi = red_i[lid + s];
            if (ov > red_v[lid] || (ov == red_v[lid] && oi < red_i[lid])) {
                red_v[lid] = ov;
                red_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = Best(red_v[0], red_i[0]);
    workgroupBarrier();
    return r;
}

fn sum_all(lid: u32, v: f32) -> f32 {
    red_v[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_v[lid] += red_v[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_v[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn route(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let t = wid.x;
    let ne = params.n_expert;
    let k = params.k;
    let base = t * ne;
    for (var e = lid; e < ne; e += WG) {
        sc[e] = logits[base + e];
        taken[e] = 0u;
    }
    workgroupBarrier();
    if (params.gating == 0u) {
        var m = NEG;
        var mi = 0u;
        for (var e = lid; e < ne; e += WG) {
            if (sc[e] > m) {
                m = sc[e];
                mi = e;
            }
        }
        let top = arg_max(lid, m, mi).v;
        var part = 0.0;
        for (var e = lid; e < ne; e += WG) {
            sc[e] = exp(sc[e] - top);
            part += sc[e];
        }
        let sum = sum_all(lid, part);
        for (var e = lid; e < ne; e += WG) {
            sc[e] = sc[e] / sum;
        }
    } else if (params.gating == 1u) {
        for (var e = lid; e < ne; e += WG) {
            sc[e] = 1.0 / (1.0 + exp(-sc[e]));
        }
    }
    workgroupBarrier();
    for (var j = 0u; j < k; j++) {
        var best = NEG;
        var bi = 0xffffffffu;
        for (var e = lid; e < ne; e += WG) {
            if (taken[e] == 0u && (bi == 0xffffffffu || sc[e] > best)) {
                best = sc[e];
                bi = e;
            }
        }
        if (bi == 0xffffffffu) {
            best = NEG;
        }
        let b = arg_max(lid, best, bi).i;
        if (lid == 0u) {
            taken[b] = 1u;
            ids[t * k + j] = b;
            chosen[j] = sc[b];
        }
        workgroupBarrier();
    }
    if (lid != 0u) {
        return;
    }
    if (params.gating == 2u) {
        let top = chosen[0];
        var sum = 0.0;
        for (var j = 0u; j < k; j++) {
            chosen[j] = exp(chosen[j] - top);
            sum += chosen[j];
        }
        for (var j = 0u; j < k; j++) {
            chosen[j] = chosen[j] / sum;
        }
    }
    if (params.norm != 0u) {
        var sum = 0.0;
        for (var j = 0u; j < k; j++) {
            sum += chosen[j];
        }
        sum = max(sum, 6.1035156e-5);
        for (var j = 0u; j < k; j++) {
            chosen[j] = chosen[j] / sum;
        }
    }
    for (var j = 0u; j < k; j++) {
        var v = chosen[j];
        if (params.scale != 0.0 && params.scale != 1.0) {
            v *= params.scale;
        }
        weights[t * k + j] = v;
    }
}

@compute @workgroup_size(64)
fn group(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let n_pairs = step.n_tok * params.k;
    for (var e = lid; e < params.n_expert; e += WG) {
        atomicStore(&counts[e], 0u);
    }
    workgroupBarrier();
    for (var z = lid; z < n_pairs; z += WG) {
        atomicAdd(&counts[ids[z]], 1u);
    }
    workgroupBarrier();
    // Each expert's count becomes its first place (and the cursor of the scatter below).
    if (lid == 0u) {
        var at = 0u;
        for (var e = 0u; e < params.n_expert; e++) {
            let c = atomicLoad(&counts[e]);
            offsets[e] = at;
            atomicStore(&counts[e], at);
            at += c;
        }
        offsets[params.n_expert] = at;
    }
    workgroupBarrier();
    for (var z = lid; z < n_pairs; z += WG) {
        order[atomicAdd(&counts[ids[z]], 1u)] = z;
    }
}
