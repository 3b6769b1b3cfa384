//! The deployment artefacts agree with the binaries: every environment variable that k8s,
//! compose and systemd set is one a service actually reads, and ports and probes match the
//! services' defaults. Both sides are read, nothing is copied by hand.

use std::{collections::BTreeSet, path::Path};

use serde_yaml::Value;
use telemetry::Env;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let mut v = Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}"));
            v.apply_merge().unwrap();
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// The variables one service's configuration reads, with its defaults.
struct Service {
    name: &'static str,
    reads: BTreeSet<String>,
    ports: Vec<(&'static str, u16)>,
}

fn services() -> Vec<Service> {
    let env = Env::default();
    let api = call_api::Config::from_env(&env).unwrap();
    let api_reads = env.names_read();
    let env = Env::default();
    let audio = audio_processor::Config::from_env(&env).unwrap();
    let audio_reads = env.names_read();
    let env = Env::default();
    let gateway = provider_gateway::Config::from_env(&env).unwrap();
    let gateway_reads = env.names_read();
    vec![
        Service { name: "call-api", reads: api_reads, ports: vec![("http", api.addr.port())] },
        Service {
            name: "audio-processor",
            reads: audio_reads,
            ports: vec![("grpc", audio.grpc_addr.port()), ("metrics", audio.admin_addr.port())],
        },
        Service {
            name: "provider-gateway",
            reads: gateway_reads,
            ports: vec![("grpc", gateway.grpc_addr.port()), ("metrics", gateway.admin_addr.port())],
        },
    ]
}

/// `CALL_API_ADMIN_ADDR` of the base ConfigMap, parsed as call-api parses it.
fn k8s_call_api_admin_addr() -> Option<std::net::SocketAddr> {
    let docs = yaml_docs("k8s/base/configmap.yaml");
    let value = docs.iter().find_map(|d| d["data"]["CALL_API_ADMIN_ADDR"].as_str().map(str::to_string))?;
    let env = Env::from_pairs([("CALL_API_ADMIN_ADDR", value.as_str())]);
    call_api::Config::from_env(&env).expect("the ConfigMap's CALL_API_ADMIN_ADDR is valid").admin_addr
}

fn all_reads(services: &[Service]) -> BTreeSet<String> {
    services.iter().flat_map(|s| s.reads.iter().cloned()).collect()
}

fn keys(map: &Value) -> Vec<String> {
    map.as_mapping().map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[test]
fn defaults_are_the_spec_ports() {
    let s = services();
    assert_eq!(s[0].ports, [("http", 8000)]);
    assert_eq!(s[1].ports, [("grpc", 50051), ("metrics", 9091)]);
    assert_eq!(s[2].ports, [("grpc", 50052), ("metrics", 9092)]);
}

#[test]
fn kubernetes_sets_only_variables_the_services_read_and_probes_match() {
    let services = services();
    let everything = all_reads(&services);
    for file in ["k8s/base/configmap.yaml", "k8s/overlays/dev/configmap.yaml", "k8s/overlays/prod/configmap.yaml"] {
        for doc in yaml_docs(file) {
            for key in keys(&doc["data"]) {
                assert!(everything.contains(&key), "{file} sets {key}, which no service reads");
            }
        }
    }
    for doc in yaml_docs("k8s/secret.template.yaml") {
        for key in keys(&doc["stringData"]) {
            assert!(everything.contains(&key), "the Secret template holds {key}, which no service reads");
        }
    }
    for service in &services {
        let docs = yaml_docs(&format!("k8s/base/{}.yaml", service.name));
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        for env in container["env"].as_sequence().unwrap() {
            let name = env["name"].as_str().unwrap();
            assert!(service.reads.contains(name), "{} sets {name}, which it does not read", service.name);
        }
        let ports: Vec<(String, u64)> = container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_u64().unwrap()))
            .collect();
        let mut expected: Vec<(String, u64)> =
            service.ports.iter().map(|(n, p)| (n.to_string(), u64::from(*p))).collect();
        // call-api has an admin port only where CALL_API_ADMIN_ADDR is set (as call-api reads it).
        if service.name == "call-api"
            && let Some(admin) = k8s_call_api_admin_addr()
        {
            expected.push(("admin".to_string(), u64::from(admin.port())));
        }
        assert_eq!(ports, expected, "{} container ports", service.name);
        let svc = docs.iter().find(|d| d["kind"] == "Service").expect("a Service");
        let svc_ports: Vec<&str> =
            svc["spec"]["ports"].as_sequence().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(svc_ports, expected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), "{} Service", service.name);

        let probe = |kind: &str| &container[kind];
        if service.name == "call-api" {
            assert_eq!(probe("startupProbe")["httpGet"]["path"], "/health");
            assert_eq!(probe("livenessProbe")["httpGet"]["path"], "/health");
            assert_eq!(probe("readinessProbe")["httpGet"]["path"], "/ready");
        } else {
            let grpc_port = u64::from(service.ports[0].1);
            let named = if service.name == "audio-processor" {
                kraliki_proto::audio::v1::SERVICE_NAME
            } else {
                kraliki_proto::provider::v1::SERVICE_NAME
            };
            assert_eq!(probe("livenessProbe")["grpc"]["port"].as_u64(), Some(grpc_port));
            assert_eq!(probe("livenessProbe")["grpc"]["service"].as_str().unwrap_or(""), "");
            assert_eq!(probe("readinessProbe")["grpc"]["port"].as_u64(), Some(grpc_port));
            assert_eq!(probe("readinessProbe")["grpc"]["service"], named);
            assert_eq!(probe("startupProbe")["httpGet"]["path"], "/health");
            assert_eq!(probe("startupProbe")["httpGet"]["port"], "metrics");
        }
    }
}

#[test]
fn compose_and_systemd_set_only_variables_the_services_read() {
    let services = services();
    let everything = all_reads(&services);
    let compose = yaml_docs("deploy/docker-compose.yml").remove(0);
    for service in &services {
        let s = &compose["services"][service.name];
        for key in keys(&s["environment"]) {
            assert!(service.reads.contains(&key), "compose sets {key} for {}, which it does not read", service.name);
        }
        let exposed: Vec<String> = s["expose"]
            .as_sequence()
            .into_iter()
            .flatten()
            .chain(s["ports"].as_sequence().into_iter().flatten())
            .filter_map(|p| p.as_str().map(|p| p.rsplit(':').next().unwrap().to_string()))
            .collect();
        for (_, port) in &service.ports {
            assert!(exposed.contains(&port.to_string()), "compose does not expose {port} of {}", service.name);
        }
    }
    let units = std::fs::read_dir(root().join("deploy/systemd")).unwrap();
    for entry in units {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let assignment = line.strip_prefix("Environment=").unwrap_or(line);
            let is_env_file = path.extension().is_some_and(|e| e == "example");
            if (is_env_file || line.starts_with("Environment="))
                && let Some((key, _)) = assignment.split_once('=')
            {
                assert!(everything.contains(key.trim()), "{} sets {key}, which no service reads", path.display());
            }
        }
    }
}
