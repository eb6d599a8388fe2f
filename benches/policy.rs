#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Parses a generated policy directory of 10,000 rules over 100 qubes (tags,
//! includes, `@dispvm` rules) and evaluates 10,000 requests against it, in
//! process and as whole `policy eval` processes. With QUBES_CORE_QREXEC_SRC
//! naming an extracted QubesOS/qubes-core-qrexec tree (and
//! QUBES_CORE_QREXEC_PYTHON a Python with pyinotify, default python3),
//! upstream's engine does the same in the same run, and the answers of the
//! two engines are compared request by request.
//! `cargo bench --bench policy`.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qubes_pci_admin::policy::{Policy, PolicyRequest, System};

const QUBES: usize = 100;
const RULES: usize = 10_000;
const REQUESTS: usize = 20_000;
const BIN: &str = env!("CARGO_BIN_EXE_qubes-pci-admin");
const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/upstream/policy_engine.py");

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
    domains.insert("dom0".into(), serde_json::json!({"type": "AdminVM", "tags": [], "uuid": "00000000-0000-0000-0000-000000000000", "power_state": "Running", "template_for_dispvms": false, "default_dispvm": null, "icon": "black"}));
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
    // POLICY_BENCH_DIR keeps the generated files there (for profiling).
    let kept = std::env::var_os("POLICY_BENCH_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().unwrap();
    let dir = Dir(kept.unwrap_or_else(|| temp.path().to_owned()));
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
    // Cold (the first loads of the process) and warm (repeated) parses.
    let mut parse_times = Vec::new();
    let mut policy = None;
    for _ in 0..25 {
        let t = Instant::now();
        policy = Some(Policy::load_dirs(&dirs).unwrap());
        parse_times.push(t.elapsed());
    }
    let policy = policy.unwrap();
    let rss_after_parse = peak_rss_kib();
    let first_parse = parse_times[0];
    parse_times.sort();

    // The calls: a quarter to the 500-rule include services (ask-heavy),
    // a quarter aimed at allow rules, the rest spread over the services.
    let calls: Vec<(String, String, String)> = (0..REQUESTS)
        .map(|i| match i % 4 {
            0 => (
                format!("vm{}", i % QUBES),
                "@dispvm".to_owned(),
                format!("svc.Inc{}+x", i % 10),
            ),
            1 => {
                let n = (i * 5) % (RULES / 2) / 5 * 5;
                (
                    format!("vm{}", n % QUBES),
                    format!("vm{}", (n + 1) % QUBES),
                    format!("svc.S{}+arg{}", n % 200, n % 3),
                )
            }
            2 => (
                format!("vm{}", i % QUBES),
                "@default".to_owned(),
                format!("svc.S{}+arg{}", i % 250, i % 3),
            ),
            _ => (
                format!("vm{}", i % QUBES),
                format!("vm{}", (i * 7) % QUBES),
                format!("svc.S{}+arg{}", i % 250, i % 3),
            ),
        })
        .collect();
    let requests: Vec<PolicyRequest> = calls
        .iter()
        .map(|(s, t, svc)| PolicyRequest::new(svc, s, t, None, &system).unwrap())
        .collect();
    let mut ours = Vec::with_capacity(REQUESTS);
    let mut best = Duration::MAX;
    for round in 0..5 {
        let t = Instant::now();
        for r in &requests {
            let name = match policy.evaluate(r, &system) {
                Ok(qubes_pci_admin::policy::Resolution::Allow(_)) => "allow",
                Ok(qubes_pci_admin::policy::Resolution::Ask(_)) => "ask",
                Err(_) => "deny",
            };
            if round == 0 {
                ours.push(name);
            }
        }
        best = best.min(t.elapsed());
    }
    let per_eval = best.as_secs_f64() / REQUESTS as f64;
    let count = |w: &str| ours.iter().filter(|r| **r == w).count();
    println!(
        "policy bench: {} rules ({} files + {} includes), {QUBES} qubes, {REQUESTS} requests \
         (allow {}, ask {}, deny {})",
        policy.rules.len(),
        10,
        10,
        count("allow"),
        count("ask"),
        count("deny")
    );
    println!(
        "ours, in process: parse {:.2} ms warm (median of 25), {:.2} ms first load; evaluate {:.2} us/request (best of 5 rounds)",
        parse_times[12].as_secs_f64() * 1e3,
        first_parse.as_secs_f64() * 1e3,
        per_eval * 1e6
    );
    println!(
        "peak RSS: {} KiB at start, {} KiB after parsing, {} KiB at the end",
        rss_start,
        rss_after_parse,
        peak_rss_kib()
    );

    // Whole processes: `policy eval` for one call, and `policy eval --batch`
    // for all of them with one load.
    let si = dir.path().join("system-info.json");
    std::fs::write(
        &si,
        serde_json::to_vec(&serde_json::json!({"domains": domains})).unwrap(),
    )
    .unwrap();
    let lines: String = calls
        .iter()
        .map(|(s, t, svc)| format!("{}\n", serde_json::json!({"source": s, "target": t, "service": svc})))
        .collect();
    let jsonl = dir.path().join("requests.jsonl");
    std::fs::write(&jsonl, &lines).unwrap();
    let ours_cmd = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("QUBES_PCI_ADMIN_POLICY_DIR", dir.path())
            .env("QUBES_PCI_ADMIN_SYSTEM_INFO", &si)
            .env("QUBES_PCI_ADMIN_LOG", "off")
            .args(args);
        c
    };
    let (s0, t0, svc0) = &calls[1];
    let one = median_run(15, || ours_cmd(&["policy", "eval", s0, t0, svc0]));
    // The load alone, as a whole process: a batch of one request minus a
    // process that only starts (`--version`), interleaved.
    let one_line = dir.path().join("one.jsonl");
    std::fs::write(&one_line, lines.lines().next().unwrap_or_default()).unwrap();
    let (mut starts, mut batches_of_one) = (Vec::new(), Vec::new());
    for _ in 0..41 {
        starts.push(time_run(ours_cmd(&["--version"])));
        let mut c = ours_cmd(&["policy", "eval", "--batch"]);
        c.stdin(std::fs::File::open(&one_line).unwrap());
        batches_of_one.push(time_run(c));
    }
    starts.sort();
    batches_of_one.sort();
    println!(
        "ours, policy load as a whole process: batch of one {:.2} ms - --version {:.2} ms = {:.2} ms (medians of 41, interleaved)",
        batches_of_one[20].as_secs_f64() * 1e3,
        starts[20].as_secs_f64() * 1e3,
        (batches_of_one[20].as_secs_f64() - starts[20].as_secs_f64()) * 1e3
    );
    let batch_out = ours_cmd(&["policy", "eval", "--batch"])
        .stdin(std::fs::File::open(&jsonl).unwrap())
        .output()
        .unwrap();
    assert!(batch_out.status.success());
    let batch_results: Vec<String> = String::from_utf8(batch_out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["result"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(batch_results.len(), REQUESTS);
    let batch = median_run(5, || {
        let mut c = ours_cmd(&["policy", "eval", "--batch"]);
        c.stdin(std::fs::File::open(&jsonl).unwrap());
        c
    });
    println!(
        "ours, whole process: policy eval {:.2} ms; policy eval --batch of {REQUESTS} {:.1} ms ({:.2} us/request with the load)",
        one.as_secs_f64() * 1e3,
        batch.as_secs_f64() * 1e3,
        batch.as_secs_f64() * 1e6 / REQUESTS as f64
    );

    let Some(src) = std::env::var_os("QUBES_CORE_QREXEC_SRC") else {
        println!("upstream engine: skipped (set QUBES_CORE_QREXEC_SRC to an extracted qubes-core-qrexec tree)");
        return;
    };
    let python = std::env::var_os("QUBES_CORE_QREXEC_PYTHON").unwrap_or_else(|| "python3".into());
    let up = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new(&python);
        c.env_clear()
            .env("QUBES_CORE_QREXEC_SRC", &src)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg(DRIVER)
            .args(args);
        c
    };
    let out = up(&[
        "inproc".as_ref(),
        dir.path().as_os_str(),
        si.as_os_str(),
        jsonl.as_os_str(),
        "3".as_ref(),
    ])
    .stderr(Stdio::inherit())
    .output()
    .unwrap();
    assert!(out.status.success(), "upstream driver failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut parse: Vec<f64> = v["parse"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    parse.sort_by(f64::total_cmp);
    let up_eval = v["eval"].as_f64().unwrap();
    let up_results: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let differ = up_results.iter().zip(&ours).filter(|(a, b)| a != b).count();
    let batch_differ = up_results
        .iter()
        .zip(&batch_results)
        .filter(|(a, b)| **a != b.as_str())
        .count();
    println!(
        "upstream, in process: parse {:.1} ms (median of 3); evaluate {:.1} us/request",
        parse[1] * 1e3,
        up_eval * 1e6
    );
    println!(
        "  ratios: parse {:.0}x faster, evaluate {:.0}x faster; answers differing from ours: {differ} in process, {batch_differ} batch, of {REQUESTS}",
        parse[1] / parse_times[12].as_secs_f64(),
        up_eval / per_eval
    );
    let up_one = median_run(5, || {
        up(&[
            "exec".as_ref(),
            dir.path().as_os_str(),
            si.as_os_str(),
            s0.as_ref(),
            t0.as_ref(),
            svc0.as_ref(),
        ])
    });
    println!(
        "upstream, whole process (qrexec-policy-exec --just-evaluate): {:.1} ms; ours {:.2} ms: {:.0}x faster",
        up_one.as_secs_f64() * 1e3,
        one.as_secs_f64() * 1e3,
        up_one.as_secs_f64() / one.as_secs_f64()
    );
}

/// Where the generated policy is written.
struct Dir(std::path::PathBuf);

impl Dir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

/// The wall time of one run of `c` (output discarded).
fn time_run(mut c: Command) -> Duration {
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let t = Instant::now();
    let _ = c.status().unwrap();
    t.elapsed()
}

/// The median wall time of running the command `n` times (output discarded).
fn median_run(n: usize, mut make: impl FnMut() -> Command) -> Duration {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let mut c = make();
            c.stdout(Stdio::null()).stderr(Stdio::null());
            let t = Instant::now();
            let _ = c.status().unwrap();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[n / 2]
}
