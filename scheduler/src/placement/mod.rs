//! Placement: a pure function from a snapshot of the nodes and a request to
//! a chosen node, or the reason each node was rejected. No I/O here.
//!
//! Feasibility: the node is ready and its capacity covers the request.
//! Scoring (spread): the fewest devctl containers wins; ties go to the name
//! that sorts first, so decisions are deterministic.

use std::fmt;

/// What placement knows of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Heartbeats arrive.
    pub ready: bool,
    /// CPUs of the node, in thousandths.
    pub milli_cpus: i64,
    /// Memory of the node, in bytes.
    pub memory_bytes: i64,
    /// devctl containers placed on it.
    pub containers: usize,
}

/// What a container asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Pinned node, if any.
    pub node: Option<String>,
    /// CPU limit, thousandths (0: none).
    pub milli_cpus: i64,
    /// Memory limit, bytes (0: none).
    pub memory_bytes: i64,
}

/// Why one node cannot take the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The node.
    pub node: String,
    /// Why, in words.
    pub reason: String,
}

/// Why no node was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// The pinned node is not in the cluster.
    UnknownNode(String),
    /// The cluster has no nodes at all.
    NoNodes,
    /// Every candidate was rejected.
    NoFit(Vec<Rejection>),
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::UnknownNode(n) => write!(
                f,
                "node {n:?} is not part of the cluster; see `devctl nodes` for node names"
            ),
            PlacementError::NoNodes => write!(
                f,
                "the cluster has no nodes yet; start an agent (devctl-agent --node NAME --nats URL)"
            ),
            PlacementError::NoFit(rejections) => {
                write!(f, "no node can run the container: ")?;
                for (i, r) in rejections.iter().enumerate() {
                    if i > 0 {
                        write!(f, "; ")?;
                    }
                    write!(f, "{}: {}", r.node, r.reason)?;
                }
                Ok(())
            }
        }
    }
}

fn cpus(milli: i64) -> String {
    format!("{}", milli as f64 / 1000.0)
}

fn rejection(node: &NodeView, req: &Request) -> Option<String> {
    if !node.ready {
        return Some("node is down (no recent heartbeat)".into());
    }
    if req.milli_cpus > node.milli_cpus {
        return Some(format!(
            "needs {} CPUs, node has {}",
            cpus(req.milli_cpus),
            cpus(node.milli_cpus)
        ));
    }
    if req.memory_bytes > node.memory_bytes {
        return Some(format!(
            "needs {} bytes of memory, node has {}",
            req.memory_bytes, node.memory_bytes
        ));
    }
    None
}

/// Chooses a node for `req` among `nodes`.
pub fn place<'a>(nodes: &'a [NodeView], req: &Request) -> Result<&'a NodeView, PlacementError> {
    let candidates: Vec<&NodeView> = match &req.node {
        Some(pinned) => vec![
            nodes
                .iter()
                .find(|n| n.name == *pinned)
                .ok_or_else(|| PlacementError::UnknownNode(pinned.clone()))?,
        ],
        None if nodes.is_empty() => return Err(PlacementError::NoNodes),
        None => nodes.iter().collect(),
    };
    let mut rejected = Vec::new();
    let mut best: Option<&NodeView> = None;
    for node in candidates {
        match rejection(node, req) {
            Some(reason) => rejected.push(Rejection {
                node: node.name.clone(),
                reason,
            }),
            None => {
                let better =
                    best.is_none_or(|b| (node.containers, &node.name) < (b.containers, &b.name));
                if better {
                    best = Some(node);
                }
            }
        }
    }
    best.ok_or(PlacementError::NoFit(rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, containers: usize) -> NodeView {
        NodeView {
            name: name.into(),
            ready: true,
            milli_cpus: 2000,
            memory_bytes: 4 << 30,
            containers,
        }
    }

    #[test]
    fn spreads_to_the_emptiest_node_deterministically() {
        let nodes = [node("b", 1), node("a", 1), node("c", 0)];
        assert_eq!(place(&nodes, &Request::default()).unwrap().name, "c");
        let nodes = [node("b", 1), node("a", 1)];
        assert_eq!(place(&nodes, &Request::default()).unwrap().name, "a");
    }

    #[test]
    fn pinning_chooses_that_node_or_says_why_not() {
        let mut down = node("b", 0);
        down.ready = false;
        let nodes = [node("a", 5), down];
        let pinned = |n: &str| Request {
            node: Some(n.into()),
            ..Default::default()
        };
        assert_eq!(place(&nodes, &pinned("a")).unwrap().name, "a");
        assert_eq!(
            place(&nodes, &pinned("zz")).unwrap_err(),
            PlacementError::UnknownNode("zz".into())
        );
        let err = place(&nodes, &pinned("b")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no node can run the container: b: node is down (no recent heartbeat)"
        );
    }

    #[test]
    fn every_rejected_node_gets_a_reason() {
        let mut down = node("b", 0);
        down.ready = false;
        let nodes = [node("a", 0), down];
        let err = place(
            &nodes,
            &Request {
                milli_cpus: 4000,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no node can run the container: a: needs 4 CPUs, node has 2; b: node is down (no recent heartbeat)"
        );
        assert_eq!(
            place(&[], &Request::default()).unwrap_err(),
            PlacementError::NoNodes
        );
    }
}
