//! Run metadata: toolchain, OS, kernel, CPU, time, git revision, BLAS env.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use moe_core::kernels::gemm::Backend;

use super::schema::{Metadata, SCHEMA_VERSION};
use super::sys::os::{kernel, load_average};

/// Settings of the run that go into the metadata.
#[derive(Debug, Clone, Copy)]
pub struct RunSettings {
    /// Trials per scenario.
    pub n_trials: u64,
    /// Warmup runs per scenario.
    pub n_warmup: u64,
    /// Seed.
    pub seed: u64,
    /// Intra-op threads.
    pub threads: u64,
    /// One child process per scenario?
    pub isolated: bool,
}

/// Collects the metadata now.
pub fn collect(s: RunSettings) -> Metadata {
    Metadata {
        language: "rust".to_owned(),
        language_version: env!("MOE_RUSTC_VERSION").to_owned(),
        os: std::env::consts::OS.to_owned(),
        kernel: kernel(),
        arch: std::env::consts::ARCH.to_owned(),
        cpu_model: cpu_model(),
        logical_cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
        load_average: load_average(),
        timestamp: rfc3339_utc(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        ),
        n_trials: s.n_trials,
        n_warmup: s.n_warmup,
        seed: s.seed,
        matmul_backend: Backend::DEFAULT.name().to_owned(),
        matmul_kernel: moe_core::kernels::gemm::kernel_name().to_owned(),
        threads: s.threads,
        git_rev: git_rev(),
        git_dirty: git_dirty(),
        schema_version: SCHEMA_VERSION,
        build_profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_owned(),
        isolation: if s.isolated { "process" } else { "in-process" }.to_owned(),
        openblas_env: std::env::vars()
            .filter(|(k, _)| k.starts_with("OPENBLAS_"))
            .collect::<BTreeMap<_, _>>(),
        cpu_simd: cpu_simd(),
        blas_core: super::sys::openblas_corename(),
    }
}

/// The SIMD extensions the kernels dispatch on that this CPU has.
pub fn cpu_simd() -> Vec<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut v = Vec::new();
        if std::is_x86_feature_detected!("avx2") {
            v.push("avx2".to_owned());
        }
        if std::is_x86_feature_detected!("fma") {
            v.push("fma".to_owned());
        }
        if std::is_x86_feature_detected!("avx512f") {
            v.push("avx512f".to_owned());
        }
        v
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The CPU model name (`/proc/cpuinfo` on Linux, `sysctl` on macOS).
pub fn cpu_model() -> String {
    if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(m) = parse_cpuinfo_model(&info) {
            return m;
        }
    }
    stdout_of(Command::new("sysctl").args(["-n", "machdep.cpu.brand_string"]))
}

/// The trimmed stdout of a successful `cmd`, `"unknown"` if it fails or prints nothing.
fn stdout_of(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// First `model name` (x86) or `Model`/`CPU part` line (ARM) of a cpuinfo text.
pub fn parse_cpuinfo_model(info: &str) -> Option<String> {
    for key in ["model name", "Model", "cpu model", "CPU part"] {
        for line in info.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim() == key && !v.trim().is_empty() {
                    return Some(v.trim().to_owned());
                }
            }
        }
    }
    None
}

/// `git rev-parse HEAD` in the current directory, `"unknown"` if that fails.
pub fn git_rev() -> String {
    stdout_of(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .stderr(std::process::Stdio::null()),
    )
}

/// Whether tracked files have uncommitted changes; `None` if git fails.
pub fn git_dirty() -> Option<bool> {
    Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| !o.stdout.iter().all(u8::is_ascii_whitespace))
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`YYYY-MM-DDThh:mm:ssZ`),
/// via Howard Hinnant's days-to-civil algorithm.
pub fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn cpuinfo_model_name() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n";
        assert_eq!(parse_cpuinfo_model(info).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(parse_cpuinfo_model("flags: x\n"), None);
    }

    #[test]
    fn kernel_is_named() {
        let k = kernel();
        assert!(!k.is_empty());
    }
}
