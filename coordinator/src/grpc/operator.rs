//! `ferry.v1.OperatorService`.

use std::sync::Arc;
use std::time::Duration;

use ferry_common::identity::{Identity, Role};
use ferry_common::job::JobKind;
use ferry_common::time::now_ms;
use ferry_proto::v1 as pb;
use ferry_proto::v1::operator_service_server::OperatorService;
use tonic::{Request, Response, Status};

use super::convert;
use crate::core::Core;
use crate::error::CoordinatorError;
use crate::scheduler::{Submission, job_to_wire, selector_from_wire};
use crate::store::ids::IdOf;
use crate::store::{JobFilter, RolloutKind, StoreError};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;
use zeroize::Zeroizing;

pub struct OperatorApi {
    pub core: Arc<Core>,
}

fn caller_uri(op: &crate::store::OperatorRecord, core: &Core) -> String {
    Identity::Operator(op.name.clone()).uri(&core.config.trust_domain)
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Viewer, "read status")
            .await?;
        let agents = self
            .core
            .store
            .list_agents()
            .await
            .map_err(CoordinatorError::from)?;
        let now = now_ms();
        let schedules = crate::schedules::all(&self.core)
            .await
            .map_err(CoordinatorError::from)?;
        let active: Vec<_> = agents
            .iter()
            .filter(|a| a.revoked_at_ms.is_none())
            .collect();
        let online = active
            .iter()
            .filter(|a| self.core.agent_state(a, now) == crate::agents::AgentState::Online)
            .count();
        Ok(Response::new(pb::GetStatusResponse {
            version: ferry_common::VERSION.into(),
            coordinator_id: self.core.coordinator_id.clone(),
            trust_domain: self.core.config.trust_domain.clone(),
            store_backend: self.core.store.backend().as_str().into(),
            agents_online: online as u32,
            agents_total: active.len() as u32,
            caller: caller_uri(&op, &self.core),
            caller_role: pb::Role::from(op.role) as i32,
            started_at_ms: self.core.started_at_ms,
            server_time_ms: now,
            schedules_needing_attention: schedules
                .iter()
                .filter(|s| crate::schedules::needs_attention(s, now))
                .map(|s| crate::schedules::to_wire(s, now))
                .collect(),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "list agents")
            .await?;
        let now = now_ms();
        let agents = self
            .core
            .store
            .list_agents()
            .await
            .map_err(CoordinatorError::from)?
            .into_iter()
            .map(|a| {
                let state = self.core.agent_state(&a, now);
                convert::agent(a, state)
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn list_operators(
        &self,
        req: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "list operators")
            .await?;
        let operators = self
            .core
            .store
            .list_operators()
            .await
            .map_err(CoordinatorError::from)?
            .into_iter()
            .map(convert::operator)
            .collect();
        Ok(Response::new(pb::ListOperatorsResponse { operators }))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Admin, "create join tokens")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let r = req.into_inner();
        let name = Some(r.name.trim().to_string()).filter(|n| !n.is_empty());
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds));
        let t = self
            .core
            .create_join_token(&actor, name, r.labels.into_iter().collect(), ttl)
            .await?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: t.token,
            ca_pin: self.core.ca.pin(),
            coordinator: self.core.config.advertise.clone(),
            expires_at_ms: t.record.expires_at_ms,
            name: t.record.name.unwrap_or_default(),
            labels: t.record.labels.into_iter().collect(),
        }))
    }

    async fn revoke_agent(
        &self,
        req: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::RevokeAgentResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Admin, "revoke agents")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let (agent, was_connected) = self
            .core
            .revoke_agent(&actor, req.get_ref().agent.trim())
            .await?;
        let state = self.core.agent_state(&agent, now_ms());
        Ok(Response::new(pb::RevokeAgentResponse {
            agent: Some(convert::agent(agent, state)),
            was_connected,
        }))
    }

    async fn add_operator(
        &self,
        req: Request<pb::AddOperatorRequest>,
    ) -> Result<Response<pb::AddOperatorResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Admin, "add operators")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let r = req.into_inner();
        let role = pb::Role::try_from(r.role)
            .map_err(|_| {
                CoordinatorError::invalid("role", format!("unknown role number {}", r.role))
            })
            .and_then(|role| {
                Role::try_from(role).map_err(|e| CoordinatorError::invalid("role", e))
            })?;
        let created = self
            .core
            .add_operator(&actor, r.name.trim(), role, &r.csr_pem)
            .await?;
        Ok(Response::new(pb::AddOperatorResponse {
            operator: Some(convert::operator(created.record)),
            certificate_pem: created.cert_pem,
            ca_pem: self.core.ca.cert_pem().to_string(),
            coordinator: self.core.config.advertise.clone(),
        }))
    }

    async fn revoke_operator(
        &self,
        req: Request<pb::RevokeOperatorRequest>,
    ) -> Result<Response<pb::RevokeOperatorResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Admin, "revoke operators")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let record = self
            .core
            .revoke_operator(&op.name, &actor, req.get_ref().name.trim())
            .await?;
        Ok(Response::new(pb::RevokeOperatorResponse {
            operator: Some(convert::operator(record)),
        }))
    }

    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        // A raw deploy bypasses what `ferry deploy` goes through (the
        // (app, env) lock, the release record, the confirmation of a
        // protected environment): only an admin may send one.
        let raw_deploy = req.get_ref().kind == JobKind::Deploy.as_str();
        let op = if raw_deploy {
            self.core
                .require_operator(
                    &req,
                    Role::Admin,
                    "submit a raw deploy job (it bypasses the rollout lock, releases and \
                     confirmation: use `ferry deploy`)",
                )
                .await?
        } else {
            self.core
                .require_operator(&req, Role::Deployer, "run jobs")
                .await?
        };
        let actor = caller_uri(&op, &self.core);
        let r = req.into_inner();
        let submission = Submission {
            kind: r.kind,
            spec_json: r.spec_json,
            target: selector_from_wire(r.target),
            idempotency_key: Some(r.idempotency_key).filter(|k| !k.is_empty()),
            deadline: (r.deadline_seconds > 0).then(|| Duration::from_secs(r.deadline_seconds)),
            parent: None,
        };
        let (job, created) = self.core.submit_job(&actor, submission).await?;
        let tasks = self
            .core
            .store
            .list_tasks(job.id)
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job_to_wire(job, tasks)),
            created,
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "cancel jobs")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let id = self.job_id(&req.get_ref().job_id).await?;
        let job = self.core.cancel_job(&actor, id).await?;
        let tasks = self
            .core
            .store
            .list_tasks(id)
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(job_to_wire(job, tasks)),
        }))
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "read jobs")
            .await?;
        let id = self.job_id(&req.get_ref().job_id).await?;
        let job = self
            .core
            .store
            .get_job(id)
            .await
            .map_err(CoordinatorError::from)?
            .ok_or_else(|| CoordinatorError::from(StoreError::JobNotFound(id)))?;
        let tasks = self
            .core
            .store
            .list_tasks(id)
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(job_to_wire(job, tasks)),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "list jobs")
            .await?;
        let r = req.into_inner();
        let status = if r.status.is_empty() {
            None
        } else {
            Some(
                r.status
                    .parse()
                    .map_err(|e: String| CoordinatorError::invalid("--status", e))?,
            )
        };
        let filter = JobFilter {
            status,
            kind: Some(r.kind).filter(|k| !k.is_empty()),
            agent_name: Some(r.agent).filter(|a| !a.is_empty()),
            since_ms: (r.since_ms > 0).then_some(r.since_ms),
            limit: r.limit,
        };
        let jobs = self
            .core
            .store
            .list_jobs(&filter)
            .await
            .map_err(CoordinatorError::from)?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut tasks = self
                .core
                .store
                .list_tasks(job.id)
                .await
                .map_err(CoordinatorError::from)?;
            for t in &mut tasks {
                t.result_json = None;
            }
            out.push(job_to_wire(job, tasks));
        }
        Ok(Response::new(pb::ListJobsResponse { jobs: out }))
    }

    type WatchJobStream = ReceiverStream<Result<pb::JobEvent, Status>>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Viewer, "watch jobs")
            .await?;
        let id = self.job_id(&req.get_ref().job_id).await?;
        Ok(Response::new(
            self.core
                .watch_job(id, req.get_ref().after_seq, &op.name)
                .await?,
        ))
    }

    async fn set_secret(
        &self,
        req: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SetSecretResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Admin, "set secrets")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let mut r = req.into_inner();
        // Wiped when this handler returns, whatever the outcome.
        let value = Zeroizing::new(std::mem::take(&mut r.value));
        let secret = self
            .core
            .set_secret(&actor, r.app.trim(), r.env.trim(), r.name.trim(), &value)
            .await?;
        Ok(Response::new(pb::SetSecretResponse {
            secret: Some(convert::secret(secret)),
        }))
    }

    async fn delete_secret(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Admin, "delete secrets")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let r = req.into_inner();
        self.core
            .delete_secret(&actor, r.app.trim(), r.env.trim(), r.name.trim())
            .await?;
        Ok(Response::new(pb::DeleteSecretResponse {}))
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        self.core
            .require_operator(&req, Role::Deployer, "list secrets")
            .await?;
        let r = req.into_inner();
        let env = Some(r.env.trim()).filter(|e| !e.is_empty());
        let secrets = self
            .core
            .list_secrets(r.app.trim(), env)
            .await?
            .into_iter()
            .map(convert::secret)
            .collect();
        Ok(Response::new(pb::ListSecretsResponse { secrets }))
    }

    async fn start_rollout(
        &self,
        req: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::StartRolloutResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "deploy")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let rollout = self.core.start_rollout(&actor, req.into_inner()).await?;
        Ok(Response::new(pb::StartRolloutResponse {
            rollout: Some(rollout),
        }))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::StartRolloutResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "roll back")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let rollout = self.core.rollback(&actor, req.into_inner()).await?;
        Ok(Response::new(pb::StartRolloutResponse {
            rollout: Some(rollout),
        }))
    }

    async fn redeploy(
        &self,
        req: Request<pb::RedeployRequest>,
    ) -> Result<Response<pb::StartRolloutResponse>, Status> {
        self.again(req, RolloutKind::Redeploy, "redeploy").await
    }

    async fn restart(
        &self,
        req: Request<pb::RedeployRequest>,
    ) -> Result<Response<pb::StartRolloutResponse>, Status> {
        self.again(req, RolloutKind::Restart, "restart").await
    }

    async fn cancel_rollout(
        &self,
        req: Request<pb::CancelRolloutRequest>,
    ) -> Result<Response<pb::CancelRolloutResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "cancel rollouts")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let id = self.rollout_id(&req.get_ref().rollout_id).await?;
        let rollout = self.core.cancel_rollout(&actor, id).await?;
        Ok(Response::new(pb::CancelRolloutResponse {
            rollout: Some(rollout),
        }))
    }

    async fn get_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::GetRolloutResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "read rollouts")
            .await?;
        let id = self
            .core
            .store
            .resolve_id(IdOf::Rollout, &req.get_ref().rollout_id)
            .await
            .map_err(CoordinatorError::from)?;
        let rollout = self.core.get_rollout(id).await?;
        Ok(Response::new(pb::GetRolloutResponse {
            rollout: Some(rollout),
        }))
    }

    async fn list_releases(
        &self,
        req: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "read releases")
            .await?;
        let r = req.into_inner();
        let app = r.app.trim();
        let env = Some(r.env.trim()).filter(|e| !e.is_empty());
        let records = self
            .core
            .store
            .list_rollouts(app, env, r.limit)
            .await
            .map_err(CoordinatorError::from)?;
        if records.is_empty() && env.is_some() {
            // Refused when the app has other environments, naming them;
            // an app never deployed lists nothing.
            if let Err(e @ CoordinatorError::InvalidArgument { .. }) =
                self.core.environments(app, env).await
                && matches!(&e, CoordinatorError::InvalidArgument { what, .. } if what == "--env")
            {
                return Err(e.into());
            }
        }
        // The current release of each environment listed, even when it is
        // older than the listing reaches.
        let mut current_ids = Vec::new();
        let mut envs: Vec<&str> = records.iter().map(|r| r.env.as_str()).collect();
        envs.sort();
        envs.dedup();
        for e in envs {
            if let Some(current) = self
                .core
                .current_release(app, e)
                .await
                .map_err(CoordinatorError::from)?
            {
                current_ids.push(current.id.to_string());
            }
        }
        let releases = records
            .iter()
            .map(crate::rollout::to_wire)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(pb::ListReleasesResponse {
            releases,
            current_ids,
        }))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "read the audit log")
            .await?;
        let entries = self.core.list_audit(req.into_inner()).await?;
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }

    async fn get_app_status(
        &self,
        req: Request<pb::GetAppStatusRequest>,
    ) -> Result<Response<pb::GetAppStatusResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Viewer, "read an app's status")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let r = req.into_inner();
        let env = Some(r.env.trim()).filter(|e| !e.is_empty());
        let status = self.core.app_status(&actor, r.app.trim(), env).await?;
        Ok(Response::new(status))
    }

    type StreamLogsStream = ReceiverStream<Result<pb::StreamLogsResponse, Status>>;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        // Logs are the app's output: who may deploy it may read them.
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "read logs")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let stream = self
            .core
            .stream_logs(&actor, &op.name, req.into_inner())
            .await?;
        Ok(Response::new(stream))
    }

    async fn run_backup(
        &self,
        req: Request<pb::RunBackupRequest>,
    ) -> Result<Response<pb::RunBackupResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "run backups")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let jobs = crate::backups::run_backup(
            &self.core,
            &actor,
            req.into_inner(),
            ferry_common::status::BackupReason::Manual,
        )
        .await?;
        let mut wire = Vec::new();
        for job in jobs {
            let tasks = self
                .core
                .store
                .list_tasks(job.id)
                .await
                .map_err(CoordinatorError::from)?;
            wire.push(job_to_wire(job, tasks));
        }
        Ok(Response::new(pb::RunBackupResponse { jobs: wire }))
    }

    async fn run_migrate(
        &self,
        req: Request<pb::RunMigrateRequest>,
    ) -> Result<Response<pb::RunMigrateResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "run migrations")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let jobs = crate::migrations::run_migrate(&self.core, &actor, req.into_inner()).await?;
        let mut wire = Vec::new();
        for job in jobs {
            let tasks = self
                .core
                .store
                .list_tasks(job.id)
                .await
                .map_err(CoordinatorError::from)?;
            wire.push(job_to_wire(job, tasks));
        }
        Ok(Response::new(pb::RunMigrateResponse { jobs: wire }))
    }

    async fn migrate_status(
        &self,
        req: Request<pb::MigrateStatusRequest>,
    ) -> Result<Response<pb::MigrateStatusResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "read migration runs")
            .await?;
        let req = req.into_inner();
        let last = crate::migrations::migrate_status(&self.core, &req.app, &req.env, &req.database)
            .await?;
        let mut runs = Vec::new();
        for (database, job) in last {
            let tasks = self
                .core
                .store
                .list_tasks(job.id)
                .await
                .map_err(CoordinatorError::from)?;
            runs.push(pb::MigrateRun {
                database,
                job: Some(job_to_wire(job, tasks)),
            });
        }
        Ok(Response::new(pb::MigrateStatusResponse { runs }))
    }

    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "read backups")
            .await?;
        let r = req.into_inner();
        let some = |s: String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let filter = crate::store::BackupFilter {
            app: some(r.app),
            env: some(r.env),
            database: some(r.database),
        };
        let limit = if r.limit == 0 { 100 } else { r.limit.min(1000) };
        let backups = self
            .core
            .store
            .list_backups(&filter, limit)
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::ListBackupsResponse {
            backups: backups.iter().map(crate::backups::to_wire).collect(),
        }))
    }

    async fn get_backup(
        &self,
        req: Request<pb::GetBackupRequest>,
    ) -> Result<Response<pb::GetBackupResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "read backups")
            .await?;
        let id = parse_backup_id(&req.get_ref().id)?;
        let backup = self
            .core
            .store
            .get_backup(id)
            .await
            .map_err(CoordinatorError::from)?
            .ok_or_else(|| CoordinatorError::from(StoreError::BackupNotFound(id)))?;
        Ok(Response::new(pb::GetBackupResponse {
            backup: Some(crate::backups::to_wire(&backup)),
        }))
    }

    async fn verify_backup(
        &self,
        req: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::VerifyBackupResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "verify backups")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let id = parse_backup_id(&req.get_ref().id)?;
        let job = crate::backups::verify_backup(&self.core, &actor, id).await?;
        let tasks = self
            .core
            .store
            .list_tasks(job.id)
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::VerifyBackupResponse {
            job: Some(job_to_wire(job, tasks)),
        }))
    }

    async fn restore_backup(
        &self,
        req: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "restore backups")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let r = req.into_inner();
        let id = parse_backup_id(&r.id)?;
        let job = crate::backups::restore_backup(&self.core, &actor, id, &r.into, r.clean).await?;
        let tasks = self
            .core
            .store
            .list_tasks(job.id)
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::RestoreBackupResponse {
            job: Some(job_to_wire(job, tasks)),
        }))
    }

    async fn prune_backups(
        &self,
        req: Request<pb::PruneBackupsRequest>,
    ) -> Result<Response<pb::PruneBackupsResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "prune backups")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let r = req.into_inner();
        let (expired, jobs) = crate::backups::prune_backups(
            &self.core,
            &actor,
            r.app.trim(),
            r.env.trim(),
            None,
            r.dry_run,
        )
        .await?;
        let mut wire = Vec::new();
        for job in jobs {
            let tasks = self
                .core
                .store
                .list_tasks(job.id)
                .await
                .map_err(CoordinatorError::from)?;
            wire.push(job_to_wire(job, tasks));
        }
        Ok(Response::new(pb::PruneBackupsResponse {
            expired: expired.iter().map(crate::backups::to_wire).collect(),
            jobs: wire,
        }))
    }

    async fn apply_schedules(
        &self,
        req: Request<pb::ApplySchedulesRequest>,
    ) -> Result<Response<pb::ApplySchedulesResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "apply schedules")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let applied = crate::schedules::apply(&self.core, &actor, req.into_inner()).await?;
        let now = now_ms();
        let wire = |v: &[crate::store::ScheduleRecord]| {
            v.iter()
                .map(|s| crate::schedules::to_wire(s, now))
                .collect()
        };
        let ids = |v: &[Uuid]| v.iter().map(Uuid::to_string).collect();
        Ok(Response::new(pb::ApplySchedulesResponse {
            schedules: wire(&applied.schedules),
            added: ids(&applied.added),
            changed: ids(&applied.changed),
            removed: wire(&applied.removed),
        }))
    }

    async fn add_schedule(
        &self,
        req: Request<pb::AddScheduleRequest>,
    ) -> Result<Response<pb::AddScheduleResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "add schedules")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let added = crate::schedules::add(&self.core, &actor, req.into_inner()).await?;
        Ok(Response::new(pb::AddScheduleResponse {
            schedule: Some(crate::schedules::to_wire(&added, now_ms())),
        }))
    }

    async fn remove_schedule(
        &self,
        req: Request<pb::RemoveScheduleRequest>,
    ) -> Result<Response<pb::RemoveScheduleResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, "remove schedules")
            .await?;
        let actor = caller_uri(&op, &self.core);
        let removed = crate::schedules::remove(&self.core, &actor, &req.get_ref().id).await?;
        Ok(Response::new(pb::RemoveScheduleResponse {
            removed: Some(crate::schedules::to_wire(&removed, now_ms())),
        }))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        self.core
            .require_operator(&req, Role::Viewer, "read schedules")
            .await?;
        let r = req.into_inner();
        let some = |s: String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let filter = crate::store::ScheduleFilter {
            app: some(r.app),
            env: some(r.env),
        };
        let schedules = self
            .core
            .store
            .list_schedules(&filter)
            .await
            .map_err(CoordinatorError::from)?;
        let now = now_ms();
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: schedules
                .iter()
                .map(|s| crate::schedules::to_wire(s, now))
                .collect(),
        }))
    }
}

