//! The one behavioural suite every [`Store`] backend must pass, so the
//! coordinator cannot tell SQLite from PostgreSQL. Failures panic, as in
//! any test.
//!
//! [`run`] expects a freshly created store (it checks that the first
//! `bootstrap_admin` adds the admin); everything else it creates carries a
//! per-run suffix, so the steps do not depend on each other's data.

use std::collections::BTreeMap;

use ferry_common::identity::Role;
use futures::future::join_all;
use uuid::Uuid;

use super::{
    AgentRecord, AuditEntry, Backend, JoinTokenRecord, NewAgent, OperatorRecord, Store, StoreError,
};

/// A fixed "now": the store never reads the clock, callers pass time in.
const NOW: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

/// Runs every step of the suite against `store`.
pub async fn run(store: &dyn Store) {
    let tag = unique_tag();
    basics(store).await;
    bootstrap_admin_once(store, &tag).await;
    join_tokens(store, &tag).await;
    enrollment_refusals(store, &tag).await;
    names_and_revocation(store, &tag).await;
    agent_sessions(store, &tag).await;
    operators(store, &tag).await;
    audit_log(store).await;
    concurrent_enrollment(store, &tag).await;
}

/// Eight random hex digits, making the names of one run unique.
fn unique_tag() -> String {
    let simple = Uuid::now_v7().simple().to_string();
    // The first digits of a v7 UUID are its timestamp; the last are random.
    simple[simple.len() - 8..].to_string()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn token(hash: String, expires_at_ms: i64) -> JoinTokenRecord {
    JoinTokenRecord {
        token_hash: hash,
        name: None,
        labels: labels(&[("env", "staging")]),
        created_by: "spiffe://ferry.test/operator/alice".into(),
        created_at_ms: NOW - HOUR,
        expires_at_ms,
        used_at_ms: None,
        used_by: None,
    }
}

fn new_agent(name: &str) -> NewAgent {
    NewAgent {
        id: Uuid::now_v7(),
        name: name.into(),
        hostname: format!("{name}.example.net"),
        labels: labels(&[
            ("env", "prod"),
            ("zone", "fra-1"),
            ("note", "ünïcode \"quoted\""),
        ]),
        version: "0.1.0".into(),
        cert_serial: format!("serial-{name}"),
        cert_not_after_ms: NOW + 24 * HOUR,
    }
}

/// Inserts a fresh token and enrolls `name` with it at `at_ms`.
async fn enroll(store: &dyn Store, name: &str, at_ms: i64) -> AgentRecord {
    let hash = format!("hash-{}", Uuid::now_v7().simple());
    store
        .insert_join_token(&token(hash.clone(), at_ms + HOUR))
        .await
        .expect("insert token");
    store
        .enroll_agent(&hash, at_ms, &new_agent(name))
        .await
        .unwrap_or_else(|e| panic!("enrolling {name}: {e}"))
}

async fn agent(store: &dyn Store, id: Uuid) -> AgentRecord {
    store
        .get_agent(id)
        .await
        .expect("get agent")
        .expect("agent exists")
}

async fn basics(store: &dyn Store) {
    store.ping().await.expect("ping");
    assert!(matches!(
        store.backend(),
        Backend::Sqlite | Backend::Postgres
    ));
}

async fn bootstrap_admin_once(store: &dyn Store, tag: &str) {
    let admin = format!("root-{tag}");
    assert!(
        store.bootstrap_admin(&admin, NOW).await.expect("bootstrap"),
        "the first bootstrap of a fresh store adds the admin"
    );
    let expected = OperatorRecord {
        name: admin.clone(),
        role: Role::Admin,
        created_at_ms: NOW,
        created_by: "system".into(),
        revoked_at_ms: None,
    };
    assert_eq!(
        store.get_operator(&admin).await.expect("get"),
        Some(expected)
    );

    assert!(
        !store
            .bootstrap_admin(&admin, NOW + 1)
            .await
            .expect("bootstrap again")
    );
    let other = format!("other-root-{tag}");
    assert!(
        !store
            .bootstrap_admin(&other, NOW + 2)
            .await
            .expect("bootstrap other")
    );
    assert_eq!(store.get_operator(&other).await.expect("get other"), None);

    // Even with no admin left, a restart must not hand out a new one.
    store
        .revoke_operator(&admin, NOW + 3)
        .await
        .expect("revoke admin");
    assert!(
        !store
            .bootstrap_admin(&admin, NOW + 4)
            .await
            .expect("bootstrap after revoke")
    );
    let after = store
        .get_operator(&admin)
        .await
        .expect("get")
        .expect("admin stays");
    assert_eq!(after.revoked_at_ms, Some(NOW + 3));
}

async fn join_tokens(store: &dyn Store, tag: &str) {
    let hash = format!("hash-{tag}-tokens");
    let mut record = token(hash.clone(), NOW + HOUR);
    record.name = Some(format!("named-{tag}"));
    store
        .insert_join_token(&record)
        .await
        .expect("insert token");
    assert_eq!(
        store.get_join_token(&hash).await.expect("get"),
        Some(record.clone())
    );
    assert_eq!(
        store.get_join_token("no-such-hash").await.expect("get"),
        None
    );

    let agent = new_agent(&format!("named-{tag}"));
    let enrolled = store
        .enroll_agent(&hash, NOW, &agent)
        .await
        .expect("enroll");
    let expected = AgentRecord {
        id: agent.id,
        name: agent.name.clone(),
        hostname: agent.hostname.clone(),
        labels: agent.labels.clone(),
        version: agent.version.clone(),
        enrolled_at_ms: NOW,
        last_seen_ms: 0,
        connected_to: None,
        revoked_at_ms: None,
        cert_serial: agent.cert_serial.clone(),
        cert_not_after_ms: agent.cert_not_after_ms,
        health_json: None,
    };
    assert_eq!(enrolled, expected);
    assert_eq!(
        store.get_agent(agent.id).await.expect("get agent"),
        Some(expected)
    );

    let used = store
        .get_join_token(&hash)
        .await
        .expect("get")
        .expect("token stays");
    assert_eq!(used.used_at_ms, Some(NOW));
    assert_eq!(used.used_by, Some(agent.id));
    assert_eq!(
        JoinTokenRecord {
            used_at_ms: None,
            used_by: None,
            ..used
        },
        record,
        "using a token changes nothing else"
    );
}

async fn enrollment_refusals(store: &dyn Store, tag: &str) {
    let unknown = store
        .enroll_agent("no-such-hash", NOW, &new_agent(&format!("unknown-{tag}")))
        .await;
    assert!(
        matches!(unknown, Err(StoreError::TokenUnknown)),
        "{unknown:?}"
    );

    // A token dies on first use.
    let first = enroll(store, &format!("first-{tag}"), NOW).await;
    let hash = format!("hash-{tag}-once");
    store
        .insert_join_token(&token(hash.clone(), NOW + HOUR))
        .await
        .expect("insert");
    store
        .enroll_agent(&hash, NOW, &new_agent(&format!("once-{tag}")))
        .await
        .expect("first use");
    let again = store
        .enroll_agent(&hash, NOW + 1, &new_agent(&format!("twice-{tag}")))
        .await;
    assert!(
        matches!(again, Err(StoreError::TokenUsed { .. })),
        "{again:?}"
    );

    // Expiry is inclusive: at `expires_at_ms` the token is already dead.
    let expired_hash = format!("hash-{tag}-expired");
    store
        .insert_join_token(&token(expired_hash.clone(), NOW))
        .await
        .expect("insert");
    let late = new_agent(&format!("late-{tag}"));
    let expired = store.enroll_agent(&expired_hash, NOW, &late).await;
    assert!(
        matches!(expired, Err(StoreError::TokenExpired { .. })),
        "{expired:?}"
    );
    assert_eq!(store.get_agent(late.id).await.expect("get"), None);

    // A taken name refuses the enrollment and leaves the token usable.
    let taken_hash = format!("hash-{tag}-taken");
    store
        .insert_join_token(&token(taken_hash.clone(), NOW + HOUR))
        .await
        .expect("insert");
    let clash = new_agent(&first.name);
    let taken = store.enroll_agent(&taken_hash, NOW, &clash).await;
    assert!(
        matches!(&taken, Err(StoreError::AgentNameTaken { name }) if *name == first.name),
        "{taken:?}"
    );
    assert_eq!(store.get_agent(clash.id).await.expect("get"), None);
    let unused = store
        .get_join_token(&taken_hash)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((unused.used_at_ms, unused.used_by), (None, None));
    let other = new_agent(&format!("other-{tag}"));
    store
        .enroll_agent(&taken_hash, NOW + 1, &other)
        .await
        .expect("the token still works under a free name");
}

async fn names_and_revocation(store: &dyn Store, tag: &str) {
    let name = format!("web-{tag}");
    let first = enroll(store, &name, NOW).await;

    let revoked = store.revoke_agent(first.id, NOW + 1).await.expect("revoke");
    assert_eq!(
        revoked,
        AgentRecord {
            revoked_at_ms: Some(NOW + 1),
            ..first.clone()
        }
    );
    let twice = store.revoke_agent(first.id, NOW + 2).await;
    assert!(
        matches!(&twice, Err(StoreError::AgentAlreadyRevoked { name: n }) if *n == name),
        "{twice:?}"
    );
    assert_eq!(agent(store, first.id).await.revoked_at_ms, Some(NOW + 1));
    let missing = store.revoke_agent(Uuid::now_v7(), NOW).await;
    assert!(
        matches!(missing, Err(StoreError::AgentNotFound(_))),
        "{missing:?}"
    );

    // A revoked agent's name is free again.
    let second = enroll(store, &name, NOW + 10).await;
    assert_eq!(
        store.find_agent(&name).await.expect("find").map(|a| a.id),
        Some(second.id)
    );
    assert_eq!(
        store
            .find_agent(&first.id.to_string())
            .await
            .expect("find by id")
            .map(|a| a.id),
        Some(first.id),
        "by id, revoked agents are found too"
    );
    assert_eq!(
        store
            .find_agent(&format!("nobody-{tag}"))
            .await
            .expect("find"),
        None
    );
    assert_eq!(
        store
            .find_agent(&Uuid::now_v7().to_string())
            .await
            .expect("find"),
        None
    );

    // Among revoked agents of one name, the newest wins...
    store
        .revoke_agent(second.id, NOW + 11)
        .await
        .expect("revoke second");
    assert_eq!(
        store.find_agent(&name).await.expect("find").map(|a| a.id),
        Some(second.id)
    );
    // ...but a live one wins over any revoked one, even one enrolled later
    // (clocks of two coordinators can disagree).
    let third = enroll(store, &name, NOW + 5).await;
    assert_eq!(
        store.find_agent(&name).await.expect("find").map(|a| a.id),
        Some(third.id)
    );

    let all = store.list_agents().await.expect("list");
    let keys: Vec<(&str, i64)> = all
        .iter()
        .map(|a| (a.name.as_str(), a.enrolled_at_ms))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "agents are listed by name, then enrollment");
    let mine: Vec<Uuid> = all
        .iter()
        .filter(|a| a.name == name)
        .map(|a| a.id)
        .collect();
    assert_eq!(mine, vec![first.id, third.id, second.id]);
    assert_eq!(
        all.iter().find(|a| a.id == second.id),
        Some(&agent(store, second.id).await)
    );
}

