//! Builds the BPF programs of `bpf-programs/` into objects embedded in the agent, and turns the
//! `#define VA_...` constants of `bpf-programs/varmor.h` into Rust constants.
//!
//! Tools (all overridable by environment variables):
//! * `clang-19` (`VARMOR_CLANG`): `-O2 -g -target bpf -D__TARGET_ARCH_x86`;
//! * libbpf's headers (`VARMOR_LIBBPF_INCLUDE`, default `/usr/include`, package `libbpf-dev`);
//! * `vmlinux.h`, generated into `OUT_DIR` with `bpftool btf dump file <BTF> format c`
//!   (`VARMOR_BPFTOOL`; the BTF is `VARMOR_VMLINUX_BTF`, default `/sys/kernel/btf/vmlinux`),
//!   or taken as is from `VARMOR_VMLINUX_H`.
//!
//! The objects use CO-RE, so one built against this machine's kernel relocates on others.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `baseline` is the benchmark's vArmor-style linear matcher (only `benches/` embeds it).
const PROGRAMS: &[&str] = &["varmor", "probe", "baseline", "exits"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = manifest.join("../bpf-programs");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for var in [
        "VARMOR_CLANG",
        "VARMOR_BPFTOOL",
        "VARMOR_VMLINUX_BTF",
        "VARMOR_VMLINUX_H",
        "VARMOR_LIBBPF_INCLUDE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for entry in
        fs::read_dir(&src).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", src.display())))
    {
        let path = entry.expect("dir entry").path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }

    write_constants(&src.join("varmor.h"), &out.join("bpf_layout.rs"));

    let clang = env::var("VARMOR_CLANG").unwrap_or_else(|_| "clang-19".into());
    let libbpf =
        PathBuf::from(env::var("VARMOR_LIBBPF_INCLUDE").unwrap_or_else(|_| "/usr/include".into()));
    if !libbpf.join("bpf/bpf_helpers.h").exists() {
        fail(&format!(
            "libbpf's headers are missing: {} does not exist (install the Debian package libbpf-dev, \
             or set VARMOR_LIBBPF_INCLUDE)",
            libbpf.join("bpf/bpf_helpers.h").display()
        ));
    }
    let vmlinux_h = out.join("vmlinux.h");
    generate_vmlinux_h(&vmlinux_h);

    for name in PROGRAMS {
        let input = src.join(format!("{name}.bpf.c"));
        let object = out.join(format!("{name}.bpf.o"));
        let output = Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-D__TARGET_ARCH_x86",
                "-Wall",
                "-Wno-unused-function",
            ])
            .arg("-I")
            .arg(&out)
            .arg("-I")
            .arg(&src)
            .arg("-I")
            .arg(&libbpf)
            .arg("-c")
            .arg(&input)
            .arg("-o")
            .arg(&object)
            .output()
            .unwrap_or_else(|e| {
                fail(&format!(
                    "cannot run {clang} ({e}): the BPF programs need clang-19 (install the Debian \
                     package clang-19, or set VARMOR_CLANG)"
                ))
            });
        if !output.status.success() {
            fail(&format!(
                "{clang} failed on {}:\n{}{}",
                input.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let warnings = String::from_utf8_lossy(&output.stderr);
        for line in warnings.lines().filter(|l| l.contains("warning:")) {
            println!("cargo:warning={line}");
        }
    }
}

fn generate_vmlinux_h(dest: &Path) {
    if let Ok(given) = env::var("VARMOR_VMLINUX_H") {
        fs::copy(&given, dest)
            .unwrap_or_else(|e| fail(&format!("cannot copy VARMOR_VMLINUX_H={given}: {e}")));
        return;
    }
    let btf = env::var("VARMOR_VMLINUX_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
    println!("cargo:rerun-if-changed={btf}");
    if !Path::new(&btf).exists() {
        fail(&format!(
            "the kernel BTF {btf} does not exist: vmlinux.h is generated from it (needs a kernel \
             with CONFIG_DEBUG_INFO_BTF, or set VARMOR_VMLINUX_BTF to a BTF file or \
             VARMOR_VMLINUX_H to a generated header)"
        ));
    }
    let bpftool = env::var("VARMOR_BPFTOOL").unwrap_or_else(|_| find_bpftool());
    let output = Command::new(&bpftool)
        .args(["btf", "dump", "file", &btf, "format", "c"])
        .output()
        .unwrap_or_else(|e| {
            fail(&format!(
                "cannot run {bpftool} ({e}): vmlinux.h is generated with bpftool (install the \
                 Debian package bpftool, or set VARMOR_BPFTOOL)"
            ))
        });
    if !output.status.success() {
        fail(&format!(
            "{bpftool} btf dump file {btf} format c failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    fs::write(dest, &output.stdout)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", dest.display())));
}

fn find_bpftool() -> String {
    for candidate in ["/usr/sbin/bpftool", "/usr/bin/bpftool", "/sbin/bpftool"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "bpftool".into()
}

/// `#define VA_NAME 123` lines become `pub const VA_NAME: u32 = 123;`.
fn write_constants(header: &Path, dest: &Path) {
    let text = fs::read_to_string(header)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", header.display())));
    let mut rs = String::from("// Generated by build.rs from bpf-programs/varmor.h.\n");
    for line in text.lines() {
        let line = line.split("/*").next().unwrap_or("");
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !name.starts_with("VA_") {
            continue;
        }
        let parsed = if let Some(hex) = value.strip_prefix("0x") {
            u32::from_str_radix(hex, 16)
        } else {
            value.parse::<u32>()
        };
        let Ok(v) = parsed else {
            fail(&format!(
                "{}: {name} is not a u32 literal: {value}",
                header.display()
            ));
        };
        writeln!(
            rs,
            "/// `{name}` of varmor.h.\npub const {name}: u32 = {v:#x};"
        )
        .expect("write");
    }
    fs::write(dest, rs).unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", dest.display())));
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    panic!("building the BPF programs failed: {message}");
}
