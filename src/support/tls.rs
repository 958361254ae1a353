//! # TLS: one crypto provider for every HTTPS client
//!
//! reqwest is built without a provider of its own (`rustls-no-provider`); strata installs
//! rustls's `ring` provider as the process default before it builds a client. ring compiles in
//! seconds where aws-lc-sys (reqwest's default) takes minutes of C and cmake on every cold
//! build, CI's fuzz build included. Certificates are still verified against the platform's
//! roots (rustls-platform-verifier).

/// Makes sure the process has its TLS crypto provider (idempotent, cheap after the first call).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when a provider is already installed: then that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
