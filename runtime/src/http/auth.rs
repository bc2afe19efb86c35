//! Bearer-token authentication of the HTTP API (`[http.tokens]`, docs/security.md).
//!
//! Two roles: `client` tokens may use the KV routes, `/v1/sm/*` and read-only cluster routes;
//! `admin` tokens may use everything. Every route not listed as client-accessible needs an
//! admin token, so a route added later is protected until someone decides otherwise.
//! Tokens are compared in constant time, and every configured token is compared (no early
//! exit), so the time a check takes tells nothing about which token, or which prefix, matched.

use super::ApiError;
use crate::config::{check_token, ConfigError, HttpSection, Problem, TokensSection};
use actix_web::http::{header, Method};
use actix_web::HttpRequest;
use std::path::Path;
use subtle::ConstantTimeEq;

/// What a token lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// KV, `/v1/sm/*` and read-only cluster routes.
    Client,
    /// Every route, including the ones that change the cluster.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token.
    Public,
    /// At least this role.
    Needs(Role),
}

/// The node's tokens, loaded once at start.
#[derive(Clone, Debug)]
pub struct Auth {
    tokens: Vec<(Vec<u8>, Role)>,
    public_health: bool,
    public_metrics: bool,
}

/// Reads a token file: one token per line, blank lines and `#` comments ignored.
fn read_token_file(path: &Path, key: &'static str) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Invalid {
        key,
        problem: Problem::TokenFileUnreadable {
            path: path.to_owned(),
            source,
        },
    })?;
    warn_if_readable_by_others(path, key);
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(ConfigError::Invalid {
            key,
            problem: Problem::TokenFileEmpty {
                path: path.to_owned(),
            },
        });
    }
    for t in &tokens {
        check_token(t).map_err(|source| ConfigError::Invalid {
            key,
            problem: Problem::TokenFileBadToken {
                path: path.to_owned(),
                source,
            },
        })?;
    }
    Ok(tokens)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, key: &'static str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                key,
                file = %path.display(),
                "token file is readable by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _key: &'static str) {}

impl Auth {
    /// The tokens of `[http.tokens]` (reading the token files), or `None` when the section is
    /// absent (no authentication). Errors name the key and the file.
    pub fn from_config(http: &HttpSection) -> Result<Option<Auth>, ConfigError> {
        let Some(section) = &http.tokens else {
            return Ok(None);
        };
        let auth = Auth::load(section, http.public_health, http.public_metrics)?;
        Ok(Some(auth))
    }

    fn load(
        t: &TokensSection,
        public_health: bool,
        public_metrics: bool,
    ) -> Result<Auth, ConfigError> {
        let mut tokens = Vec::new();
        for (list, file, file_key, role) in [
            (
                &t.admin,
                &t.admin_file,
                "http.tokens.admin_file",
                Role::Admin,
            ),
            (
                &t.client,
                &t.client_file,
                "http.tokens.client_file",
                Role::Client,
            ),
        ] {
            for token in list {
                tokens.push((token.as_bytes().to_vec(), role));
            }
            if let Some(path) = file {
                for token in read_token_file(path, file_key)? {
                    tokens.push((token.into_bytes(), role));
                }
            }
        }
        if !tokens.iter().any(|(_, r)| *r == Role::Admin) {
            return Err(ConfigError::Invalid {
                key: "http.tokens.admin",
                problem: Problem::NoAdminToken,
            });
        }
        Ok(Auth {
            tokens,
            public_health,
            public_metrics,
        })
    }

    /// Tokens given directly (tests).
    pub fn with_tokens(admin: &[&str], client: &[&str]) -> Auth {
        let mut tokens: Vec<(Vec<u8>, Role)> = admin
            .iter()
            .map(|t| (t.as_bytes().to_vec(), Role::Admin))
            .collect();
        tokens.extend(client.iter().map(|t| (t.as_bytes().to_vec(), Role::Client)));
        Auth {
            tokens,
            public_health: true,
            public_metrics: false,
        }
    }

