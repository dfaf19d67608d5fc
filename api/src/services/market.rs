//! `ebb.v1.MarketService`: pools, demand and failover reports, forecasts,
//! reservations, and ledger ranges.

use ebb_proto::v1 as pb;
use ebb_proto::v1::market_service_server::MarketService;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::auth::principal;
use crate::capacity::CapacityStatus;
use crate::convert;
use crate::driver::Request as D;
use crate::error::ApiError;
use crate::ha::Leadership;
use crate::validate;

/// The market service.
#[derive(Clone)]
pub struct Market {
    role: Leadership,
    /// The reservation source's health, if one is configured.
    capacity: Option<watch::Receiver<CapacityStatus>>,
}

impl Market {
    /// Over the replica's driver, with the reservation source's status if configured.
    pub fn new(role: Leadership, capacity: Option<watch::Receiver<CapacityStatus>>) -> Self {
        Market { role, capacity }
    }

    fn source(&self) -> Option<pb::CapacitySource> {
        let status = self.capacity.as_ref()?.borrow().clone();
        Some(pb::CapacitySource {
            name: status.source,
            fetched_time: status
                .snapshot
                .as_ref()
                .map(|s| convert::ms_to_wire(s.fetched_at.as_millis())),
            stale: status.stale,
            last_error: status.last_error.unwrap_or_default(),
            consecutive_failures: status.consecutive_failures,
            item_errors: status
                .snapshot
                .as_ref()
                .map(|s| s.errors.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
        })
    }
}

fn non_empty(field: &str, v: &str) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        Err(ApiError::field(field, "must not be empty"))
    } else {
        Ok(())
    }
}

fn range(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let s = start
        .map(|t| convert::ms_from_wire(t, "start_time"))
        .transpose()?;
    let e = end
        .map(|t| convert::ms_from_wire(t, "end_time"))
        .transpose()?;
    Ok((s, e))
}

#[tonic::async_trait]
impl MarketService for Market {
    async fn list_pools(
        &self,
        req: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        principal(&req)?.check_market_read()?;
        let pools = self.role.driver()?.call(|reply| D::Pools { reply }).await?;
        Ok(Response::new(pb::ListPoolsResponse {
            pools,
            source: self.source(),
        }))
    }

    async fn report_streaming_demand(
        &self,
        req: Request<pb::ReportStreamingDemandRequest>,
    ) -> Result<Response<pb::ReportStreamingDemandResponse>, Status> {
        principal(&req)?.check_market_report()?;
        let req = req.into_inner();
        non_empty("pool", &req.pool)?;
        let pool = self
            .role
            .driver()?
            .call(|reply| D::StreamingDemand {
                pool: req.pool,
                demand_micro_ie: req.demand_micro_ie,
                reply,
            })
            .await?;
        Ok(Response::new(pb::ReportStreamingDemandResponse {
            pool: Some(pool),
        }))
    }

    async fn report_demand_forecast(
        &self,
        req: Request<pb::ReportDemandForecastRequest>,
    ) -> Result<Response<pb::ReportDemandForecastResponse>, Status> {
        principal(&req)?.check_market_report()?;
        let req = req.into_inner();
        non_empty("pool", &req.pool)?;
        validate::forecast(&req.points).map_err(ApiError::InvalidArgument)?;
        let points = req
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let t = p.time.as_ref().expect("validated");
                convert::ms_from_wire(t, &format!("points[{i}].time"))
                    .map(|ms| (ms, p.demand_micro_ie))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::from)?;
        self.role
            .driver()?
            .call(|reply| D::Forecast {
                pool: req.pool,
                points,
                reply,
            })
            .await?;
        Ok(Response::new(pb::ReportDemandForecastResponse {}))
    }

    async fn get_demand_forecast(
        &self,
        req: Request<pb::GetDemandForecastRequest>,
    ) -> Result<Response<pb::GetDemandForecastResponse>, Status> {
        principal(&req)?.check_market_read()?;
        let pool = req.into_inner().pool;
        non_empty("pool", &pool)?;
        let out = self
            .role
            .driver()?
            .call(|reply| D::GetForecast { pool, reply })
            .await?;
        Ok(Response::new(out))
    }

    async fn report_failover(
        &self,
        req: Request<pb::ReportFailoverRequest>,
    ) -> Result<Response<pb::ReportFailoverResponse>, Status> {
        principal(&req)?.check_market_report()?;
        let req = req.into_inner();
        non_empty("region", &req.region)?;
        self.role
            .driver()?
            .call(|reply| D::Failover {
                region: req.region,
                active: req.active,
                reply,
            })
            .await?;
        Ok(Response::new(pb::ReportFailoverResponse {}))
    }

    async fn list_reservations(
        &self,
        req: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        principal(&req)?.check_market_read()?;
        let out = self
            .role
            .driver()?
            .call(|reply| D::Reservations { reply })
            .await?;
        Ok(Response::new(out))
    }

    async fn set_reservations(
        &self,
        req: Request<pb::SetReservationsRequest>,
    ) -> Result<Response<pb::SetReservationsResponse>, Status> {
        principal(&req)?.check_admin("set reservations")?;
        let req = req.into_inner();
        non_empty("pool", &req.pool)?;
        let pool = self
            .role
            .driver()?
            .call(|reply| D::SetReservations { req, reply })
            .await?;
        Ok(Response::new(pb::SetReservationsResponse {
            pool: Some(pool),
        }))
    }

    async fn get_ledger(
        &self,
        req: Request<pb::GetLedgerRequest>,
    ) -> Result<Response<pb::GetLedgerResponse>, Status> {
        let p = principal(&req)?;
        p.check_ledger()?;
        let req = req.into_inner();
        let (start, end) = range(req.start_time.as_ref(), req.end_time.as_ref())?;
        let out = self
            .role
            .driver()?
            .call(|reply| D::Ledger {
                principal: p,
                start,
                end,
                reply,
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn get_pool_totals(
        &self,
        req: Request<pb::GetPoolTotalsRequest>,
    ) -> Result<Response<pb::GetPoolTotalsResponse>, Status> {
        principal(&req)?.check_pool_totals()?;
        let req = req.into_inner();
        let (start, end) = range(req.start_time.as_ref(), req.end_time.as_ref())?;
        let out = self
            .role
            .driver()?
            .call(|reply| D::PoolTotals { start, end, reply })
            .await?;
        Ok(Response::new(out))
    }

    async fn get_utilization(
        &self,
        req: Request<pb::GetUtilizationRequest>,
    ) -> Result<Response<pb::GetUtilizationResponse>, Status> {
        principal(&req)?.check_finance()?;
        let req = req.into_inner();
        let (start, end) = range(req.start_time.as_ref(), req.end_time.as_ref())?;
        let by = convert::grouping_from_wire(req.group_by)?;
        let step_ms = req
            .step_seconds
            .checked_mul(1000)
            .ok_or_else(|| ApiError::field("step_seconds", "is too large"))?;
        let out = self
            .role
            .driver()?
            .call(|reply| D::Utilization {
                start,
                end,
                step_ms,
                by,
                reply,
            })
            .await?;
        Ok(Response::new(out))
    }
}
