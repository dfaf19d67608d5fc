//! Authentication (bearer tokens → principals) and the authorization rules
//! every service applies. Tokens are compared by their SHA-256, so the
//! configuration may hold hashes instead of secrets, and no token is ever
//! logged (only the configured token name is).

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::config::{AuthConfig, Role};
use crate::error::ApiError;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A member of a team.
    Team(String),
    /// Finance: reads the market and the ledger.
    Finance,
    /// An operator: everything except attaching executors.
    Admin,
    /// An executor host.
    Executor,
    /// A streaming autoscaler: reports demand, forecasts and failovers.
    Autoscaler,
    /// Dev mode (no tokens configured): everything is allowed.
    Dev,
}

impl Principal {
    /// A short name for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Principal::Team(t) => format!("team `{t}`"),
            Principal::Finance => "finance".into(),
            Principal::Admin => "admin".into(),
            Principal::Executor => "executor".into(),
            Principal::Autoscaler => "autoscaler".into(),
            Principal::Dev => "dev-mode caller".into(),
        }
    }

    fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin | Principal::Dev)
    }

    fn deny(&self, what: &str) -> ApiError {
        ApiError::PermissionDenied(format!("{} may not {what}", self.describe()))
    }

    /// Create, see and cancel jobs of `team`: that team's members and admins.
    pub fn check_team(&self, team: &str, what: &str) -> Result<(), ApiError> {
        match self {
            Principal::Team(t) if t == team => Ok(()),
            p if p.is_admin() => Ok(()),
            Principal::Team(_) => Err(ApiError::PermissionDenied(format!(
                "{} may not {what} jobs of team `{team}`",
                self.describe()
            ))),
            _ => Err(self.deny(&format!("{what} jobs"))),
        }
    }

    /// Use the job service at all (team members and admins).
    pub fn check_jobs(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Principal::Team(_) => Ok(()),
            p if p.is_admin() => Ok(()),
            _ => Err(self.deny(&format!("{what} jobs"))),
        }
    }

    /// The team whose jobs this principal is limited to, if any.
    pub fn team(&self) -> Option<&str> {
        match self {
            Principal::Team(t) => Some(t),
            _ => None,
        }
    }

    /// Read pools, prices and reservations: everyone but executors.
    pub fn check_market_read(&self) -> Result<(), ApiError> {
        match self {
            Principal::Executor => Err(self.deny("read the market")),
            _ => Ok(()),
        }
    }

    /// Report demand, forecasts and failovers: admins and autoscalers.
    pub fn check_market_report(&self) -> Result<(), ApiError> {
        match self {
            Principal::Autoscaler => Ok(()),
            p if p.is_admin() => Ok(()),
            _ => Err(self.deny("report streaming demand, forecasts or failovers")),
        }
    }

    /// Set reservations: admins.
    pub fn check_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(self.deny(what))
        }
    }

    /// Read the ledger: finance and admins everything, a team its own rows.
    pub fn check_ledger(&self) -> Result<(), ApiError> {
        match self {
            Principal::Finance | Principal::Team(_) => Ok(()),
            p if p.is_admin() => Ok(()),
            _ => Err(self.deny("read the ledger")),
        }
    }

    /// Read pool totals: finance, admins and autoscalers.
    pub fn check_pool_totals(&self) -> Result<(), ApiError> {
        match self {
            Principal::Finance | Principal::Autoscaler => Ok(()),
            p if p.is_admin() => Ok(()),
            _ => Err(self.deny("read pool totals")),
        }
    }

    /// Read finance reports and the dashboard: finance and admins only
    /// (teams see their own rows through the ledger instead).
    pub fn check_finance(&self) -> Result<(), ApiError> {
        match self {
            Principal::Finance => Ok(()),
            p if p.is_admin() => Ok(()),
            _ => Err(self.deny("read finance reports")),
        }
    }

    /// Attach an executor stream: executors only (and dev mode).
    pub fn check_executor(&self) -> Result<(), ApiError> {
        match self {
            Principal::Executor | Principal::Dev => Ok(()),
            _ => Err(self.deny("attach an executor stream")),
        }
    }
}

/// Token hashes → principals.
#[derive(Clone, Debug)]
pub struct Authenticator {
    tokens: Arc<HashMap<[u8; 32], (String, Principal)>>,
}

