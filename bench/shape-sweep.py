#!/usr/bin/env python3
"""Random-shape sweep: `dmoe check` on layer shapes nobody chose by hand.

Draws N layer shapes within the documented limits (README "Limits"; with
--cuda-limits those of the CUDA backend: H, F, Fs multiples of 8, K <= 32,
E, S <= 1024), each with a routing variant, dtypes and token counts, and runs

    dmoe check --backend B --seed S <shape options> --tokens .. --dtype ..

once per DMOE_PATH value given (--paths auto,fused,staged), which checks route,
experts and forward against cpu-ref (float64) on fresh random inputs with
poisoned outputs. The cost of each case (T x K x H x F) is bounded so the
float64 oracle stays quick. Prints one line per run and a summary; exit status
1 when any run failed (the failing command line is printed to repeat it).

    python3 bench/shape-sweep.py --dmoe build/bin/dmoe --backend cpu --n 40
    python3 bench/shape-sweep.py --dmoe bin/dmoe --backend cuda --cuda-limits \
        --paths auto,fused,staged --n 60 --seed 7
"""
import argparse
import math
import os
import random
import re
import subprocess
import sys
import time


def log_uniform_int(rng, lo, hi):
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def mult8(v):
    return max(8, (v + 7) // 8 * 8)


def draw_shape(rng, cuda):
    """One layer shape and routing variant as dmoe check options."""
    H = log_uniform_int(rng, 16, 6144)  # below ~16 outputs a token, one rounding decides a bf16 rel L2
    F = log_uniform_int(rng, 8 if cuda else 1, 3072)
    if cuda or rng.random() < 0.5:
        H, F = mult8(H), mult8(F)
    E = log_uniform_int(rng, 1, 1024 if cuda else 2048)
    kmax = min(E, 32) if cuda else min(E, 64)
    K = rng.randint(1, kmax) if rng.random() < 0.3 else min(kmax, rng.choice([1, 2, 4, 6, 8]))
    opts = ["--hidden", H, "--ffn", F, "--experts", E, "--topk", K]
    desc = {"H": H, "F": F, "E": E, "K": K, "S": 0, "Fs": 0}
    if rng.random() < 0.3:
        S = rng.randint(1, 2)
        Fs = log_uniform_int(rng, 8, 4096)
        Fs = mult8(Fs) if cuda or rng.random() < 0.5 else Fs
        opts += ["--shared", S, "--shared-ffn", Fs]
        if rng.random() < 0.5:
            opts.append("--shared-gate")
        desc["S"], desc["Fs"] = S, Fs
    sigmoid = rng.random() < 0.4
    if sigmoid:
        opts += ["--scoring", "sigmoid"]
        if rng.random() < 0.7:
            opts.append("--bias")
    if rng.random() < 0.25:
        opts.append("--no-renorm")
    if rng.random() < 0.3:
        opts += ["--scale-factor", rng.choice([0.5, 1.5, 2.5])]
    # grouped top-k: G divides E, the kept groups hold at least K experts
    if rng.random() < 0.3:
        groups = [g for g in (2, 4, 8, 16) if E % g == 0 and g <= E]
        if groups:
            G = rng.choice(groups)
            per = E // G
            need = (K + per - 1) // per
            if need <= G:
                g = rng.randint(need, G)
                opts += ["--groups", G, "--topk-groups", g]
    return opts, desc


def draw_tokens(rng, desc, budget):
    """Two or three token counts, the largest bounded by the oracle's cost."""
    per_token = max(1, desc["K"] * desc["H"] * desc["F"] + desc["S"] * desc["H"] * desc["Fs"])
    tmax = max(1, min(5000, budget // per_token))
    pool = [1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 64, 100, 129, 257, 600, 1000, 2049, 4100]
    small = [t for t in pool if t <= 16 and t <= tmax]
    large = [t for t in pool if 16 < t <= tmax]
    out = {rng.choice(small)}
    if rng.random() < 0.6:
        out.add(rng.choice(small))
    if large:
        out.add(rng.choice(large))
    return sorted(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dmoe", default="build/bin/dmoe", help="the dmoe binary")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--cuda-limits", action="store_true", help="draw within the CUDA backend's limits")
    ap.add_argument("--paths", default="", help="DMOE_PATH values, comma separated (CUDA)")
    ap.add_argument("--n", type=int, default=30, help="number of shapes")
    ap.add_argument("--seed", type=int, default=None, help="sweep seed (default: clock; printed)")
    ap.add_argument("--budget", type=float, default=3e9,
                    help="largest T x (K x H x F + S x H x Fs) per case (oracle cost)")
    ap.add_argument("--dtypes", default="bf16",
                    help="dtype list handed to dmoe check (f32,bf16,f16); a case the backend skips fails")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per dmoe check run")
    ap.add_argument("--time-limit", type=float, default=0, help="stop drawing new shapes after this many s")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else int(time.time()) % 1000000
    rng = random.Random(seed)
    paths = [p for p in a.paths.split(",") if p] or [None]
    print(f"shape-sweep: seed {seed} (rerun with --seed {seed}), {a.n} shapes, backend {a.backend}, "
          f"paths {','.join(p or 'default' for p in paths)}", flush=True)
    t0 = time.time()
    fails, runs = [], 0
    for i in range(a.n):
        if a.time_limit and time.time() - t0 > a.time_limit:
            print(f"time limit reached after {i} shapes", flush=True)
            break
        opts, desc = draw_shape(rng, a.cuda_limits)
        tokens = draw_tokens(rng, desc, int(a.budget))
        cseed = rng.randrange(1 << 31)
        cmd = [a.dmoe, "check", "--backend", a.backend, "--seed", cseed] + opts
        cmd += ["--tokens", ",".join(map(str, tokens)), "--dtype", a.dtypes]
        cmd = [str(c) for c in cmd]
        for p in paths:
            env = dict(os.environ)
            env.pop("DMOE_PATH", None)  # "default" is the library's own choice
            if p:
                env["DMOE_PATH"] = p
            t1 = time.time()
            try:
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
                rc, out = r.returncode, r.stdout + r.stderr
            except subprocess.TimeoutExpired as e:
                def text(v):
                    return v.decode(errors="replace") if isinstance(v, bytes) else (v or "")
                rc, out = 124, text(e.stdout) + text(e.stderr) + "\n(timed out after %d s)" % a.timeout
            runs += 1
            m = re.search(r"dmoe check: (\d+) passed, (\d+) failed, (\d+) skipped", out)
            npass, nfail, nskip = (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, -1, 0)
            # every case of a shape drawn within the limits must run: a SKIP is a failure too
            ok = rc == 0 and nfail == 0 and nskip == 0 and npass > 0
            tag = "ok  " if ok else "FAIL"
            print(f"{tag} {i:3d} path={p or 'default':6s} {' '.join(cmd[2:])}  "
                  f"[{npass} pass, {nskip} skip, {nfail} fail, rc {rc}, {time.time() - t1:.1f} s]", flush=True)
            if not ok:
                fails.append((p, cmd))
                sys.stdout.write("".join("    | " + l + "\n" for l in out.splitlines()[-25:]))
    print(f"summary: {runs} runs, {len(fails)} failed, {time.time() - t0:.0f} s, seed {seed}")
    for p, cmd in fails:
        print(f"  repeat: {'DMOE_PATH=' + p + ' ' if p else ''}{' '.join(cmd)}")
    if runs == 0:
        print("FAIL: nothing ran (time limit too short?)")
        return 1
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
