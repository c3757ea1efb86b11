//! Accepts any root and configuration, and does nothing on any stream: loaded
//! where the waypoint module goes, it measures what Envoy charges for a
//! proxy-wasm filter in each position before the filter does any work.
#![cfg(target_arch = "wasm32")]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Nothing) });
}}

struct Nothing;

impl Context for Nothing {}

impl HttpContext for Nothing {}

impl RootContext for Nothing {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Nothing))
    }
}
