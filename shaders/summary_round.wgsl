// The KV summary's stochastic rounding to f16, the same bits as the CPU's (src/model/kv_window/
// summary.rs): SplitMix64's finaliser on 64-bit values held as vec2<u32> (x the low word), the
// seed of a join from (layer, KV head, slot, position), and a value rounded to one of its two f16
// neighbours, up with the probability of its place between them (the top 24 bits of the hash as
// the draw).

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// a >> n for 0 < n < 32.
fn shr64(a: vec2<u32>, n: u32) -> vec2<u32> {
    return vec2<u32>((a.x >> n) | (a.y << (32u - n)), a.y >> n);
}

// The full 64-bit product of two 32-bit words.
fn mul32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

// The low 64 bits of a * b.
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let p = mul32(a.x, b.x);
    return vec2<u32>(p.x, p.y + a.x * b.y + a.y * b.x);
}

fn mix64(z0: vec2<u32>) -> vec2<u32> {
    var z = add64(z0, vec2<u32>(0x7f4a7c15u, 0x9e3779b9u));
    z = mul64(z ^ shr64(z, 30u), vec2<u32>(0x1ce4e5b9u, 0xbf58476du));
    z = mul64(z ^ shr64(z, 27u), vec2<u32>(0x133111ebu, 0x94d049bbu));
    return z ^ shr64(z, 31u);
}

// mix(mix(mix(pos) ^ il) ^ (g << 32 | slot)) << 16
fn join_seed(il: u32, g: u32, slot: u32, pos: u32) -> vec2<u32> {
    let a = mix64(vec2<u32>(pos, 0u)) ^ vec2<u32>(il, 0u);
    let b = mix64(mix64(a) ^ vec2<u32>(slot, g));
    return vec2<u32>(b.x << 16u, (b.y << 16u) | (b.x >> 16u));
}

fn f16_of(b: u32) -> f32 {
    return unpack2x16float(b).x;
}

// The next f16 (bits) up or down from a finite one.
fn f16_next(b: u32, up: bool) -> u32 {
    if ((b & 0x7fffu) == 0u) {
        return select(0x8001u, 0x0001u, up);
    }
    if (((b & 0x8000u) == 0u) == up) {
        return b + 1u;
    }
    return b - 1u;
}

// y as f16 bits, rounded up or down by the draw of hash h.
fn round_stochastic(y: f32, h: vec2<u32>) -> u32 {
    let near = pack2x16float(vec2<f32>(y, 0.0)) & 0xffffu;
    let nf = f16_of(near);
    if (nf == y || abs(nf) > 65504.0) {
        return near;
    }
    let other = f16_next(near, nf < y);
    var lo = other;
    var hi = near;
    if (nf < y) {
        lo = near;
        hi = other;
    }
    let l = f16_of(lo);
    let frac = (y - l) / (f16_of(hi) - l);
    let draw = f32(h.y >> 8u) / 16777216.0;
    return select(lo, hi, draw < frac);
}
