//! Placement: a pure function from a snapshot of the nodes and a request to
//! a chosen node, or the reason each node was rejected. No I/O here.
//!
//! Feasibility, in order (the first failing check is the node's reason):
//! the node is ready; it is not cordoned; it carries every label the request constrains; its
//! unreserved CPU and memory cover the request; its live memory use is
//! below the admission threshold; with pull policy NEVER, it holds the image.
//!
//! Scoring: `spread` prefers the node with the smallest share of its
//! capacity reserved (then the fewest containers), `binpack` the largest
//! (filling nodes before starting new ones). Among equally loaded nodes, one
//! that already holds the image wins (no pull, no push); then the fewest
//! containers; then the name that sorts first, so decisions are
//! deterministic.

use std::{collections::HashMap, fmt};

use devctl_proto::pb;

/// How to choose among feasible nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Even out load across nodes.
    #[default]
    Spread,
    /// Fill nodes one after another.
    Binpack,
}

/// What placement knows of one node. Borrowed from the node registry, so
/// a decision copies no names or labels.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeView<'a> {
    /// Node name.
    pub name: &'a str,
    /// Heartbeats arrive.
    pub ready: bool,
    /// Takes no new containers.
    pub cordoned: bool,
    /// Node labels, sorted by key (a node has few: a scan beats hashing).
    pub labels: &'a [(String, String)],
    /// CPUs of the node, in thousandths.
    pub milli_cpus: i64,
    /// Memory of the node, in bytes.
    pub memory_bytes: i64,
    /// CPU already reserved by its containers, thousandths.
    pub reserved_milli_cpus: i64,
    /// Memory already reserved by its containers, bytes.
    pub reserved_memory_bytes: i64,
    /// Live memory use in percent (0-100), if the node reports it.
    pub memory_used_percent: Option<f64>,
    /// devctl containers placed on it.
    pub containers: usize,
    /// It holds the request's image (`None`: its images are not known yet).
    pub has_image: Option<bool>,
}

/// What a container asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// Pinned node, if any.
    pub node: Option<String>,
    /// CPU to reserve, thousandths.
    pub milli_cpus: i64,
    /// Memory to reserve, bytes.
    pub memory_bytes: i64,
    /// Node labels required (all of them).
    pub constraints: HashMap<String, String>,
    /// How to choose.
    pub strategy: Strategy,
    /// Live memory use above which a node takes no new container (percent).
    pub memory_threshold_percent: f64,
    /// How many times its CPUs a node's CPU reservations may add up to
    /// (CPU is shared in time, so dev containers that are idle most of the
    /// day can hold more than the node has); 1 or less: none. Memory is
    /// never overcommitted.
    pub cpu_overcommit: f64,
    /// The image (for the reasons' words).
    pub image: String,
    /// Pull policy NEVER: only a node holding the image will do.
    pub image_required: bool,
}

impl Request {
    /// The CPU (thousandths) `node`'s reservations may add up to.
    fn schedulable_cpus(&self, node: &NodeView<'_>) -> i64 {
        if self.cpu_overcommit > 1.0 {
            (node.milli_cpus as f64 * self.cpu_overcommit) as i64
        } else {
            node.milli_cpus
        }
    }
}

/// Why one node cannot take the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The node.
    pub node: String,
    /// Why, in words.
    pub reason: String,
    /// The node lacks capacity (rather than being unsuitable).
    pub capacity: bool,
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

impl PlacementError {
    /// Some node was only short of capacity: retrying later may succeed.
    pub fn is_capacity(&self) -> bool {
        matches!(self, PlacementError::NoFit(r) if r.iter().any(|r| r.capacity))
    }
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
    format!("{}", milli.max(0) as f64 / 1000.0)
}

fn gib(bytes: i64) -> String {
    format!("{:.2} GiB", bytes.max(0) as f64 / f64::from(1u32 << 30))
}

/// The first check a node fails (see the module's documentation for the
/// order). Cheap: the words are only written for [`PlacementError::NoFit`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unfit<'a> {
    Down,
    Cordoned,
    Label {
        key: &'a str,
        wanted: &'a str,
        has: Option<&'a str>,
    },
    Cpu,
    Memory,
    Hot(f64),
    NoImage {
        known: bool,
    },
}

/// The request's label constraints in the order they are checked.
fn sorted_constraints(req: &Request) -> Vec<(&String, &String)> {
    let mut wanted: Vec<_> = req.constraints.iter().collect();
    wanted.sort();
    wanted
}

