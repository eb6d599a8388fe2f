//! Writes the built-in copy of pci.ids (from the `pci-ids` crate's table)
//! as text into OUT_DIR, for `include_bytes!`: one blob, so the binary has
//! no relocation per entry and costs nothing at start-up until a name is
//! looked up. Also writes the full file with subsystems (the size of a real
//! pci.ids) for the benchmarks.

use std::fmt::Write as _;

fn main() {
    // tests/real_qubesd.rs runs only where upstream's trees are given, and
    // is reported as ignored everywhere else (not as a pass).
    println!("cargo::rustc-check-cfg=cfg(real_qubesd)");
    println!("cargo:rerun-if-env-changed=QUBES_CORE_ADMIN_SRC");
    println!("cargo:rerun-if-env-changed=QUBES_CORE_QREXEC_SRC");
    if std::env::var_os("QUBES_CORE_ADMIN_SRC").is_some() && std::env::var_os("QUBES_CORE_QREXEC_SRC").is_some() {
        println!("cargo:rustc-cfg=real_qubesd");
    }
    let mut names = String::with_capacity(1 << 20);
    let mut full = String::with_capacity(2 << 20);
    for v in pci_ids::Vendors::iter() {
        let line = format!("{:04x}  {}\n", v.id(), v.name());
        names.push_str(&line);
        full.push_str(&line);
        for d in v.devices() {
            let line = format!("\t{:04x}  {}\n", d.id(), d.name());
            names.push_str(&line);
            full.push_str(&line);
            for s in d.subsystems() {
                let _ = writeln!(full, "\t\t{:04x} {:04x}  {}", s.subvendor(), s.subdevice(), s.name());
            }
        }
    }
    for c in pci_ids::Classes::iter() {
        let line = format!("C {:02x}  {}\n", c.id(), c.name());
        names.push_str(&line);
        full.push_str(&line);
        for s in c.subclasses() {
            let line = format!("\t{:02x}  {}\n", s.id(), s.name());
            names.push_str(&line);
            full.push_str(&line);
            for p in s.prog_ifs() {
                let _ = writeln!(full, "\t\t{:02x}  {}", p.id(), p.name());
            }
        }
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    for (file, text) in [("pci.ids", &names), ("pci.ids.full", &full)] {
        if let Err(e) = std::fs::write(out.join(file), text) {
            println!("cargo::error=cannot write {file} into OUT_DIR: {e}");
        }
    }
    println!("cargo::rerun-if-changed=build.rs");
}
