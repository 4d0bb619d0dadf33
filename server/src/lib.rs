//! fedge server.