    /// The role of `presented`, comparing it with every token in constant time.
    fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut admin = subtle::Choice::from(0);
        let mut client = subtle::Choice::from(0);
        for (token, role) in &self.tokens {
            let same = ct_equal(token, presented);
            match role {
                Role::Admin => admin |= same,
                Role::Client => client |= same,
            }
        }
        if bool::from(admin) {
            Some(Role::Admin)
        } else if bool::from(client) {
            Some(Role::Client)
        } else {
            None
        }
    }

    /// What `method path` needs.
    pub fn access(&self, method: &Method, path: &str) -> Access {
        let read = method == Method::GET || method == Method::HEAD;
        match path {
            "/healthz" | "/readyz" if self.public_health => Access::Public,
            "/healthz" | "/readyz" => Access::Needs(Role::Client),
            "/metrics" if self.public_metrics => Access::Public,
            "/metrics" => Access::Needs(Role::Client),
            "/v1/cluster" | "/v1/cluster/members" | "/v1/cluster/config" | "/v1/shards" if read => {
                Access::Needs(Role::Client)
            }
            p if p.starts_with("/v1/kv/") || p.starts_with("/v1/sm/") => {
                Access::Needs(Role::Client)
            }
            p if read && p.starts_with("/v1/ring/route/") => Access::Needs(Role::Client),
            _ => Access::Needs(Role::Admin),
        }
    }

    /// Admits or refuses a request: 401 without a (known) token, 403 when its role is too
    /// weak for the route.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Access::Needs(needed) = self.access(req.method(), req.path()) else {
            return Ok(());
        };
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized {
                message: "this route needs a bearer token (Authorization: Bearer <token>)"
                    .to_owned(),
            });
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .map(|t| t.trim_ascii())
            .ok_or_else(|| ApiError::Unauthorized {
                message: "the Authorization header must be \"Bearer <token>\"".to_owned(),
            })?;
        let role = self
            .role_of(presented)
            .ok_or_else(|| ApiError::Unauthorized {
                message: "the bearer token is not valid on this node".to_owned(),
            })?;
        if role < needed {
            return Err(ApiError::Forbidden {
                message: format!(
                    "{} {} needs an {} token; this one has the {} role",
                    req.method(),
                    req.path(),
                    needed.name(),
                    role.name()
                ),
            });
        }
        Ok(())
    }
}

