//! One agent's status stream (`WatchStatus`) on an HTTP/2 connection of its own. The
//! coordinator keeps one of these open to every agent, so what each costs in memory is what
//! a coordinator of 10,000 ODPs costs. A general HTTP/2 client costs too much here: tonic's
//! channel adds request and dispatch queues and a decode buffer, and h2 alone still holds
//! 28 KiB of buffers and its stream and frame slabs per connection (about 23 KiB resident an
//! agent measured). So the one call is spoken directly ([`http2`], [`hpack`]): a connection
//! holds its socket and an empty header table between statuses, about 4 KiB an agent with
//! its task. Over TLS (`[agents.tls]`) it presents the coordinator's certificate as every
//! other call to the agents does.
use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

#[cfg(test)]
mod hostile_streams;
mod hpack;
mod http2;

use self::{hpack::Field, http2::Http2Error};
use crate::security::tls::TlsFileError;
use crate::{proto::agent as pb, security::config::ClientTlsConfig as TlsSection};

/// gRPC's status code for an RPC the server does not offer.
const UNIMPLEMENTED: i32 = 12;
/// The largest status message accepted. A status is a few hundred bytes; the bound keeps
/// a length prefix of up to 4 GiB from making the stream buffer that much before it can
/// tell the message is absurd.
const MAX_STATUS: usize = 64 * 1024;

/// What is wrong with the gRPC messages an agent sends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("a message of {0} bytes (at most {MAX_STATUS} accepted)")]
    TooLarge(usize),
    #[error("a compressed message (the coordinator asked for none)")]
    Compressed,
    #[error("data before the response's headers")]
    BeforeHeaders,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to {agent}")]
    Connect {
        agent: String,
        #[source]
        source: io::Error,
    },
    #[error("{agent} did not answer within {}", humantime::format_duration(*timeout))]
    Timeout { agent: String, timeout: Duration },
    #[error("HTTP/2 with {agent} failed")]
    Http2 {
        agent: String,
        #[source]
        source: Http2Error,
    },
    #[error("{agent} answered HTTP status {status}")]
    HttpStatus { agent: String, status: String },
    #[error("{agent} answered gRPC status {code}: {message}")]
    Status {
        agent: String,
        code: i32,
        message: String,
    },
    #[error("{agent} sent {source}")]
    Message {
        agent: String,
        #[source]
        source: MessageError,
    },
    #[error("{agent} sent a status that does not decode")]
    Decode {
        agent: String,
        #[source]
        source: prost::DecodeError,
    },
}

impl StreamError {
    /// The agent does not offer WatchStatus (an older agent).
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, StreamError::Status { code, .. } if *code == UNIMPLEMENTED)
    }
}

/// How to reach the agents: plain TCP, or TLS with the coordinator's certificate.
pub struct Connector {
    tls: Option<(tokio_rustls::TlsConnector, Option<String>)>,
    connect_timeout: Duration,
}

fn read_err(path: &Path, what: &str) -> TlsFileError {
    TlsFileError::Read {
        path: path.to_path_buf(),
        source: io::Error::other(format!("no usable PEM {what}")),
    }
}

impl Connector {
    pub fn new(tls: Option<&TlsSection>, connect_timeout: Duration) -> Result<Self, TlsFileError> {
        let tls = tls.map(|t| rustls_client(t).map(|c| (c, t.domain.clone())));
        Ok(Self {
            tls: tls.transpose()?,
            connect_timeout,
        })
    }

