// Workgroup reductions shared by the row-wise shaders (prepended to them): every invocation of
// a 64-wide workgroup passes its value and gets the reduction of all 64. Call from uniform
// control flow only; the trailing barrier lets the next call reuse the scratch array.

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

fn wg_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

fn wg_max(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] = max(partial[lid], partial[lid + s]);
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}
