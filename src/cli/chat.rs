//! `dsrun chat`: an interactive conversation in the terminal with the model's own chat template.
//! Replies stream as they are generated; the history is kept (and the KV cache reused for the
//! part of the conversation that did not change); Ctrl-C stops a reply, Ctrl-D leaves.

use super::common::{ModelArgs, SampleArgs};
use super::CliError;
use clap::Args;
use dsrun::chat_template::{ChatTemplate, Message};
use dsrun::engine::{GenStats, Model, Session};
use dsrun::gguf::GgufFile;
use dsrun::sampling::Sampler;
use dsrun::tokenizer::StreamDecoder;
use dsrun::Error;
use rustyline::error::ReadlineError;
use std::io::Write;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// System prompt
    #[arg(long)]
    pub system: Option<String>,
    /// Chat template: a Jinja template string, or "chatml" (default: the model's own)
    #[arg(long = "chat-template")]
    pub chat_template: Option<String>,
    /// Most tokens per reply (-1: until the model ends its turn or the context is full)
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    pub n_predict: i64,
}

const HELP: &str = "commands: /reset (forget the conversation), /stats (speed and context use), /help, /quit; Ctrl-C stops a reply, Ctrl-D quits";

struct Chat<'m, 'a> {
    session: Session<'m, 'a>,
    template: ChatTemplate,
    messages: Vec<Message>,
    system: Option<String>,
    sampler: Sampler,
    n_predict: Option<usize>,
    stop: Arc<AtomicBool>,
    last: Option<GenStats>,
}

impl Chat<'_, '_> {
    fn reset(&mut self) {
        self.messages.clear();
        if let Some(s) = &self.system {
            self.messages.push(Message::new("system", s));
        }
        self.session.clear();
    }

    /// The conversation so far plus the opened assistant turn, as token ids.
    fn prompt_ids(&self) -> Result<Vec<u32>, CliError> {
        let text = self.template.render(&self.messages, true)?;
        let tok = &self.session.model.tokenizer;
        let bos_in_text = tok
            .bos()
            .map(|b| String::from_utf8_lossy(&tok.token_to_piece(b, true)).into_owned())
            .is_some_and(|b| !b.is_empty() && text.starts_with(&b));
        Ok(tok.encode(&text, tok.add_bos() && !bos_in_text, true)?)
    }

    /// Drops the oldest turns (never the system prompt) until the prompt leaves room for a
    /// reply; returns the ids and how many messages were dropped.
    fn fit(&mut self) -> Result<(Vec<u32>, usize), CliError> {
        let n_ctx = self.session.n_ctx();
        let reserve = self.n_predict.unwrap_or(n_ctx / 4).min(n_ctx / 2);
        let mut dropped = 0;
        loop {
            let ids = self.prompt_ids()?;
            if ids.len() + reserve <= n_ctx {
                return Ok((ids, dropped));
            }
            let first = usize::from(self.system.is_some());
            if self.messages.len() <= first + 1 {
                self.messages.pop();
                return Err(Error::Invalid(format!(
                    "this message is {} tokens, too long for the context of {n_ctx} (raise -c)",
                    ids.len()
                ))
                .into());
            }
            self.messages.remove(first);
            dropped += 1;
        }
    }