async fn agent_sessions(store: &dyn Store, tag: &str) {
    let enrolled = enroll(store, &format!("db-{tag}"), NOW).await;
    let id = enrolled.id;

    store
        .agent_connected(id, "coord-a", "0.2.0", "db-renamed.example.net", NOW + 100)
        .await
        .expect("connected");
    let connected = agent(store, id).await;
    assert_eq!(connected.connected_to.as_deref(), Some("coord-a"));
    assert_eq!(connected.version, "0.2.0");
    assert_eq!(connected.hostname, "db-renamed.example.net");
    assert_eq!(connected.last_seen_ms, NOW + 100);

    let health = r#"{"docker_ok":true,"disk_free_bytes":1234567890}"#;
    store
        .agent_heartbeat(id, NOW + 130, health)
        .await
        .expect("heartbeat");
    let beating = agent(store, id).await;
    assert_eq!(beating.last_seen_ms, NOW + 130);
    assert_eq!(beating.health_json.as_deref(), Some(health));

    // A late close from a coordinator the agent has left must not clear
    // the session it now holds on coord-a.
    store
        .agent_disconnected(id, "coord-b", NOW + 140)
        .await
        .expect("disconnected");
    let still = agent(store, id).await;
    assert_eq!(still.connected_to.as_deref(), Some("coord-a"));
    assert_eq!(still.last_seen_ms, NOW + 130);

    store
        .agent_disconnected(id, "coord-a", NOW + 160)
        .await
        .expect("disconnected");
    let gone = agent(store, id).await;
    assert_eq!(gone.connected_to, None);
    assert_eq!(
        gone.last_seen_ms,
        NOW + 160,
        "the session was alive until it closed"
    );
    assert_eq!(gone.health_json.as_deref(), Some(health));

    store
        .agent_cert_renewed(id, "serial-renewed", NOW + 48 * HOUR)
        .await
        .expect("renewed");
    let renewed = agent(store, id).await;
    assert_eq!(renewed.cert_serial, "serial-renewed");
    assert_eq!(renewed.cert_not_after_ms, NOW + 48 * HOUR);
    assert_eq!(
        AgentRecord {
            cert_serial: gone.cert_serial.clone(),
            cert_not_after_ms: gone.cert_not_after_ms,
            ..renewed
        },
        gone
    );

    let nobody = Uuid::now_v7();
    let results = [
        store
            .agent_connected(nobody, "coord-a", "0.2.0", "h", NOW)
            .await,
        store.agent_heartbeat(nobody, NOW, "{}").await,
        store.agent_cert_renewed(nobody, "s", NOW).await,
    ];
    for result in results {
        assert!(
            matches!(result, Err(StoreError::AgentNotFound(_))),
            "{result:?}"
        );
    }
    store
        .agent_disconnected(nobody, "coord-a", NOW)
        .await
        .expect("closing an unknown session is not an error");
}

