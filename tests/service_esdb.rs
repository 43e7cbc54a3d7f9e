//! The service end to end on EventStoreDB: `prjmanager serve --store
//! esdb://127.0.0.1:PORT?tls=false` as a child process against the
//! in-process double (`tests/common/esdb_double.rs`), driven over gRPC with
//! the scenario of tests/service.rs, and checked against the direct fold of
//! the project stream and against the same scenario on the embedded store.

use prjmanager::proto;
use prjmanager::store::embedded::EmbeddedStore;
use prjmanager::store::esdb::EsdbStore;

#[path = "common/esdb_double.rs"]
mod esdb_double;
#[path = "common/service_harness.rs"]
mod service_harness;

use esdb_double::EsdbDouble;
use service_harness::{
    assert_derived_match, assert_serves_folded_state, pcl_clids, scenario_first_half,
    scenario_second_half, wait_for, Folded, Service,
};

/// Runs the whole scenario on one service and waits for its end state.
async fn run_scenario(service: &Service, project: &str) -> proto::ProjectLog {
    let mut client = service.client().await;
    scenario_first_half(&mut client, project).await;
    scenario_second_half(&mut client, project).await;
    wait_for(
        service,
        &mut client,
        project,
        "config h2 and the CLs",
        |log| log.config_hash == "h2" && pcl_clids(log).contains(&101),
    )
    .await
}

/// What must be equal between two runs of the scenario on different stores:
/// everything but wall-clock times and the ids derived from them.
fn shape(folded: &Folded) -> Vec<String> {
    let strip = |text: String| {
        let re = regex::Regex::new(r"(seconds|nanos|time|Time|run_id|operation_id)[^,}]*").unwrap();
        re.replace_all(&text, "$1:_").into_owned()
    };
    folded
        .logs
        .iter()
        .map(|log| {
            strip(format!(
                "log e{} {} {:?} {:?}",
                log.eversion,
                log.config_hash,
                pcl_clids(log),
                log.reasons
            ))
        })
        .chain(
            folded
                .actions
                .iter()
                .map(|a| strip(format!("action {:?}", a.action))),
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_esdb_matches_the_direct_fold_and_the_embedded_store() {
    let double = EsdbDouble::start();
    // Told the server takes appends of at most 1 byte, the service writes
    // each derived event in its own append (one over the limit is sent
    // alone); the derived streams are the same.
    let service = Service::start_with(&double.url(), None, &["--max-append-bytes", "1"]);
    let served = run_scenario(&service, "e2e").await;
    assert_eq!(served.status, proto::p_state::Status::Started as i32);
    service.stop();
    let store = EsdbStore::connect(&double.url()).unwrap();
    let on_esdb = assert_derived_match(&store, "e2e").await;
    assert!(!on_esdb.logs.is_empty());
    assert!(on_esdb
        .actions
        .iter()
        .any(|a| matches!(a.action, Some(proto::action::Action::UpdateRunsConfig(_)))));
    let action_appends: Vec<usize> = double
        .appends_written()
        .into_iter()
        .filter(|(stream, _)| stream == "pmaction-e2e")
        .map(|(_, events)| events)
        .collect();
    assert_eq!(action_appends.len(), on_esdb.actions.len());
    assert!(action_appends.iter().all(|&n| n == 1), "{action_appends:?}");

    // The same scenario on the embedded store gives the same ProjectLogs and
    // actions (up to wall-clock times).
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let service = Service::start(&format!("sqlite://{}", db.display()), None);
    run_scenario(&service, "e2e").await;
    service.stop();
    let embedded = EmbeddedStore::open(&db).unwrap();
    let on_embedded = assert_derived_match(&embedded, "e2e").await;
    embedded.close().await.unwrap();
    assert_eq!(shape(&on_esdb), shape(&on_embedded));

    // A restarted service serves the same state as the direct fold.
    let service = Service::start(&double.url(), None);
    let mut client = service.client().await;
    assert_serves_folded_state(&mut client, "e2e", &on_esdb).await;
    service.stop();
}

/// `prjmanager --store URL serve` on a free port, run to its end.
fn serve_on(url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_prjmanager"))
        .args(["--store", url, "serve", "--listen", "127.0.0.1:0"])
        .env_remove("PRJMANAGER_STORE")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_esdb_urls_are_refused_at_startup() {
    let output = serve_on("esdb://host:notaport");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EventStoreDB"), "{stderr}");
    // A follower preference would let a follower answer the reads that
    // recognise a retried append: refused, naming the setting.
    let output = serve_on("esdb://127.0.0.1:1?tls=false&nodePreference=follower");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nodePreference=leader"), "{stderr}");
}

#[test]
fn esdb_store_urls_parse_and_hide_their_password() {
    use prjmanager::store::any::StoreUrl;
    for url in [
        "esdb://127.0.0.1:2113?tls=false",
        "esdb://admin:changeit@a:2113,b:2113,c:2113?tlsVerifyCert=false",
        "esdb+discover://cluster.example.com:2113",
    ] {
        let parsed: StoreUrl = url.parse().unwrap();
        assert!(matches!(parsed, StoreUrl::Esdb(_)), "{url}");
        assert!(!format!("{parsed:?}").contains("changeit"), "{parsed:?}");
    }
    let err = "esdb://a:2113/path".parse::<StoreUrl>().unwrap_err();
    assert!(err.contains("EventStoreDB"), "{err}");
}

/// A user that may not read `$all` (only `$admins` may, by default): the
/// projector cannot subscribe, and `serve` stops at once with exit code 1
/// naming the permission, instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_access_to_all_stops_the_service_naming_the_permission() {
    let double = EsdbDouble::start();
    let (user, password) = esdb_double::USER;
    let service = Service::start(&double.url_as(user, password), None);
    let (status, log) = service.wait_for_exit(std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("permission denied"), "{log}");
    assert!(log.contains("$all") && log.contains("$admins"), "{log}");
}
