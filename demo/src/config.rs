//! The flags of `tcpulse-demo` and their validation into a [`DemoPlan`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Run the whole pipeline on loopback: embedded hub (TLS), simulated agents, the
/// collector, and a live fleet view.
///
/// Secrets have no flags: the InfluxDB token comes from `TCPULSE_INFLUXDB_TOKEN`, the v1
/// password from `TCPULSE_INFLUXDB_PASSWORD`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tcpulse-demo", version)]
pub struct DemoArgs {
    /// Directory for the hub's partitions and TLS files, the agents' spools, checkpoints
    /// and the line-protocol output. Default: `tcpulse-demo` in the temp directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Continue from what an earlier demo left in the directory (hub partitions, agents'
    /// spools, checkpoints, stored points). Without it the demo removes those and starts
    /// fresh; nothing else in the directory is touched.
    #[arg(long)]
    pub resume: bool,
    /// Simulated connectors, comma-separated `FQDN=DEPLOYMENT` (deployment defaults to
    /// `default`).
    #[arg(
        long,
        value_name = "LIST",
        default_value = "tc-blue.example.com=blue,tc-green.example.com=green"
    )]
    pub connectors: String,
    /// Simulated Teams Connector instances per connector (1-64).
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub instances: u32,
    /// Time between two reports of one agent (humantime).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Highest load factor of the first connector's shift cycle (1.0 = no shift). Every
    /// `--shift-period` its load steps ×1.0 → halfway → this → ×1.0 …, so the
    /// CapacityHigh, CapacityCritical and InstanceFull alerts fire and resolve. Write a
    /// number to `<dir>/load/<connector>` to set a load by hand.
    #[arg(long, value_name = "FACTOR", default_value_t = 1.5)]
    pub load_shift: f64,
    /// How long each step of the load cycle lasts (humantime); 0s holds `--load-shift`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shift_period: Duration,
    /// Calls per instance at the simulated working-day peak, before the load factor.
    #[arg(long, value_name = "CALLS", default_value_t = 10)]
    pub peak_calls: u32,
    /// Connector rollup interval (whole seconds; humantime).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub rollup_interval: Duration,
    /// Stop after this long (humantime); runs until Ctrl-C or SIGTERM when absent.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Also write to this InfluxDB 2.x/3.x or VictoriaMetrics (`/api/v2/write`) URL,
    /// e.g. http://127.0.0.1:8428; token from TCPULSE_INFLUXDB_TOKEN.
    #[arg(long, value_name = "URL")]
    pub influxdb_url: Option<String>,
    /// Organization for `--influxdb-url`.
    #[arg(long, value_name = "ORG", default_value = "tcpulse")]
    pub influxdb_org: String,
    /// Bucket for `--influxdb-url`.
    #[arg(long, value_name = "BUCKET", default_value = "tcpulse")]
    pub influxdb_bucket: String,
    /// Also write to this InfluxDB 1.x URL (`/write`), e.g. http://127.0.0.1:8086;
    /// password (if any) from TCPULSE_INFLUXDB_PASSWORD.
    #[arg(long, value_name = "URL")]
    pub influxdb_v1_url: Option<String>,
    /// Database for `--influxdb-v1-url`.
    #[arg(long, value_name = "DB", default_value = "tcpulse")]
    pub influxdb_v1_database: String,
    /// Address of the collector's `/metrics`, `/healthz`, `/readyz` (port 0: any free).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub metrics_listen: SocketAddr,
    /// Time between two redraws of the fleet view (one log line per connector when
    /// stdout is not a terminal).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub refresh: Duration,
}

/// One simulated connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorPlan {
    /// FQDN (the partition key).
    pub fqdn: String,
    /// Deployment label.
    pub deployment: String,
    /// Scale set name, derived from the FQDN's first label (`tc-blue-vmss`).
    pub scaleset: String,
}

impl ConnectorPlan {
    /// The instance names: `<scaleset>_0` … `<scaleset>_<n-1>`, as VMSS names them.
    pub fn instance_names(&self, n: u32) -> Vec<String> {
        (0..n).map(|i| format!("{}_{i}", self.scaleset)).collect()
    }
}

/// A flag with an unusable value; the message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {why}")]
pub struct DemoConfigError {
    /// The flag.
    pub flag: &'static str,
    /// What is wrong and how to fix it.
    pub why: String,
}

