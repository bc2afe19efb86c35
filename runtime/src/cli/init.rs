//! `conclave init`: the config files of a local cluster, and with `--secure` its CA,
//! certificates, cluster id and tokens.

use crate::config::{
    ClusterSecretString, Config, HttpTlsSection, MemberConfig, TlsSection, TokensSection,
};
use anyhow::{bail, Context};
use conclave_core::ids::NodeId;
use rand::RngCore;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configs of an `nodes`-node loopback cluster in `dir`: node i listens on
/// `base_port + i` (transport) and `base_port + 100 + i` (HTTP), keeps its data in
/// `dir/data/n{i}` (absolute, so the node may be started from any directory) and starts with
/// every node as a voter. Returns `(dir/n{i}.toml, config)` pairs.
pub fn cluster_configs(
    nodes: u16,
    dir: &Path,
    base_port: u16,
) -> anyhow::Result<Vec<(PathBuf, Config)>> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let highest = u32::from(base_port) + 100 + u32::from(nodes);
    if highest > u32::from(u16::MAX) {
        bail!("--base-port {base_port} is too high for {nodes} nodes: HTTP port {highest} would exceed 65535");
    }
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot resolve directory {}", dir.display()))?;
    let port = |offset: u32| -> u16 {
        // Bounded by the check above.
        u16::try_from(u32::from(base_port) + offset).unwrap_or(u16::MAX)
    };
    let members: Vec<MemberConfig> = (1..=u32::from(nodes))
        .map(|i| MemberConfig {
            id: NodeId::new(u64::from(i)),
            addr: SocketAddr::from(([127, 0, 0, 1], port(i))),
            http: SocketAddr::from(([127, 0, 0, 1], port(100 + i))),
        })
        .collect();
    let mut out = Vec::with_capacity(members.len());
    let secret = random_cluster_secret();
    for mut config in Config::local_cluster(&members, &dir.join("data")) {
        config.cluster.secret = Some(secret.clone());
        let id = config.node.id;
        config
            .validate()
            .with_context(|| format!("generated config of node {id} is invalid"))?;
        out.push((dir.join(format!("n{id}.toml")), config));
    }
    Ok(out)
}

/// A fresh `[cluster] secret`: 32 random bytes as 64 hex digits, shared by every node of the
/// cluster `init` writes (the transport handshake's HMAC key; see docs/transport.md).
pub fn random_cluster_secret() -> ClusterSecretString {
    // The operating system's generator (through ring), 16 bytes at a time.
    let (a, b) = (
        conclave_transport::handshake::fresh_nonce(),
        conclave_transport::handshake::fresh_nonce(),
    );
    ClusterSecretString(a.iter().chain(&b).map(|b| format!("{b:02x}")).collect())
}

/// The DNS name every node's certificate carries (the transport checks that a peer's
/// certificate names the id it claims).
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}.conclave")
}

/// What `init --secure` writes besides the configs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecureFiles {
    /// The cluster CA's certificate (`--ca` of the CLI).
    pub ca_cert: PathBuf,
    /// The CA's private key (to issue certificates for nodes added later).
    pub ca_key: PathBuf,
    /// The admin token.
    pub admin_token: PathBuf,
    /// The client token.
    pub client_token: PathBuf,
}

impl SecureFiles {
    /// Where `init --secure` puts them under `dir`.
    pub fn in_dir(dir: &Path) -> SecureFiles {
        SecureFiles {
            ca_cert: dir.join("certs").join("ca.crt"),
            ca_key: dir.join("certs").join("ca.key"),
            admin_token: dir.join("tokens").join("admin.token"),
            client_token: dir.join("tokens").join("client.token"),
        }
    }
}

