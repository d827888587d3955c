//! One connection type for plain TCP and TLS (either side), so the connection driver reads and
//! writes the same way whatever the socket carries.
//!
//! TLS is monoio-rustls in its safe mode (it copies through its own buffers; see
//! docs/decisions/0007-tls.md): a read or write future may be dropped (a timeout fired), but the
//! TLS stream is then in an unknown state, so every such connection is closed, never reused
//! (the driver already closes any connection whose read or write timed out, and pools only
//! connections that finished an exchange cleanly).

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::{ClientTlsStream, ServerTlsStream};

/// A client or upstream connection.
#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    /// A client's TLS connection (we are the server).
    TlsServer(Box<ServerTlsStream<TcpStream>>),
    /// A TLS connection to an upstream (we are the client).
    TlsClient(Box<ClientTlsStream<TcpStream>>),
}

impl Io {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Io::Plain(_))
    }

    /// The socket of a plain connection (to wait for readiness on it): `None` for TLS, whose
    /// records may hold bytes the socket no longer shows.
    pub fn plain(&self) -> Option<&TcpStream> {
        match self {
            Io::Plain(s) => Some(s),
            Io::TlsServer(_) | Io::TlsClient(_) => None,
        }
    }
}

impl AsyncReadRent for Io {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::TlsServer(s) => s.read(buf).await,
            Io::TlsClient(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.readv(buf).await,
            Io::TlsServer(s) => s.readv(buf).await,
            Io::TlsClient(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Io {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.write(buf).await,
            Io::TlsServer(s) => s.write(buf).await,
            Io::TlsClient(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Io::Plain(s) => s.writev(buf).await,
            Io::TlsServer(s) => s.writev(buf).await,
            Io::TlsClient(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.flush().await,
            Io::TlsServer(s) => s.flush().await,
            Io::TlsClient(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.shutdown().await,
            Io::TlsServer(s) => s.shutdown().await,
            Io::TlsClient(s) => s.shutdown().await,
        }
    }
}
