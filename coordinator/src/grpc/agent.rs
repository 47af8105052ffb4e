//! `ferry.v1.AgentService`.

use std::sync::Arc;

use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_server::AgentService;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Core;

pub struct AgentApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let remote = req
            .extensions()
            .get::<crate::net::PeerInfo>()
            .and_then(|i| i.remote)
            .map(|a| a.ip());
        Ok(Response::new(
            self.core.enroll_from(remote, req.into_inner()).await?,
        ))
    }

    type SessionStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let agent = self.core.require_agent(&req).await?;
        Ok(Response::new(
            self.core.open_session(agent, req.into_inner()).await?,
        ))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let agent = self.core.require_current_agent(&req).await?;
        Ok(Response::new(
            self.core.renew(&agent, &req.get_ref().csr_pem).await?,
        ))
    }
}
