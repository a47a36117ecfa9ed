//! Known-answer tests of the wire format's fixed points (`docs/formats.md`): the primes and
//! parameter ids of every preset, the seed expansion of uniform polynomials, and the Galois
//! elements of rotations. The values were derived by an independent reimplementation; a change
//! of any of them (e.g. by an upgrade of the NTT or ChaCha crates) changes the bytes on the wire
//! and must fail here, not silently in a peer.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use cipherinfer_ckks::Preset;
use cipherinfer_ckks::sampling::expand_uniform;

struct Known {
    preset: Preset,
    q: &'static [u64],
    p: &'static [u64],
    id: &'static str,
}

const PRESETS: &[Known] = &[
    Known {
        preset: Preset::Pn13Depth4,
        q: &[
            1099511480321,
            1073692673,
            1073643521,
            1073479681,
            1073430529,
        ],
        p: &[281474976694273],
        id: "6f8db7cd208c91350fbfd7eabca3f95515352c2ba76f3904de9793ea8f4ed64d",
    },
    Known {
        preset: Preset::Pn13Depth5,
        q: &[1073692673, 67043329, 66994177, 66961409, 66813953, 66551809],
        p: &[288230376150876161],
        id: "07d2ee87c59df4bf3d4c8f8a7a4822bb7fb7671fe383549e0cdf39b7907e1502",
    },
    Known {
        preset: Preset::Pn14Depth7,
        q: &[
            36028797017456641,
            1099510054913,
            1099508121601,
            1099507695617,
            1099506515969,
            1099506352129,
            1099505827841,
            1099504549889,
        ],
        p: &[1125899904679937, 1125899903991809],
        id: "432868a31fd2aebfa0673830d2633ba37aaf27774bbbb90e88c28101fef4b1e6",
    },
    Known {
        preset: Preset::Pn14SealChain,
        q: &[
            1152921504606748673,
            1099510054913,
            1099508121601,
            1099507695617,
            1099506515969,
            1099506352129,
            1099505827841,
            1099504549889,
            1099503894529,
        ],
        p: &[288230376150630401],
        id: "cc6273f9b9bb6e3c17fa168dac0c02e366bccafa2f21051f37381876422eaa1c",
    },
    Known {
        preset: Preset::Pn15Depth16,
        q: &[
            1152921504606584833,
            1099510054913,
            1099507695617,
            1099506515969,
            1099504549889,
            1099503894529,
            1099503370241,
            1099502714881,
            1099502518273,
            1099501731841,
            1099500814337,
            1099500617729,
            1099500421121,
            1099499765761,
            1099499569153,
            1099499175937,
            1099498258433,
        ],
        p: &[
            1152921504598720513,
            1152921504597016577,
            1152921504595968001,
        ],
        id: "6909aaccd7cab55ad5b3d2b6673525f7364e00dcd423ddeb9e0a679b5963bb37",
    },
];

#[test]
fn preset_primes_and_parameter_ids_are_fixed() {
    for k in PRESETS {
        let params = k.preset.build().unwrap();
        assert_eq!(
            params.q_primes(),
            k.q,
            "{}: ciphertext primes",
            k.preset.name()
        );
        assert_eq!(
            params.p_primes(),
            k.p,
            "{}: special primes",
            k.preset.name()
        );
        let id: String = params.id().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id, k.id, "{}: parameter id", k.preset.name());
    }
}

#[test]
fn seed_expansion_is_fixed() {
    let params = Preset::Pn13Depth5.build().unwrap();
    let seed: [u8; 32] = core::array::from_fn(|i| i as u8);
    let first = expand_uniform(&params, &seed, 0, &[0]);
    assert_eq!(first[..4], [1026293049, 922992013, 802698634, 209570994]);
    let special = expand_uniform(&params, &seed, 1, &[6]);
    assert_eq!(
        special[..4],
        [
            150133533096177506,
            92476664396032323,
            59937332677164821,
            194657073914671700
        ]
    );
}

#[test]
fn galois_elements_of_rotations_are_fixed() {
    let params = Preset::Pn13Depth5.build().unwrap();
    assert_eq!(params.galois_element(1), 5);
    assert_eq!(params.galois_element(2), 25);
    assert_eq!(params.galois_element(-1), 3277);
    assert_eq!(params.galois_element_conjugate(), 16383);
}
