// Windowed attention on the GPU (`--kv-window W --kv-sinks S --kv-summary M`), the CPU's
// src/model/kv_window/attend.rs: reduce.wgsl, rope_fn.wgsl and summary_round.wgsl are prepended.
//
// A layer keeps a ring of `cap` rows (W + the batch size: a batch's rows are stored before its
// queries run, and none of them overwrites a row that a query of the batch or the summary still
// needs), K and V as f16 pairs packed in u32 words; the S sinks in f32 (`sinkkv`: K rows, then V
// rows); and the summary (`summ`, per KV head M slots: mean K words, then mean V words, then the
// f32 counts as bits).
//
// stream_store: one invocation per pair of values, the batch's K (after RoPE) and V into the
//   ring at row position % cap, and into the sinks for positions below S.
// absorb: one workgroup per KV head, the batch's tokens in order: before query p, the token at
//   j = p - W leaves the window (when j >= S) and joins the slot of the nearest learned centroid
//   (its key turned back to pre-RoPE; or slot (j - S) % M, or the recency blocks), every count
//   first scaled by `decay` (not dispatched without a summary); then, as the summary stands for that query, each of the KV head's
//   query heads scores the slots (q, at its own position, times the mean key, plus the bias
//   alpha ln(count); an empty slot is skipped) and leaves its share of the softmax in
//   `slot_part`: the maximum, the sum of exp(score - maximum) and the values weighted by them.
// attention_stream: one workgroup per (head, token), starting from its slots' share, over the
//   sinks (with the query RoPE'd at its sink position, qs) and the window max(S, p + 1 - W) ..= p
//   with a running maximum and sum; gpt-oss's head sink adds to the sum only.

struct Stream {
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    window: u32,
    sinks: u32,
    cap: u32,
    n_slot: u32,
    // 0: nearest centroid, 1: round robin, 2: recency blocks
    assign: u32,
    il: u32,
    has_head_sinks: u32,
    scale: f32,
    log_weight: f32,
    decay: f32,
}

struct Step {
    n_tok: u32,
    pos0: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> qs: array<f32>;
@group(0) @binding(2) var<storage, read_write> kc: array<u32>;
@group(0) @binding(3) var<storage, read_write> vc: array<u32>;
@group(0) @binding(4) var<storage, read_write> sinkkv: array<f32>;
@group(0) @binding(5) var<storage, read_write> summ: array<u32>;
@group(0) @binding(6) var<storage, read_write> slot_part: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read> k_new: array<f32>;
@group(0) @binding(9) var<storage, read> v_new: array<f32>;
@group(0) @binding(10) var<storage, read> cent: array<f32>;
@group(0) @binding(11) var<storage, read> head_sinks: array<f32>;
@group(0) @binding(12) var<storage, read> factors: array<f32>;
@group(0) @binding(13) var<uniform> sp: Stream;
@group(0) @binding(14) var<uniform> rope_p: Rope;
@group(0) @binding(15) var<uniform> step: Step;

const NEG: f32 = -3.4028235e38;
const HD_MAX: u32 = 256u;
const SLOTS_MAX: u32 = 256u;
var<workgroup> probs: array<f32, WG>;
var<workgroup> key_abs: array<f32, HD_MAX>;
var<workgroup> key_pre: array<f32, HD_MAX>;
var<workgroup> val: array<f32, HD_MAX>;
var<workgroup> best_d: array<f32, WG>;
var<workgroup> best_s: array<u32, WG>;
var<workgroup> rate: f32;
var<workgroup> slot_p: array<f32, SLOTS_MAX>;

fn half_of(w: u32, d: u32) -> f32 {
    let v = unpack2x16float(w);
    return select(v.x, v.y, (d & 1u) == 1u);
}

@compute @workgroup_size(64)
fn stream_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row_words = sp.n_head_kv * sp.head_dim / 2u;
    let i = gid.x;
    if (i >= step.n_tok * row_words) {
        return;
    }
    let t = i / row_words;
    let w = i % row_words;
    let p = step.pos0 + t;
    let dst = (p % sp.cap) * row_words + w;
    kc[dst] = pack2x16float(vec2<f32>(k_new[2u * i], k_new[2u * i + 1u]));
    vc[dst] = pack2x16float(vec2<f32>(v_new[2u * i], v_new[2u * i + 1u]));
    if (p < sp.sinks) {
        let kvd = 2u * row_words;
        let s = p * kvd + 2u * w;
        sinkkv[s] = k_new[2u * i];
        sinkkv[s + 1u] = k_new[2u * i + 1u];
        sinkkv[sp.sinks * kvd + s] = v_new[2u * i];
        sinkkv[sp.sinks * kvd + s + 1u] = v_new[2u * i + 1u];
    }
}

