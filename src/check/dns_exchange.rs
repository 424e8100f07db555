//! Asking the nameservers for one name and one family, as Go's resolver does (`tryOneName`,
//! `exchange` and `checkHeader` in `net/dnsclient_unix.go`; where Go changed, its later rule:
//! the lame-referral test with `hasAdd` and a truncated TCP answer taken as it is, Go 1.23+): `attempts` rounds
//! over the servers (from the rotation's offset), each exchange over UDP from a fresh socket
//! (a new random source port) and again over TCP when the answer is truncated; a server that
//! fails (no answer, SERVFAIL, REFUSED, a lame referral) passes the question to the next one,
//! while NXDOMAIN, or an answer without records of the type, settles it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::crypto::SecureRandom;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::dns_wire::{self, Answer, Family, MAX_UDP_ANSWER, Rcode};
use super::resolv_conf::ResolvConf;

/// How one family's query failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FamilyError {
    NxDomain,
    NoData,
    /// An answer with an error code (SERVFAIL, REFUSED, …), a lame referral, or one that is no
    /// answer to the query: the words for it.
    ServerFailure(String),
    Timeout,
    /// The query could not even be sent (a local firewall makes `sendto` fail with EPERM): no
    /// answer, as for a timeout, with the OS's own words.
    NotSent(String),
    /// Sent, but the server's host refused it (ICMP port unreachable, a TCP reset): no answer.
    NoAnswer(String),
}

impl std::fmt::Display for FamilyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FamilyError::NxDomain => f.write_str("NXDOMAIN"),
            FamilyError::NoData => f.write_str("none"),
            FamilyError::ServerFailure(what) => write!(f, "failed ({what})"),
            FamilyError::Timeout => f.write_str("timed out"),
            FamilyError::NotSent(why) => write!(f, "not sent ({why})"),
            FamilyError::NoAnswer(why) => write!(f, "no answer ({why})"),
        }
    }
}

/// The `family` addresses of `name` (rooted), or why there are none; never past `deadline`.
pub(super) async fn try_one_name(
    conf: &ResolvConf,
    rotation: &AtomicUsize,
    name: &str,
    family: Family,
    deadline: Instant,
) -> Result<Vec<IpAddr>, FamilyError> {
    let servers = &conf.servers;
    // Go's `serverOffset`: with `rotate`, every name and family starts one server further on.
    let offset = match conf.rotate {
        true => rotation.fetch_add(1, Ordering::Relaxed),
        false => 0,
    };
    let mut last = FamilyError::Timeout;
    for _ in 0..conf.attempts {
        for index in 0..servers.len() {
            let server = servers[offset.wrapping_add(index) % servers.len()];
            if Instant::now() >= deadline {
                return Err(last);
            }
            let answer = match exchange(conf, server, name, family, deadline).await {
                Ok(answer) => answer,
                Err(error) => {
                    last = error;
                    continue;
                }
            };
            match verdict(&answer) {
                Verdict::Found => {
                    let addresses: Vec<IpAddr> = answer
                        .addresses
                        .into_iter()
                        .filter(|ip| ip.is_ipv4() == (family == Family::A))
                        .collect();
                    // Records of the type, none usable: Go finds no address at this name and
                    // goes on to the next one.
                    return match addresses.is_empty() {
                        true => Err(FamilyError::NoData),
                        false => Ok(addresses),
                    };
                }
                Verdict::Settled(error) => return Err(error),
                Verdict::NextServer(error) => last = error,
            }
        }
    }
    Err(last)
}

enum Verdict {
    Found,
    /// Asking another server would not help (Go: "no such host").
    Settled(FamilyError),
    /// The server failed; the next one is asked.
    NextServer(FamilyError),
}

/// Go's `checkHeader` then `skipToAnswer`.
fn verdict(answer: &Answer) -> Verdict {
    match answer.rcode {
        Rcode::NxDomain => Verdict::Settled(FamilyError::NxDomain),
        // libresolv (and Go after it) treats an empty, non-authoritative, non-recursive answer
        // as an invalid referral and moves on.
        Rcode::NoError
            if !answer.authoritative
                && !answer.recursion_available
                && answer.answer_count == 0
                && answer.additional_count == 0 =>
        {
            Verdict::NextServer(FamilyError::ServerFailure("lame referral".into()))
        }
        Rcode::NoError if answer.has_asked_type => Verdict::Found,
        // Go cannot read the records: "cannot unmarshal DNS message", the next server.
        Rcode::NoError if answer.damaged => Verdict::NextServer(FamilyError::ServerFailure(
            "an answer that cannot be read".into(),
        )),
        Rcode::NoError => Verdict::Settled(FamilyError::NoData),
        other => Verdict::NextServer(FamilyError::ServerFailure(other.name())),
    }
}

