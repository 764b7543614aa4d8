//! Whether this machine can run `--backend cuda`, asked of the NVIDIA driver before burn and
//! cubecl touch it. They reach the driver through cudarc, which panics (on two threads, with
//! backtraces) when libcuda is missing, when the one found is the CUDA toolkit's stub, or when
//! NVRTC is missing at the first kernel; this asks the same libraries, found by cudarc's own
//! list of names in its order, and says in one line what is missing and what to do.

use std::ffi::{c_int, c_uint};
use std::sync::OnceLock;

use anyhow::{bail, Result};

// `CUresult` codes (cuda.h) that have a message of their own.
const CUDA_SUCCESS: c_int = 0;
const CUDA_ERROR_STUB_LIBRARY: c_int = 34;
const CUDA_ERROR_INSUFFICIENT_DRIVER: c_int = 35;
const CUDA_ERROR_NO_DEVICE: c_int = 100;

/// The first of `lib`'s file names, in cudarc's order, that loads: the file cudarc will load.
fn load_first(lib: &str) -> Option<(String, libloading::Library)> {
    cudarc::get_lib_name_candidates(lib).into_iter().find_map(|name| {
        // SAFETY: loading runs the library's initialisers; these are the libraries (found by
        // the same names) that cudarc loads anyway for `--backend cuda`.
        let library = unsafe { libloading::Library::new(&name) }.ok()?;
        Some((name, library))
    })
}

/// `CUDA_VISIBLE_DEVICES` as the messages quote it.
fn visible_devices() -> String {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) => format!("CUDA_VISIBLE_DEVICES=`{v}`"),
        Err(_) => "CUDA_VISIBLE_DEVICES unset".into(),
    }
}

/// The number of GPUs the NVIDIA driver sees, or a one-line error naming what is missing for
/// `--backend cuda` (the driver, a driver new enough for this build, a GPU, NVRTC; cuBLAS where
/// `LOMO_LINEAR=cublas` asks for it) and what to do.
pub fn check() -> Result<usize> {
    // Once the driver has answered, it is loaded and initialised: ask it once per process.
    static DEVICES: OnceLock<usize> = OnceLock::new();
    if let Some(&count) = DEVICES.get() {
        return Ok(count);
    }
    let Some((name, library)) = load_first("cuda") else {
        bail!(
            "--backend cuda: no NVIDIA driver here (libcuda.so.1 is not on the library path); install the NVIDIA \
             driver, or add the directory that holds its libcuda.so.1 to LD_LIBRARY_PATH, or use --backend cpu"
        );
    };
    // Kept loaded for the process's life, whatever follows: cudarc loads the same file, and an
    // initialised driver is not unloaded.
    let driver: &'static libloading::Library = Box::leak(Box::new(library));
    type GetInt = unsafe extern "C" fn(*mut c_int) -> c_int;
    // SAFETY: cuda.h's signatures: CUresult cuInit(unsigned int), cuDriverGetVersion(int*),
    // cuDeviceGetCount(int*); CUresult is a C enum (an int).
    let symbols = unsafe {
        (
            driver.get::<unsafe extern "C" fn(c_uint) -> c_int>(b"cuInit\0"),
            driver.get::<GetInt>(b"cuDriverGetVersion\0"),
            driver.get::<GetInt>(b"cuDeviceGetCount\0"),
        )
    };
    let (Ok(init), Ok(get_version), Ok(get_count)) = symbols else {
        bail!("--backend cuda: {name} is not the NVIDIA driver (it lacks cuInit); check LD_LIBRARY_PATH");
    };
    // SAFETY: the signatures above; the pointers are to live locals.
    let (status, version_status, count_status, version, count) = unsafe {
        let status = init(0);
        let (mut version, mut count) = (0, 0);
        let version_status = get_version(&mut version);
        let count_status = if status == CUDA_SUCCESS { get_count(&mut count) } else { status };
        (status, version_status, count_status, version, count)
    };
    match status {
        CUDA_SUCCESS => {}
        CUDA_ERROR_STUB_LIBRARY => bail!(
            "--backend cuda: the {name} found is the CUDA toolkit's stub, not the NVIDIA driver's; take the \
             toolkit's `stubs` directory off LD_LIBRARY_PATH (and install the NVIDIA driver if there is none)"
        ),
        CUDA_ERROR_INSUFFICIENT_DRIVER => {
            bail!("--backend cuda: the NVIDIA driver is too old for this machine's CUDA libraries; update the driver")
        }
        CUDA_ERROR_NO_DEVICE => bail!(
            "--backend cuda: the NVIDIA driver sees no GPU ({}); check `nvidia-smi`, or use --backend cpu",
            visible_devices()
        ),
        code => bail!(
            "--backend cuda: the NVIDIA driver did not start (cuInit: CUresult {code}); check `nvidia-smi` and dmesg"
        ),
    }
    let built = cudarc::driver::sys::CUDA_VERSION as c_int;
    if version_status == CUDA_SUCCESS && version < built {
        bail!(
            "--backend cuda: the NVIDIA driver supports CUDA {}.{}, older than the CUDA {}.{} this lomo was built for; \
             update the driver, or rebuild with CUDARC_CUDA_VERSION={version}",
            version / 1000,
            version % 1000 / 10,
            built / 1000,
            built % 1000 / 10
        );
    }
    if count_status != CUDA_SUCCESS || count < 1 {
        bail!(
            "--backend cuda: the NVIDIA driver sees no GPU ({}); check `nvidia-smi`, or use --backend cpu",
            visible_devices()
        );
    }
    if load_first("nvrtc").is_none() {
        bail!(
            "--backend cuda: NVRTC (libnvrtc.so), which compiles the GPU kernels at run time, is not on the library \
             path; install the CUDA toolkit's NVRTC (a CUDA toolkit, or `pip install nvidia-cuda-nvrtc`) and add \
             its lib directory to LD_LIBRARY_PATH"
        );
    }
    if lomo_kernels::cublas_linear() && load_first("cublas").is_none() {
        bail!(
            "LOMO_LINEAR=cublas: cuBLAS (libcublas.so) is not on the library path; add the directory that holds it \
             (the CUDA toolkit's lib64, or torch's nvidia/cu*/lib) to LD_LIBRARY_PATH, or unset LOMO_LINEAR to run \
             the linear layers on cubecl's matmul"
        );
    }
    Ok(*DEVICES.get_or_init(|| count as usize))
}
