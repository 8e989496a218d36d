//! `dsrun run` and `dsrun chat` as a user runs them: in a shell pipe, as JSON, with bad input,
//! and interactively through a pseudo-terminal.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dsrun")
}

fn tiny() -> String {
    common::model(common::TINY_Q8).to_str().unwrap().to_string()
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pipe_into_head_ends_quietly() {
    let m = common::model(common::SMOLLM2);
    let script = format!(
        "set -o pipefail; echo 'Write a haiku' | {} run -m {} -n 64 | head -c 20",
        bin(),
        m.display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
    assert!(!err.contains("error") && !err.contains("panicked"), "{err}");
    assert!(!out.stdout.is_empty());
}

#[test]
fn greedy_run_and_json() {
    let (code, out, err) = run_with_stdin(
        &["run", "-m", &tiny(), "-n", "12", "--temp", "0", "--json"],
        b"It is a truth universally acknowledged, that",
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The greedy text llama.cpp and Hugging Face give (the model's README).
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .starts_with("\nhe is, that he had been so much"),
        "{v}"
    );
    assert_eq!(v["n_gen"], 12);
    assert!(v["gen_tps"].as_f64().unwrap() > 0.0);

    // Plain text: only the generated text on stdout, statistics on stderr, -q silences them.
    let (code, out, err) = run_with_stdin(
        &["run", "-m", &tiny(), "-n", "12", "--temp", "0"],
        b"It is a truth universally acknowledged, that",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("\nhe is, that he had been so much"),
        "{out:?}"
    );
    assert!(err.contains("t/s"), "{err}");
    let (_, _, err) = run_with_stdin(&["run", "-m", &tiny(), "-n", "4", "-q"], b"Hello");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn bad_input_gives_one_clear_line() {
    let t = tiny();
    let long = "word ".repeat(200);
    let cases: Vec<(Vec<&str>, &[u8], &str)> = vec![
        (
            vec!["run", "-m", &t, "-c", "64"],
            long.as_bytes(),
            "does not fit in the context",
        ),
        (vec!["run", "-m", &t], b"   \n", "empty"),
        (
            vec!["run", "-m", "/nonexistent/model.gguf", "hi"],
            b"",
            "No such file",
        ),
        (vec!["run", "-m", &t], b"caf\xe9 au lait", "not valid UTF-8"),
        (
            vec!["perplexity", "-m", &t, "-f", "/nonexistent.txt"],
            b"",
            "No such file",
        ),
    ];
    for (args, stdin, want) in cases {
        let (code, out, err) = run_with_stdin(&args, stdin);
        assert_ne!(code, 0, "{args:?} succeeded: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn chat_in_a_terminal() {
    let cmd = format!(
        "{} chat -m {} --temp 0 -c 16384 -n 4000 --system 'You are a test.'",
        bin(),
        tiny()
    );
    let mut p = rexpect::spawn(&cmd, Some(60_000)).unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("My name is Ada. Remember it.").unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("/stats").unwrap();
    p.exp_string("3 messages").unwrap();
    p.exp_string("> ").unwrap();
    // The second turn is rendered after the first: the context holds both.
    p.send_line("What is my name?").unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("/stats").unwrap();
    p.exp_string("5 messages").unwrap();
    p.exp_string("> ").unwrap();
    // Ctrl-C stops the reply in progress and keeps the session. The reply may run to 4000
    // tokens, seconds even for the tiny model (400 tokens took under the 300 ms below on an
    // idle machine, so the reply had ended before the Ctrl-C came).
    p.send_line("Tell me a very long story about the sea.")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    p.send_control('c').unwrap();
    p.exp_string("[stopped]").unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("/stats").unwrap();
    p.exp_string("7 messages").unwrap();
    p.exp_string("> ").unwrap();
    // Ctrl-D leaves with exit code 0.
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    match p.process.wait().unwrap() {
        rexpect::process::wait::WaitStatus::Exited(_, 0) => {}
        other => panic!("chat ended with {other:?}"),
    }
}

#[test]
fn chat_drops_the_oldest_turns_when_the_context_is_full() {
    let cmd = format!("{} chat -m {} --temp 0 -c 256 -n 64", bin(), tiny());
    let mut p = rexpect::spawn(&cmd, Some(60_000)).unwrap();
    for i in 0..4 {
        p.exp_string("> ").unwrap();
        p.send_line(&format!("Here is message number {i}, tell me about it."))
            .unwrap();
    }
    p.exp_string("dropped the").unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("/quit").unwrap();
    p.exp_eof().unwrap();
}