    /// Follows `agent`'s status stream, calling `on_status` for every status, until the
    /// stream ends, fails, or sends no status for `silence` (the agent promised a heartbeat).
    /// Only a whole status restarts that clock: frames that carry none (empty data, pings,
    /// settings, a message trickled a byte at a time) cannot keep a stream alive.
    pub async fn follow(
        &self,
        agent: &str,
        heartbeat: Duration,
        silence: Duration,
        on_status: impl FnMut(pb::ProxyStatus),
    ) -> Result<(), StreamError> {
        let mut io = self.connect(agent).await?;
        let h2err = |source| StreamError::Http2 {
            agent: agent.to_string(),
            source,
        };
        let timeout = |timeout| StreamError::Timeout {
            agent: agent.to_string(),
            timeout,
        };
        let message = pb::WatchStatusRequest {
            heartbeat: Some(prost_types::Duration {
                seconds: heartbeat.as_secs() as i64,
                nanos: heartbeat.subsec_nanos() as i32,
            }),
        };
        let path = "/odp.agent.v1.Agent/WatchStatus";
        let body = frame(&message);
        let sent = http2::request(&mut io, self.tls.is_some(), agent, path, &body);
        tokio::time::timeout(self.connect_timeout, sent)
            .await
            .map_err(|_| timeout(self.connect_timeout))?
            .map_err(h2err)?;
        watch(&mut io, agent, silence, on_status).await
    }

