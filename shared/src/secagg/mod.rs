//! Secure aggregation (SecAgg+) as sans-IO state machines.