/// `n` random bytes as lowercase hex (from the operating system's generator via `rand`).
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to a new file readable by its owner only (0600 from creation, so the
/// secret is never readable by others, not even briefly).
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // An existing file (--force) keeps its old mode on open: tighten it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Issues the certificate of the node `config` describes, signed by `ca`, into
/// `certs/n{id}.crt` and `certs/n{id}.key` (0600): it names `node-{id}.conclave` (its identity
/// on the transport), `localhost` and the IPs of its addresses (what clients and other nodes
/// dial). Returns the two paths.
fn issue_node_certificate(
    ca: &rcgen::Issuer<'_, rcgen::KeyPair>,
    config: &Config,
    certs: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
    };
    let id = config.node.id;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, node_dns_name(id));
    let mut sans = vec![
        SanType::DnsName(
            node_dns_name(id)
                .try_into()
                .context("node DNS name is not a valid SAN")?,
        ),
        SanType::DnsName("localhost".try_into().context("localhost SAN")?),
    ];
    for ip in [config.node.listen.ip(), config.node.http.ip()] {
        if !sans.contains(&SanType::IpAddress(ip)) {
            sans.push(SanType::IpAddress(ip));
        }
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().context("cannot generate a node key")?;
    let cert = params
        .signed_by(&key, ca)
        .with_context(|| format!("cannot sign node {id}'s certificate"))?;
    let cert_path = certs.join(format!("n{id}.crt"));
    let key_path = certs.join(format!("n{id}.key"));
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    Ok((cert_path, key_path))
}

/// What `conclave init --join` needs to write the configuration of a node that joins an
/// existing cluster.
#[derive(Clone, Debug)]
pub struct JoinSpec {
    /// The new node's id (not used by any member, past or present).
    pub id: NodeId,
    /// Where its config goes (`DIR/n{id}.toml`, data in `DIR/data/n{id}`).
    pub dir: PathBuf,
    /// Its transport address.
    pub listen: SocketAddr,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Transport addresses of existing members to join gossip through.
    pub seeds: Vec<SocketAddr>,
    /// An existing member's config: the cluster id and secret, the TLS CA, the API's tokens
    /// and the cluster-wide settings (timing, limits, engine) are taken from it.
    pub from: Option<PathBuf>,
    /// A file holding the cluster secret (without `from`; the secret never goes on a command
    /// line, where other users of the machine could read it).
    pub secret_file: Option<PathBuf>,
    /// The cluster id (without `from`). Default `conclave`.
    pub cluster_id: Option<String>,
    /// The cluster CA's private key (`certs/ca.key` of `init --secure`): with `from` naming a
    /// cluster that uses TLS, this node's certificate is issued with it, next to the config.
    pub ca_key: Option<PathBuf>,
    /// Overwrite existing files.
    pub force: bool,
}

