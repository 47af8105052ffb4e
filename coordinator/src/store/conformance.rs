//! The one behavioural suite every [`Store`] backend must pass, so the
//! coordinator cannot tell SQLite from PostgreSQL. Failures panic, as in
//! any test.
//!
//! Each public `async fn` is one behaviour, run by `store::tests` as a test
//! of its own on each backend (`conformance!`), on a freshly created store
//! (`bootstrap_admin_once` checks that the first bootstrap adds the admin).
//! What a behaviour creates carries a per-call suffix, so behaviours would
//! not depend on each other's data even on a shared store; those that act
//! on the whole store (expiry, absent agents) look only at their own jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_common::identity::Role;
use ferry_proto::v1::{EventBody, JobFinished, LogLine, TaskStateChanged, event_body};
use futures::future::join_all;
use prost::Message;
use uuid::Uuid;

use super::ids::IdOf;
use super::{
    AgentHello, AgentRecord, AuditEntry, AuditFilter, Backend, BackupFilter, BackupRecord,
    Heartbeat, IncomingEvent, JobClaim, JobEventRecord, JobFilter, JobRecord, JobStart,
    JoinTokenRecord, NewAgent, NewJob, NewTask, Notification, OperatorRecord, RolloutKind,
    RolloutRecord, RolloutStatus, RolloutUpdate, SecretMeta, SecretRecord, Store, StoreError,
    TaskRecord,
};
use super::{Claim, NewSchedule, RunOutcome, ScheduleFilter, ScheduleKind, ScheduleSource};
use crate::job::{JobStatus, Outcome, TaskEffect, TaskEvent, TaskState};

/// A fixed "now": the store never reads the clock, callers pass time in.
const NOW: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

fn rollout_record(app: &str, env: &str, version: &str, created_at_ms: i64) -> RolloutRecord {
    RolloutRecord {
        id: Uuid::now_v7(),
        app: app.into(),
        env: env.into(),
        version: version.into(),
        kind: RolloutKind::Deploy,
        status: RolloutStatus::Running,
        protected: env == "production",
        spec_json: format!("{{\"release\":\"{version}\"}}"),
        plan_json: "{}".into(),
        previous_id: None,
        previous_version: None,
        rollback_of: None,
        steps_json: "[]".into(),
        message: String::new(),
        created_by: "spiffe://test/operator/alice".into(),
        created_at_ms,
        updated_at_ms: created_at_ms,
        finished_at_ms: None,
        owner: Some("coord-a".into()),
        lease_expires_at_ms: created_at_ms + 30_000,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        cancel_requested_by: None,
        cancel_requested_at_ms: None,
    }
}

fn rollout_update(status: RolloutStatus, message: &str, lease_expires_at_ms: i64) -> RolloutUpdate {
    RolloutUpdate {
        steps_json: format!("[\"{message}\"]"),
        message: message.into(),
        status,
        lease_expires_at_ms,
    }
}

/// Rollouts: the (app, env) lock, its lease, history, and takeover of a
/// rollout whose coordinator died.
pub async fn rollouts(store: &Store) {
    let tag = &unique_tag();
    let app = format!("shop-{tag}");
    let first = rollout_record(&app, "staging", "1.0", NOW);
    store.create_rollout(&first).await.unwrap();
    assert_eq!(
        store.get_rollout(first.id).await.unwrap().as_ref(),
        Some(&first)
    );
    assert!(store.get_rollout(Uuid::now_v7()).await.unwrap().is_none());

    // The lock: a second rollout of (app, staging) is refused, naming the first.
    let mut second = rollout_record(&app, "staging", "1.1", NOW + 10);
    second.previous_id = Some(first.id);
    second.previous_version = Some("1.0".into());
    match store.create_rollout(&second).await {
        Err(StoreError::RolloutInProgress { running }) => assert_eq!(running.id, first.id),
        other => panic!("expected RolloutInProgress, got {other:?}"),
    }
    assert!(store.get_rollout(second.id).await.unwrap().is_none());
    // Another environment of the app is another lock.
    // A rollback keeps its kind.
    let mut prod = rollout_record(&app, "production", "1.0", NOW + 5);
    prod.kind = RolloutKind::Rollback;
    store.create_rollout(&prod).await.unwrap();
    assert_eq!(
        store.get_rollout(prod.id).await.unwrap().map(|r| r.kind),
        Some(RolloutKind::Rollback)
    );

    // Only the owner writes progress; writing renews the lease.
    let renew = rollout_update(RolloutStatus::Running, "batch 1/2", NOW + 60_000);
    assert!(
        !store
            .update_rollout(first.id, "coord-b", &renew, NOW + 1)
            .await
            .unwrap()
    );
    assert!(
        store
            .update_rollout(first.id, "coord-a", &renew, NOW + 1)
            .await
            .unwrap()
    );
    let got = store.get_rollout(first.id).await.unwrap().unwrap();
    assert_eq!(got.message, "batch 1/2");
    assert_eq!(got.steps_json, "[\"batch 1/2\"]");
    assert_eq!(got.lease_expires_at_ms, NOW + 60_000);
    assert_eq!(got.updated_at_ms, NOW + 1);
    assert_eq!(got.finished_at_ms, None);

    // A final status ends it and releases the lock; it cannot be written again.
    let done = rollout_update(RolloutStatus::Succeeded, "done", NOW + 60_000);
    assert!(
        store
            .update_rollout(first.id, "coord-a", &done, NOW + 2)
            .await
            .unwrap()
    );
    let got = store.get_rollout(first.id).await.unwrap().unwrap();
    assert_eq!(got.status, RolloutStatus::Succeeded);
    assert_eq!(got.finished_at_ms, Some(NOW + 2));
    assert!(
        !store
            .update_rollout(first.id, "coord-a", &renew, NOW + 3)
            .await
            .unwrap()
    );
    store.create_rollout(&second).await.unwrap();
    let got = store.get_rollout(second.id).await.unwrap().unwrap();
    assert_eq!(got.previous_id, Some(first.id));
    assert_eq!(got.previous_version.as_deref(), Some("1.0"));

    // History, newest first, per env or for the whole app.
    let ids = |rs: Vec<RolloutRecord>| rs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_rollouts(&app, Some("staging"), 0).await.unwrap()),
        vec![second.id, first.id]
    );
    assert_eq!(
        ids(store.list_rollouts(&app, None, 0).await.unwrap()),
        vec![second.id, prod.id, first.id]
    );
    assert_eq!(
        ids(store.list_rollouts(&app, None, 1).await.unwrap()),
        vec![second.id]
    );
    assert!(
        store
            .list_rollouts(&format!("other-{tag}"), None, 0)
            .await
            .unwrap()
            .is_empty()
    );

    // Takeover: nothing while the leases hold; once they ran out, every
    // running rollout becomes the caller's, and the old owner is locked out.
    let mine = |rs: Vec<RolloutRecord>| {
        let mut v: Vec<_> = rs.into_iter().filter(|r| r.app == app).collect();
        v.sort_by_key(|r| r.created_at_ms);
        v
    };
    let none = store
        .claim_abandoned_rollouts("coord-b", NOW + 20, NOW + 50_000)
        .await
        .unwrap();
    assert!(mine(none).is_empty());
    let taken = mine(
        store
            .claim_abandoned_rollouts("coord-b", NOW + 40_011, NOW + 70_000)
            .await
            .unwrap(),
    );
    assert_eq!(
        taken.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![prod.id, second.id]
    );
    assert!(taken.iter().all(|r| r.owner.as_deref() == Some("coord-b")
        && r.lease_expires_at_ms == NOW + 70_000));
    assert!(
        !store
            .update_rollout(second.id, "coord-a", &renew, NOW + 40_012)
            .await
            .unwrap()
    );
    let reverted = rollout_update(RolloutStatus::Reverted, "web-2 failed", NOW + 70_000);
    assert!(
        store
            .update_rollout(second.id, "coord-b", &reverted, NOW + 40_013)
            .await
            .unwrap()
    );
    let failed = rollout_update(RolloutStatus::RevertFailed, "x", NOW + 70_000);
    assert!(
        store
            .update_rollout(prod.id, "coord-b", &failed, NOW + 40_014)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_rollout(second.id).await.unwrap().unwrap().status,
        RolloutStatus::Reverted
    );
}

/// A cancel request: kept on a running rollout (the first one wins), never
/// on an ended one; the words of redeploys, restarts and a cancelled end
/// are stored.
pub async fn rollout_cancel_requests(store: &Store) {
    let tag = &unique_tag();
    let app = format!("shop-{tag}");
    let mut r = rollout_record(&app, "staging", "1.0", NOW);
    r.kind = RolloutKind::Redeploy;
    store.create_rollout(&r).await.unwrap();
    let got = store
        .request_rollout_cancel(r.id, "spiffe://test/operator/bob", NOW + 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.kind, RolloutKind::Redeploy);
    assert_eq!(
        got.cancel_requested_by.as_deref(),
        Some("spiffe://test/operator/bob")
    );
    assert_eq!(got.cancel_requested_at_ms, Some(NOW + 5));
    let again = store
        .request_rollout_cancel(r.id, "spiffe://test/operator/carol", NOW + 9)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.cancel_requested_by, again.cancel_requested_at_ms),
        (Some("spiffe://test/operator/bob".into()), Some(NOW + 5)),
        "the first request is kept"
    );
    // The driver's progress writes leave the request alone.
    let cancelled = rollout_update(RolloutStatus::Cancelled, "cancelled", NOW + 60_000);
    assert!(
        store
            .update_rollout(r.id, "coord-a", &cancelled, NOW + 10)
            .await
            .unwrap()
    );
    let got = store.get_rollout(r.id).await.unwrap().unwrap();
    assert_eq!(got.status, RolloutStatus::Cancelled);
    assert_eq!(got.cancel_requested_at_ms, Some(NOW + 5));

    // An ended rollout takes no request.
    let mut restart = rollout_record(&app, "staging", "1.0", NOW + 20);
    restart.kind = RolloutKind::Restart;
    store.create_rollout(&restart).await.unwrap();
    let done = rollout_update(RolloutStatus::Succeeded, "restarted", NOW + 60_000);
    assert!(
        store
            .update_rollout(restart.id, "coord-a", &done, NOW + 21)
            .await
            .unwrap()
    );
    let got = store
        .request_rollout_cancel(restart.id, "spiffe://test/operator/bob", NOW + 22)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.kind, RolloutKind::Restart);
    assert_eq!(got.cancel_requested_by, None);
    assert!(
        store
            .request_rollout_cancel(Uuid::now_v7(), "x", NOW)
            .await
            .unwrap()
            .is_none()
    );
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

/// A `Hello` of no particular capabilities.
fn hello<'a>(
    id: Uuid,
    coordinator_id: &'a str,
    version: &'a str,
    hostname: &'a str,
    now_ms: i64,
) -> AgentHello<'a> {
    AgentHello {
        id,
        coordinator_id,
        version,
        hostname,
        capabilities: &[],
        now_ms,
    }
}

