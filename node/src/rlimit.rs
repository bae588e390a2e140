//! The process's open-files limit (RLIMIT_NOFILE). Every HTTPS connection, every peer stream and
//! every store file is a descriptor; a Linux login session often starts with a soft limit of 1,024
//! while the hard limit allows far more. `dtm serve` and `dtm bench` raise the soft limit to the
//! hard one at start-up (an unprivileged process may), and hold at most that limit less a reserve of
//! HTTPS connections (`connections_max`), so accepting connections is not cut short by EMFILE and
//! never takes the store's and the peers' descriptors.

/// Raises the soft open-files limit to the hard limit (or to `fs.nr_open` when the hard limit is
/// unlimited). Returns the soft limit before and after.
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        // The kernel refuses an infinite soft limit for descriptors; fs.nr_open is its ceiling.
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1_048_576);
    }
    if lim.rlim_cur >= target {
        return Ok((before, before));
    }
    lim.rlim_cur = target;
    // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard one is allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, target))
}

/// How many HTTPS connections a node may hold: `configured`, but no more than the soft open-files
/// limit less `limits::HTTP_CONNECTIONS_FD_RESERVE` (at least 64), so accepting connections never
/// starves the store and the peers of descriptors.
pub fn connections_max(configured: usize) -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return configured;
    }
    connections_within(configured, lim.rlim_cur)
}

fn connections_within(configured: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(crate::limits::HTTP_CONNECTIONS_FD_RESERVE).max(64);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_stay_below_the_open_files_limit() {
        assert_eq!(connections_within(32_768, 1_024), 64);
        assert_eq!(connections_within(32_768, 20_000), 20_000 - 1_024);
        assert_eq!(connections_within(32_768, 1_048_576), 32_768);
        assert!(connections_max(32_768) <= 32_768);
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_limit() {
        let (_, after) = raise_open_files_limit().expect("getrlimit/setrlimit");
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, after);
        assert!(lim.rlim_max == libc::RLIM_INFINITY || lim.rlim_cur == lim.rlim_max);
    }
}