/// Constant-time equality of two byte strings whose lengths may differ: both are compared
/// over the longer length (the shorter padded with zeros) and the lengths are compared too,
/// so the time depends only on the lengths, never on where the first difference is.
fn ct_equal(a: &[u8], b: &[u8]) -> subtle::Choice {
    let n = a.len().max(b.len());
    let mut diff = subtle::Choice::from(1);
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff &= x.ct_eq(&y);
    }
    diff & (a.len() as u64).ct_eq(&(b.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    const ADMIN: &str = "admin-token-0123456789";
    const CLIENT: &str = "client-token-0123456789";

    fn check(auth: &Auth, method: Method, path: &str, token: Option<&str>) -> Option<&'static str> {
        let mut req = TestRequest::default().method(method).uri(path);
        if let Some(t) = token {
            req = req.insert_header((header::AUTHORIZATION, format!("Bearer {t}")));
        }
        auth.check(&req.to_http_request()).err().map(|e| e.code())
    }

    #[test]
    fn finding11_roles_are_enforced_per_route() {
        let auth = Auth::with_tokens(&[ADMIN], &[CLIENT]);
        // KV: client or admin; nothing else.
        assert_eq!(
            check(&auth, Method::PUT, "/v1/kv/a", None),
            Some("unauthorized")
        );
        assert_eq!(
            check(
                &auth,
                Method::PUT,
                "/v1/kv/a",
                Some("wrong-token-0123456789")
            ),
            Some("unauthorized")
        );
        assert_eq!(check(&auth, Method::PUT, "/v1/kv/a", Some(CLIENT)), None);
        assert_eq!(
            check(&auth, Method::POST, "/v1/kv/a/cas", Some(ADMIN)),
            None
        );
        assert_eq!(
            check(&auth, Method::POST, "/v1/sm/command", Some(CLIENT)),
            None
        );
        // Cluster-changing routes: admin only.
        assert_eq!(
            check(
                &auth,
                Method::POST,
                "/v1/cluster/transfer-leader",
                Some(CLIENT)
            ),
            Some("forbidden")
        );
        assert_eq!(
            check(
                &auth,
                Method::POST,
                "/v1/cluster/transfer-leader",
                Some(ADMIN)
            ),
            None
        );
        // Membership changes: admin only; reading the configuration: client.
        for path in [
            "/v1/cluster/learners",
            "/v1/cluster/promote",
            "/v1/cluster/remove",
            "/v1/cluster/replace",
        ] {
            assert_eq!(
                check(&auth, Method::POST, path, Some(CLIENT)),
                Some("forbidden"),
                "{path}"
            );
            assert_eq!(
                check(&auth, Method::POST, path, Some(ADMIN)),
                None,
                "{path}"
            );
        }
        assert_eq!(
            check(&auth, Method::GET, "/v1/cluster/config", Some(CLIENT)),
            None
        );
        assert_eq!(
            check(&auth, Method::GET, "/v1/cluster/config", None),
            Some("unauthorized")
        );
        // Routes nobody listed (e.g. added later) need admin.
        assert_eq!(
            check(&auth, Method::POST, "/v1/cluster/snapshot", Some(CLIENT)),
            Some("forbidden")
        );
        // Read-only status: client.
        assert_eq!(check(&auth, Method::GET, "/v1/cluster", Some(CLIENT)), None);
        assert_eq!(
            check(&auth, Method::GET, "/v1/ring/route/k", Some(CLIENT)),
            None
        );
        // Probes open by default, metrics not.
        assert_eq!(check(&auth, Method::GET, "/healthz", None), None);
        assert_eq!(check(&auth, Method::GET, "/readyz", None), None);
        assert_eq!(
            check(&auth, Method::GET, "/metrics", None),
            Some("unauthorized")
        );
        assert_eq!(check(&auth, Method::GET, "/metrics", Some(CLIENT)), None);
    }

    #[test]
    fn finding11_malformed_authorization_is_401() {
        let auth = Auth::with_tokens(&[ADMIN], &[]);
        let req = TestRequest::default()
            .uri("/v1/kv/a")
            .insert_header((header::AUTHORIZATION, format!("Basic {ADMIN}")))
            .to_http_request();
        assert_eq!(auth.check(&req).unwrap_err().code(), "unauthorized");
        // A prefix of a real token is not a token.
        assert_eq!(
            check(&auth, Method::GET, "/v1/kv/a", Some(&ADMIN[..10])),
            Some("unauthorized")
        );
        assert_eq!(
            check(&auth, Method::GET, "/v1/kv/a", Some(&format!("{ADMIN}x"))),
            Some("unauthorized")
        );
    }

    #[test]
    fn constant_time_equality_is_equality() {
        for (a, b) in [
            (&b"abc"[..], &b"abc"[..]),
            (b"abc", b"abd"),
            (b"abc", b"ab"),
            (b"", b""),
            (b"ab\0", b"ab"),
        ] {
            assert_eq!(bool::from(ct_equal(a, b)), a == b, "{a:?} {b:?}");
        }
    }

    #[test]
    fn token_files_are_validated_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("admin.token");
        std::fs::write(&good, format!("# admin\n{ADMIN}\n\n")).unwrap();
        let short = dir.path().join("client.token");
        std::fs::write(&short, "short\n").unwrap();
        let section = TokensSection {
            admin_file: Some(good.clone()),
            client_file: Some(short),
            ..TokensSection::default()
        };
        let e = Auth::load(&section, true, false).unwrap_err().to_string();
        assert!(e.contains("http.tokens.client_file"), "{e}");
        let section = TokensSection {
            admin_file: Some(dir.path().join("missing")),
            ..TokensSection::default()
        };
        let e = Auth::load(&section, true, false).unwrap_err().to_string();
        assert!(
            e.contains("http.tokens.admin_file") && e.contains("missing"),
            "{e}"
        );
        let section = TokensSection {
            admin_file: Some(good),
            ..TokensSection::default()
        };
        let auth = Auth::load(&section, true, false).unwrap();
        assert_eq!(auth.role_of(ADMIN.as_bytes()), Some(Role::Admin));
    }
}
