//! RFC 9180 test vector (Appendix A.2: base mode, DHKEM(X25519,
//! HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305: the suite Signet uses),
//! checked against the HPKE implementation Signet calls.
#![cfg(feature = "encrypt")]

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, Serializable};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
const IKM_R: &str = "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df";
const IKM_E: &str = "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b";
const SK_RM: &str = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb";
const PK_RM: &str = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
const PK_EM: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
const ENC: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
const AAD_0: &str = "436f756e742d30";
const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
const CT_0: &str =
    "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28";

#[test]
fn rfc9180_x25519_sha256_chacha20_base_vector() {
    let (sk_r, pk_r) = X25519HkdfSha256::derive_keypair(&h(IKM_R));
    assert_eq!(sk_r.to_bytes().to_vec(), h(SK_RM));
    assert_eq!(pk_r.to_bytes().to_vec(), h(PK_RM));
    let (_, pk_e) = X25519HkdfSha256::derive_keypair(&h(IKM_E));
    assert_eq!(pk_e.to_bytes().to_vec(), h(PK_EM));
    let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&h(ENC)).unwrap();
    let pt = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk_r,
        &enc,
        &h(INFO),
        &h(CT_0),
        &h(AAD_0),
    )
    .unwrap();
    assert_eq!(pt, h(PT));
    // One flipped ciphertext bit fails.
    let mut bad = h(CT_0);
    bad[0] ^= 1;
    assert!(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &sk_r,
            &enc,
            &h(INFO),
            &bad,
            &h(AAD_0),
        )
        .is_err()
    );
}
