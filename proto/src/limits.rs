//! Process limits a long-running Ruse daemon needs.

/// Raises the soft open-file limit to the hard limit and returns the limit
/// now in force. A controller holds one connection per agent and an agent
/// one per decoy client; the usual soft default (1,024) is far too low for
/// either, and raising it to the hard limit needs no privilege.
#[cfg(unix)]
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// Windows has no such limit on sockets and handles: nothing to raise.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> u64 {
    u64::MAX
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_reaches_the_hard_limit() {
        let raised = raise_fd_limit();
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(raised, soft);
        assert_eq!(soft, hard);
    }
}