/// One question to one server, within `conf.timeout` per transport and `deadline` in all:
/// UDP, then TCP when the answer is truncated (TCP only with `use-vc`).
async fn exchange(
    conf: &ResolvConf,
    server: SocketAddr,
    name: &str,
    family: Family,
    deadline: Instant,
) -> Result<Answer, FamilyError> {
    let query = dns_wire::query(query_id(), name, family)
        .ok_or_else(|| FamilyError::NotSent(format!("{name} cannot be written as a DNS name")))?;
    let transports: &[Transport] = match conf.use_tcp {
        true => &[Transport::Tcp],
        false => &[Transport::Udp, Transport::Tcp],
    };
    for transport in transports {
        let until = deadline.min(Instant::now() + conf.timeout);
        let round_trip = async {
            match transport {
                Transport::Udp => udp(server, &query, family).await,
                Transport::Tcp => tcp(server, &query, family).await,
            }
        };
        let answer = tokio::time::timeout_at(until, round_trip)
            .await
            .map_err(|_| FamilyError::Timeout)??;
        // A truncated UDP answer is asked again over TCP; a TCP one is taken as it is (Go since
        // golang/go#64896; before, it was "no answer from DNS server").
        if !answer.truncated || matches!(transport, Transport::Tcp) {
            return Ok(answer);
        }
    }
    Err(FamilyError::ServerFailure(
        "truncated answer over TCP".into(),
    ))
}

enum Transport {
    Udp,
    Tcp,
}

/// A random query ID from the same source TLS uses: an off-path spoofer has to guess it as
/// well as the source port.
fn query_id() -> u16 {
    static RANDOM: LazyLock<&'static dyn SecureRandom> =
        LazyLock::new(|| rustls::crypto::ring::default_provider().secure_random);
    let mut id = [0u8; 2];
    // A failing system RNG leaves ID 0; the random source port still stands.
    let _ = RANDOM.fill(&mut id);
    u16::from_be_bytes(id)
}

/// A UDP round trip from a fresh socket; answers that are not ours (another ID, another
/// question, garbage) are ignored, as Go does against forgeries, until the caller's deadline.
async fn udp(server: SocketAddr, query: &[u8], family: Family) -> Result<Answer, FamilyError> {
    let not_sent = |error: std::io::Error| FamilyError::NotSent(format!("udp {server}: {error}"));
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local).await.map_err(not_sent)?;
    socket.connect(server).await.map_err(not_sent)?;
    socket.send(query).await.map_err(not_sent)?;
    let mut buffer = [0u8; MAX_UDP_ANSWER];
    loop {
        let n = socket
            .recv(&mut buffer)
            .await
            .map_err(|error| FamilyError::NoAnswer(format!("udp {server}: {error}")))?;
        if let Ok(answer) = dns_wire::answer(&buffer[..n], query, family) {
            return Ok(answer);
        }
    }
}

/// A TCP round trip (RFC 7766 framing: a two-byte length before each message).
async fn tcp(server: SocketAddr, query: &[u8], family: Family) -> Result<Answer, FamilyError> {
    let failed = |error: std::io::Error| match error.kind() {
        std::io::ErrorKind::PermissionDenied => {
            FamilyError::NotSent(format!("tcp {server}: {error}"))
        }
        _ => FamilyError::NoAnswer(format!("tcp {server}: {error}")),
    };
    let mut stream = TcpStream::connect(server).await.map_err(failed)?;
    let length = u16::try_from(query.len()).unwrap_or(u16::MAX);
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(failed)?;
    let length = stream.read_u16().await.map_err(failed)?;
    let mut message = vec![0u8; usize::from(length)];
    stream.read_exact(&mut message).await.map_err(failed)?;
    dns_wire::answer(&message, query, family)
        .map_err(|error| FamilyError::ServerFailure(format!("tcp {server}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(
        rcode: Rcode,
        aa: bool,
        ra: bool,
        answers: u16,
        additional: u16,
        typed: bool,
    ) -> Answer {
        Answer {
            rcode,
            truncated: false,
            authoritative: aa,
            recursion_available: ra,
            has_asked_type: typed,
            addresses: vec![],
            answer_count: answers,
            additional_count: additional,
            damaged: false,
        }
    }

    #[test]
    fn judges_answers_as_go_does() {
        let cases = [
            (answer(Rcode::NoError, false, true, 1, 0, true), "found"),
            (
                answer(Rcode::NxDomain, true, true, 0, 0, false),
                "settled NXDOMAIN",
            ),
            // The name exists, no record of the type: no other server is asked.
            (
                answer(Rcode::NoError, true, true, 1, 1, false),
                "settled none",
            ),
            (
                answer(Rcode::NoError, false, false, 0, 0, false),
                "next failed (lame referral)",
            ),
            // An EDNS OPT record in the additional section is no lame referral.
            (
                answer(Rcode::NoError, false, false, 0, 1, false),
                "settled none",
            ),
            (
                answer(Rcode::ServFail, false, true, 0, 1, false),
                "next failed (SERVFAIL)",
            ),
            (
                answer(Rcode::Refused, false, true, 0, 1, false),
                "next failed (REFUSED)",
            ),
            (
                Answer {
                    damaged: true,
                    ..answer(Rcode::NoError, false, true, 2, 1, false)
                },
                "next failed (an answer that cannot be read)",
            ),
            // Records of the type read before the damage are kept.
            (
                Answer {
                    damaged: true,
                    ..answer(Rcode::NoError, false, true, 2, 1, true)
                },
                "found",
            ),
        ];
        for (answer, want) in cases {
            let got = match verdict(&answer) {
                Verdict::Found => "found".to_string(),
                Verdict::Settled(error) => format!("settled {error}"),
                Verdict::NextServer(error) => format!("next {error}"),
            };
            assert_eq!(got, want, "{answer:?}");
        }
    }
}