/// Inserts a fresh token and enrolls `name` with it at `at_ms`.
async fn enroll(store: &Store, name: &str, at_ms: i64) -> AgentRecord {
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

async fn agent(store: &Store, id: Uuid) -> AgentRecord {
    store
        .get_agent(id)
        .await
        .expect("get agent")
        .expect("agent exists")
}

pub async fn basics(store: &Store) {
    store.ping().await.expect("ping");
    assert!(matches!(
        store.backend(),
        Backend::Sqlite | Backend::Postgres
    ));
}

pub async fn bootstrap_admin_once(store: &Store) {
    let tag = &unique_tag();
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

pub async fn join_tokens(store: &Store) {
    let tag = &unique_tag();
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
        previous_cert_serial: None,
        cert_renewed_at_ms: None,
        health_json: None,
        capabilities: Vec::new(),
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

pub async fn enrollment_refusals(store: &Store) {
    let tag = &unique_tag();
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

pub async fn names_and_revocation(store: &Store) {
    let tag = &unique_tag();
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
    let revoked_ids = store.revoked_agent_ids().await.expect("revoked ids");
    assert!(revoked_ids.contains(&first.id), "{revoked_ids:?}");
    assert!(revoked_ids.is_sorted(), "in id order: {revoked_ids:?}");
    let live = enroll(store, &format!("live-{tag}"), NOW).await;
    assert!(
        !store
            .revoked_agent_ids()
            .await
            .expect("revoked ids")
            .contains(&live.id),
        "an agent that is not revoked is not listed"
    );
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

pub async fn agent_sessions(store: &Store) {
    let tag = &unique_tag();
    let enrolled = enroll(store, &format!("db-{tag}"), NOW).await;
    let id = enrolled.id;

    store
        .agent_connected(&hello(
            id,
            "coord-a",
            "0.2.0",
            "db-renamed.example.net",
            NOW + 100,
        ))
        .await
        .expect("connected");
    let connected = agent(store, id).await;
    assert_eq!(connected.connected_to.as_deref(), Some("coord-a"));
    assert_eq!(connected.version, "0.2.0");
    assert_eq!(connected.hostname, "db-renamed.example.net");
    assert_eq!(connected.last_seen_ms, NOW + 100);
    assert!(enrolled.capabilities.is_empty());
    assert!(connected.capabilities.is_empty());

    // Capabilities round-trip, and the next connect replaces them.
    let first_caps = vec!["docker".to_string(), "compose-v2".to_string()];
    store
        .agent_connected(&AgentHello {
            capabilities: &first_caps,
            ..hello(id, "coord-a", "0.2.0", "db-renamed.example.net", NOW + 100)
        })
        .await
        .expect("connected with capabilities");
    assert_eq!(agent(store, id).await.capabilities, first_caps);
    let second_caps = vec!["podman".to_string()];
    store
        .agent_connected(&AgentHello {
            capabilities: &second_caps,
            ..hello(id, "coord-a", "0.2.1", "db-renamed.example.net", NOW + 100)
        })
        .await
        .expect("reconnected with other capabilities");
    let reconnected = agent(store, id).await;
    assert_eq!(reconnected.capabilities, second_caps);
    assert_eq!(reconnected.version, "0.2.1");

    let health = r#"{"docker_ok":true,"disk_free_bytes":1234567890}"#;
    let beat = |seen_ms, health_json: Option<&str>| Heartbeat {
        id,
        seen_ms,
        health_json: health_json.map(str::to_string),
    };
    store
        .record_heartbeats(&[
            beat(NOW + 130, Some(health)),
            Heartbeat {
                id: Uuid::now_v7(),
                seen_ms: NOW,
                health_json: None,
            },
        ])
        .await
        .expect("heartbeats, an unknown agent among them");
    let beating = agent(store, id).await;
    assert_eq!(beating.last_seen_ms, NOW + 130);
    assert_eq!(beating.health_json.as_deref(), Some(health));
    store
        .record_heartbeats(&[beat(NOW + 120, None)])
        .await
        .expect("a late heartbeat");
    let kept = agent(store, id).await;
    assert_eq!(
        kept.last_seen_ms,
        NOW + 130,
        "last_seen never moves backwards"
    );
    assert_eq!(
        kept.health_json.as_deref(),
        Some(health),
        "no health keeps the last one"
    );

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
        .agent_cert_renewed(id, "serial-renewed", NOW + 48 * HOUR, NOW + 200)
        .await
        .expect("renewed");
    let renewed = agent(store, id).await;
    assert_eq!(renewed.cert_serial, "serial-renewed");
    assert_eq!(renewed.cert_not_after_ms, NOW + 48 * HOUR);
    assert_eq!(
        renewed.previous_cert_serial.as_deref(),
        Some(gone.cert_serial.as_str()),
        "the replaced certificate is remembered"
    );
    assert_eq!(renewed.cert_renewed_at_ms, Some(NOW + 200));
    assert_eq!(
        AgentRecord {
            cert_serial: gone.cert_serial.clone(),
            cert_not_after_ms: gone.cert_not_after_ms,
            previous_cert_serial: None,
            cert_renewed_at_ms: None,
            ..renewed
        },
        gone
    );
    // A second renewal replaces the first renewal's certificate.
    store
        .agent_cert_renewed(id, "serial-third", NOW + 96 * HOUR, NOW + 300)
        .await
        .expect("renewed again");
    let again = agent(store, id).await;
    assert_eq!(again.cert_serial, "serial-third");
    assert_eq!(
        again.previous_cert_serial.as_deref(),
        Some("serial-renewed")
    );

    let nobody = Uuid::now_v7();
    let results = [
        store
            .agent_connected(&hello(nobody, "coord-a", "0.2.0", "h", NOW))
            .await,
        store.agent_cert_renewed(nobody, "s", NOW, NOW).await,
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

pub async fn operators(store: &Store) {
    let tag = &unique_tag();
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

fn newest(limit: u32) -> AuditFilter {
    AuditFilter {
        limit,
        ..Default::default()
    }
}

pub async fn audit_log(store: &Store) {
    // Far in the future, so these are the newest entries whatever else the
    // store holds.
    const LATER: i64 = 4_000_000_000_000;
    let tag = &unique_tag();
    let app = format!("shop-{tag}");
    let entry = |at_ms: i64, n: u32| AuditEntry {
        at_ms,
        actor: "spiffe://ferry.test/operator/root".into(),
        action: "operator.add".into(),
        target: format!("target-{n}"),
        detail: format!("detail {n}"),
        app: None,
        env: None,
    };
    let scoped = |at_ms: i64, n: u32, env: &str, actor: &str| AuditEntry {
        actor: actor.into(),
        action: "rollout.deploy".into(),
        app: Some(app.clone()),
        env: Some(env.into()),
        ..entry(at_ms, n)
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
        store.list_audit(&newest(3)).await.expect("list"),
        vec![entries[3].clone(), entries[1].clone(), entries[2].clone()]
    );
    assert_eq!(store.list_audit(&newest(0)).await.expect("list"), vec![]);
    let all = store.list_audit(&newest(1000)).await.expect("list");
    assert!(all.len() >= 4);
    assert_eq!(all[3], entries[0]);
    assert!(all.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));

    // Filters, each alone and together, in the store's one query.
    let ada = "spiffe://ferry.test/operator/ada";
    let bob = "spiffe://ferry.test/operator/bob";
    let deploys = [
        scoped(NOW, 10, "staging", ada),
        scoped(NOW + 10, 11, "production", bob),
        scoped(NOW + 20, 12, "staging", bob),
        scoped(NOW + 30, 13, "production", ada),
    ];
    for e in &deploys {
        store.append_audit(e).await.expect("append");
    }
    let list = |f: AuditFilter| async move { store.list_audit(&f).await.expect("list") };
    let of_app = AuditFilter {
        app: Some(app.clone()),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        list(of_app.clone()).await,
        vec![
            deploys[3].clone(),
            deploys[2].clone(),
            deploys[1].clone(),
            deploys[0].clone()
        ],
        "an app's entries, newest first, and only them"
    );
    assert_eq!(
        list(AuditFilter {
            env: Some("staging".into()),
            ..of_app.clone()
        })
        .await,
        vec![deploys[2].clone(), deploys[0].clone()]
    );
    assert_eq!(
        list(AuditFilter {
            actors: vec!["ada".into(), ada.into()],
            ..of_app.clone()
        })
        .await,
        vec![deploys[3].clone(), deploys[0].clone()],
        "either actor form matches"
    );
    assert_eq!(
        list(AuditFilter {
            actors: vec![bob.into()],
            env: Some("production".into()),
            ..of_app.clone()
        })
        .await,
        vec![deploys[1].clone()]
    );
    assert_eq!(
        list(AuditFilter {
            since_ms: Some(NOW + 20),
            ..of_app.clone()
        })
        .await,
        vec![deploys[3].clone(), deploys[2].clone()],
        "since is inclusive"
    );
    assert_eq!(
        list(AuditFilter {
            limit: 1,
            ..of_app.clone()
        })
        .await,
        vec![deploys[3].clone()]
    );
    assert!(
        list(AuditFilter {
            app: Some(format!("other-{tag}")),
            limit: 100,
            ..Default::default()
        })
        .await
        .is_empty()
    );
    // Entries about no app never match an app filter.
    assert!(
        list(of_app)
            .await
            .iter()
            .all(|e| e.app.as_deref() == Some(app.as_str()))
    );
}

/// Job and rollout ids given by a part: the whole id, a prefix or a
/// suffix of at least 8 characters; unknown and ambiguous parts are
/// refused, naming what matched.
pub async fn id_parts(store: &Store) {
    let a = new_job("probe", NOW, None);
    let b = new_job("probe", NOW, None);
    store.create_job(&a, &[]).await.expect("job a");
    store.create_job(&b, &[]).await.expect("job b");
    let a_text = a.id.to_string();
    let b_text = b.id.to_string();
    assert_eq!(store.resolve_id(IdOf::Job, &a_text).await.unwrap(), a.id);
    // The last 12 characters are random: unique for two ids.
    assert_eq!(
        store
            .resolve_id(IdOf::Job, &a_text[a_text.len() - 8..])
            .await
            .unwrap(),
        a.id,
        "the short id lists show"
    );
    assert_eq!(
        store
            .resolve_id(IdOf::Job, &b_text[..30].to_uppercase())
            .await
            .unwrap(),
        b.id,
        "a prefix, in any case"
    );
    // Both were made in the same minute: their first 8 characters (the
    // time) are shared.
    let shared = &a_text[..8];
    if b_text.starts_with(shared) {
        match store.resolve_id(IdOf::Job, shared).await {
            Err(StoreError::IdAmbiguous { matches, .. }) => {
                assert!(matches.contains(&a_text) && matches.contains(&b_text));
            }
            other => panic!("expected ambiguous, got {other:?}"),
        }
    }
    assert!(matches!(
        store.resolve_id(IdOf::Job, "ffffffffffff").await,
        Err(StoreError::IdNotFound { what: "job", .. })
    ));
    assert!(matches!(
        store.resolve_id(IdOf::Job, "abc").await,
        Err(StoreError::BadId { .. })
    ));
    // A job id is not a rollout id.
    assert!(matches!(
        store
            .resolve_id(IdOf::Rollout, &a_text[a_text.len() - 12..])
            .await,
        Err(StoreError::IdNotFound {
            what: "rollout",
            ..
        })
    ));
    let r = rollout_record(&format!("ids-{}", unique_tag()), "staging", "1", NOW);
    store.create_rollout(&r).await.expect("rollout");
    let r_text = r.id.to_string();
    assert_eq!(
        store
            .resolve_id(IdOf::Rollout, &r_text[r_text.len() - 8..])
            .await
            .unwrap(),
        r.id
    );
}

/// Eight enrollments racing for one token: exactly one wins. Then eight
/// tokens racing for one name: exactly one wins and the others' tokens stay
/// usable. Each attempt runs on its own connection, so the race is real.
pub async fn concurrent_enrollment(store: &Store) {
    let tag = &unique_tag();
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

// --- secrets -----------------------------------------------------------

/// A sealed-looking secret: the store treats nonce and ciphertext as opaque
/// bytes, so these hold every byte value (NUL included) to prove they come
/// back unchanged.
fn secret(app: &str, env: &str, name: &str, seed: u8, at_ms: i64) -> SecretRecord {
    SecretRecord {
        app: app.into(),
        env: env.into(),
        name: name.into(),
        nonce: (0..24)
            .map(|i: u8| i.wrapping_mul(7).wrapping_add(seed))
            .collect(),
        ciphertext: (0..=255u8).map(|b| b.wrapping_add(seed)).collect(),
        created_at_ms: at_ms,
        updated_at_ms: at_ms,
        updated_by: "spiffe://ferry.test/operator/ada".into(),
    }
}

fn meta(s: &SecretRecord) -> SecretMeta {
    SecretMeta {
        app: s.app.clone(),
        env: s.env.clone(),
        name: s.name.clone(),
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        updated_by: s.updated_by.clone(),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

pub async fn secrets(store: &Store) {
    let tag = &unique_tag();
    let app = format!("shop-{tag}");
    let other_app = format!("shop-{tag}-other");
    let prod_api = secret(&app, "production", "API_KEY", 1, NOW);
    let prod_db = secret(&app, "production", "DATABASE_URL", 2, NOW);
    // Lowercase sorts after uppercase in byte order, before it in most
    // locales: listings must not depend on the server's collation.
    let prod_lower = secret(&app, "production", "a_lower", 3, NOW);
    let staging_api = secret(&app, "staging", "API_KEY", 4, NOW);
    let elsewhere = secret(&other_app, "production", "API_KEY", 5, NOW);
    for s in [&staging_api, &prod_lower, &prod_db, &prod_api, &elsewhere] {
        store.put_secret(s).await.expect("put secret");
    }

    let got = store
        .get_secrets(
            &app,
            "production",
            &names(&["DATABASE_URL", "MISSING", "API_KEY", "a_lower"]),
        )
        .await
        .expect("get secrets");
    assert_eq!(
        got,
        vec![prod_api.clone(), prod_db.clone(), prod_lower.clone()],
        "the named secrets that exist, in name order, bytes unchanged"
    );
    assert_eq!(
        store
            .get_secrets(&app, "production", &[])
            .await
            .expect("get none"),
        vec![]
    );
    assert_eq!(
        store
            .get_secrets(&app, "preview", &names(&["API_KEY"]))
            .await
            .expect("get from an env without secrets"),
        vec![]
    );

    // Replacing keeps the first creation time and changes the rest.
    let replaced = SecretRecord {
        updated_at_ms: NOW + HOUR,
        created_at_ms: NOW + HOUR,
        updated_by: "spiffe://ferry.test/operator/root".into(),
        ..secret(&app, "production", "API_KEY", 9, NOW + HOUR)
    };
    store.put_secret(&replaced).await.expect("replace secret");
    let expected = SecretRecord {
        created_at_ms: NOW,
        ..replaced.clone()
    };
    assert_eq!(
        store
            .get_secrets(&app, "production", &names(&["API_KEY"]))
            .await
            .expect("get replaced"),
        vec![expected.clone()]
    );
    assert_eq!(
        store
            .get_secrets(&app, "staging", &names(&["API_KEY"]))
            .await
            .expect("get staging"),
        vec![staging_api.clone()],
        "another env's secret of the same name is untouched"
    );

    assert_eq!(
        store.list_secrets(&app, None).await.expect("list app"),
        vec![
            meta(&expected),
            meta(&prod_db),
            meta(&prod_lower),
            meta(&staging_api)
        ],
        "by env, then name, in byte order"
    );
    assert_eq!(
        store
            .list_secrets(&app, Some("staging"))
            .await
            .expect("list env"),
        vec![meta(&staging_api)]
    );
    assert_eq!(
        store
            .list_secrets(&format!("shop-{tag}-none"), None)
            .await
            .expect("list unknown app"),
        vec![]
    );
    assert_eq!(
        store
            .list_secrets(&other_app, None)
            .await
            .expect("list other"),
        vec![meta(&elsewhere)]
    );

    assert!(
        store
            .delete_secret(&app, "production", "DATABASE_URL")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_secret(&app, "production", "DATABASE_URL")
            .await
            .expect("delete again"),
        "deleting what is gone reports false"
    );
    assert!(
        !store
            .delete_secret(&app, "preview", "API_KEY")
            .await
            .expect("delete from another env")
    );
    assert_eq!(
        store
            .get_secrets(&app, "production", &names(&["DATABASE_URL", "API_KEY"]))
            .await
            .expect("get after delete"),
        vec![expected]
    );
    assert_eq!(
        store
            .list_secrets(&other_app, None)
            .await
            .expect("list other after delete"),
        vec![meta(&elsewhere)],
        "another app's secret of the same name is untouched"
    );
}

/// Eight writers setting one secret at once: every write succeeds (the last
/// one wins) and one row remains.
pub async fn concurrent_secret_writes(store: &Store) {
    let tag = &unique_tag();
    let app = format!("race-{tag}");
    let writes: Vec<SecretRecord> = (0..8u8)
        .map(|i| secret(&app, "production", "TOKEN", i, NOW + i64::from(i)))
        .collect();
    let results = join_all(writes.iter().map(|s| store.put_secret(s))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let stored = store
        .get_secrets(&app, "production", &names(&["TOKEN"]))
        .await
        .expect("get");
    assert_eq!(stored.len(), 1);
    assert!(
        writes
            .iter()
            .any(|w| w.nonce == stored[0].nonce && w.ciphertext == stored[0].ciphertext),
        "the row is one of the writes, whole: {stored:?}"
    );
    assert_eq!(store.list_secrets(&app, None).await.expect("list").len(), 1);
}

// --- jobs --------------------------------------------------------------

const DAY: i64 = 24 * HOUR;

fn new_job(kind: &str, created_at_ms: i64, idempotency_key: Option<String>) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        kind: kind.into(),
        spec_json: r#"{"image":"registry.example.net/app:1.2.3"}"#.into(),
        target_json: r#"{"labels":{"env":"prod"}}"#.into(),
        created_by: "spiffe://ferry.test/operator/dan".into(),
        idempotency_key,
        created_at_ms,
        deadline_ms: created_at_ms + DAY,
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    }
}

fn new_tasks(agents: &[&AgentRecord]) -> Vec<NewTask> {
    agents
        .iter()
        .map(|a| NewTask {
            id: Uuid::now_v7(),
            agent_id: a.id,
            agent_name: a.name.clone(),
        })
        .collect()
}

/// Enrolls `n` agents named `{prefix}-{i}-{tag}`.
async fn agents(store: &Store, prefix: &str, tag: &str, n: usize) -> Vec<AgentRecord> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(enroll(store, &format!("{prefix}-{i}-{tag}"), NOW).await);
    }
    out
}

/// Creates a job of `kind` with one task per agent; returns the job and
/// its tasks in the agents' order.
async fn submit(
    store: &Store,
    job: NewJob,
    agents: &[&AgentRecord],
) -> (JobRecord, Vec<TaskRecord>) {
    let tasks = new_tasks(agents);
    let (record, created) = store.create_job(&job, &tasks).await.expect("create job");
    assert!(created);
    let mut records = Vec::new();
    for t in &tasks {
        records.push(task(store, t.id).await);
    }
    (record, records)
}

async fn task(store: &Store, id: Uuid) -> TaskRecord {
    store
        .get_task(id)
        .await
        .expect("get task")
        .expect("task exists")
}

async fn job(store: &Store, id: Uuid) -> JobRecord {
    store
        .get_job(id)
        .await
        .expect("get job")
        .expect("job exists")
}

/// Claims every pending task of these agents.
async fn claim(store: &Store, agents: &[&AgentRecord]) -> Vec<TaskRecord> {
    let ids: Vec<Uuid> = agents.iter().map(|a| a.id).collect();
    store
        .claim_pending_tasks(&ids, "coord-a", NOW, 1000)
        .await
        .expect("claim")
        .into_iter()
        .map(|(task, _)| task)
        .collect()
}

/// An agent's event: a log line naming its seq.
fn event(task_id: Uuid, seq: u64, machine_event: TaskEvent) -> IncomingEvent {
    let body = EventBody {
        body: Some(event_body::Body::Log(LogLine {
            step: "pull".into(),
            stream: "stdout".into(),
            line: format!("line {seq}"),
        })),
    };
    IncomingEvent {
        task_id,
        attempt: 1,
        seq,
        at_ms: NOW + 10 * i64::try_from(seq).expect("small seq"),
        body: body.encode_to_vec(),
        machine_event,
        message: None,
        result_json: None,
    }
}

fn reported(task_id: Uuid, seq: u64) -> IncomingEvent {
    event(task_id, seq, TaskEvent::Reported)
}

fn finished(task_id: Uuid, seq: u64, outcome: Outcome) -> IncomingEvent {
    IncomingEvent {
        message: Some(format!("finished: {outcome:?}")),
        result_json: Some(format!(r#"{{"seq":{seq}}}"#)),
        ..event(task_id, seq, TaskEvent::Finished(outcome))
    }
}

fn body(e: &JobEventRecord) -> event_body::Body {
    EventBody::decode(e.body.as_slice())
        .expect("event body decodes")
        .body
        .expect("event body is set")
}

/// The state of a `TaskStateChanged` event, if it is one.
fn state_change(e: &JobEventRecord) -> Option<TaskStateChanged> {
    match body(e) {
        event_body::Body::TaskStateChanged(c) => Some(c),
        _ => None,
    }
}

fn job_finished(e: &JobEventRecord) -> Option<JobFinished> {
    match body(e) {
        event_body::Body::JobFinished(f) => Some(f),
        _ => None,
    }
}

async fn all_events(store: &Store, job_id: Uuid) -> Vec<JobEventRecord> {
    let events = store
        .job_events_after(job_id, 0, 100_000)
        .await
        .expect("job events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "job seqs are 1, 2, 3, … without gaps");
    assert_eq!(
        job(store, job_id).await.last_seq,
        seqs.len() as u64,
        "the job's last_seq is its last event's"
    );
    events
}

/// The agent seqs stored for `task_id`, in job order.
fn agent_seqs(events: &[JobEventRecord], task_id: Uuid) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.task_id == Some(task_id))
        .filter_map(|e| e.task_seq)
        .collect()
}

/// `(task_id, state)` of every `TaskStateChanged` event, in order.
fn state_changes(events: &[JobEventRecord]) -> Vec<(Uuid, String)> {
    events
        .iter()
        .filter_map(|e| state_change(e).map(|c| (e.task_id.expect("task event"), c.state)))
        .collect()
}

fn finishes(events: &[JobEventRecord]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| job_finished(e).map(|f| f.status))
        .collect()
}

/// A coordinator's note about a task, as `SubmitJob` writes first.
fn note(task: &NewTask) -> (Uuid, Vec<u8>) {
    let body = EventBody {
        body: Some(event_body::Body::Log(LogLine {
            step: "queue".into(),
            stream: "coordinator".into(),
            line: format!("queued for agent {}", task.agent_name),
        })),
    };
    (task.id, body.encode_to_vec())
}

/// `start_job`: the job, its tasks, the notes, the claims of the agents
/// connected here and the audit entry, all or nothing, in one call.
pub async fn start_jobs(store: &Store) {
    let tag = &unique_tag();
    // Newer than every entry of `audit_log`, so it lists first.
    const AUDIT_AT: i64 = 4_500_000_000_000;
    let agents = agents(store, "start", tag, 3).await;
    let key = format!("start-key-{tag}");
    let new = new_job("probe", NOW, Some(key.clone()));
    let tasks = new_tasks(&agents.iter().collect::<Vec<_>>());
    let notes: Vec<(Uuid, Vec<u8>)> = tasks.iter().map(note).collect();
    let here_ids = [agents[0].id, agents[2].id];
    let here = |agent: Uuid| here_ids.contains(&agent);
    let audit = AuditEntry {
        at_ms: AUDIT_AT,
        actor: new.created_by.clone(),
        action: "job.submit".into(),
        target: new.id.to_string(),
        detail: format!("kind=probe {tag}"),
        app: None,
        env: None,
    };
    let start = JobStart {
        job: &new,
        tasks: &tasks,
        notes: &notes,
        here: &here,
        coordinator_id: "coord-a",
        audit: Some(&audit),
        now_ms: NOW + 1,
    };
    let started = store.start_job(&start).await.expect("start job");
    assert!(started.created);

    // The agents here got theirs, in task id order, and the job runs.
    let claimed_ids: Vec<Uuid> = started.claimed.iter().map(|(t, _)| t.id).collect();
    assert_eq!(claimed_ids, vec![tasks[0].id, tasks[2].id]);
    for ((t, j), agent) in started.claimed.iter().zip([&agents[0], &agents[2]]) {
        assert_eq!(t.state, TaskState::Assigned);
        assert_eq!(t.attempt, 1);
        assert_eq!(t.assigned_by.as_deref(), Some("coord-a"));
        assert_eq!(
            t.message,
            format!("assigned to agent {} (attempt 1)", agent.name)
        );
        assert_eq!(t.updated_at_ms, NOW + 1);
        assert_eq!(
            *t,
            task(store, t.id).await,
            "returned task is the stored one"
        );
        assert_eq!(*j, started.job);
    }
    assert_eq!(task(store, tasks[1].id).await.state, TaskState::Pending);
    assert_eq!(started.job.status, JobStatus::Running);
    assert_eq!(started.job.last_seq, 5, "3 notes and 2 assignments");
    assert_eq!(
        started.job,
        job(store, new.id).await,
        "returned job is stored"
    );

    // Notes first, in the order given, then the assignments.
    let events = all_events(store, new.id).await;
    let logged: Vec<Option<Uuid>> = events[..3].iter().map(|e| e.task_id).collect();
    assert_eq!(logged, tasks.iter().map(|t| Some(t.id)).collect::<Vec<_>>());
    for (e, (_, body)) in events.iter().zip(&notes) {
        assert_eq!(&e.body, body);
        assert_eq!(e.task_seq, None, "a coordinator event has no agent seq");
    }
    assert_eq!(
        state_changes(&events),
        vec![
            (tasks[0].id, "assigned".to_string()),
            (tasks[2].id, "assigned".to_string()),
        ]
    );
    assert_eq!(
        store.list_audit(&newest(1)).await.expect("audit"),
        vec![audit.clone()]
    );

    // The same key again: nothing is written, nothing claimed, the job as
    // it is now comes back.
    let all = |_: Uuid| true;
    let again = NewJob {
        id: Uuid::now_v7(),
        ..new.clone()
    };
    let again_tasks = new_tasks(&agents.iter().collect::<Vec<_>>());
    let retry = store
        .start_job(&JobStart {
            job: &again,
            tasks: &again_tasks,
            notes: &again_tasks.iter().map(note).collect::<Vec<_>>(),
            here: &all,
            coordinator_id: "coord-b",
            audit: Some(&AuditEntry {
                at_ms: AUDIT_AT + 1,
                ..audit.clone()
            }),
            now_ms: NOW + 2,
        })
        .await
        .expect("start again");
    assert!(!retry.created);
    assert!(retry.claimed.is_empty());
    assert_eq!(retry.job, started.job);
    assert_eq!(store.get_job(again.id).await.expect("get"), None);
    assert_eq!(store.get_task(again_tasks[0].id).await.expect("get"), None);
    assert_eq!(all_events(store, new.id).await.len(), 5);
    assert_eq!(
        store.list_audit(&newest(1)).await.expect("audit"),
        vec![audit]
    );

    // With no agent here, the job stays pending with just its notes, and a
    // later claim picks its tasks up as usual.
    let quiet = new_job("probe", NOW, None);
    let quiet_tasks = new_tasks(&[&agents[1]]);
    let nobody = |_: Uuid| false;
    let waiting = store
        .start_job(&JobStart {
            job: &quiet,
            tasks: &quiet_tasks,
            notes: &quiet_tasks.iter().map(note).collect::<Vec<_>>(),
            here: &nobody,
            coordinator_id: "coord-a",
            audit: None,
            now_ms: NOW,
        })
        .await
        .expect("start quiet");
    assert!(waiting.created && waiting.claimed.is_empty());
    assert_eq!(waiting.job.status, JobStatus::Pending);
    assert_eq!(waiting.job.last_seq, 1);
    let later = claim(store, &[&agents[1]]).await;
    let later_ids: Vec<Uuid> = later.iter().map(|t| t.id).collect();
    assert!(later_ids.contains(&quiet_tasks[0].id), "{later_ids:?}");
    assert!(later_ids.contains(&tasks[1].id), "{later_ids:?}");
    assert_eq!(job(store, quiet.id).await.status, JobStatus::Running);
}

pub async fn create_jobs(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "create", tag, 3).await;
    // Listed by agent name whatever the order they were given in.
    let given = [&agents[2], &agents[0], &agents[1]];
    let key = format!("key-{tag}");
    let new = new_job("deploy", NOW, Some(key.clone()));
    let tasks = new_tasks(&given);
    let (created, fresh) = store.create_job(&new, &tasks).await.expect("create");
    assert!(fresh);
    let expected = JobRecord {
        id: new.id,
        kind: "deploy".into(),
        spec_json: new.spec_json.clone(),
        target_json: new.target_json.clone(),
        status: JobStatus::Pending,
        created_by: new.created_by.clone(),
        idempotency_key: Some(key.clone()),
        created_at_ms: NOW,
        updated_at_ms: NOW,
        finished_at_ms: None,
        deadline_ms: NOW + DAY,
        cancel_requested: false,
        last_seq: 0,
        traceparent: new.traceparent.clone(),
    };
    assert_eq!(created, expected);
    assert_eq!(
        store.get_job(new.id).await.expect("get"),
        Some(expected.clone())
    );
    assert_eq!(store.get_job(Uuid::now_v7()).await.expect("get"), None);

    let listed = store.list_tasks(new.id).await.expect("list tasks");
    let names: Vec<&str> = listed.iter().map(|t| t.agent_name.as_str()).collect();
    assert_eq!(
        names,
        agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>()
    );
    let first = TaskRecord {
        id: tasks[1].id,
        job_id: new.id,
        agent_id: agents[0].id,
        agent_name: agents[0].name.clone(),
        state: TaskState::Pending,
        attempt: 0,
        last_seq: 0,
        assigned_by: None,
        started_at_ms: None,
        finished_at_ms: None,
        message: String::new(),
        result_json: None,
        updated_at_ms: NOW,
    };
    assert_eq!(listed[0], first);
    assert_eq!(task(store, tasks[1].id).await, first);
    assert_eq!(store.get_task(Uuid::now_v7()).await.expect("get"), None);

    // A retry with the same key changes nothing and returns the first job.
    let retry = NewJob {
        kind: "backup".into(),
        ..new_job("backup", NOW + 5, Some(key))
    };
    let retry_tasks = new_tasks(&[&agents[0]]);
    let (existing, fresh) = store.create_job(&retry, &retry_tasks).await.expect("retry");
    assert!(!fresh);
    assert_eq!(existing, expected);
    assert_eq!(store.get_job(retry.id).await.expect("get"), None);
    assert_eq!(store.get_task(retry_tasks[0].id).await.expect("get"), None);
    assert_eq!(store.list_tasks(new.id).await.expect("list").len(), 3);

    // Without a key, every submission is a job of its own.
    for _ in 0..2 {
        let (_, fresh) = store
            .create_job(&new_job("deploy", NOW, None), &new_tasks(&[&agents[0]]))
            .await
            .expect("create without key");
        assert!(fresh);
    }
}

pub async fn list_job_filters(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "list", tag, 2).await;
    let (deploy, backup) = (format!("deploy-{tag}"), format!("backup-{tag}"));
    // Far in the future, so they are the newest jobs whatever the store holds.
    const LATER: i64 = 4_000_000_000_000;
    let (old, _) = submit(store, new_job(&deploy, LATER + 1, None), &[&agents[0]]).await;
    let (mid, _) = submit(store, new_job(&backup, LATER + 2, None), &[&agents[1]]).await;
    let (new, new_tasks) = submit(
        store,
        new_job(&deploy, LATER + 3, None),
        &[&agents[0], &agents[1]],
    )
    .await;
    let ids = |jobs: Vec<JobRecord>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let list =
        |filter: JobFilter| async move { ids(store.list_jobs(&filter).await.expect("list")) };

    assert_eq!(
        list(JobFilter {
            kind: Some(deploy.clone()),
            ..Default::default()
        })
        .await,
        vec![new.id, old.id],
        "newest first"
    );
    assert_eq!(
        list(JobFilter {
            agent_name: Some(agents[1].name.clone()),
            ..Default::default()
        })
        .await,
        vec![new.id, mid.id]
    );
    assert_eq!(
        list(JobFilter {
            agent_name: Some(format!("nobody-{tag}")),
            ..Default::default()
        })
        .await,
        Vec::<Uuid>::new()
    );
    assert_eq!(
        list(JobFilter {
            since_ms: Some(LATER + 2),
            ..Default::default()
        })
        .await,
        vec![new.id, mid.id],
        "since is inclusive"
    );
    assert_eq!(
        list(JobFilter {
            limit: 2,
            ..Default::default()
        })
        .await,
        vec![new.id, mid.id]
    );
    let default = list(JobFilter::default()).await;
    assert!(default.len() <= 50 && default.starts_with(&[new.id, mid.id, old.id]));

    // A claim makes the newest job running.
    claim(store, &[&agents[0]]).await;
    assert_eq!(
        task(store, new_tasks[0].id).await.state,
        TaskState::Assigned
    );
    assert_eq!(
        list(JobFilter {
            status: Some(JobStatus::Running),
            kind: Some(deploy.clone()),
            ..Default::default()
        })
        .await,
        vec![new.id, old.id]
    );
    assert_eq!(
        list(JobFilter {
            status: Some(JobStatus::Pending),
            since_ms: Some(LATER),
            ..Default::default()
        })
        .await,
        vec![mid.id]
    );
    assert_eq!(
        list(JobFilter {
            status: Some(JobStatus::Succeeded),
            kind: Some(deploy),
            ..Default::default()
        })
        .await,
        Vec::<Uuid>::new()
    );
}

pub async fn claims(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "claim", tag, 3).await;
    let (a, b, c) = (&agents[0], &agents[1], &agents[2]);
    let (older, older_tasks) = submit(store, new_job("deploy", NOW - 2, None), &[a]).await;
    let (newer, newer_tasks) = submit(store, new_job("deploy", NOW - 1, None), &[a, b]).await;
    let mut overdue = new_job("deploy", NOW - 3, None);
    overdue.deadline_ms = NOW;
    let (_, overdue_tasks) = submit(store, overdue, &[a]).await;
    let (_, c_tasks) = submit(store, new_job("deploy", NOW, None), &[c]).await;

    assert_eq!(
        store
            .claim_pending_tasks(&[], "coord-a", NOW, 10)
            .await
            .expect("claim"),
        vec![]
    );
    let claimed = store
        .claim_pending_tasks(&[a.id], "coord-a", NOW, 10)
        .await
        .expect("claim");
    let claimed_ids: Vec<Uuid> = claimed.iter().map(|(t, _)| t.id).collect();
    // Oldest job first; not the one whose deadline has come.
    assert_eq!(claimed_ids, vec![older_tasks[0].id, newer_tasks[0].id]);
    for (t, j) in &claimed {
        assert_eq!(t.state, TaskState::Assigned);
        assert_eq!(t.attempt, 1);
        assert_eq!(t.assigned_by.as_deref(), Some("coord-a"));
        assert_eq!(t.updated_at_ms, NOW);
        assert_eq!(j.id, t.job_id);
        assert_eq!(j.status, JobStatus::Running);
        assert_eq!(*t, task(store, t.id).await);
        assert_eq!(*j, job(store, j.id).await);
    }
    assert_eq!(
        task(store, overdue_tasks[0].id).await.state,
        TaskState::Pending
    );
    assert_eq!(
        task(store, newer_tasks[1].id).await.state,
        TaskState::Pending
    );
    assert_eq!(job(store, older.id).await.status, JobStatus::Running);

    // Nothing left for a; b's and c's one at a time.
    assert_eq!(
        store
            .claim_pending_tasks(&[a.id], "coord-b", NOW, 10)
            .await
            .expect("claim"),
        vec![]
    );
    let one = store
        .claim_pending_tasks(&[b.id, c.id], "coord-b", NOW, 1)
        .await
        .expect("claim");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0.id, newer_tasks[1].id, "older job first");
    let two = store
        .claim_pending_tasks(&[b.id, c.id], "coord-b", NOW, 1)
        .await
        .expect("claim");
    assert_eq!(two[0].0.id, c_tasks[0].id);
    assert_eq!(two[0].0.assigned_by.as_deref(), Some("coord-b"));

    let active = store.active_tasks_for_agent(a.id).await.expect("active");
    let mut expected = vec![older_tasks[0].id, newer_tasks[0].id];
    expected.sort();
    let mut active_ids: Vec<Uuid> = active.iter().map(|t| t.id).collect();
    active_ids.sort();
    assert_eq!(active_ids, expected);

    // The assignment is an event of the job.
    let events = all_events(store, newer.id).await;
    assert_eq!(
        state_changes(&events),
        vec![
            (newer_tasks[0].id, "assigned".to_string()),
            (newer_tasks[1].id, "assigned".to_string())
        ]
    );
    assert_eq!(events[0].agent_name.as_deref(), Some(a.name.as_str()));
    assert_eq!(events[0].task_seq, None);
    assert_eq!(events[0].at_ms, NOW);

    // Sent back (the agent did not hold it): claimed again, next attempt.
    let back = store
        .transition_task(
            older_tasks[0].id,
            TaskEvent::Unassigned,
            "not held",
            NOW + 1,
        )
        .await
        .expect("unassign")
        .expect("valid");
    assert_eq!(
        (back.from, back.task.state),
        (TaskState::Assigned, TaskState::Pending)
    );
    let again = store
        .claim_pending_tasks(&[a.id], "coord-b", NOW + 2, 10)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0.attempt, 2);
    assert_eq!(again[0].0.assigned_by.as_deref(), Some("coord-b"));
}

/// Claiming a job's tasks for the agents connected here, and asking which
/// jobs have work waiting for this coordinator's agents.
pub async fn job_claims(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "jobclaim", tag, 4).await;
    let (a, b, c, d) = (&agents[0], &agents[1], &agents[2], &agents[3]);
    let (fanout, fanout_tasks) = submit(store, new_job("deploy", NOW - 2, None), &[a, b, c]).await;
    let (other, other_tasks) = submit(store, new_job("deploy", NOW - 1, None), &[a]).await;
    let mut overdue = new_job("deploy", NOW - 3, None);
    overdue.deadline_ms = NOW;
    let (overdue, overdue_tasks) = submit(store, overdue, &[d]).await;
    let (cancelled, cancelled_tasks) = submit(store, new_job("deploy", NOW, None), &[d]).await;
    store
        .request_cancel(cancelled.id, NOW)
        .await
        .expect("cancel");

    let (here_a, here_b) = (a.id, b.id);
    let here = move |agent: Uuid| agent == here_a || agent == here_b;
    let everywhere = |_: Uuid| true;
    let batch = |after: Option<Uuid>, limit: u32| {
        let here = &here;
        async move {
            store
                .claim_job_tasks(fanout.id, after, here, "coord-a", NOW, limit)
                .await
                .expect("claim")
        }
    };
    assert_eq!(batch(None, 0).await, JobClaim::default());
    // A batch looks at the next `limit` pending tasks in id order and
    // claims those of agents here.
    let first = batch(None, 1).await;
    assert_eq!(first.next, Some(fanout_tasks[0].id));
    assert_eq!(first.claimed.len(), 1);
    assert_eq!(first.claimed[0].0.id, fanout_tasks[0].id);
    let second = batch(first.next, 1).await;
    assert_eq!(second.next, Some(fanout_tasks[1].id));
    assert_eq!(second.claimed.len(), 1);
    assert_eq!(second.claimed[0].0.id, fanout_tasks[1].id);
    for (t, j) in first.claimed.iter().chain(&second.claimed) {
        assert_eq!(t.state, TaskState::Assigned);
        assert_eq!(t.attempt, 1);
        assert_eq!(t.assigned_by.as_deref(), Some("coord-a"));
        assert_eq!(t.updated_at_ms, NOW);
        assert_eq!(j.id, fanout.id);
        assert_eq!(j.status, JobStatus::Running);
        assert_eq!(*t, task(store, t.id).await);
    }
    assert_eq!(second.claimed[0].1, job(store, fanout.id).await);
    // c is not here: looked at, not claimed; then the pass is over.
    let third = batch(second.next, 1).await;
    assert_eq!(
        (third.claimed.len(), third.next),
        (0, Some(fanout_tasks[2].id))
    );
    assert_eq!(batch(third.next, 1).await, JobClaim::default());
    // A new pass finds only c's task, in one batch.
    assert_eq!(batch(None, 10).await, JobClaim::default());
    // Other jobs of the same agents are untouched; c's task waits for c.
    assert_eq!(
        task(store, other_tasks[0].id).await.state,
        TaskState::Pending
    );
    assert_eq!(
        task(store, fanout_tasks[2].id).await.state,
        TaskState::Pending
    );
    // Not an overdue job's, not a cancelled one's, not an unknown job's.
    for job_id in [overdue.id, cancelled.id, Uuid::now_v7()] {
        assert_eq!(
            store
                .claim_job_tasks(job_id, None, &everywhere, "coord-a", NOW, 10)
                .await
                .expect("claim"),
            JobClaim::default()
        );
    }
    assert_eq!(
        task(store, overdue_tasks[0].id).await.state,
        TaskState::Pending
    );
    assert_eq!(
        task(store, cancelled_tasks[0].id).await.state,
        TaskState::Cancelled
    );
    let events = all_events(store, fanout.id).await;
    assert_eq!(
        state_changes(&events),
        vec![
            (fanout_tasks[0].id, "assigned".to_string()),
            (fanout_tasks[1].id, "assigned".to_string())
        ]
    );

    // Which jobs wait on agents whose session is on a coordinator.
    let (here_coord, there_coord) = (format!("coord-x-{tag}"), format!("coord-y-{tag}"));
    for agent in [a, b, c, d] {
        let on = if agent.id == c.id {
            &there_coord
        } else {
            &here_coord
        };
        store
            .agent_connected(&hello(agent.id, on, "0.1.0", "h", NOW))
            .await
            .expect("connected");
    }
    // a's task of `other`; not the overdue job's task of d, not b's
    // assigned one.
    assert_eq!(
        store
            .jobs_pending_on(&here_coord, NOW)
            .await
            .expect("pending here"),
        vec![other.id]
    );
    assert_eq!(
        store
            .jobs_pending_on(&there_coord, NOW)
            .await
            .expect("pending there"),
        vec![fanout.id]
    );
    store
        .agent_disconnected(c.id, &there_coord, NOW + 1)
        .await
        .expect("disconnected");
    assert_eq!(
        store
            .jobs_pending_on(&there_coord, NOW)
            .await
            .expect("pending there"),
        Vec::<Uuid>::new()
    );
    let everything = store
        .claim_job_tasks(other.id, None, &everywhere, "coord-b", NOW, 10)
        .await
        .expect("claim");
    assert_eq!(everything.next, None);
    assert_eq!(everything.claimed.len(), 1);
    assert_eq!(
        everything.claimed[0].0.assigned_by.as_deref(),
        Some("coord-b")
    );
    assert_eq!(
        store
            .jobs_pending_on(&here_coord, NOW)
            .await
            .expect("pending here"),
        Vec::<Uuid>::new()
    );
    for agent in [a, b, d] {
        store
            .agent_disconnected(agent.id, &here_coord, NOW + 1)
            .await
            .expect("disconnected");
    }
}

pub async fn transitions(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "transition", tag, 1).await;
    let (j, tasks) = submit(store, new_job("deploy", NOW, None), &[&agents[0]]).await;
    let id = tasks[0].id;
    assert_eq!(
        store
            .transition_task(Uuid::now_v7(), TaskEvent::Assigned, "x", NOW)
            .await
            .expect("unknown task"),
        None
    );
    claim(store, &[&agents[0]]).await;
    let before = task(store, id).await;
    assert_eq!(
        store
            .transition_task(id, TaskEvent::Assigned, "again", NOW + 1)
            .await
            .expect("invalid"),
        None,
        "an invalid transition is refused"
    );
    assert_eq!(task(store, id).await, before, "and writes nothing");

    // Valid but changing nothing: reported, nothing written.
    let same = store
        .transition_task(id, TaskEvent::DeadlinePassed, "late", NOW + 2)
        .await
        .expect("transition")
        .expect("valid");
    assert_eq!(same.task, before);
    assert_eq!(
        (same.from, same.effects.clone()),
        (TaskState::Assigned, vec![])
    );
    assert_eq!(task(store, id).await, before);

    let gone = store
        .transition_task(id, TaskEvent::AgentGone, "agent restarted", NOW + 3)
        .await
        .expect("transition")
        .expect("valid");
    assert_eq!(gone.task.state, TaskState::Lost);
    assert_eq!(gone.task.message, "agent restarted");
    assert_eq!(gone.task.finished_at_ms, Some(NOW + 3));
    assert_eq!(gone.job_finished, Some(JobStatus::Failed));
    assert_eq!(gone.effects, vec![TaskEffect::RecomputeJob]);
    assert_eq!(task(store, id).await, gone.task);
    let finished_job = job(store, j.id).await;
    assert_eq!(finished_job.status, JobStatus::Failed);
    assert_eq!(finished_job.finished_at_ms, Some(NOW + 3));
    let events = all_events(store, j.id).await;
    let last = events.last().expect("events");
    assert_eq!(last.task_id, None);
    assert_eq!(last.agent_name, None);
    assert_eq!(
        job_finished(last).map(|f| f.status).as_deref(),
        Some("failed")
    );
    let changed = state_change(&events[events.len() - 2]).expect("state change");
    assert_eq!(
        (changed.state.as_str(), changed.message.as_str()),
        ("lost", "agent restarted")
    );
}

