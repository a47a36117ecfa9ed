#!/usr/bin/env python3
"""Microsoft SEAL reference timings and sizes for the cipherinfer side-by-side benchmark.

Uses the raw SEAL bindings shipped in the Python package tenseal (0.3.18,
``import tenseal.sealapi``).  Only tenseal and the standard library are needed.

Everything runs on ONE thread.  Results: a JSON object on stdout, human-readable
progress on stderr.  See bench/README.md for the meaning of every key.
"""

import os

# Single thread, set before tenseal (and numpy, which it imports) is loaded.
for _var in (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

try:
    import tenseal
    import tenseal.sealapi as s
except ImportError:  # pragma: no cover - depends on the machine
    sys.stderr.write("error: tenseal is not installed; run `pip install tenseal==0.3.18`\n")
    sys.exit(2)

DEFAULT_BITS = "60,40,40,40,40,40,40,40,40,58"
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header_size, major, minor, compr_mode, reserved, size
SEAL_MAGIC = 0xA15E
COMPR_NAMES = {0: "none", 1: "zlib", 2: "zstd"}
U64 = 8
PARMS_ID_BYTES = 4 * U64
# A seeded ciphertext stores a UniformRandomGeneratorInfo: its own SEALHeader,
# the PRNG type (1 byte) and the seed (prng_seed_type = std::array<uint64_t, 8>).
PRNG_INFO_BYTES = 16 + 1 + 8 * U64


def log(msg=""):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- timing


def bench(name, fn, reps, warmup=3, setup=None):
    """Time fn(arg) `reps` times, arg = setup() built outside the timed region."""
    for _ in range(warmup):
        fn(setup() if setup else None)
    times = []
    for _ in range(reps):
        arg = setup() if setup else None
        t0 = time.perf_counter_ns()
        fn(arg)
        t1 = time.perf_counter_ns()
        times.append((t1 - t0) / 1e6)
    med = statistics.median(times)
    mn = min(times)
    log(f"  {name:<32} median {med:10.3f} ms   min {mn:10.3f} ms   ({reps} reps)")
    return {"median": med, "min": mn, "reps": reps}


# --------------------------------------------------------------------------- sizes


def read_header(path):
    with open(path, "rb") as f:
        raw = f.read(SEAL_HEADER.size)
    magic, hsize, major, minor, mode, _reserved, size = SEAL_HEADER.unpack(raw)
    if magic != SEAL_MAGIC or hsize != SEAL_HEADER.size:
        raise ValueError(f"{path}: not a SEAL serialization header")
    return {"major": major, "minor": minor, "compr_mode": mode, "size": size}


def uncompressed_size_measured(path):
    """Exact size SEAL would write with compr_mode_type::none, by decompressing the body.

    SEAL writes a 16-byte header followed by the (possibly compressed) members.
    zlib is in the standard library; zstd is decompressed with the `zstd` command
    when present.  Returns None when it cannot be measured.
    """
    hdr = read_header(path)
    with open(path, "rb") as f:
        f.seek(SEAL_HEADER.size)
        body = f.read()
    mode = hdr["compr_mode"]
    if mode == 0:
        return SEAL_HEADER.size + len(body)
    if mode == 1:
        return SEAL_HEADER.size + len(zlib.decompress(body))
    if mode == 2 and shutil.which("zstd"):
        out = subprocess.run(["zstd", "-d", "-c", "-q"], input=body, capture_output=True, check=False)
        if out.returncode == 0:
            return SEAL_HEADER.size + len(out.stdout)
    return None


def ct_size_formula(n, primes, polys, seeded=False):
    """Ciphertext::save_size(compr_mode_type::none) as written in SEAL 4.x.

    header(16) + parms_id(32) + is_ntt_form(1) + size, N, coeff_modulus_size (3*8)
    + scale(8) + correction_factor(8) + DynArray[header(16) + count(8) + data].
    A seeded (symmetric) ciphertext stores only c0 plus the PRNG info (81 bytes).
    """
    coeffs = polys * n * primes
    if seeded:
        coeffs //= 2
    data = SEAL_HEADER.size + U64 + U64 * coeffs + (PRNG_INFO_BYTES if seeded else 0)
    return SEAL_HEADER.size + PARMS_ID_BYTES + 1 + 3 * U64 + 8 + U64 + data


def kswitch_size_formula(n, key_primes, dnum, dim1, seeded=False):
    """KSwitchKeys::save_size(none): header + parms_id + dim1 + dim1 * count(8) + keys."""
    per_key = ct_size_formula(n, key_primes, 2, seeded=seeded)
    return SEAL_HEADER.size + PARMS_ID_BYTES + U64 + dim1 * U64 + dnum * per_key


def size_entry(path, formula):
    hdr = read_header(path)
    on_disk = os.path.getsize(path)
    measured = uncompressed_size_measured(path)
    if measured is not None and measured != formula:
        log(f"  warning: {os.path.basename(path)}: decompressed size {measured} != layout formula {formula}")
    return {
        "bytes": on_disk,
        "compr_mode": COMPR_NAMES.get(hdr["compr_mode"], str(hdr["compr_mode"])),
        "bytes_uncompressed": measured if measured is not None else formula,
        "uncompressed_source": "decompressed" if measured is not None else "layout formula",
        "formula_matches": (measured == formula) if measured is not None else None,
        "header_version": f'{hdr["major"]}.{hdr["minor"]}',
    }


# --------------------------------------------------------------------------- errors


def max_abs_err(got, want):
    return max(abs(g - w) for g, w in zip(got, want))


def bits(err):
    return math.log2(err) if err > 0 else float("-inf")


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log-n", type=int, default=14, help="log2 of the ring degree N (default 14)")
    ap.add_argument(
        "--coeff-bits",
        default=DEFAULT_BITS,
        help=f"comma-separated prime bit sizes, last = special prime (default {DEFAULT_BITS})",
    )
    ap.add_argument("--scale-bits", type=int, default=40, help="log2 of the CKKS scale (default 40)")
    ap.add_argument(
        "--sec-level", choices=["tc128", "tc192", "tc256", "none"], default="tc128", help="SEAL security check"
    )
    ap.add_argument("--step", type=int, default=1, help="rotation step for the single-rotation benchmarks")
    ap.add_argument("--reps-factor", type=float, default=1.0, help="multiply every repetition count by this")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random test vectors")
    ap.add_argument("--pin", type=int, default=None, help="pin the process to this CPU (default: no pinning)")
    ap.add_argument("--skip-sizes", action="store_true", help="do not measure serialized sizes")
    args = ap.parse_args()

    def reps(n):
        return max(3, int(round(n * args.reps_factor)))

    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})

    started = time.perf_counter()
    load_before = os.getloadavg()
    n = 1 << args.log_n
    slots = n // 2
    bit_sizes = [int(b) for b in args.coeff_bits.split(",") if b.strip()]
    scale = 2.0 ** args.scale_bits
    sec = {
        "tc128": s.SEC_LEVEL_TYPE.TC128,
        "tc192": s.SEC_LEVEL_TYPE.TC192,
        "tc256": s.SEC_LEVEL_TYPE.TC256,
        "none": s.SEC_LEVEL_TYPE.NONE,
    }[args.sec_level]

    parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(s.CoeffModulus.Create(n, bit_sizes))
    ctx = s.SEALContext(parms, True, sec)
    if not ctx.parameters_set():
        log(f"error: SEAL rejected the parameters: {ctx.parameters_error_message()}")
        return 2
    key_primes = len(bit_sizes)
    data_primes = key_primes - 1  # the last prime is the special (key-switching) prime
    primes = [m.value() for m in ctx.key_context_data().parms().coeff_modulus()]

    log(f"SEAL via tenseal {tenseal.__version__}: CKKS N=2^{args.log_n}, primes {bit_sizes} "
        f"(sum {sum(bit_sizes)} bits), scale 2^{args.scale_bits}, one thread")

    keygen = s.KeyGenerator(ctx)
    sk = keygen.secret_key()
    pk = s.PublicKey()
    keygen.create_public_key(pk)
    rk = s.RelinKeys()
    keygen.create_relin_keys(rk)
    galois_tool = ctx.key_context_data().galois_tool()

    # NB: KeyGenerator.create_galois_keys(list, keys) resolves, in tenseal.sealapi,
    # to the overload taking *Galois elements* (vector<uint32_t>), not steps:
    # passing [1] silently builds the useless identity key.  So we convert steps
    # to Galois elements explicitly (3^step mod 2N).
    def elt(step):
        return galois_tool.get_elt_from_step(step)

    step = args.step
    gk1 = s.GaloisKeys()
    keygen.create_galois_keys([elt(step)], gk1)
    assert gk1.has_key(elt(step)) and gk1.size() == 1, "rotation key for the step is missing"
    steps16 = list(range(1, 17))
    gk16 = s.GaloisKeys()
    keygen.create_galois_keys([elt(k) for k in steps16], gk16)
    assert gk16.size() == 16 and all(gk16.has_key(elt(k)) for k in steps16)

    encoder = s.CKKSEncoder(ctx)
    assert encoder.slot_count() == slots
    encryptor = s.Encryptor(ctx, pk, sk)  # public key for encrypt, secret key for encrypt_symmetric
    decryptor = s.Decryptor(ctx, sk)
    evaluator = s.Evaluator(ctx)

    rng = random.Random(args.seed)
    x = [rng.uniform(-1.0, 1.0) for _ in range(slots)]
    y = [rng.uniform(-1.0, 1.0) for _ in range(slots)]

    pt_x = s.Plaintext()
    encoder.encode(x, scale, pt_x)
    pt_y = s.Plaintext()
    encoder.encode(y, scale, pt_y)
    ct_x = s.Ciphertext(ctx)
    encryptor.encrypt(pt_x, ct_x)
    ct_y = s.Ciphertext(ctx)
    encryptor.encrypt(pt_y, ct_y)
    assert ct_x.coeff_modulus_size() == data_primes, "fresh ciphertext is not at the top level"

    res = {}
    log("timings:")

    # --- key generation of ONE rotation key (GaloisKeys with a single element)
    res["keygen_rotation_key"] = bench(
        "keygen rotation key (1 step)",
        lambda g: keygen.create_galois_keys([elt(step)], g),
        reps(20),
        warmup=2,
        setup=s.GaloisKeys,
    )
    res["keygen_relin_key"] = bench(
        "keygen relin key", lambda r: keygen.create_relin_keys(r), reps(20), warmup=2, setup=s.RelinKeys
    )

    # --- encode / encrypt
    pt_tmp = s.Plaintext()
    ct_tmp = s.Ciphertext(ctx)
    res["encode"] = bench("encode", lambda _: encoder.encode(x, scale, pt_tmp), reps(50))
    res["encrypt"] = bench("encrypt (public key)", lambda _: encryptor.encrypt(pt_x, ct_tmp), reps(50))

    def encode_encrypt(_):
        encoder.encode(x, scale, pt_tmp)
        encryptor.encrypt(pt_tmp, ct_tmp)

    res["encode_encrypt"] = bench("encode+encrypt (public key)", encode_encrypt, reps(50))
    res["encrypt_symmetric"] = bench(
        "encrypt symmetric (full ct)", lambda _: encryptor.encrypt_symmetric(pt_x, ct_tmp), reps(50)
    )
    res["encrypt_symmetric_seeded"] = bench(
        "encrypt symmetric (seeded ct)", lambda _: encryptor.encrypt_symmetric(pt_x), reps(50)
    )

    # --- multiply + relinearize + rescale
    ct_prod = s.Ciphertext(ctx)

    def mul_relin_rescale(_):
        evaluator.multiply(ct_x, ct_y, ct_prod)
        evaluator.relinearize_inplace(ct_prod, rk)
        evaluator.rescale_to_next_inplace(ct_prod)

    res["mul_relin_rescale"] = bench("multiply+relin+rescale", mul_relin_rescale, reps(40))
    res["multiply"] = bench("  multiply", lambda _: evaluator.multiply(ct_x, ct_y, ct_prod), reps(50))

    def fresh_product():
        c = s.Ciphertext(ctx)
        evaluator.multiply(ct_x, ct_y, c)
        return c

    res["relinearize"] = bench(
        "  relinearize", lambda c: evaluator.relinearize_inplace(c, rk), reps(40), setup=fresh_product
    )

    def fresh_relinearized():
        c = fresh_product()
        evaluator.relinearize_inplace(c, rk)
        return c

    res["rescale"] = bench(
        "  rescale", lambda c: evaluator.rescale_to_next_inplace(c), reps(40), setup=fresh_relinearized
    )

    # --- rotations
    ct_rot = s.Ciphertext(ctx)
    res["rotate"] = bench(
        f"rotate (step {step})", lambda _: evaluator.rotate_vector(ct_x, step, gk1, ct_rot), reps(40)
    )
    rot_outs = [s.Ciphertext(ctx) for _ in steps16]

    def rotate16(_):
        for k, out in zip(steps16, rot_outs):
            evaluator.rotate_vector(ct_x, k, gk16, out)

    res["rotate16"] = bench("16 rotations (steps 1..16)", rotate16, reps(12), warmup=2)

    # --- decrypt / decode
    pt_dec = s.Plaintext()
    res["decrypt"] = bench("decrypt", lambda _: decryptor.decrypt(ct_x, pt_dec), reps(50))
    decryptor.decrypt(ct_x, pt_dec)
    res["decode"] = bench("decode", lambda _: encoder.decode_double(pt_dec), reps(50))

    def decrypt_decode(_):
        decryptor.decrypt(ct_x, pt_dec)
        encoder.decode_double(pt_dec)

    res["decrypt_decode"] = bench("decrypt+decode", decrypt_decode, reps(50))

    # --- correctness of what was measured
    def dec(ct):
        p = s.Plaintext()
        decryptor.decrypt(ct, p)
        return encoder.decode_double(p)

    mul_relin_rescale(None)
    err_fresh = max_abs_err(dec(ct_x), x)
    err_mul = max_abs_err(dec(ct_prod), [a * b for a, b in zip(x, y)])
    evaluator.rotate_vector(ct_x, step, gk1, ct_rot)
    got_rot = dec(ct_rot)
    err_rot = max_abs_err(got_rot, [x[(i + step) % slots] for i in range(slots)])
    moved = max_abs_err(got_rot, x)  # large if the rotation really moved the slots
    rotate16(None)
    err_rot16 = max(
        max_abs_err(dec(out), [x[(i + k) % slots] for i in range(slots)]) for k, out in zip(steps16, rot_outs)
    )
    checks = {
        "fresh_max_abs_err_log2": bits(err_fresh),
        "mul_relin_rescale_max_abs_err_log2": bits(err_mul),
        "rotate_max_abs_err_log2": bits(err_rot),
        "rotate16_max_abs_err_log2": bits(err_rot16),
        "rotate_vs_unrotated_max_diff": moved,
        "mul_result_scale_log2": math.log2(ct_prod.scale),
        "mul_result_primes": ct_prod.coeff_modulus_size(),
    }
    ok = max(err_mul, err_rot, err_rot16, err_fresh) < 2.0 ** -10 and moved > 0.1
    log("correctness:")
    log(f"  fresh encrypt/decrypt  max |err| = 2^{bits(err_fresh):.1f}")
    log(f"  mul+relin+rescale      max |err| = 2^{bits(err_mul):.1f}  "
        f"(scale 2^{math.log2(ct_prod.scale):.2f}, {ct_prod.coeff_modulus_size()} primes left)")
    log(f"  rotate step {step}          max |err| = 2^{bits(err_rot):.1f}  (differs from input by {moved:.3f})")
    log(f"  16 rotations           max |err| = 2^{bits(err_rot16):.1f}")
    log(f"  => {'OK' if ok else 'FAILED'}")

    # --- serialized sizes
    sizes = {}
    seal_version = None
    if not args.skip_sizes:
        log("serialized sizes (SEAL default compression / compr_mode none):")
        with tempfile.TemporaryDirectory(prefix="seal_peer_") as tmp:

            def save(name, obj):
                path = os.path.join(tmp, name + ".bin")
                obj.save(path)
                return path

            ct_pk = s.Ciphertext(ctx)
            encryptor.encrypt(pt_x, ct_pk)
            sizes["ciphertext"] = size_entry(save("ct_pk", ct_pk), ct_size_formula(n, data_primes, 2))
            ct_sym = s.Ciphertext(ctx)
            encryptor.encrypt_symmetric(pt_x, ct_sym)
            sizes["ciphertext_symmetric"] = size_entry(save("ct_sym", ct_sym), ct_size_formula(n, data_primes, 2))
            sizes["ciphertext_seeded"] = size_entry(
                save("ct_seeded", encryptor.encrypt_symmetric(pt_x)),
                ct_size_formula(n, data_primes, 2, seeded=True),
            )
            sizes["ciphertext_after_rescale"] = size_entry(
                save("ct_prod", ct_prod), ct_size_formula(n, ct_prod.coeff_modulus_size(), 2)
            )
            sizes["relin_key"] = size_entry(
                save("rk", rk), kswitch_size_formula(n, key_primes, data_primes, dim1=1)
            )
            sizes["relin_key_seeded"] = size_entry(
                save("rk_seeded", keygen.create_relin_keys()),
                kswitch_size_formula(n, key_primes, data_primes, dim1=1, seeded=True),
            )
            # GaloisKeys keep one slot per possible Galois element (N slots), so even a
            # single-step object stores N empty-slot counters (8*N bytes before compression).
            sizes["rotation_key"] = size_entry(
                save("gk1", gk1), kswitch_size_formula(n, key_primes, data_primes, dim1=n)
            )
            sizes["rotation_key_seeded"] = size_entry(
                save("gk1_seeded", keygen.create_galois_keys([elt(step)])),
                kswitch_size_formula(n, key_primes, data_primes, dim1=n, seeded=True),
            )
            pk_path = save("pk", pk)
            sizes["public_key"] = size_entry(pk_path, ct_size_formula(n, key_primes, 2))
            seal_version = sizes["ciphertext"]["header_version"]
        for k, v in sizes.items():
            log(f"  {k:<26} {v['bytes']:>12,d} B ({v['compr_mode']})   {v['bytes_uncompressed']:>12,d} B (none, "
                f"{v['uncompressed_source']})")

    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()

    out = {
        "implementation": "Microsoft SEAL via tenseal.sealapi",
        "tenseal_version": tenseal.__version__,
        "seal_version": seal_version,
        "seal_version_source": "SEALHeader version_major.version_minor of a saved object" if seal_version else None,
        "params": {
            "scheme": "CKKS",
            "poly_modulus_degree": n,
            "log_n": args.log_n,
            "slots": slots,
            "coeff_modulus_bits": bit_sizes,
            "coeff_modulus_total_bits": sum(bit_sizes),
            "coeff_modulus": primes,
            "special_primes": 1,
            "data_primes": data_primes,
            "dnum": data_primes,
            "scale_log2": args.scale_bits,
            "sec_level": args.sec_level,
            "rotation_step": step,
            "threads": 1,
        },
    }
    for op, st in res.items():
        out[f"{op}_ms"] = st["median"]
        out[f"{op}_ms_min"] = st["min"]
        out[f"{op}_reps"] = st["reps"]
    for obj, e in sizes.items():
        out[f"{obj}_bytes"] = e["bytes"]
        out[f"{obj}_bytes_uncompressed"] = e["bytes_uncompressed"]
    if sizes:
        out["size_method"] = {
            "compressed": "obj.save(path) (tenseal.sealapi exposes only save(path)/load(ctx, path); SEAL's "
            "default compr_mode, read back from the 16-byte SEALHeader) then the file size",
            "compr_mode_default": sizes["ciphertext"]["compr_mode"],
            "uncompressed": "the file body decompressed (zstd command / zlib), cross-checked against SEAL's "
            "save_size(compr_mode_type::none) layout formula; compr_mode none is not exposed by tenseal",
            "formula_matches": all(e["formula_matches"] in (True, None) for e in sizes.values()),
            "seeded": "symmetric ciphertext / keys as returned by SEAL's Serializable<> API (c1 replaced by "
            "the 81-byte PRNG info: header, type, 64-byte seed)",
        }
    out["correctness"] = checks
    out["correctness_ok"] = ok
    out["machine"] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        "pinned_cpu": args.pin,
    }
    out["total_runtime_s"] = elapsed
    out["notes"] = [
        "times are medians (key *_ms) and minima (*_ms_min) of perf_counter_ns around one binding call; "
        "pybind11 call overhead is ~1 us",
        "encode/decode include the Python list <-> std::vector<double> conversion of all slots",
        "rotation keys are built from Galois elements (galois_tool.get_elt_from_step) because "
        "create_galois_keys(list) binds to the Galois-element overload",
    ]
    log(f"total runtime {elapsed:.1f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if ok else 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


if __name__ == "__main__":
    sys.exit(main())
