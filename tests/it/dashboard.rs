//! The views behind the dashboard (http.md §8): the bounded top lists of
//! `GET /v1/stats`, `GET /v1/keys/{key}`, `GET /v1/activity`, the `/ui`
//! files and their policy, and `stats` built in slices over TCP and HTTP
//! with more keys than one slice holds. The page itself is driven in a
//! real browser by `tests/ui_browser.rs`.

use std::net::SocketAddr;

use serde_json::Value;

use crate::http_client::{call, get, start};
use crate::support::{grant, Client, Server};

fn json(addr: SocketAddr, path: &str) -> Value {
    let r = get(addr, path);
    assert_eq!(r.status, 200, "{path}: {r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// `orders` held by one connection with three in line behind it, a full
/// semaphore with one waiter, a free key, a listener.
struct Contention {
    _clients: Vec<Client>,
    holder: u64,
    line: Vec<u64>,
}

fn contention(server: &Server) -> Contention {
    let conn_id = |c: &mut Client| -> u64 {
        // Each connection's id, from the stats entry of a key it holds alone.
        c.send("l", "whoami", "0");
        let (tok, _) = grant(&c.recv_line());
        let id = crate::support::entry(&c.stats(), "locks", "whoami").expect("held")
            ["owner_conn_id"]
            .as_u64()
            .expect("id");
        c.send("r", "whoami", &tok);
        assert_eq!(c.recv_line(), "ok");
        id
    };
    let mut holder = server.client();
    let holder_id = conn_id(&mut holder);
    holder.send("l", "orders", "0 600");
    grant(&holder.recv_line());
    let mut clients = vec![];
    let mut line = vec![];
    for n in 1..=3 {
        let mut c = server.client();
        line.push(conn_id(&mut c));
        c.send("l", "orders", "60");
        server.wait_lock_waiters("orders", n);
        clients.push(c);
    }
    for _ in 0..2 {
        let mut c = server.client();
        c.send("sl", "pool", "0 2 600");
        grant(&c.recv_line());
        clients.push(c);
    }
    let mut w = server.client();
    w.send("sl", "pool", "60 2");
    server.wait_sem_waiters("pool", 1);
    clients.push(w);
    let mut free = server.client();
    free.send("l", "free", "0");
    grant(&free.recv_line());
    clients.push(free);
    let mut listener = server.client();
    listener.send("listen", "orders.*", "");
    assert_eq!(listener.recv_line(), "ok");
    clients.push(listener);
    clients.push(holder);
    Contention {
        _clients: clients,
        holder: holder_id,
        line,
    }
}

#[test]
fn top_lists_show_the_busiest_keys_with_holder_and_queue() {
    let (server, addr) = start(|_| {});
    let c = contention(&server);
    let top = json(addr, "/v1/stats?top=5");
    assert_eq!(top["sort"], "waiters");
    assert_eq!(top["scanned"], 0, "answered from the index");
    let keys = top["keys"].as_array().expect("keys");
    let names: Vec<&str> = keys.iter().map(|k| k["key"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["orders", "pool"],
        "only contended keys, longest queue first"
    );
    let orders = &keys[0];
    assert_eq!(orders["waiters"], 3);
    assert_eq!(orders["kind"], "lock");
    assert_eq!(orders["holder"]["conn"].as_u64(), Some(c.holder));
    let queue: Vec<u64> = orders["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["conn"].as_u64().unwrap())
        .collect();
    assert_eq!(queue, c.line, "FIFO order");
    assert!(orders["queue"][0]["timeout_in_s"].as_f64().unwrap() <= 60.0);
    assert_eq!(keys[1]["holders"], 2);

    let full = json(addr, "/v1/stats?sort=fill&kind=semaphore");
    assert_eq!(full["keys"][0]["key"], "pool");
    assert_eq!(full["keys"][0]["limit"], 2);
    assert!(full["scanned"].as_u64().unwrap() > 0, "a scan");
    let held = json(addr, "/v1/stats?sort=held_for&top=2");
    let names: Vec<&str> = held["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders", "pool"], "oldest grant first");
    let search = json(addr, "/v1/stats?sort=key&prefix=or");
    assert_eq!(search["keys"].as_array().unwrap().len(), 1);
    assert_eq!(search["keys"][0]["key"], "orders");
    assert_eq!(search["prefix"], "or");
    let all = json(addr, "/v1/stats?sort=key&top=100");
    let names: Vec<&str> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["free", "orders", "pool", "whoami"]);
    assert!(all["keys"][3]["idle_s"].is_number(), "whoami is idle");

    for (bad, detail) in [
        ("/v1/stats?top=0", "top must be"),
        ("/v1/stats?sort=nope", "sort must be"),
        ("/v1/stats?top=3&bogus=1", "unknown query parameter `bogus`"),
        ("/v1/keys/orders?kind=queue", "kind must be"),
        ("/v1/keys/orders?waiters=5000", "waiters must be"),
    ] {
        let r = get(addr, bad);
        r.err(400, "bad_request");
        assert!(
            r.json()["detail"].as_str().unwrap().contains(detail),
            "{bad}: {r:?}"
        );
    }
}

#[test]
fn a_key_view_lists_holders_waiters_and_events() {
    let (server, addr) = start(|_| {});
    let c = contention(&server);
    let v = json(addr, "/v1/keys/orders");
    assert_eq!(v["key"], "orders");
    let r = &v["resources"][0];
    assert_eq!(
        (r["kind"].as_str(), r["waiters"].as_u64()),
        (Some("lock"), Some(3))
    );
    assert_eq!(r["holder_list"][0]["conn"].as_u64(), Some(c.holder));
    let queue: Vec<u64> = r["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["conn"].as_u64().unwrap())
        .collect();
    assert_eq!(queue, c.line);
    assert_eq!(r["events"][0]["event"], "granted");
    assert_eq!(r["events"][0]["conn"].as_u64(), Some(c.holder));
    let v = json(addr, "/v1/keys/orders?waiters=1");
    assert_eq!(v["resources"][0]["queue"].as_array().unwrap().len(), 1);
    // A semaphore's holders come from a walk of the leases.
    let v = json(addr, "/v1/keys/pool?kind=semaphore");
    let holders = v["resources"][0]["holder_list"].as_array().unwrap();
    assert_eq!(holders.len(), 2);
    assert!(holders[0]["held_for_s"].as_f64() >= holders[1]["held_for_s"].as_f64());
    assert_eq!(v["resources"][0]["waiters"], 1);
    let v = json(addr, "/v1/keys/pool?kind=semaphore&holders=1");
    assert_eq!(
        v["resources"][0]["holder_list"].as_array().unwrap().len(),
        1
    );
    get(addr, "/v1/keys/none").err(404, "no_such_key");
    get(addr, "/v1/keys/pool?kind=lock").err(404, "no_such_key");
    // The key `whoami` was granted and released by every client.
    let v = json(addr, "/v1/keys/whoami");
    let events: Vec<&str> = v["resources"][0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events[..2], ["released", "granted"]);
}

#[test]
fn activity_reports_counters_histograms_connections_and_channels() {
    let (server, addr) = start(|_| {});
    let _c = contention(&server);
    let mut p = server.client();
    p.send("signal", "orders.new", "hi");
    assert_eq!(p.recv_line(), "ok 1");
    let a = json(addr, "/v1/activity");
    assert_eq!(
        a["totals"]["grants"], 8,
        "whoami 4 times, orders, pool twice, free"
    );
    assert_eq!(a["totals"]["signal_deliveries"], 1);
    assert!(a["connections"]["tcp"].as_u64().unwrap() >= 10);
    assert!(a["connections"]["total"].as_u64().unwrap() >= 10);
    let bounds = a["histograms"]["bounds_s"].as_array().unwrap().len();
    let wait = a["histograms"]["acquire_wait"]["lock"].as_array().unwrap();
    assert_eq!(wait.len(), bounds + 1);
    assert_eq!(
        wait.iter().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        6,
        "lock grants"
    );
    assert!(a["history"]["grants"].is_array());
    assert_eq!(a["signals"]["subscriptions"], 1);
    assert_eq!(a["signals"]["top"][0]["pattern"], "orders.*");
    assert_eq!(a["signals"]["top"][0]["pushes"], 1);
    assert_eq!(a["cluster"], Value::Null);
}

#[test]
fn the_ui_is_public_with_a_strict_policy_and_its_data_needs_the_token() {
    let (_server, addr) = start(|cfg| cfg.core.auth_token = Some(b"s3cret".to_vec()));
    let page = get(addr, "/ui");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("a policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe"));
    assert!(page.body.contains(r#"<form id="auth""#));
    for (path, ty) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
    ] {
        let r = get(addr, path);
        assert_eq!((r.status, r.header("content-type")), (200, Some(ty)));
        assert_eq!(r.header("content-security-policy"), Some(csp));
    }
    for path in ["/v1/activity", "/v1/stats?top=3", "/v1/keys/k"] {
        get(addr, path).err(401, "unauthorized");
        let r = call(
            addr,
            "GET",
            path,
            &[("Authorization", "Bearer s3cret")],
            b"",
        );
        assert_ne!(r.status, 401, "{path}");
    }
}

/// More keys than one slice: `stats` over TCP and over HTTP list them all,
/// once each, and a top list by key order starts where they start.
#[test]
fn stats_over_many_slices_lists_every_key_once() {
    const N: usize = 10_000;
    let (server, addr) = start(|cfg| cfg.core.max_locks = N + 10);
    let mut c = server.client();
    let mut batch = String::new();
    for i in 0..N {
        batch.push_str(&format!("l\nk{i:05}\n0\n"));
    }
    c.send_raw(batch.as_bytes());
    for _ in 0..N {
        grant(&c.recv_line());
    }
    let tcp = server.stats();
    let http = json(addr, "/v1/stats");
    for s in [&tcp, &http] {
        let locks = s["locks"].as_array().unwrap();
        assert_eq!(locks.len(), N);
        let keys: Vec<&str> = locks.iter().map(|l| l["key"].as_str().unwrap()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "sorted, each once");
    }
    // The TCP reply is written in pieces of 64 KiB (~12 here): one whole
    // line, in order between the replies pipelined around it on the same
    // connection, listing what HTTP lists (but for the leases' time left,
    // read a moment apart).
    c.send_raw(b"ping\n_\n\nstats\n_\n\nping\n_\n\n");
    assert_eq!(c.recv_line(), "ok");
    let line = c.recv_line();
    assert_eq!(c.recv_line(), "ok");
    assert!(line.len() > 5 * 64 * 1024, "{}", line.len());
    let without_leases = |mut v: Value| {
        for l in v["locks"].as_array_mut().unwrap() {
            l["lease_expires_in_s"] = Value::Null;
        }
        v
    };
    let piecewise: Value = serde_json::from_str(line.strip_prefix("ok ").unwrap()).unwrap();
    assert_eq!(
        without_leases(piecewise),
        without_leases(json(addr, "/v1/stats"))
    );
    let top = json(addr, "/v1/stats?sort=key&top=2");
    assert_eq!(top["keys"][0]["key"], "k00000");
    assert_eq!(top["keys"][1]["key"], "k00001");
    assert_eq!(top["scanned"].as_u64(), Some(N as u64));
    let metrics = get(addr, "/metrics").body;
    assert!(
        metrics.contains(&format!("\ndflockd_locks_held {N}\n")),
        "{metrics}"
    );
}
