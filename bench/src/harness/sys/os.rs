//! Machine description from the OS: load averages and the kernel name.

/// The 1-, 5- and 15-minute load averages (`getloadavg(3)`), rounded to 0.01.
#[cfg(unix)]
pub fn load_average() -> Vec<f64> {
    let mut avg = [0.0f64; 3];
    // SAFETY: `avg` has room for the 3 values requested and outlives the call.
    let n = unsafe { libc::getloadavg(avg.as_mut_ptr(), 3) };
    avg.iter()
        .take(n.max(0) as usize)
        .map(|x| (x * 100.0).round() / 100.0)
        .collect()
}

/// Not available off unix.
#[cfg(not(unix))]
pub fn load_average() -> Vec<f64> {
    Vec::new()
}

/// `sysname release` from `uname(2)`.
#[cfg(unix)]
pub fn kernel() -> String {
    // SAFETY: `utsname` is a struct of C char arrays; all-zero is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is valid and writable for the duration of the call.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_owned();
    }
    // Each field is NUL-terminated within its array; stop at the NUL (or the end).
    let field = |f: &[libc::c_char]| -> String {
        let bytes: Vec<u8> = f.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {}", field(&u.sysname), field(&u.release))
}

/// Not available off unix.
#[cfg(not(unix))]
pub fn kernel() -> String {
    "unknown".to_owned()
}
