//! Unit tests of `templates.rs`.

use super::*;

const SEED: &str = r#"apiVersion: devcontainer/v1
kind: Template
metadata:
  name: python-ml-stack
  description: Python with ML/Data Science tools
spec:
  base_image: python:3.12
  packages:
    apt:
      - build-essential
      - libhdf5-dev
    pip:
      - numpy
      - pandas
      - scikit-learn
      - jupyter
  environment:
    PYTHONPATH: /workspace
    JUPYTER_PORT: 8888
  volumes:
    - host: ./data
      container: /data
      mode: rw
  ports:
    - 8888:8888  # Jupyter
  post_create:
    - pip install -e .
    - jupyter notebook --generate-config
"#;

fn refusal(text: &str) -> String {
    let e = parse_template(text).unwrap_err();
    match e.kind() {
        ErrorKind::InvalidSpec { field } => format!("{field} | {e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_seed_template_parses() {
    let (name, description, spec) = parse_template(SEED).unwrap();
    assert_eq!(name, "python-ml-stack");
    assert_eq!(description, "Python with ML/Data Science tools");
    assert_eq!(spec.base_image, "python:3.12");
    assert_eq!(spec.apt_packages, ["build-essential", "libhdf5-dev"]);
    assert_eq!(spec.pip_packages.len(), 4);
    assert_eq!(spec.environment["JUPYTER_PORT"], "8888");
    assert_eq!(spec.ports[0].container, 8888);
    assert_eq!(spec.volumes[0].mode, "rw");
    assert_eq!(spec.post_create.len(), 2);
    let dockerfile = template_dockerfile(&spec).unwrap();
    assert!(dockerfile.starts_with("FROM python:3.12\n"), "{dockerfile}");
    assert!(
        dockerfile.contains(
            r#"RUN ["pip","install","--no-cache-dir","numpy","pandas","scikit-learn","jupyter"]"#
        ),
        "{dockerfile}"
    );
    let image = template_image(&name, &spec);
    assert!(
        image.starts_with("devctl-template/python-ml-stack:"),
        "{image}"
    );
    assert_eq!(image.len(), "devctl-template/python-ml-stack:".len() + 12);
}

#[test]
fn invalid_templates_name_the_field_and_line() {
    let injected = SEED.replace("      - libhdf5-dev", "      - \"curl; rm -rf /\"");
    let r = refusal(&injected);
    assert!(r.starts_with("spec.packages.apt[1] | "), "{r}");
    assert!(r.contains("line 11"), "{r}");
    let r = refusal(&SEED.replace("      - pandas", "      - pandas$(id)"));
    assert!(r.starts_with("spec.packages.pip[1] | "), "{r}");
    assert!(r.contains("line 14"), "{r}");
    let r = refusal(&SEED.replace("  base_image:", "  base_imag:"));
    assert!(r.contains("line 7"), "{r}");
    assert!(r.contains("base_imag"), "{r}");
    let r = refusal(&SEED.replace("8888:8888", "99999"));
    assert!(r.starts_with("spec.ports[0] | "), "{r}");
    let r = refusal(&SEED.replace("kind: Template", "kind: Pod"));
    assert!(r.starts_with("kind | "), "{r}");
    assert!(r.contains("line 2"), "{r}");
    let r = refusal(&SEED.replace("name: python-ml-stack", "name: Python_ML"));
    assert!(r.starts_with("metadata.name | "), "{r}");
    assert!(r.contains("line 4"), "{r}");
    let r = refusal(&SEED.replace("host: ./data", "host: ../etc"));
    assert!(r.starts_with("spec.volumes[0].host | "), "{r}");
    assert!(r.contains("line 21"), "{r}");
    let r = refusal("apiVersion: [");
    assert!(r.contains("line 1"), "{r}");
}

#[tokio::test]
async fn a_template_image_that_cannot_be_built_leaves_nothing() {
    use super::super::{CreateOptions, fake_link};
    let f = fake_link::cluster();
    let yaml = SEED.replace("python:3.12", "devctl/busybox:latest");
    f.cluster.apply_template(&yaml, "alice").await.unwrap();
    let c = f
        .cluster
        .from_template("python-ml-stack", fake_link::spec("web"))
        .unwrap();
    // The spec's own image wins; here it is cleared to take the template's.
    assert_eq!(c.spec().template, "python-ml-stack");
    let mut c = c;
    c.spec_mut().image.clear();
    let c = f.cluster.from_template("python-ml-stack", c).unwrap();
    assert!(
        c.spec()
            .image
            .starts_with("devctl-template/python-ml-stack:")
    );
    assert!(c.spec().image_recipe.is_some());
    assert_eq!(c.spec().env["JUPYTER_PORT"], "8888");
    assert_eq!(c.spec().post_create.len(), 2);
    // The template's volume is the container's own named volume.
    assert_eq!(
        c.spec().mounts,
        vec![pb::Mount {
            source: Some(pb::mount::Source::Volume("web-data".into())),
            target: "/data".into(),
            read_only: false,
        }]
    );
    // The fake link cannot build: the create fails before the agent is
    // asked to create anything, and no record is left.
    let e = f
        .cluster
        .create(c, "alice", CreateOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ImageNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot build"), "{e}");
    assert!(f.cluster.store().container("web").unwrap().is_none());
    assert!(f.link.kinds().is_empty(), "{:?}", f.link.kinds());
    let err = f
        .cluster
        .from_template("nope", fake_link::spec("x"))
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::NotFound {
                what: "template",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn package_names_are_strict() {
    for ok in [
        "gcc",
        "g++",
        "libc6-dev",
        "python3.11",
        "curl=7.88.1-10+deb12u5",
    ] {
        assert!(apt_package(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a", "Curl", "-x", "a b", "x;y", "x=", "x=$(id)", "x\ny"] {
        assert!(apt_package(bad).is_err(), "{bad:?}");
    }
    for ok in [
        "numpy",
        "scikit-learn",
        "requests[socks]",
        "pandas>=2,<3",
        "a==1.0.*",
        "zope.interface",
    ] {
        assert!(pip_package(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "-e",
        ".",
        "x y",
        "x;y",
        "x>=",
        "x[",
        "git+https://x",
        "x @ file:///etc",
    ] {
        assert!(pip_package(bad).is_err(), "{bad:?}");
    }
}
