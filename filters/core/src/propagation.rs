//! What the waypoint says about itself: its own `baggage`, on the upstream CONNECT
//! to the destination and on the CONNECT 200 to the client, as ztunnel expects
//! from a waypoint (PROTOCOL.md §2). Discovery never depends on it.

use crate::baggage;
use crate::config::PluginConfig;
use crate::discovery::{BAGGAGE, counted};
use crate::host::{HeaderMap, Host};
use crate::worker::Worker;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Propagation {
    /// Our identity in Envoy's `baggage` form; `None` sends nothing.
    own_baggage: Option<Vec<u8>>,
}

impl Propagation {
    pub fn new(config: &PluginConfig) -> Self {
        let own_baggage = config
            .identity
            .as_ref()
            .filter(|_| config.propagate_baggage)
            .map(|peer| baggage::encode_envoy(peer).into_bytes());
        Self { own_baggage }
    }

    /// The tunnel's CONNECT leaves: announce ourselves to the destination.
    pub fn on_upstream_connect(&self, host: &impl Host, worker: &mut Worker) {
        if let Some(own) = &self.own_baggage {
            counted(host.add_header(HeaderMap::Request, BAGGAGE, own), host, worker);
        }
    }

    /// The client's CONNECT is answered: a 200 carries our `baggage`, an error never does.
    pub fn on_connect_response(&self, host: &impl Host, worker: &mut Worker) {
        let Some(own) = &self.own_baggage else { return };
        let status = counted(host.header(HeaderMap::Response, ":status"), host, worker).flatten();
        if status.as_deref() == Some(b"200") {
            counted(host.add_header(HeaderMap::Response, BAGGAGE, own), host, worker);
        }
    }
}
