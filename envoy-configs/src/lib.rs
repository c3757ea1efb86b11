//! The Envoy configurations of the local mesh, rendered from the templates in
//! this directory (`waypoint.yaml.in`, `eastwest.yaml.in`) and the mesh file.
//! Every name the configs share with the filters comes from
//! `waypoint_core::contract`, so none is written twice.
//!
//! - [`waypoint`]: one waypoint — its services, their endpoints (direct or double
//!   HBONE), the identities each hop must present, the filters' configuration;
//! - [`eastwest`]: one network's east-west gateway;
//! - [`template`]: fills the templates' placeholders, and what both configs share
//!   (edge-proxy limits, circuit breakers).

pub mod eastwest;
pub mod template;
pub mod waypoint;
