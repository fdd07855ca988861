//! Opening and accepting sessions over any byte stream (normally a `TcpStream`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    handshake::{
        client_hello_offering, now_unix, parse_hello_header, parse_route, route_preamble, server_accept, ClientSecrets,
        HandshakeError, Offer, PortKind, ServerContext, ServerSecrets, HELLO_HEADER_LEN, MAX_REPLY_LEN, ROUTE_LEN,
        TYPE_ROUTE,
    },
    stream::{Role, SecureStream},
    Identity, PublicKey,
};

/// Opens a session to the member whose public encryption key is `server_ck`, with the
/// hybrid handshake (version 2). On `PortKind::Cluster`, `member` is this side's own
/// identity (the membership proof). Falling back to version 1 needs a new connection:
/// `crate::client::open` does that.
pub async fn connect<S>(
    io: S,
    server_ck: &PublicKey,
    port: PortKind,
    member: Option<&Identity>,
) -> Result<SecureStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    connect_offering(io, server_ck, port, member, Offer::Hybrid).await
}

/// `connect` with the hello `offer` names.
pub async fn connect_offering<S>(
    mut io: S,
    server_ck: &PublicKey,
    port: PortKind,
    member: Option<&Identity>,
    offer: Offer,
) -> Result<SecureStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (hello, pending) = client_hello_offering(server_ck, port, member, ClientSecrets::random(), offer)?;
    // On the client port the hello may reach another member first (a load-balanced
    // address): the preamble says whom it is for, so that member can relay it.
    let mut wire = Vec::with_capacity(ROUTE_LEN + hello.len());
    if port == PortKind::Client {
        wire.extend_from_slice(&route_preamble(server_ck));
    }
    wire.extend_from_slice(&hello);
    io.write_all(&wire).await?;
    io.flush().await?;
    let mut reply = [0u8; MAX_REPLY_LEN];
    let reply = &mut reply[..pending.reply_len()];
    io.read_exact(reply).await?;
    let keys = pending.finish(reply)?;
    Ok(SecureStream::new(io, &keys, Role::Client, None))
}

/// What a client-port connection turned out to be.
// Returned once per connection and matched at once: boxing the session would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Incoming<S> {
    Session(SecureStream<S>),
    /// The routing preamble names another member's ck: relay `preamble` and the rest of
    /// `io` to that member, or drop the connection. Nothing has been sent.
    ForAnother {
        hint: [u8; 8],
        preamble: [u8; ROUTE_LEN],
        io: S,
    },
}

/// Runs the server side of one handshake. On error nothing has been sent: the
/// caller drops the connection. Callers bound this with a deadline.
pub async fn accept<S>(io: S, ctx: &ServerContext<'_>) -> Result<SecureStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match accept_or_route(io, ctx).await? {
        Incoming::Session(session) => Ok(session),
        Incoming::ForAnother { .. } => Err(HandshakeError::OtherMember),
    }
}

/// `accept`, except that a client-port hello addressed to another member is handed
/// back for relaying instead of refused.
pub async fn accept_or_route<S>(mut io: S, ctx: &ServerContext<'_>) -> Result<Incoming<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match read_hello(&mut io, ctx).await? {
        Arrived::Hello(hello) => answer(io, &hello, ctx).await.map(Incoming::Session),
        Arrived::ForAnother { hint, preamble } => Ok(Incoming::ForAnother { hint, preamble, io }),
    }
}

/// What a connection sent before the server did any work on it.
pub enum Arrived {
    /// One whole hello, its length checked against the header (at most `MAX_HELLO_LEN`).
    Hello(Vec<u8>),
    /// A client-port routing preamble naming another member's ck; nothing more was read.
    ForAnother { hint: [u8; 8], preamble: [u8; ROUTE_LEN] },
}

/// Reads one hello (after a routing preamble on the client port) and checks only its
/// header. It costs no CPU beyond the copy: a server reads hellos concurrently, bounded by
/// a deadline, and spends scarce work (`answer`) only on hellos that arrived whole.
pub async fn read_hello<S>(io: &mut S, ctx: &ServerContext<'_>) -> Result<Arrived, HandshakeError>
where
    S: AsyncRead + Unpin,
{
    let mut header = [0u8; HELLO_HEADER_LEN];
    io.read_exact(&mut header).await?;
    if header[3] == TYPE_ROUTE && ctx.port == PortKind::Client {
        let mut preamble = [0u8; ROUTE_LEN];
        preamble[..HELLO_HEADER_LEN].copy_from_slice(&header);
        io.read_exact(&mut preamble[HELLO_HEADER_LEN..]).await?;
        let hint = parse_route(&preamble)?;
        if hint != ctx.identity.ck_public().hint() {
            return Ok(Arrived::ForAnother { hint, preamble });
        }
        io.read_exact(&mut header).await?;
    }
    let lens = parse_hello_header(&header, ctx.port, ctx.identity.ck.size_bytes())?;
    ctx.admit(lens.version)?;
    let mut hello = vec![0u8; HELLO_HEADER_LEN + lens.rest_len()];
    hello[..HELLO_HEADER_LEN].copy_from_slice(&header);
    io.read_exact(&mut hello[HELLO_HEADER_LEN..]).await?;
    Ok(Arrived::Hello(hello))
}

/// Checks a hello read by `read_hello` and, if it passes, sends the reply: the session is
/// open. On error nothing has been sent.
pub async fn answer<S>(mut io: S, hello: &[u8], ctx: &ServerContext<'_>) -> Result<SecureStream<S>, HandshakeError>
where
    S: AsyncWrite + Unpin,
{
    let accepted = server_accept(ctx, hello, now_unix(), ServerSecrets::random())?;
    io.write_all(&accepted.reply).await?;
    io.flush().await?;
    Ok(SecureStream::new(io, &accepted.keys, Role::Server, accepted.peer))
}