async fn operators(store: &dyn Store, tag: &str) {
    let op = |name: &str, role: Role| OperatorRecord {
        name: format!("{name}-{tag}"),
        role,
        created_at_ms: NOW,
        created_by: "spiffe://ferry.test/operator/root".into(),
        revoked_at_ms: None,
    };
    let viewer = op("vera", Role::Viewer);
    let deployer = op("dan", Role::Deployer);
    let admin = op("ada", Role::Admin);
    for record in [&viewer, &deployer, &admin] {
        store.add_operator(record).await.expect("add operator");
    }
    assert_eq!(
        store.get_operator(&viewer.name).await.expect("get"),
        Some(viewer.clone())
    );
    assert_eq!(
        store
            .get_operator(&format!("nobody-{tag}"))
            .await
            .expect("get"),
        None
    );

    let exists = store
        .add_operator(&OperatorRecord {
            role: Role::Admin,
            ..viewer.clone()
        })
        .await;
    assert!(
        matches!(&exists, Err(StoreError::OperatorExists { name }) if *name == viewer.name),
        "{exists:?}"
    );

    let revoked = store
        .revoke_operator(&viewer.name, NOW + 1)
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at_ms, Some(NOW + 1));
    let again = store
        .revoke_operator(&viewer.name, NOW + 2)
        .await
        .expect("revoke again");
    assert_eq!(
        again.revoked_at_ms,
        Some(NOW + 1),
        "revoking twice keeps the first time"
    );
    let reuse = store.add_operator(&viewer).await;
    assert!(
        matches!(&reuse, Err(StoreError::OperatorRevoked { name }) if *name == viewer.name),
        "{reuse:?}"
    );
    let missing = store.revoke_operator(&format!("nobody-{tag}"), NOW).await;
    assert!(
        matches!(missing, Err(StoreError::OperatorNotFound(_))),
        "{missing:?}"
    );

    let all = store.list_operators().await.expect("list");
    let names: Vec<&str> = all.iter().map(|o| o.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "operators are listed by name");
    let mine: Vec<&OperatorRecord> = all.iter().filter(|o| o.name.ends_with(tag)).collect();
    let expected_viewer = OperatorRecord {
        revoked_at_ms: Some(NOW + 1),
        ..viewer.clone()
    };
    assert!(
        mine.contains(&&admin) && mine.contains(&&deployer) && mine.contains(&&expected_viewer)
    );
}

