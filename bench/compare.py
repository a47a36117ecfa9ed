#!/usr/bin/env python3
"""Run the SEAL peer benchmark and cipherinfer's opbench, print a Markdown comparison.

Default: runs `cargo run --release -p cipherinfer-ckks --example opbench` (stdout = JSON)
from the repository root, then `python3 bench/seal_peer.py` (stdout = JSON), and prints
a Markdown table (op | SEAL | cipherinfer | ratio ours/SEAL) plus machine info, ready to
paste into docs/benchmarks.md.  Either side can be replaced by a saved JSON file
(--seal-json / --ours-json), which is also how a table is re-rendered without re-running.
Only the standard library is used.
"""

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OURS_CMD = "cargo run --release -p cipherinfer-ckks --example opbench"
DASH = "—"

# (key stem, label); timings are read from <stem>_ms / <stem>_ms_min.
TIME_ROWS = [
    ("keygen_rotation_key", "keygen: one rotation key"),
    ("keygen_relin_key", "keygen: relinearization key"),
    ("encode", "encode"),
    ("encrypt", "encrypt (public key)"),
    ("encode_encrypt", "encode + encrypt (public key)"),
    ("encrypt_symmetric", "encrypt (symmetric)"),
    ("encrypt_symmetric_seeded", "encrypt (symmetric, seeded)"),
    ("mul_relin_rescale", "multiply + relinearize + rescale"),
    ("multiply", "multiply (tensor only)"),
    ("relinearize", "relinearize"),
    ("rescale", "rescale"),
    ("rotate", "rotate (1 step)"),
    ("rotate16", "16 rotations (steps 1..16)"),
    ("decrypt", "decrypt"),
    ("decode", "decode"),
    ("decrypt_decode", "decrypt + decode"),
]
# (key stem, label); sizes are read from <stem>_bytes and <stem>_bytes_uncompressed.
SIZE_ROWS = [
    ("ciphertext", "fresh ciphertext (public-key encryption)"),
    ("ciphertext_symmetric", "fresh ciphertext (symmetric, full)"),
    ("ciphertext_seeded", "fresh ciphertext (symmetric, seeded)"),
    ("ciphertext_after_rescale", "ciphertext after mul + rescale"),
    ("public_key", "public key"),
    ("relin_key", "relinearization key"),
    ("relin_key_seeded", "relinearization key (seeded)"),
    ("rotation_key", "one rotation key"),
    ("rotation_key_seeded", "one rotation key (seeded)"),
]


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def parse_json_output(text, what):
    """The whole stdout as JSON, or else the last JSON object that starts a line."""
    text = text.strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return obj
    except ValueError:
        pass
    dec = json.JSONDecoder()
    found = None
    for i, ch in enumerate(text):
        if ch == "{" and (i == 0 or text[i - 1] == "\n"):
            try:
                obj, _ = dec.raw_decode(text, i)
            except ValueError:
                continue
            if isinstance(obj, dict):
                found = obj
    if found is None:
        raise SystemExit(f"error: no JSON object found in the output of {what}")
    return found


def run_json(cmd, what):
    log(f"running {what}: {' '.join(shlex.quote(c) for c in cmd)}")
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True, check=False)
    if proc.returncode != 0:
        log(f"warning: {what} exited with status {proc.returncode}")
    if not proc.stdout.strip():
        raise SystemExit(f"error: {what} printed nothing on stdout (exit status {proc.returncode})")
    return parse_json_output(proc.stdout, what)


def load_json_file(path, what):
    with open(path) as f:
        return parse_json_output(f.read(), what)


def num(d, key):
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def fmt_ms(v):
    if v is None:
        return DASH
    if v >= 100:
        return f"{v:,.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    if v >= 1:
        return f"{v:.2f} ms"
    return f"{v:.3f} ms"


def fmt_bytes(v):
    if v is None:
        return DASH
    v = int(v)
    if v >= 1 << 20:
        return f"{v:,} B ({v / (1 << 20):.2f} MiB)"
    if v >= 1 << 10:
        return f"{v:,} B ({v / (1 << 10):.1f} KiB)"
    return f"{v:,} B"


def fmt_ratio(ours, seal):
    if ours is None or seal is None or seal == 0:
        return DASH
    return f"{ours / seal:.2f}×"


def row(label, seal, ours, fmt):
    return f"| {label} | {fmt(seal)} | {fmt(ours)} | {fmt_ratio(ours, seal)} |"


def machine_info():
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
    except OSError:
        pass
    model = info.get("Model name")
    if not model:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return {
        "model": model or "unknown",
        "cpus": info.get("CPU(s)", str(os.cpu_count())),
        "threads_per_core": info.get("Thread(s) per core"),
        "cores_per_socket": info.get("Core(s) per socket"),
        "sockets": info.get("Socket(s)"),
    }


# Parameter keys already shown, or implied by the ones shown.
PARAM_SKIP = {
    "poly_modulus_degree", "coeff_modulus_bits", "scale_log2", "coeff_modulus", "log_n", "slots",
    "coeff_modulus_total_bits", "scheme", "data_primes", "special_primes",
}