/// Why `node` cannot take `req`, if it cannot; `wanted` is
/// [`sorted_constraints`] of `req`.
fn check<'a>(
    node: &'a NodeView<'_>,
    req: &Request,
    wanted: &[(&'a String, &'a String)],
) -> Option<Unfit<'a>> {
    if !node.ready {
        return Some(Unfit::Down);
    }
    if node.cordoned {
        return Some(Unfit::Cordoned);
    }
    for &(k, v) in wanted {
        match node.labels.iter().find(|(key, _)| key == k).map(|(_, v)| v) {
            Some(have) if have == v => {}
            has => {
                return Some(Unfit::Label {
                    key: k,
                    wanted: v,
                    has: has.map(String::as_str),
                });
            }
        }
    }
    if req.milli_cpus > req.schedulable_cpus(node) - node.reserved_milli_cpus {
        return Some(Unfit::Cpu);
    }
    if req.memory_bytes > node.memory_bytes - node.reserved_memory_bytes {
        return Some(Unfit::Memory);
    }
    if let Some(used) = node.memory_used_percent
        && used > req.memory_threshold_percent
    {
        return Some(Unfit::Hot(used));
    }
    match node.has_image {
        _ if !req.image_required => None,
        Some(true) => None,
        Some(false) => Some(Unfit::NoImage { known: true }),
        None => Some(Unfit::NoImage { known: false }),
    }
}

/// Why `node` cannot take `req`, in words: (reason, for lack of capacity).
fn reason(unfit: Unfit<'_>, node: &NodeView<'_>, req: &Request) -> (String, bool) {
    match unfit {
        Unfit::Down => ("node is down (no recent heartbeat)".into(), false),
        Unfit::Cordoned => (
            "cordoned (devctl nodes uncordon NODE lets it take containers)".into(),
            false,
        ),
        Unfit::Label {
            key: k,
            wanted: v,
            has: Some(have),
        } => (
            format!("label {k}={v} required, node has {k}={have}"),
            false,
        ),
        Unfit::Label {
            key: k,
            wanted: v,
            has: None,
        } => (
            format!("label {k}={v} required, node has no {k} label"),
            false,
        ),
        Unfit::Cpu => {
            let total = req.schedulable_cpus(node);
            let of = if total == node.milli_cpus {
                cpus(total)
            } else {
                format!(
                    "{} ({} CPUs x {} overcommit)",
                    cpus(total),
                    cpus(node.milli_cpus),
                    req.cpu_overcommit
                )
            };
            (
                format!(
                    "needs {} CPUs, {} free of {of}",
                    cpus(req.milli_cpus),
                    cpus(total - node.reserved_milli_cpus),
                ),
                true,
            )
        }
        Unfit::Memory => (
            format!(
                "needs {} of memory, {} free of {}",
                gib(req.memory_bytes),
                gib(node.memory_bytes - node.reserved_memory_bytes),
                gib(node.memory_bytes)
            ),
            true,
        ),
        Unfit::Hot(used) => (
            format!(
                "memory {used:.0}% used > {:.0}% threshold",
                req.memory_threshold_percent
            ),
            true,
        ),
        Unfit::NoImage { known: true } => (
            format!(
                "image {} is not on this node and pull policy is never (build it there with devctl images build CONTEXT -t {} --node {}, or pull it with --pull missing)",
                req.image, req.image, node.name
            ),
            false,
        ),
        Unfit::NoImage { known: false } => (
            format!(
                "the node has not reported its images yet and pull policy is never (retry, or check devctl images ls --node {})",
                node.name
            ),
            false,
        ),
    }
}

/// Share of the node's capacity reserved once `req` is placed (0..=1, the
/// larger of CPU and memory).
fn load_after(node: &NodeView<'_>, req: &Request) -> f64 {
    let share = |reserved: i64, asked: i64, total: i64| {
        if total <= 0 {
            1.0
        } else {
            (reserved + asked) as f64 / total as f64
        }
    };
    share(
        node.reserved_milli_cpus,
        req.milli_cpus,
        req.schedulable_cpus(node),
    )
    .max(share(
        node.reserved_memory_bytes,
        req.memory_bytes,
        node.memory_bytes,
    ))
}

/// A node's live memory use in percent, from its usage sample.
pub fn memory_used_percent(stats: &pb::NodeStats) -> Option<f64> {
    (stats.memory_total_bytes > 0)
        .then(|| 100.0 * stats.memory_used_bytes as f64 / stats.memory_total_bytes as f64)
}

