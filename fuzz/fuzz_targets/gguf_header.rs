//! Any byte string must parse or give an error, never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = dsrun::gguf::GgufHeader::parse(data) {
        let _ = h.check_supported();
        for t in &h.tensors {
            assert!(h.data_offset + t.offset + t.n_bytes <= data.len() as u64);
        }
    }
});
