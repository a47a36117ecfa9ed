//! Wire format: round trips of every object, sizes, and typed rejection of malformed,
//! truncated, oversized, foreign and tampered input. Decoders must never panic.

mod common;
use common::*;

use std::sync::{Arc, OnceLock};

use cipherinfer_ckks::serialization::{
    FLAG_SEEDED, FromBytes, HEADER_LEN, ObjectType, ToBytes, ciphertext_bytes,
    evaluation_keys_bytes, peek_header,
};
use cipherinfer_ckks::{
    Ciphertext, DecodeErrorCode, Decryptor, Encoder, Encryptor, Error, EvaluationKeys, Evaluator,
    GaloisKey, KeyGenerator, Parameters, ParametersLiteral, Plaintext, Preset, PublicKey,
    RelinearizationKey, SecretKey, SymmetricEncryptor, secret_key_pair,
};
use proptest::prelude::*;

const LIMIT: usize = 1 << 30;

/// The decode error code of a result, if it is a decode error.
fn code<T>(r: cipherinfer_ckks::Result<T>) -> Option<DecodeErrorCode> {
    match r {
        Err(Error::Decode { code, .. }) => Some(code),
        _ => None,
    }
}

/// Asserts that decoding fails with exactly `want`.
fn rejects<T>(r: cipherinfer_ckks::Result<T>, want: DecodeErrorCode, what: &str) {
    assert!(r.is_err(), "{what}: accepted, expected {want}");
    assert_eq!(code(r), Some(want), "{what}");
}

/// Decodes `bytes` as every object type with a generous limit; used to check "never panics".
fn decode_all(params: &Arc<Parameters>, bytes: &[u8]) {
    let _ = peek_header(bytes);
    let _ = Ciphertext::from_bytes(params, bytes, LIMIT);
    let _ = Plaintext::from_bytes(params, bytes, LIMIT);
    let _ = PublicKey::from_bytes(params, bytes, LIMIT);
    let _ = RelinearizationKey::from_bytes(params, bytes, LIMIT);
    let _ = GaloisKey::from_bytes(params, bytes, LIMIT);
    let _ = EvaluationKeys::from_bytes(params, bytes, LIMIT);
    let _ = SecretKey::import_bytes(params, bytes, LIMIT);
}

