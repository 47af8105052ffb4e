//! Secrets end to end: set, list and delete over gRPC by role, values that
//! never come back and never reach the disk in clear, resolving them for a
//! deploy, the secrets key shared (or not) between coordinators, and
//! `ferry secret` as a real process reading the value from its stdin.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferry_coordinator::core::Core;
use ferry_coordinator::secrets;
use ferry_coordinator::secrets_key::{self, SecretsKey};
use ferry_coordinator::server::{Listeners, serve};
use ferry_integration_tests::{TestCoordinator, bin};
use ferry_proto::v1 as pb;
use serde_json::Value;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const DB_URL: &str = "postgres://shop:Pa55-w0rd-DB@db.internal/shop";
const PROD_KEY: &str = "sk_live_ApiKey_0123456789";
const PROD_KEY_2: &str = "sk_live_Rotated_9876543210";
const STAGING_KEY: &str = "sk_test_Staging_ABCDEF";
const VALUES: [&str; 4] = [DB_URL, PROD_KEY, PROD_KEY_2, STAGING_KEY];

fn set_request(app: &str, env: &str, name: &str, value: &str) -> pb::SetSecretRequest {
    pb::SetSecretRequest {
        app: app.into(),
        env: env.into(),
        name: name.into(),
        value: value.into(),
    }
}