/// The validated flags.
#[derive(Debug, Clone)]
pub struct DemoPlan {
    /// The data directory.
    pub dir: PathBuf,
    /// The connectors.
    pub connectors: Vec<ConnectorPlan>,
    /// Instances per connector.
    pub instances: u32,
    /// The flags as given.
    pub args: DemoArgs,
}

fn err(flag: &'static str, why: impl Into<String>) -> DemoConfigError {
    DemoConfigError {
        flag,
        why: why.into(),
    }
}

/// Parses `FQDN=DEPLOYMENT,…`.
pub fn parse_connectors(list: &str) -> Result<Vec<ConnectorPlan>, DemoConfigError> {
    let mut out: Vec<ConnectorPlan> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (fqdn, deployment) = match item.split_once('=') {
            Some((f, d)) => (f.trim(), d.trim()),
            None => (item, "default"),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        };
        if !valid(fqdn) || !valid(deployment) {
            return Err(err(
                "connectors",
                format!("{item:?} is not FQDN=DEPLOYMENT (letters, digits, '-', '.', '_')"),
            ));
        }
        if out.iter().any(|c| c.fqdn == fqdn) {
            return Err(err("connectors", format!("{fqdn} is listed twice")));
        }
        let first = fqdn.split('.').next().unwrap_or(fqdn);
        out.push(ConnectorPlan {
            fqdn: fqdn.to_owned(),
            deployment: deployment.to_owned(),
            scaleset: format!("{first}-vmss"),
        });
    }
    if out.is_empty() {
        return Err(err(
            "connectors",
            "no connector; e.g. --connectors tc-blue.example.com=blue",
        ));
    }
    Ok(out)
}

impl DemoArgs {
    /// Validates the flags.
    pub fn plan(&self) -> Result<DemoPlan, DemoConfigError> {
        let connectors = parse_connectors(&self.connectors)?;
        if !(1..=64).contains(&self.instances) {
            return Err(err("instances", "must be 1 to 64"));
        }
        if self.interval < Duration::from_millis(200) {
            return Err(err("interval", "must be at least 200ms"));
        }
        if !(self.load_shift.is_finite() && (0.0..=10.0).contains(&self.load_shift)) {
            return Err(err("load-shift", "must be a number from 0 to 10"));
        }
        if self.peak_calls == 0 {
            return Err(err("peak-calls", "must be at least 1"));
        }
        if self.rollup_interval < Duration::from_secs(1)
            || self.rollup_interval.subsec_millis() != 0
        {
            return Err(err("rollup-interval", "must be whole seconds, at least 1s"));
        }
        if self.refresh < Duration::from_millis(100) {
            return Err(err("refresh", "must be at least 100ms"));
        }
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("tcpulse-demo"));
        Ok(DemoPlan {
            dir,
            connectors,
            instances: self.instances,
            args: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: DemoArgs,
    }

    #[test]
    fn defaults_are_two_connectors_of_six_instances() {
        let plan = Wrap::parse_from(["x"]).args.plan().unwrap();
        assert_eq!(plan.instances, 6);
        let names: Vec<_> = plan
            .connectors
            .iter()
            .map(|c| (c.fqdn.as_str(), c.deployment.as_str(), c.scaleset.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("tc-blue.example.com", "blue", "tc-blue-vmss"),
                ("tc-green.example.com", "green", "tc-green-vmss")
            ]
        );
        assert_eq!(
            plan.connectors[0].instance_names(2),
            ["tc-blue-vmss_0", "tc-blue-vmss_1"]
        );
        assert!(plan.dir.ends_with("tcpulse-demo"));
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (argv, flag) in [
            (vec!["x", "--connectors", "a b=blue"], "--connectors"),
            (vec!["x", "--connectors", "a=x,a=y"], "--connectors"),
            (vec!["x", "--connectors", ","], "--connectors"),
            (vec!["x", "--instances", "0"], "--instances"),
            (
                vec!["x", "--rollup-interval", "1500ms"],
                "--rollup-interval",
            ),
            (vec!["x", "--load-shift", "NaN"], "--load-shift"),
        ] {
            let e = Wrap::parse_from(argv).args.plan().unwrap_err();
            assert!(e.to_string().starts_with(flag), "{e}");
        }
        let one = parse_connectors("tc.example.com").unwrap();
        assert_eq!(one[0].deployment, "default");
    }
}
