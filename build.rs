//! Compiles every `bpf/*.bpf.c` into a libbpf-rs skeleton with clang-19,
//! and records the build's identity (commit, date, compiler).

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

/// Debian 12's default clang (14) is too old for the CO-RE programs; clang-19
/// comes from scripts/setup.sh. `SOCKWARDEN_CLANG` overrides it.
const DEFAULT_CLANG: &str = "clang-19";

/// What `git args` prints, trimmed; None where git or the repository is
/// missing (a source tarball).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The build's identity for `--version` and `sockwarden_build_info`: the
/// commit, the build date and the compiler.
fn build_info() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SOCKWARDEN_COMMIT={commit}");
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |d| d.trim().to_string());
    println!("cargo:rustc-env=SOCKWARDEN_BUILD_DATE={date}");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |v| v.trim().to_string());
    println!("cargo:rustc-env=SOCKWARDEN_RUSTC={rustc}");
    // A new commit rebuilds the identity (HEAD, and the branch it names).
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

fn main() {
    build_info();
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