/// Writes the configuration of a node that joins an existing cluster (`conclave init
/// --join`): `cluster.join = true`, no initial members, the given seeds, and — taken from
/// `from` — everything the cluster shares. A cluster secret ends up in the file, so it is
/// written readable by its owner only. Returns the path and the config.
pub fn write_join(spec: &JoinSpec) -> anyhow::Result<(PathBuf, Config)> {
    if spec.id == NodeId::NONE {
        bail!("--id must not be 0");
    }
    if spec.seeds.is_empty() {
        bail!("--seeds needs at least one address of an existing member");
    }
    let dir = std::path::absolute(&spec.dir)
        .with_context(|| format!("cannot resolve directory {}", spec.dir.display()))?;
    let mut config = match &spec.from {
        Some(from) => {
            if spec.secret_file.is_some() || spec.cluster_id.is_some() {
                bail!("--from already gives the cluster id and secret: drop --secret-file and --cluster-id");
            }
            Config::load(from)
                .with_context(|| format!("cannot use {} as the cluster's config", from.display()))?
        }
        None => {
            let mut c = Config::default();
            if let Some(id) = &spec.cluster_id {
                c.cluster.id.clone_from(id);
            }
            if let Some(path) = &spec.secret_file {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the secret file {}", path.display()))?;
                c.cluster.secret = Some(ClusterSecretString(text.trim().to_owned()));
            }
            if spec.ca_key.is_some() {
                bail!("--ca-key needs --from (the cluster CA's certificate is named by the [tls] section of an existing member's config)");
            }
            c
        }
    };
    config.node.id = spec.id;
    config.node.listen = spec.listen;
    config.node.http = spec.http;
    config.node.data_dir = dir.join("data").join(format!("n{}", spec.id));
    config.cluster.initial_members.clear();
    config.cluster.seeds.clone_from(&spec.seeds);
    config.cluster.join = true;
    let path = dir.join(format!("n{}.toml", spec.id));
    let certs = dir.join("certs");
    let cert_files = [
        certs.join(format!("n{}.crt", spec.id)),
        certs.join(format!("n{}.key", spec.id)),
    ];
    let tls = config.tls.is_some() || config.http.tls.is_some();
    if !spec.force {
        let mut existing = vec![&path];
        if tls {
            existing.extend(cert_files.iter());
        }
        let existing: Vec<String> = existing
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "refusing to overwrite {} (use --force)",
                existing.join(", ")
            );
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if tls {
        // The member's own certificate is of no use here: this node needs one naming it.
        let Some(ca_key) = &spec.ca_key else {
            bail!(
                "the cluster uses TLS, so node {} needs a certificate of its own: pass --ca-key \
                 (the cluster CA's key, certs/ca.key of `init --secure`) to issue it, or write \
                 its [tls] and [http.tls] sections yourself",
                spec.id
            );
        };
        let ca_cert = config
            .tls
            .as_ref()
            .map(|t| t.ca.clone())
            .or_else(|| config.http.tls.as_ref().and_then(|t| t.ca.clone()))
            .context("the cluster's config names no CA certificate ([tls] ca or [http.tls] ca)")?;
        let key_pem = std::fs::read_to_string(ca_key)
            .with_context(|| format!("cannot read the CA key {}", ca_key.display()))?;
        let cert_pem = std::fs::read_to_string(&ca_cert)
            .with_context(|| format!("cannot read the CA certificate {}", ca_cert.display()))?;
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", ca_key.display()))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{} is not a PEM certificate", ca_cert.display()))?;
        std::fs::create_dir_all(&certs)
            .with_context(|| format!("cannot create {}", certs.display()))?;
        let (cert, key) = issue_node_certificate(&issuer, &config, &certs)?;
        if let Some(t) = config.tls.as_mut() {
            t.cert.clone_from(&cert);
            t.key.clone_from(&key);
        }
        if let Some(t) = config.http.tls.as_mut() {
            t.cert = cert;
            t.key = key;
        }
    }
    config
        .validate()
        .with_context(|| format!("the config of joining node {} is invalid", spec.id))?;
    let body = config.to_toml().context("cannot serialise the config")?;
    let text = format!(
        "# conclave node {}, joining an existing cluster; written by `conclave init --join`.\n\
         # It starts with no membership and waits until a member adds it\n\
         # (`conclave member add {} --addr {} --http {}`).\n\n{body}",
        spec.id, spec.id, spec.listen, spec.http
    );
    write_private(&path, text.as_bytes())?;
    Ok((path, config))
}

