//! The key store: layout, modes, credentials, atomic replacement, concurrent creation, the
//! default root, and that no public type's `Debug` shows key material or tokens.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use cipherinfer_ckks::KeyGenerator;
use cipherinfer_local::fsutil::{Confinement, read_limited, write_atomic};
use cipherinfer_local::output::{Decrypted, decode_output};
use cipherinfer_local::server::{ClassifyContext, Progress};
use cipherinfer_local::store::{EVALUATION_KEYS_FILE, REMOTE_DIR, SECRET_KEY_FILE};
use cipherinfer_local::{KeyStore, LocalConfig, LocalHandler, RemoteCredentials};
use cipherinfer_protocol::validate::sha256_hex;
use cipherinfer_protocol::{AuthToken, ErrorCode};
use common::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn creds(url: &str, token: &AuthToken) -> RemoteCredentials {
    RemoteCredentials {
        remote_url: url.into(),
        key_ref: "urn:cipherinfer:key:ivan:1".into(),
        auth_token: token.clone(),
        model: "mnist-cnn".into(),
        parameter_id: served().info.parameter_id.clone(),
        bundle_sha256: "ab".repeat(32),
        provisioned_at: 1_700_000_000,
    }
}

#[test]
fn default_root_follows_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    static ALL: [(&str, &str); 3] = [
        ("CIPHERINFER_HOME", "/ci"),
        ("XDG_DATA_HOME", "/xdg"),
        ("HOME", "/home/u"),
    ];
    let all = &ALL;
    assert_eq!(
        KeyStore::default_root_from(env(all)),
        Some(PathBuf::from("/ci/keys"))
    );
    assert_eq!(
        KeyStore::default_root_from(env(&all[1..])),
        Some(PathBuf::from("/xdg/cipherinfer/keys"))
    );
    assert_eq!(
        KeyStore::default_root_from(env(&all[2..])),
        Some(PathBuf::from("/home/u/.local/share/cipherinfer/keys"))
    );
    // Relative values are ignored.
    assert_eq!(
        KeyStore::default_root_from(env(&[("CIPHERINFER_HOME", "rel"), ("HOME", "/h")])),
        Some(PathBuf::from("/h/.local/share/cipherinfer/keys"))
    );
    assert_eq!(KeyStore::default_root_from(env(&[])), None);
}

#[test]
fn credentials_live_in_the_client_directory_with_private_modes() {
    let scratch = Scratch::new("creds");
    let crypto = crypto(&scratch);
    let store = crypto.store();
    let url = "https://infer.example/mcp";
    let token = AuthToken::generate().unwrap();
    assert_eq!(
        store
            .put_credentials("ivan", &creds(url, &token))
            .unwrap_err()
            .error_code,
        ErrorCode::UnknownClient
    );
    crypto.generate_keys(&keygen_args("ivan")).unwrap();
    assert_eq!(store.get_credentials("ivan", url).unwrap(), None);
    store.put_credentials("ivan", &creds(url, &token)).unwrap();
    let file = scratch
        .join("keys/ivan")
        .join(REMOTE_DIR)
        .join(format!("{}.json", &sha256_hex(url.as_bytes())[..32]));
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let got = store.get_credentials("ivan", url).unwrap().unwrap();
    assert_eq!(got, creds(url, &token));
    assert_eq!(got.auth_token.expose(), token.expose());
    // Replacing is atomic and leaves no temporary file.
    let token2 = AuthToken::generate().unwrap();
    store.put_credentials("ivan", &creds(url, &token2)).unwrap();
    assert_eq!(
        store
            .get_credentials("ivan", url)
            .unwrap()
            .unwrap()
            .auth_token,
        token2
    );
    assert_eq!(
        std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
        1
    );
    // Another URL is another file.
    let other = "http://127.0.0.1:8750/mcp";
    assert_eq!(store.get_credentials("ivan", other).unwrap(), None);
    store
        .put_credentials("ivan", &creds(other, &token))
        .unwrap();
    assert!(store.delete_credentials("ivan", other).unwrap());
    assert!(!store.delete_credentials("ivan", other).unwrap());
    // Plain http to a non-loopback host is not a remote_url.
    assert_eq!(
        store
            .put_credentials("ivan", &creds("http://infer.example/mcp", &token))
            .unwrap_err()
            .error_code,
        ErrorCode::InsecureTransport
    );
    // A corrupt file is reported, not trusted.
    std::fs::write(&file, b"{\"remote_url\": 1").unwrap();
    assert_eq!(
        store.get_credentials("ivan", url).unwrap_err().error_code,
        ErrorCode::MalformedKeys
    );
    // New keys drop the credentials of the old ones.
    let mut again = keygen_args("ivan");
    again.overwrite = true;
    store.put_credentials("ivan", &creds(url, &token)).unwrap();
    crypto.generate_keys(&again).unwrap();
    assert_eq!(store.get_credentials("ivan", url).unwrap(), None);
    assert!(store.delete("ivan").unwrap());
    assert!(!store.exists("ivan").unwrap());
    assert!(!store.delete("ivan").unwrap());
}

