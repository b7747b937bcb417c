//! The `influxdb_v1` sink: [`config`] (settings and `build`) and [`sink`] (the writer).

pub mod config;
pub mod sink;
