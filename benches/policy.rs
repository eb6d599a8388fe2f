#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Parses a generated policy directory of 10,000 rules over 100 qubes (tags,
//! includes, `@dispvm` rules) and evaluates 10,000 requests against it.
//! `cargo bench --bench policy`.

use std::fmt::Write as _;
use std::time::Instant;

use qubes_pci_admin::policy::{Policy, PolicyRequest, System};

const QUBES: usize = 100;
const RULES: usize = 10_000;
const REQUESTS: usize = 10_000;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn main() {
    let rss_start = peak_rss_kib();
    // System info: 100 qubes, 10 tags, 10 DispVM templates.
    let mut domains = serde_json::Map::new();
    domains.insert("dom0".into(), serde_json::json!({"type": "AdminVM", "tags": [], "uuid": "00000000-0000-0000-0000-000000000000", "power_state": "Running"}));
    for i in 0..QUBES {
        domains.insert(
            format!("vm{i}"),
            serde_json::json!({"type": "AppVM", "tags": [format!("tag{}", i % 10), format!("created-by-vm{}", i % 7)],
                "uuid": format!("00000000-0000-4000-8000-{i:012x}"), "power_state": if i % 2 == 0 {"Running"} else {"Halted"},
                "default_dispvm": format!("vm{}", i % 10), "template_for_dispvms": i < 10}),
        );
    }
    let system: System = serde_json::from_value(serde_json::json!({"domains": domains})).unwrap();

    // 10 top-level files plus 10 include files, 500 rules each.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("include")).unwrap();
    let per_file = RULES / 20;
    for f in 0..10 {
        let mut top = String::new();
        let mut inc = String::new();
        for r in 0..per_file {
            let n = f * per_file + r;
            let svc = format!("svc.S{}", n % 200);
            let (src, tgt, action) = match n % 5 {
                0 => (
                    format!("vm{}", n % QUBES),
                    format!("vm{}", (n + 1) % QUBES),
                    "allow".to_owned(),
                ),
                1 => (format!("@tag:tag{}", n % 10), "@dispvm".to_owned(), "allow".to_owned()),
                2 => (
                    "@anyvm".to_owned(),
                    format!("@dispvm:vm{}", n % 10),
                    "ask default_target=@dispvm".to_owned(),
                ),
                3 => (
                    format!("@tag:created-by-vm{}", n % 7),
                    format!("@tag:tag{}", n % 10),
                    "allow target=dom0".to_owned(),
                ),
                _ => ("@anyvm".to_owned(), "@anyvm".to_owned(), "deny notify=no".to_owned()),
            };
            writeln!(top, "{svc} +arg{} {src} {tgt} {action}", n % 3).unwrap();
            writeln!(inc, "{src} {tgt} {}", action.replace(' ', ",")).unwrap();
        }
        writeln!(top, "!include-service svc.Inc{f} * include/inc{f}").unwrap();
        std::fs::write(dir.path().join(format!("{:02}-gen.policy", 10 + f)), top).unwrap();
        std::fs::write(dir.path().join(format!("include/inc{f}")), inc).unwrap();
    }

    let dirs = vec![dir.path().to_owned()];
    if std::env::var_os("POLICY_BENCH_PARSE_ONLY").is_some() {
        // For profiling the loader alone.
        let t = Instant::now();
        for _ in 0..200 {
            std::hint::black_box(Policy::load_dirs(&dirs).unwrap());
        }
        println!("{:.2} ms per load", t.elapsed().as_secs_f64() * 1e3 / 200.0);
        return;
    }
    let mut parse_times = Vec::new();
    let mut policy = None;
    for _ in 0..5 {
        let t = Instant::now();
        policy = Some(Policy::load_dirs(&dirs).unwrap());
        parse_times.push(t.elapsed());
    }
    let policy = policy.unwrap();
    let rss_after_parse = peak_rss_kib();
    parse_times.sort();

    let requests: Vec<PolicyRequest> = (0..REQUESTS)
        .map(|i| {
            let svc = if i % 4 == 0 {
                format!("svc.Inc{}+x", i % 10)
            } else {
                format!("svc.S{}+arg{}", i % 250, i % 3)
            };
            let target = match i % 4 {
                0 => "@dispvm".to_owned(),
                1 => "@default".to_owned(),
                _ => format!("vm{}", (i * 7) % QUBES),
            };
            PolicyRequest::new(&svc, &format!("vm{}", i % QUBES), &target, None, &system).unwrap()
        })
        .collect();
    let t = Instant::now();
    let mut outcome = [0usize; 3];
    for r in &requests {
        match policy.evaluate(r, &system) {
            Ok(qubes_pci_admin::policy::Resolution::Allow(_)) => outcome[0] += 1,
            Ok(qubes_pci_admin::policy::Resolution::Ask(_)) => outcome[1] += 1,
            Err(_) => outcome[2] += 1,
        }
    }
    let eval_total = t.elapsed();
    for (label, pick) in [("include-service (500 candidates)", 0usize), ("per-service rules", 1)] {
        let sel: Vec<&PolicyRequest> = requests
            .iter()
            .enumerate()
            .filter(|(i, _)| (i % 4 == 0) == (pick == 0))
            .map(|(_, r)| r)
            .collect();
        let t = Instant::now();
        let mut asks = 0;
        for r in &sel {
            if let Ok(qubes_pci_admin::policy::Resolution::Ask(_)) = policy.evaluate(r, &system) {
                asks += 1;
            }
        }
        println!(
            "  {label}: {} requests, {:.2} us/request, {asks} asks",
            sel.len(),
            t.elapsed().as_secs_f64() * 1e6 / sel.len() as f64
        );
    }
    println!(
        "policy bench: {} rules ({} files + {} includes), {QUBES} qubes",
        policy.rules.len(),
        10,
        10
    );
    println!(
        "parse (load_dirs), best of 5: {:.2} ms (median {:.2} ms)",
        parse_times[0].as_secs_f64() * 1e3,
        parse_times[2].as_secs_f64() * 1e3
    );
    println!(
        "evaluate: {REQUESTS} requests in {:.1} ms = {:.1} us/request (allow {}, ask {}, deny {})",
        eval_total.as_secs_f64() * 1e3,
        eval_total.as_secs_f64() * 1e6 / REQUESTS as f64,
        outcome[0],
        outcome[1],
        outcome[2]
    );
    println!(
        "peak RSS: {} KiB at start, {} KiB after parsing, {} KiB at the end",
        rss_start,
        rss_after_parse,
        peak_rss_kib()
    );
}
