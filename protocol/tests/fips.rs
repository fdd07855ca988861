//! The runtime check agrees with the build: FIPS mode exactly when built with `--features fips`.

use xlattice_protocol::crypto;

#[test]
fn fips_mode_matches_the_build() {
    eprintln!("{}", crypto::describe());
    assert_eq!(crypto::FIPS_BUILD, cfg!(feature = "fips"));
    assert_eq!(crypto::fips_in_force(), cfg!(feature = "fips"));
    assert_eq!(crypto::require_fips(true).is_ok(), cfg!(feature = "fips"));
    assert!(crypto::require_fips(false).is_ok());
}

/// Which of the primitives the handshake and record layer use the FIPS module counts as
/// approved services (its service indicator), and that each works at all in FIPS mode.
#[cfg(feature = "fips")]
mod indicator {
    use aws_lc_fips_sys::{FIPS_service_indicator_after_call, FIPS_service_indicator_before_call};
    use aws_lc_rs::{
        aead::{Aad, LessSafeKey, Nonce, TlsProtocolId, TlsRecordSealingKey, UnboundKey, AES_256_GCM},
        agreement::{self, PrivateKey, UnparsedPublicKey, X25519},
        digest::{digest, SHA256},
        hkdf::{Salt, HKDF_SHA256},
        kem::{DecapsulationKey, EncapsulationKey, ML_KEM_768},
    };
    use xlattice_protocol::{
        record::{ContentType, RecordSealer},
        DecryptionKey, RsaBits, SigningKey,
    };

    fn approved<T>(f: impl FnOnce() -> T) -> (T, bool) {
        let before = unsafe { FIPS_service_indicator_before_call() };
        let out = f();
        let after = unsafe { FIPS_service_indicator_after_call() };
        (out, after != before)
    }

    fn report(name: &str, ok: bool) -> bool {
        eprintln!("{name:<32} approved={ok}");
        ok
    }

    #[test]
    fn service_indicator() {
        let mut all = vec![];
        let (_, ok) = approved(|| digest(&SHA256, b"x"));
        all.push(report("SHA-256", ok));
        let key = [7u8; 32];
        let (sealed, ok) = approved(|| {
            let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
            let mut buf = b"hello".to_vec();
            k.seal_in_place_append_tag(Nonce::assume_unique_for_key([1; 12]), Aad::empty(), &mut buf)
                .unwrap();
            buf
        });
        eprintln!(
            "{:<32} approved={ok} (nonce from outside the module)",
            "AES-256-GCM seal, LessSafeKey"
        );
        let mut sealer = RecordSealer::new(&key);
        for n in 0..3 {
            let (_, ok) = approved(|| {
                let mut out = Vec::new();
                sealer.seal(ContentType::Data, b"hello", &mut out).unwrap();
            });
            all.push(report(&format!("record layer seal #{n}"), ok));
        }
        let (_, ok) = approved(|| {
            let mut k = TlsRecordSealingKey::new(&AES_256_GCM, TlsProtocolId::TLS13, &key).unwrap();
            let mut buf = b"hello".to_vec();
            let mut nonce = [0; 12];
            nonce[11] = 2;
            k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
                .unwrap();
        });
        all.push(report("AES-256-GCM seal, TLS 1.3 one-shot", ok));
        let (_, ok) = approved(|| {
            let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
            let mut buf = sealed.clone();
            k.open_in_place(Nonce::assume_unique_for_key([1; 12]), Aad::empty(), &mut buf)
                .unwrap()
                .len()
        });
        all.push(report("AES-256-GCM open", ok));
        let (_, ok) = approved(|| {
            let prk = Salt::new(HKDF_SHA256, &[1; 32]).extract(&[2; 64]);
            let mut out = [0u8; 32];
            prk.expand(&[b"info"], HKDF_SHA256).unwrap().fill(&mut out).unwrap();
        });
        all.push(report("HKDF-SHA256 extract+expand", ok));
        let (_, ok) = approved(|| {
            let a = PrivateKey::from_private_key(&X25519, &[3; 32]).unwrap();
            let b = PrivateKey::from_private_key(&X25519, &[4; 32]).unwrap();
            let pb = b.compute_public_key().unwrap();
            agreement::agree(&a, UnparsedPublicKey::new(&X25519, pb.as_ref()), (), |s| Ok(s.to_vec())).unwrap()
        });
        eprintln!(
            "{:<32} approved={ok} (works; not expected to be approved)",
            "X25519 agree"
        );
        let (dk, ok) = approved(|| DecapsulationKey::generate(&ML_KEM_768).unwrap());
        all.push(report("ML-KEM-768 keygen", ok));
        let ek_bytes = dk.encapsulation_key().unwrap().key_bytes().unwrap().as_ref().to_vec();
        let ((ct, ss1), ok) = approved(|| {
            EncapsulationKey::new(&ML_KEM_768, &ek_bytes)
                .unwrap()
                .encapsulate()
                .unwrap()
        });
        all.push(report("ML-KEM-768 encapsulate", ok));
        let (ss2, ok) = approved(|| dk.decapsulate(ct.as_ref().into()).unwrap());
        all.push(report("ML-KEM-768 decapsulate", ok));
        assert_eq!(ss1.as_ref(), ss2.as_ref());
        for bits in [RsaBits::B2048, RsaBits::B3072, RsaBits::B4096] {
            let (ck, ok) = approved(|| DecryptionKey::generate(bits).unwrap());
            all.push(report(&format!("RSA-{bits:?} keygen (OAEP key)"), ok));
            let (sk, ok) = approved(|| SigningKey::generate(bits).unwrap());
            all.push(report(&format!("RSA-{bits:?} keygen (PSS key)"), ok));
            let (ct, ok) = approved(|| ck.public_key().encrypt_oaep(b"secret", b"label"));
            all.push(report(&format!("RSA-{bits:?} OAEP encrypt"), ok));
            let (pt, ok) = approved(|| ck.decrypt_oaep(&ct, b"label").unwrap());
            all.push(report(&format!("RSA-{bits:?} OAEP decrypt"), ok));
            assert_eq!(&pt[..], b"secret");
            let (sig, ok) = approved(|| sk.sign_pss(b"message"));
            all.push(report(&format!("RSA-{bits:?} PSS sign"), ok));
            let (v, ok) = approved(|| sk.public_key().verify_pss(b"message", &sig));
            all.push(report(&format!("RSA-{bits:?} PSS verify"), ok));
            assert!(v);
        }
        assert!(
            all.iter().all(|ok| *ok),
            "a primitive the protocol relies on is not approved"
        );
    }
}
