//! The rules a create request must meet (the limits listed in
//! docs/architecture.md §Request limits), field by field.

use devctl_proto::{
    pb,
    validate::{self, InvalidField, limits},
};

use super::{MIN_MEMORY_BYTES, MIN_MILLI_CPUS};

/// Checks a create request.
pub fn validate_spec(spec: &pb::Container) -> Result<(), InvalidField> {
    validate::dns_label("container.name", &spec.name)?;
    if spec.image.trim().is_empty() {
        return Err(InvalidField::new(
            "container.image",
            "is required (e.g. devctl/busybox:latest)",
        ));
    }
    validate::max_len("container.image", &spec.image, limits::MAX_IMAGE_LEN)?;
    if spec
        .image
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(InvalidField::new(
            "container.image",
            format!(
                "{:?} is not an image reference (no spaces or control characters)",
                spec.image
            ),
        ));
    }
    if !spec.node.is_empty() {
        validate::dns_label("container.node", &spec.node)?;
    }
    let r = spec.resources.unwrap_or_default();
    if r.milli_cpus < 0
        || (r.milli_cpus > 0 && r.milli_cpus < MIN_MILLI_CPUS)
        || r.milli_cpus > limits::MAX_MILLI_CPUS
    {
        return Err(InvalidField::new(
            "container.resources.milli_cpus",
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
            "container.resources.memory_bytes",
            format!(
                "{} is out of range; use 0 (no limit) or {MIN_MEMORY_BYTES} (6 MiB) to {} (1 PiB)",
                r.memory_bytes,
                limits::MAX_MEMORY_BYTES
            ),
        ));
    }
    validate::max_count("container.command", spec.command.len(), limits::MAX_ARGS)?;
    validate::max_count("container.env", spec.env.len(), limits::MAX_ENV)?;
    validate::max_count("container.labels", spec.labels.len(), limits::MAX_LABELS)?;
    validate::max_count(
        "container.constraints",
        spec.constraints.len(),
        limits::MAX_CONSTRAINTS,
    )?;
    for (i, a) in spec.command.iter().enumerate() {
        validate::no_control(&format!("container.command[{i}]"), a)?;
    }
    for (k, v) in &spec.env {
        validate::env_key("container.env", k)?;
        validate::no_control("container.env", k)?;
        validate::max_len(&format!("container.env[{k:?}]"), v, limits::MAX_SPEC_BYTES)?;
        validate::no_control(&format!("container.env[{k:?}]"), v)?;
    }
    for (field, map) in [
        ("container.env", &spec.env),
        ("container.labels", &spec.labels),
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
        ("container.labels", &spec.labels),
        ("container.constraints", &spec.constraints),
    ] {
        for (k, v) in map {
            validate::label_key(field, k)?;
            validate::label_value(field, k, v)?;
        }
    }
    if let Some(h) = &spec.health_check {
        let field = "container.health_check.command";
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
                &format!("container.health_check.{name}"),
                value,
                max,
                " (0: the default)",
            )?;
        }
    }
    if spec.ttl_seconds.is_some_and(|t| t < 0) {
        return Err(InvalidField::new(
            "container.ttl_seconds",
            "must not be negative (0: no lease, where the cluster allows it)",
        ));
    }
    if spec.command.iter().any(|a| a.contains('\0')) {
        return Err(InvalidField::new(
            "container.command",
            "arguments must not contain NUL",
        ));
    }
    let strings = |v: &[String]| v.iter().map(String::len).sum::<usize>();
    let map = |m: &std::collections::HashMap<String, String>| {
        m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    let total = strings(&spec.command)
        + map(&spec.env)
        + map(&spec.labels)
        + map(&spec.constraints)
        + spec
            .health_check
            .as_ref()
            .map_or(0, |h| strings(&h.command));
    if total > limits::MAX_SPEC_BYTES {
        return Err(InvalidField::new(
            "container",
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
            image: "devctl/busybox:latest".into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_requests_are_validated_field_by_field() {
        assert!(validate_spec(&spec()).is_ok());
        type Mutation = Box<dyn Fn(&mut pb::Container)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.name = "Bad_Name".into()), "container.name"),
            (Box::new(|s| s.image = " ".into()), "container.image"),
            (Box::new(|s| s.node = "x.y".into()), "container.node"),
            (
                Box::new(|s| {
                    s.resources = Some(pb::Resources {
                        milli_cpus: 5,
                        memory_bytes: 0,
                    })
                }),
                "container.resources.milli_cpus",
            ),
            (
                Box::new(|s| {
                    s.resources = Some(pb::Resources {
                        milli_cpus: 0,
                        memory_bytes: 1024,
                    })
                }),
                "container.resources.memory_bytes",
            ),
            (
                Box::new(|s| {
                    s.env.insert("A B".into(), "x".into());
                }),
                "container.env",
            ),
            (
                Box::new(|s| {
                    s.labels.insert("io.devctl.id".into(), "x".into());
                }),
                "container.labels",
            ),
            (
                Box::new(|s| s.health_check = Some(pb::HealthCheck::default())),
                "container.health_check.command",
            ),
            (
                Box::new(|s| {
                    s.health_check = Some(pb::HealthCheck {
                        command: vec!["true".into()],
                        retries: -1,
                        ..Default::default()
                    })
                }),
                "container.health_check.retries",
            ),
            (
                Box::new(|s| s.ttl_seconds = Some(-5)),
                "container.ttl_seconds",
            ),
            (
                Box::new(|s| {
                    for i in 0..10_000 {
                        s.labels.insert(format!("l{i}"), "x".into());
                    }
                }),
                "container.labels",
            ),
            (
                Box::new(|s| s.command = vec!["x".into(); 100_000]),
                "container.command",
            ),
            (
                Box::new(|s| {
                    s.env.insert("BIG".into(), "x".repeat(1 << 20));
                }),
                "container.env[\"BIG\"]",
            ),
            (
                Box::new(|s| {
                    for i in 0..5 {
                        s.env.insert(format!("V{i}"), "x".repeat(60 * 1024));
                    }
                }),
                "container",
            ),
            (
                Box::new(|s| {
                    s.labels.insert("team".into(), "a b".into());
                }),
                "container.labels[\"team\"]",
            ),
            (Box::new(|s| s.image = "x".repeat(600)), "container.image"),
            (
                Box::new(|s| {
                    s.resources = Some(pb::Resources {
                        milli_cpus: i64::MAX,
                        memory_bytes: 0,
                    })
                }),
                "container.resources.milli_cpus",
            ),
            (
                Box::new(|s| {
                    s.health_check = Some(pb::HealthCheck {
                        command: vec!["true".into()],
                        interval_seconds: i32::MAX,
                        ..Default::default()
                    })
                }),
                "container.health_check.interval_seconds",
            ),
        ];
        for (mutate, field) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(validate_spec(&s).unwrap_err().field, field);
        }
    }
}
