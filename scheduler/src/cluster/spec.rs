//! The rules a create request must meet (the limits listed in
//! docs/architecture.md §Request limits), field by field.

use devctl_proto::container::ContainerExt;
use devctl_proto::{
    pb,
    validate::{self, InvalidField, limits},
};

use super::{MIN_MEMORY_BYTES, MIN_MILLI_CPUS};

/// Checks a create request.
pub fn validate_spec(spec: &pb::Container) -> Result<(), InvalidField> {
    validate::dns_label("container.name", &spec.name)?;
    let s = spec.spec();
    if s.image.trim().is_empty() {
        return Err(InvalidField::new(
            "container.spec.image",
            "is required (e.g. devctl/busybox:latest)",
        ));
    }
    validate::max_len("container.spec.image", &s.image, limits::MAX_IMAGE_LEN)?;
    if s.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidField::new(
            "container.spec.image",
            format!(
                "{:?} is not an image reference (no spaces or control characters)",
                s.image
            ),
        ));
    }
    if !s.node.is_empty() {
        validate::dns_label("container.spec.node", &s.node)?;
    }
    super::workspaces::validate_workspace_fields(s)?;
    let r = s.resources.unwrap_or_default();
    if r.milli_cpus < 0
        || (r.milli_cpus > 0 && r.milli_cpus < MIN_MILLI_CPUS)
        || r.milli_cpus > limits::MAX_MILLI_CPUS
    {
        return Err(InvalidField::new(
            "container.spec.resources.milli_cpus",
            format!(
                "{} is out of range; use 0 (no limit) or {MIN_MILLI_CPUS} (0.01 CPU) to {} ({} CPUs)",
                r.milli_cpus,
                limits::MAX_MILLI_CPUS,
                limits::MAX_MILLI_CPUS / 1000
            ),
        ));
    }
    if r.memory_bytes < 0
        || (r.memory_bytes > 0 && r.memory_bytes < MIN_MEMORY_BYTES)
        || r.memory_bytes > limits::MAX_MEMORY_BYTES
    {
        return Err(InvalidField::new(
            "container.spec.resources.memory_bytes",
            format!(
                "{} is out of range; use 0 (no limit) or {MIN_MEMORY_BYTES} (6 MiB) to {} (1 PiB)",
                r.memory_bytes,
                limits::MAX_MEMORY_BYTES
            ),
        ));
    }
    validate::max_count("container.spec.command", s.command.len(), limits::MAX_ARGS)?;
    validate::max_count("container.spec.env", s.env.len(), limits::MAX_ENV)?;
    validate::max_count("container.spec.labels", s.labels.len(), limits::MAX_LABELS)?;
    validate::max_count(
        "container.spec.constraints",
        s.constraints.len(),
        limits::MAX_CONSTRAINTS,
    )?;
    for (i, a) in s.command.iter().enumerate() {
        validate::no_control(&format!("container.spec.command[{i}]"), a)?;
    }
    for (k, v) in &s.env {
        validate::env_key("container.spec.env", k)?;
        validate::no_control("container.spec.env", k)?;
        validate::max_len(
            &format!("container.spec.env[{k:?}]"),
            v,
            limits::MAX_SPEC_BYTES,
        )?;
        validate::no_control(&format!("container.spec.env[{k:?}]"), v)?;
    }
    for (field, map) in [
        ("container.spec.env", &s.env),
        ("container.spec.labels", &s.labels),
    ] {
        for (k, v) in map {
            if v.contains('\0') {
                return Err(InvalidField::new(
                    format!("{field}[{k:?}]"),
                    "must not contain NUL",
                ));
            }
        }
    }
    for (field, map) in [
        ("container.spec.labels", &s.labels),
        ("container.spec.constraints", &s.constraints),
    ] {
        for (k, v) in map {
            validate::label_key(field, k)?;
            validate::label_value(field, k, v)?;
        }
    }
    if let Some(h) = &s.health_check {
        let field = "container.spec.health_check.command";
        if h.command.is_empty() || h.command[0].trim().is_empty() {
            return Err(InvalidField::new(
                field,
                "is required (e.g. [\"pg_isready\", \"-q\"], or [\"sh\", \"-c\", \"...\"])",
            ));
        }
        validate::max_count(field, h.command.len(), limits::MAX_ARGS)?;
        if h.command.iter().any(|a| a.contains('\0')) {
            return Err(InvalidField::new(field, "arguments must not contain NUL"));
        }
        for (i, a) in h.command.iter().enumerate() {
            validate::no_control(&format!("{field}[{i}]"), a)?;
        }
        for (name, value, max) in [
            (
                "interval_seconds",
                h.interval_seconds,
                limits::MAX_HEALTH_SECONDS,
            ),
            ("retries", h.retries, limits::MAX_HEALTH_RETRIES),
            (
                "timeout_seconds",
                h.timeout_seconds,
                limits::MAX_HEALTH_SECONDS,
            ),
            (
                "start_period_seconds",
                h.start_period_seconds,
                limits::MAX_HEALTH_SECONDS,
            ),
        ] {
            validate::in_range(
                &format!("container.spec.health_check.{name}"),
                value,
                max,
                " (0: the default)",
            )?;
        }
    }
    if s.ttl_seconds.is_some_and(|t| t < 0) {
        return Err(InvalidField::new(
            "container.spec.ttl_seconds",
            "must not be negative (0: no lease, where the cluster allows it)",
        ));
    }
    if s.command.iter().any(|a| a.contains('\0')) {
        return Err(InvalidField::new(
            "container.spec.command",
            "arguments must not contain NUL",
        ));
    }
    let strings = |v: &[String]| v.iter().map(String::len).sum::<usize>();
    let map = |m: &std::collections::HashMap<String, String>| {
        m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    let total = strings(&s.command)
        + map(&s.env)
        + map(&s.labels)
        + map(&s.constraints)
        + s.health_check.as_ref().map_or(0, |h| strings(&h.command));
    if total > limits::MAX_SPEC_BYTES {
        return Err(InvalidField::new(
            "container.spec",
            format!(
                "command, env, labels, constraints and health check add up to {total} bytes; at most {} ({} KiB) are allowed (put large data in a file in the image or a workspace)",
                limits::MAX_SPEC_BYTES,
                limits::MAX_SPEC_BYTES / 1024
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> pb::Container {
        pb::Container {
            name: "web".into(),
            spec: Some(pb::ContainerSpec {
                image: "devctl/busybox:latest".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn create_requests_are_validated_field_by_field() {
        assert!(validate_spec(&spec()).is_ok());
        type Mutation = Box<dyn Fn(&mut pb::Container)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.name = "Bad_Name".into()), "container.name"),
            (
                Box::new(|s| s.spec_mut().image = " ".into()),
                "container.spec.image",
            ),
            (
                Box::new(|s| s.spec_mut().node = "x.y".into()),
                "container.spec.node",
            ),
            (
                Box::new(|s| {
                    s.spec_mut().resources = Some(pb::Resources {
                        milli_cpus: 5,
                        memory_bytes: 0,
                    })
                }),
                "container.spec.resources.milli_cpus",
            ),
            (
                Box::new(|s| {
                    s.spec_mut().resources = Some(pb::Resources {
                        milli_cpus: 0,
                        memory_bytes: 1024,
                    })
                }),
                "container.spec.resources.memory_bytes",
            ),
            (
                Box::new(|s| {
                    s.spec_mut().env.insert("A B".into(), "x".into());
                }),
                "container.spec.env",
            ),
            (
                Box::new(|s| {
                    s.spec_mut()
                        .labels
                        .insert("io.devctl.id".into(), "x".into());
                }),
                "container.spec.labels",
            ),
            (
                Box::new(|s| s.spec_mut().health_check = Some(pb::HealthCheck::default())),
                "container.spec.health_check.command",
            ),
            (
                Box::new(|s| {
                    s.spec_mut().health_check = Some(pb::HealthCheck {
                        command: vec!["true".into()],
                        retries: -1,
                        ..Default::default()
                    })
                }),
                "container.spec.health_check.retries",
            ),
            (
                Box::new(|s| s.spec_mut().ttl_seconds = Some(-5)),
                "container.spec.ttl_seconds",
            ),
            (
                Box::new(|s| {
                    for i in 0..10_000 {
                        s.spec_mut().labels.insert(format!("l{i}"), "x".into());
                    }
                }),
                "container.spec.labels",
            ),
            (
                Box::new(|s| s.spec_mut().command = vec!["x".into(); 100_000]),
                "container.spec.command",
            ),
            (
                Box::new(|s| {
                    s.spec_mut().env.insert("BIG".into(), "x".repeat(1 << 20));
                }),
                "container.spec.env[\"BIG\"]",
            ),
            (
                Box::new(|s| {
                    for i in 0..5 {
                        s.spec_mut()
                            .env
                            .insert(format!("V{i}"), "x".repeat(60 * 1024));
                    }
                }),
                "container.spec",
            ),
            (
                Box::new(|s| {
                    s.spec_mut().labels.insert("team".into(), "a b".into());
                }),
                "container.spec.labels[\"team\"]",
            ),
            (
                Box::new(|s| s.spec_mut().image = "x".repeat(600)),
                "container.spec.image",
            ),
            (
                Box::new(|s| {
                    s.spec_mut().resources = Some(pb::Resources {
                        milli_cpus: i64::MAX,
                        memory_bytes: 0,
                    })
                }),
                "container.spec.resources.milli_cpus",
            ),
            (
                Box::new(|s| {
                    s.spec_mut().health_check = Some(pb::HealthCheck {
                        command: vec!["true".into()],
                        interval_seconds: i32::MAX,
                        ..Default::default()
                    })
                }),
                "container.spec.health_check.interval_seconds",
            ),
        ];
        for (mutate, field) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(validate_spec(&s).unwrap_err().field, field);
        }
    }
}
