//! `ports` of a service: container ports, maybe published on the host.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::check::Check;
use super::raw::{self, FieldPath};

/// A container port, maybe published on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub container: u16,
    /// A fixed host port (`"8080:3000"`).
    pub host_port: Option<u16>,
    /// The host address it is published on (`"127.0.0.1:8080:3000"`);
    /// only with `host_port`. None: every address.
    pub host_ip: Option<IpAddr>,
}

impl fmt::Display for PortSpec {
    /// The file's own syntax: `3000`, `8080:3000`, `127.0.0.1:8080:3000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.host_ip, self.host_port) {
            (Some(IpAddr::V6(ip)), Some(h)) => write!(f, "[{ip}]:{h}:{}", self.container),
            (Some(ip), Some(h)) => write!(f, "{ip}:{h}:{}", self.container),
            (_, Some(h)) => write!(f, "{h}:{}", self.container),
            (_, None) => write!(f, "{}", self.container),
        }
    }
}

impl FromStr for PortSpec {
    type Err = String;

    /// `CONTAINER`, `HOST:CONTAINER` or `IP:HOST:CONTAINER`, optionally
    /// followed by `/tcp`.
    fn from_str(text: &str) -> Result<PortSpec, String> {
        let spec = match text.rsplit_once('/') {
            Some((spec, "tcp")) => spec,
            Some((_, proto)) => {
                return Err(format!(
                    "{text:?}: only TCP ports are supported, not {proto:?}"
                ));
            }
            None => text,
        };
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        let port = |p: &str| -> Result<u16, String> {
            if p.contains('-') {
                return Err(format!("{text:?}: port ranges are not supported"));
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "{text:?} is not a port; expected CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER with ports from 1 to 65535"
                )),
            }
        };
        match parts.as_slice() {
            [c] => Ok(PortSpec {
                container: port(c)?,
                host_port: None,
                host_ip: None,
            }),
            [c, h] => Ok(PortSpec {
                container: port(c)?,
                host_port: Some(port(h)?),
                host_ip: None,
            }),
            [c, h, ip] => {
                let bare = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                let host_ip = bare.parse::<IpAddr>().map_err(|_| {
                    format!("{text:?}: {ip:?} is not an IP address (write IPv6 as [::1])")
                })?;
                Ok(PortSpec {
                    container: port(c)?,
                    host_port: Some(port(h)?),
                    host_ip: Some(host_ip),
                })
            }
            _ => Err(format!("{text:?} is not a port")),
        }
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Check {
    /// Every service runs on every host of its environment, so two of
    /// them cannot publish one host port.
    pub(super) fn host_ports_across(&mut self, services: &[super::Service]) {
        let services_path = FieldPath::default().key("services");
        let mut published: Vec<(&str, usize, &PortSpec)> = Vec::new();
        for s in services {
            for (i, port) in s.ports.iter().enumerate() {
                let clash = published
                    .iter()
                    .find(|(other, _, p)| *other != s.name && host_ports_clash(p, port));
                if let Some((other, j, _)) = clash {
                    self.err(
                        &services_path.key(&s.name).key("ports").index(i),
                        format!(
                            "host port {} is already published by services.{other}.ports[{j}]; services of an environment run on the same hosts",
                            port.host_port.unwrap_or_default()
                        ),
                    );
                }
                published.push((&s.name, i, port));
            }
        }
    }

    pub(super) fn ports(&mut self, path: &FieldPath, raw: Vec<raw::Scalar>) -> Vec<PortSpec> {
        let mut out: Vec<PortSpec> = Vec::new();
        for (i, item) in raw.into_iter().enumerate() {
            let p = path.index(i);
            let parsed = match item {
                raw::Scalar::Int(n) => match u16::try_from(n) {
                    Ok(port) if port > 0 => Ok(PortSpec {
                        container: port,
                        host_port: None,
                        host_ip: None,
                    }),
                    _ => Err(format!("{n} is not a port; expected 1 to 65535")),
                },
                raw::Scalar::Str(s) => s.parse(),
                raw::Scalar::Bool(b) => Err(format!(
                    "{b} is not a port; expected a number like 3000 or a string like \"8080:3000\""
                )),
            };
            let Some(port) = self.ok(&p, parsed) else {
                continue;
            };
            if let Some(j) = out.iter().position(|o| o.container == port.container) {
                self.err(
                    &p,
                    format!("container port {} is already in ports[{j}]", port.container),
                );
            }
            if let Some(j) = out.iter().position(|o| host_ports_clash(o, &port)) {
                self.err(
                    &p,
                    format!(
                        "host port {} is already published by ports[{j}]",
                        port.host_port.unwrap_or_default()
                    ),
                );
            }
            out.push(port);
        }
        out
    }
}

/// Whether two ports publish the same host port on overlapping addresses.
fn host_ports_clash(a: &PortSpec, b: &PortSpec) -> bool {
    match (a.host_port, b.host_port) {
        (Some(x), Some(y)) if x == y => match (a.host_ip, b.host_ip) {
            (Some(i), Some(j)) => i == j,
            _ => true,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::appfile::testing::*;

    #[test]
    fn ports_are_parsed() {
        let f = ok(&service(
            "ports = [3000, \"8080:80\", \"127.0.0.1:5432:5432\", \"[::1]:9000:9000/tcp\", \"81\"]\nstrategy = \"recreate\"",
        ));
        let ports: Vec<String> = f.services[0]
            .ports
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ports,
            [
                "3000",
                "8080:80",
                "127.0.0.1:5432:5432",
                "[::1]:9000:9000",
                "81"
            ]
        );
        for (bad, says) in [
            ("0", "is not a port"),
            ("70000", "is not a port"),
            ("\"x:80\"", "is not a port"),
            ("\"53/udp\"", "only TCP"),
            ("\"8000-8010:80\"", "ranges"),
            ("\"nowhere:80:80\"", "is not an IP address"),
            ("true", "is not a port"),
        ] {
            let p = problem(&service(&format!("ports = [{bad}]")));
            assert!(p.starts_with("6: services.web.ports[0]: "), "{bad}: {p}");
            assert!(p.contains(says), "{bad}: {p}");
        }
        let p = problems(&service(
            "ports = [80, \"8080:80\", \"9000:81\", \"9000:82\"]\nstrategy = \"recreate\"",
        ));
        let got: Vec<String> = p
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert_eq!(
            got,
            [
                "services.web.ports[1]: container port 80 is already in ports[0]",
                "services.web.ports[3]: host port 9000 is already published by ports[2]",
            ]
        );
    }
}
