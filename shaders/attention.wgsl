// Self-attention over the KV cache; reduce.wgsl and the Q·K dot of one key (attention_kq.wgsl,
// or attention_kq_f16.wgsl with shader-f16) are prepended. The cache of a layer holds K and V
// as f16 pairs packed in u32 words, (n_ctx, n_head_kv * head_dim) each, like the CPU's default
// f16 cache.
//
// kv_store: one invocation per pair of values; writes the batch's K and V (n_tok, kv_dim) at
// positions step.pos0 ...
//
// attention: one workgroup per (head, token). The query at position p = step.pos0 + t sees keys
// first ..= p (first = 0, or p + 1 - window on a sliding-window layer). Keys are taken 64 at a
// time, one per invocation, with a running maximum and sum (the softmax rescaled as the maximum
// grows, as flash attention does); each invocation owns output dims lid, lid + 64, ... (head_dim
// at most 256). A sink adds exp(sink - max) to the sum only.

struct Params {
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    window: u32,
    scale: f32,
    has_sinks: u32,
}

struct Step {
    n_tok: u32,
    pos0: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read_write> kc: array<u32>;
@group(0) @binding(2) var<storage, read_write> vc: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;
@group(0) @binding(5) var<uniform> step: Step;
@group(0) @binding(6) var<storage, read> sinks: array<f32>;
@group(0) @binding(7) var<storage, read> k_new: array<f32>;
@group(0) @binding(8) var<storage, read> v_new: array<f32>;

const NEG: f32 = -3.4028235e38;
var<workgroup> probs: array<f32, WG>;

@compute @workgroup_size(64)
fn kv_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_dim = params.n_head_kv * params.head_dim / 2u;
    let i = gid.x;
    if (i >= step.n_tok * half_dim) {
        return;
    }
    let dst = step.pos0 * half_dim + i;
    kc[dst] = pack2x16float(vec2<f32>(k_new[2u * i], k_new[2u * i + 1u]));
    vc[dst] = pack2x16float(vec2<f32>(v_new[2u * i], v_new[2u * i + 1u]));
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let head = wid.x;
    let t = wid.y;
    let hd = params.head_dim;
    let half_dim = params.n_head_kv * hd / 2u;
    let kvh = head / (params.n_head / params.n_head_kv);
    let q_base = (t * params.n_head + head) * hd;
    let kv_off = kvh * hd / 2u;
    let p = step.pos0 + t;
    var first = 0u;
    if (params.window > 0u && p + 1u > params.window) {
        first = p + 1u - params.window;
    }
    var m = NEG;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var j0 = first; j0 <= p; j0 += WG) {
        let j = j0 + lid;
        var s = NEG;
        if (j <= p) {
            let kb = j * half_dim + kv_off;
            s = kq_dot(q_base, kb, hd / 2u) * params.scale;
        }
        let m_new = max(m, wg_max(lid, s));
        var e = 0.0;
        if (j <= p) {
            e = exp(s - m_new);
        }
        probs[lid] = e;
        let alpha = exp(m - m_new);
        l = l * alpha + wg_sum(lid, e);
        let n_here = min(WG, p + 1u - j0);
        for (var r = 0u; r < 4u; r++) {
            let d = lid + r * WG;
            if (d < hd) {
                var a = acc[r] * alpha;
                for (var jj = 0u; jj < n_here; jj++) {
                    let vw = vc[(j0 + jj) * half_dim + kv_off + d / 2u];
                    let v2 = unpack2x16float(vw);
                    var v = v2.x;
                    if ((d & 1u) == 1u) {
                        v = v2.y;
                    }
                    a += probs[jj] * v;
                }
                acc[r] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    if (params.has_sinks != 0u) {
        l += exp(sinks[head] - m);
    }
    for (var r = 0u; r < 4u; r++) {
        let d = lid + r * WG;
        if (d < hd) {
            out[q_base + d] = acc[r] / l;
        }
    }
}
