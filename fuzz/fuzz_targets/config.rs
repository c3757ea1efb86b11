//! Any bytes as the plugin configuration: a configuration or a clear error, and any
//! configuration survives being written and read again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint_core::PluginConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = PluginConfig::from_json(data) {
        assert!(config.limits.max_header_bytes > 0 && config.limits.max_tunnels > 0);
        // What the renderer writes from the type, the plugin reads back the same.
        let written = serde_json::to_vec(&config).expect("a configuration serializes");
        assert_eq!(PluginConfig::from_json(&written).ok(), Some(config));
    }
});
