//! `--backend cuda` where it cannot run: one line naming what is missing, exit 2, never
//! cudarc's panic. Built only with the `cuda` feature, which compiles without a CUDA toolkit:
//! `CUDARC_CUDA_VERSION=12080 cargo test -p lomo-cli --features cuda --test cli cuda`.
//!
//! The driver's answers come from a fake libcuda (three functions of cuda.h, each answer read
//! from an environment variable) compiled with `cc` and put first on LD_LIBRARY_PATH, so every
//! case runs on any machine, with or without a GPU; only "no driver at all" needs a machine
//! without one.

use std::path::{Path, PathBuf};
use std::process::Command;

const FAKE_DRIVER: &str = r#"
#include <stdlib.h>
static int env_int(const char *name, int otherwise) { const char *s = getenv(name); return s ? atoi(s) : otherwise; }
int cuInit(unsigned int flags) { (void)flags; return env_int("FAKE_CUINIT", 0); }
int cuDriverGetVersion(int *v) { *v = env_int("FAKE_CUDA_VERSION", 13000); return 0; }
int cuDeviceGetCount(int *n) { *n = env_int("FAKE_CUDA_DEVICES", 1); return 0; }
"#;

/// Compiles `source` into `dir/name` as a shared library.
fn shared_library(dir: &Path, name: &str, source: &str) {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let out = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(dir.join(name)).arg(&c).output();
    let out = out.expect("this test compiles a fake libcuda with `cc` (a C compiler, which Rust's linking uses too)");
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two library directories: a fake driver alone, and the fake driver with a fake NVRTC.
fn fake_libraries() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-cuda");
    let (driver, with_nvrtc) = (root.join("driver"), root.join("driver-nvrtc"));
    for dir in [&driver, &with_nvrtc] {
        std::fs::create_dir_all(dir).unwrap();
        shared_library(dir, "libcuda.so", FAKE_DRIVER);
    }
    shared_library(
        &with_nvrtc,
        "libnvrtc.so",
        "int nvrtcVersion(int *major, int *minor) { *major = 13; *minor = 0; return 0; }\n",
    );
    (driver, with_nvrtc)
}

/// Whether the dynamic loader's cache lists `lib` (a system install that LD_LIBRARY_PATH cannot hide).
fn installed(lib: &str) -> bool {
    Command::new("ldconfig").arg("-p").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(lib))
}

/// `lomo train --backend cuda` on a tiny run with `extra` flags and `env`: exit 2 and one line
/// that contains `expect`.
fn refused(extra: &[&str], env: &[(&str, &str)], library_path: Option<&Path>, expect: &str) {
    let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-tiny.jsonl");
    std::fs::write(&data, "{\"input_ids\": [1, 5, 9, 12, 3]}\n").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lomo"));
    command.args(["train", "--backend", "cuda", "--preset", "stories260k", "--optimizer", "lomo", "--lr", "0.1"]);
    command.args(["--steps", "1", "--batch-size", "1", "--data"]).arg(&data).args(extra);
    command.env_remove("CUDA_VISIBLE_DEVICES").envs(env.iter().copied());
    match library_path {
        Some(dir) => command.env("LD_LIBRARY_PATH", dir),
        None => command.env_remove("LD_LIBRARY_PATH"),
    };
    let out = command.output().expect("run lomo");
    super::one_line_exit_2(&out, &format!("{extra:?} {env:?}"), expect);
}

#[test]
fn without_a_usable_driver_cuda_is_one_line_and_exit_2() {
    if installed("libcuda.so") {
        eprintln!("note: an NVIDIA driver is installed here; the no-driver case runs where none is");
    } else {
        refused(&[], &[], None, "no NVIDIA driver here (libcuda.so.1");
        refused(&["--devices", "cuda:7"], &[], None, "no NVIDIA driver here");
    }
    let (driver, with_nvrtc) = fake_libraries();
    // CUresult 34, CUDA_ERROR_STUB_LIBRARY: the toolkit's stubs directory first on the path.
    refused(&[], &[("FAKE_CUINIT", "34")], Some(&driver), "the CUDA toolkit's stub");
    // CUresult 100, CUDA_ERROR_NO_DEVICE.
    refused(&[], &[("FAKE_CUINIT", "100")], Some(&driver), "sees no GPU (CUDA_VISIBLE_DEVICES unset)");
    refused(&[], &[("FAKE_CUDA_DEVICES", "0")], Some(&driver), "sees no GPU");
    refused(&[], &[("FAKE_CUDA_VERSION", "11040")], Some(&driver), "supports CUDA 11.4, older than");
    refused(&[], &[("FAKE_CUINIT", "999")], Some(&driver), "cuInit: CUresult 999");
    if !installed("libnvrtc.so") {
        refused(&[], &[], Some(&driver), "NVRTC (libnvrtc.so)");
    }
    // A device number past the driver's count, found before anything touches the GPU.
    let two = [("FAKE_CUDA_DEVICES", "2")];
    refused(
        &["--devices", "cuda:7"],
        &two,
        Some(&with_nvrtc),
        "`cuda:7`: the NVIDIA driver sees 2 GPUs here (cuda:0 to cuda:1)",
    );
    refused(&["--devices", "cuda:0,cuda:2"], &two, Some(&with_nvrtc), "`cuda:2`");
}