// The slot of the key in key_pre (position j) for KV head g; every invocation gets it.
fn choose_slot(lid: u32, g: u32, j: u32) -> u32 {
    let m = sp.n_slot;
    if (sp.assign == 1u) {
        return (j - sp.sinks) % m;
    }
    if (sp.assign == 2u) {
        return ((j - sp.sinks) / max(sp.window / m, 1u)) % m;
    }
    let hd = sp.head_dim;
    var bd = 3.4028235e38;
    var bs = 0u;
    for (var s = lid; s < m; s += WG) {
        let base = (g * m + s) * hd;
        var d2 = 0.0;
        for (var d = 0u; d < hd; d++) {
            let e = cent[base + d] - key_pre[d];
            d2 += e * e;
        }
        if (d2 < bd) {
            bd = d2;
            bs = s;
        }
    }
    best_d[lid] = bd;
    best_s[lid] = bs;
    workgroupBarrier();
    for (var r = WG / 2u; r > 0u; r >>= 1u) {
        if (lid < r) {
            let od = best_d[lid + r];
            let os = best_s[lid + r];
            // The nearest; of equals, the first (as the CPU's scan keeps it).
            if (od < best_d[lid] || (od == best_d[lid] && os < best_s[lid])) {
                best_d[lid] = od;
                best_s[lid] = os;
            }
        }
        workgroupBarrier();
    }
    let slot = best_s[0];
    workgroupBarrier();
    return slot;
}