/// INSECURE tiny ring (N = 32) so property tests run fast.
fn tiny() -> Arc<Parameters> {
    let lit: ParametersLiteral =
        serde_json::from_str(r#"{"log_n":5,"log_q":[30,25],"log_p":[30],"log_scale":20,"dnum":2}"#)
            .expect("literal");
    lit.build_insecure_for_tests().expect("tiny parameters")
}

/// Writes `width` bits of `value` at bit offset `bit` (LSB-first), as the packer does.
fn set_bits(bytes: &mut [u8], bit: usize, width: u32, value: u64) {
    for k in 0..width as usize {
        let pos = bit + k;
        let mask = 1u8 << (pos % 8);
        if (value >> k) & 1 == 1 {
            bytes[pos / 8] |= mask;
        } else {
            bytes[pos / 8] &= !mask;
        }
    }
}

fn bits_of(p: u64) -> u32 {
    64 - p.leading_zeros()
}

struct Setup {
    params: Arc<Parameters>,
    encoder: Encoder,
    sym: SymmetricEncryptor,
    dec: Decryptor,
    pk: PublicKey,
    relin: RelinearizationKey,
    rot1: GaloisKey,
    keys: EvaluationKeys,
}

fn setup(params: Arc<Parameters>, steps: &[i64]) -> Setup {
    let mut kg = KeyGenerator::new(params.clone()).expect("keygen");
    let sk = kg.secret_key();
    let pk = kg.public_key(&sk).expect("pk");
    let relin = kg.relinearization_key(&sk).expect("relin");
    let rot1 = kg.galois_key(&sk, params.galois_element(1)).expect("rot1");
    let keys = kg.evaluation_keys(&sk, true, steps, true).expect("keys");
    let (sym, dec) = secret_key_pair(sk).expect("secret key");
    Setup {
        encoder: Encoder::new(params.clone()),
        sym,
        dec,
        pk,
        relin,
        rot1,
        keys,
        params,
    }
}

impl Setup {
    fn encrypt_seeded(&mut self, v: &[f64], level: usize) -> Ciphertext {
        let pt = self
            .encoder
            .encode(v, level, self.params.default_scale())
            .expect("encode");
        self.sym.encrypt(&pt).expect("encrypt")
    }
    fn encrypt_full(&self, v: &[f64], level: usize) -> Ciphertext {
        let pt = self
            .encoder
            .encode(v, level, self.params.default_scale())
            .expect("encode");
        Encryptor::new(self.pk.clone())
            .expect("enc")
            .encrypt(&pt)
            .expect("encrypt")
    }
    fn decrypt(&self, ct: &Ciphertext) -> Vec<f64> {
        self.encoder
            .decode(&self.dec.decrypt(ct).expect("decrypt"))
            .expect("decode")
    }
}

/// Encodes, checks the announced size, decodes, and checks the encoding is canonical.
fn round_trip<T: ToBytes + FromBytes>(params: &Arc<Parameters>, x: &T) -> (T, Vec<u8>) {
    let bytes = x.to_bytes();
    assert_eq!(bytes.len(), x.serialized_size(), "serialized_size");
    let y = T::from_bytes(params, &bytes, bytes.len()).expect("decodes");
    assert_eq!(y.to_bytes(), bytes, "re-encoding differs");
    (y, bytes)
}

#[test]
fn every_object_round_trips() {
    let params = small_insecure();
    let mut s = setup(params.clone(), &[1, -3]);
    let slots = params.slots();
    let v = random_vec(slots, 1, 1.0);
    let w = random_vec(slots, 2, 1.0);

    // Ciphertexts: seeded (fresh symmetric), full (public key), degree 2, lower level, and a
    // seeded one dropped to a lower level (still seeded: expansion is per prime).
    let seeded = s.encrypt_seeded(&v, params.max_level());
    assert!(seeded.is_seeded());
    let full = s.encrypt_full(&w, params.max_level());
    let (seeded2, sb) = round_trip(&params, &seeded);
    assert!(seeded2.is_seeded());
    assert_eq!(peek_header(&sb).expect("header").flags, FLAG_SEEDED);
    assert_eq!(
        s.decrypt(&seeded2),
        s.decrypt(&seeded),
        "decoded ciphertext decrypts alike"
    );
    assert!(precision_bits(&s.decrypt(&seeded2), &v) > 25.0);
    let (full2, fb) = round_trip(&params, &full);
    assert!(!full2.is_seeded());
    assert_eq!(peek_header(&fb).expect("header").flags, 0);
    assert_eq!(s.decrypt(&full2), s.decrypt(&full));

    let ev = Evaluator::new(s.keys.clone());
    let deg2 = ev.mul_no_relin(&seeded, &full).expect("mul");
    assert_eq!(deg2.degree(), 2);
    let (deg2b, _) = round_trip(&params, &deg2);
    assert_eq!(deg2b.degree(), 2);
    assert_eq!(s.decrypt(&deg2b), s.decrypt(&deg2));
    let low = ev.mul_rescale(&seeded, &full).expect("mul");
    let (low2, _) = round_trip(&params, &low);
    assert_eq!(low2.level(), params.max_level() - 1);
    assert_eq!(low2.scale(), low.scale());
    let vw: Vec<f64> = v.iter().zip(&w).map(|(a, b)| a * b).collect();
    assert!(precision_bits(&s.decrypt(&low2), &vw) > 20.0);
    let dropped = ev.drop_to_level(&seeded, 1).expect("drop");
    let (dropped2, _) = round_trip(&params, &dropped);
    assert_eq!(dropped2.is_seeded(), dropped.is_seeded());
    assert_eq!(s.decrypt(&dropped2), s.decrypt(&dropped));

    // Plaintext.
    let pt = s
        .encoder
        .encode(&v, 2, params.default_scale())
        .expect("encode");
    let (pt2, _) = round_trip(&params, &pt);
    assert_eq!(
        s.encoder.decode(&pt2).expect("decode"),
        s.encoder.decode(&pt).expect("decode")
    );

    // Public key: a decoded key encrypts to the same secret.
    let (pk2, _) = round_trip(&params, &s.pk);
    let pt = s
        .encoder
        .encode(&v, params.max_level(), params.default_scale())
        .expect("encode");
    let ct = Encryptor::new(pk2)
        .expect("enc")
        .encrypt(&pt)
        .expect("encrypt");
    assert!(precision_bits(&s.decrypt(&ct), &v) > 25.0);

    // Relinearization and Galois keys alone, then a whole decoded key set doing a rotation and
    // a multiplication.
    let (relin2, _) = round_trip(&params, &s.relin);
    let (rot2, _) = round_trip(&params, &s.rot1);
    assert_eq!(rot2.galois_element(), params.galois_element(1));
    let mut single = EvaluationKeys::new(params.clone());
    single.set_relinearization_key(relin2).expect("relin");
    single.insert_galois_key(rot2).expect("rot");
    let (keys2, kb) = round_trip(&params, &s.keys);
    assert_eq!(keys2.galois_elements(), s.keys.galois_elements());
    assert_eq!(
        peek_header(&kb).expect("header").object_type,
        ObjectType::EvaluationKeys
    );
    for keys in [keys2, single] {
        let ev2 = Evaluator::new(keys);
        let rot = ev2.rotate(&seeded2, 1).expect("rotate");
        let want: Vec<f64> = (0..slots).map(|i| v[(i + 1) % slots]).collect();
        assert!(precision_bits(&s.decrypt(&rot), &want) > 20.0);
        let prod = ev2.mul_rescale(&seeded2, &full2).expect("mul");
        assert!(precision_bits(&s.decrypt(&prod), &vw) > 20.0);
    }

    // Secret key: export, import, decrypt; the export is canonical.
    let exported = s.dec.secret_key().export_bytes();
    assert_eq!(exported.len(), HEADER_LEN + params.n() / 4);
    let sk2 = SecretKey::import_bytes(&params, &exported, exported.len()).expect("import");
    assert_eq!(*sk2.export_bytes(), *exported);
    let dec2 = Decryptor::new(sk2).expect("dec");
    let got = s
        .encoder
        .decode(&dec2.decrypt(&seeded).expect("decrypt"))
        .expect("decode");
    assert_eq!(got, s.decrypt(&seeded));
}

#[test]
fn sizes_at_n_2_14() {
    for preset in [Preset::Pn14Depth7, Preset::Pn14SealChain] {
        let params = preset.build().expect("preset");
        let mut s = setup(params.clone(), &[]);
        let v = random_vec(params.slots(), 3, 1.0);
        let seeded = s.encrypt_seeded(&v, params.max_level());
        let full = s.encrypt_full(&v, params.max_level());
        let (sb, fb) = (seeded.to_bytes(), full.to_bytes());
        let rot = s.rot1.to_bytes();
        let relin = s.relin.to_bytes();
        let pk = s.pk.to_bytes();
        let ratio = sb.len() as f64 / fb.len() as f64;
        eprintln!(
            "{preset:?}: ciphertext full {} B, seeded {} B ({:.1}%), public key {} B, \
             relinearization key {} B ({:.2} MiB), rotation key {} B ({:.2} MiB)",
            fb.len(),
            sb.len(),
            100.0 * ratio,
            pk.len(),
            relin.len(),
            relin.len() as f64 / (1 << 20) as f64,
            rot.len(),
            rot.len() as f64 / (1 << 20) as f64,
        );
        assert!(
            ratio <= 0.55,
            "seeded ciphertext is {:.1}% of a full one",
            100.0 * ratio
        );
        // Bit packing: a full ciphertext is within a header of 2·N·log2(Q)/8 bytes.
        let log_q_bits: u32 = params.q_primes().iter().map(|&p| bits_of(p)).sum();
        assert_eq!(
            fb.len(),
            HEADER_LEN + 10 + 2 * params.n() * log_q_bits as usize / 8
        );
        if preset == Preset::Pn14Depth7 {
            assert!(
                rot.len() <= 4 << 20,
                "rotation key {} B exceeds 4 MiB",
                rot.len()
            );
        }
        let decoded = GaloisKey::from_bytes(&params, &rot, rot.len()).expect("decodes");
        assert_eq!(decoded.to_bytes(), rot);
        // The size formulas a compiler reports before any key exists.
        let top = params.max_level();
        assert_eq!(ciphertext_bytes(&params, top, true), sb.len());
        assert_eq!(ciphertext_bytes(&params, top, false), fb.len());
        let low = s.encrypt_full(&v, 0).to_bytes().len();
        assert_eq!(ciphertext_bytes(&params, 0, false), low);
        let mut bundle = EvaluationKeys::new(params.clone());
        assert_eq!(
            evaluation_keys_bytes(&params, 0, false),
            bundle.to_bytes().len()
        );
        bundle
            .set_relinearization_key(s.relin.clone())
            .expect("relin");
        bundle.insert_galois_key(s.rot1.clone()).expect("galois");
        assert_eq!(
            evaluation_keys_bytes(&params, 1, true),
            bundle.to_bytes().len()
        );
    }
}

#[test]
fn truncated_and_trailing_input_is_rejected() {
    let params = small_insecure();
    let mut s = setup(params.clone(), &[1]);
    let v = random_vec(params.slots(), 4, 1.0);
    let ct = s.encrypt_seeded(&v, 0).to_bytes();
    // Every prefix of a small object.
    for len in 0..ct.len() {
        rejects(
            Ciphertext::from_bytes(&params, &ct[..len], LIMIT),
            DecodeErrorCode::Truncated,
            "prefix",
        );
    }
    let sk = s.dec.secret_key().export_bytes();
    for len in 0..sk.len() {
        rejects(
            SecretKey::import_bytes(&params, &sk[..len], LIMIT),
            DecodeErrorCode::Truncated,
            "sk prefix",
        );
    }
    let pt = s
        .encoder
        .encode(&v, 0, params.default_scale())
        .expect("encode")
        .to_bytes();
    for len in 0..pt.len() {
        rejects(
            Plaintext::from_bytes(&params, &pt[..len], LIMIT),
            DecodeErrorCode::Truncated,
            "pt prefix",
        );
    }
    // A sample of prefixes of the larger objects, including every boundary near the envelope.
    let objects: Vec<(&str, Vec<u8>)> = vec![
        (
            "full ciphertext",
            s.encrypt_full(&v, params.max_level()).to_bytes(),
        ),
        ("public key", s.pk.to_bytes()),
        ("relinearization key", s.relin.to_bytes()),
        ("galois key", s.rot1.to_bytes()),
        ("evaluation keys", s.keys.to_bytes()),
    ];
    for (what, bytes) in &objects {
        let lens = (0..HEADER_LEN + 64)
            .chain((HEADER_LEN + 64..bytes.len()).step_by(997))
            .chain([bytes.len() - 1]);
        for len in lens {
            let r = match *what {
                "full ciphertext" => code(Ciphertext::from_bytes(&params, &bytes[..len], LIMIT)),
                "public key" => code(PublicKey::from_bytes(&params, &bytes[..len], LIMIT)),
                "relinearization key" => code(RelinearizationKey::from_bytes(
                    &params,
                    &bytes[..len],
                    LIMIT,
                )),
                "galois key" => code(GaloisKey::from_bytes(&params, &bytes[..len], LIMIT)),
                _ => code(EvaluationKeys::from_bytes(&params, &bytes[..len], LIMIT)),
            };
            assert_eq!(r, Some(DecodeErrorCode::Truncated), "{what} prefix {len}");
        }
    }
    // Trailing bytes, on every type.
    let mut with_tail = ct.clone();
    with_tail.push(0);
    rejects(
        Ciphertext::from_bytes(&params, &with_tail, LIMIT),
        DecodeErrorCode::Truncated,
        "trailing",
    );
    let mut with_tail = sk.to_vec();
    with_tail.push(0);
    rejects(
        SecretKey::import_bytes(&params, &with_tail, LIMIT),
        DecodeErrorCode::Truncated,
        "sk trailing",
    );
    for (what, bytes) in &objects {
        let mut b = bytes.clone();
        b.extend_from_slice(&[0, 0, 0]);
        let r = match *what {
            "full ciphertext" => code(Ciphertext::from_bytes(&params, &b, LIMIT)),
            "public key" => code(PublicKey::from_bytes(&params, &b, LIMIT)),
            "relinearization key" => code(RelinearizationKey::from_bytes(&params, &b, LIMIT)),
            "galois key" => code(GaloisKey::from_bytes(&params, &b, LIMIT)),
            _ => code(EvaluationKeys::from_bytes(&params, &b, LIMIT)),
        };
        assert_eq!(
            r,
            Some(DecodeErrorCode::Truncated),
            "{what} with trailing bytes"
        );
    }
}

#[test]
fn header_bit_flips_are_rejected_with_their_code() {
    let params = small_insecure();
    let mut s = setup(params.clone(), &[]);
    let v = random_vec(params.slots(), 5, 1.0);
    let ct = s.encrypt_seeded(&v, 1).to_bytes();
    let pk = s.pk.to_bytes();
    for bit in 0..HEADER_LEN * 8 {
        let byte = bit / 8;
        let mut c = ct.clone();
        c[byte] ^= 1 << (bit % 8);
        let mut k = pk.clone();
        k[byte] ^= 1 << (bit % 8);
        let (want_ct, want_pk) = match byte {
            0..4 => (DecodeErrorCode::BadMagic, DecodeErrorCode::BadMagic),
            4..6 => (
                DecodeErrorCode::UnsupportedVersion,
                DecodeErrorCode::UnsupportedVersion,
            ),
            6 => (DecodeErrorCode::WrongType, DecodeErrorCode::WrongType),
            // Unknown flag bits are non-conformant. Clearing a ciphertext's seeded flag leaves a
            // payload of the wrong length for two full polynomials.
            7 if bit % 8 == 0 => (DecodeErrorCode::Truncated, DecodeErrorCode::NonConformant),
            7 => (
                DecodeErrorCode::NonConformant,
                DecodeErrorCode::NonConformant,
            ),
            _ => (
                DecodeErrorCode::WrongParameters,
                DecodeErrorCode::WrongParameters,
            ),
        };
        rejects(
            Ciphertext::from_bytes(&params, &c, LIMIT),
            want_ct,
            &format!("ct bit {bit}"),
        );
        rejects(
            PublicKey::from_bytes(&params, &k, LIMIT),
            want_pk,
            &format!("pk bit {bit}"),
        );
        // peek_header sees the same envelope errors, except those that need the parameters
        // or the payload; a flipped type code is either unknown or another type.
        match byte {
            6 => assert_ne!(
                peek_header(&c).map(|h| h.object_type).ok(),
                Some(ObjectType::Ciphertext)
            ),
            7 if bit % 8 == 0 => assert!(!peek_header(&c).expect("peek").is_seeded()),
            0..8 => rejects(peek_header(&c), want_ct, &format!("peek bit {bit}")),
            _ => assert_eq!(peek_header(&c).expect("peek").parameter_id, c[8..40]),
        }
    }
    let h = peek_header(&ct).expect("header");
    assert_eq!(h.version, 1);
    assert_eq!(h.object_type, ObjectType::Ciphertext);
    assert!(h.is_seeded());
    assert_eq!(h.parameter_id, params.id());
    // The right envelope on the wrong decoder.
    rejects(
        Plaintext::from_bytes(&params, &ct, LIMIT),
        DecodeErrorCode::WrongType,
        "ct as pt",
    );
    rejects(
        GaloisKey::from_bytes(&params, &pk, LIMIT),
        DecodeErrorCode::WrongType,
        "pk as gk",
    );
    rejects(
        SecretKey::import_bytes(&params, &pk, LIMIT),
        DecodeErrorCode::WrongType,
        "pk as sk",
    );
    // A public key with its seeded flag cleared.
    let mut k = pk.clone();
    k[7] = 0;
    rejects(
        PublicKey::from_bytes(&params, &k, LIMIT),
        DecodeErrorCode::NonConformant,
        "unseeded pk",
    );
}

#[test]
fn residues_not_below_their_prime_are_rejected() {
    let params = small_insecure();
    let s = setup(params.clone(), &[]);
    let q = params.q_primes();
    let p = params.p_primes();
    let v = random_vec(params.slots(), 6, 1.0);
    let ct = s.encrypt_full(&v, 1).to_bytes();
    let start = (HEADER_LEN + 10) * 8;
    // The first residue of c_0 (prime q_0): p - 1 conforms, p and 2^bits - 1 do not.
    let w0 = bits_of(q[0]);
    let mut b = ct.clone();
    set_bits(&mut b, start, w0, q[0] - 1);
    assert!(Ciphertext::from_bytes(&params, &b, LIMIT).is_ok());
    for bad in [q[0], (1 << w0) - 1] {
        set_bits(&mut b, start, w0, bad);
        rejects(
            Ciphertext::from_bytes(&params, &b, LIMIT),
            DecodeErrorCode::NonConformant,
            "c0[0] >= q0",
        );
    }
    // The last residue of c_1 (prime q_1).
    let w1 = bits_of(q[1]);
    let mut b = ct.clone();
    let last = b.len() * 8 - w1 as usize;
    set_bits(&mut b, last, w1, q[1]);
    rejects(
        Ciphertext::from_bytes(&params, &b, LIMIT),
        DecodeErrorCode::NonConformant,
        "c1 last >= q1",
    );
    // A key residue over a special prime: first residue of b_0's first special-prime limb.
    let relin = s.relin.to_bytes();
    let q_bits: usize = q.iter().map(|&x| bits_of(x) as usize).sum();
    let mut b = relin.clone();
    let at = (HEADER_LEN + 1) * 8 + params.n() * q_bits;
    set_bits(&mut b, at, bits_of(p[0]), p[0]);
    rejects(
        RelinearizationKey::from_bytes(&params, &b, LIMIT),
        DecodeErrorCode::NonConformant,
        "b0 >= p0",
    );
    // Public key.
    let mut b = s.pk.to_bytes();
    set_bits(&mut b, HEADER_LEN * 8, w0, q[0] + 2);
    rejects(
        PublicKey::from_bytes(&params, &b, LIMIT),
        DecodeErrorCode::NonConformant,
        "pk b >= q0",
    );
}

#[test]
fn oversized_input_is_rejected_first() {
    let params = small_insecure();
    let mut s = setup(params.clone(), &[]);
    let ct = s.encrypt_seeded(&[1.0], params.max_level()).to_bytes();
    rejects(
        Ciphertext::from_bytes(&params, &ct, ct.len() - 1),
        DecodeErrorCode::TooLarge,
        "limit - 1",
    );
    assert!(Ciphertext::from_bytes(&params, &ct, ct.len()).is_ok());
    // The limit is checked before anything is read.
    let junk = vec![0xAB; 4096];
    rejects(
        Ciphertext::from_bytes(&params, &junk, 100),
        DecodeErrorCode::TooLarge,
        "junk over limit",
    );
    rejects(
        Ciphertext::from_bytes(&params, &junk, LIMIT),
        DecodeErrorCode::BadMagic,
        "junk",
    );
    let keys = s.keys.to_bytes();
    rejects(
        EvaluationKeys::from_bytes(&params, &keys, 1 << 10),
        DecodeErrorCode::TooLarge,
        "keys",
    );
    let sk = s.dec.secret_key().export_bytes();
    rejects(
        SecretKey::import_bytes(&params, &sk, 64),
        DecodeErrorCode::TooLarge,
        "sk",
    );
}

#[test]
fn objects_of_other_parameters_are_rejected() {
    let params = small_insecure();
    let mut lit = params.literal().clone();
    lit.log_scale = 39; // same primes, different parameter set
    let other = lit.build_insecure_for_tests().expect("other");
    assert_ne!(other.id(), params.id());
    let mut s = setup(params.clone(), &[1]);
    let ct = s.encrypt_seeded(&[0.5], params.max_level()).to_bytes();
    rejects(
        Ciphertext::from_bytes(&other, &ct, LIMIT),
        DecodeErrorCode::WrongParameters,
        "ct",
    );
    rejects(
        PublicKey::from_bytes(&other, &s.pk.to_bytes(), LIMIT),
        DecodeErrorCode::WrongParameters,
        "pk",
    );
    rejects(
        EvaluationKeys::from_bytes(&other, &s.keys.to_bytes(), LIMIT),
        DecodeErrorCode::WrongParameters,
        "keys",
    );
    let sk = s.dec.secret_key().export_bytes();
    rejects(
        SecretKey::import_bytes(&other, &sk, LIMIT),
        DecodeErrorCode::WrongParameters,
        "sk",
    );
    // A real preset too.
    let p13 = Preset::Pn13Depth4.build().expect("preset");
    rejects(
        GaloisKey::from_bytes(&p13, &s.rot1.to_bytes(), LIMIT),
        DecodeErrorCode::WrongParameters,
        "gk",
    );
}

/// Conformance of the fixed fields: level, counts, scale, flags, Galois elements, ordering,
/// ternary codes.
#[test]
fn non_conformant_fields_are_rejected() {
    let params = small_insecure();
    let mut s = setup(params.clone(), &[1, 2]);
    let nc = DecodeErrorCode::NonConformant;
    let ct = s.encrypt_seeded(&[0.25], params.max_level()).to_bytes();
    let (level_at, count_at, scale_at) = (HEADER_LEN, HEADER_LEN + 1, HEADER_LEN + 2);
    let mut b = ct.clone();
    b[level_at] = params.max_level() as u8 + 1;
    rejects(
        Ciphertext::from_bytes(&params, &b, LIMIT),
        nc,
        "level above max",
    );
    for count in [0u8, 1, 4, 255] {
        let mut b = ct.clone();
        b[count_at] = count;
        rejects(
            Ciphertext::from_bytes(&params, &b, LIMIT),
            nc,
            &format!("{count} polynomials"),
        );
    }
    let mut b = ct.clone();
    b[count_at] = 3;
    rejects(
        Ciphertext::from_bytes(&params, &b, LIMIT),
        nc,
        "seeded degree 2",
    );
    for scale in [f64::NAN, f64::INFINITY, -1.0, 0.0, 0.5, 2f64.powi(400)] {
        let mut b = ct.clone();
        b[scale_at..scale_at + 8].copy_from_slice(&scale.to_bits().to_le_bytes());
        rejects(
            Ciphertext::from_bytes(&params, &b, LIMIT),
            nc,
            &format!("scale {scale}"),
        );
    }
    // A scale just at log2(Q_0) at level 0.
    let low = s.encrypt_seeded(&[0.25], 0).to_bytes();
    let mut b = low.clone();
    let q0 = params.q_primes()[0] as f64;
    b[scale_at..scale_at + 8].copy_from_slice(&q0.to_bits().to_le_bytes());
    rejects(
        Ciphertext::from_bytes(&params, &b, LIMIT),
        nc,
        "scale = q0 at level 0",
    );

    // Plaintexts carry no flags.
    let mut pt = s
        .encoder
        .encode(&[1.0], 0, params.default_scale())
        .expect("encode")
        .to_bytes();
    pt[7] = FLAG_SEEDED;
    rejects(
        Plaintext::from_bytes(&params, &pt, LIMIT),
        nc,
        "seeded plaintext",
    );

    // Galois elements: even, identity, >= 2N.
    let gk = s.rot1.to_bytes();
    let two_n = 2 * params.n() as u64;
    for g in [0u64, 2, 1, two_n + 1, two_n - 2, u64::MAX] {
        let mut b = gk.clone();
        b[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&g.to_le_bytes());
        rejects(
            GaloisKey::from_bytes(&params, &b, LIMIT),
            nc,
            &format!("element {g}"),
        );
    }
    let mut b = gk.clone();
    b[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&(two_n - 1).to_le_bytes());
    let conj = GaloisKey::from_bytes(&params, &b, LIMIT).expect("conjugation element is valid");
    assert_eq!(conj.galois_element(), params.galois_element_conjugate());
    // dnum must match the parameters.
    let mut b = gk.clone();
    b[HEADER_LEN + 8] = params.dnum() as u8 + 1;
    rejects(GaloisKey::from_bytes(&params, &b, LIMIT), nc, "dnum");
    let mut b = s.relin.to_bytes();
    b[HEADER_LEN] = 0;
    rejects(
        RelinearizationKey::from_bytes(&params, &b, LIMIT),
        nc,
        "dnum 0",
    );

    // Evaluation keys: relinearization flag, count, ordering, duplicates, nested envelopes.
    let keys = s.keys.to_bytes();
    let mut b = keys.clone();
    b[HEADER_LEN] = 2;
    rejects(
        EvaluationKeys::from_bytes(&params, &b, LIMIT),
        nc,
        "has_relin 2",
    );
    let mut b = keys.clone();
    b[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&u32::MAX.to_le_bytes());
    rejects(
        EvaluationKeys::from_bytes(&params, &b, LIMIT),
        nc,
        "count u32::MAX",
    );
    let mut b = keys.clone();
    b[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&(params.n() as u32 - 1).to_le_bytes());
    rejects(
        EvaluationKeys::from_bytes(&params, &b, LIMIT),
        DecodeErrorCode::Truncated,
        "count N-1",
    );
    let elements = s.keys.galois_elements();
    assert_eq!(elements.len(), 3); // steps 1, 2 and conjugation
    let g0 = s.keys.galois_key(elements[0]).expect("key").to_bytes();
    let g1 = s.keys.galois_key(elements[1]).expect("key").to_bytes();
    let assemble = |parts: &[&[u8]]| {
        let mut out = keys[..HEADER_LEN].to_vec();
        out.push(0);
        out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
        for p in parts {
            out.extend_from_slice(p);
        }
        out
    };
    let ok = EvaluationKeys::from_bytes(&params, &assemble(&[&g0, &g1]), LIMIT).expect("ordered");
    assert_eq!(ok.galois_elements(), vec![elements[0], elements[1]]);
    assert!(ok.relinearization_key().is_none());
    rejects(
        EvaluationKeys::from_bytes(&params, &assemble(&[&g1, &g0]), LIMIT),
        nc,
        "decreasing",
    );
    rejects(
        EvaluationKeys::from_bytes(&params, &assemble(&[&g0, &g0]), LIMIT),
        nc,
        "duplicate",
    );
    // Nested envelopes are checked like top-level ones.
    let mut wrong = g0.clone();
    wrong[6] = ObjectType::RelinearizationKey.code();
    rejects(
        EvaluationKeys::from_bytes(&params, &assemble(&[&wrong]), LIMIT),
        DecodeErrorCode::WrongType,
        "nested type",
    );
    let mut wrong = g0.clone();
    wrong[20] ^= 1;
    rejects(
        EvaluationKeys::from_bytes(&params, &assemble(&[&wrong]), LIMIT),
        DecodeErrorCode::WrongParameters,
        "nested id",
    );

    // Secret key: the code 10 is invalid.
    let sk = s.dec.secret_key().export_bytes();
    let mut b = sk.to_vec();
    b[HEADER_LEN + 3] = 0b1000_0000;
    rejects(
        SecretKey::import_bytes(&params, &b, LIMIT),
        nc,
        "ternary code 10",
    );
    let mut b = sk.to_vec();
    b[7] = FLAG_SEEDED;
    rejects(
        SecretKey::import_bytes(&params, &b, LIMIT),
        nc,
        "seeded secret key",
    );
}

#[test]
fn sparse_secret_weight_is_checked() {
    let mut lit = small_insecure().literal().clone();
    lit.secret = cipherinfer_ckks::SecretDistribution::SparseTernary { hamming_weight: 64 };
    let params = lit.build_insecure_for_tests().expect("sparse");
    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key().export_bytes();
    let back = SecretKey::import_bytes(&params, &sk, LIMIT).expect("import");
    assert_eq!(*back.export_bytes(), *sk);
    // Clear the first non-zero coefficient: weight 63.
    let mut b = sk.to_vec();
    let pos = b[HEADER_LEN..]
        .iter()
        .position(|&x| x != 0)
        .expect("non-zero")
        + HEADER_LEN;
    let byte = b[pos];
    let j = (0..4).find(|j| (byte >> (2 * j)) & 3 != 0).expect("code");
    b[pos] &= !(3 << (2 * j));
    rejects(
        SecretKey::import_bytes(&params, &b, LIMIT),
        DecodeErrorCode::NonConformant,
        "weight 63",
    );
}

/// A flipped payload bit in a key is rejected when it pushes a residue out of range, and
/// otherwise decodes to a different, conforming key: integrity is the protocol's job.
#[test]
fn payload_bit_flips_in_keys_are_rejected_or_change_the_key() {
    let params = small_insecure();
    let s = setup(params.clone(), &[]);
    let pk = s.pk.to_bytes();
    let (mut rejected, mut changed) = (0, 0);
    for bit in (HEADER_LEN * 8..pk.len() * 8)
        .step_by(4099)
        .chain([pk.len() * 8 - 1])
    {
        let mut b = pk.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        match PublicKey::from_bytes(&params, &b, LIMIT) {
            Ok(k) => {
                let again = k.to_bytes();
                assert_eq!(again, b, "decodes to exactly the flipped key");
                assert_ne!(again, pk);
                changed += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), "non_conformant", "bit {bit}: {e}");
                rejected += 1;
            }
        }
    }
    assert!(changed > 0, "some flips conform ({rejected} rejected)");
    // The top bit of a residue of a prime just above a power of two is usually out of range.
    let gk = s.rot1.to_bytes();
    let w0 = bits_of(params.q_primes()[0]) as usize;
    let mut b = gk.clone();
    let bit = (HEADER_LEN + 9) * 8 + w0 - 1;
    b[bit / 8] ^= 1 << (bit % 8);
    match GaloisKey::from_bytes(&params, &b, LIMIT) {
        Ok(k) => assert_ne!(k.to_bytes(), gk),
        Err(e) => assert_eq!(e.code(), "non_conformant"),
    }
    // A conforming flip (in the seed) yields a key that no longer encrypts to our secret.
    let mut b = pk.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    let bad = PublicKey::from_bytes(&params, &b, LIMIT).expect("a flipped seed conforms");
    let v = random_vec(params.slots(), 7, 1.0);
    let pt = s
        .encoder
        .encode(&v, params.max_level(), params.default_scale())
        .expect("encode");
    let ct = Encryptor::new(bad)
        .expect("enc")
        .encrypt(&pt)
        .expect("encrypt");
    assert!(
        precision_bits(&s.decrypt(&ct), &v) < 0.0,
        "garbage, not the message"
    );
}