impl Authenticator {
    /// From configuration (already validated).
    pub fn new(config: &AuthConfig) -> Self {
        let mut tokens = HashMap::new();
        for t in &config.tokens {
            let hash: [u8; 32] = match (&t.token, &t.sha256) {
                (Some(token), _) => Sha256::digest(token.as_bytes()).into(),
                (None, Some(hex)) => {
                    let bytes = hex::decode(hex).expect("validated hex");
                    bytes.try_into().expect("validated length")
                }
                (None, None) => unreachable!("validated: one of token and sha256"),
            };
            let principal = match t.role {
                Role::Team => Principal::Team(t.team.clone().expect("validated team")),
                Role::Finance => Principal::Finance,
                Role::Admin => Principal::Admin,
                Role::Executor => Principal::Executor,
                Role::Autoscaler => Principal::Autoscaler,
            };
            tokens.insert(hash, (t.name.clone(), principal));
        }
        Authenticator {
            tokens: Arc::new(tokens),
        }
    }

    /// True when no tokens are configured: every caller is [`Principal::Dev`].
    pub fn is_dev_mode(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The principal for a request's `authorization: Bearer <token>` header.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, Status> {
        if self.is_dev_mode() {
            return Ok(Principal::Dev);
        }
        let header = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` header")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
        self.principal_for_token(token)
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// The principal a bearer token stands for (dev mode: [`Principal::Dev`]).
    pub fn principal_for_token(&self, token: &str) -> Option<Principal> {
        if self.is_dev_mode() {
            return Some(Principal::Dev);
        }
        let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        self.tokens.get(&hash).map(|(name, p)| {
            tracing::trace!(token = %name, "authenticated");
            p.clone()
        })
    }

    /// A tonic interceptor that puts the caller's [`Principal`] into the
    /// request's extensions (or refuses it as UNAUTHENTICATED).
    pub fn interceptor(
        &self,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let auth = self.clone();
        move |mut req: Request<()>| {
            let p = auth.authenticate(req.metadata())?;
            req.extensions_mut().insert(p);
            Ok(req)
        }
    }
}

/// The principal the interceptor attached.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no principal"))
}

/// The hex SHA-256 of a token, for writing configuration files.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            tokens: vec![
                TokenConfig {
                    name: "enc".into(),
                    token: Some("secret-enc".into()),
                    sha256: None,
                    role: Role::Team,
                    team: Some("encoding".into()),
                },
                TokenConfig {
                    name: "fin".into(),
                    token: None,
                    sha256: Some(token_sha256("secret-fin")),
                    role: Role::Finance,
                    team: None,
                },
            ],
        })
    }

    fn md(token: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    }

    #[test]
    fn tokens_and_hashes_map_to_principals() {
        let a = auth();
        assert!(!a.is_dev_mode());
        assert_eq!(
            a.authenticate(&md("secret-enc")).unwrap(),
            Principal::Team("encoding".into())
        );
        assert_eq!(
            a.authenticate(&md("secret-fin")).unwrap(),
            Principal::Finance
        );
        let e = a.authenticate(&md("nope")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            !e.message().contains("nope"),
            "the token must not be echoed"
        );
        let e = a
            .authenticate(&tonic::metadata::MetadataMap::new())
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn no_tokens_is_dev_mode() {
        let a = Authenticator::new(&AuthConfig::default());
        assert!(a.is_dev_mode());
        assert_eq!(
            a.authenticate(&tonic::metadata::MetadataMap::new())
                .unwrap(),
            Principal::Dev
        );
    }

    #[test]
    fn roles_allow_what_the_table_says() {
        let team = Principal::Team("a".into());
        let table: Vec<(&str, Principal, bool)> = vec![
            (
                "team own",
                team.clone(),
                team.check_team("a", "see").is_ok(),
            ),
            (
                "team other",
                team.clone(),
                team.check_team("b", "see").is_err(),
            ),
            (
                "finance jobs",
                Principal::Finance,
                Principal::Finance.check_jobs("see").is_err(),
            ),
            (
                "finance ledger",
                Principal::Finance,
                Principal::Finance.check_ledger().is_ok(),
            ),
            (
                "team report",
                team.clone(),
                team.check_market_report().is_err(),
            ),
            (
                "scaler report",
                Principal::Autoscaler,
                Principal::Autoscaler.check_market_report().is_ok(),
            ),
            (
                "admin attach",
                Principal::Admin,
                Principal::Admin.check_executor().is_err(),
            ),
            (
                "executor attach",
                Principal::Executor,
                Principal::Executor.check_executor().is_ok(),
            ),
            (
                "executor market",
                Principal::Executor,
                Principal::Executor.check_market_read().is_err(),
            ),
            (
                "finance set",
                Principal::Finance,
                Principal::Finance.check_admin("set").is_err(),
            ),
            (
                "dev anything",
                Principal::Dev,
                Principal::Dev.check_executor().is_ok(),
            ),
        ];
        for (name, _, ok) in table {
            assert!(ok, "{name}");
        }
    }
}