/// Makes `configs` secure and writes the CA, certificates and tokens they name: a random
/// cluster id, mutual TLS between nodes, HTTPS and tokens for the API. Node `i`'s certificate
/// names `node-{i}.conclave` (its identity on the transport), `localhost` and the IPs of its
/// addresses (what clients and other nodes dial).
fn secure_cluster(configs: &mut [(PathBuf, Config)], dir: &Path) -> anyhow::Result<SecureFiles> {
    use rcgen::KeyUsagePurpose;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let files = SecureFiles::in_dir(dir);
    let certs = dir.join("certs");
    let tokens = dir.join("tokens");
    for d in [&certs, &tokens] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let cluster_id = format!("conclave-{}", random_hex(8));
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster_id} CA"));
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)
        .context("cannot create the CA certificate")?;
    let issuer: &rcgen::Issuer<'_, KeyPair> = &ca;
    std::fs::write(&files.ca_cert, ca.pem())
        .with_context(|| format!("cannot write {}", files.ca_cert.display()))?;
    write_private(&files.ca_key, ca_key_pem.as_bytes())?;
    write_private(
        &files.admin_token,
        format!("{}\n", random_hex(32)).as_bytes(),
    )?;
    write_private(
        &files.client_token,
        format!("{}\n", random_hex(32)).as_bytes(),
    )?;
    for (_, config) in configs.iter_mut() {
        let id = config.node.id;
        let (cert_path, key_path) = issue_node_certificate(issuer, config, &certs)?;
        config.cluster.id.clone_from(&cluster_id);
        config.tls = Some(TlsSection {
            cert: cert_path.clone(),
            key: key_path.clone(),
            ca: files.ca_cert.clone(),
        });
        config.http.tls = Some(HttpTlsSection {
            cert: cert_path,
            key: key_path,
            ca: Some(files.ca_cert.clone()),
        });
        config.http.tokens = Some(TokensSection {
            admin_file: Some(files.admin_token.clone()),
            client_file: Some(files.client_token.clone()),
            ..TokensSection::default()
        });
        config
            .validate()
            .with_context(|| format!("generated secure config of node {id} is invalid"))?;
    }
    Ok(files)
}

/// Writes [`cluster_configs`] to disk. Refuses to overwrite any existing file unless `force`;
/// the check covers every file before the first is written, so a refusal writes nothing.
pub fn write_cluster(
    nodes: u16,
    dir: &Path,
    base_port: u16,
    force: bool,
) -> anyhow::Result<Vec<(PathBuf, Config)>> {
    Ok(write_cluster_with(nodes, dir, base_port, force, false)?.0)
}

/// What [`write_cluster_with`] wrote: `(path, config)` per node and, when secure, the CA and
/// token files.
pub type Written = (Vec<(PathBuf, Config)>, Option<SecureFiles>);

