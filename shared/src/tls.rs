//! Certificates and rustls configurations.
