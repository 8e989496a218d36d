//! Chat templates: the model's own Jinja template from `tokenizer.chat_template`, rendered with
//! minijinja (Python string methods through minijinja-contrib's pycompat), or a built-in ChatML
//! template when the model has none or the user names it with `--chat-template chatml`.

use crate::error::{Error, Result};
use crate::gguf::GgufHeader;
use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// ChatML, the fallback (Qwen's and SmolLM's format without their default system prompts).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    env: Environment<'static>,
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// `source` is Jinja text. `bos_token`/`eos_token` are what templates see under those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Templates use it for a "today" line; a fixed date keeps renders reproducible.
            "01 Jan 2026".to_string()
        });
        // As Hugging Face renders templates (and llama.cpp's renderer follows it).
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| Error::Invalid(e.to_string()))?,
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Invalid(format!("the chat template does not parse: {e}")))?;
        Ok(ChatTemplate {
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            env,
        })
    }

    /// The template a model file asks for, or `override_` (a Jinja string, or the name
    /// `chatml`), or ChatML when the file has none. Special tokens come from `piece`.
    pub fn for_model(
        h: &GgufHeader,
        override_: Option<&str>,
        piece: impl Fn(u32) -> String,
    ) -> Result<ChatTemplate> {
        let tok = |key: &str| -> Result<String> {
            Ok(h.get_u64(key)?
                .map(|id| piece(id as u32))
                .unwrap_or_default())
        };
        let (bos, eos) = (
            tok("tokenizer.ggml.bos_token_id")?,
            tok("tokenizer.ggml.eos_token_id")?,
        );
        let source = match override_ {
            Some("chatml") => CHATML.to_string(),
            Some(s) => s.to_string(),
            None => h
                .get_str("tokenizer.chat_template")?
                .unwrap_or(CHATML)
                .to_string(),
        };
        ChatTemplate::new(&source, &bos, &eos)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The conversation as the model expects to read it, ending with the assistant's turn
    /// opened when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Invalid(e.to_string()))?;
        t.render(context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| Error::Invalid(format!("rendering the chat template failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let s = t
            .render(
                &[
                    Message::new("system", "Be brief."),
                    Message::new("user", "Hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_exceptions() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}{{ messages[0]['content'].strip().upper() }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "HI"
        );
        let e = t.render(&[Message::new("system", "x")], false).unwrap_err();
        assert!(e.to_string().contains("user first"), "{e}");
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
    }
}