#[test]
fn concurrent_creation_of_one_client_has_one_winner() {
    let scratch = Scratch::new("race");
    let store = KeyStore::open(scratch.join("keys")).unwrap();
    let crypto = crypto(&scratch);
    crypto.generate_keys(&keygen_args("template")).unwrap();
    let mut record = store.record("template").unwrap();
    let (_, bundle) = store.evaluation_keys("template").unwrap();
    record.client_id = "judy".into();
    let params = served().params().clone();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (record, bundle, params, store) = (&record, &bundle, params.clone(), &store);
                s.spawn(move || {
                    let sk = KeyGenerator::new(params).unwrap().secret_key();
                    store.create(record, &sk, bundle, false)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.error_code, ErrorCode::ClientExists);
    }
    // The winner's key set is whole and loads.
    store.load("judy").unwrap();
    let names: Vec<_> = std::fs::read_dir(scratch.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // No temporaries: the only dot-directories are the work directory of a confined store and
    // the identities.
    assert!(
        names.iter().all(|n| !n.starts_with('.')
            || n == cipherinfer_local::classify::WORK_DIR
            || n == cipherinfer_local::store::IDENTITIES_DIR),
        "{names:?}"
    );
}

#[test]
fn atomic_writes_replace_links_and_leave_no_temporaries() {
    let scratch = Scratch::new("atomic");
    std::fs::create_dir_all(scratch.join("work")).unwrap();
    let target = scratch.join("work/file");
    let elsewhere = scratch.join("elsewhere");
    std::fs::write(&elsewhere, b"keep me").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
    write_atomic(&target, b"new", 0o600).unwrap();
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep me");
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    assert!(
        !std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(mode(&target), 0o600);
    assert_eq!(std::fs::read_dir(scratch.join("work")).unwrap().count(), 1);
    assert!(read_limited(&target, 2).is_err());
    assert_eq!(read_limited(&target, 3).unwrap(), b"new");
}

#[test]
fn debug_output_shows_no_key_material_or_tokens() {
    let scratch = Scratch::new("debug");
    let crypto = Arc::new(crypto(&scratch));
    crypto.generate_keys(&keygen_args("kim")).unwrap();
    let store = crypto.store();
    let token = AuthToken::generate().unwrap();
    let url = "https://infer.example/mcp";
    store.put_credentials("kim", &creds(url, &token)).unwrap();
    let secret = std::fs::read(scratch.join("keys/kim").join(SECRET_KEY_FILE)).unwrap();
    let payload = &secret[40..];

    let loaded = store.load("kim").unwrap();
    let record = store.record("kim").unwrap();
    let credentials = store.get_credentials("kim", url).unwrap().unwrap();
    let handler = LocalHandler::new(crypto.clone());
    let context = ClassifyContext {
        crypto: crypto.clone(),
        progress: Progress::none(),
        cancel: Default::default(),
    };
    let decrypted = Decrypted {
        values: vec![1.0],
        precision_bits: 8.0,
        noise_floor: 0.0,
        measured_noise: 0.0,
    };
    let config = LocalConfig {
        key_root: scratch.join("keys"),
        allowed_dirs: vec![],
    };
    let confinement = Confinement::new(&[]).unwrap();
    let bundle_err = decode_output(served().params(), &secret, 1 << 20).unwrap_err();
    let texts = [
        format!("{crypto:?}"),
        format!("{store:?}"),
        format!("{loaded:?}"),
        format!("{:?}", loaded.decryptor),
        format!("{:?}", loaded.decryptor.secret_key().parameters().id_hex()),
        format!("{record:?}"),
        format!("{credentials:?}"),
        format!("{handler:?}"),
        format!("{context:?}"),
        format!("{decrypted:?}"),
        format!("{config:?}"),
        format!("{confinement:?}"),
        format!("{bundle_err:?}"),
        bundle_err.message.clone(),
    ];
    let hex_payload = hex::encode(&payload[..16]);
    let dec_payload = format!("{:?}", &payload[..8]);
    let dec_payload = dec_payload.trim_matches(|c| c == '[' || c == ']');
    let b64 = cipherinfer_protocol::validate::encode_base64(&payload[..24]);
    for t in &texts {
        assert!(!t.contains(token.expose()), "token in {t}");
        assert!(!t.contains(&hex_payload), "secret hex in {t}");
        assert!(!t.contains(dec_payload), "secret bytes in {t}");
        assert!(!t.contains(&b64[..30]), "secret base64 in {t}");
    }
    assert!(format!("{credentials:?}").contains("redacted"));
    // The key set's public files hold no secret either.
    let public = std::fs::read(scratch.join("keys/kim").join(EVALUATION_KEYS_FILE)).unwrap();
    assert!(
        !public
            .windows(payload.len().min(64))
            .any(|w| w == &payload[..payload.len().min(64)])
    );
}

#[test]
fn identities_are_private_stable_and_checked() {
    let scratch = Scratch::new("identity");
    let store = KeyStore::open(scratch.join("keys")).unwrap();
    let key = store.identity("ivan").unwrap();
    // Made once, then read back: the same identity, in a file only its owner reads.
    assert_eq!(store.identity("ivan").unwrap().public(), key.public());
    assert_ne!(store.identity("olga").unwrap().public(), key.public());
    let file = scratch.join("keys").join(".identities").join("ivan.key");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&scratch.join("keys").join(".identities")), 0o700);
    // The dot directory is never listed as a client.
    assert!(store.list().unwrap().is_empty());
    // Debug never shows the seed.
    let seed: String = key
        .seed_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!format!("{key:?}").contains(&seed));
    // A truncated key file is reported, not replaced.
    std::fs::write(&file, [1u8; 31]).unwrap();
    assert_eq!(
        store.identity("ivan").unwrap_err().error_code,
        ErrorCode::MalformedKeys
    );
    assert_eq!(std::fs::read(&file).unwrap(), vec![1u8; 31]);
    assert!(store.identity("../x").is_err());
    // Server pins: none, then the pinned key; another URL has its own.
    let url = "http://127.0.0.1:9/mcp";
    assert_eq!(store.pinned_server(url).unwrap(), None);
    store.pin_server(url, &key.public()).unwrap();
    assert_eq!(store.pinned_server(url).unwrap(), Some(key.public()));
    assert_eq!(
        store.pinned_server("http://127.0.0.1:10/mcp").unwrap(),
        None
    );
    assert_eq!(
        store
            .pin_server("http://infer.example/mcp", &key.public())
            .unwrap_err()
            .error_code,
        ErrorCode::InsecureTransport
    );
}
