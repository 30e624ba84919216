//! What agents report without being asked: subscriptions to every node's
//! heartbeats and stats reports, each checked against the node of the
//! subject it came on.

use async_nats::Subscriber;
use devctl_proto::{bus, pb};
use futures::StreamExt;
use prost::Message;

use super::{Bus, BusError};

impl Bus {
    /// Subscribes to every node's stats reports.
    pub async fn stats_reports(&self) -> Result<StatsReports, BusError> {
        let sub = self
            .client
            .subscribe(bus::ALL_STATS)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        Ok(StatsReports { sub })
    }

    /// Subscribes to every node's heartbeats.
    pub async fn heartbeats(&self) -> Result<Heartbeats, BusError> {
        let sub = self
            .client
            .subscribe(bus::ALL_HEARTBEATS)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        Ok(Heartbeats { sub })
    }
}

/// The stream of stats reports.
#[derive(Debug)]
pub struct StatsReports {
    sub: Subscriber,
}

impl StatsReports {
    /// The next report with the node of the subject it came on (which
    /// its contents must name, if they name one); `None` once the
    /// subscription ends.
    pub async fn next(&mut self) -> Option<(String, pb::StatsReport)> {
        loop {
            let msg = self.sub.next().await?;
            let Some(node) = bus::node_of_subject(&msg.subject) else {
                continue;
            };
            let about = |n: &str| n.is_empty() || n == node;
            match pb::StatsReport::decode(msg.payload) {
                Ok(r)
                    if r.node.as_ref().is_some_and(|n| about(&n.node))
                        && r.containers.iter().all(|c| about(&c.node)) =>
                {
                    return Some((node.to_string(), r));
                }
                Ok(_) => tracing::warn!(node, "stats report about another node ignored"),
                Err(e) => tracing::warn!(node, error = %e, "undecodable stats report"),
            }
        }
    }
}

/// The stream of heartbeats.
#[derive(Debug)]
pub struct Heartbeats {
    sub: Subscriber,
}

impl Heartbeats {
    /// The next well-formed heartbeat whose node name matches its subject;
    /// `None` once the subscription ends.
    pub async fn next(&mut self) -> Option<pb::Heartbeat> {
        loop {
            let msg = self.sub.next().await?;
            let Some(node) = bus::node_of_subject(&msg.subject) else {
                continue;
            };
            match pb::Heartbeat::decode(msg.payload) {
                Ok(hb) if hb.node == node => return Some(hb),
                Ok(hb) => {
                    tracing::warn!(subject = %msg.subject, claimed = %hb.node, "heartbeat for another node ignored")
                }
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "undecodable heartbeat")
                }
            }
        }
    }
}