    async fn connect(&self, agent: &str) -> Result<Box<dyn Io>, StreamError> {
        let connect_err = |source| StreamError::Connect {
            agent: agent.to_string(),
            source,
        };
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(agent))
            .await
            .map_err(|_| StreamError::Timeout {
                agent: agent.to_string(),
                timeout: self.connect_timeout,
            })?
            .map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        let Some((tls, domain)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let host = match (domain, agent.parse::<SocketAddr>()) {
            (Some(d), _) => ServerName::try_from(d.clone()),
            (None, Ok(addr)) => Ok(ServerName::from(addr.ip())),
            (None, Err(_)) => {
                let host = agent.rsplit_once(':').map_or(agent, |(h, _)| h);
                ServerName::try_from(host.to_string())
            }
        }
        .map_err(|e| connect_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let stream = tokio::time::timeout(self.connect_timeout, tls.connect(host, tcp))
            .await
            .map_err(|_| StreamError::Timeout {
                agent: agent.to_string(),
                timeout: self.connect_timeout,
            })?
            .map_err(connect_err)?;
        Ok(Box::new(stream))
    }
}

/// Reads the response to the request already sent on `io`: statuses to `on_status` until
/// the stream ends, fails, or sends no status for `silence`. What it holds at any time is
/// bounded whatever the agent sends: one frame (16 KiB), one header block and its fields
/// (16 KiB each), one partial status ([`MAX_STATUS`]) and the header table (4 KiB).
async fn watch<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    agent: &str,
    silence: Duration,
    mut on_status: impl FnMut(pb::ProxyStatus),
) -> Result<(), StreamError> {
    let h2err = |source| StreamError::Http2 {
        agent: agent.to_string(),
        source,
    };
    let timeout = |timeout| StreamError::Timeout {
        agent: agent.to_string(),
        timeout,
    };
    let mut reader = http2::Reader::default();
    let mut buf = BytesMut::new();
    let mut answered = false;
    let message_err = |source| StreamError::Message {
        agent: agent.to_string(),
        source,
    };
    let mut deadline = tokio::time::Instant::now() + silence;
    loop {
        let event = tokio::time::timeout_at(deadline, reader.next(io))
            .await
            .map_err(|_| timeout(silence))?
            .map_err(h2err)?;
        let (payload, end) = match event {
            http2::Event::Headers { fields, end } => {
                // The response's headers first (a refusal comes as headers alone,
                // trailers-only), the trailers last.
                if !answered {
                    answered = true;
                    http_status(agent, &fields)?;
                }
                grpc_status(agent, &fields)?;
                if end {
                    return Ok(());
                }
                continue;
            }
            http2::Event::Data { .. } if !answered => {
                return Err(message_err(MessageError::BeforeHeaders));
            }
            http2::Event::Data { payload, end } => (payload, end),
        };
        buf.extend_from_slice(&payload);
        // The bound stated above: an accepted partial message and one frame.
        debug_assert!(buf.len() <= 5 + MAX_STATUS + http2::MAX_FRAME);
        while let Some(message) = next_message(&mut buf).map_err(message_err)? {
            deadline = tokio::time::Instant::now() + silence;
            let status =
                pb::ProxyStatus::decode(message).map_err(|source| StreamError::Decode {
                    agent: agent.to_string(),
                    source,
                })?;
            on_status(status);
        }
        // Between statuses a stream holds no buffer: 10,000 idle ones add up.
        if buf.is_empty() {
            buf = BytesMut::new();
        }
        if end {
            return Ok(());
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// rustls for the agents: their CA, the coordinator's certificate if any, HTTP/2.
fn rustls_client(t: &TlsSection) -> Result<tokio_rustls::TlsConnector, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.ca)
        .map_err(|_| read_err(&t.ca, "certificate"))?
        .collect::<Result<_, _>>()
        .map_err(|_| read_err(&t.ca, "certificate"))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|_| read_err(&t.ca, "CA certificate"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| read_err(&t.ca, "TLS settings"))?
        .with_root_certificates(roots);
    let mut config = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|_| read_err(cert, "certificate"))?
                .collect::<Result<_, _>>()
                .map_err(|_| read_err(cert, "certificate"))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|_| read_err(key, "key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| read_err(cert, "certificate and key pair"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A gRPC message: uncompressed flag, big-endian length, the message.
fn frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.freeze()
}

/// The next whole message in `buf`, if one has arrived; an error as soon as its prefix
/// shows a message the coordinator will not take (so `buf` never holds more than one
/// accepted message and one frame).
fn next_message(buf: &mut BytesMut) -> Result<Option<Bytes>, MessageError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(MessageError::Compressed);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_STATUS {
        return Err(MessageError::TooLarge(len));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

fn header<'a>(fields: &'a [Field], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// An error for a response that is not HTTP 200.
fn http_status(agent: &str, fields: &[Field]) -> Result<(), StreamError> {
    match header(fields, ":status") {
        Some("200") => Ok(()),
        other => Err(StreamError::HttpStatus {
            agent: agent.to_string(),
            status: other.unwrap_or("(none)").to_string(),
        }),
    }
}

/// An error for a non-zero `grpc-status` in headers or trailers.
fn grpc_status(agent: &str, fields: &[Field]) -> Result<(), StreamError> {
    let Some(code) = header(fields, "grpc-status") else {
        return Ok(());
    };
    let code: i32 = code.parse().unwrap_or(2);
    if code == 0 {
        return Ok(());
    }
    let message = header(fields, "grpc-message").unwrap_or("").to_string();
    Err(StreamError::Status {
        agent: agent.to_string(),
        code,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_from_the_stream_whole() {
        let status = pb::ProxyStatus {
            pid: 42,
            version: "4.3.1.0".into(),
            ..Default::default()
        };
        let one = frame(&status);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&one[..3]);
        assert_eq!(next_message(&mut buf), Ok(None));
        buf.extend_from_slice(&one[3..]);
        buf.extend_from_slice(&one[..7]);
        let got = pb::ProxyStatus::decode(next_message(&mut buf).unwrap().unwrap()).unwrap();
        assert_eq!(got, status);
        assert_eq!(next_message(&mut buf), Ok(None));
        assert_eq!(buf.len(), 7);
    }

    #[test]
    fn an_absurd_length_prefix_is_refused_before_anything_is_buffered() {
        let mut buf = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            next_message(&mut buf),
            Err(MessageError::TooLarge(u32::MAX as usize))
        );
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 1, 0][..]);
        assert_eq!(next_message(&mut buf), Err(MessageError::Compressed));
    }

    #[test]
    fn a_grpc_error_status_names_its_code() {
        let mut fields: Vec<Field> = vec![(b":status".to_vec(), b"200".to_vec())];
        assert!(http_status("a:1", &fields).is_ok());
        assert!(grpc_status("a:1", &fields).is_ok());
        fields.push((b"grpc-status".to_vec(), b"12".to_vec()));
        fields.push((b"grpc-message".to_vec(), b"unknown method".to_vec()));
        let e = grpc_status("a:1", &fields).unwrap_err();
        assert!(e.is_unimplemented(), "{e}");
        assert!(e.to_string().contains("unknown method"), "{e}");
    }
}
