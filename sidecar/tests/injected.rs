//! The injected container, from the sidecar's side: what the operator's webhook writes
//! (`xlattice_operator::webhook::inject::sidecar`) is parsed with the sidecar's own argument
//! parser, every environment variable it sets is one the sidecar reads, and the paths, ports
//! and probes agree with what the sidecar will serve. The webhook's side is tested by its
//! unit tests; this is the other end of the same contract.

use std::collections::BTreeSet;

use clap::{Args, CommandFactory, Parser};
use xlattice_operator::{
    webhook::inject::{default_resources, sidecar, Injection},
    XLatticeCluster, XLatticeClusterSpec,
};
use xlattice_sidecar::{
    cli::{Cli, Command},
    config::SidecarConfig,
};

fn cluster(spec: serde_json::Value) -> XLatticeCluster {
    let spec: XLatticeClusterSpec = serde_json::from_value(spec).unwrap();
    XLatticeCluster::new("store", spec)
}

#[test]
fn the_sidecar_parses_what_the_webhook_injects() {
    let injection = Injection {
        image: "xlattice-sidecar:test".into(),
        pull_policy: None,
        resources: default_resources(),
        require_fips: false,
    };
    for spec in [
        serde_json::json!({"selector": {"matchLabels": {"app": "s"}}, "clusterPort": 7000, "clientPort": 8000}),
        serde_json::json!({"selector": {"matchLabels": {"app": "s"}}, "clusterPort": 60000, "clientPort": 443,
                           "upstream": {"clusterPort": 9000, "clientPort": 9443}}),
        serde_json::json!({"selector": {"matchLabels": {"app": "s"}}, "clusterPort": 7000, "clientPort": 8000,
                           "postQuantum": "Required"}),
        serde_json::json!({"selector": {"matchLabels": {"app": "s"}}, "clusterPort": 7000, "clientPort": 8000,
                           "postQuantum": "Disabled"}),
    ] {
        let cluster = cluster(spec);
        let container = sidecar(&cluster, &injection);
        let args = container.args.clone().unwrap();
        let parsed = Cli::try_parse_from(std::iter::once("xlattice".to_string()).chain(args.clone()))
            .unwrap_or_else(|e| panic!("the sidecar refuses the injected arguments {args:?}: {e}"));
        let Command::Run(config) = parsed.command else {
            panic!("not the run command")
        };
        let (up_cluster, up_client) = cluster.spec.upstream_ports();
        assert_eq!(i32::from(config.cluster_port), cluster.spec.cluster_port);
        assert_eq!(i32::from(config.client_port), cluster.spec.client_port);
        assert_eq!(config.cluster_upstream.to_string(), format!("127.0.0.1:{up_cluster}"));
        assert_eq!(config.client_upstream.to_string(), format!("127.0.0.1:{up_client}"));
        assert_eq!(config.post_quantum.name(), cluster.spec.post_quantum.flag());

        // The identity and directory are read where the webhook mounts them.
        let mounts: BTreeSet<String> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.clone())
            .collect();
        for path in [&config.identity_dir, &config.directory] {
            assert!(
                mounts.contains(path.to_str().unwrap()),
                "{path:?} is not mounted: {mounts:?}"
            );
        }
        // The version the operator stamps on the pod is where the sidecar looks for it: a
        // Downward API item of the directory volume.
        assert_eq!(
            config.expected_directory_version,
            config
                .directory
                .join(xlattice_operator::webhook::inject::DIRECTORY_VERSION_FILE)
        );

        // The container declares, and the probes hit, the ports the sidecar listens on.
        let declared: BTreeSet<i32> = container.ports.iter().flatten().map(|p| p.container_port).collect();
        let admin = i32::from(config.admin_listen.port());
        let expected = BTreeSet::from([i32::from(config.cluster_port), i32::from(config.client_port), admin]);
        assert_eq!(declared, expected);
        for probe in [
            &container.startup_probe,
            &container.readiness_probe,
            &container.liveness_probe,
        ] {
            let port = &probe.as_ref().unwrap().http_get.as_ref().unwrap().port;
            assert_eq!(
                *port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(admin)
            );
        }

        // Every variable the webhook sets is one the sidecar reads.
        let read: BTreeSet<String> = SidecarConfig::augment_args(clap::Command::new("run"))
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        for env in container.env.iter().flatten() {
            assert!(
                read.contains(&env.name),
                "the webhook sets {} which the sidecar never reads",
                env.name
            );
        }
    }
    // The parser itself is sound (clap's own consistency checks).
    Cli::command().debug_assert();
}

/// An operator run with `--require-fips` injects sidecars that refuse to start outside FIPS
/// mode: the variable it sets is the one the sidecar's parser reads, with a value it takes as
/// true (the only test in this file to touch the process environment).
#[test]
fn a_fips_operator_injects_sidecars_that_require_fips() {
    let cluster = cluster(
        serde_json::json!({"selector": {"matchLabels": {"app": "s"}}, "clusterPort": 7000, "clientPort": 8000}),
    );
    let parse = |container: &k8s_openapi::api::core::v1::Container| {
        let mut env = container.env.clone().unwrap_or_default();
        env.retain(|e| e.value.is_some());
        for e in &env {
            std::env::set_var(&e.name, e.value.as_deref().unwrap());
        }
        let args = container.args.clone().unwrap();
        let parsed = Cli::try_parse_from(std::iter::once("xlattice".to_string()).chain(args));
        for e in &env {
            std::env::remove_var(&e.name);
        }
        let Command::Run(config) = parsed.unwrap().command else {
            panic!("not the run command")
        };
        config.require_fips
    };
    for require_fips in [false, true] {
        let injection = Injection {
            image: "xlattice-sidecar:test-fips".into(),
            pull_policy: None,
            resources: default_resources(),
            require_fips,
        };
        assert_eq!(parse(&sidecar(&cluster, &injection)), require_fips);
    }
}
