// Workgroup reductions with subgroup operations (where the adapter offers them; reduce.wgsl is
// the fallback with the same two functions): each subgroup reduces its values in registers, its
// first active invocation writes the result to workgroup memory (the others write the identity),
// invocation 0 adds the 64 slots and every invocation reads its result. Three barriers instead
// of seven, and no assumption about the subgroup size or which invocations share a subgroup.
// (Until session 8 every invocation added the 64 slots itself, two barriers: on lavapipe that
// loop cost more than a short row's products.) Call from uniform control flow
// only (so that every subgroup is whole); the trailing barrier lets the next call reuse the
// scratch array.

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;
var<workgroup> wg_result: f32;

fn wg_sum(lid: u32, v: f32) -> f32 {
    let s = subgroupAdd(v);
    partial[lid] = select(0.0, s, subgroupBroadcastFirst(lid) == lid);
    workgroupBarrier();
    if (lid == 0u) {
        var r = 0.0;
        for (var i = 0u; i < WG; i++) {
            r += partial[i];
        }
        wg_result = r;
    }
    workgroupBarrier();
    let r = wg_result;
    workgroupBarrier();
    return r;
}

fn wg_max(lid: u32, v: f32) -> f32 {
    let s = subgroupMax(v);
    partial[lid] = select(-3.4028235e38, s, subgroupBroadcastFirst(lid) == lid);
    workgroupBarrier();
    if (lid == 0u) {
        var r = -3.4028235e38;
        for (var i = 0u; i < WG; i++) {
            r = max(r, partial[i]);
        }
        wg_result = r;
    }
    workgroupBarrier();
    let r = wg_result;
    workgroupBarrier();
    return r;
}
