//! `mqtt.url`: `mqtt://host[:port]` or `mqtts://host[:port]`, parsed once when the config is read.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerAddress {
    pub fn parse(url: &str) -> Result<BrokerAddress, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
        };
        if rest.contains('@') {
            // Not echoed: the text before '@' is a password.
            return Err(
                "a user name or password in the URL is not supported (it would end up in logs); use username and password_file"
                    .to_string(),
            );
        }
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
            (host.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?}: no host name"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            None => default_port,
        };
        Ok(BrokerAddress { host, port, tls })
    }
}

impl TryFrom<String> for BrokerAddress {
    type Error = String;
    fn try_from(url: String) -> Result<BrokerAddress, String> {
        BrokerAddress::parse(&url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_are_refused_without_echoing_them() {
        let e = BrokerAddress::parse("mqtt://edge:s3cret@hub:1883").unwrap_err();
        assert!(e.contains("password_file") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerAddress::parse("mqtt://hub").unwrap(),
            BrokerAddress {
                host: "hub".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(
            BrokerAddress::parse("mqtts://hub:9999/").unwrap().port,
            9999
        );
        assert_eq!(BrokerAddress::parse("mqtts://hub").unwrap().port, 8883);
        assert_eq!(
            BrokerAddress::parse("mqtt://[::1]:1884").unwrap().host,
            "::1"
        );
        assert!(BrokerAddress::parse("http://hub").is_err());
        assert!(BrokerAddress::parse("mqtt://hub:x").is_err());
        assert!(BrokerAddress::parse("mqtt://").is_err());
    }

    #[test]
    fn a_bad_url_is_a_config_error_naming_the_key() {
        let err = crate::config::Config::parse(
            "[mqtt]\nurl = \"http://hub\"\n",
            std::path::Path::new("/etc/face-edge/face-edge.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("url") && err.contains("mqtt://"), "{err}");
    }
}
