//! The `dflockd` daemon. (Temporary: configuration wiring lands next.)
fn main() {
    let mut cfg = dflockd::server::ServerConfig::default();
    if let Some(p) = std::env::args().nth(1) {
        cfg.listen = format!("127.0.0.1:{p}");
    }
    let h = dflockd::server::spawn(cfg).expect("start");
    eprintln!("listening on {}", h.local_addr());
    h.join();
}
