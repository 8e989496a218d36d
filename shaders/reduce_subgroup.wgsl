// Workgroup reductions with subgroup operations (where the adapter offers them; reduce.wgsl is
// the fallback with the same two functions): each subgroup reduces its values in registers, its
// first active invocation writes the result to workgroup memory (the others write the identity),
// and every invocation reads the 64 slots back. Two barriers instead of seven, and no assumption
// about the subgroup size or which invocations share a subgroup. Call from uniform control flow
// only (so that every subgroup is whole); the trailing barrier lets the next call reuse the
// scratch array.

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

fn wg_sum(lid: u32, v: f32) -> f32 {
    let s = subgroupAdd(v);
    partial[lid] = select(0.0, s, subgroupBroadcastFirst(lid) == lid);
    workgroupBarrier();
    var r = 0.0;
    for (var i = 0u; i < WG; i++) {
        r += partial[i];
    }
    workgroupBarrier();
    return r;
}

fn wg_max(lid: u32, v: f32) -> f32 {
    let s = subgroupMax(v);
    partial[lid] = select(-3.4028235e38, s, subgroupBroadcastFirst(lid) == lid);
    workgroupBarrier();
    var r = -3.4028235e38;
    for (var i = 0u; i < WG; i++) {
        r = max(r, partial[i]);
    }
    workgroupBarrier();
    return r;
}