pub async fn agent_events(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "events", tag, 2).await;
    let (j, tasks) = submit(
        store,
        new_job("deploy", NOW, None),
        &[&agents[0], &agents[1]],
    )
    .await;
    let (t1, t2) = (tasks[0].id, tasks[1].id);
    claim(store, &[&agents[0], &agents[1]]).await;

    // Reordered, duplicated, with a gap at 4; and an unknown task.
    let mut first = reported(t1, 1);
    first.message = Some("pulling the image".into());
    let unknown = Uuid::now_v7();
    let batch = vec![
        reported(t1, 3),
        reported(unknown, 1),
        first.clone(),
        reported(t1, 2),
        reported(t1, 2),
        reported(t1, 5),
    ];
    let out = store
        .append_agent_events(&batch, NOW + 100)
        .await
        .expect("append");
    assert_eq!(out.acks, vec![(t1, 3)]);
    assert_eq!(out.touched_jobs, vec![j.id]);
    assert_eq!(out.transitions.len(), 1);
    let running = &out.transitions[0];
    assert_eq!(
        (running.from, running.task.state),
        (TaskState::Assigned, TaskState::Running)
    );
    assert_eq!(running.job_finished, None);
    let t = task(store, t1).await;
    assert_eq!(t.last_seq, 3);
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.started_at_ms, Some(first.at_ms), "the first event's time");
    assert_eq!(t.message, "pulling the image");
    assert_eq!(t.updated_at_ms, NOW + 100);

    // The agent sends everything unacked again, plus more, for both tasks.
    let batch = vec![
        reported(t2, 1),
        reported(t1, 1),
        reported(t1, 2),
        reported(t1, 3),
        reported(t1, 4),
        reported(t1, 5),
        reported(t2, 2),
        reported(t1, 6),
        reported(t1, 6),
    ];
    let out = store
        .append_agent_events(&batch, NOW + 200)
        .await
        .expect("append");
    assert_eq!(out.acks, vec![(t2, 2), (t1, 6)], "in the batch's order");
    assert_eq!(out.touched_jobs, vec![j.id]);
    assert_eq!(out.transitions.len(), 1, "t2 started running");
    assert_eq!(task(store, t1).await.started_at_ms, Some(first.at_ms));

    // Only duplicates: acked again, nothing stored.
    let before = all_events(store, j.id).await;
    let out = store
        .append_agent_events(&[reported(t1, 2), reported(t2, 1)], NOW + 300)
        .await
        .expect("append");
    assert_eq!(out.acks, vec![(t1, 6), (t2, 2)]);
    assert!(out.touched_jobs.is_empty() && out.transitions.is_empty());
    // A gap right away: nothing stored either.
    let out = store
        .append_agent_events(&[reported(t1, 8)], NOW + 300)
        .await
        .expect("append");
    assert_eq!(out.acks, vec![(t1, 6)]);
    assert_eq!(all_events(store, j.id).await, before);
    assert_eq!(
        store
            .append_agent_events(&[], NOW)
            .await
            .expect("empty batch"),
        Default::default()
    );

    let events = all_events(store, j.id).await;
    assert_eq!(agent_seqs(&events, t1), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(agent_seqs(&events, t2), vec![1, 2]);
    for e in events.iter().filter(|e| e.task_seq.is_some()) {
        let seq = e.task_seq.expect("agent event");
        let line = match body(e) {
            event_body::Body::Log(log) => log.line,
            other => panic!("unexpected body {other:?}"),
        };
        assert_eq!(line, format!("line {seq}"), "the body is stored as sent");
        assert_eq!(e.at_ms, NOW + 10 * seq as i64, "the agent's time");
        let name = if e.task_id == Some(t1) {
            &agents[0].name
        } else {
            &agents[1].name
        };
        assert_eq!(e.agent_name.as_ref(), Some(name));
    }
    // Each state change right after the event that caused it.
    let position = |task_id: Uuid, task_seq: u64| {
        events
            .iter()
            .position(|e| e.task_id == Some(task_id) && e.task_seq == Some(task_seq))
            .expect("event stored")
    };
    for (task_id, agent) in [(t1, &agents[0]), (t2, &agents[1])] {
        let after = &events[position(task_id, 1) + 1];
        assert_eq!(after.task_id, Some(task_id));
        assert_eq!(after.task_seq, None);
        assert_eq!(after.agent_name.as_ref(), Some(&agent.name));
        assert_eq!(
            state_change(after).map(|c| c.state).as_deref(),
            Some("running")
        );
    }
    assert_eq!(
        state_change(&events[position(t1, 1) + 1])
            .map(|c| c.message)
            .as_deref(),
        Some("pulling the image")
    );
    assert_eq!(job(store, j.id).await.status, JobStatus::Running);
}

