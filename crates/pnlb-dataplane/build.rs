//! Compiles the XDP programs in `bpf/` with clang and generates their
//! libbpf-rs skeletons (which embed the object and carry the ABI types).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["lb", "xdp_pass", "xdp_ceiling", "decap"];

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest.join("../../bpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = find_clang();

    for name in PROGRAMS {
        let source = bpf_dir.join(format!("{name}.bpf.c"));
        let skeleton = out_dir.join(format!("{name}.skel.rs"));
        let mut defines = Vec::new();
        // The upgrade test's second build: the same data plane from other
        // sources (bpf/lb.bpf.c, PNLB_UPGRADE_VARIANT).
        if *name == "lb" && env::var_os("CARGO_FEATURE_UPGRADE_VARIANT").is_some() {
            defines.push("-DPNLB_UPGRADE_VARIANT".to_string());
        }
        // Per-packet run times for the bench (bpf/lb.bpf.c, PNLB_RUN_TIMES).
        if *name == "lb" && env::var_os("CARGO_FEATURE_RUN_TIMES").is_some() {
            defines.push("-DPNLB_RUN_TIMES".to_string());
        }
        let result = SkeletonBuilder::new()
            .source(&source)
            .clang(&clang)
            .clang_args(defines.into_iter().chain([
                "-O2".to_string(),
                "-g".to_string(),
                "-Wall".to_string(),
                "-Werror".to_string(),
                // Hermetic: no system include directory is searched, so the
                // programs see only the kernel UAPI headers vendored in
                // bpf/include/uapi and libbpf's own (added by libbpf-cargo),
                // never the C library's (which need per-arch packages such
                // as libc6-dev-i386 under `-target bpf`).
                "-nostdinc".to_string(),
                format!("-isystem{}", bpf_dir.join("include/uapi").display()),
                format!("-I{}", bpf_dir.join("include").display()),
                format!("-I{}", bpf_dir.display()),
            ]))
            .build_and_generate(&skeleton);
        if let Err(err) = result {
            panic!("building {}: {err:#}", source.display());
        }
    }
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    for sub in ["include", "lib"] {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(sub).display());
    }
}

/// clang-19 is what we test with; any clang that targets BPF will do.
fn find_clang() -> PathBuf {
    if let Some(explicit) = env::var_os("PNLB_CLANG") {
        return PathBuf::from(explicit);
    }
    for candidate in ["clang-19", "clang"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Path::new(candidate).to_path_buf();
        }
    }
    panic!(
        "clang not found: the XDP programs in bpf/ are compiled with clang. \
         Install it with `apt-get install clang-19` (or set PNLB_CLANG to a clang binary)."
    );
}
