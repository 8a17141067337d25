//! Machine-readable reasons the controller attaches to errors (in the
//! `ruse-error` response metadata), so agents can tell "stop and tell the
//! operator" from "retry later" without parsing messages.

/// Metadata key carrying one of the codes below.
pub const HEADER: &str = "ruse-error";

/// The agent has been revoked. Stop; do not reconnect.
pub const AGENT_REVOKED: &str = "agent-revoked";
/// The controller does not know this agent (its store was reset, or the
/// agent was deleted). Stop; re-enrollment needs a new token.
pub const AGENT_UNKNOWN: &str = "agent-unknown";
/// The bootstrap token is not valid (unknown, wrong secret).
pub const TOKEN_INVALID: &str = "token-invalid";
/// The bootstrap token has expired.
pub const TOKEN_EXPIRED: &str = "token-expired";
/// The bootstrap token has been used its maximum number of times.
pub const TOKEN_EXHAUSTED: &str = "token-exhausted";
/// Too many failed attempts from this address; retry later.
pub const RATE_LIMITED: &str = "rate-limited";
