// TEMPORARY STUB (replaced by the tlsmod branch)
#![allow(missing_docs, missing_debug_implementations, clippy::all)]
use std::sync::Arc;
pub struct CertFiles<'a> { pub cert_path: &'a str, pub cert_pem: &'a [u8], pub key_path: &'a str, pub key_pem: &'a [u8] }
pub fn server_config(_c: &[CertFiles<'_>]) -> Result<Arc<rustls::ServerConfig>, String> { Err("stub".into()) }
pub fn check_pair(_p: &CertFiles<'_>) -> Result<Vec<String>, String> { Ok(vec![]) }
pub fn system_roots() -> Arc<rustls::RootCertStore> { Arc::new(rustls::RootCertStore::empty()) }
pub fn client_config(_r: &rustls::RootCertStore, _ca: Option<(&str, &[u8])>) -> Result<Arc<rustls::ClientConfig>, String> { Err("stub".into()) }
pub fn describe_upstream_error(_e: &std::io::Error) -> &'static str { "stub" }
