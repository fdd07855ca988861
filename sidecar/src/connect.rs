//! The client side of `connect`: one session with a member, joined to stdin/stdout. Used by
//! `xlattice connect` (directory from a file) and `kubectl xlattice connect` (from the API).

use std::time::Duration;

use xlattice_protocol::{client, DirectoryIndex, Identity, PortKind, Target};

use crate::{
    cli::{Port, SessionArgs},
    proxy::proxy_session,
};

/// Opens the session `args` names and pumps stdin into it and it into stdout until either
/// side closes. The error is for a person: it names the file or the failing step.
pub async fn to_stdio(directory: &DirectoryIndex, args: &SessionArgs) -> Result<(), String> {
    let identity = match &args.identity_dir {
        Some(dir) => Some(Identity::load_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?),
        None => None,
    };
    let port = match args.port {
        Port::Client => PortKind::Client,
        Port::Cluster => PortKind::Cluster,
    };
    let target = Target {
        member: &args.member,
        port,
        address: args.address.as_deref(),
        identity: identity.as_ref(),
        post_quantum: args.post_quantum,
    };
    let mut session = client::open(directory, target, args.timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    // A day: an interactive session or a long pipe is the user's to end, not ours.
    proxy_session(&mut session, &mut stdio, Duration::from_secs(24 * 3600), None)
        .await
        .result
        .map_err(|e| e.to_string())
}
