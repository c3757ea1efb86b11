//! Any bytes as the plugin configuration: a configuration or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint_core::PluginConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = PluginConfig::from_json(data) {
        assert!(config.limits.max_header_bytes > 0 && config.limits.max_tunnels > 0);
    }
});
