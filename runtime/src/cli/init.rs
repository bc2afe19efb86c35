//! `conclave init`: the config files of a local cluster.

use crate::config::{ClusterSecretString, Config, MemberConfig};
use anyhow::{bail, Context};
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
            id: u64::from(i),
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

/// Writes [`cluster_configs`] to disk. Refuses to overwrite any existing file unless `force`;
/// the check covers every file before the first is written, so a refusal writes nothing.
pub fn write_cluster(
    nodes: u16,
    dir: &Path,
    base_port: u16,
    force: bool,
) -> anyhow::Result<Vec<(PathBuf, Config)>> {
    let configs = cluster_configs(nodes, dir, base_port)?;
    if !force {
        let existing: Vec<String> = configs
            .iter()
            .filter(|(p, _)| p.exists())
            .map(|(p, _)| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "refusing to overwrite {} (use --force)",
                existing.join(", ")
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (path, config) in &configs {
        let body = config.to_toml().context("cannot serialise the config")?;
        let text = format!(
            "# conclave node {} of {nodes}, written by `conclave init`.\n# Every key is documented in docs/DESIGN.md §9.\n\n{body}",
            config.node.id
        );
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(configs)
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
        assert_eq!(c.node.id, 2);
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
    fn port_overflow_is_refused() {
        let e = cluster_configs(3, Path::new("/tmp/x"), 65_500).unwrap_err();
        assert!(e.to_string().contains("65535"), "{e}");
    }
}
