#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! The store under concurrent writers and under writers killed with
//! SIGKILL at random moments: it always loads, and every write whose reply
//! was sent is in it.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{FakeSysfs, TestEnv, BIN};

/// The ports of `FakeSysfs::many(n)`: device `i` is behind bridge `i / 32`.
fn port(i: usize) -> String {
    format!("00_{:02x}.0-00_{:02x}.0", i / 32, i % 32)
}

fn command(env: &TestEnv, method: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear().env("QUBES_PCI_ADMIN_LOG", "off");
    for (k, v) in env.envs() {
        c.env(k, v);
    }
    c.args(["call", "--source", "dom0", "--target", "work", method]);
    c
}

fn assigned_ports(env: &TestEnv) -> BTreeSet<String> {
    let dump = env.dump();
    dump["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["port"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn eight_concurrent_writers_lose_nothing() {
    let env = Arc::new(TestEnv::new(FakeSysfs::many(64)));
    let stop = Arc::new(AtomicBool::new(false));
    // A reader checks that the store loads throughout.
    let reader = {
        let env = env.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = env.cli(&["store", "dump"], b"");
                assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
                serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
                reads += 1;
            }
            reads
        })
    };
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let env = env.clone();
            std::thread::spawn(move || {
                // Worker w owns devices 8w..8w+8: assigns all, unassigns the odd ones.
                for i in 8 * w..8 * w + 8 {
                    let out = env.call(
                        "dom0",
                        "work",
                        &format!("admin.vm.device.pci.Assign+dom0+{}", port(i)),
                        b"mode='required'",
                    );
                    assert!(
                        out.stdout.starts_with(b"0\0"),
                        "{}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
                for i in (8 * w..8 * w + 8).filter(|i| i % 2 == 1) {
                    let out = env.call(
                        "dom0",
                        "work",
                        &format!("admin.vm.device.pci.Unassign+dom0+{}", port(i)),
                        b"",
                    );
                    assert!(
                        out.stdout.starts_with(b"0\0"),
                        "{}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    let expected: BTreeSet<String> = (0..64).filter(|i| i % 2 == 0).map(port).collect();
    assert_eq!(assigned_ports(&env), expected);
    // 64 assigns + 32 unassigns, each exactly one generation.
    assert_eq!(env.dump()["generation"], 96);
}

/// A small deterministic generator for the kill delays.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn writers_killed_at_random_moments_never_lose_an_acknowledged_write() {
    let env = TestEnv::new(FakeSysfs::many(128));
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = Lcg(seed);
    let mut must_have = BTreeSet::new();
    let mut must_not_have = BTreeSet::new();
    let (mut acked, mut killed) = (0, 0);
    let rounds = 256;
    for round in 0..rounds {
        let i = round % 128;
        let assign = round < 128;
        let method = if assign {
            format!("admin.vm.device.pci.Assign+dom0+{}", port(i))
        } else {
            format!("admin.vm.device.pci.Unassign+dom0+{}", port(i))
        };
        if !assign {
            // From here on the outcome of this device is whatever the
            // unassign did, which is unknown unless it replies.
            must_have.remove(&port(i));
        }
        let mut child = command(&env, &method)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(if assign { b"mode='required'" } else { b"" });
        drop(stdin);
        std::thread::sleep(Duration::from_micros(rng.next() % 12_000));
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let reply = out.stdout;
        let ok = reply.starts_with(b"0\0")
            || reply.starts_with(b"2\0DeviceAlreadyAssigned\0")
            || reply.starts_with(b"2\0DeviceNotAssigned\0");
        if ok {
            acked += 1;
            if assign {
                must_have.insert(port(i));
            } else {
                must_not_have.insert(port(i));
            }
        } else {
            assert!(
                reply.is_empty(),
                "a reply that is neither success nor a kill: {:?}",
                String::from_utf8_lossy(&reply)
            );
            killed += 1;
        }
        // The store loads after every round and holds every acknowledged write.
        let now = assigned_ports(&env);
        for p in &must_have {
            assert!(now.contains(p), "round {round}: acknowledged assignment {p} lost");
        }
        for p in &must_not_have {
            assert!(
                !now.contains(p),
                "round {round}: acknowledged unassignment of {p} undone"
            );
        }
        assert!(!env.dir.path().join("state/assignments.bin").exists() || now.len() <= 128);
    }
    // One more write clears what killed writers left behind.
    let out = env.call(
        "dom0",
        "sys-net",
        &format!("admin.vm.device.pci.Assign+dom0+{}", port(0)),
        b"mode='required'",
    );
    assert!(out.stdout.starts_with(b"0\0"));
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    eprintln!("{rounds} rounds: {acked} acknowledged, {killed} killed before replying");
    assert!(
        acked > 0 && killed > 0,
        "the delays must cover both outcomes ({acked} acked, {killed} killed)"
    );
}