/// Like [`write_cluster`]; with `secure`, also a CA, per-node certificates and keys, a random
/// cluster id and an admin and a client token (secrets 0600), and configs that use them.
pub fn write_cluster_with(
    nodes: u16,
    dir: &Path,
    base_port: u16,
    force: bool,
    secure: bool,
) -> anyhow::Result<Written> {
    let mut configs = cluster_configs(nodes, dir, base_port)?;
    if !force {
        let abs = std::path::absolute(dir)
            .with_context(|| format!("cannot resolve directory {}", dir.display()))?;
        let secure_paths = if secure {
            let f = SecureFiles::in_dir(&abs);
            vec![f.ca_cert, f.ca_key, f.admin_token, f.client_token]
        } else {
            Vec::new()
        };
        let existing: Vec<String> = configs
            .iter()
            .map(|(p, _)| p)
            .chain(secure_paths.iter())
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "refusing to overwrite {} (use --force)",
                existing.join(", ")
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let secure_files = if secure {
        let abs = std::path::absolute(dir)
            .with_context(|| format!("cannot resolve directory {}", dir.display()))?;
        Some(secure_cluster(&mut configs, &abs)?)
    } else {
        None
    };
    for (path, config) in &configs {
        let body = config.to_toml().context("cannot serialise the config")?;
        let text = format!(
            "# conclave node {} of {nodes}, written by `conclave init`.\n# Every key is documented in docs/DESIGN.md §9.\n\n{body}",
            config.node.id
        );
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok((configs, secure_files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_base() {
        let configs = cluster_configs(3, Path::new("/tmp/x"), 9000).unwrap();
        assert_eq!(configs.len(), 3);
        let (path, c) = &configs[1];
        assert_eq!(path, Path::new("/tmp/x/n2.toml"));
        assert_eq!(c.node.id, NodeId::new(2));
        assert_eq!(c.node.listen.port(), 9002);
        assert_eq!(c.node.http.port(), 9102);
        assert_eq!(c.node.data_dir, Path::new("/tmp/x/data/n2"));
        assert_eq!(c.cluster.initial_members.len(), 3);
        assert_eq!(c.cluster.initial_members[2].http.port(), 9103);
        // One random secret, shared by the cluster, different for every cluster.
        let secret = c.cluster.secret.clone().unwrap();
        assert_eq!(secret.0.len(), 64);
        assert!(configs
            .iter()
            .all(|(_, c)| c.cluster.secret.as_ref() == Some(&secret)));
        let again = cluster_configs(3, Path::new("/tmp/x"), 9000).unwrap();
        assert_ne!(again[0].1.cluster.secret, Some(secret));
    }

    #[test]
    fn acceptance4_secure_init_writes_ca_certs_tokens_and_configs() {
        let dir = tempfile::tempdir().unwrap();
        let (configs, files) = write_cluster_with(3, dir.path(), 9000, false, true).unwrap();
        let files = files.unwrap();
        let ids: std::collections::BTreeSet<&str> =
            configs.iter().map(|(_, c)| c.cluster.id.as_str()).collect();
        assert_eq!(ids.len(), 1, "one cluster id");
        let id = *ids.iter().next().unwrap();
        assert!(
            id.starts_with("conclave-") && id.len() == "conclave-".len() + 16,
            "{id}"
        );
        for (path, c) in &configs {
            let loaded = Config::load(path).unwrap();
            assert_eq!(&loaded, c);
            let tls = c.tls.as_ref().unwrap();
            assert!(tls.cert.ends_with(format!("certs/n{}.crt", c.node.id)));
            assert_eq!(c.http.tls.as_ref().unwrap().cert, tls.cert);
            let tokens = c.http.tokens.as_ref().unwrap();
            assert_eq!(
                tokens.admin_file.as_deref(),
                Some(files.admin_token.as_path())
            );
            // The certificate loads as a server certificate with its key, and a client
            // trusting the CA accepts it.
            crate::http::tls::server_config(&tls.cert, &tls.key).unwrap();
        }
        crate::http::tls::client_config(&files.ca_cert).unwrap();
        let admin = std::fs::read_to_string(&files.admin_token).unwrap();
        let client = std::fs::read_to_string(&files.client_token).unwrap();
        assert_eq!(admin.trim().len(), 64);
        assert_ne!(admin, client);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for secret in [&files.admin_token, &files.client_token, &files.ca_key] {
                let mode = std::fs::metadata(secret).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", secret.display());
            }
            let key = &configs[0].1.tls.as_ref().unwrap().key;
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Tokens load with the roles the configs give them.
        let auth = crate::http::Auth::from_config(&configs[0].1.http)
            .unwrap()
            .unwrap();
        let req = actix_web::test::TestRequest::default()
            .method(actix_web::http::Method::POST)
            .uri("/v1/cluster/transfer-leader")
            .insert_header(("authorization", format!("Bearer {}", client.trim())))
            .to_http_request();
        assert_eq!(auth.check(&req).unwrap_err().code(), "forbidden");
        // A second init without --force writes nothing.
        let e = write_cluster_with(3, dir.path(), 9000, false, true).unwrap_err();
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        assert_eq!(std::fs::read_to_string(&files.admin_token).unwrap(), admin);
    }

    fn join_spec(dir: &Path, from: Option<PathBuf>) -> JoinSpec {
        JoinSpec {
            id: NodeId::new(4),
            dir: dir.to_owned(),
            listen: "127.0.0.1:9004".parse().unwrap(),
            http: "127.0.0.1:9104".parse().unwrap(),
            seeds: vec!["127.0.0.1:9001".parse().unwrap()],
            from,
            secret_file: None,
            cluster_id: None,
            ca_key: None,
            force: false,
        }
    }

    #[test]
    fn join_from_a_secure_member_takes_the_cluster_settings_and_issues_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (configs, files) = write_cluster_with(3, dir.path(), 9000, false, true).unwrap();
        let files = files.unwrap();
        let (member_path, member) = &configs[0];
        let spec = join_spec(dir.path(), Some(member_path.clone()));
        // A TLS cluster without the CA key: refused, nothing written.
        let e = write_join(&spec).unwrap_err();
        assert!(format!("{e:#}").contains("--ca-key"), "{e:#}");
        assert!(!dir.path().join("n4.toml").exists());
        let spec = JoinSpec {
            ca_key: Some(files.ca_key.clone()),
            ..spec
        };
        let (path, c) = write_join(&spec).unwrap();
        assert_eq!(path, dir.path().join("n4.toml"));
        assert_eq!(Config::load(&path).unwrap(), c);
        assert_eq!(c.node.id, NodeId::new(4));
        assert!(c.cluster.join);
        assert!(c.cluster.initial_members.is_empty());
        assert_eq!(c.cluster.seeds, spec.seeds);
        assert!(c.bootstrap_members().is_empty());
        assert_eq!(c.cluster.id, member.cluster.id);
        assert_eq!(c.cluster.secret, member.cluster.secret);
        assert_eq!(c.http.tokens, member.http.tokens);
        assert_eq!(c.node.data_dir, dir.path().join("data").join("n4"));
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.ca, files.ca_cert);
        assert!(tls.cert.ends_with("certs/n4.crt"), "{}", tls.cert.display());
        assert_eq!(c.http.tls.as_ref().unwrap().cert, tls.cert);
        // The certificate names node 4 (the transport checks it) and chains to the CA.
        let pem = std::fs::read(&tls.cert).unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .unwrap()
            .unwrap();
        assert!(conclave_transport::auth::cert_names_node(
            &der,
            NodeId::new(4)
        ));
        assert!(!conclave_transport::auth::cert_names_node(
            &der,
            NodeId::new(1)
        ));
        let roots = {
            let ca = std::fs::read(&files.ca_cert).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut ca.as_slice()) {
                roots.add(c.unwrap()).unwrap();
            }
            std::sync::Arc::new(roots)
        };
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots,
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
            .expect("node 4's certificate chains to the cluster CA");
        crate::http::tls::server_config(&tls.cert, &tls.key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for secret in [&path, &tls.key] {
                let mode = std::fs::metadata(secret).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", secret.display());
            }
        }
        // Again without --force: refused.
        let e = write_join(&spec).unwrap_err();
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    }

    #[test]
    fn join_without_from_reads_the_secret_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a-cluster-secret-0123456789\n").unwrap();
        let spec = JoinSpec {
            secret_file: Some(secret.clone()),
            cluster_id: Some("prod".to_owned()),
            ..join_spec(dir.path(), None)
        };
        let (_, c) = write_join(&spec).unwrap();
        assert_eq!(c.cluster.id, "prod");
        assert_eq!(
            c.cluster.secret,
            Some(ClusterSecretString(
                "a-cluster-secret-0123456789".to_owned()
            ))
        );
        assert!(c.tls.is_none() && c.cluster.join);
        // Refusals: a CA key without a member's config, id 0, no seeds, a short secret.
        let dir2 = tempfile::tempdir().unwrap();
        let base = join_spec(dir2.path(), None);
        let bad = [
            JoinSpec {
                ca_key: Some(secret.clone()),
                ..base.clone()
            },
            JoinSpec {
                id: NodeId::NONE,
                ..base.clone()
            },
            JoinSpec {
                seeds: vec![],
                ..base.clone()
            },
        ];
        for spec in bad {
            assert!(write_join(&spec).is_err(), "{spec:?}");
        }
        std::fs::write(&secret, "short").unwrap();
        let e = write_join(&JoinSpec {
            secret_file: Some(secret),
            ..base
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("cluster.secret"), "{e:#}");
        assert!(!dir2.path().join("n4.toml").exists());
    }

    #[test]
    fn port_overflow_is_refused() {
        let e = cluster_configs(3, Path::new("/tmp/x"), 65_500).unwrap_err();
        assert!(e.to_string().contains("65535"), "{e}");
    }
}