pub async fn coordinator_events_and_paging(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "paging", tag, 1).await;
    let (j, tasks) = submit(store, new_job("deploy", NOW, None), &[&agents[0]]).await;
    let missing = store
        .append_coordinator_event(Uuid::now_v7(), None, b"x", NOW)
        .await;
    assert!(
        matches!(missing, Err(StoreError::JobNotFound(_))),
        "{missing:?}"
    );

    let mut seqs = Vec::new();
    for i in 0..7u8 {
        let task_id = (i % 2 == 0).then_some(tasks[0].id);
        let body = vec![i, 0, 255];
        seqs.push(
            store
                .append_coordinator_event(j.id, task_id, &body, NOW + i64::from(i))
                .await
                .expect("append"),
        );
    }
    assert_eq!(seqs, (1..=7).collect::<Vec<u64>>());
    // Agent events continue the same sequence.
    claim(store, &[&agents[0]]).await;
    store
        .append_agent_events(&[reported(tasks[0].id, 1)], NOW + 50)
        .await
        .expect("append");
    assert_eq!(
        store
            .append_coordinator_event(j.id, None, b"after", NOW + 60)
            .await
            .expect("append"),
        11,
        "7 written, then assigned, the agent's event, running"
    );

    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = store.job_events_after(j.id, after, 3).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        after = page.last().expect("not empty").seq;
        pages.push(page);
    }
    assert_eq!(pages.len(), 4);
    let all: Vec<JobEventRecord> = pages.concat();
    assert_eq!(all, all_events(store, j.id).await);
    assert_eq!(all.len(), 11);
    let first = &all[0];
    assert_eq!(
        (
            first.job_id,
            first.seq,
            first.at_ms,
            first.task_id,
            first.task_seq
        ),
        (j.id, 1, NOW, Some(tasks[0].id), None)
    );
    assert_eq!(first.body, vec![0, 0, 255]);
    assert_eq!(first.agent_name.as_deref(), Some(agents[0].name.as_str()));
    assert_eq!((all[1].task_id, all[1].agent_name.as_deref()), (None, None));
    assert_eq!(all[8].task_seq, Some(1));
    assert_eq!(
        store.job_events_after(j.id, 5, 2).await.expect("page")[0].seq,
        6
    );
    assert_eq!(
        store.job_events_after(j.id, 11, 10).await.expect("page"),
        vec![]
    );
    assert_eq!(
        store.job_events_after(j.id, 0, 0).await.expect("page"),
        vec![]
    );
    assert_eq!(
        store
            .job_events_after(Uuid::now_v7(), 0, 10)
            .await
            .expect("page"),
        vec![]
    );
}