def describe_params(d):
    p = d.get("params")
    if not isinstance(p, dict):
        return None
    parts = []
    if "poly_modulus_degree" in p:
        parts.append(f"N = {p['poly_modulus_degree']}")
    bits = p.get("coeff_modulus_bits")
    if isinstance(bits, list):
        parts.append(f"primes {','.join(str(b) for b in bits)} ({sum(bits)} bits)")
    if "scale_log2" in p:
        parts.append(f"scale 2^{p['scale_log2']}")
    for k, v in p.items():
        if k in PARAM_SKIP or isinstance(v, (list, dict)):
            continue
        parts.append(f"{k} {v}")
    return ", ".join(parts)


def extra_stems(seal, ours, known, suffix):
    """Numeric keys ending in `suffix` that the fixed row lists do not cover."""
    seen = []
    for d in (seal, ours):
        for k in d:
            if k.endswith(suffix) and num(d, k) is not None:
                stem = k[: -len(suffix)]
                if stem not in known and stem not in seen:
                    seen.append(stem)
    return seen


def render(seal, ours, stat, machine):
    suffix = "_ms" if stat == "median" else "_ms_min"
    lines = []
    lines.append(f"Machine: {machine['model']}, {machine['cpus']} logical CPUs"
                 + (f" ({machine['cores_per_socket']} cores/socket × {machine['sockets']} socket(s), "
                    f"{machine['threads_per_core']} thread(s)/core)" if machine.get("cores_per_socket") else "")
                 + f"; measured {datetime.date.today().isoformat()}.")
    lines.append("")
    seal_desc = "Microsoft SEAL"
    if seal.get("seal_version"):
        seal_desc += f" {seal['seal_version']}"
    if seal.get("tenseal_version"):
        seal_desc += f" via tenseal {seal['tenseal_version']} (tenseal.sealapi)"
    lines.append(f"- SEAL: {seal_desc}; {describe_params(seal) or 'parameters not reported'}")
    lines.append(f"- cipherinfer: {describe_params(ours) or 'parameters not reported'}")
    lines.append(f"- times: {stat} of the repetitions, one thread; sizes: serialized bytes")
    for name, d in (("SEAL", seal), ("cipherinfer", ours)):
        if d.get("correctness_ok") is False:
            lines.append(f"- WARNING: {name} reported a failed correctness check")
    lines.append("")
    lines.append("| op | SEAL | cipherinfer | ratio (ours/SEAL) |")
    lines.append("| --- | ---: | ---: | ---: |")
    known_t = [s for s, _ in TIME_ROWS]
    for stem, label in TIME_ROWS + [(s, s) for s in extra_stems(seal, ours, known_t, "_ms")]:
        sv, ov = num(seal, stem + suffix), num(ours, stem + suffix)
        if sv is None and ov is None:
            continue
        lines.append(row(label, sv, ov, fmt_ms))
    known_s = [s for s, _ in SIZE_ROWS]
    extra = extra_stems(seal, ours, known_s, "_bytes")
    extra += [s for s in extra_stems(seal, ours, known_s, "_bytes_uncompressed") if s not in extra]
    for stem, label in SIZE_ROWS + [(s, s) for s in extra]:
        for key, lab in ((stem + "_bytes", label), (stem + "_bytes_uncompressed", label + ", uncompressed")):
            sv, ov = num(seal, key), num(ours, key)
            if sv is None and ov is None:
                continue
            lines.append(row(lab, sv, ov, fmt_bytes))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seal-json", help="use this saved output of seal_peer.py instead of running it")
    ap.add_argument("--ours-json", help="use this saved cipherinfer JSON instead of running cargo")
    ap.add_argument("--ours-cmd", default=OURS_CMD, help=f"command printing cipherinfer's JSON (default: {OURS_CMD})")
    ap.add_argument("--seal-args", default="", help="extra arguments for seal_peer.py, e.g. '--reps-factor 0.5'")
    ap.add_argument("--save-seal", help="write the SEAL JSON to this file")
    ap.add_argument("--save-ours", help="write the cipherinfer JSON to this file")
    ap.add_argument("--stat", choices=["median", "min"], default="median", help="which timing to tabulate")
    args = ap.parse_args()

    # cipherinfer first: a compile error shows up before the SEAL run, and compilation
    # does not overlap with SEAL's timings.
    if args.ours_json:
        ours = load_json_file(args.ours_json, args.ours_json)
    else:
        ours = run_json(shlex.split(args.ours_cmd), "cipherinfer opbench")
    if args.seal_json:
        seal = load_json_file(args.seal_json, args.seal_json)
    else:
        seal = run_json(
            [sys.executable, os.path.join(HERE, "seal_peer.py")] + shlex.split(args.seal_args), "seal_peer.py"
        )
    for path, d in ((args.save_seal, seal), (args.save_ours, ours)):
        if path:
            with open(path, "w") as f:
                json.dump(d, f, indent=2)
                f.write("\n")

    print(render(seal, ours, args.stat, machine_info()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
