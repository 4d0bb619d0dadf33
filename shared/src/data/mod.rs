//! On-device data sets.