pub async fn jobs_finish(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "finish", tag, 2).await;
    let both = [&agents[0], &agents[1]];

    // Every task succeeds: the job succeeds.
    let (good, tasks) = submit(store, new_job("deploy", NOW, None), &both).await;
    let (t1, t2) = (tasks[0].id, tasks[1].id);
    claim(store, &both).await;
    let out = store
        .append_agent_events(
            &[
                reported(t1, 1),
                finished(t1, 2, Outcome::Succeeded),
                finished(t2, 1, Outcome::Succeeded),
            ],
            NOW + 100,
        )
        .await
        .expect("append");
    let summary: Vec<(Uuid, TaskState, TaskState, Option<JobStatus>)> = out
        .transitions
        .iter()
        .map(|t| (t.task.id, t.from, t.task.state, t.job_finished))
        .collect();
    assert_eq!(
        summary,
        vec![
            (t1, TaskState::Assigned, TaskState::Running, None),
            (t1, TaskState::Running, TaskState::Succeeded, None),
            (
                t2,
                TaskState::Assigned,
                TaskState::Succeeded,
                Some(JobStatus::Succeeded)
            ),
        ]
    );
    let done = task(store, t1).await;
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.finished_at_ms, Some(NOW + 100));
    assert_eq!(done.result_json.as_deref(), Some(r#"{"seq":2}"#));
    assert_eq!(done.message, "finished: Succeeded");
    let j = job(store, good.id).await;
    assert_eq!(j.status, JobStatus::Succeeded);
    assert_eq!(j.finished_at_ms, Some(NOW + 100));
    let events = all_events(store, good.id).await;
    assert_eq!(finishes(&events), vec!["succeeded"]);
    let last = events.last().expect("events");
    let finish = job_finished(last).expect("JobFinished is last");
    assert_eq!(finish.message, "2 succeeded");
    assert_eq!(
        state_change(&events[events.len() - 2]).map(|c| (c.state, c.message)),
        Some(("succeeded".into(), "finished: Succeeded".into()))
    );
    // What an agent says about a finished task is stored, but changes nothing.
    let out = store
        .append_agent_events(&[reported(t1, 3)], NOW + 200)
        .await
        .expect("append");
    assert_eq!(out.acks, vec![(t1, 3)]);
    assert!(out.transitions.is_empty());
    assert_eq!(task(store, t1).await.state, TaskState::Succeeded);
    assert_eq!(job(store, good.id).await.status, JobStatus::Succeeded);

    // One task fails: the job fails, once every task is final.
    let (bad, tasks) = submit(store, new_job("deploy", NOW, None), &both).await;
    let (t1, t2) = (tasks[0].id, tasks[1].id);
    claim(store, &both).await;
    store
        .append_agent_events(&[finished(t1, 1, Outcome::Failed)], NOW + 100)
        .await
        .expect("append");
    assert_eq!(job(store, bad.id).await.status, JobStatus::Running);
    store
        .append_agent_events(
            &[reported(t2, 1), finished(t2, 2, Outcome::Succeeded)],
            NOW + 200,
        )
        .await
        .expect("append");
    let j = job(store, bad.id).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.finished_at_ms, Some(NOW + 200));
    let events = all_events(store, bad.id).await;
    assert_eq!(finishes(&events), vec!["failed"]);
    assert_eq!(
        job_finished(events.last().expect("events"))
            .map(|f| f.message)
            .as_deref(),
        Some("1 succeeded, 1 failed")
    );
}

