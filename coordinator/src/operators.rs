//! Operator-side actions that are not about agents: join tokens and
//! operators.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use ferry_common::identity::{Identity, Role, validate_name};
use ferry_common::labels::validate_key;
use ferry_common::time::now_ms;

use crate::agents::hash_token;
use crate::core::Core;
use crate::error::CoordinatorError;
use crate::store::{JoinTokenRecord, OperatorRecord, StoreError};

/// A join token as handed to the admin (the secret is shown only here).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub token: String,
    pub record: JoinTokenRecord,
}

/// A new operator and its certificate.
#[derive(Debug, Clone)]
pub struct NewOperator {
    pub record: OperatorRecord,
    pub cert_pem: String,
}

impl Core {
    pub async fn create_join_token(
        &self,
        actor: &str,
        name: Option<String>,
        labels: BTreeMap<String, String>,
        ttl: Option<Duration>,
    ) -> Result<NewToken, CoordinatorError> {
        if let Some(n) = &name {
            validate_name(n).map_err(|r| CoordinatorError::invalid("--name", r))?;
        }
        for k in labels.keys() {
            validate_key(k).map_err(|r| CoordinatorError::invalid("--labels", r))?;
        }
        let ttl = ttl.unwrap_or(self.config.join_token_ttl);
        ferry_common::limits::check_token_ttl(ttl)
            .map_err(|reason| CoordinatorError::invalid("--ttl", reason))?;
        let secret: [u8; 32] = rand::random();
        let token = format!(
            "ferry_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let now = now_ms();
        let record = JoinTokenRecord {
            token_hash: hash_token(&token),
            name,
            labels,
            created_by: actor.to_string(),
            created_at_ms: now,
            expires_at_ms: now + ttl.as_millis() as i64,
            used_at_ms: None,
            used_by: None,
        };
        self.store.insert_join_token(&record).await?;
        self.audit(
            actor,
            "token.create",
            record.name.as_deref().unwrap_or("-"),
            format!(
                "labels={} ttl={}",
                ferry_common::labels::format_labels(&record.labels),
                ferry_common::time::format_duration(ttl)
            ),
        )
        .await;
        Ok(NewToken { token, record })
    }

    pub async fn add_operator(
        &self,
        actor: &str,
        name: &str,
        role: Role,
        csr_pem: &str,
    ) -> Result<NewOperator, CoordinatorError> {
        validate_name(name).map_err(|r| CoordinatorError::invalid("operator name", r))?;
        // Fail on a taken name before signing anything.
        if let Some(existing) = self.store.get_operator(name).await? {
            return Err(if existing.revoked_at_ms.is_some() {
                StoreError::OperatorRevoked { name: name.into() }
            } else {
                StoreError::OperatorExists { name: name.into() }
            }
            .into());
        }
        let uri = Identity::Operator(name.to_string()).uri(&self.config.trust_domain);
        let issued = self
            .ca
            .sign_client_csr(csr_pem, &uri, name, self.config.operator_cert_ttl)?;
        let record = OperatorRecord {
            name: name.to_string(),
            role,
            created_at_ms: now_ms(),
            created_by: actor.to_string(),
            revoked_at_ms: None,
        };
        self.store.add_operator(&record).await?;
        self.audit(actor, "operator.add", name, format!("role={role}"))
            .await;
        Ok(NewOperator {
            record,
            cert_pem: issued.cert_pem,
        })
    }

    pub async fn revoke_operator(
        &self,
        actor_name: &str,
        actor: &str,
        name: &str,
    ) -> Result<OperatorRecord, CoordinatorError> {
        if actor_name == name {
            return Err(CoordinatorError::invalid(
                "operator name",
                "you cannot revoke your own credentials; ask another admin",
            ));
        }
        let record = self.store.revoke_operator(name, now_ms()).await?;
        // Streams open here end now; those on other coordinators within a
        // second (each watch re-checks its operator).
        let cut = self.operator_streams.revoke(name);
        self.audit(
            actor,
            "operator.revoke",
            name,
            format!("open_streams={cut}"),
        )
        .await;
        Ok(record)
    }
}
