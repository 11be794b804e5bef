//! Metrics for operators, scraped over HTTP from real nodes and parsed.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{until_ok, Cluster, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` to `addr` and returns the whole answer.
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("the metrics port accepts");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .expect("read");
    String::from_utf8(answer).expect("UTF-8")
}

/// The samples of a scrape: `name{labels}` to value.
async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("a sample: {l}"));
            (name.to_string(), value.parse().unwrap_or_else(|_| panic!("a number: {l}")))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples.get(name).unwrap_or_else(|| panic!("no {name} in {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_its_metrics_in_the_prometheus_text_format() {
    let cluster = Cluster::start_with(3, &Options { metrics: true, ..Options::default() });
    let leader = cluster.leader().await;
    let mut c = cluster.client(leader).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    for i in 0..10 {
        until_ok(&mut c, &format!("INSERT INTO t VALUES ({i})")).await;
    }
    until_ok(&mut c, "SELECT count(*) FROM t").await;
    let refused = c.request("SELEC nonsense").await.expect("an answer");
    assert!(refused.get("error").is_some());

    let m = scrape(cluster.metrics_addrs[leader]).await;
    assert_eq!(sample(&m, "lightraft_role{role=\"leader\"}"), 1.0);
    assert_eq!(sample(&m, "lightraft_role{role=\"follower\"}"), 0.0);
    assert!(sample(&m, "lightraft_term") >= 1.0);
    assert!(sample(&m, "lightraft_commit_index") >= 12.0, "{m:#?}");
    assert!(sample(&m, "lightraft_applied_index") >= 12.0);
    assert!(sample(&m, "lightraft_log_entries") >= 12.0);
    assert!(sample(&m, "lightraft_requests_total{kind=\"write\",outcome=\"ok\"}") >= 11.0);
    assert!(sample(&m, "lightraft_requests_total{kind=\"read\",outcome=\"ok\"}") >= 1.0);
    assert!(sample(&m, "lightraft_requests_total{kind=\"refused\",outcome=\"sql_error\"}") >= 1.0);
    assert!(sample(&m, "lightraft_request_seconds_count{kind=\"write\"}") >= 11.0);
    assert!(sample(&m, "lightraft_persist_seconds_count") >= 11.0);
    assert!(sample(&m, "lightraft_sessions") >= 1.0);
    for peer in (0..3).filter(|&p| p != leader) {
        assert_eq!(sample(&m, &format!("lightraft_peer_connected{{peer=\"{peer}\"}}")), 1.0);
    }
    let follower = scrape(cluster.metrics_addrs[(leader + 1) % 3]).await;
    assert_eq!(sample(&follower, "lightraft_role{role=\"follower\"}"), 1.0);

    // Anything but GET /metrics gets an error status, and a silent client is let go.
    let addr = cluster.metrics_addrs[leader];
    assert!(http(addr, b"GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
    assert!(http(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
    assert!(http(addr, &[b'x'; 20_000]).await.starts_with("HTTP/1.1 431"));
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "a silent client kept its connection");
    // And the node still serves.
    scrape(addr).await;
}
