//! Envoy itself checks every config the renderer produces: `envoy --mode validate`
//! loads each listener, cluster, filter, certificate and wasm module without serving.
//! Rendered for every waypoint and every gateway of the mesh files this repository
//! ships (the documented example and the Docker testbed's), in every variant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use envoy_config::eastwest::{self, EastWest};
use envoy_config::template::Edge;
use envoy_config::waypoint::{self, Engine, Waypoint};
use mesh::Mesh;
use waypoint_core::Limits;

const MESH_FILES: [&str; 2] = ["mesh/mesh.example.json", "testbed/mesh.json"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Envoy the project runs (`make build` installs it); a missing one fails the test.
fn envoy() -> PathBuf {
    let default = workspace().join(".venv/lib/python3.11/site-packages/envoy/_bin/envoy");
    let path = std::env::var_os("ENVOY_BIN").map(PathBuf::from).unwrap_or(default);
    assert!(path.is_file(), "no Envoy at {} (run `make build`, or set ENVOY_BIN)", path.display());
    path
}

/// The built module (`make build`): validation loads it too.
fn wasm() -> PathBuf {
    let default = workspace().join("dist/waypoint.wasm");
    let path = std::env::var_os("WAYPOINT_WASM").map(PathBuf::from).unwrap_or(default);
    assert!(path.is_file(), "no module at {} (run `make build`, or set WAYPOINT_WASM)", path.display());
    path
}

/// Where `make build` puts the native module: Envoy loads it from there by name.
fn native_module_dir() -> PathBuf {
    let dir = workspace().join("dist");
    assert!(dir.join("libwaypoint_native.so").is_file(), "no native module in {} (run `make build`)", dir.display());
    dir
}

/// Envoy's verdict on one config: `Err` holds what it said.
fn envoy_validates(dir: &Path, name: &str, yaml: &str) -> Result<(), String> {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(envoy())
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_module_dir())
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn assert_envoy_accepts(dir: &Path, name: &str, yaml: &str) {
    if let Err(said) = envoy_validates(dir, name, yaml) {
        panic!("Envoy rejects {name}:\n{said}");
    }
}

struct Rendered {
    mesh: Mesh,
    dir: tempfile::TempDir,
    certs: mesh::ca::CertDir,
    /// The waypoints' workload names and the networks with a gateway.
    waypoints: Vec<String>,
    gateways: Vec<String>,
}

/// A mesh file with certificates for exactly its waypoints and gateways: a config
/// that points at another identity's files names files that do not exist.
fn load(file: &str) -> Rendered {
    let mesh = Mesh::load(&workspace().join(file)).unwrap();
    let waypoint_ids: BTreeSet<&str> =
        mesh.services.iter().filter_map(|s| s.waypoint.as_ref()).map(|w| w.identity.as_str()).collect();
    let waypoints: Vec<String> = mesh
        .workloads
        .iter()
        .filter(|w| waypoint_ids.contains(mesh.identity_of(w).as_str()))
        .map(|w| w.name.clone())
        .collect();
    assert_eq!(waypoints.len(), waypoint_ids.len(), "{file}: every waypoint identity is a workload");
    let gateways: Vec<String> =
        mesh.networks.iter().filter(|(_, n)| n.east_west_gateway.is_some()).map(|(name, _)| name.clone()).collect();
    let mut identities: BTreeSet<String> = waypoint_ids.iter().map(|id| (*id).to_owned()).collect();
    identities.extend(gateways.iter().filter_map(|n| mesh.gateway_of(n)).map(|g| g.identity.clone()));
    let identities: Vec<String> = identities.into_iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let certs = mesh::ca::generate(&dir.path().join("certs"), &identities).unwrap();
    Rendered { mesh, dir, certs, waypoints, gateways }
}

fn waypoint_params<'a>(r: &'a Rendered, workload: &'a str, wasm: &'a Path, access_log: &'a Path) -> Waypoint<'a> {
    Waypoint {
        mesh: &r.mesh,
        workload,
        certs: &r.certs,
        engine: Engine::Wasm,
        wasm,
        admin: "127.0.0.1:15000".parse().unwrap(),
        access_log,
        baggage_discovery: true,
        telemetry: true,
        limits: Limits::default(),
        edge: Edge::default(),
    }
}

#[test]
fn envoy_accepts_every_waypoint_with_and_without_baggage_discovery_and_telemetry() {
    let wasm = wasm();
    for file in MESH_FILES {
        let r = load(file);
        assert!(!r.waypoints.is_empty(), "{file} has a waypoint");
        let log = r.dir.path().join("waypoint.log");
        for workload in &r.waypoints {
            for baggage_discovery in [true, false] {
                for telemetry in [true, false] {
                    let params =
                        Waypoint { baggage_discovery, telemetry, ..waypoint_params(&r, workload, &wasm, &log) };
                    let yaml = waypoint::render(waypoint::TEMPLATE, &params).unwrap();
                    let name = format!("{workload}-baggage-{baggage_discovery}-telemetry-{telemetry}.yaml");
                    assert_envoy_accepts(r.dir.path(), &name, &yaml);
                }
            }
            for engine in [Engine::Native, Engine::NativeNoop] {
                let yaml = waypoint::render(
                    waypoint::TEMPLATE,
                    &Waypoint { engine, ..waypoint_params(&r, workload, &wasm, &log) },
                )
                .unwrap();
                assert!(
                    yaml.contains("envoy.extensions.filters.http.dynamic_modules")
                        && !yaml.contains("envoy.filters.http.wasm")
                );
                assert_envoy_accepts(r.dir.path(), &format!("{workload}-{engine:?}.yaml"), &yaml);
            }
        }
    }
}

#[test]
fn envoy_accepts_every_east_west_gateway() {
    for file in MESH_FILES {
        let r = load(file);
        assert!(!r.gateways.is_empty(), "{file} has a gateway");
        for network in &r.gateways {
            let params = EastWest {
                mesh: &r.mesh,
                network,
                certs: &r.certs,
                admin: "127.0.0.1:15001".parse().unwrap(),
                access_log: &r.dir.path().join("gateway.log"),
            };
            let yaml = eastwest::render(eastwest::TEMPLATE, &params).unwrap();
            assert_envoy_accepts(r.dir.path(), &format!("eastwest-{network}.yaml"), &yaml);
        }
    }
}

/// The plain waypoint (the benchmarks' baseline) holds none of the project's
/// filters: Envoy accepts it with no module where the module would be, and refuses
/// the telemetry waypoint so rendered (so this check can fail).
#[test]
fn the_plain_waypoint_loads_no_module() {
    let r = load(MESH_FILES[0]);
    let missing = r.dir.path().join("no-such-module.wasm");
    let log = r.dir.path().join("waypoint.log");
    let params = || waypoint_params(&r, &r.waypoints[0], &missing, &log);
    let plain = waypoint::render(waypoint::TEMPLATE, &Waypoint { telemetry: false, ..params() }).unwrap();
    assert_envoy_accepts(r.dir.path(), "plain.yaml", &plain);
    let telemetry = waypoint::render(waypoint::TEMPLATE, &params()).unwrap();
    let said =
        envoy_validates(r.dir.path(), "telemetry.yaml", &telemetry).expect_err("a wasm filter without its module");
    assert!(said.contains("no-such-module.wasm"), "{said}");
}
