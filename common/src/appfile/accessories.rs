//! `[accessories.NAME]`: long-lived containers beside the app's services
//! (a database, Redis, a broker) with the service fields, deployed when
//! missing or when their own settings change, never because the app's
//! version did. The deploy job carries them (`DeploySpec::accessories`)
//! and starts them before the services.

use super::check::Check;
use super::raw::FieldPath;
use super::service::{RawService, Service};

impl Check {
    /// An accessory: a service's fields, less what only a release has
    /// (`{version}`, a strategy, `nginx_url`, `replicas`), under a name no
    /// service has.
    pub(super) fn accessory(
        &mut self,
        path: &FieldPath,
        name: String,
        raw: RawService,
        services: &[Service],
    ) -> Service {
        let strategy = raw.strategy.is_some();
        let nginx_url = raw.nginx_url.is_some();
        let replicas = raw.replicas.is_some_and(|n| n != 1);
        let acc = self.service(path, name, raw);
        if acc.image.contains("{version}") {
            self.err(
                &path.key("image"),
                "an accessory outlives releases, so its image cannot follow {version}; pin a tag, e.g. \"postgres:16\"",
            );
        }
        if strategy {
            self.err(
                &path.key("strategy"),
                "an accessory is always recreated (stopped, then started again on its volumes); remove strategy",
            );
        }
        if nginx_url {
            self.err(
                &path.key("nginx_url"),
                "an accessory is not switched through nginx; remove nginx_url",
            );
        }
        if replicas {
            self.err(
                &path.key("replicas"),
                "an accessory runs one container per host; remove replicas",
            );
        }
        if services.iter().any(|s| s.name == acc.name) {
            self.err(
                path,
                format!(
                    "{:?} is also a service; an accessory needs a name of its own (it is the container's name on the network)",
                    acc.name
                ),
            );
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use crate::appfile::testing::*;

    fn with(extra: &str) -> String {
        format!(
            "{}\n[accessories.db]\nimage = \"postgres:16\"\n{extra}\n",
            service("")
        )
    }

    #[test]
    fn accessories_are_services_without_what_only_a_release_has() {
        let f = ok(&with(
            "volumes = [\"pgdata:/var/lib/postgresql/data\"]\nhosts = [\"db-1\"]",
        ));
        let db = f.accessory("db").unwrap();
        assert_eq!(db.volumes[0].name, "pgdata");
        assert_eq!(db.placement.hosts, ["db-1"]);
        let spec = f.deploy_spec("staging", "1.0.0").unwrap();
        assert_eq!(spec.accessories.len(), 1);
        assert_eq!(spec.accessories[0].image, "postgres:16");

        let p = problems(&with("strategy = \"blue-green\"\nports = [5432]"));
        assert!(
            p.iter().any(|p| p.path == "accessories.db.strategy"),
            "{p:?}"
        );
        let p = problems(&with("replicas = 2"));
        assert!(
            p.iter().any(|p| p.path == "accessories.db.replicas"),
            "{p:?}"
        );
        let p = problems(&format!(
            "{}\n[accessories.db]\nimage = \"pg:{{version}}\"\n",
            service("")
        ));
        assert!(
            p.iter()
                .any(|p| p.path == "accessories.db.image" && p.message.contains("pin a tag")),
            "{p:?}"
        );
        let p = problems(&format!(
            "{}\n[accessories.web]\nimage = \"redis:7\"\n",
            service("")
        ));
        assert!(
            p.iter()
                .any(|p| p.path == "accessories.web" && p.message.contains("also a service")),
            "{p:?}"
        );
    }
}
