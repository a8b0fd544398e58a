//! The manager's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// How the manager runs. [`Config::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory of policy files (one policy per `.yaml`, `.yml` or `.json` file).
    pub policy_dir: PathBuf,
    /// Where the CA, the join token, the operator certificate and the state live.
    pub state_dir: PathBuf,
    /// The gRPC address (port 0 picks a free port; see `Manager::local_addr`).
    pub listen: SocketAddr,
    /// The namespace vArmor runs in; names cluster policy profiles.
    pub varmor_namespace: String,
    /// Lifetime of node certificates.
    pub node_cert_lifetime: Duration,
    /// Extra names (DNS or IP) for the server certificate.
    pub tls_sans: Vec<String>,
    /// Full rescans of the policy directory, in addition to file-system notifications.
    pub rescan_interval: Duration,
    /// How long a new Sync stream may take to send its hello.
    pub hello_timeout: Duration,
    /// HTTP/2 keep-alive pings on every connection, so dead agents are noticed.
    pub keepalive_interval: Duration,
    /// How long a keep-alive ping may stay unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP); `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// The defaults for the three required settings.
    pub fn new(
        policy_dir: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        listen: SocketAddr,
    ) -> Self {
        Config {
            policy_dir: policy_dir.into(),
            state_dir: state_dir.into(),
            listen,
            varmor_namespace: varmor_policy::document::DEFAULT_VARMOR_NAMESPACE.to_string(),
            node_cert_lifetime: Duration::from_secs(24 * 3600),
            tls_sans: Vec::new(),
            rescan_interval: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(10),
            metrics_listen: None,
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if let Err(why) = varmor_policy::document::check_dns_label(&self.varmor_namespace) {
            return Err(Error::Config(format!("--varmor-namespace: {why}")));
        }
        if self.node_cert_lifetime < Duration::from_secs(60) {
            return Err(Error::Config(
                "--node-cert-lifetime must be at least 1m".into(),
            ));
        }
        if self.node_cert_lifetime > Duration::from_secs(366 * 24 * 3600) {
            return Err(Error::Config(
                "--node-cert-lifetime must be at most 366d".into(),
            ));
        }
        for san in &self.tls_sans {
            if san.parse::<std::net::IpAddr>().is_err() && !is_dns_name(san) {
                return Err(Error::Config(format!(
                    "--tls-san {san:?} is neither an IP address nor a DNS name"
                )));
            }
        }
        Ok(())
    }
}

/// Whether `s` can be a DNS subject alternative name (letters, digits, `-`, `.`, and a
/// leading `*.` wildcard label is not accepted).
pub(crate) fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Parses a duration such as `90s`, `30m`, `24h`, `7d` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration; use e.g. 24h, 30m or 7d".into());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {c:?}; use s, m, h or d (e.g. 24h)"
                ))
            }
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: a number must precede {c:?}"))?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    }
    if !number.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: the number {number} has no unit; use s, m, h or d"
        ));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("24").unwrap_err().contains("no unit"));
        assert!(parse_duration("5w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("manager.example"));
        assert!(is_dns_name("node-1"));
        assert!(!is_dns_name("-bad"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("*.example"));
    }

    #[test]
    fn validation_names_the_flag() {
        let mut c = Config::new("/p", "/s", "127.0.0.1:0".parse().expect("addr"));
        c.node_cert_lifetime = Duration::from_secs(1);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--node-cert-lifetime"));
        c.node_cert_lifetime = Duration::from_secs(3600);
        c.tls_sans = vec!["bad name".into()];
        assert!(c.validate().unwrap_err().to_string().contains("--tls-san"));
    }
}
