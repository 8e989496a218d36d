//! llama.cpp itself, in-process: its tokenizer and its forward pass, so that parity tests can
//! compare dsrun's token ids and logits with the reference engine's on the same file without
//! building or spawning the llama.cpp tools.

use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::path::Path;
use std::sync::Once;

static INIT: Once = Once::new();

unsafe extern "C" fn quiet_log(
    _level: sys::ggml_log_level,
    _text: *const std::os::raw::c_char,
    _user: *mut std::os::raw::c_void,
) {
}

fn init() {
    INIT.call_once(|| {
        // SAFETY: called once, before any other llama.cpp call; the callback ignores its
        // arguments and is a plain function that lives for the whole program.
        unsafe {
            sys::llama_log_set(Some(quiet_log), std::ptr::null_mut());
            sys::llama_backend_init();
        }
    });
}

/// A model loaded by llama.cpp (weights, or the vocabulary only).
pub struct LlamaModel {
    model: *mut sys::llama_model,
    vocab: *const sys::llama_vocab,
}

// SAFETY: llama.cpp's model is immutable after loading; its tokenizer functions take a const
// vocab and may be called from several threads.
unsafe impl Send for LlamaModel {}
unsafe impl Sync for LlamaModel {}

impl LlamaModel {
    fn open(path: &Path, vocab_only: bool) -> Result<LlamaModel, String> {
        init();
        let c = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: default params are plain data; `c` outlives the call.
        let model = unsafe {
            let mut p = sys::llama_model_default_params();
            p.vocab_only = vocab_only;
            p.n_gpu_layers = 0;
            sys::llama_model_load_from_file(c.as_ptr(), p)
        };
        if model.is_null() {
            return Err(format!("llama.cpp could not load {}", path.display()));
        }
        // SAFETY: `model` is a valid, non-null model.
        let vocab = unsafe { sys::llama_model_get_vocab(model) };
        Ok(LlamaModel { model, vocab })
    }

    /// Loads weights and vocabulary (weights stay memory-mapped).
    pub fn load(path: impl AsRef<Path>) -> Result<LlamaModel, String> {
        Self::open(path.as_ref(), false)
    }

    /// Loads only the vocabulary: enough to tokenize.
    pub fn load_vocab(path: impl AsRef<Path>) -> Result<LlamaModel, String> {
        Self::open(path.as_ref(), true)
    }

    pub fn n_vocab(&self) -> usize {
        // SAFETY: valid vocab pointer for the life of self.
        unsafe { sys::llama_vocab_n_tokens(self.vocab) as usize }
    }

    /// `llama_tokenize(text, add_special, parse_special)`.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<i32> {
        let bytes = text.as_bytes();
        let mut cap = bytes.len() + 16;
        loop {
            let mut out = vec![0i32; cap];
            // SAFETY: text pointer/length describe `bytes`; `out` has room for `cap` tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab,
                    bytes.as_ptr() as *const _,
                    bytes.len() as i32,
                    out.as_mut_ptr(),
                    cap as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return out;
            }
            cap = (-n) as usize;
        }
    }

    /// `llama_token_to_piece(id, lstrip 0, special)`: the bytes of one token.
    pub fn token_to_piece(&self, id: i32, special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: `buf` has room for `buf.len()` bytes.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab,
                    id,
                    buf.as_mut_ptr() as *mut _,
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }
}

impl Drop for LlamaModel {
    fn drop(&mut self) {
        // SAFETY: `model` came from llama_model_load_from_file and is freed once; contexts
        // borrow the model, so none outlives it.
        unsafe { sys::llama_model_free(self.model) }
    }
}

/// The vocabulary-only model, for tokenizer tests.
pub struct Vocab(LlamaModel);

impl Vocab {
    pub fn load(path: impl AsRef<Path>) -> Result<Vocab, String> {
        LlamaModel::load_vocab(path).map(Vocab)
    }
}

impl std::ops::Deref for Vocab {
    type Target = LlamaModel;
    fn deref(&self) -> &LlamaModel {
        &self.0
    }
}

/// RoPE scaling for a context, as llama_context_params holds it: 0 / -1 / `None` take the
/// model's value.
#[derive(Debug, Clone, Copy)]
pub struct RopeOptions {
    /// 0 none, 1 linear, 2 yarn (`enum llama_rope_scaling_type`).
    pub scaling_type: Option<i32>,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub yarn_orig_ctx: u32,
    pub yarn_ext_factor: f32,
}

impl Default for RopeOptions {
    fn default() -> Self {
        RopeOptions {
            scaling_type: None,
            freq_base: 0.0,
            freq_scale: 0.0,
            yarn_orig_ctx: 0,
            yarn_ext_factor: -1.0,
        }
    }
}

/// An inference context: a KV cache of `n_ctx` tokens on one sequence.
pub struct LlamaContext<'m> {
    ctx: *mut sys::llama_context,
    n_vocab: usize,
    n_past: i32,
    _model: &'m LlamaModel,
}

