//! `signet dev`: everything a first run needs, generated where missing in
//! one folder: a PKI, signing keys for a `publisher` and a `subscriber`,
//! an example policy, and the two client files. Then the broker runs on it.

use crate::files::write_public;
use crate::{AdminError, keys, pki};
use signet_proto::PublicKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The dev folder's default location.
pub const DEFAULT_DIR: &str = "dev-data";
/// The dev broker's default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// The dev broker's default metrics address.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";

/// The example schema the dev policy puts on `orders.created`.
pub const EXAMPLE_SCHEMA: &str = include_str!("../../schemas/orders.created.json");

/// What `ensure` produced.
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The folder, absolute.
    pub dir: PathBuf,
    /// The policy file.
    pub policy: PathBuf,
    /// Client file of the `publisher` principal (may publish to `orders.>`).
    pub publisher: PathBuf,
    /// Client file of the `subscriber` principal (may subscribe to `orders.>`).
    pub subscriber: PathBuf,
}

/// The text of a client file. Paths are taken as given (relative ones
/// resolve against the client file's folder).
pub fn client_file_text(
    broker: &str,
    server_name: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    signing_key: Option<&Path>,
    trust: &[PublicKey],
) -> String {
    let mut text = format!(
        "# Signet client file.\nbroker = {broker:?}\nserver_name = {server_name:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string()
    );
    if let Some(signing_key) = signing_key {
        text.push_str(&format!(
            "signing_key = {:?}\n",
            signing_key.display().to_string()
        ));
    }
    text.push_str(
        "\n# Publisher keys this client accepts: key id = public key (every topic), or\n\
         # key id = { key = \"ed25519:...\", topics = [\"orders.>\"] } (those topics only).\n[trust]\n",
    );
    for key in trust {
        text.push_str(&format!(
            "{:?} = {:?}\n",
            key.id().to_hex(),
            key.to_string()
        ));
    }
    text
}

fn dev_policy(
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    publisher: &PublicKey,
    subscriber: &PublicKey,
) -> String {
    let metrics = metrics.map_or(String::new(), |m| format!("metrics = \"{m}\"\n"));
    format!(
        r#"# Signet dev policy, written by `signet dev`. Edit freely.

[broker]
listen = "{listen}"
data_dir = "data"
max_message_bytes = 1048576
identity_key = "pki/broker.ed25519"
{metrics}
[tls]
ca = "pki/ca.crt"
cert = "pki/broker.crt"
key = "pki/broker.key"

[audit]
path = "data/audit.log"

[[role]]
name = "orders-writer"
publish = ["orders.>"]

[[role]]
name = "orders-reader"
subscribe = ["orders.>"]

[[principal]]
name = "publisher"
keys = ["{publisher}"]
roles = ["orders-writer"]

[[principal]]
name = "subscriber"
keys = ["{subscriber}"]
roles = ["orders-reader"]

[[topic]]
name = "orders.created"
schema = "schemas/orders.created.json"

[[topic]]
name = "orders.shipped"

[[topic]]
name = "orders.>"
"#
    )
}

/// Generates what is missing in `dir` and returns the paths.
pub fn ensure(
    dir: &Path,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
) -> Result<DevFiles, AdminError> {
    std::fs::create_dir_all(dir).map_err(AdminError::io("creating", dir))?;
    let dir = dir
        .canonicalize()
        .map_err(AdminError::io("resolving", dir))?;
    let pki_dir = dir.join("pki");
    if !pki_dir.join("ca.crt").exists() {
        pki::init(&pki_dir, &[])?;
    }
    pki::ensure_identity(&pki_dir)?;
    let mut keys = Vec::new();
    for principal in ["publisher", "subscriber"] {
        if !pki_dir
            .join("clients")
            .join(format!("{principal}.crt"))
            .exists()
        {
            pki::issue(&pki_dir, principal)?;
        }
        let key_path = dir.join("keys").join(format!("{principal}.ed25519"));
        let public = if key_path.exists() {
            keys::public_of(&key_path)?
        } else {
            keys::generate_ed25519(&key_path)?
        };
        keys.push(public);
    }
    let schema = dir.join("schemas").join("orders.created.json");
    if !schema.exists() {
        write_public(&schema, EXAMPLE_SCHEMA.as_bytes())?;
    }
    let policy = dir.join("signet.toml");
    if !policy.exists() {
        write_public(
            &policy,
            dev_policy(listen, metrics, &keys[0], &keys[1]).as_bytes(),
        )?;
    }
    let mut client_files = Vec::new();
    for principal in ["publisher", "subscriber"] {
        let path = dir.join(format!("{principal}.toml"));
        if !path.exists() {
            let text = client_file_text(
                &listen.to_string(),
                "localhost",
                Path::new("pki/ca.crt"),
                &Path::new("pki/clients").join(format!("{principal}.crt")),
                &Path::new("pki/clients").join(format!("{principal}.key")),
                Some(&Path::new("keys").join(format!("{principal}.ed25519"))),
                &keys,
            );
            write_public(&path, text.as_bytes())?;
        }
        client_files.push(path);
    }
    Ok(DevFiles {
        policy,
        publisher: client_files[0].clone(),
        subscriber: client_files[1].clone(),
        dir,
    })
}