/// Four agents stream events for their tasks of one job at once, each in
/// batches that repeat part of the previous one, and finish: every task's
/// seqs are stored once, the job's have no gap, and the job finishes once.
pub async fn concurrent_agent_events(store: &Store) {
    let tag = &unique_tag();
    const EVENTS: u64 = 60;
    let agents = agents(store, "stream", tag, 4).await;
    let all: Vec<&AgentRecord> = agents.iter().collect();
    let (j, tasks) = submit(store, new_job("deploy", NOW, None), &all).await;
    claim(store, &all).await;
    let stream = |task_id: Uuid| async move {
        let mut acked = 0;
        while acked < EVENTS {
            let last = (acked + 7).min(EVENTS);
            // From a little before the ack, as after a reconnect.
            let batch: Vec<IncomingEvent> = (acked.saturating_sub(2) + 1..=last)
                .map(|seq| {
                    if seq == EVENTS {
                        finished(task_id, seq, Outcome::Succeeded)
                    } else {
                        reported(task_id, seq)
                    }
                })
                .collect();
            let out = store
                .append_agent_events(&batch, NOW + 100)
                .await
                .expect("append");
            assert_eq!(out.acks, vec![(task_id, last)]);
            acked = last;
        }
    };
    join_all(tasks.iter().map(|t| stream(t.id))).await;

    let events = all_events(store, j.id).await;
    for t in &tasks {
        assert_eq!(agent_seqs(&events, t.id), (1..=EVENTS).collect::<Vec<_>>());
        assert_eq!(task(store, t.id).await.state, TaskState::Succeeded);
    }
    assert_eq!(finishes(&events), vec!["succeeded"]);
    assert_eq!(job(store, j.id).await.status, JobStatus::Succeeded);
}

pub async fn cancellation(store: &Store) {
    let tag = &unique_tag();
    let missing = store.request_cancel(Uuid::now_v7(), NOW).await;
    assert!(
        matches!(missing, Err(StoreError::JobNotFound(_))),
        "{missing:?}"
    );

    let agents = agents(store, "cancel", tag, 5).await;
    let (pending, assigned, running, lost, done) =
        (&agents[0], &agents[1], &agents[2], &agents[3], &agents[4]);
    let (j, tasks) = submit(
        store,
        new_job("deploy", NOW, None),
        &[pending, assigned, running, lost, done],
    )
    .await;
    claim(store, &[assigned, running, lost, done]).await;
    store
        .append_agent_events(
            &[
                reported(tasks[2].id, 1),
                finished(tasks[4].id, 1, Outcome::Succeeded),
            ],
            NOW + 10,
        )
        .await
        .expect("append");
    store
        .transition_task(tasks[3].id, TaskEvent::AgentGone, "gone", NOW + 20)
        .await
        .expect("transition")
        .expect("valid");

    let (after, transitions) = store.request_cancel(j.id, NOW + 30).await.expect("cancel");
    assert!(after.cancel_requested);
    assert_eq!(after.status, JobStatus::Running, "a task still runs");
    assert_eq!(after, job(store, j.id).await);
    let mut got: Vec<(Uuid, TaskState, TaskState, Vec<TaskEffect>)> = transitions
        .iter()
        .map(|t| (t.task.id, t.from, t.task.state, t.effects.clone()))
        .collect();
    got.sort_by_key(|t| t.0);
    let mut expected = vec![
        (
            tasks[0].id,
            TaskState::Pending,
            TaskState::Cancelled,
            vec![TaskEffect::RecomputeJob],
        ),
        (
            tasks[1].id,
            TaskState::Assigned,
            TaskState::Cancelled,
            vec![TaskEffect::SendCancel, TaskEffect::RecomputeJob],
        ),
        (
            tasks[2].id,
            TaskState::Running,
            TaskState::Running,
            vec![TaskEffect::SendCancel],
        ),
        (
            tasks[3].id,
            TaskState::Lost,
            TaskState::Cancelled,
            vec![TaskEffect::RecomputeJob],
        ),
    ];
    expected.sort_by_key(|t| t.0);
    assert_eq!(got, expected);
    assert!(transitions.iter().all(|t| t.job_finished.is_none()));
    assert_eq!(
        task(store, tasks[0].id).await.message,
        "cancelled by an operator"
    );
    assert_eq!(task(store, tasks[4].id).await.state, TaskState::Succeeded);
    // Asking again changes nothing more, but the running task is asked again.
    let (_, again) = store.request_cancel(j.id, NOW + 35).await.expect("cancel");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].effects, vec![TaskEffect::SendCancel]);

    // The running task stops: the job is cancelled.
    let out = store
        .append_agent_events(&[finished(tasks[2].id, 2, Outcome::Cancelled)], NOW + 40)
        .await
        .expect("append");
    assert_eq!(out.transitions.len(), 1);
    assert_eq!(out.transitions[0].job_finished, Some(JobStatus::Cancelled));
    let j_after = job(store, j.id).await;
    assert_eq!(j_after.status, JobStatus::Cancelled);
    assert_eq!(j_after.finished_at_ms, Some(NOW + 40));
    let events = all_events(store, j.id).await;
    assert_eq!(finishes(&events), vec!["cancelled"]);

    // A job nobody took yet is cancelled at once.
    let (idle, idle_tasks) = submit(store, new_job("deploy", NOW, None), &[pending]).await;
    let (after, transitions) = store
        .request_cancel(idle.id, NOW + 50)
        .await
        .expect("cancel");
    assert_eq!(after.status, JobStatus::Cancelled);
    assert_eq!(after.finished_at_ms, Some(NOW + 50));
    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].task.id, idle_tasks[0].id);
    assert_eq!(transitions[0].job_finished, Some(JobStatus::Cancelled));
    let events = all_events(store, idle.id).await;
    assert_eq!(
        state_changes(&events),
        vec![(idle_tasks[0].id, "cancelled".to_string())]
    );
    assert_eq!(finishes(&events), vec!["cancelled"]);
    // Not claimable any more.
    assert!(claim(store, &[pending]).await.is_empty());

    // A finished job stays as it is.
    let (after, transitions) = store
        .request_cancel(idle.id, NOW + 60)
        .await
        .expect("cancel");
    assert_eq!(after, job(store, idle.id).await);
    assert!(transitions.is_empty());
}

pub async fn notifications(store: &Store) {
    let mut rx = store.subscribe();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let sent = vec![
        Notification::JobSubmitted(a),
        Notification::JobEvents(a),
        Notification::CancelTask { task: a, agent: b },
        Notification::AgentRevoked(b),
    ];
    for n in &sent {
        store.notify(n.clone()).await.expect("notify");
    }
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification within 10s")
            .expect("receive");
        received.push(n);
    }
    assert_eq!(received, sent);
}

pub async fn leadership(store: &Store) {
    // Alone on its store, a coordinator leads, and keeps leading.
    assert!(store.try_lead().await.expect("try lead"));
    assert!(store.try_lead().await.expect("try lead"));
}

pub async fn expiry(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "expire", tag, 2).await;
    let mut new = new_job("deploy", NOW, None);
    new.deadline_ms = NOW + 10;
    let (j, tasks) = submit(store, new, &[&agents[0], &agents[1]]).await;
    claim(store, &[&agents[0]]).await;

    let early = store.expire_overdue_tasks(NOW + 9).await.expect("expire");
    assert!(early.iter().all(|t| t.task.job_id != j.id));
    // At the deadline itself, the pending task expires; the assigned one
    // may still finish.
    let expired: Vec<_> = store
        .expire_overdue_tasks(NOW + 10)
        .await
        .expect("expire")
        .into_iter()
        .filter(|t| t.task.job_id == j.id)
        .collect();
    assert_eq!(expired.len(), 1);
    let t = &expired[0];
    assert_eq!(t.task.id, tasks[1].id);
    assert_eq!(
        (t.from, t.task.state),
        (TaskState::Pending, TaskState::Expired)
    );
    assert_eq!(t.task.finished_at_ms, Some(NOW + 10));
    assert!(
        t.task.message.contains(&agents[1].name),
        "{}",
        t.task.message
    );
    assert_eq!(t.job_finished, None);
    assert_eq!(task(store, tasks[1].id).await, t.task);
    assert_eq!(task(store, tasks[0].id).await.state, TaskState::Assigned);
    assert!(
        store
            .expire_overdue_tasks(NOW + 20)
            .await
            .expect("expire")
            .iter()
            .all(|t| t.task.job_id != j.id),
        "expired once"
    );

    store
        .append_agent_events(&[finished(tasks[0].id, 1, Outcome::Succeeded)], NOW + 30)
        .await
        .expect("append");
    let j = job(store, j.id).await;
    assert_eq!(j.status, JobStatus::Failed, "an expired task fails the job");
    let events = all_events(store, j.id).await;
    assert_eq!(finishes(&events), vec!["failed"]);
    assert_eq!(
        job_finished(events.last().expect("events"))
            .map(|f| f.message)
            .as_deref(),
        Some("1 succeeded, 1 expired")
    );
}

pub async fn absent_agents(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "absent", tag, 4).await;
    let (here, away, never, idle) = (&agents[0], &agents[1], &agents[2], &agents[3]);
    store
        .agent_connected(&hello(here.id, "coord-a", "0.1.0", "h", NOW + HOUR))
        .await
        .expect("connected");
    store
        .agent_connected(&hello(away.id, "coord-a", "0.1.0", "h", NOW - HOUR))
        .await
        .expect("connected");
    let (j, tasks) = submit(store, new_job("deploy", NOW, None), &[here, away, never]).await;
    let (_, idle_tasks) = submit(store, new_job("deploy", NOW, None), &[idle]).await;
    claim(store, &[here, away, never]).await;
    store
        .append_agent_events(&[reported(tasks[1].id, 1)], NOW)
        .await
        .expect("append");

    let lost: Vec<_> = store
        .mark_tasks_of_absent_agents_lost(NOW, NOW + 2 * HOUR)
        .await
        .expect("mark lost")
        .into_iter()
        .filter(|t| t.task.job_id == j.id || t.task.agent_id == idle.id)
        .collect();
    let mut got: Vec<(Uuid, TaskState, TaskState)> = lost
        .iter()
        .map(|t| (t.task.id, t.from, t.task.state))
        .collect();
    got.sort_by_key(|t| t.0);
    let mut expected = vec![
        (tasks[1].id, TaskState::Running, TaskState::Lost),
        (tasks[2].id, TaskState::Assigned, TaskState::Lost),
    ];
    expected.sort_by_key(|t| t.0);
    assert_eq!(got, expected, "a task waiting for its agent is not lost");
    let away_task = task(store, tasks[1].id).await;
    assert!(
        away_task
            .message
            .starts_with(&format!("agent {} has been away since 20", away.name)),
        "{}",
        away_task.message
    );
    assert_eq!(away_task.finished_at_ms, Some(NOW + 2 * HOUR));
    assert!(task(store, tasks[2].id).await.message.contains(&never.name));
    assert_eq!(task(store, tasks[0].id).await.state, TaskState::Assigned);
    assert_eq!(
        task(store, idle_tasks[0].id).await.state,
        TaskState::Pending
    );
    assert_eq!(job(store, j.id).await.status, JobStatus::Running);
    assert!(lost.iter().all(|t| t.job_finished.is_none()));
}