async fn audit_log(store: &dyn Store) {
    // Far in the future, so these are the newest entries whatever else the
    // store holds.
    const LATER: i64 = 4_000_000_000_000;
    let entry = |at_ms: i64, n: u32| AuditEntry {
        at_ms,
        actor: "spiffe://ferry.test/operator/root".into(),
        action: "operator.add".into(),
        target: format!("target-{n}"),
        detail: format!("detail {n}"),
    };
    let entries = [
        entry(LATER + 1, 1),
        entry(LATER + 3, 2),
        entry(LATER + 2, 3),
        entry(LATER + 3, 4),
    ];
    for e in &entries {
        store.append_audit(e).await.expect("append");
    }
    // Newest first; within one millisecond, the later append first.
    assert_eq!(
        store.list_audit(3).await.expect("list"),
        vec![entries[3].clone(), entries[1].clone(), entries[2].clone()]
    );
    assert_eq!(store.list_audit(0).await.expect("list"), vec![]);
    let all = store.list_audit(1000).await.expect("list");
    assert!(all.len() >= 4);
    assert_eq!(all[3], entries[0]);
    assert!(all.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
}

/// Eight enrollments racing for one token: exactly one wins. Then eight
/// tokens racing for one name: exactly one wins and the others' tokens stay
/// usable. Each attempt runs on its own connection, so the race is real.
async fn concurrent_enrollment(store: &dyn Store, tag: &str) {
    let hash = format!("hash-{tag}-race");
    store
        .insert_join_token(&token(hash.clone(), NOW + HOUR))
        .await
        .expect("insert");
    let agents: Vec<NewAgent> = (0..8)
        .map(|i| new_agent(&format!("racer-{i}-{tag}")))
        .collect();
    let results = join_all(agents.iter().map(|a| store.enroll_agent(&hash, NOW, a))).await;
    let winners: Vec<&AgentRecord> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one enrollment wins the token: {results:?}"
    );
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, StoreError::TokenUsed { .. })),
        "{results:?}"
    );
    let used = store
        .get_join_token(&hash)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(used.used_by, Some(winners[0].id));

    let name = format!("contested-{tag}");
    let hashes: Vec<String> = (0..8).map(|i| format!("hash-{tag}-name-{i}")).collect();
    for h in &hashes {
        store
            .insert_join_token(&token(h.clone(), NOW + HOUR))
            .await
            .expect("insert");
    }
    let contenders: Vec<NewAgent> = (0..8).map(|_| new_agent(&name)).collect();
    let attempts = hashes
        .iter()
        .zip(&contenders)
        .map(|(h, a)| store.enroll_agent(h, NOW, a));
    let results = join_all(attempts).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "exactly one live agent per name: {results:?}");
    for (h, result) in hashes.iter().zip(&results) {
        let token = store.get_join_token(h).await.expect("get").expect("exists");
        match result {
            Ok(agent) => assert_eq!(token.used_by, Some(agent.id)),
            Err(StoreError::AgentNameTaken { name: n }) if *n == name => {
                assert_eq!(
                    token.used_at_ms, None,
                    "a refused enrollment leaves its token usable"
                );
            }
            Err(e) => panic!("unexpected refusal: {e:?}"),
        }
    }
}

/// `server` with its database replaced by `database`.
pub fn database_url(server: &str, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (server, String::new()),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    format!("{base}/{database}{query}")
}

/// Creates a database with a unique name on the PostgreSQL server at
/// `server` (a URL whose user may `CREATE DATABASE`) and returns its URL.
pub async fn fresh_postgres_database(server: &str) -> Result<String, StoreError> {
    use sqlx::Connection;
    let name = format!("ferry_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(server).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(database_url(server, &name))
}
