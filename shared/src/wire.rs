//! Framed messages over QUIC streams.