/// An agent away long enough to have its task marked lost comes back and
/// reports: its report wins, and the job finishes again by it.
pub async fn lost_then_reported(store: &Store) {
    let tag = &unique_tag();
    let agents = agents(store, "comeback", tag, 1).await;
    let (j, tasks) = submit(store, new_job("deploy", NOW, None), &[&agents[0]]).await;
    let id = tasks[0].id;
    claim(store, &[&agents[0]]).await;
    store
        .append_agent_events(&[reported(id, 1)], NOW)
        .await
        .expect("append");
    let lost: Vec<_> = store
        .mark_tasks_of_absent_agents_lost(NOW, NOW + HOUR)
        .await
        .expect("mark lost")
        .into_iter()
        .filter(|t| t.task.id == id)
        .collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].job_finished, Some(JobStatus::Failed));
    assert!(
        lost[0]
            .task
            .message
            .contains("has been away since it enrolled"),
        "never seen: {}",
        lost[0].task.message
    );
    assert_eq!(job(store, j.id).await.status, JobStatus::Failed);

    let out = store
        .append_agent_events(&[reported(id, 2)], NOW + 2 * HOUR)
        .await
        .expect("append");
    assert_eq!(out.transitions.len(), 1);
    assert_eq!(
        (out.transitions[0].from, out.transitions[0].task.state),
        (TaskState::Lost, TaskState::Running)
    );
    let back = job(store, j.id).await;
    assert_eq!(back.status, JobStatus::Running);
    assert_eq!(back.finished_at_ms, None);
    assert_eq!(task(store, id).await.finished_at_ms, None);

    let out = store
        .append_agent_events(&[finished(id, 3, Outcome::Succeeded)], NOW + 3 * HOUR)
        .await
        .expect("append");
    assert_eq!(out.transitions[0].job_finished, Some(JobStatus::Succeeded));
    let done = job(store, j.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.finished_at_ms, Some(NOW + 3 * HOUR));
    let events = all_events(store, j.id).await;
    assert_eq!(finishes(&events), vec!["failed", "succeeded"]);
    assert_eq!(
        state_changes(&events)
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        vec!["assigned", "running", "lost", "running", "succeeded"]
    );

    // Reported straight from lost to an outcome works as well.
    let (j2, tasks2) = submit(store, new_job("deploy", NOW, None), &[&agents[0]]).await;
    claim(store, &[&agents[0]]).await;
    store
        .transition_task(tasks2[0].id, TaskEvent::AgentGone, "gone", NOW)
        .await
        .expect("transition")
        .expect("valid");
    assert_eq!(job(store, j2.id).await.status, JobStatus::Failed);
    store
        .append_agent_events(&[finished(tasks2[0].id, 1, Outcome::Succeeded)], NOW + HOUR)
        .await
        .expect("append");
    assert_eq!(job(store, j2.id).await.status, JobStatus::Succeeded);
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

// --- backups -------------------------------------------------------------

fn manifest_json(app: &str, database: &str, task_id: Uuid, reason: &str) -> String {
    serde_json::json!({
        "id": task_id.to_string(), "app": app, "env": "production", "database": database,
        "engine": "postgres", "server_version": "15.18", "dump_tool": "pg_dump 15.18",
        "format": "pg_dump-custom", "compression": "zstd",
        "path": format!("/var/lib/ferry/backups/{app}/production/{database}/{task_id}.dump.zst"),
        "size_bytes": 1234, "dump_bytes": 9999, "sha256": "ab".repeat(32),
        "tables": [], "row_counts": {"public.users": 3},
        "started_at": "2023-11-14T22:13:20Z", "ended_at": "2023-11-14T22:13:21Z",
        "job_id": "x", "reason": reason, "restore_hint": "zstd -dc …"
    })
    .to_string()
}