fn parse_backup_id(text: &str) -> Result<Uuid, CoordinatorError> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        CoordinatorError::invalid(
            "backup id",
            format!("{text:?} is not a backup id (see `ferry backup ls`)"),
        )
    })
}

impl OperatorApi {
    /// The job an id names: whole, or a unique part (see `store::ids`).
    async fn job_id(&self, text: &str) -> Result<Uuid, CoordinatorError> {
        Ok(self.core.store.resolve_id(IdOf::Job, text).await?)
    }

    /// `Redeploy` and `Restart`: the current release again, as a rollout
    /// of `kind`; a deployer's.
    async fn again(
        &self,
        req: Request<pb::RedeployRequest>,
        kind: RolloutKind,
        what: &str,
    ) -> Result<Response<pb::StartRolloutResponse>, Status> {
        let op = self
            .core
            .require_operator(&req, Role::Deployer, what)
            .await?;
        let actor = caller_uri(&op, &self.core);
        let rollout = self.core.again(&actor, req.into_inner(), kind).await?;
        Ok(Response::new(pb::StartRolloutResponse {
            rollout: Some(rollout),
        }))
    }

    /// The rollout an id names: whole, or a unique part (see `store::ids`).
    async fn rollout_id(&self, text: &str) -> Result<Uuid, CoordinatorError> {
        Ok(self.core.store.resolve_id(IdOf::Rollout, text).await?)
    }
}