/// Chooses a node for `req` among `nodes`.
pub fn place<'v, 'a>(
    nodes: &'v [NodeView<'a>],
    req: &Request,
) -> Result<&'v NodeView<'a>, PlacementError> {
    let candidates: &[NodeView<'a>] = match &req.node {
        Some(pinned) => std::slice::from_ref(
            nodes
                .iter()
                .find(|n| n.name == pinned)
                .ok_or_else(|| PlacementError::UnknownNode(pinned.clone()))?,
        ),
        None if nodes.is_empty() => return Err(PlacementError::NoNodes),
        None => nodes,
    };
    let wanted = sorted_constraints(req);
    let feasible = candidates
        .iter()
        .filter(|n| check(n, req, &wanted).is_none())
        .map(|n| (n, load_after(n, req)));
    // Equal loads: the node holding the image, then fewer containers
    // (spread) or more (binpack), then the name.
    let ties = |a: &&NodeView<'_>, b: &&NodeView<'_>| {
        let missing = |n: &NodeView<'_>| n.has_image != Some(true);
        let containers = match req.strategy {
            Strategy::Spread => a.containers.cmp(&b.containers),
            Strategy::Binpack => b.containers.cmp(&a.containers),
        };
        missing(a)
            .cmp(&missing(b))
            .then(containers)
            .then_with(|| a.name.cmp(b.name))
    };
    let best = match req.strategy {
        Strategy::Spread => feasible.min_by(|(a, la), (b, lb)| {
            la.partial_cmp(lb)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| ties(a, b))
        }),
        Strategy::Binpack => feasible.min_by(|(a, la), (b, lb)| {
            lb.partial_cmp(la)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| ties(a, b))
        }),
    };
    match best {
        Some((node, _)) => Ok(node),
        // Only now are the reasons written down.
        None => Err(PlacementError::NoFit(
            candidates
                .iter()
                .filter_map(|node| {
                    let (reason, capacity) = reason(check(node, req, &wanted)?, node, req);
                    Some(Rejection {
                        node: node.name.to_string(),
                        reason,
                        capacity,
                    })
                })
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &'static str, containers: usize) -> NodeView<'static> {
        NodeView {
            name,
            ready: true,
            milli_cpus: 2000,
            memory_bytes: 4 << 30,
            containers,
            ..Default::default()
        }
    }

    fn req() -> Request {
        Request {
            memory_threshold_percent: 90.0,
            ..Default::default()
        }
    }

    #[test]
    fn pull_never_needs_the_image_and_otherwise_the_image_breaks_ties() {
        let with = |name, has| NodeView {
            has_image: has,
            ..node(name, 0)
        };
        let nodes = [
            with("a", Some(false)),
            with("b", Some(true)),
            with("c", None),
        ];
        // Equal loads: the node holding the image wins over the name.
        assert_eq!(place(&nodes, &req()).unwrap().name, "b");
        let never = Request {
            image: "x:1".into(),
            image_required: true,
            ..req()
        };
        assert_eq!(place(&nodes, &never).unwrap().name, "b");
        // A lighter node still wins when the image may be pulled.
        let mut busy_b = with("b", Some(true));
        busy_b.reserved_milli_cpus = 1000;
        let nodes = [with("a", Some(false)), busy_b, with("c", None)];
        assert_eq!(place(&nodes, &req()).unwrap().name, "a");
        let nodes = [with("a", Some(false)), with("c", None)];
        let Err(PlacementError::NoFit(r)) = place(&nodes, &never) else {
            panic!("placed without the image");
        };
        assert_eq!(r.len(), 2);
        assert!(
            r[0].reason.contains("image x:1 is not on this node"),
            "{r:?}"
        );
        assert!(
            r[0].reason
                .contains("devctl images build CONTEXT -t x:1 --node a"),
            "{r:?}"
        );
        assert!(r[1].reason.contains("not reported its images"), "{r:?}");
        assert!(r.iter().all(|r| !r.capacity));
    }

    #[test]
    fn spreads_to_the_emptiest_node_deterministically() {
        let nodes = [node("b", 1), node("a", 1), node("c", 0)];
        assert_eq!(place(&nodes, &req()).unwrap().name, "c");
        let nodes = [node("b", 1), node("a", 1)];
        assert_eq!(place(&nodes, &req()).unwrap().name, "a");
        // Reservations weigh more than counts.
        let mut busy = node("a", 0);
        busy.reserved_milli_cpus = 1500;
        let nodes = [busy, node("b", 3)];
        let r = Request {
            milli_cpus: 100,
            ..req()
        };
        assert_eq!(place(&nodes, &r).unwrap().name, "b");
    }

    #[test]
    fn binpack_fills_the_fullest_node_that_fits() {
        let mut half = node("a", 1);
        half.reserved_milli_cpus = 1000;
        let mut full = node("b", 2);
        full.reserved_milli_cpus = 1900;
        let nodes = [half, full, node("c", 0)];
        let r = Request {
            milli_cpus: 500,
            strategy: Strategy::Binpack,
            ..req()
        };
        // b has only 0.1 CPU free: a is the fullest that fits.
        assert_eq!(place(&nodes, &r).unwrap().name, "a");
        let r = Request {
            milli_cpus: 100,
            ..r
        };
        assert_eq!(place(&nodes, &r).unwrap().name, "b");
    }

    #[test]
    fn cpu_is_overcommitted_by_the_ratio_and_memory_never() {
        let mut a = node("a", 3);
        a.reserved_milli_cpus = 7000;
        a.reserved_memory_bytes = 3 << 30;
        let nodes = [a];
        let r = Request {
            milli_cpus: 1000,
            cpu_overcommit: 4.0,
            ..req()
        };
        // 2 CPUs x 4: 8 schedulable, 7 reserved, 1 more fits.
        assert_eq!(place(&nodes, &r).unwrap().name, "a");
        let more = Request {
            milli_cpus: 1500,
            ..r.clone()
        };
        let err = place(&nodes, &more).unwrap_err().to_string();
        assert!(
            err.contains("a: needs 1.5 CPUs, 1 free of 8 (2 CPUs x 4 overcommit)"),
            "{err}"
        );
        // Without overcommit the same node is full.
        let none = Request {
            cpu_overcommit: 1.0,
            ..r.clone()
        };
        let err = place(&nodes, &none).unwrap_err().to_string();
        assert!(err.contains("a: needs 1 CPUs, 0 free of 2"), "{err}");
        // Memory: 4 GiB, 3 reserved; 1.5 does not fit whatever the ratio.
        let big = Request {
            memory_bytes: 3 << 29,
            ..r
        };
        let err = place(&nodes, &big).unwrap_err().to_string();
        assert!(err.contains("1.00 GiB free of 4.00 GiB"), "{err}");
    }

    #[test]
    fn constraints_select_by_label() {
        let zone = [("zone".to_string(), "eu".to_string())];
        let mut eu = node("eu-1", 5);
        eu.labels = &zone;
        let nodes = [node("plain", 0), eu];
        let mut r = req();
        r.constraints.insert("zone".into(), "eu".into());
        assert_eq!(place(&nodes, &r).unwrap().name, "eu-1");
        r.constraints.insert("zone".into(), "us".into());
        let err = place(&nodes, &r).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no node can run the container: plain: label zone=us required, node has no zone label; \
             eu-1: label zone=us required, node has zone=eu"
        );
        assert!(!err.is_capacity());
    }

    #[test]
    fn every_rejected_node_gets_a_reason() {
        let mut down = node("b", 0);
        down.ready = false;
        let mut hot = node("c", 0);
        hot.memory_used_percent = Some(93.0);
        let mut reserved = node("d", 0);
        reserved.reserved_memory_bytes = 4 << 30;
        let mut cordoned = node("e", 0);
        cordoned.cordoned = true;
        let nodes = [node("a", 0), down, hot, reserved, cordoned];
        let err = place(
            &nodes,
            &Request {
                milli_cpus: 4000,
                ..req()
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no node can run the container: a: needs 4 CPUs, 2 free of 2; \
             b: node is down (no recent heartbeat); c: needs 4 CPUs, 2 free of 2; \
             d: needs 4 CPUs, 2 free of 2; \
             e: cordoned (devctl nodes uncordon NODE lets it take containers)"
        );
        assert!(err.is_capacity());
        let err = place(
            &nodes[1..],
            &Request {
                memory_bytes: 1 << 30,
                ..req()
            },
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("c: memory 93% used > 90% threshold"),
            "{text}"
        );
        assert!(
            text.contains("d: needs 1.00 GiB of memory, 0.00 GiB free of 4.00 GiB"),
            "{text}"
        );
        assert_eq!(place(&[], &req()).unwrap_err(), PlacementError::NoNodes);
    }

    #[test]
    fn pinning_chooses_that_node_or_says_why_not() {
        let mut down = node("b", 0);
        down.ready = false;
        let nodes = [node("a", 5), down];
        let pinned = |n: &str| Request {
            node: Some(n.into()),
            ..req()
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
}
