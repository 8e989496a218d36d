//! `--kv-window / --kv-sinks / --kv-summary` from the command line: the KV line says what the
//! cache keeps and that it is the same for any length, `calibrate --kv-summary` writes learned
//! slots that `run` then uses and names, and bad settings fail with one clear line.

mod common;

use common::{dsrun, model, scratch, SMOLLM2};

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn window_sinks_and_learned_summary_from_the_command_line() {
    let m = model(SMOLLM2);
    let m = m.to_str().unwrap();
    // The same KV bytes at 32K and 128K (SmolLM2: 30 layers, 3 KV heads of 64).
    let kv_line = |c: &str| {
        let o = dsrun(&["info", m, "-c", c, "--kv-window", "256", "--kv-sinks", "4"]);
        assert!(o.status.success(), "{}", text(&o).1);
        let out = text(&o).0;
        out.lines()
            .find(|l| l.starts_with("dsrun KV"))
            .unwrap()
            .to_string()
    };
    let (a, b) = (kv_line("32768"), kv_line("131072"));
    assert!(a.contains("window 256 + 4 sinks"), "{a}");
    // 256 f16 rows of K and V (192 values each) and 4 f32 sink rows, per layer.
    let per_layer = 256 * 192 * 2 * 2 + 4 * 192 * 2 * 4;
    let mib = format!("{:.1} MiB", (30 * per_layer) as f64 / (1 << 20) as f64);
    assert!(
        a.contains(&mib) && b.contains(&mib),
        "{a} / {b}: expected {mib}"
    );

    // Learn 8 slots on a short text, then run with them.
    let calib = scratch("kvw", "calib.txt");
    let t = "It is a truth universally acknowledged, that a single man in possession of a good \
             fortune, must be in want of a wife. "
        .repeat(40);
    std::fs::write(&calib, t).unwrap();
    let out = scratch("kvw", "smol-kvsum8.gguf");
    let (c, o) = (calib.to_str().unwrap(), out.to_str().unwrap());
    let r = dsrun(&[
        "calibrate",
        "-m",
        m,
        "-f",
        c,
        "-c",
        "128",
        "--chunks",
        "2",
        "--kv-summary",
        "8",
        "-o",
        o,
    ]);
    assert!(r.status.success(), "{}", text(&r).1);
    let r = dsrun(&[
        "run",
        "-m",
        o,
        "-n",
        "4",
        "--temp",
        "0",
        "--kv-window",
        "16",
        "The capital of France is",
    ]);
    let (_, err) = text(&r);
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("+ 8 learned summary slots per KV head"),
        "{err}"
    );
    // Each slot: f16 mean K and V, and an f32 count per KV head (f32 means would read 0.9).
    let per_layer = 16 * 192 * 2 * 2 + 4 * 192 * 2 * 4 + 8 * (192 * 2 * 2 + 3 * 4);
    let mib = format!("{:.1} MiB", (30 * per_layer) as f64 / (1 << 20) as f64);
    assert!(err.contains(&mib), "{err}: expected {mib}");
    // --kv-summary 0 turns it off; a count other than the file's is refused.
    let r = dsrun(&[
        "run",
        "-m",
        o,
        "-n",
        "1",
        "--kv-window",
        "16",
        "--kv-summary",
        "0",
        "Hi",
    ]);
    assert!(
        r.status.success() && !text(&r).1.contains("summary"),
        "{}",
        text(&r).1
    );
    let r = dsrun(&[
        "run",
        "-m",
        o,
        "-n",
        "1",
        "--kv-window",
        "16",
        "--kv-summary",
        "4",
        "Hi",
    ]);
    assert!(
        !r.status.success() && text(&r).1.contains("has 8 slots"),
        "{}",
        text(&r).1
    );

    // Bad settings: one line, non-zero exit.
    for (args, want) in [
        (&["--kv-window", "0"][..], "at least 1"),
        (&["--kv-summary", "8"][..], "needs --kv-window"),
        (
            &["--kv-window", "16", "--kv-summary", "8"][..],
            "no learned summary",
        ),
        (
            &["--kv-window", "16", "--kv-sink-pos", "far"][..],
            "cache or absolute",
        ),
        (
            &["--kv-window", "16", "--kv-summary-keys", "near"][..],
            "window or true-pos",
        ),
        (
            &["--kv-window", "16", "--kv-summary-log-weight", "inf"][..],
            "finite",
        ),
    ] {
        let mut a = vec!["run", "-m", m, "-n", "1"];
        a.extend_from_slice(args);
        a.push("Hi");
        let r = dsrun(&a);
        let (_, err) = text(&r);
        assert!(!r.status.success() && err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