    fn reply(&mut self, out: &mut impl Write) -> Result<(), CliError> {
        let (ids, dropped) = self.fit()?;
        if dropped > 0 {
            eprintln!(
                "[the conversation outgrew the context: dropped the {dropped} oldest messages]"
            );
        }
        // Reuse the cached prefix of the conversation.
        let common = self
            .session
            .tokens
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        self.session.truncate(common);
        let common = self.session.tokens.len();
        self.stop.store(false, Ordering::SeqCst);
        let mut dec = StreamDecoder::new(false);
        let tok = &self.session.model.tokenizer;
        let mut text = String::new();
        let mut io_err = None;
        let stop = self.stop.clone();
        let stats =
            self.session
                .generate(&ids[common..], self.n_predict, &mut self.sampler, |t| {
                    let piece = dec.push(tok, t);
                    text.push_str(&piece);
                    if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                        io_err = Some(e);
                        return ControlFlow::Break(());
                    }
                    if stop.load(Ordering::SeqCst) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })?;
        let tail = dec.finish();
        text.push_str(&tail);
        write!(out, "{tail}")?;
        if let Some(e) = io_err {
            return Err(e.into());
        }
        if self.stop.load(Ordering::SeqCst) {
            write!(out, " [stopped]")?;
        }
        writeln!(out)?;
        out.flush()?;
        self.messages.push(Message::new("assistant", &text));
        self.last = Some(stats);
        Ok(())
    }

    fn stats(&self) -> String {
        let used = self.session.tokens.len();
        let experts = match self.session.moe.stats.summary() {
            Some(s) => format!("; {s}"),
            None => String::new(),
        };
        let line = match &self.last {
            Some(s) => format!(
                "last reply: prompt {} tokens at {:.1} t/s, {} tokens generated at {:.1} t/s; context {used} / {} tokens, {} messages",
                s.n_prompt,
                s.prompt_tps(),
                s.n_gen,
                s.gen_tps(),
                self.session.n_ctx(),
                self.messages.len()
            ),
            None => format!("no reply yet; context {used} / {} tokens", self.session.n_ctx()),
        };
        line + &experts
    }
}

pub fn run(args: ChatArgs) -> Result<(), CliError> {
    args.model.init_threads();
    let file = GgufFile::open(&args.model.model)?;
    let mut model = Model::load(&file)?;
    args.model.rope.apply(&mut model, false)?;
    args.model.device.apply(&mut model, false)?;
    let tok = &model.tokenizer;
    let template = ChatTemplate::for_model(&file, args.chat_template.as_deref(), |id| {
        String::from_utf8_lossy(&tok.token_to_piece(id, true)).into_owned()
    })?;
    let n_ctx = args.model.n_ctx(4096, model.hp.n_ctx_train);
    let stop = Arc::new(AtomicBool::new(false));
    let mut chat = Chat {
        session: {
            let mut s = Session::new(&model, n_ctx, args.model.batch_size)?;
            args.model.moe.apply(&mut s, false)?;
            args.model.kv.apply(&mut s, false)?;
            s
        },
        template,
        messages: Vec::new(),
        system: args.system.clone(),
        sampler: Sampler::new(args.sample.config()),
        n_predict: usize::try_from(args.n_predict).ok(),
        stop,
        last: None,
    };
    chat.reset();
    let mut rl = rustyline::DefaultEditor::new()
        .map_err(|e| Error::Invalid(format!("cannot start the line editor: {e}")))?;
    // After the editor: it installs a SIGINT handler of its own when created. While it reads a
    // line the terminal is raw and Ctrl-C reaches it as a key; while a reply streams, the signal
    // comes here and stops the reply.
    {
        let stop = chat.stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| Error::Invalid(format!("cannot handle Ctrl-C: {e}")))?;
    }
    eprintln!(
        "dsrun chat: {} ({} layers), context {n_ctx} tokens. {HELP}",
        file.path().display(),
        model.hp.n_layer
    );
    let mut out = std::io::stdout();
    loop {
        let line = match rl.readline("> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                eprintln!("(Ctrl-D or /quit to leave)");
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Error::Invalid(format!("reading input: {e}")).into()),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = rl.add_history_entry(line);
        match line {
            "/quit" | "/exit" => break,
            "/help" => eprintln!("{HELP}"),
            "/reset" => {
                chat.reset();
                eprintln!("[conversation cleared]");
            }
            "/stats" => eprintln!("{}", chat.stats()),
            _ if line.starts_with('/') => eprintln!("unknown command {line}; {HELP}"),
            _ => {
                chat.messages.push(Message::new("user", line));
                match chat.reply(&mut out) {
                    Ok(()) => {}
                    Err(CliError::Stdout(e)) => return Err(CliError::Stdout(e)),
                    Err(e) => eprintln!("dsrun: error: {e}"),
                }
            }
        }
    }
    Ok(())
}