impl<'m> LlamaContext<'m> {
    /// `n_batch` is the most tokens one `eval` may take. llama.cpp's defaults otherwise (flash
    /// attention where the backend has it, as on the CPU).
    pub fn new(
        model: &'m LlamaModel,
        n_ctx: u32,
        n_batch: u32,
        n_threads: i32,
    ) -> Result<Self, String> {
        Self::with_flash_attn(model, n_ctx, n_batch, n_threads, true)
    }

    /// [`LlamaContext::new`], with flash attention off when `flash_attn` is false: llama.cpp's
    /// other attention path, which keeps Q and the V sum in f32 where flash attention rounds
    /// them to f16 — two results of llama.cpp itself that differ by rounding only.
    pub fn with_flash_attn(
        model: &'m LlamaModel,
        n_ctx: u32,
        n_batch: u32,
        n_threads: i32,
        flash_attn: bool,
    ) -> Result<Self, String> {
        Self::with_kv_types(model, n_ctx, n_batch, n_threads, flash_attn, (1, 1))
    }

    /// [`LlamaContext::with_flash_attn`] with the K and V cache types `(type_k, type_v)` as
    /// ggml type ids (1 = f16, 8 = q8_0, 2 = q4_0; a quantized V needs flash attention).
    pub fn with_kv_types(
        model: &'m LlamaModel,
        n_ctx: u32,
        n_batch: u32,
        n_threads: i32,
        flash_attn: bool,
        kv_types: (u32, u32),
    ) -> Result<Self, String> {
        let rope = RopeOptions::default();
        Self::with_rope(
            model, n_ctx, n_batch, n_threads, flash_attn, kv_types, &rope,
        )
    }

    /// [`LlamaContext::with_kv_types`] with llama.cpp's RoPE scaling parameters (its
    /// `--rope-*`/`--yarn-*` flags; the defaults take the model's values).
    pub fn with_rope(
        model: &'m LlamaModel,
        n_ctx: u32,
        n_batch: u32,
        n_threads: i32,
        flash_attn: bool,
        (type_k, type_v): (u32, u32),
        rope: &RopeOptions,
    ) -> Result<Self, String> {
        // SAFETY: default params are plain data; the model is valid and outlives the context.
        let ctx = unsafe {
            let mut p = sys::llama_context_default_params();
            p.n_ctx = n_ctx;
            p.n_batch = n_batch;
            p.n_ubatch = n_batch;
            p.n_seq_max = 1;
            p.n_threads = n_threads;
            p.n_threads_batch = n_threads;
            p.no_perf = true;
            p.type_k = type_k as sys::ggml_type;
            p.type_v = type_v as sys::ggml_type;
            if !flash_attn {
                p.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
            }
            if let Some(t) = rope.scaling_type {
                p.rope_scaling_type = t as sys::llama_rope_scaling_type;
            }
            p.rope_freq_base = rope.freq_base;
            p.rope_freq_scale = rope.freq_scale;
            p.yarn_orig_ctx = rope.yarn_orig_ctx;
            p.yarn_ext_factor = rope.yarn_ext_factor;
            sys::llama_init_from_model(model.model, p)
        };
        if ctx.is_null() {
            return Err("llama.cpp could not create a context".into());
        }
        Ok(LlamaContext {
            ctx,
            n_vocab: model.n_vocab(),
            n_past: 0,
            _model: model,
        })
    }

    /// Forgets the cache.
    pub fn clear(&mut self) {
        // SAFETY: valid context.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ctx), true) };
        self.n_past = 0;
    }

    /// Decodes `tokens` after those already in the cache; returns logits (rows, n_vocab) for
    /// every token if `all`, else for the last.
    pub fn eval(&mut self, tokens: &[i32], all: bool) -> Result<Vec<f32>, String> {
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the batch is allocated for `n` tokens with one sequence id each, filled
        // completely before llama_decode, and freed after the logits are copied out.
        unsafe {
            let mut b = sys::llama_batch_init(n as i32, 0, 1);
            for (i, &t) in tokens.iter().enumerate() {
                *b.token.add(i) = t;
                *b.pos.add(i) = self.n_past + i as i32;
                *b.n_seq_id.add(i) = 1;
                *(*b.seq_id.add(i)) = 0;
                *b.logits.add(i) = (all || i == n - 1) as i8;
            }
            b.n_tokens = n as i32;
            let rc = sys::llama_decode(self.ctx, b);
            if rc != 0 {
                sys::llama_batch_free(b);
                return Err(format!("llama_decode failed with {rc}"));
            }
            let mut out = Vec::with_capacity(if all { n } else { 1 } * self.n_vocab);
            let rows: Vec<usize> = if all { (0..n).collect() } else { vec![n - 1] };
            for i in rows {
                let p = sys::llama_get_logits_ith(self.ctx, i as i32);
                if p.is_null() {
                    sys::llama_batch_free(b);
                    return Err(format!("no logits for batch row {i}"));
                }
                out.extend_from_slice(std::slice::from_raw_parts(p, self.n_vocab));
            }
            sys::llama_batch_free(b);
            self.n_past += n as i32;
            Ok(out)
        }
    }
}

impl Drop for LlamaContext<'_> {
    fn drop(&mut self) {
        // SAFETY: freed once; created by llama_init_from_model.
        unsafe { sys::llama_free(self.ctx) }
    }
}
