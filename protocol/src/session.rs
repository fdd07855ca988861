//! Opening and accepting sessions over any byte stream (normally a `TcpStream`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    handshake::{
        client_hello, now_unix, parse_hello_header, server_accept, ClientSecrets, HandshakeError, PortKind,
        ServerContext, ServerSecrets, HELLO_HEADER_LEN, REPLY_LEN,
    },
    stream::{Role, SecureStream},
    Identity, PublicKey,
};

/// Opens a session to the member whose public encryption key is `server_ck`.
/// On `PortKind::Cluster`, `member` is this side's own identity (the membership proof).
pub async fn connect<S>(
    mut io: S,
    server_ck: &PublicKey,
    port: PortKind,
    member: Option<&Identity>,
) -> Result<SecureStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (hello, pending) = client_hello(server_ck, port, member, ClientSecrets::random())?;
    io.write_all(&hello).await?;
    io.flush().await?;
    let mut reply = [0u8; REPLY_LEN];
    io.read_exact(&mut reply).await?;
    let keys = pending.finish(&reply)?;
    Ok(SecureStream::new(io, &keys, Role::Client, None))
}

/// Runs the server side of one handshake. On error nothing has been sent: the
/// caller drops the connection. Callers bound this with a deadline.
pub async fn accept<S>(mut io: S, ctx: &ServerContext<'_>) -> Result<SecureStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut header = [0u8; HELLO_HEADER_LEN];
    io.read_exact(&mut header).await?;
    let lens = parse_hello_header(&header, ctx.port, ctx.identity.ck.size_bytes())?;
    let mut hello = vec![0u8; HELLO_HEADER_LEN + lens.rsa_len + lens.proof_len];
    hello[..HELLO_HEADER_LEN].copy_from_slice(&header);
    io.read_exact(&mut hello[HELLO_HEADER_LEN..]).await?;
    let accepted = server_accept(ctx, &hello, now_unix(), ServerSecrets::random())?;
    io.write_all(&accepted.reply).await?;
    io.flush().await?;
    Ok(SecureStream::new(io, &accepted.keys, Role::Server, accepted.peer))
}
