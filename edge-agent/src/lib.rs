//! fedge agent.
