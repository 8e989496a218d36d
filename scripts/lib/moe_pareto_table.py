"""The Pareto table of scripts/moe-pareto.sh from the files of one run (its working directory):
rows.txt (one row per line: name, model, flags), NAME-heldout.log and NAME-wiki.log (dsrun
perplexity --kl-divergence), NAME-bench-R.json (dsrun bench -o json, round R).

    python3 scripts/lib/moe_pareto_table.py target/moe-pareto/<time> ROUNDS

Speed under background load: each round runs every row once in turn, so a row's speed is given
as the median over rounds, and its ratio to the model's own top-4 as the median of the per-round
ratios (each against the top-4 run of the same round)."""
import json
import re
import statistics
import sys

w, rounds = sys.argv[1], int(sys.argv[2])


def grab(path, pat):
    m = re.search(pat, open(path).read())
    return float(m.group(1)) if m else float("nan")


rows = []
for line in open(f"{w}/rows.txt"):
    name = line.split()[0]
    h, wk = f"{w}/{name}-heldout.log", f"{w}/{name}-wiki.log"
    runs = [json.load(open(f"{w}/{name}-bench-{r}.json"))[0] for r in range(1, rounds + 1)]
    rows.append({
        "name": name,
        "exp_h": grab(h, r"Experts per token: ([0-9.]+)"),
        "exp_w": grab(wk, r"Experts per token: ([0-9.]+)"),
        "exp_tg": runs[0]["moe_avg_experts"],
        "ts": [b["avg_ts"] for b in runs],
        "ppl_h": grab(h, r"Mean PPL\(Q\)\s*: ([0-9.]+)"),
        "kld_h": grab(h, r"Mean\s+KLD: ([0-9.]+)"),
        "ppl_w": grab(wk, r"Mean PPL\(Q\)\s*: ([0-9.]+)"),
        "kld_w": grab(wk, r"Mean\s+KLD: ([0-9.]+)"),
    })
fixed = [r for r in rows if r["name"].startswith("k")]
full = next(r for r in rows if r["name"] == "k4")


def interp(x, exp_key, kld_key):
    """The fixed-k KLD at `x` experts per token, linear between the two nearest fixed k."""
    pts = sorted((r[exp_key], r[kld_key]) for r in fixed)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return float("nan")


print("| rule | experts/token held-out (wikitext-2, tg128) | tg128 t/s, median of rounds | vs top-4 | held-out PPL | held-out KLD | fixed-k KLD at same experts | wikitext-2 PPL | wikitext-2 KLD | fixed-k KLD at same experts |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for r in rows:
    ratio = statistics.median(a / b for a, b in zip(r["ts"], full["ts"]))
    ts = f"{statistics.median(r['ts']):.0f} ({min(r['ts']):.0f}–{max(r['ts']):.0f})"
    if r["name"].startswith("k"):
        label, exp, fh, fw = f"fixed top-{r['name'][1:]}", f"{r['exp_h']:.0f}", "", ""
    else:
        label = f"calibrated, budget {r['name'][3:]}"
        exp = f"{r['exp_h']:.2f} ({r['exp_w']:.2f}, {r['exp_tg']:.2f})"
        fh = f"{interp(r['exp_h'], 'exp_h', 'kld_h'):.5f}"
        fw = f"{interp(r['exp_w'], 'exp_w', 'kld_w'):.5f}"
    print(f"| {label} | {exp} | {ts} | {ratio:.2f} | {r['ppl_h']:.2f} | {r['kld_h']:.5f} | {fh} "
          f"| {r['ppl_w']:.2f} | {r['kld_w']:.5f} | {fw} |")