/// The catalogue: a backup task's success catalogues its manifest in the
/// same transaction (with the expiry its database's settings give); a
/// failed task catalogues nothing; listings filter and order; a
/// verification is recorded; database settings are replaced per (app, env).
pub async fn backups(store: &Store) {
    let tag = &unique_tag();
    let app = format!("shop-{tag}");
    let agents = agents(store, "backup", tag, 1).await;
    let one = [&agents[0]];
    store
        .put_database_settings(
            &app,
            "production",
            &[
                ("main".into(), r#"{"backup":{"keep_days":30}}"#.into()),
                ("old".into(), "{}".into()),
            ],
            NOW,
        )
        .await
        .expect("settings");
    store
        .put_database_settings(
            &app,
            "production",
            &[("main".into(), r#"{"backup":{"keep_days":30}}"#.into())],
            NOW + 1,
        )
        .await
        .expect("settings replaced");
    let settings = store
        .database_settings(&app, "production")
        .await
        .expect("read settings");
    assert_eq!(
        settings.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["main"],
        "the last app file's databases replace the earlier ones"
    );
    assert_eq!(settings[0].updated_at_ms, NOW + 1);
    assert!(
        store
            .database_settings(&app, "staging")
            .await
            .expect("other env")
            .is_empty()
    );

    // Succeeded: catalogued from the manifest, in the transaction.
    let (good, tasks) = submit(store, new_job("backup", NOW, None), &one).await;
    claim(store, &one).await;
    let t = tasks[0].id;
    let manifest = manifest_json(&app, "main", t, "manual");
    let done = IncomingEvent {
        result_json: Some(manifest.clone()),
        ..finished(t, 1, Outcome::Succeeded)
    };
    store
        .append_agent_events(&[done], NOW + 100)
        .await
        .expect("append");
    let b = store
        .get_backup(t)
        .await
        .expect("get backup")
        .expect("catalogued");
    assert_eq!(
        (
            b.job_id,
            b.host.as_str(),
            b.app.as_str(),
            b.env.as_str(),
            b.database.as_str()
        ),
        (
            good.id,
            agents[0].name.as_str(),
            app.as_str(),
            "production",
            "main"
        )
    );
    assert_eq!((b.size_bytes, b.sha256.len()), (1234, 64));
    assert_eq!(b.reason, ferry_common::status::BackupReason::Manual);
    assert_eq!(b.created_at_ms, NOW + 100);
    assert_eq!(b.expires_at_ms, Some(NOW + 100 + 30 * DAY));
    assert_eq!((b.verified_at_ms, b.verify_result), (None, None));
    assert_eq!(
        b.manifest().expect("manifest").row_counts["public.users"],
        3
    );
    assert_eq!(b.manifest_json, manifest);

    // Failed (even with a result), or another kind: nothing catalogued.
    let (_, tasks) = submit(store, new_job("backup", NOW, None), &one).await;
    claim(store, &one).await;
    let bad = tasks[0].id;
    let failed = IncomingEvent {
        result_json: Some(manifest_json(&app, "main", bad, "manual")),
        ..finished(bad, 1, Outcome::Failed)
    };
    store
        .append_agent_events(&[failed], NOW + 200)
        .await
        .expect("append failure");
    assert!(store.get_backup(bad).await.expect("get").is_none());
    let (_, tasks) = submit(store, new_job("deploy", NOW, None), &one).await;
    claim(store, &one).await;
    let other = tasks[0].id;
    store
        .append_agent_events(&[finished(other, 1, Outcome::Succeeded)], NOW + 300)
        .await
        .expect("append deploy");
    assert!(store.get_backup(other).await.expect("get").is_none());

    // Added directly; listings filter and go newest first.
    let extra = BackupRecord {
        id: Uuid::now_v7(),
        database: "audit".into(),
        reason: ferry_common::status::BackupReason::PreDeploy,
        created_at_ms: NOW + 500,
        expires_at_ms: None,
        ..b.clone()
    };
    store.add_backup(&extra).await.expect("add");
    store
        .add_backup(&extra)
        .await
        .expect("adding twice keeps the first");
    let all = |filter: BackupFilter| async move {
        store
            .list_backups(&filter, 100)
            .await
            .expect("list")
            .into_iter()
            .map(|b| b.id)
            .collect::<Vec<_>>()
    };
    let by_app = BackupFilter {
        app: Some(app.clone()),
        ..Default::default()
    };
    assert_eq!(all(by_app.clone()).await, [extra.id, t]);
    assert_eq!(
        all(BackupFilter {
            database: Some("main".into()),
            ..by_app.clone()
        })
        .await,
        [t]
    );
    assert!(
        all(BackupFilter {
            env: Some("staging".into()),
            ..by_app
        })
        .await
        .is_empty()
    );

    // Verification.
    assert!(
        store
            .record_verification(
                t,
                NOW + 900,
                ferry_common::status::VerifyResult::Failed,
                "table public.users: 2 rows, manifest says 3"
            )
            .await
            .expect("record")
    );
    let b = store.get_backup(t).await.expect("get").expect("exists");
    assert_eq!(b.verified_at_ms, Some(NOW + 900));
    assert_eq!(
        b.verify_result,
        Some(ferry_common::status::VerifyResult::Failed)
    );
    assert_eq!(
        b.verify_message,
        "table public.users: 2 rows, manifest says 3"
    );
    assert!(
        !store
            .record_verification(
                Uuid::now_v7(),
                NOW,
                ferry_common::status::VerifyResult::Passed,
                ""
            )
            .await
            .expect("record unknown")
    );

    // A prune task's success removes what it deleted, nothing else.
    let (_, tasks) = submit(store, new_job("prune", NOW, None), &one).await;
    claim(store, &one).await;
    let prune = tasks[0].id;
    let pruned = IncomingEvent {
        result_json: Some(format!(
            r#"{{"deleted":["{t}"],"missing":["{}"]}}"#,
            extra.id
        )),
        ..finished(prune, 1, Outcome::Succeeded)
    };
    store
        .append_agent_events(&[pruned], NOW + 1000)
        .await
        .expect("append prune");
    assert!(store.get_backup(t).await.expect("get").is_none());
    assert!(
        store.get_backup(extra.id).await.expect("get").is_some(),
        "a missing file's backup stays listed"
    );
}

// --- schedules -----------------------------------------------------------

fn new_schedule(database: &str, kind: ScheduleKind, cron: &str, next: i64) -> NewSchedule {
    NewSchedule {
        database: database.into(),
        kind,
        cron: cron.into(),
        timezone: "Europe/Paris".into(),
        next_run_at_ms: next,
    }
}

/// Schedules: an app file's replace the (app, env)'s earlier app-file ones
/// with its database settings in one transaction (unchanged ones keep id
/// and history), manual ones stay; a run is claimed once by
/// compare-and-set however many claim it at once; its outcome is read from
/// its job; an earlier run's record never overwrites a later one's.
pub async fn schedules(store: &Store) {
    let tag = &unique_tag();
    let app = format!("shop-{tag}");
    let actor = "spiffe://test/operator/alice";
    let settings = [(
        "main".to_string(),
        r#"{"backup":{"keep_last":2}}"#.to_string(),
    )];
    let file = [
        new_schedule("main", ScheduleKind::Backup, "0 2 * * *", NOW + HOUR),
        new_schedule("main", ScheduleKind::Prune, "0 2 * * *", NOW + HOUR),
        new_schedule("main", ScheduleKind::Verify, "0 4 * * 0", NOW + 2 * HOUR),
    ];
    let first = store
        .apply_app_file(&app, "production", &settings, &file, actor, NOW)
        .await
        .expect("apply");
    assert_eq!(first.added.len(), 3);
    assert!(first.changed.is_empty() && first.removed.is_empty());
    assert_eq!(
        first
            .schedules
            .iter()
            .map(|s| (s.database.as_str(), s.kind, s.source))
            .collect::<Vec<_>>(),
        [
            ("main", ScheduleKind::Backup, ScheduleSource::AppFile),
            ("main", ScheduleKind::Prune, ScheduleSource::AppFile),
            ("main", ScheduleKind::Verify, ScheduleSource::AppFile),
        ]
    );
    let backup = first.schedules[0].clone();
    assert_eq!(
        (
            backup.cron.as_str(),
            backup.timezone.as_str(),
            backup.next_run_at_ms,
            backup.created_by.as_str(),
            backup.last_run_at_ms,
            backup.last_outcome(NOW)
        ),
        ("0 2 * * *", "Europe/Paris", NOW + HOUR, actor, None, None)
    );
    assert_eq!(
        store
            .database_settings(&app, "production")
            .await
            .expect("settings")
            .len(),
        1,
        "the file's databases are kept with its schedules"
    );
    let manual = store
        .add_schedule(
            &app,
            "production",
            &new_schedule("main", ScheduleKind::Backup, "*/5 * * * *", NOW + 60_000),
            actor,
            NOW,
        )
        .await
        .expect("add");
    assert_eq!(manual.source, ScheduleSource::Manual);

    // The same file again: nothing changes, ids stay.
    let again = store
        .apply_app_file(&app, "production", &settings, &file, actor, NOW + 1)
        .await
        .expect("apply again");
    assert!(again.added.is_empty() && again.changed.is_empty() && again.removed.is_empty());
    assert_eq!(
        again.schedules.iter().map(|s| s.id).collect::<Vec<_>>(),
        first.schedules.iter().map(|s| s.id).collect::<Vec<_>>()
    );

    // Claims: of many at once, exactly one wins; the history is set.
    let run = Claim {
        expected_next_run_at_ms: NOW + HOUR,
        scheduled_for_ms: NOW + HOUR,
        late: true,
        next_run_at_ms: NOW + 25 * HOUR,
    };
    let due = store.due_schedules(NOW + HOUR).await.expect("due");
    assert!(due.iter().any(|s| s.id == backup.id));
    assert!(
        !due.iter()
            .any(|s| s.kind == ScheduleKind::Verify && s.app == app)
    );
    let wins = join_all((0..8).map(|_| store.claim_schedule_run(backup.id, run, NOW + HOUR + 5)))
        .await
        .into_iter()
        .filter(|r| *r.as_ref().expect("claim"))
        .count();
    assert_eq!(wins, 1, "a run is claimed exactly once");
    let claimed = store
        .get_schedule(backup.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (
            claimed.next_run_at_ms,
            claimed.last_run_at_ms,
            claimed.last_scheduled_for_ms,
            claimed.last_late,
            claimed.last_outcome(NOW + HOUR + 5)
        ),
        (
            NOW + 25 * HOUR,
            Some(NOW + HOUR + 5),
            Some(NOW + HOUR),
            true,
            // Claimed, its job not recorded yet: being submitted.
            Some(RunOutcome::Running)
        )
    );
    // A coordinator that stopped here leaves a failed run, not nothing.
    assert_eq!(
        claimed.last_outcome(NOW + 2 * HOUR),
        Some(RunOutcome::Failed)
    );
    assert!(
        !store
            .due_schedules(NOW + HOUR + 5)
            .await
            .expect("due")
            .iter()
            .any(|s| s.id == backup.id)
    );

    // Its job: the outcome is the job's, read now.
    let agents = agents(store, "sched", tag, 1).await;
    let (job, tasks) = submit(store, new_job("backup", NOW, None), &[&agents[0]]).await;
    store
        .record_schedule_run(backup.id, NOW + HOUR, Some(job.id), "")
        .await
        .expect("record");
    let running = store
        .get_schedule(backup.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(running.last_job_id, Some(job.id));
    assert_eq!(running.last_outcome(NOW + HOUR), Some(RunOutcome::Running));
    claim(store, &[&agents[0]]).await;
    store
        .append_agent_events(
            &[finished(tasks[0].id, 1, Outcome::Failed)],
            NOW + HOUR + 50,
        )
        .await
        .expect("fail the task");
    let failed = store
        .get_schedule(backup.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(failed.last_outcome(NOW + HOUR), Some(RunOutcome::Failed));
    // A stale record (an earlier run's) changes nothing.
    store
        .record_schedule_run(backup.id, NOW, None, "stale")
        .await
        .expect("stale record");
    assert_eq!(
        store
            .get_schedule(backup.id)
            .await
            .expect("get")
            .expect("exists")
            .last_error,
        ""
    );
    // A run that could not submit: failed, with why.
    let prune = &first.schedules[1];
    assert!(
        store
            .claim_schedule_run(prune.id, run, NOW + HOUR)
            .await
            .expect("claim")
    );
    store
        .record_schedule_run(prune.id, NOW + HOUR, None, "no enrolled agent matches")
        .await
        .expect("record");
    let p = store
        .get_schedule(prune.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (
            p.last_outcome(NOW + HOUR),
            p.last_error.as_str(),
            p.last_job_id
        ),
        (Some(RunOutcome::Failed), "no enrolled agent matches", None)
    );

    // A new file: backup's cron changed (same id, history kept), verify
    // gone; the manual one stays.
    let file2 = [
        new_schedule("main", ScheduleKind::Backup, "0 3 * * *", NOW + 3 * HOUR),
        new_schedule("main", ScheduleKind::Prune, "0 2 * * *", NOW + HOUR),
    ];
    let second = store
        .apply_app_file(&app, "production", &settings, &file2, actor, NOW + 2)
        .await
        .expect("apply changed");
    assert_eq!(second.changed, [backup.id]);
    assert!(second.added.is_empty());
    assert_eq!(
        second.removed.iter().map(|s| s.kind).collect::<Vec<_>>(),
        [ScheduleKind::Verify]
    );
    let b = store
        .get_schedule(backup.id)
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(
        (b.cron.as_str(), b.next_run_at_ms, b.last_job_id),
        ("0 3 * * *", NOW + 3 * HOUR, Some(job.id))
    );
    let listed = store
        .list_schedules(&ScheduleFilter {
            app: Some(app.clone()),
            env: None,
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().any(|s| s.id == manual.id));
    assert!(
        store
            .list_schedules(&ScheduleFilter {
                app: Some(app.clone()),
                env: Some("staging".into()),
            })
            .await
            .expect("list")
            .is_empty()
    );

    // Ids by their last 8 characters; removal.
    let text = manual.id.to_string();
    assert_eq!(
        store
            .resolve_id(IdOf::Schedule, &text[text.len() - 8..])
            .await
            .expect("resolve"),
        manual.id
    );
    assert_eq!(
        store.remove_schedule(manual.id).await.expect("remove").id,
        manual.id
    );
    assert!(matches!(
        store.remove_schedule(manual.id).await,
        Err(StoreError::ScheduleNotFound(_))
    ));

    // A file without schedules removes the rest (its databases go too).
    let empty = store
        .apply_app_file(&app, "production", &[], &[], actor, NOW + 3)
        .await
        .expect("apply empty");
    assert_eq!(empty.removed.len(), 2);
    assert!(
        store
            .list_schedules(&ScheduleFilter {
                app: Some(app.clone()),
                env: None,
            })
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .database_settings(&app, "production")
            .await
            .expect("settings")
            .is_empty()
    );
}

/// `/metrics`' newest backup per database.
pub async fn newest_backups(store: &Store) {
    let tag = &unique_tag();
    let app = format!("shop-{tag}");
    let record = |database: &str, at: i64| BackupRecord {
        tenant: None,
        id: Uuid::now_v7(),
        job_id: Uuid::now_v7(),
        host: "db-1".into(),
        app: app.clone(),
        env: "production".into(),
        database: database.into(),
        engine: "postgres".into(),
        path: format!("/b/{at}"),
        size_bytes: 1,
        sha256: "ab".repeat(32),
        reason: ferry_common::status::BackupReason::Scheduled,
        created_at_ms: at,
        expires_at_ms: None,
        verified_at_ms: None,
        verify_result: None,
        verify_message: String::new(),
        manifest_json: "{}".into(),
    };
    for (db, at) in [("main", NOW), ("main", NOW + 10), ("audit", NOW + 5)] {
        store.add_backup(&record(db, at)).await.expect("add");
    }
    // A tenant's pre-migration backup is not one of the main database.
    let tenant = BackupRecord {
        tenant: Some("acme".into()),
        ..record("main", NOW + 20)
    };
    store.add_backup(&tenant).await.expect("add");
    let newest: Vec<_> = store
        .newest_backups()
        .await
        .expect("newest")
        .into_iter()
        .filter(|(a, ..)| *a == app)
        .map(|(_, env, db, at)| (env, db, at))
        .collect();
    assert_eq!(
        newest,
        [
            ("production".to_string(), "audit".to_string(), NOW + 5),
            ("production".to_string(), "main".to_string(), NOW + 10),
        ]
    );
}

/// Migration runs: one claim per (app, env, database); a second is refused
/// naming the first; the claim ends with its task (also a failed one), and
/// a claim whose job was cancelled or whose submission never happened
/// blocks nothing. A migrate task's pre-migration backups (also of a
/// failed task) are catalogued, a tenant's with its tenant.
pub async fn migration_runs(store: &Store) {
    let tag = &unique_tag();
    let app = format!("erp-{tag}");
    let agents = agents(store, "migrate", tag, 1).await;
    let one = [&agents[0]];
    let alice = "spiffe://ferry.test/operator/alice";
    store
        .claim_migration(&app, "production", "main", alice, NOW)
        .await
        .expect("first claim");
    // Another database, another env: their own claims.
    store
        .claim_migration(&app, "production", "audit", alice, NOW)
        .await
        .expect("another database");
    store
        .claim_migration(&app, "staging", "main", alice, NOW)
        .await
        .expect("another env");
    let (job, tasks) = submit(store, new_job("migrate", NOW, None), &one).await;
    store
        .set_migration_job(&app, "production", "main", job.id)
        .await
        .expect("set job");
    let err = store
        .claim_migration(&app, "production", "main", "bob", NOW + 1)
        .await
        .expect_err("a second run is refused");
    match &err {
        StoreError::MigrationRunning { running } => {
            assert_eq!(running.job_id, Some(job.id));
            assert_eq!(running.claimed_by, alice);
        }
        other => panic!("expected MigrationRunning, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&format!("job {}", job.id)),
        "{err}"
    );
    // A claim never given a job goes after a minute; within it, it holds.
    assert!(
        store
            .claim_migration(&app, "production", "audit", "bob", NOW + 1_000)
            .await
            .is_err()
    );
    store
        .claim_migration(&app, "production", "audit", "bob", NOW + 61_000)
        .await
        .expect("an unsubmitted claim is stale after a minute");
    store
        .release_migration(&app, "production", "audit")
        .await
        .expect("release");
    store
        .claim_migration(&app, "production", "audit", "bob", NOW + 61_001)
        .await
        .expect("released");

    // The task fails (one tenant broke) with its report: the claim is
    // released and both backups are catalogued.
    claim(store, &one).await;
    let t = tasks[0].id;
    let main_backup = Uuid::now_v7();
    let tenant_backup = Uuid::now_v7();
    let mut tenant_manifest: serde_json::Value =
        serde_json::from_str(&manifest_json(&app, "main", tenant_backup, "pre-migration"))
            .expect("manifest");
    tenant_manifest["tenant"] = "erp_t1".into();
    let main_manifest: serde_json::Value =
        serde_json::from_str(&manifest_json(&app, "main", main_backup, "pre-migration"))
            .expect("manifest");
    let report = serde_json::json!({
        "databases": [
            {"database": "erp_main", "role": "main", "status": "applied", "backup_id": main_backup.to_string()},
            {"database": "erp_t1", "role": "tenant", "status": "failed", "error": "boom", "backup_id": tenant_backup.to_string()},
        ],
        "backups": [main_manifest, tenant_manifest],
    });
    let done = IncomingEvent {
        result_json: Some(report.to_string()),
        ..finished(t, 1, Outcome::Failed)
    };
    store
        .append_agent_events(&[done], NOW + 100)
        .await
        .expect("append");
    let b = store
        .get_backup(tenant_backup)
        .await
        .expect("get")
        .expect("the tenant's backup is catalogued");
    assert_eq!(b.tenant.as_deref(), Some("erp_t1"));
    assert_eq!(b.job_id, job.id);
    assert_eq!(b.reason, ferry_common::status::BackupReason::PreMigration);
    assert_eq!(b.expires_at_ms, None);
    let m = store
        .get_backup(main_backup)
        .await
        .expect("get")
        .expect("the main database's backup is catalogued");
    assert_eq!(m.tenant, None);
    store
        .claim_migration(&app, "production", "main", "bob", NOW + 200)
        .await
        .expect("released when the task ended");
    assert!(
        store
            .migration_claims()
            .await
            .expect("claims")
            .iter()
            .any(|c| c.app == app && c.database == "main" && c.claimed_by == "bob")
    );

    // A job cancelled before its task ran: its claim blocks nothing.
    let (job, _) = submit(store, new_job("migrate", NOW, None), &one).await;
    store
        .set_migration_job(&app, "staging", "main", job.id)
        .await
        .expect("set job");
    store
        .request_cancel(job.id, NOW + 300)
        .await
        .expect("cancel");
    store
        .claim_migration(&app, "staging", "main", "bob", NOW + 400)
        .await
        .expect("a cancelled job's claim is over");

    // A run cancelled by its agent mid-way: the backups it took before
    // are catalogued all the same, and its claim ends.
    let (job, tasks) = submit(store, new_job("migrate", NOW, None), &one).await;
    store
        .set_migration_job(&app, "staging", "main", job.id)
        .await
        .expect("set job");
    claim(store, &one).await;
    let taken = Uuid::now_v7();
    let manifest: serde_json::Value =
        serde_json::from_str(&manifest_json(&app, "main", taken, "pre-migration"))
            .expect("manifest");
    let report = serde_json::json!({
        "databases": [{"database": "erp_main", "role": "main", "status": "cancelled", "backup_id": taken.to_string()}],
        "backups": [manifest],
    });
    let cancelled = IncomingEvent {
        result_json: Some(report.to_string()),
        ..finished(tasks[0].id, 1, Outcome::Cancelled)
    };
    store
        .append_agent_events(&[cancelled], NOW + 500)
        .await
        .expect("append");
    assert!(store.get_backup(taken).await.expect("get").is_some());
    assert!(
        !store
            .migration_claims()
            .await
            .expect("claims")
            .iter()
            .any(|c| c.job_id == Some(job.id)),
        "the cancelled run's claim is released"
    );
}