fn list_request(app: &str, env: &str) -> pb::ListSecretsRequest {
    pb::ListSecretsRequest {
        app: app.into(),
        env: env.into(),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

/// A `Core` on the coordinator's store with `key`, as the deploy code
/// holds one; the coordinator under test keeps its own.
async fn core_with_key(c: &TestCoordinator, key: SecretsKey) -> Core {
    let (ingest, _) = tokio::sync::mpsc::channel(1);
    Core {
        config: c.config.clone(),
        store: ferry_coordinator::store::open(c.store_location())
            .await
            .expect("open the store"),
        ca: c.ca().expect("CA"),
        secrets_key: key,
        sessions: Default::default(),
        operator_streams: Default::default(),
        metrics: Default::default(),
        coordinator_id: "test-resolver".into(),
        started_at_ms: 0,
        shutdown: CancellationToken::new(),
        ingest,
        spans: Default::default(),
        heartbeats: Default::default(),
        enroll_failures: ferry_coordinator::core::enroll_failure_limiter(),
        enroll_failure_log: ferry_coordinator::core::enroll_failure_log(),
        leading: Default::default(),
    }
}

/// A fresh key as an operator would put it in `FERRY_SECRETS_KEY`.
fn env_key() -> SecretsKey {
    let hex = format!(
        "{}{}",
        uuid::Uuid::now_v7().simple(),
        uuid::Uuid::now_v7().simple()
    );
    SecretsKey::parse(&hex, secrets_key::KeyOrigin::Env).unwrap()
}

fn data_dir_key(c: &TestCoordinator) -> SecretsKey {
    SecretsKey::load(&c.data_dir.join(secrets_key::KEY_FILE)).expect("the data dir's secrets key")
}

fn assert_no_value(what: &str, bytes: &[u8]) {
    for value in VALUES {
        assert!(
            !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
            "{what} holds the value {value:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_write_only_by_role_and_encrypted_at_rest() {
    let c = TestCoordinator::start().await.unwrap();
    let mut admin = c.operator().await.unwrap();

    let first = admin
        .set_secret(set_request("shop", "production", "API_KEY", PROD_KEY))
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert_eq!(
        (first.app.as_str(), first.env.as_str(), first.name.as_str()),
        ("shop", "production", "API_KEY")
    );
    assert_eq!(first.updated_by, "spiffe://ferry.test/operator/admin");
    assert_eq!(first.created_at_ms, first.updated_at_ms);
    for (env, name, value) in [
        ("production", "DATABASE_URL", DB_URL),
        ("staging", "API_KEY", STAGING_KEY),
    ] {
        admin
            .set_secret(set_request("shop", env, name, value))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rotated = admin
        .set_secret(set_request("shop", "production", "API_KEY", PROD_KEY_2))
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert_eq!(
        rotated.created_at_ms, first.created_at_ms,
        "replacing keeps the first creation time"
    );
    assert!(rotated.updated_at_ms > first.updated_at_ms);

    // Listings: names and metadata, no value anywhere in the reply.
    let all = admin
        .list_secrets(list_request("shop", ""))
        .await
        .unwrap()
        .into_inner();
    assert_no_value("the list reply", format!("{all:?}").as_bytes());
    let listed: Vec<(&str, &str)> = all
        .secrets
        .iter()
        .map(|s| (s.env.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("production", "API_KEY"),
            ("production", "DATABASE_URL"),
            ("staging", "API_KEY")
        ]
    );
    let staging = admin
        .list_secrets(list_request("shop", "staging"))
        .await
        .unwrap()
        .into_inner()
        .secrets;
    assert_eq!(staging.len(), 1);
    assert!(
        admin
            .list_secrets(list_request("blog", ""))
            .await
            .unwrap()
            .into_inner()
            .secrets
            .is_empty()
    );

    // Roles: a viewer neither lists nor sets; a deployer lists only.
    let viewer = c.add_operator("vera", pb::Role::Viewer).await.unwrap();
    let mut viewer = c.operator_as(&viewer).await.unwrap();
    let err = viewer
        .list_secrets(list_request("shop", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "permission denied: role viewer cannot list secrets (needs deployer or admin)"
    );
    let err = viewer
        .set_secret(set_request(
            "shop",
            "production",
            "API_KEY",
            "viewer-was-here",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "permission denied: role viewer cannot set secrets (needs admin)"
    );
    let deployer = c.add_operator("dan", pb::Role::Deployer).await.unwrap();
    let mut deployer = c.operator_as(&deployer).await.unwrap();
    assert_eq!(
        deployer
            .list_secrets(list_request("shop", ""))
            .await
            .unwrap()
            .into_inner()
            .secrets
            .len(),
        3
    );
    let err = deployer
        .set_secret(set_request(
            "shop",
            "production",
            "API_KEY",
            "deployer-was-here",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "permission denied: role deployer cannot set secrets (needs admin)"
    );
    let err = deployer
        .delete_secret(pb::DeleteSecretRequest {
            app: "shop".into(),
            env: "production".into(),
            name: "API_KEY".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "permission denied: role deployer cannot delete secrets (needs admin)"
    );

    // Validation names the field and never quotes the value.
    let oversized = "v".repeat(secrets::MAX_VALUE_BYTES + 1);
    for (request, field) in [
        (set_request("Shop", "production", "X", "value-1"), "--app"),
        (set_request("shop", "prod env", "X", "value-1"), "--env"),
        (
            set_request("shop", "production", "2FA", "value-1"),
            "secret name",
        ),
        (
            set_request("shop", "production", "MY-KEY", "value-1"),
            "secret name",
        ),
        (set_request("shop", "production", "X", ""), "secret value"),
        (
            set_request("shop", "production", "X", &oversized),
            "secret value",
        ),
        (
            set_request("shop", "production", "X", "nul\0-value-1"),
            "secret value",
        ),
    ] {
        let err = admin.set_secret(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().starts_with(field), "{}", err.message());
        assert!(!err.message().contains("value-1"), "{}", err.message());
    }

    // Delete: gone once, then not found.
    let delete = |name: &str| pb::DeleteSecretRequest {
        app: "shop".into(),
        env: "staging".into(),
        name: name.into(),
    };
    admin.delete_secret(delete("API_KEY")).await.unwrap();
    let err = admin.delete_secret(delete("API_KEY")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        "no secret API_KEY for app shop env staging (see `ferry secret ls --app shop`)"
    );

    // Resolving, as a deploy does: every value opens; missing names are
    // all listed; another key opens nothing.
    let core = core_with_key(&c, data_dir_key(&c)).await;
    let values = core
        .resolve_secrets("shop", "production", &names(&["DATABASE_URL", "API_KEY"]))
        .await
        .unwrap();
    assert_eq!(values["API_KEY"], PROD_KEY_2);
    assert_eq!(values["DATABASE_URL"], DB_URL);
    assert_eq!(values.len(), 2);
    let err = core
        .resolve_secrets(
            "shop",
            "staging",
            &names(&["API_KEY", "SMTP_PASSWORD", "DATABASE_URL"]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing secrets for app shop env staging: API_KEY, DATABASE_URL, SMTP_PASSWORD; \
         set them with `ferry secret set --app shop --env staging API_KEY`"
    );
    let stranger = core_with_key(&c, SecretsKey::generate().unwrap()).await;
    let err = stranger
        .resolve_secrets("shop", "production", &names(&["API_KEY"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "cannot decrypt secret API_KEY: the secrets key differs from the one that encrypted it"
        ),
        "{err}"
    );

    // At rest: no column of any secrets row, no audit entry and no byte of
    // any file in the data dir (database, WAL, keys) holds a value.
    let db = c.store_location().to_string();
    let mut raw = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&db))
        .await
        .unwrap();
    let rows: Vec<RawSecretRow> = sqlx::query_as(
        "SELECT app, env, name, nonce, ciphertext, created_at_ms, updated_at_ms, updated_by \
         FROM secrets WHERE app = 'shop' ORDER BY env, name",
    )
    .fetch_all(&mut raw)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (app, env, name, nonce, ciphertext, created, updated, by) in &rows {
        assert_eq!(nonce.len(), 24);
        assert!(ciphertext.len() > 16);
        assert_no_value("a ciphertext", ciphertext);
        assert_no_value("a nonce", nonce);
        let text = format!("{app} {env} {name} {created} {updated} {by}");
        assert_no_value("a secrets row", text.as_bytes());
    }
    let audit: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT actor, action, target, detail FROM audit_log WHERE action LIKE 'secret.%' ORDER BY id",
    )
    .fetch_all(&mut raw)
    .await
    .unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|(_, action, target, _)| (action.as_str(), target.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("secret.set", "shop/production/API_KEY"),
            ("secret.set", "shop/production/DATABASE_URL"),
            ("secret.set", "shop/staging/API_KEY"),
            ("secret.set", "shop/production/API_KEY"),
            ("secret.delete", "shop/staging/API_KEY"),
        ]
    );
    assert_no_value("the audit log", format!("{audit:?}").as_bytes());
    raw.close().await.unwrap();
    assert_no_files_hold_a_value(&c.data_dir);
}

/// Every column of a `secrets` row, as the database file holds it.
type RawSecretRow = (String, String, String, Vec<u8>, Vec<u8>, i64, i64, String);

fn assert_no_files_hold_a_value(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_files_hold_a_value(&path);
        } else {
            assert_no_value(&path.display().to_string(), &std::fs::read(&path).unwrap());
        }
    }
}

/// Starts a coordinator on `c`'s data dir and store with `key` and returns
/// how `serve` ended (it should refuse at once).
async fn serve_with_key(
    c: &TestCoordinator,
    key: SecretsKey,
) -> Result<(), ferry_coordinator::error::CoordinatorError> {
    let mut config = c.config.clone();
    config.secrets_key = Some(key);
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = ferry_coordinator::store::open(c.store_location())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone().drop_guard();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        serve(
            c.data_dir.clone(),
            config,
            Listeners { grpc, admin: None },
            store,
            shutdown,
        ),
    )
    .await
    .expect("a coordinator with a wrong secrets key refuses at once instead of serving");
    drop(stop);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_with_another_secrets_key_refuses_to_start() {
    let mut c = TestCoordinator::start().await.unwrap();
    c.operator()
        .await
        .unwrap()
        .set_secret(set_request("shop", "production", "API_KEY", PROD_KEY))
        .await
        .unwrap();

    let err = serve_with_key(&c, env_key()).await.unwrap_err().to_string();
    assert!(
        err.starts_with(
            "the secrets key (environment variable FERRY_SECRETS_KEY) differs from the one that encrypted this store's secrets"
        ),
        "{err}"
    );
    assert!(err.contains("copy secrets.key"), "{err}");

    // The same key from the environment is as good as the file.
    c.stop().await.unwrap();
    let same = std::fs::read_to_string(c.data_dir.join(secrets_key::KEY_FILE)).unwrap();
    c.config.secrets_key = Some(SecretsKey::parse(&same, secrets_key::KeyOrigin::Env).unwrap());
    c.restart().await.unwrap();
    let listed = c
        .operator()
        .await
        .unwrap()
        .list_secrets(list_request("shop", ""))
        .await
        .unwrap()
        .into_inner()
        .secrets;
    assert_eq!(listed.len(), 1);
}

/// A data dir initialised before secrets existed has no `secrets.key` and
/// its store no key-check value: the first `serve` creates both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_creates_the_key_of_a_data_dir_from_before_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = TestCoordinator::start().await.unwrap();
    c.stop().await.unwrap();
    let key_path = c.data_dir.join(secrets_key::KEY_FILE);
    let before = std::fs::read(&key_path).unwrap();
    std::fs::remove_file(&key_path).unwrap();
    let mut raw =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(c.store_location()))
            .await
            .unwrap();
    sqlx::query("DELETE FROM secrets")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();

    c.restart().await.unwrap();
    let after = std::fs::read(&key_path).expect("serve created the key file");
    assert_ne!(after, before);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    c.operator()
        .await
        .unwrap()
        .set_secret(set_request("shop", "production", "API_KEY", PROD_KEY))
        .await
        .unwrap();
    let core = core_with_key(&c, data_dir_key(&c)).await;
    let values = core
        .resolve_secrets("shop", "production", &names(&["API_KEY"]))
        .await
        .unwrap();
    assert_eq!(values["API_KEY"], PROD_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_sharing_postgres_share_the_key_or_refuse() {
    let Some(a) = TestCoordinator::start_on_postgres().await.unwrap() else {
        return;
    };
    // A peer on a copy of the data dir: same CA, same secrets.key.
    let b = a.start_peer().await.unwrap();
    a.operator()
        .await
        .unwrap()
        .set_secret(set_request("shop", "production", "DATABASE_URL", DB_URL))
        .await
        .unwrap();
    let listed = b
        .operator()
        .await
        .unwrap()
        .list_secrets(list_request("shop", "production"))
        .await
        .unwrap()
        .into_inner()
        .secrets;
    assert_eq!(listed.len(), 1);
    let core = core_with_key(&b, data_dir_key(&b)).await;
    let values = core
        .resolve_secrets("shop", "production", &names(&["DATABASE_URL"]))
        .await
        .unwrap();
    assert_eq!(values["DATABASE_URL"], DB_URL);

    let err = serve_with_key(&a, env_key()).await.unwrap_err().to_string();
    assert!(
        err.contains("differs from the one that encrypted this store's secrets"),
        "{err}"
    );
}

/// `ferry secret` as an operator runs it: the value piped on stdin, lists
/// and JSON without it, refusals with their exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_secret_reads_the_value_from_stdin_and_never_prints_it() {
    let c = TestCoordinator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.credentials");
    c.admin.save(&admin, false).unwrap();
    let viewer = dir.path().join("vera.credentials");
    c.add_operator("vera", pb::Role::Viewer)
        .await
        .unwrap()
        .save(&viewer, false)
        .unwrap();

    async fn ferry(creds: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = tokio::process::Command::new(bin::path("ferry"))
            .arg("--credentials")
            .arg(creds)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            // A refusal may come before ferry reads its input (a broken pipe).
            let _ = pipe.write_all(input.as_bytes()).await;
            drop(pipe);
        }
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("ferry finishes")
            .unwrap()
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let set = ferry(
        &admin,
        &[
            "secret",
            "set",
            "--app",
            "shop",
            "--env",
            "production",
            "API_KEY",
        ],
        Some(&format!("{PROD_KEY}\n")),
    )
    .await;
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert_eq!(
        text(&set.stdout).trim(),
        "set secret API_KEY for app shop env production"
    );
    let set = ferry(
        &admin,
        &[
            "secret",
            "set",
            "--app",
            "shop",
            "--env",
            "staging",
            "DATABASE_URL",
            "--output",
            "json",
        ],
        Some(DB_URL),
    )
    .await;
    assert!(set.status.success(), "{}", text(&set.stderr));
    let set: Value = serde_json::from_slice(&set.stdout).unwrap();
    assert_eq!(set["name"], "DATABASE_URL");

    // Only the single trailing newline was dropped.
    let core = core_with_key(&c, data_dir_key(&c)).await;
    assert_eq!(
        core.resolve_secrets("shop", "production", &names(&["API_KEY"]))
            .await
            .unwrap()["API_KEY"],
        PROD_KEY
    );

    let ls = ferry(
        &admin,
        &["secret", "ls", "--app", "shop", "--output", "json"],
        None,
    )
    .await;
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    assert_no_value("`ferry secret ls` output", &ls.stdout);
    let list: Value = serde_json::from_slice(&ls.stdout).unwrap();
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 2);
    for field in ["app", "env", "name", "updated_at", "updated_by"] {
        assert!(items[0][field].is_string(), "ls JSON lacks {field}: {list}");
    }
    assert_eq!(
        (&items[0]["env"], &items[0]["name"]),
        (&Value::from("production"), &Value::from("API_KEY"))
    );
    assert_eq!(items[0]["updated_by"], "spiffe://ferry.test/operator/admin");
    let table = ferry(
        &admin,
        &["secret", "ls", "--app", "shop", "--env", "staging"],
        None,
    )
    .await;
    let table = text(&table.stdout);
    assert!(
        table.contains("DATABASE_URL") && !table.contains("API_KEY"),
        "{table}"
    );
    assert_no_value("`ferry secret ls` table", table.as_bytes());

    // Refusals: empty input, a bad name (before reading anything), a viewer.
    let empty = ferry(
        &admin,
        &[
            "secret",
            "set",
            "--app",
            "shop",
            "--env",
            "production",
            "EMPTY",
        ],
        Some("\n"),
    )
    .await;
    assert_eq!(empty.status.code(), Some(2));
    assert!(
        text(&empty.stderr).contains("the value is empty"),
        "{}",
        text(&empty.stderr)
    );
    let bad = ferry(
        &admin,
        &[
            "secret",
            "set",
            "--app",
            "shop",
            "--env",
            "production",
            "BAD-NAME",
        ],
        Some("value"),
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("secret name"),
        "{}",
        text(&bad.stderr)
    );
    let denied = ferry(&viewer, &["secret", "ls", "--app", "shop"], None).await;
    assert_eq!(denied.status.code(), Some(4));
    assert_eq!(
        text(&denied.stderr).trim(),
        "error: permission denied: role viewer cannot list secrets (needs deployer or admin)"
    );

    let rm = ferry(
        &admin,
        &[
            "secret",
            "rm",
            "--app",
            "shop",
            "--env",
            "production",
            "API_KEY",
        ],
        None,
    )
    .await;
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    let again = ferry(
        &admin,
        &[
            "secret",
            "rm",
            "--app",
            "shop",
            "--env",
            "production",
            "API_KEY",
        ],
        None,
    )
    .await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("no secret API_KEY"),
        "{}",
        text(&again.stderr)
    );
    let ls = ferry(
        &admin,
        &[
            "secret",
            "ls",
            "--app",
            "shop",
            "--env",
            "production",
            "--output",
            "json",
        ],
        None,
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&ls.stdout).unwrap(),
        Value::Array(vec![])
    );
}

/// `[secrets.NAME]` rules refuse a rollout before anything runs: a value
/// too short or of the wrong shape is named with its rule, never shown;
/// a required secret that no service names must still be set. No job is
/// created. Once the values meet the rules, the same rollout is planned.
#[tokio::test]
async fn secret_rules_refuse_a_rollout_before_anything_runs() {
    let c = TestCoordinator::start().await.unwrap();
    let _agent = c.start_agent("web-1", &[]).await.unwrap();
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    let file = r#"app = "rules"
[environments.production]
agents = ["web-1"]
[services.web]
image = "rules:{version}"
secrets = ["JWT_SECRET", "API_KEY"]
[secrets.JWT_SECRET]
min_length = 32
[secrets.API_KEY]
pattern = "^sk_live_[A-Za-z0-9_]+$"
[secrets.MIGRATION_TOKEN]
required = true
"#;
    let mut op = c.operator().await.unwrap();
    let rollout = |dry_run: bool| pb::StartRolloutRequest {
        accessories_only: false,
        accessories: Vec::new(),
        app_file: file.into(),
        file_name: "ferry.toml".into(),
        env: "production".into(),
        version: "1.0.0".into(),
        dry_run,
    };
    let short = "only-twenty-chars-xx";
    for (name, value) in [
        ("JWT_SECRET", short),
        ("API_KEY", PROD_KEY),
        ("MIGRATION_TOKEN", "t"),
    ] {
        op.set_secret(set_request("rules", "production", name, value))
            .await
            .unwrap();
    }
    let err = op.start_rollout(rollout(false)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(
            "rules production: secret JWT_SECRET is shorter than 32 characters (secrets.JWT_SECRET.min_length in the app file)"
        ),
        "{}",
        err.message()
    );
    assert!(!err.message().contains(short), "{}", err.message());

    op.set_secret(set_request(
        "rules",
        "production",
        "JWT_SECRET",
        "a-jwt-secret-of-forty-characters-0123456",
    ))
    .await
    .unwrap();
    op.set_secret(set_request("rules", "production", "API_KEY", STAGING_KEY))
        .await
        .unwrap();
    let err = op.start_rollout(rollout(false)).await.unwrap_err();
    assert!(
        err.message()
            .contains("secret API_KEY does not match the pattern \"^sk_live_[A-Za-z0-9_]+$\""),
        "{}",
        err.message()
    );
    assert!(!err.message().contains(STAGING_KEY), "{}", err.message());

    op.set_secret(set_request("rules", "production", "API_KEY", PROD_KEY))
        .await
        .unwrap();
    op.delete_secret(pb::DeleteSecretRequest {
        app: "rules".into(),
        env: "production".into(),
        name: "MIGRATION_TOKEN".into(),
    })
    .await
    .unwrap();
    let err = op.start_rollout(rollout(false)).await.unwrap_err();
    assert!(
        err.message().contains("MIGRATION_TOKEN"),
        "{}",
        err.message()
    );

    // Nothing ran for any of the refused rollouts.
    let jobs = op
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "{jobs:#?}");

    op.set_secret(set_request("rules", "production", "MIGRATION_TOKEN", "t"))
        .await
        .unwrap();
    let planned = op
        .start_rollout(rollout(true))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert_eq!(planned.status, "planned");
}