@compute @workgroup_size(64)
fn absorb(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let g = wid.x;
    let hd = sp.head_dim;
    let hw = hd / 2u;
    let m = sp.n_slot;
    let hm = sp.n_head_kv * m;
    let row_words = sp.n_head_kv * hw;
    for (var t = 0u; t < step.n_tok; t++) {
        let p = step.pos0 + t;
        if (p >= sp.window && p - sp.window >= sp.sinks) {
            let j = p - sp.window;
            let row = (j % sp.cap) * row_words + g * hw;
            for (var d = lid; d < hd; d += WG) {
                key_abs[d] = half_of(kc[row + d / 2u], d);
                key_pre[d] = key_abs[d];
                val[d] = half_of(vc[row + d / 2u], d);
            }
            workgroupBarrier();
            // Back to the key before RoPE (YaRN's magnitude divided out).
            let scaled = rope_p.ext_factor != 0.0 || rope_p.attn_factor != 1.0;
            for (var i = lid; i < rope_p.n_rot / 2u; i += WG) {
                var cs = rope_cs(rope_p, j, i, factors[i]);
                if (scaled) {
                    cs = cs / dot(cs, cs);
                }
                let ab = rope_dims(rope_p, i);
                let x0 = key_abs[ab.x];
                let x1 = key_abs[ab.y];
                key_pre[ab.x] = x0 * cs.x + x1 * cs.y;
                key_pre[ab.y] = x1 * cs.x - x0 * cs.y;
            }
            workgroupBarrier();
            let slot = choose_slot(lid, g, j);
            // Forgetting, then the join: the count grows by one and the means move by 1/count.
            if (lid == 0u) {
                for (var s = 0u; s < m; s++) {
                    let ci = 2u * hm * hw + g * m + s;
                    var c = bitcast<f32>(summ[ci]);
                    if (sp.decay != 1.0) {
                        c *= sp.decay;
                        if (c < 1e-30) {
                            c = 0.0;
                        }
                    }
                    if (s == slot) {
                        c += 1.0;
                        rate = 1.0 / c;
                    }
                    summ[ci] = bitcast<u32>(c);
                }
            }
            workgroupBarrier();
            let r = rate;
            let seed = join_seed(sp.il, g, slot, j);
            for (var w = lid; w < 2u * hw; w += WG) {
                // Words of the mean key, then of the mean value; element e as the CPU counts.
                let is_v = w >= hw;
                let wi = w % hw;
                let at = select(0u, hm * hw, is_v) + (g * m + slot) * hw + wi;
                let e0 = select(0u, hd, is_v) + 2u * wi;
                let a = unpack2x16float(summ[at]);
                var x = vec2<f32>(key_abs[2u * wi], key_abs[2u * wi + 1u]);
                if (is_v) {
                    x = vec2<f32>(val[2u * wi], val[2u * wi + 1u]);
                }
                let lo = round_stochastic(a.x + (x.x - a.x) * r, mix64(seed ^ vec2<u32>(e0, 0u)));
                let hi = round_stochastic(a.y + (x.y - a.y) * r, mix64(seed ^ vec2<u32>(e0 + 1u, 0u)));
                summ[at] = lo | (hi << 16u);
            }
            storageBarrier();
            workgroupBarrier();
        }
        // Each query head's share of the softmax over the slots, as they stand for this query.
        let group = sp.n_head / sp.n_head_kv;
        for (var i = 0u; i < group; i++) {
            let head = g * group + i;
            let q_base = (t * sp.n_head + head) * hd;
            var local_max = NEG;
            for (var s = lid; s < m; s += WG) {
                let c = bitcast<f32>(summ[2u * hm * hw + g * m + s]);
                var sc = NEG;
                if (c > 0.0) {
                    let kb = (g * m + s) * hw;
                    var a = 0.0;
                    for (var d = 0u; d < hw; d++) {
                        let k2 = unpack2x16float(summ[kb + d]);
                        a += q[q_base + 2u * d] * k2.x + q[q_base + 2u * d + 1u] * k2.y;
                    }
                    sc = a * sp.scale;
                    if (sp.log_weight != 0.0) {
                        sc += sp.log_weight * log(c);
                    }
                    local_max = max(local_max, sc);
                }
                slot_p[s] = sc;
            }
            let mx = wg_max(lid, local_max);
            var local_sum = 0.0;
            for (var s = lid; s < m; s += WG) {
                var e = 0.0;
                if (slot_p[s] > NEG) {
                    e = exp(slot_p[s] - mx);
                }
                slot_p[s] = e;
                local_sum += e;
            }
            let l = wg_sum(lid, local_sum);
            let out_base = (t * sp.n_head + head) * (hd + 2u);
            for (var d = lid; d < hd; d += WG) {
                var a = 0.0;
                for (var s = 0u; s < m; s++) {
                    let e = slot_p[s];
                    if (e != 0.0) {
                        a += e * half_of(summ[hm * hw + (g * m + s) * hw + d / 2u], d);
                    }
                }
                slot_part[out_base + 2u + d] = a;
            }
            if (lid == 0u) {
                slot_part[out_base] = mx;
                slot_part[out_base + 1u] = l;
            }
            workgroupBarrier();
        }
        storageBarrier();
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn attention_stream(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let lid = lid3.x;
    let head = wid.x;
    let t = wid.y;
    let hd = sp.head_dim;
    let hw = hd / 2u;
    let m = sp.n_slot;
    let kvd = sp.n_head_kv * hd;
    let row_words = kvd / 2u;
    let g = head / (sp.n_head / sp.n_head_kv);
    let q_base = (t * sp.n_head + head) * hd;
    let part = (t * sp.n_head + head) * (hd + 2u);
    let p = step.pos0 + t;
    let n_sink = min(sp.sinks, p + 1u);
    var wlo = sp.sinks;
    if (p + 1u > sp.window) {
        wlo = max(wlo, p + 1u - sp.window);
    }
    var n_win = 0u;
    if (p + 1u > wlo) {
        n_win = p + 1u - wlo;
    }
    let n_keys = n_sink + n_win;
    // The slots' share first (none: a maximum of NEG and a sum of 0).
    var mx = NEG;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    if (m > 0u) {
        mx = slot_part[part];
        l = slot_part[part + 1u];
        for (var r = 0u; r < 4u; r++) {
            let d = lid + r * WG;
            if (d < hd) {
                acc[r] = slot_part[part + 2u + d];
            }
        }
    }
    for (var j0 = 0u; j0 < n_keys; j0 += WG) {
        let idx = j0 + lid;
        var s = NEG;
        var valid = false;
        if (idx < n_sink) {
            let kb = idx * kvd + g * hd;
            var a = 0.0;
            for (var d = 0u; d < hd; d++) {
                a += qs[q_base + d] * sinkkv[kb + d];
            }
            s = a * sp.scale;
            valid = true;
        } else if (idx < n_keys) {
            let pos = wlo + idx - n_sink;
            let kb = (pos % sp.cap) * row_words + g * hw;
            var a = 0.0;
            for (var d = 0u; d < hw; d++) {
                let k2 = unpack2x16float(kc[kb + d]);
                a += q[q_base + 2u * d] * k2.x + q[q_base + 2u * d + 1u] * k2.y;
            }
            s = a * sp.scale;
            valid = true;
        }
        let m_new = max(mx, wg_max(lid, s));
        var e = 0.0;
        if (valid) {
            e = exp(s - m_new);
        }
        probs[lid] = e;
        let alpha = exp(mx - m_new);
        l = l * alpha + wg_sum(lid, e);
        let n_here = min(WG, n_keys - j0);
        for (var r = 0u; r < 4u; r++) {
            let d = lid + r * WG;
            if (d < hd) {
                var a = acc[r] * alpha;
                for (var jj = 0u; jj < n_here; jj++) {
                    let pr = probs[jj];
                    if (pr == 0.0) {
                        continue;
                    }
                    let k = j0 + jj;
                    var v = 0.0;
                    if (k < n_sink) {
                        v = sinkkv[sp.sinks * kvd + k * kvd + g * hd + d];
                    } else {
                        let pos = wlo + k - n_sink;
                        v = half_of(vc[(pos % sp.cap) * row_words + g * hw + d / 2u], d);
                    }
                    a += pr * v;
                }
                acc[r] = a;
            }
        }
        mx = m_new;
        workgroupBarrier();
    }
    if (sp.has_head_sinks != 0u) {
        l += exp(head_sinks[head] - mx);
    }
    for (var r = 0u; r < 4u; r++) {
        let d = lid + r * WG;
        if (d < hd) {
            out[q_base + d] = acc[r] / l;
        }
    }
}
