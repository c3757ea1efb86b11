//! The test executables export their symbols (`-rdynamic`), so the `.so` they dlopen
//! resolves its `envoy_dynamic_module_callback_*` imports against the mocked host, as
//! it resolves them against the Envoy binary in production.
fn main() {
    println!("cargo:rustc-link-arg-tests=-rdynamic");
}
