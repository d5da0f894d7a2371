//! `signet pki`: a certificate authority, the broker's certificate and
//! identity key, and client certificates naming principals (URI SAN
//! `signet://principal/<name>`, which the broker requires; the name is also
//! the subject CN, which it never uses). TLS keys are ECDSA P-256, written
//! at mode 0600. Built on `rcgen`.
//!
//! Layout of a PKI folder: `ca.crt`, `ca.key`, `broker.crt`, `broker.key`,
//! `broker.ed25519` (the broker's identity key, PKCS#8, mode 0600, which
//! signs audit checkpoints) and `broker.ed25519.pub` (its public key as
//! text, for client files and auditors), `clients/<principal>.crt`,
//! `clients/<principal>.key`.

use crate::files::{write_public, write_secret};
use crate::{AdminError, keys};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use signet_proto::PublicKey;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// How long the CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long broker and client certificates are valid.
pub const LEAF_VALIDITY_DAYS: i64 = 825;

/// Paths of a client's certificate and key.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// The broker's identity key file in a PKI folder.
pub fn identity_key_path(dir: &Path) -> PathBuf {
    dir.join("broker.ed25519")
}

/// The file holding the identity key's public half, as text.
pub fn identity_public_path(dir: &Path) -> PathBuf {
    dir.join("broker.ed25519.pub")
}

/// Generates the broker's identity key in `dir` (and its `.pub`), unless
/// there is one; returns its public key.
pub fn ensure_identity(dir: &Path) -> Result<PublicKey, AdminError> {
    let path = identity_key_path(dir);
    let public = if path.exists() {
        keys::public_of(&path)?
    } else {
        keys::generate_ed25519(&path)?
    };
    let text = identity_public_path(dir);
    if !text.exists() {
        write_public(&text, format!("{public}\n").as_bytes())?;
    }
    Ok(public)
}

/// Creates a CA, a broker certificate for `broker_names` and the broker's
/// identity key in `dir`.
pub fn init(dir: &Path, broker_names: &[String]) -> Result<(), AdminError> {
    if dir.join("ca.crt").exists() {
        return Err(AdminError::CaExists {
            dir: dir.to_owned(),
        });
    }
    let names: Vec<String> = if broker_names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into()]
    } else {
        broker_names.to_vec()
    };
    let ca_key = KeyPair::generate().map_err(AdminError::cert("generating the CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "Signet CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, CA_VALIDITY_DAYS);
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(AdminError::cert("self-signing the CA"))?;
    write_secret(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    write_public(&dir.join("ca.crt"), ca_cert.pem().as_bytes())?;

    let broker_key = KeyPair::generate()?;
    let mut broker =
        CertificateParams::new(names.clone()).map_err(AdminError::cert("broker names"))?;
    broker
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    broker.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    broker.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut broker, LEAF_VALIDITY_DAYS);
    let broker_cert = broker.signed_by(&broker_key, &ca_cert, &ca_key)?;
    write_secret(
        &dir.join("broker.key"),
        broker_key.serialize_pem().as_bytes(),
    )?;
    write_public(&dir.join("broker.crt"), broker_cert.pem().as_bytes())?;
    ensure_identity(dir)?;
    Ok(())
}

/// Issues a client certificate for `principal`, signed by the CA in `dir`.
pub fn issue(dir: &Path, principal: &str) -> Result<ClientFiles, AdminError> {
    let now = OffsetDateTime::now_utc();
    issue_with_validity(
        dir,
        principal,
        now - Duration::hours(1),
        now + Duration::days(LEAF_VALIDITY_DAYS),
    )
}

/// Issues a client certificate with explicit validity (tests use this for
/// expired certificates).
pub fn issue_with_validity(
    dir: &Path,
    principal: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<ClientFiles, AdminError> {
    if principal.is_empty()
        || principal.len() > 128
        || !principal
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err(AdminError::BadPrincipal(principal.to_owned()));
    }
    let (ca_cert, ca_key) = load_ca(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, principal);
    params.subject_alt_names = vec![SanType::URI(
        format!("signet://principal/{principal}")
            .try_into()
            .map_err(AdminError::cert("principal URI"))?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    let files = ClientFiles {
        cert: dir.join("clients").join(format!("{principal}.crt")),
        key: dir.join("clients").join(format!("{principal}.key")),
    };
    write_secret(&files.key, key.serialize_pem().as_bytes())?;
    write_public(&files.cert, cert.pem().as_bytes())?;
    Ok(files)
}

/// The CA certificate and key in `dir` (`ca.crt`, `ca.key`), to sign with.
fn load_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair), AdminError> {
    let ca_pem = std::fs::read_to_string(dir.join("ca.crt"))
        .map_err(AdminError::io("reading", dir.join("ca.crt")))?;
    let ca_key_pem = std::fs::read_to_string(dir.join("ca.key"))
        .map_err(AdminError::io("reading", dir.join("ca.key")))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(AdminError::cert("reading the CA key"))?;
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(AdminError::cert("reading the CA certificate"))?
        .self_signed(&ca_key)?;
    Ok((ca_cert, ca_key))
}

/// Issues node `id`'s certificate, signed by the CA in `dir`, as
/// `nodes/node<id>.crt` and `.key`: one certificate for both of the node's
/// roles, its client listener (DNS `localhost`, IP `127.0.0.1`) and the
/// node transport (DNS `node-<id>.signet`, URI SAN `signet://node/<id>`,
/// server and client authentication). It names no principal, so it
/// cannot connect as a client.
pub fn issue_node(dir: &Path, id: u64) -> Result<ClientFiles, AdminError> {
    let (ca_cert, ca_key) = load_ca(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        format!("node-{id}.signet"),
    ])
    .map_err(AdminError::cert("node names"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("signet node {id}"));
    params.subject_alt_names.push(SanType::URI(
        format!("signet://node/{id}")
            .try_into()
            .map_err(AdminError::cert("node URI"))?,
    ));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, LEAF_VALIDITY_DAYS);
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    let files = ClientFiles {
        cert: dir.join("nodes").join(format!("node{id}.crt")),
        key: dir.join("nodes").join(format!("node{id}.key")),
    };
    write_secret(&files.key, key.serialize_pem().as_bytes())?;
    write_public(&files.cert, cert.pem().as_bytes())?;
    Ok(files)
}
