//! `dsrun bench`: llama-bench's tests and JSON fields.

mod common;

use std::process::Command;

#[test]
fn bench_json_has_llama_bench_fields() {
    let out = bench(&["-p", "16", "-n", "4", "-r", "2", "-t", "1,2", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let tests = v.as_array().unwrap();
    assert_eq!(tests.len(), 4);
    for t in tests {
        assert!(t["avg_ts"].as_f64().unwrap() > 0.0, "{t}");
        assert_eq!(t["samples_ts"].as_array().unwrap().len(), 2);
        assert_eq!(t["model_n_params"], 24_080_000);
    }
    assert_eq!(tests[0]["n_prompt"], 16);
    assert_eq!(tests[1]["n_gen"], 4);
    assert_eq!(tests[2]["n_threads"], 2);

    let out = bench(&["-p", "8", "-n", "0", "-r", "1"]);
    let md = String::from_utf8_lossy(&out);
    assert!(md.contains("| pp8 |"), "{md}");
}

/// `dsrun bench -m <tiny model> ARGS`, which must succeed; its stdout.
fn bench(args: &[&str]) -> Vec<u8> {
    let m = common::model(common::TINY_Q8);
    let out = Command::new(env!("CARGO_BIN_EXE_dsrun"))
        .args(["bench", "-m", m.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `-d`: each test after that many tokens, as llama-bench names it ("pp8 @ d24"); a windowed
/// cache, which cannot rewind, evaluates the depth again before each run.
#[test]
fn bench_depth_names_tests_and_runs_with_a_window() {
    let common = [
        "-p", "8", "-n", "2", "-r", "2", "-t", "1", "-d", "0,24", "-o", "json",
    ];
    for extra in [&[][..], &["--kv-window", "6", "--kv-sinks", "2"]] {
        let out = bench(&[&common[..], extra].concat());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let tests = v.as_array().unwrap();
        let got: Vec<_> = tests
            .iter()
            .map(|t| {
                (
                    t["n_prompt"].clone(),
                    t["n_gen"].clone(),
                    t["n_depth"].clone(),
                )
            })
            .collect();
        let want = [(8, 0, 0), (0, 2, 0), (8, 0, 24), (0, 2, 24)]
            .map(|(p, n, d)| (p.into(), n.into(), d.into()));
        assert_eq!(got, want, "{extra:?}");
        assert!(tests.iter().all(|t| t["avg_ts"].as_f64().unwrap() > 0.0));
    }
    let out = bench(&["-p", "8", "-n", "2", "-r", "1", "-d", "24"]);
    let md = String::from_utf8_lossy(&out);
    assert!(
        md.contains("| pp8 @ d24 |") && md.contains("| tg2 @ d24 |"),
        "{md}"
    );
}