/// Valid encodings of every type under the tiny ring, for mutation tests.
fn tiny_corpus() -> &'static (Arc<Parameters>, Vec<Vec<u8>>) {
    static CORPUS: OnceLock<(Arc<Parameters>, Vec<Vec<u8>>)> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let params = tiny();
        let mut s = setup(params.clone(), &[1, 3]);
        let v = random_vec(params.slots(), 8, 1.0);
        let seeded = s.encrypt_seeded(&v, params.max_level());
        let full = s.encrypt_full(&v, 0);
        let ev = Evaluator::new(s.keys.clone());
        let deg2 = ev.mul_no_relin(&seeded, &seeded).expect("mul");
        let pt = s
            .encoder
            .encode(&v, 1, params.default_scale())
            .expect("encode");
        let objects = vec![
            seeded.to_bytes(),
            full.to_bytes(),
            deg2.to_bytes(),
            pt.to_bytes(),
            s.pk.to_bytes(),
            s.relin.to_bytes(),
            s.rot1.to_bytes(),
            s.keys.to_bytes(),
            s.dec.secret_key().export_bytes().to_vec(),
        ];
        for o in &objects {
            decode_all(&params, o);
        }
        (params, objects)
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Integration tests have no lib.rs next to them to persist failures beside.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (params, _) = tiny_corpus();
        decode_all(params, &bytes);
    }

    #[test]
    fn valid_envelope_with_random_payload_never_panics(
        ty in 0u8..9,
        flags in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let (params, _) = tiny_corpus();
        let mut bytes = b"CIFR".to_vec();
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.push(ty);
        bytes.push(flags & 1);
        bytes.extend_from_slice(&params.id());
        bytes.extend_from_slice(&payload);
        decode_all(params, &bytes);
    }

    #[test]
    fn mutated_valid_encodings_never_panic_and_stay_canonical(
        which in 0usize..9,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<Option<usize>>(),
    ) {
        let (params, objects) = tiny_corpus();
        let mut bytes = objects[which % objects.len()].clone();
        for (pos, x) in edits {
            let len = bytes.len();
            bytes[pos % len] ^= x;
        }
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        decode_all(params, &bytes);
        // Whatever is accepted re-encodes to the very same bytes.
        if let Ok(ct) = Ciphertext::from_bytes(params, &bytes, LIMIT) {
            prop_assert_eq!(ct.to_bytes(), bytes.clone());
        }
        if let Ok(k) = EvaluationKeys::from_bytes(params, &bytes, LIMIT) {
            prop_assert_eq!(k.to_bytes(), bytes.clone());
        }
        if let Ok(sk) = SecretKey::import_bytes(params, &bytes, LIMIT) {
            prop_assert_eq!(sk.export_bytes().to_vec(), bytes.clone());
        }
    }
}
