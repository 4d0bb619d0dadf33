//! Messages of the round protocol and of the admin protocol.
