//! Compiles every `bpf/*.bpf.c` into a libbpf-rs skeleton with clang-19.

use std::env;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// Debian 12's default clang (14) is too old for the CO-RE programs; clang-19
/// comes from scripts/setup.sh. `SOCKWARDEN_CLANG` overrides it.
const DEFAULT_CLANG: &str = "clang-19";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("SOCKWARDEN_CLANG").unwrap_or_else(|_| DEFAULT_CLANG.to_string());
    println!("cargo:rerun-if-env-changed=SOCKWARDEN_CLANG");
    println!("cargo:rerun-if-changed=bpf/include");

    let mut sources: Vec<PathBuf> = fs::read_dir("bpf")
        .expect("bpf/ exists")
        .map(|e| e.expect("readable bpf/ entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();

    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let file = src.file_name().expect("file name").to_string_lossy();
        let stem = file.trim_end_matches(".bpf.c");
        let skel = out.join(format!("{stem}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args(["-Ibpf/include", "-Ibpf", "-Wall", "-Werror", "-O2", "-g"])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
    }
}
