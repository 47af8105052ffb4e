//! `volumes` of a service: named volumes only, never host paths.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::check::Check;
use super::raw::FieldPath;

/// A named volume mounted in a service's containers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeMount {
    /// The name in the file; Docker's is [`naming::volume`] of it.
    pub name: String,
    /// Absolute path in the container.
    pub path: String,
    pub read_only: bool,
}

impl fmt::Display for VolumeMount {
    /// The file's own syntax: `name:/path` or `name:/path:ro`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.path)?;
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

impl FromStr for VolumeMount {
    type Err = String;

    /// `name:/path`, `name:/path:ro` or `name:/path:rw`.
    fn from_str(text: &str) -> Result<VolumeMount, String> {
        if text.starts_with(['/', '.', '~']) {
            return Err(format!(
                "{text:?} is a bind mount of a host path; only named volumes are supported (name:/path[:ro])"
            ));
        }
        let parts: Vec<&str> = text.split(':').collect();
        let (name, path, read_only) = match parts.as_slice() {
            [name, path] => (*name, *path, false),
            [name, path, "ro"] => (*name, *path, true),
            [name, path, "rw"] => (*name, *path, false),
            [_, _, mode] => {
                return Err(format!(
                    "{text:?}: unknown mode {mode:?}; expected ro or rw"
                ));
            }
            _ => {
                return Err(format!(
                    "{text:?} is not a volume; expected name:/path or name:/path:ro"
                ));
            }
        };
        crate::identity::validate_name(name).map_err(|e| format!("{text:?}: volume name {e}"))?;
        if !path.starts_with('/') {
            return Err(format!(
                "{text:?}: the path in the container must be absolute, like /data"
            ));
        }
        Ok(VolumeMount {
            name: name.to_string(),
            path: path.to_string(),
            read_only,
        })
    }
}

impl Serialize for VolumeMount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Check {
    pub(super) fn volumes(&mut self, path: &FieldPath, raw: Vec<String>) -> Vec<VolumeMount> {
        let mut out: Vec<VolumeMount> = Vec::new();
        for (i, text) in raw.iter().enumerate() {
            let p = path.index(i);
            let Some(v) = self.ok(&p, text.parse::<VolumeMount>()) else {
                continue;
            };
            if let Some(j) = out.iter().position(|o| o.path == v.path) {
                self.err(&p, format!("{} is already mounted by volumes[{j}]", v.path));
            }
            out.push(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::appfile::testing::*;

    #[test]
    fn volumes_are_named_only() {
        let p = |v: &str| problem(&service(&format!("volumes = [{v:?}]")));
        assert_eq!(
            p("./data:/data"),
            "6: services.web.volumes[0]: \"./data:/data\" is a bind mount of a host path; only named volumes are supported (name:/path[:ro])"
        );
        assert!(p("/srv:/data").contains("bind mount"));
        assert!(p("data:/data:z").contains("unknown mode \"z\""));
        assert!(p("data:data").contains("must be absolute"));
        assert!(p("data").contains("expected name:/path or name:/path:ro"));
        assert!(p("Data:/data").contains("volume name"));
        assert!(
            problem(&service("volumes = [\"a:/d\", \"b:/d\"]"))
                .ends_with("volumes[1]: /d is already mounted by volumes[0]")
        );
        let f = ok(&service("volumes = [\"a:/d:rw\", \"b:/e:ro\"]"));
        let v: Vec<String> = f.services[0]
            .volumes
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(v, ["a:/d", "b:/e:ro"]);
    }
}
